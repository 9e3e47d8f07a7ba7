//! Sixteen-byte scans with SSE2 for the byte finders of [`super::chars`].
//!
//! SSE2 is part of the x86_64 baseline, so there is no feature detection. This is the only
//! module of `sip` with `unsafe` (STYLE.md §3): each block is read from a `&[u8; 16]` taken
//! out of the slice, so no load reaches past its end. A slice shorter than a block is left to
//! the word-at-a-time scans of [`super::chars`].

use std::arch::x86_64::{
    __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    _mm_subs_epu8,
};

/// Bytes per block.
const BLOCK: usize = 16;

/// The bytes a scan stops at.
#[derive(Clone, Copy)]
pub(super) enum Stop {
    /// This byte.
    Byte(u8),
    /// Either of these.
    Either(u8, u8),
    /// Any of these.
    Any3(u8, u8, u8),
    /// `;` or any byte up to 0x20 (SP, HT, CR, LF and the other control bytes).
    SemicolonOrSpace,
}

/// Bit `i` set when byte `i` of `block` is one `stop` names.
#[inline(always)]
fn stops_in_block(block: &[u8; BLOCK], stop: Stop) -> u32 {
    // The `as i8` casts reinterpret a byte for `_mm_set1_epi8`, which takes it signed.
    let eq = |v: __m128i, byte: u8| {
        // SAFETY: SSE2 is in the x86_64 baseline; these intrinsics only compute on registers.
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8)) }
    };
    let or = |a: __m128i, b: __m128i| {
        // SAFETY: as above, register arithmetic of the baseline.
        unsafe { _mm_or_si128(a, b) }
    };
    // SAFETY: `block` is sixteen readable bytes and `_mm_loadu_si128` has no alignment
    // requirement.
    let v = unsafe { _mm_loadu_si128(block.as_ptr().cast::<__m128i>()) };
    let hits = match stop {
        Stop::Byte(a) => eq(v, a),
        Stop::Either(a, b) => or(eq(v, a), eq(v, b)),
        Stop::Any3(a, b, c) => or(or(eq(v, a), eq(v, b)), eq(v, c)),
        Stop::SemicolonOrSpace => {
            // SAFETY: as above. A byte up to 0x20 saturates to zero when 0x20 is taken
            // from it (unsigned), which no compare of signed bytes would give for 0x80..
            let low = unsafe { _mm_subs_epu8(v, _mm_set1_epi8(0x20)) };
            or(eq(low, 0), eq(v, b';'))
        }
    };
    // SAFETY: as above.
    let mask = unsafe { _mm_movemask_epi8(hits) };
    // Sixteen bits, one a byte: the cast keeps them all.
    mask as u32
}

/// A slice shorter than one block, which [`find`] leaves to its caller.
pub(super) struct TooShort;

/// Offset of the first byte of `hay` that `stop` names, a block at a time, the last block
/// ending at the end of `hay` (it may overlap the one before it).
#[inline(always)]
pub(super) fn find(hay: &[u8], stop: Stop) -> Result<Option<usize>, TooShort> {
    let mut at = 0;
    while let Some(block) = hay.get(at..).and_then(<[u8]>::first_chunk::<BLOCK>) {
        let bits = stops_in_block(block, stop);
        if bits != 0 {
            return Ok(Some(at + bits.trailing_zeros() as usize));
        }
        at += BLOCK;
    }
    if at == hay.len() {
        return Ok(None);
    }
    let Some(last) = hay.last_chunk::<BLOCK>() else {
        return Err(TooShort);
    };
    // The last block starts before `at`: its first bytes were scanned already.
    let bits = stops_in_block(last, stop) >> (at + BLOCK - hay.len());
    Ok((bits != 0).then(|| at + bits.trailing_zeros() as usize))
}

/// The `:` bits and the CR and LF bits of `block`, bit `i` for byte `i`: a header line's
/// name, its colon and often its end are in its first block, so one load finds both.
#[inline(always)]
pub(super) fn colons_and_line_breaks(block: &[u8; BLOCK]) -> (u32, u32) {
    (
        stops_in_block(block, Stop::Byte(b':')),
        stops_in_block(block, Stop::Either(b'\r', b'\n')),
    )
}
