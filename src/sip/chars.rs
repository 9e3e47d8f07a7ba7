//! Byte classes of the RFC 3261 §25.1 grammar, as lookup tables.

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
static TOKEN: [bool; 256] = build(b"-.!%*_+`'~", true);

/// Characters allowed in the user part of a SIP URI (unreserved, escaped, user-unreserved).
static URI_USER: [bool; 256] = build(b"-_.!~*'()%&=+$,;?/", true);

/// Characters allowed in a URI password.
static URI_PASSWORD: [bool; 256] = build(b"-_.!~*'()%&=+$,", true);

/// Characters of a URI parameter name or value (paramchar) and of header names/values of a URI.
static URI_PARAM: [bool; 256] = build(b"-_.!~*'()%[]/:&+$", true);

/// Characters of URI headers (hnv-unreserved plus unreserved and escaped, plus `=` and `&`).
static URI_HEADERS: [bool; 256] = build(b"-_.!~*'()%[]/?:+$=&", true);

/// Characters of a host name or address (hostname, IPv4, IPv6 reference).
static HOST: [bool; 256] = build(b"-.[]:", true);

/// Characters allowed in a URI of an unknown scheme (RFC 3986 reserved + unreserved + `%`).
static ABS_URI: [bool; 256] = build(b"-_.!~*'()%;/?:@&=+$,[]#", true);

/// `word` of RFC 3261 §25.1 (Call-ID): token characters plus `( ) < > : \ " / [ ] ? { }`.
static WORD: [bool; 256] = build(b"-.!%*_+`'~()<>:\\\"/[]?{}", true);

#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

#[inline]
pub(crate) fn is_user(b: u8) -> bool {
    URI_USER[b as usize]
}

#[inline]
pub(crate) fn is_password(b: u8) -> bool {
    URI_PASSWORD[b as usize]
}

#[inline]
pub(crate) fn is_uri_param(b: u8) -> bool {
    URI_PARAM[b as usize]
}

#[inline]
pub(crate) fn is_uri_headers(b: u8) -> bool {
    URI_HEADERS[b as usize]
}

#[inline]
pub(crate) fn is_host(b: u8) -> bool {
    HOST[b as usize]
}

#[inline]
pub(crate) fn is_abs_uri(b: u8) -> bool {
    ABS_URI[b as usize]
}

#[inline]
pub(crate) fn is_word(b: u8) -> bool {
    WORD[b as usize]
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
