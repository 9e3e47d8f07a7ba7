//! The storage a shard keeps for its life is resident before the first call
//! (`sipedge::shard::{resident_zeroes, resident_vec}`), so RSS cannot step up later when
//! traffic first reaches a page. Checked page by page with `mincore(2)`, against plain
//! reservations that the kernel leaves unbacked.

use std::mem::size_of;

use sipedge::shard::{resident_vec, resident_zeroes};

/// Pages of `len` bytes from `ptr` (rounded out to whole pages): (resident, total).
fn residency(ptr: *const u8, len: usize) -> (usize, usize) {
    // SAFETY: sysconf has no memory arguments.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    let start = ptr as usize / page * page;
    let end = (ptr as usize + len).div_ceil(page) * page;
    let pages = (end - start) / page;
    let mut flags = vec![0u8; pages];
    // SAFETY: [start, end) lies within one live allocation rounded out to page boundaries,
    // which mincore accepts; `flags` has one byte per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, flags.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    (flags.iter().filter(|&&f| f & 1 != 0).count(), pages)
}

const LEN: usize = 64 << 20;

#[test]
fn resident_zeroes_are_backed_by_memory_at_once() {
    let bytes = resident_zeroes(LEN);
    let (resident, total) = residency(bytes.as_ptr(), bytes.len());
    assert_eq!(resident, total, "{resident} of {total} pages resident");
    assert!(bytes.iter().step_by(4093).all(|&b| b == 0));
}

#[test]
fn the_room_of_a_resident_vec_is_backed_by_memory_at_once() {
    #[derive(Clone, Copy)]
    struct Slot {
        _words: [u64; 13],
    }
    let v: Vec<Slot> = resident_vec(LEN / size_of::<Slot>());
    assert!(v.is_empty());
    let (resident, total) = residency(v.as_ptr().cast(), v.capacity() * size_of::<Slot>());
    assert_eq!(resident, total, "{resident} of {total} pages resident");
    // Through a queue too: `VecDeque::from` keeps the buffer.
    let q = std::collections::VecDeque::from(v);
    assert!(q.capacity() >= LEN / size_of::<Slot>());
}

#[test]
fn a_plain_reservation_is_not_resident_so_the_check_can_fail() {
    // What the shard's tables used to be: the kernel backs a page only once it is written.
    let bytes = vec![0u8; LEN];
    let (resident, total) = residency(bytes.as_ptr(), bytes.len());
    assert!(resident < total / 2, "{resident} of {total} pages resident");
    let v: Vec<u64> = Vec::with_capacity(LEN / 8);
    let (resident, total) = residency(v.as_ptr().cast(), v.capacity() * 8);
    assert!(resident < total / 2, "{resident} of {total} pages resident");
}
