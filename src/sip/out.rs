//! A bounded writer over the caller's output buffer, with allocation-free number formatting.
//!
//! Every message sipedge writes itself (stateless responses, forwarded requests' new header
//! lines, the ACK for an absorbed failure) goes through [`Out`], so that overflow handling and
//! the size a too-small buffer needed are computed one way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Appends to `buf[..]`; once something does not fit, every later write is ignored and
/// [`Out::overflowed`] reports it, so callers check once at the end instead of at every write.
pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
    /// Bytes every write so far asked for, written or not: the size `buf` needed.
    needed: usize,
}

impl<'a> Out<'a> {
    /// A writer that starts at the beginning of `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            overflow: false,
            needed: 0,
        }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    /// The size the buffer needed to hold every write so far (equal to [`Out::len`] unless
    /// something overflowed).
    pub(crate) fn required(&self) -> usize {
        self.needed
    }

    /// True when some write did not fit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The bytes written so far.
    pub(crate) fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    /// Appends bytes.
    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        self.needed += bytes.len();
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) if !self.overflow => {
                dst.copy_from_slice(bytes);
                self.pos = end;
            }
            _ => self.overflow = true,
        }
    }

    /// Appends a string.
    #[inline]
    pub(crate) fn put_str(&mut self, s: &str) {
        self.put(s.as_bytes());
    }

    /// Appends a decimal number.
    pub(crate) fn put_u64(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        self.put(itoa(n, &mut digits));
    }

    /// Appends `n` as exactly `width` lower-case hex digits (the low `4 * width` bits).
    pub(crate) fn put_hex(&mut self, n: u64, width: usize) {
        let digits = hex16(n);
        self.put(&digits[16 - width.min(16)..]);
    }

    /// Appends `n` in lower-case hex without leading zeros (`0` for zero).
    pub(crate) fn put_hex_compact(&mut self, n: u64) {
        let width = (16 - (n.leading_zeros() as usize / 4)).max(1);
        self.put_hex(n, width);
    }

    /// Appends an IP address as a Via `received` value or URI host needs it: IPv4 dotted,
    /// IPv6 in RFC 5952 text; `bracket_v6` adds the `[ ]` of an IPv6reference (RFC 3261 §25.1).
    pub(crate) fn put_ip(&mut self, ip: IpAddr, bracket_v6: bool) {
        match ip {
            IpAddr::V4(v4) => self.put_ipv4(v4),
            IpAddr::V6(v6) => {
                if bracket_v6 {
                    self.put(b"[");
                }
                self.put_ipv6(v6);
                if bracket_v6 {
                    self.put(b"]");
                }
            }
        }
    }

    fn put_ipv4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().iter().enumerate() {
            if i > 0 {
                self.put(b".");
            }
            self.put_u64(u64::from(*octet));
        }
    }

    fn put_ipv6(&mut self, ip: Ipv6Addr) {
        // RFC 5952: lower-case hex, the longest run (>= 2) of zero groups shortened to "::".
        let groups = ip.segments();
        if let Some(v4) = ip.to_ipv4_mapped() {
            self.put(b"::ffff:");
            self.put_ipv4(v4);
            return;
        }
        // The first longest run of at least two zero groups.
        let mut best: Option<(usize, usize)> = None;
        let mut i = 0;
        while i < 8 {
            if groups[i] == 0 {
                let start = i;
                while i < 8 && groups[i] == 0 {
                    i += 1;
                }
                let len = i - start;
                if len >= 2 && best.is_none_or(|(_, l)| len > l) {
                    best = Some((start, len));
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < 8 {
            if let Some((start, len)) = best
                && i == start
            {
                self.put(b"::");
                i += len;
                continue;
            }
            if i > 0 && best.is_none_or(|(start, len)| i != start + len) {
                self.put(b":");
            }
            self.put_hex_compact(u64::from(groups[i]));
            i += 1;
        }
    }
}

/// The 16 lower-case hex digits of `n`, most significant first. Eight at a time in a word:
/// every branch we write and check carries 32 of them, and a table lookup per digit was most
/// of writing one.
#[inline]
fn hex16(n: u64) -> [u8; 16] {
    /// The eight digits of `x` as bytes in text order (most significant in the lowest byte).
    fn eight(x: u32) -> [u8; 8] {
        const ONES: u64 = 0x0101_0101_0101_0101;
        // Spread the nibbles one per byte, nibble k in byte k.
        let mut v = u64::from(x);
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v << 4)) & (ONES * 0x0F);
        // A nibble of 10 or more carries into bit 4 when 6 is added: those bytes skip the
        // 39 characters between '9' + 1 and 'a'.
        let letters = ((v + ONES * 6) >> 4) & ONES;
        let ascii = v + ONES * u64::from(b'0') + letters * 39;
        ascii.swap_bytes().to_le_bytes()
    }
    let mut digits = [0u8; 16];
    digits[..8].copy_from_slice(&eight((n >> 32) as u32));
    digits[8..].copy_from_slice(&eight(n as u32));
    digits
}

/// The two-digit decimal forms of 0 to 99, in order.
static DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        table[2 * i] = b'0' + (i / 10) as u8;
        table[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    table
};

/// Formats `n` in decimal into `buf` and returns the digits (two digits per division; the
/// ports and lengths written per message fit in 32 bits, where division is cheaper).
pub(crate) fn itoa(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    while n > u64::from(u32::MAX) {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    let mut m = n as u32;
    while m >= 100 {
        let pair = (m % 100) as usize * 2;
        m /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if m >= 10 {
        let pair = m as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + m as u8;
    }
    &buf[i..]
}

/// The value of one hex digit (either case).
#[inline(always)]
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses lower- or upper-case hex of at most 16 digits.
///
/// Eight digits at a time in a word: a response's branch check reads 32 of them.
pub(crate) fn parse_hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    let mut words = text.chunks_exact(8);
    let mut n = 0u64;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        n = (n << 32) | u64::from(hex8(u64::from_be_bytes(word))?);
    }
    for &b in words.remainder() {
        n = (n << 4) | u64::from(hex_digit(b)?);
    }
    Some(n)
}

/// [`parse_hex`] of exactly eight digits, inlined where it is called: the fixed-width
/// fields of a branch skip the length checks and the call.
#[inline(always)]
pub(crate) fn parse_hex8(text: &[u8; 8]) -> Option<u32> {
    hex8(u64::from_be_bytes(*text))
}

/// [`parse_hex`] of exactly sixteen digits, likewise.
#[inline(always)]
pub(crate) fn parse_hex16(text: &[u8; 16]) -> Option<u64> {
    let (high, low) = text.split_at(8);
    let high = parse_hex8(high.try_into().ok()?)?;
    let low = parse_hex8(low.try_into().ok()?)?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// The value of eight hex digits, the first in the most significant byte of `w`, if all
/// of them are hex digits.
#[inline]
fn hex8(w: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES << 7;
    /// The high bit of each byte of `x` in `lo..=hi` (bytes below 0x80: no carries).
    fn within(x: u64, lo: u8, hi: u8) -> u64 {
        (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGH
    }
    if w & HIGH != 0 {
        return None;
    }
    // Setting bit 5 maps 'A'..='F' onto 'a'..='f' and nothing else there.
    let folded = w | (ONES * 0x20);
    let digit = within(w, b'0', b'9');
    let letter = within(folded, b'a', b'f');
    if digit | letter != HIGH {
        return None;
    }
    // '0'..'9' end in their value; 'a'..'f' in 1..6, nine short of theirs.
    let mut v = (folded & (ONES * 0x0f)) + (letter >> 7) * 9;
    v = (v | (v >> 4)) & 0x00FF_00FF_00FF_00FF;
    v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
    v = (v | (v >> 16)) & 0xFFFF_FFFF;
    Some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digit_reads_what_std_reads() {
        for b in 0..=255u8 {
            assert_eq!(
                hex_digit(b).map(u32::from),
                char::from(b).to_digit(16),
                "{b}"
            );
        }
    }

    fn render(f: impl FnOnce(&mut Out<'_>)) -> String {
        let mut buf = [0u8; 128];
        let mut out = Out::new(&mut buf);
        f(&mut out);
        assert!(!out.overflowed());
        String::from_utf8(out.written().to_vec()).unwrap()
    }

    macro_rules! ip_table {
        ($($name:ident: $ip:expr => $text:expr,)*) => {$(
            #[test]
            fn $name() {
                let ip: IpAddr = $ip.parse().unwrap();
                assert_eq!(render(|o| o.put_ip(ip, false)), $text);
                // Must agree with the standard library's RFC 5952 rendering.
                assert_eq!(ip.to_string(), $text);
            }
        )*};
    }

    ip_table! {
        v4: "192.0.2.4" => "192.0.2.4",
        v4_zero: "0.0.0.0" => "0.0.0.0",
        v6_loopback: "::1" => "::1",
        v6_unspecified: "::" => "::",
        v6_doc: "2001:db8::7" => "2001:db8::7",
        v6_single_zero_not_shortened: "2001:db8:0:1:1:1:1:1" => "2001:db8:0:1:1:1:1:1",
        v6_first_longest_run: "2001:0:0:1:0:0:0:1" => "2001:0:0:1::1",
        v6_equal_runs_first_wins: "2001:db8:0:0:1:0:0:1" => "2001:db8::1:0:0:1",
        v6_trailing_run: "fe80:1::" => "fe80:1::",
        v6_mapped: "::ffff:192.0.2.1" => "::ffff:192.0.2.1",
    }

    #[test]
    fn numbers() {
        assert_eq!(render(|o| o.put_u64(0)), "0");
        assert_eq!(render(|o| o.put_u64(u64::MAX)), "18446744073709551615");
        assert_eq!(render(|o| o.put_hex(0xab, 4)), "00ab");
        assert_eq!(render(|o| o.put_hex_compact(0)), "0");
        assert_eq!(render(|o| o.put_hex_compact(0x1f00)), "1f00");
        assert_eq!(parse_hex(b"1F00"), Some(0x1f00));
        assert_eq!(parse_hex(b"g"), None);
    }

    #[test]
    fn hex_matches_the_standard_formatting() {
        let mut values = vec![0, 1, 9, 10, 15, 16, u64::MAX, 0x0123_4567_89ab_cdef];
        for shift in 0..64 {
            values.extend([
                1u64 << shift,
                (1u64 << shift) - 1,
                0xa5a5_a5a5_a5a5_a5a5 >> shift,
            ]);
        }
        for n in values {
            for width in 0..=16 {
                let full = format!("{n:016x}");
                assert_eq!(
                    render(|o| o.put_hex(n, width)),
                    full[16 - width..],
                    "{n} {width}"
                );
            }
            assert_eq!(render(|o| o.put_hex_compact(n)), format!("{n:x}"));
        }
    }

    #[test]
    fn parse_hex_matches_the_standard_parser() {
        let reference = |t: &[u8]| {
            let t = std::str::from_utf8(t).ok()?;
            if t.is_empty() || t.len() > 16 || t.starts_with('+') {
                return None;
            }
            u64::from_str_radix(t, 16).ok()
        };
        let base = b"0123456789abcdefABCDEF";
        let mut texts: Vec<Vec<u8>> = Vec::new();
        for len in 0..=17 {
            texts.push(base.iter().cycle().skip(len).take(len).copied().collect());
        }
        for b in 0..=255u8 {
            for at in [0, 3, 7, 8, 12, 15] {
                let mut t = b"0f1e2d3c4b5a6978".to_vec();
                t[at] = b;
                texts.push(t.clone());
                texts.push(t[..at + 1].to_vec());
            }
        }
        for t in texts {
            assert_eq!(
                parse_hex(&t),
                reference(&t),
                "{:?}",
                String::from_utf8_lossy(&t)
            );
            // The fixed-width readers agree with the general one on their widths.
            if let Ok(eight) = <&[u8; 8]>::try_from(t.as_slice()) {
                assert_eq!(parse_hex8(eight).map(u64::from), parse_hex(&t));
            }
            if let Ok(sixteen) = <&[u8; 16]>::try_from(t.as_slice()) {
                assert_eq!(parse_hex16(sixteen), parse_hex(&t));
            }
        }
    }

    #[test]
    fn itoa_matches_the_standard_formatting() {
        let mut values: Vec<u64> = (0..=100_000).collect();
        for shift in 0..64 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1]);
        }
        let mut ten = 1u64;
        while let Some(next) = ten.checked_mul(10) {
            values.extend([ten - 1, ten, ten + 1, next - 1]);
            ten = next;
        }
        values.extend([
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]);
        for n in values {
            let mut buf = [0u8; 20];
            assert_eq!(itoa(n, &mut buf), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn overflow_is_sticky() {
        let mut buf = [0u8; 4];
        let mut out = Out::new(&mut buf);
        out.put(b"abc");
        out.put(b"de");
        out.put(b"f");
        assert!(out.overflowed());
        assert_eq!(out.written(), b"abc");
    }
}
