//! Byte classes of the RFC 3261 §25.1 grammar, as lookup tables, and the byte finders.

#[cfg(target_arch = "x86_64")]
use super::simd::{self, Stop};

const fn build(set: &[u8], alnum: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < set.len() {
        table[set[i] as usize] = true;
        i += 1;
    }
    if alnum {
        let mut c = 0usize;
        while c < 256 {
            let b = c as u8;
            if b.is_ascii_alphanumeric() {
                table[c] = true;
            }
            c += 1;
        }
    }
    table
}

/// RFC 3261 §25.1: `token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")`.
pub(crate) static TOKEN: [bool; 256] = build(b"-.!%*_+`'~", true);

/// Characters allowed in the user part of a SIP URI (unreserved, escaped, user-unreserved).
pub(crate) static URI_USER: [bool; 256] = build(b"-_.!~*'()%&=+$,;?/", true);

/// Characters allowed in a URI password.
pub(crate) static URI_PASSWORD: [bool; 256] = build(b"-_.!~*'()%&=+$,", true);

/// Characters of a URI parameter name or value (paramchar) and of header names/values of a URI.
pub(crate) static URI_PARAM: [bool; 256] = build(b"-_.!~*'()%[]/:&+$", true);

/// Characters of URI headers (hnv-unreserved plus unreserved and escaped, plus `=` and `&`).
pub(crate) static URI_HEADERS: [bool; 256] = build(b"-_.!~*'()%[]/?:+$=&", true);

/// Characters allowed in a URI of an unknown scheme (RFC 3986 reserved + unreserved + `%`).
pub(crate) static ABS_URI: [bool; 256] = build(b"-_.!~*'()%;/?:@&=+$,[]#", true);

/// How many bytes at the start of `bytes` are in the class `table`: four at a time (one test
/// for the four table entries together), one at a time only in a last part shorter than four.
/// Values, tokens and hosts run to tens of bytes, where a byte-by-byte scan pays a compare and
/// a branch for every byte.
#[inline(always)]
pub(crate) fn class_len(bytes: &[u8], table: &[bool; 256]) -> usize {
    let n = bytes.len();
    let mut at = 0;
    while let Some(quad) = bytes.get(at..at + 4) {
        let (a, b) = (table[usize::from(quad[0])], table[usize::from(quad[1])]);
        let (c, d) = (table[usize::from(quad[2])], table[usize::from(quad[3])]);
        if !(a & b & c & d) {
            // One of the four is outside the class, so the run ends in this quad: its length
            // is the number of leading `true`s, counted without a branch a byte.
            return at + usize::from(a) + usize::from(a & b) + usize::from(a & b & c);
        }
        at += 4;
    }
    while at < n && table[usize::from(bytes[at])] {
        at += 1;
    }
    at
}

#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

#[inline]
pub(crate) fn is_uri_headers(b: u8) -> bool {
    URI_HEADERS[b as usize]
}

#[inline]
pub(crate) fn is_abs_uri(b: u8) -> bool {
    ABS_URI[b as usize]
}

/// `callid = word [ "@" word ]` characters (RFC 3261 §25.1): `word` (token characters plus
/// `( ) < > : \ " / [ ] ? { }`) and `@`.
pub(crate) static CALL_ID: [bool; 256] = build(b"-.!%*_+`'~()<>:\\\"/[]?{}@", true);

/// A generic-param value without quotes (RFC 3261 §25.1 `gen-value = token / host`).
pub(crate) static GEN_VALUE: [bool; 256] = build(b"-.!%*_+`'~[]:", true);

#[inline]
pub(crate) fn is_gen_value(b: u8) -> bool {
    GEN_VALUE[b as usize]
}

/// Offset of the first CR or LF in `buf[from..]`, or `buf.len()` if there is none.
#[inline(always)]
pub(crate) fn find_line_break(buf: &[u8], from: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(Ok(found)) = buf
        .get(from..)
        .map(|hay| simd::find(hay, Stop::Either(b'\r', b'\n')))
    {
        return found.map_or(buf.len(), |at| from + at);
    }
    swar::find_line_break(buf, from)
}

/// The offset of the first `:` in `buf[start..]` and that of the first CR or LF after it (or
/// `buf.len()`); `None` without a colon.
#[inline(always)]
pub(crate) fn find_colon_and_line_break(buf: &[u8], start: usize) -> Option<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if let Some(block) = buf.get(start..).and_then(<[u8]>::first_chunk) {
        let (colons, breaks) = simd::colons_and_line_breaks(block);
        if colons != 0 {
            let colon = colons.trailing_zeros();
            // The colon's own bit is clear in `breaks`, so this is a break after it.
            let after = breaks >> colon;
            let line_break = if after != 0 {
                start + (colon + after.trailing_zeros()) as usize
            } else {
                find_line_break(buf, start + block.len())
            };
            return Some((start + colon as usize, line_break));
        }
    }
    let colon = start + find_byte(buf.get(start..)?, b':')?;
    Some((colon, find_line_break(buf, colon + 1)))
}

/// Offset of the first `byte` in `hay`.
#[inline(always)]
pub(crate) fn find_byte(hay: &[u8], byte: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Ok(found) = simd::find(hay, Stop::Byte(byte)) {
        return found;
    }
    swar::find_byte(hay, byte)
}

/// Offset of the first byte of `hay` that is `a` or `b`.
#[inline(always)]
pub(crate) fn find_either(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Ok(found) = simd::find(hay, Stop::Either(a, b)) {
        return found;
    }
    swar::find_either(hay, a, b)
}

/// The first of three bytes in `hay`.
#[inline(always)]
pub(crate) fn find_any3(hay: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Ok(found) = simd::find(hay, Stop::Any3(a, b, c)) {
        return found;
    }
    swar::find_any3(hay, a, b, c)
}

/// The first byte of `hay` that is `;` or at most 0x20 (SP, HT, CR, LF and the other control
/// bytes): where an addr-spec's URI may end.
#[inline(always)]
pub(crate) fn find_semicolon_or_space(hay: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Ok(found) = simd::find(hay, Stop::SemicolonOrSpace) {
        return found;
    }
    swar::find_semicolon_or_space(hay)
}

/// The finders eight bytes at a time in a `u64`: for targets without SSE2, and on x86_64 for
/// slices shorter than an SSE2 block.
mod swar {
    /// Offset of the first CR or LF in `buf[from..]`, or `buf.len()` if there is none.
    ///
    /// Sixteen bytes at a time: a word with no byte below 0x0E holds neither CR nor LF, and most
    /// header text is printable, so only the few control bytes are looked at one by one.
    #[inline]
    pub(super) fn find_line_break(buf: &[u8], from: usize) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // "Has a byte below 0x0E": exact for the lowest flagged byte (borrows only run upwards),
        // which is the only one used.
        let below = |x: u64| x.wrapping_sub(ONES * 0x0E) & !x & HIGH;
        let word = |w: &[u8]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            u64::from_le_bytes(b)
        };
        let mut i = from;
        while i < buf.len() {
            if let Some(pair) = buf.get(i..i + 16) {
                let (lo, hi) = (below(word(&pair[..8])), below(word(&pair[8..])));
                if lo | hi == 0 {
                    i += 16;
                    continue;
                }
                i += if lo != 0 {
                    (lo.trailing_zeros() / 8) as usize
                } else {
                    8 + (hi.trailing_zeros() / 8) as usize
                };
            } else if let Some(w) = buf.get(i..i + 8) {
                let flags = below(word(w));
                if flags == 0 {
                    i += 8;
                    continue;
                }
                i += (flags.trailing_zeros() / 8) as usize;
            }
            if matches!(buf[i], b'\r' | b'\n') {
                return i;
            }
            i += 1;
        }
        buf.len()
    }

    /// Offset of the first `byte` in `hay`.
    #[inline(always)]
    pub(super) fn find_byte(hay: &[u8], byte: u8) -> Option<usize> {
        let pattern = SWAR_ONES * u64::from(byte);
        first_match(hay, |x| zero_bytes(x ^ pattern), |c| c == byte)
    }

    /// Offset of the first byte of `hay` that is `a` or `b`.
    #[inline(always)]
    pub(super) fn find_either(hay: &[u8], a: u8, b: u8) -> Option<usize> {
        let (pa, pb) = (SWAR_ONES * u64::from(a), SWAR_ONES * u64::from(b));
        first_match(
            hay,
            |x| zero_bytes(x ^ pa) | zero_bytes(x ^ pb),
            |c| c == a || c == b,
        )
    }

    /// The first of three bytes in `hay`, eight bytes at a time.
    #[inline(always)]
    pub(super) fn find_any3(hay: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
        let (pa, pb, pc) = (
            SWAR_ONES * u64::from(a),
            SWAR_ONES * u64::from(b),
            SWAR_ONES * u64::from(c),
        );
        first_match(
            hay,
            |x| zero_bytes(x ^ pa) | zero_bytes(x ^ pb) | zero_bytes(x ^ pc),
            |x| x == a || x == b || x == c,
        )
    }

    /// The first byte of `hay` that is `;` or at most 0x20 (SP, HT, CR, LF and the other control
    /// bytes), eight bytes at a time: where an addr-spec's URI may end.
    #[inline(always)]
    pub(super) fn find_semicolon_or_space(hay: &[u8]) -> Option<usize> {
        let semis = SWAR_ONES * u64::from(b';');
        first_match(
            hay,
            // "Below 0x21", like `zero_bytes`: exact for the lowest flagged byte.
            |x| zero_bytes(x ^ semis) | (x.wrapping_sub(SWAR_ONES * 0x21) & !x & (SWAR_ONES << 7)),
            |c| c == b';' || c <= b' ',
        )
    }

    const SWAR_ONES: u64 = 0x0101_0101_0101_0101;

    /// Flags the zero bytes of `x` in their high bits. XOR with a byte repeated turns a match
    /// into a zero byte; the lowest byte flagged is exact (borrows only run upwards), which is
    /// the only one [`first_match`] reads, also for a union of such tests.
    #[inline(always)]
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(SWAR_ONES) & !x & (SWAR_ONES << 7)
    }

    /// The first byte of `hay` that `flags` marks eight bytes at a time (by its lowest flagged
    /// byte), and `matches` one at a time in the last partial word.
    #[inline(always)]
    fn first_match(
        hay: &[u8],
        flags: impl Fn(u64) -> u64,
        matches: impl Fn(u8) -> bool,
    ) -> Option<usize> {
        let mut words = hay.chunks_exact(8);
        let mut at = 0;
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            let found = flags(u64::from_le_bytes(word));
            if found != 0 {
                return Some(at + (found.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        words
            .remainder()
            .iter()
            .position(|&c| matches(c))
            .map(|i| at + i)
    }
}

/// True when `byte` occurs in `hay` (eight bytes at a time, by [`find_byte`]).
#[inline]
pub(crate) fn contains_byte(hay: &[u8], byte: u8) -> bool {
    find_byte(hay, byte).is_some()
}

/// Linear white space inside a header value. A folded line keeps its CRLF in the value, and
/// RFC 3261 §7.3.1 makes the fold equivalent to a space, so CR and LF count as white space here.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Parses an unsigned decimal of at most `max` value; `None` on empty input, a non-digit or
/// overflow. Leading zeros are allowed (RFC 4475 §3.1.1.1 `0068`), with a bound on the number
/// of digits so the work stays bounded.
pub(crate) fn parse_decimal(digits: &[u8], max: u64) -> Option<u64> {
    if digits.is_empty() || digits.len() > 40 {
        return None;
    }
    // Nineteen digits cannot overflow a u64, and a value only grows digit by digit, so one
    // bound check at the end decides as a check after every digit would.
    if digits.len() <= 19 {
        let mut value: u64 = 0;
        for &d in digits {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value * 10 + u64::from(digit);
        }
        return (value <= max).then_some(value);
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        if value > max {
            return None;
        }
    }
    Some(value)
}

/// ASCII case-insensitive comparison.
#[inline]
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// [`eq_ic`] against a name spelled in lower-case letters only (`branch`, `tag`, `lr` ...), a
/// word at a time. For a lower-case letter `l`, `a | 0x20 == l` holds exactly when `a` is `l`
/// or its upper case, which is what a case-insensitive compare asks; so setting bit 0x20 of
/// every byte of `name` and comparing words decides it for all the bytes at once.
#[inline(always)]
pub(crate) fn eq_ic_letters(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(u8::is_ascii_lowercase));
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    let word4 = |b: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let word8 = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    match n {
        // Two overlapping words cover the name.
        4..=7 => {
            let same = |at: usize| word4(name, at) | 0x2020_2020 == word4(lower, at);
            same(0) && same(n - 4)
        }
        8..=16 => {
            let same = |at: usize| word8(name, at) | 0x2020_2020_2020_2020 == word8(lower, at);
            same(0) && same(n - 8)
        }
        _ => name.iter().zip(lower).all(|(&a, &l)| a | 0x20 == l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! break_table {
        ($($name:ident: $input:expr, $from:expr => $expected:expr;)*) => {
            $(#[test] fn $name() { assert_eq!(find_line_break($input, $from), $expected); })*
        };
    }

    break_table! {
        empty: b"", 0 => 0;
        none_short: b"abc", 0 => 3;
        none_long: b"abcdefghijklmnopqrstuvwxyz", 0 => 26;
        cr_first: b"\rabc", 0 => 0;
        lf_in_tail: b"abcdefghij\n", 0 => 10;
        lf_in_word: b"abc\ndefghijk", 0 => 3;
        from_offset: b"a\nbcdefghij\r\n", 2 => 11;
        tab_and_nul_skipped: b"a\tb\0cdefgh\x0bij\nk", 0 => 13;
        control_then_crlf_same_word: b"ab\tc\r\nefghij", 0 => 4;
        high_bytes_skipped: b"\xff\xfe\x80\x8d\x8a\xc3\xa9xyz\r", 0 => 10;
        past_end: b"ab", 5 => 2;
    }

    /// Runs `check` on every sub-slice of `text` (with its range, for the failure message), so
    /// the word-at-a-time scans meet every alignment and tail length.
    fn every_window(text: &[u8], mut check: impl FnMut(&[u8], &str)) {
        for from in 0..=text.len() {
            for to in from..=text.len() {
                check(&text[from..to], &format!("{from}..{to}"));
            }
        }
    }

    #[test]
    fn find_byte_matches_a_plain_scan() {
        let text = b"Content-Length : 1\r\nVia:\x3a\xba\x3b:::x\0abcdefghijklmnop:";
        every_window(text, |hay, at| {
            for byte in [b':', b'x', 0, 0xba, 0x3b, b'\n'] {
                let plain = hay.iter().position(|&b| b == byte);
                assert_eq!(find_byte(hay, byte), plain, "{at} {byte}");
                assert_eq!(swar::find_byte(hay, byte), plain, "swar {at} {byte}");
            }
        });
    }

    #[test]
    fn find_either_matches_a_plain_scan() {
        let text = b"INVITE sip:a@b\tSIP/2.0 \x20\x09\xa0\x89 x\0abcdefghijklmnopq\t";
        every_window(text, |hay, at| {
            for (a, b) in [(b' ', b'\t'), (b'\t', b' '), (0, 0xa0), (b'q', b'x')] {
                let plain = hay.iter().position(|&c| c == a || c == b);
                assert_eq!(find_either(hay, a, b), plain, "{at} {a} {b}");
                assert_eq!(swar::find_either(hay, a, b), plain, "swar {at} {a} {b}");
            }
        });
    }

    #[test]
    fn find_any3_matches_a_plain_scan() {
        let text = b"Via: SIP/2.0/UDP a,b;x=\"q\\\"\"\r\n f<o>o,\x0c\rbar\nbaz<\x0d\xac\x2c\"";
        every_window(text, |hay, at| {
            for (a, b, c) in [(b',', b'"', b'<'), (b'"', b'>', b'>'), (0, 0xac, b'\r')] {
                let plain = hay.iter().position(|&x| x == a || x == b || x == c);
                assert_eq!(find_any3(hay, a, b, c), plain, "{at} {a} {b} {c}");
                assert_eq!(
                    swar::find_any3(hay, a, b, c),
                    plain,
                    "swar {at} {a} {b} {c}"
                );
            }
        });
    }

    #[test]
    fn find_semicolon_or_space_matches_a_plain_scan() {
        every_window(
            b"sip:alice@example.com;x\t\x01\r\n sip:\x7f\xff;\x80\x9f\xa0\xa1\xc0!\0abcdefghijklmnopq;",
            |w, label| {
                let plain = w.iter().position(|&c| c == b';' || c <= b' ');
                assert_eq!(find_semicolon_or_space(w), plain, "{label}");
                assert_eq!(swar::find_semicolon_or_space(w), plain, "swar {label}");
            },
        );
    }

    #[test]
    fn contains_byte_matches_a_plain_scan() {
        let text = b"Via: SIP/2.0/UDP a,b;x=\"q\\\"\"\r\n f\0oo,\x0c\rbar\nbaz<\x0d\xac\x2c";
        every_window(text, |hay, at| {
            for byte in [b',', b'<', b'@', 0, 0xac, 0x2b, 0x2d, b'\r'] {
                assert_eq!(contains_byte(hay, byte), hay.contains(&byte), "{at} {byte}");
            }
        });
    }

    #[test]
    fn class_len_matches_a_plain_scan() {
        let text = b"z9hG4bK-25317-1-0;rport=5060 x\x80y127.0.0.1:5060;lr>abc\"d";
        every_window(text, |hay, at| {
            for table in [&TOKEN, &GEN_VALUE, &URI_USER, &URI_PARAM, &CALL_ID] {
                let plain = hay
                    .iter()
                    .position(|&b| !table[usize::from(b)])
                    .unwrap_or(hay.len());
                assert_eq!(class_len(hay, table), plain, "{at}");
            }
        });
    }

    #[test]
    fn eq_ic_letters_matches_eq_ic() {
        let names: [&[u8]; 12] = [
            b"lr",
            b"ob",
            b"tag",
            b"comp",
            b"rport",
            b"alias",
            b"maddr",
            b"branch",
            b"received",
            b"transport",
            b"averyveryverylongname",
            b"",
        ];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for name in names {
            cases.push(name.to_vec());
            cases.push(name.to_ascii_uppercase());
            for i in 0..name.len() {
                for flip in [0x20u8, 0x01, 0x40, 0x80, 0x21] {
                    let mut m = name.to_vec();
                    m[i] ^= flip;
                    cases.push(m);
                }
            }
            cases.push([name, &b"x"[..]].concat());
        }
        cases.push(b"BRAnch".to_vec());
        cases.push(b"br@nch".to_vec());
        cases.push(b"\x02\x12\x01\x0e\x03\x08".to_vec());
        for name in names {
            for case in &cases {
                assert_eq!(
                    eq_ic_letters(case, name),
                    eq_ic(case, name),
                    "{case:?} {name:?}"
                );
            }
        }
    }

    /// The first CR or LF at or after `from`, or `buf.len()`, one byte at a time.
    fn plain_line_break(buf: &[u8], from: usize) -> usize {
        buf.get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\r' || b == b'\n'))
            .map_or(buf.len(), |p| from + p)
    }

    #[test]
    fn colon_and_line_break_match_a_plain_scan() {
        let text = b"Via:a\r\nX-Trace-1: carried as written\r\n\ra:b\n:\nContent-Length : 12\r\nabcdefghijklmnopqrs:";
        every_window(text, |buf, at| {
            for start in 0..=buf.len() + 1 {
                let plain = buf
                    .get(start..)
                    .and_then(|rest| rest.iter().position(|&b| b == b':'))
                    .map(|colon| (start + colon, plain_line_break(buf, start + colon)));
                let found = find_colon_and_line_break(buf, start);
                assert_eq!(found, plain, "{at} start {start}");
            }
        });
    }

    #[test]
    fn line_break_matches_a_plain_scan() {
        let text = b"Via: SIP/2.0/UDP a\tb;x=\"q\\\"\"\r\n f\0oo\x0c\rbar\nbaz\x0d\x8d\x8a\xff abcdefghijklmnop\n";
        every_window(text, |buf, at| {
            for from in 0..=buf.len() + 1 {
                let plain = plain_line_break(buf, from);
                assert_eq!(find_line_break(buf, from), plain, "{at} from {from}");
                assert_eq!(
                    swar::find_line_break(buf, from),
                    plain,
                    "swar {at} from {from}"
                );
            }
        });
    }
}
