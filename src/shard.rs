//! Call-ID → shard mapping, and the storage a shard keeps for its whole life.
//!
//! Everything about one call lives on one core: the shard that owns a message is a pure
//! function of its Call-ID, so every shard (and every sipedge node given the same shard
//! count) agrees on the owner without talking to anyone.
//!
//! A shard allocates its buffers and tables once and makes every page of them resident
//! before it takes traffic. Memory that is merely reserved (`vec![0; n]`, `with_capacity`)
//! is backed page by page as traffic first reaches it: a bigger message, one more call in
//! flight than ever before, a queue whose head has wrapped further. That looks like growth
//! hours into a run and can fail (overcommit) at the peak, when it matters most. Touched at
//! start, the footprint is fixed from the first call, and a node that lacks the memory
//! fails when it starts (Kamailio's `shm_force_alloc` does the same for its shared memory).

/// Index of a shard (one per core), `0..shard_count`.
pub type ShardId = u16;

/// Returns the shard that owns the call identified by `call_id`.
///
/// RFC 3261 §20.8: Call-IDs are compared byte for byte (case-sensitive), so the raw bytes
/// are hashed as they are. The hash is FNV-1a (64 bit), which is cheap on short keys and
/// stable across releases and machines; the final multiply-shift maps it onto
/// `0..shard_count` without the bias of a modulo on a small power of two.
/// `shard_count` 0 is treated as 1.
pub fn shard_of(call_id: &[u8], shard_count: u16) -> ShardId {
    let n = u64::from(shard_count.max(1));
    // FNV-1a's last bytes only reach the low bits (one multiply by a sparse prime), so
    // Call-IDs that differ at the end (`...-1`, `...-2`) would share high bits; the
    // MurmurHash3 finaliser spreads every input bit over the high bits multiply-shift uses.
    let hash = fmix64(fnv1a64(call_id));
    // Multiply-shift reduction (Lemire).
    ((u128::from(hash) * u128::from(n)) >> 64) as ShardId
}

/// The MurmurHash3 64-bit finaliser (full avalanche).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// 64-bit FNV-1a over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// Bytes per page touched; a smaller page only means touching more often.
const PAGE: usize = 4096;

/// `len` zero bytes, every page of them resident now (see the module docs).
pub fn resident_zeroes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    // One write per page, and the last byte: the buffer need not start on a page, so its
    // tail may sit on one more. `black_box` keeps the compiler from proving a store redundant.
    for byte in bytes.iter_mut().step_by(PAGE) {
        *byte = std::hint::black_box(0);
    }
    if let Some(last) = bytes.last_mut() {
        *last = std::hint::black_box(0);
    }
    bytes
}

/// An empty vector with room for `capacity` elements, all of that room resident now (see the
/// module docs). Pushing up to `capacity` never allocates or faults a page in; a
/// `VecDeque::from` it keeps the buffer, so a queue that cycles through its capacity is
/// resident too.
pub fn resident_vec<T>(capacity: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity);
    let step = (PAGE / std::mem::size_of::<T>().max(1)).max(1);
    let room = v.spare_capacity_mut();
    for slot in room.iter_mut().step_by(step) {
        *slot = std::hint::black_box(std::mem::MaybeUninit::zeroed());
    }
    // The last element too (see `resident_zeroes`).
    if let Some(last) = room.last_mut() {
        *last = std::hint::black_box(std::mem::MaybeUninit::zeroed());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for n in 1..=8u16 {
            for i in 0..1000u32 {
                let id = format!("{i}-a84b4c76e66710@pc33.atlanta.com");
                let s = shard_of(id.as_bytes(), n);
                assert!(s < n);
                assert_eq!(s, shard_of(id.as_bytes(), n));
            }
        }
        assert_eq!(shard_of(b"x", 0), 0);
    }

    #[test]
    fn spreads_calls_evenly_over_two_shards() {
        let mut counts = [0u32; 2];
        for i in 0..10_000u32 {
            let id = format!("{i:08x}@192.0.2.4");
            counts[usize::from(shard_of(id.as_bytes(), 2))] += 1;
        }
        // Each shard should get close to half; 45 % is far outside FNV's variance here.
        assert!(counts.iter().all(|&c| c > 4_500), "{counts:?}");
    }

    #[test]
    fn call_ids_differing_only_at_the_end_spread_too() {
        // Counters at the end of a Call-ID are common (`host-1`, `host-2` ...).
        let mut counts = [0u32; 2];
        for i in 0..1_000u32 {
            let id = format!("a84b4c76e66710@pc33.atlanta.com-{i}");
            counts[usize::from(shard_of(id.as_bytes(), 2))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    }

    #[test]
    fn fnv_matches_published_vectors() {
        // Test vectors from the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
