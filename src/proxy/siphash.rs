//! SipHash (Aumasson & Bernstein), keyed 64-bit hash for the branch and its MAC.
//!
//! The branch of a stateless proxy must be a function of the request (RFC 3261 §16.11) and a
//! response's top Via must be recognisably ours; SipHash keyed with the configured secret
//! gives both at a few nanoseconds per short input, without allocating. It is fed
//! incrementally so the request fields need not be copied into one buffer.

/// Incremental SipHash-2-4 state: the branch, its MAC and the loop hash.
pub(crate) type SipHasher = Sip<2, 4>;

/// Incremental SipHash-1-3 state (what std's `RandomState` uses): for the lookup tables keyed
/// from wire data, which need a keyed hash against flooding but authenticate nothing.
pub(crate) type SipHasher13 = Sip<1, 3>;

/// Incremental SipHash-c-d state, `C` compression and `D` finalisation rounds.
#[derive(Clone)]
pub(crate) struct Sip<const C: usize, const D: usize> {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Pending input bytes (fewer than 8), little-endian in the low bits.
    tail: u64,
    /// Number of valid bytes in `tail`.
    ntail: usize,
    /// Total bytes fed so far (only its low byte is used in the finalisation).
    length: usize,
}

/// Opaque: the state is the key, which must not reach a log.
impl<const C: usize, const D: usize> std::fmt::Debug for Sip<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sip").finish_non_exhaustive()
    }
}

/// Up to 8 bytes as a little-endian word (missing high bytes zero), with at most two loads:
/// two overlapping 4-byte reads for 4..=8 bytes, three single bytes below that.
#[inline(always)]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n <= 8);
    if n >= 4 {
        let lo = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let hi = u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]));
        // The two reads overlap when n < 8; overlapping bytes are equal, so OR is exact.
        lo | (hi << (8 * (n - 4)))
    } else if n > 0 {
        u64::from(b[0])
            | (u64::from(b[n / 2]) << (8 * (n / 2)))
            | (u64::from(b[n - 1]) << (8 * (n - 1)))
    } else {
        0
    }
}

#[inline(always)]
fn sipround(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
    *v0 = v0.wrapping_add(*v1);
    *v1 = v1.rotate_left(13);
    *v1 ^= *v0;
    *v0 = v0.rotate_left(32);
    *v2 = v2.wrapping_add(*v3);
    *v3 = v3.rotate_left(16);
    *v3 ^= *v2;
    *v0 = v0.wrapping_add(*v3);
    *v3 = v3.rotate_left(21);
    *v3 ^= *v0;
    *v2 = v2.wrapping_add(*v1);
    *v1 = v1.rotate_left(17);
    *v1 ^= *v2;
    *v2 = v2.rotate_left(32);
}

impl<const C: usize, const D: usize> Sip<C, D> {
    /// A hasher keyed with 128 bits.
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        let k0 = u64::from_le_bytes(k0);
        let k1 = u64::from_le_bytes(k1);
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        for _ in 0..C {
            sipround(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
        }
        self.v0 ^= m;
    }

    /// Feeds bytes.
    ///
    /// Whole words go straight to the compression function; the partial words at either end
    /// are assembled with at most two loads each ([`load_le`]) rather than byte by byte, since
    /// the fields fed per message are short and most of them leave a partial word. Always
    /// inlined: the few hashes per message feed a handful of short fields each, and as a call
    /// every one of them spilled and reloaded the whole state.
    #[inline(always)]
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len();
        self.length = self.length.wrapping_add(len);
        let pending = self.ntail;
        // INVARIANT: `pending < 8`, so every shift below is less than 64.
        if pending + len < 8 {
            self.tail |= load_le(bytes) << (8 * pending);
            self.ntail = pending + len;
            return;
        }
        let fill = 8 - pending;
        let first = self.tail | (load_le(&bytes[..fill]) << (8 * pending));
        self.compress(first);
        let mut words = bytes[fill..].chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.compress(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        self.tail = load_le(rest);
        self.ntail = rest.len();
    }

    /// Feeds the four little-endian bytes of `n` (the same as `write(&n.to_le_bytes())`),
    /// without the slice handling: they always straddle at most one word boundary.
    #[inline(always)]
    pub(crate) fn write_u32(&mut self, n: u32) {
        self.length = self.length.wrapping_add(4);
        let pending = self.ntail;
        let n = u64::from(n);
        if pending < 4 {
            self.tail |= n << (8 * pending);
            self.ntail = pending + 4;
        } else {
            // The low `8 - pending` bytes complete the word; the other `pending - 4` remain
            // (a shift of 32 for `pending == 4` leaves none: `n` has 32 bits).
            self.compress(self.tail | (n << (8 * pending)));
            self.tail = n >> (8 * (8 - pending));
            self.ntail = pending - 4;
        }
    }

    /// The hash of this state fed `bytes`, then the four little-endian bytes of `n`, then
    /// finished: what `write(bytes)`, `write_u32(n)` and `finish()` on a copy return.
    ///
    /// From a state holding no partial word (a fresh one), the bytes go to the compression
    /// function a whole word at a time and their tail is joined to `n` once: the failover
    /// table hashes a Call-ID and a CSeq number this way for every INVITE, every response to
    /// one and every ACK, and the general `write` and `write_u32` kept a partial word between
    /// them.
    #[inline]
    pub(crate) fn hash_bytes_u32(&self, bytes: &[u8], n: u32) -> u64 {
        let mut h = self.clone();
        if h.ntail != 0 {
            h.write(bytes);
            h.write_u32(n);
            return h.finish();
        }
        let mut words = bytes.chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h.compress(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        let n = u64::from(n);
        // INVARIANT: `rest.len() < 8`, so both shifts are less than 64; with no partial
        // word pending, `tail` holds nothing.
        let tail = load_le(rest) | (n << (8 * rest.len()));
        if rest.len() >= 4 {
            h.compress(tail);
            h.tail = n >> (8 * (8 - rest.len()));
        } else {
            h.tail = tail;
        }
        h.ntail = (rest.len() + 4) % 8;
        h.length = h.length.wrapping_add(bytes.len() + 4);
        h.finish()
    }

    /// Feeds bytes preceded by their length (32-bit little-endian), so that ("ab","c") and
    /// ("a","bc") hash differently.
    #[inline(always)]
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        self.write_u32(bytes.len() as u32);
        self.write(bytes);
    }

    /// The 64-bit hash of everything fed.
    #[inline(always)]
    pub(crate) fn finish(mut self) -> u64 {
        let b = ((self.length as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v2 ^= 0xff;
        for _ in 0..D {
            sipround(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
        }
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 16] {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        k
    }

    #[test]
    fn matches_reference_vectors() {
        // From the SipHash paper's reference implementation (vectors.h, SipHash-2-4 64-bit
        // output), key 00..0f, message 00..(n-1).
        let expected: [(usize, u64); 3] = [
            (0, 0x726f_db47_dd0e_0e31),
            (1, 0x74f8_39c5_93dc_67fd),
            (15, 0xa129_ca61_49be_45e5),
        ];
        for (n, want) in expected {
            let msg: Vec<u8> = (0..n as u8).collect();
            let mut h = SipHasher::new(&key());
            h.write(&msg);
            assert_eq!(h.finish(), want, "length {n}");
        }
    }

    #[test]
    fn siphash13_matches_std() {
        // std's `DefaultHasher::new()` is SipHash-1-3 with a zero key; a `u32` is hashed as
        // its four little-endian bytes.
        use std::hash::Hasher;
        for n in [0usize, 1, 7, 8, 9, 17, 40] {
            let msg: Vec<u8> = (0..n as u8).collect();
            let mut std_hasher = std::hash::DefaultHasher::new();
            std_hasher.write(&msg);
            std_hasher.write_u32(0xdead_beef);
            let mut ours = SipHasher13::new(&[0; 16]);
            ours.write(&msg);
            ours.write_u32(0xdead_beef);
            assert_eq!(ours.finish(), std_hasher.finish(), "length {n}");
        }
    }

    #[test]
    fn word_loads_match_bytes() {
        let msg: Vec<u8> = (1..=8u8).map(|b| b.wrapping_mul(37)).collect();
        for n in 0..=8 {
            let want = msg[..n]
                .iter()
                .enumerate()
                .fold(0u64, |w, (i, &b)| w | (u64::from(b) << (8 * i)));
            assert_eq!(load_le(&msg[..n]), want, "length {n}");
        }
    }

    #[test]
    fn many_small_writes_equal_one_shot() {
        let msg: Vec<u8> = (0..97u8).collect();
        let mut one = SipHasher::new(&key());
        one.write(&msg);
        let one = one.finish();
        for step in 1..=11 {
            let mut h = SipHasher::new(&key());
            for part in msg.chunks(step) {
                h.write(part);
            }
            assert_eq!(h.finish(), one, "step {step}");
        }
    }

    #[test]
    fn field_is_its_length_then_its_bytes() {
        let msg: Vec<u8> = (0..40u8).collect();
        for lead in 0..=9 {
            for len in [0, 1, 3, 4, 5, 7, 8, 9, 17, 31] {
                let mut a = SipHasher::new(&key());
                a.write(&msg[..lead]);
                a.field(&msg[lead..lead + len]);
                a.field(&msg[..3]);
                let mut b = SipHasher::new(&key());
                b.write(&msg[..lead]);
                b.write(&(len as u32).to_le_bytes());
                b.write(&msg[lead..lead + len]);
                b.write(&3u32.to_le_bytes());
                b.write(&msg[..3]);
                assert_eq!(a.finish(), b.finish(), "lead {lead} len {len}");
            }
        }
    }

    #[test]
    fn bytes_and_u32_in_one_pass_equal_the_two_writes() {
        let msg: Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(29)).collect();
        for lead in [0usize, 1, 3, 4, 7, 8, 9] {
            for len in 0..=msg.len() - 9 {
                for n in [0u32, 1, 0xdead_beef, u32::MAX] {
                    let mut state = SipHasher13::new(&[7; 16]);
                    state.write(&msg[..lead]);
                    let mut two = state.clone();
                    two.write(&msg[lead..lead + len]);
                    two.write_u32(n);
                    assert_eq!(
                        state.hash_bytes_u32(&msg[lead..lead + len], n),
                        two.finish(),
                        "lead {lead} len {len} n {n:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        let msg: Vec<u8> = (0..64u8).collect();
        let mut one = SipHasher::new(&key());
        one.write(&msg);
        let one = one.finish();
        for split in 0..msg.len() {
            let mut h = SipHasher::new(&key());
            h.write(&msg[..split]);
            h.write(&msg[split..]);
            assert_eq!(h.finish(), one, "split at {split}");
        }
    }
}
