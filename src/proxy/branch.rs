//! The branch parameter of the Via this proxy adds (RFC 3261 §16.6 step 8, §16.11).
//!
//! Layout after the magic cookie, all lower-case hex, fields separated by `.`:
//!
//! ```text
//! z9hG4bK <tx:16> . <loop:8> . <return path> . <mac:8>
//! ```
//!
//! - `tx` identifies the transaction: a keyed hash of the received branch when it carries the
//!   magic cookie, else of the RFC 2543 fields (§16.11). A retransmission, the ACK for a
//!   non-2xx and a CANCEL all carry the INVITE's received branch, so they get the same value.
//! - `loop` is the loop-detection component (§16.6 step 8): a hash of what decides where the
//!   request goes. When a request comes back carrying one of our Vias, recomputing it tells a
//!   loop (equal) from a spiral (different), §16.3 item 4.
//! - the return path records how the request reached us, so the response can go back the same
//!   way without any state: the listener index (`l<hex>`) and, for a connection-oriented
//!   arrival, the connection (`x<hex>`), RFC 3261 §18.2.2 "using the existing connection".
//! - `mac` is a keyed hash of everything before it: a response whose top Via branch does not
//!   verify was not produced by us and is dropped (§16.7 step 3, §18.1.2).
//!
//! Branches use only token characters, so they are valid Via parameters (§20.42).

use super::FlowId;
use super::siphash::SipHasher;
use crate::sip::out::{Out, hex_digit, parse_hex, parse_hex8, parse_hex16};

/// The RFC 3261 §8.1.1.7 magic cookie.
pub(crate) const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// Longest branch this module writes: cookie + 16 + 1 + 8 + 1 + (1 + 2 + 1 + 16) + 1 + 8.
pub(crate) const MAX_BRANCH_LEN: usize = 7 + 16 + 1 + 8 + 1 + 20 + 1 + 8;

/// How a request reached the proxy, carried in the branch for the response's return trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReturnPath {
    /// Index of the listener the request arrived on ([`super::ProxyConfig::listeners`]).
    pub(crate) listener: u8,
    /// The connection it arrived on, if any.
    pub(crate) flow: Option<FlowId>,
}

/// The parts of one of our branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Branch {
    /// Transaction component.
    pub(crate) tx: u64,
    /// Loop-detection component (32 bits).
    pub(crate) loop_hash: u32,
    /// Where the response goes back.
    pub(crate) ret: ReturnPath,
}

impl Branch {
    /// Writes `z9hG4bK...` into `out`, signed with `key`. The MAC covers the text as written
    /// into `out` (when `out` overflows, what it holds is discarded anyway).
    pub(crate) fn write(&self, key: &MacKey, w: &mut Out<'_>) {
        let start = w.len();
        w.put(MAGIC_COOKIE);
        w.put_hex(self.tx, 16);
        w.put(b".");
        w.put_hex(u64::from(self.loop_hash), 8);
        w.put(b".l");
        w.put_hex_compact(u64::from(self.ret.listener));
        if let Some(flow) = self.ret.flow {
            w.put(b"x");
            w.put_hex_compact(flow.0);
        }
        w.put(b".");
        let mac = mac32(key, w.written().get(start..).unwrap_or_default());
        w.put_hex(u64::from(mac), 8);
    }

    /// Decodes and verifies a branch value; `None` unless it is one of ours, unaltered.
    ///
    /// The fields sit at fixed offsets (16 and 8 hex digits, the MAC last), so they are read
    /// in place rather than by splitting at the dots; a dot anywhere else fails a hex parse.
    pub(crate) fn verify(value: &[u8], key: &MacKey) -> Option<Self> {
        if value.len() > MAX_BRANCH_LEN || value.len() < MAGIC_COOKIE.len() + 16 {
            return None;
        }
        // The cookie is case-sensitive in practice; branches are compared byte for byte
        // (RFC 3261 §17.2.3), so an altered case is not ours.
        let body = value.strip_prefix(MAGIC_COOKIE)?;
        let (signed, mac_text) = value.split_at(value.len() - 8);
        if signed.last() != Some(&b'.') {
            return None;
        }
        let fields = &body[..body.len() - 9];
        let (tx, rest) = fields.split_first_chunk::<16>()?;
        let rest = rest.strip_prefix(b".")?;
        let (loop_hash, rest) = rest.split_first_chunk::<8>()?;
        let ret = rest.strip_prefix(b".")?;
        // The fixed-width fields are read inline: four calls of the general reader were
        // a third of a response's own cost.
        let tx = parse_hex16(tx)?;
        let loop_hash = parse_hex8(loop_hash)?;
        let ret = ret.strip_prefix(b"l")?;
        let (listener, flow) = match ret.iter().position(|&b| b == b'x') {
            Some(f) => (&ret[..f], Some(FlowId(parse_hex(&ret[f + 1..])?))),
            None => (ret, None),
        };
        let listener = match *listener {
            // Nearly every listener index is one digit: read it without the general reader.
            [digit] => hex_digit(digit)?,
            _ => u8::try_from(parse_hex(listener)?).ok()?,
        };
        let mac_text: &[u8; 8] = mac_text.try_into().ok()?;
        if parse_hex8(mac_text)? != mac32(key, signed) {
            return None;
        }
        Some(Self {
            tx,
            loop_hash,
            ret: ReturnPath { listener, flow },
        })
    }
}

/// False when `text` (a header value, say) cannot contain a branch [`Branch::verify`]
/// accepts: every one of ours is the cookie with a dot 23 bytes after its start. A necessary
/// test only, scanning eight bytes at a time for the cookie's `z`.
pub(crate) fn may_contain_ours(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES << 7;
    let is_candidate =
        |at: usize| text[at..].starts_with(MAGIC_COOKIE) && text.get(at + 23) == Some(&b'.');
    let mut words = text.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'z'));
        // The high bit of each zero byte of `x` (a `z`), plus possibly false ones above a
        // true one (borrows run upwards); each flagged byte is checked, so both are harmless.
        let mut found = x.wrapping_sub(ONES) & !x & HIGH;
        while found != 0 {
            if is_candidate(base + (found.trailing_zeros() / 8) as usize) {
                return true;
            }
            found &= found - 1;
        }
        base += 8;
    }
    let rest = words.remainder();
    (0..rest.len()).any(|i| rest[i] == b'z' && is_candidate(base + i))
}

/// The MAC key: SipHash keyed with the branch secret and already fed the constant
/// domain-separation prefix, so that each MAC (one per forwarded request, one per response
/// and per Via checked for loops) starts from a copy instead of re-hashing the prefix.
#[derive(Clone)]
pub(crate) struct MacKey(SipHasher);

impl MacKey {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let mut h = SipHasher::new(key);
        h.write(b"sipedge-branch-mac");
        Self(h)
    }
}

fn mac32(key: &MacKey, signed: &[u8]) -> u32 {
    let mut h = key.0.clone();
    h.write(signed);
    (h.finish() >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";

    fn key() -> MacKey {
        MacKey::new(&KEY)
    }

    fn text(b: &Branch) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let mut out = Out::new(&mut buf);
        b.write(&key(), &mut out);
        out.written().to_vec()
    }

    macro_rules! branch_table {
        ($($name:ident: $branch:expr,)*) => {$(
            #[test]
            fn $name() {
                let b: Branch = $branch;
                let t = text(&b);
                assert!(t.starts_with(MAGIC_COOKIE));
                assert!(t.len() <= MAX_BRANCH_LEN);
                assert!(t.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'.'));
                assert_eq!(Branch::verify(&t, &key()), Some(b));
                // Another key does not verify it.
                assert_eq!(Branch::verify(&t, &MacKey::new(b"fedcba9876543210")), None);
                // Any single altered byte after the cookie breaks it.
                for i in MAGIC_COOKIE.len()..t.len() {
                    let mut bad = t.clone();
                    bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
                    assert_eq!(Branch::verify(&bad, &key()), None, "byte {i} of {}", String::from_utf8_lossy(&t));
                }
            }
        )*};
    }

    branch_table! {
        udp_listener_zero: Branch { tx: 0, loop_hash: 0, ret: ReturnPath { listener: 0, flow: None } },
        tcp_flow: Branch { tx: u64::MAX, loop_hash: u32::MAX, ret: ReturnPath { listener: 3, flow: Some(FlowId(0x1234)) } },
        max_flow: Branch { tx: 42, loop_hash: 7, ret: ReturnPath { listener: 255, flow: Some(FlowId(u64::MAX)) } },
        flow_zero: Branch { tx: 42, loop_hash: 7, ret: ReturnPath { listener: 1, flow: Some(FlowId(0)) } },
    }

    #[test]
    fn every_branch_of_ours_is_found_in_a_via_line() {
        let b = Branch {
            tx: 0x0123_4567_89ab_cdef,
            loop_hash: 9,
            ret: ReturnPath {
                listener: 1,
                flow: Some(FlowId(77)),
            },
        };
        let ours = text(&b);
        for pad in 0..20 {
            let mut line = b"SIP/2.0/UDP zz.example.com;branch=".to_vec();
            line.extend(std::iter::repeat_n(b'z', pad));
            let at = line.len();
            line.extend(&ours);
            line.extend(b";rport");
            assert!(may_contain_ours(&line), "pad {pad}");
            assert!(may_contain_ours(&line[at..at + ours.len()]), "pad {pad}");
            // A client's RFC 3261 branch is not mistaken for one.
            let mut foreign = line[..at].to_vec();
            foreign.extend(b"z9hG4bK-25317-1-0;rport");
            assert!(!may_contain_ours(&foreign), "pad {pad}");
        }
        assert!(!may_contain_ours(b""));
        assert!(!may_contain_ours(b"z9hG4bK"));
    }

    #[test]
    fn foreign_branches_are_rejected() {
        for foreign in [
            &b""[..],
            b"z9hG4bK",
            b"z9hG4bK776asdhds",
            b"390skdjuw",
            b"z9hG4bK0000000000000000.00000000.l0.00000000",
            b"z9hG4bK0000000000000000.00000000.l0.0000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(Branch::verify(foreign, &key()), None, "{}", String::from_utf8_lossy(foreign));
        }
    }
}
