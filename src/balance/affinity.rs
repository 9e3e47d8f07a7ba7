//! Dialog affinity tokens: which backend owns a call, carried in the proxy's own
//! Record-Route URI (RFC 3261 §16.6 step 4 lets the proxy put anything it likes in its URI)
//! and checked when in-dialog requests come back through it.
//!
//! The token is `base64url(id[4] || HMAC-SHA256(key, "sipedge-affinity-v1" || id)[..8])`,
//! 16 URI-safe characters with no padding. An outsider without the key cannot forge one that
//! steers a request to a backend of their choosing; the 64-bit tag is verified in constant
//! time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::backend::BackendId;

/// Length of a token in characters.
pub const AFFINITY_TOKEN_LEN: usize = 16;

const ID_LEN: usize = 4;
const TAG_LEN: usize = 8;
const DOMAIN: &[u8] = b"sipedge-affinity-v1";

/// The configured secret that affinity tokens are keyed with.
///
/// Every node that must accept another node's tokens shares the same key. The keyed MAC state
/// is computed once here; issuing or checking a token then only clones it (no allocation).
#[derive(Clone)]
pub struct AffinityKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for AffinityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AffinityKey(..)")
    }
}

impl AffinityKey {
    /// A key from secret bytes (any length; 32 random bytes recommended).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of every length, so this cannot fail; a fallback keeps the
        // function total without a panic path.
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        Self { mac }
    }

    fn tag_state(&self, id: BackendId) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&id.0.to_be_bytes());
        mac
    }
}

/// Writes the token for `backend_id` into `out` and returns it as text.
pub fn affinity_token<'o>(
    backend_id: BackendId,
    key: &AffinityKey,
    out: &'o mut [u8; AFFINITY_TOKEN_LEN],
) -> &'o str {
    let mut raw = [0u8; ID_LEN + TAG_LEN];
    raw[..ID_LEN].copy_from_slice(&backend_id.0.to_be_bytes());
    let tag = key.tag_state(backend_id).finalize().into_bytes();
    raw[ID_LEN..].copy_from_slice(&tag[..TAG_LEN]);
    base64url_encode_12(&raw, out);
    // base64url output is ASCII; the fallback is unreachable but keeps this panic-free.
    std::str::from_utf8(out).unwrap_or_default()
}

/// Checks a token taken from a Route/Request-URI parameter and returns the backend id it
/// names, or `None` when it is malformed or its tag does not match `key`.
pub fn verify_affinity(param_value: &[u8], key: &AffinityKey) -> Option<BackendId> {
    let raw = base64url_decode_16(param_value)?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&raw[..ID_LEN]);
    let id = BackendId(u32::from_be_bytes(id));
    // Constant-time comparison of the truncated tag.
    key.tag_state(id)
        .verify_truncated_left(&raw[ID_LEN..])
        .ok()
        .map(|()| id)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode_12(raw: &[u8; 12], out: &mut [u8; 16]) {
    for (chunk, dst) in raw.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for (k, d) in dst.iter_mut().enumerate() {
            *d = ALPHABET[((n >> (18 - 6 * k)) & 63) as usize];
        }
    }
}

fn base64url_decode_16(text: &[u8]) -> Option<[u8; 12]> {
    if text.len() != AFFINITY_TOKEN_LEN {
        return None;
    }
    let mut raw = [0u8; 12];
    for (src, dst) in text.chunks_exact(4).zip(raw.chunks_exact_mut(3)) {
        let mut n = 0u32;
        for &c in src {
            n = (n << 6) | u32::from(sextet(c)?);
        }
        dst[0] = (n >> 16) as u8;
        dst[1] = (n >> 8) as u8;
        dst[2] = n as u8;
    }
    Some(raw)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = AffinityKey::new(b"edge secret");
        for id in [0, 1, 0x1234_5678, u32::MAX] {
            let mut buf = [0u8; AFFINITY_TOKEN_LEN];
            let token = affinity_token(BackendId(id), &key, &mut buf).to_owned();
            assert_eq!(token.len(), AFFINITY_TOKEN_LEN);
            assert!(
                token
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            );
            assert_eq!(verify_affinity(token.as_bytes(), &key), Some(BackendId(id)));
        }
    }

    #[test]
    fn rejects_forgeries() {
        let key = AffinityKey::new(b"edge secret");
        let other = AffinityKey::new(b"another secret");
        let mut buf = [0u8; AFFINITY_TOKEN_LEN];
        let token = affinity_token(BackendId(42), &key, &mut buf).to_owned();
        assert_eq!(verify_affinity(token.as_bytes(), &other), None);
        // Any single changed character breaks it.
        for i in 0..AFFINITY_TOKEN_LEN {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(verify_affinity(&t, &key), None, "position {i}");
        }
        for bad in [
            &b""[..],
            b"short",
            b"AAAAAAAAAAAAAAA=",
            b"AAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(verify_affinity(bad, &key), None);
        }
    }
}
