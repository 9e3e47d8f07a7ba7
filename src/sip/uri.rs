//! SIP and SIPS URIs (RFC 3261 §19.1, §25.1), parsed in place.

use super::Span;
use super::Transport;
use super::chars::{
    URI_PARAM, URI_PASSWORD, URI_USER, class_len, contains_byte, eq_ic, eq_ic_letters, find_byte,
    is_abs_uri, is_token, is_uri_headers,
};

/// The kind of a host (RFC 3261 §25.1 `host = hostname / IPv4address / IPv6reference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// A domain name.
    Domain,
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// A bracketed IPv6 reference (`[2001:db8::1]`); the brackets are part of the text.
    Ipv6,
}

/// A host as written and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Host<'b> {
    /// The host text as written (IPv6 references keep their brackets).
    pub text: &'b [u8],
}

impl<'b> Host<'b> {
    /// What kind of host it is, read from the text when asked: the grammar accepts a name of
    /// host characters either way, so the parse does not tell an IPv4 address from a domain
    /// name for the many hosts (From, To, Contact ...) whose kind the proxy never asks.
    pub fn kind(&self) -> HostKind {
        if self.text.first() == Some(&b'[') {
            HostKind::Ipv6
        } else if is_dotted_quad(self.text) {
            HostKind::Ipv4
        } else {
            HostKind::Domain
        }
    }

    /// The address without IPv6 brackets, ready for `str::parse::<IpAddr>()`.
    pub fn unbracketed(&self) -> &'b [u8] {
        match self.text {
            [b'[', inner @ .., b']'] => inner,
            [b'[', ..] => b"",
            _ => self.text,
        }
    }
}

/// Bytes of a hostname or IPv4 address (RFC 3261 §25.1): letters, digits, `-` and `.`.
pub(crate) static HOST_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        c += 1;
    }
    table
};

/// A byte of a hostname or IPv4 address: letter, digit, `-` or `.`.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    HOST_CHAR[usize::from(b)]
}

/// Validates and classifies a host. Rejects empty hosts and characters outside the grammar.
pub(crate) fn parse_host(text: &[u8]) -> Option<Host<'_>> {
    let (&first, &last) = (text.first()?, text.last()?);
    if first == b'[' {
        if last != b']' || text.len() < 4 {
            return None;
        }
        let inner = &text[1..text.len() - 1];
        let ok = inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && inner.contains(&b':');
        return ok.then_some(Host { text });
    }
    text.iter()
        .all(|&b| is_host_char(b))
        .then_some(Host { text })
}

/// RFC 3261 §25.1 `IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT`, each at
/// most 255 (leading zeros allowed).
///
/// Eight bytes at a time: an address of 8 to 15 bytes is read as its first and its last eight
/// bytes (overlapping), which are checked to hold only digits and dots, and whose dots are
/// gathered into one bit per byte; the label lengths then follow from the dot positions.
#[inline]
fn is_dotted_quad(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// The high bit of each byte of `w` that is a dot.
    fn dots(w: u64) -> u64 {
        let z = w ^ (ONES * u64::from(b'.'));
        !(((z & LOW7) + LOW7) | z) & HIGH
    }
    /// The high bit of each byte of `w` that is not a digit (no carries cross bytes: the
    /// high bit is taken out before the add and put back after).
    fn non_digits(w: u64) -> u64 {
        let t = w ^ (ONES * u64::from(b'0'));
        (((t & LOW7) + ONES * 0x76) | t) & HIGH
    }
    /// One bit per byte (bit k for byte k) from the high bits of `mask`: each byte's bit
    /// lands in the top byte and no two partial products overlap.
    fn gather(mask: u64) -> u32 {
        ((mask >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    }
    let len = text.len();
    let (Some(head), Some(tail)) = (text.first_chunk::<8>(), text.last_chunk::<8>()) else {
        return len == 7 && is_dotted_quad_bytewise(text);
    };
    if len > 15 {
        return false;
    }
    let (head, tail) = (u64::from_le_bytes(*head), u64::from_le_bytes(*tail));
    let (head_dots, tail_dots) = (dots(head), dots(tail));
    if (non_digits(head) & !head_dots) | (non_digits(tail) & !tail_dots) != 0 {
        return false;
    }
    // Bit k set when text[k] is a dot.
    let dot_bits = gather(head_dots) | (gather(tail_dots) << (len - 8));
    // Exactly three dots. A missing one reads as position 32, which leaves a label too long.
    let without_first = dot_bits & dot_bits.wrapping_sub(1);
    let without_second = without_first & without_first.wrapping_sub(1);
    if without_second & without_second.wrapping_sub(1) != 0 {
        return false;
    }
    let first = dot_bits.trailing_zeros() as usize;
    let second = without_first.trailing_zeros() as usize;
    let third = without_second.trailing_zeros() as usize;
    [
        (0, first),
        (first + 1, second),
        (second + 1, third),
        (third + 1, len),
    ]
    .iter()
    .all(|&(start, end)| octet_fits(text, start, end))
}

/// `text[start..end]`, all digits, is one to three of them and at most 255.
#[inline(always)]
fn octet_fits(text: &[u8], start: usize, end: usize) -> bool {
    match end.checked_sub(start) {
        Some(1 | 2) => true,
        // Three digits compare as their ASCII bytes do, read as one big-endian number.
        Some(3) => text.get(start..end).is_some_and(|d| {
            u32::from_be_bytes([0, d[0], d[1], d[2]]) <= u32::from_be_bytes([0, b'2', b'5', b'5'])
        }),
        _ => false,
    }
}

/// [`is_dotted_quad`] a byte at a time, for the addresses shorter than eight bytes.
fn is_dotted_quad_bytewise(text: &[u8]) -> bool {
    let mut labels = 0;
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'.' {
            if !octet_fits(text, start, i) {
                return false;
            }
            labels += 1;
            start = i + 1;
        } else if !b.is_ascii_digit() {
            return false;
        }
    }
    labels == 3 && octet_fits(text, start, text.len())
}

/// Parses a port: 1 to 5 digits, at most 65535.
pub(crate) fn parse_port(digits: &[u8]) -> Option<u16> {
    match port_at(digits, 0) {
        Some((port, end)) if end == digits.len() => Some(port),
        _ => None,
    }
}

/// Reads RFC 3261 §25.1 `port = 1*DIGIT` at `s[at..]`: all the digits there, of which there
/// must be one to five with a value of at most 65535. Returns the port and the offset after it.
#[inline]
pub(crate) fn port_at(s: &[u8], at: usize) -> Option<(u16, usize)> {
    let mut i = at;
    let mut value = 0u32;
    while let Some(&b) = s.get(i) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        if i - at == 5 {
            return None;
        }
        value = value * 10 + u32::from(digit);
        i += 1;
    }
    if i == at {
        return None;
    }
    u16::try_from(value).ok().map(|port| (port, i))
}

/// The URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:` (RFC 3261 §19.1: TLS on every hop).
    Sips,
}

/// A SIP or SIPS URI, borrowed from the message. All text is as written (still %-escaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'b> {
    /// Offsets of the whole URI in the message buffer.
    pub span: Span,
    /// `sip` or `sips`.
    pub scheme: Scheme,
    /// The user part, if any (escaped as written).
    pub user: Option<&'b [u8]>,
    /// The password, if any.
    pub password: Option<&'b [u8]>,
    /// The host.
    pub host: Host<'b>,
    /// The port, if written.
    pub port: Option<u16>,
    /// The raw parameter region, starting with its first `;` (empty when there is none).
    pub params: &'b [u8],
    /// The raw headers after `?` (without the `?`), if any.
    pub headers: Option<&'b [u8]>,
    /// The `lr` parameter is present (RFC 3261 §19.1.1 loose routing).
    pub lr: bool,
    /// The `ob` parameter is present (RFC 5626 §5.3 outbound).
    pub ob: bool,
    /// The `transport=` parameter, if present.
    pub transport: Option<Transport>,
    /// The `maddr=` parameter value, if present.
    pub maddr: Option<&'b [u8]>,
    /// The `comp=` parameter value (RFC 3486, `sigcomp`), if present.
    pub comp: Option<&'b [u8]>,
}

impl<'b> SipUri<'b> {
    /// Looks up a URI parameter by name (case-insensitive): `None` if absent, `Some(None)` for
    /// a parameter without value, `Some(Some(value))` otherwise.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'b [u8]>> {
        uri_params(self.params)
            .find(|(n, _)| eq_ic(n, name))
            .map(|(_, v)| v)
    }

    /// Iterates over the URI parameters in order, as `(name, value)`.
    pub fn params(&self) -> impl Iterator<Item = (&'b [u8], Option<&'b [u8]>)> + 'b {
        uri_params(self.params)
    }

    /// True for `sips:`.
    pub fn is_sips(&self) -> bool {
        self.scheme == Scheme::Sips
    }
}

/// Splits a `;a=b;c` region into `(name, value)` pairs.
fn uri_params(region: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    region
        .split(|&b| b == b';')
        .skip(1)
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(eq) => (&p[..eq], Some(&p[eq + 1..])),
            None => (p, None),
        })
}

/// A URI as found in a Request-URI or a name-addr: SIP/SIPS, or another scheme kept opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'b> {
    /// A SIP or SIPS URI.
    Sip(SipUri<'b>),
    /// An absolute URI of another scheme (`tel:`, `urn:`, ...), kept as written.
    Other {
        /// The scheme, without the colon.
        scheme: &'b [u8],
        /// Offsets of the whole URI.
        span: Span,
    },
}

impl<'b> Uri<'b> {
    /// Offsets of the URI in the buffer.
    pub fn span(&self) -> Span {
        match self {
            Self::Sip(u) => u.span,
            Self::Other { span, .. } => *span,
        }
    }

    /// The SIP/SIPS URI, if it is one.
    pub fn as_sip(&self) -> Option<&SipUri<'b>> {
        match self {
            Self::Sip(u) => Some(u),
            Self::Other { .. } => None,
        }
    }
}

/// Why a URI failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriError {
    /// Malformed, at this absolute offset.
    Malformed(usize),
    /// A SIP URI with headers where they are not allowed (Request-URI).
    Headers(usize),
}

/// Where a URI's scheme says to go on.
enum SchemeOf {
    /// SIP or SIPS; the rest starts at this offset.
    Sip(Scheme, usize),
    /// Another valid absolute URI, with this scheme.
    Other(usize),
}

/// Reads and checks the scheme of the URI occupying `buf[start..end]`; an opaque URI of
/// another scheme is checked whole here.
#[inline(always)]
fn scheme_of(buf: &[u8], start: usize, end: usize) -> Result<SchemeOf, UriError> {
    let text = buf.get(start..end).ok_or(UriError::Malformed(start))?;
    // The usual schemes first, without scanning for the colon; lower case as written almost
    // always, then in any case.
    if text.starts_with(b"sip:") || (text.len() >= 4 && eq_ic(&text[..4], b"sip:")) {
        return Ok(SchemeOf::Sip(Scheme::Sip, start + 4));
    }
    if text.len() >= 5 && eq_ic(&text[..5], b"sips:") {
        return Ok(SchemeOf::Sip(Scheme::Sips, start + 5));
    }
    let colon = text
        .iter()
        .position(|&b| b == b':')
        .ok_or(UriError::Malformed(start))?;
    let scheme = &text[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(UriError::Malformed(start));
    }
    if eq_ic(scheme, b"sip") {
        return Ok(SchemeOf::Sip(Scheme::Sip, start + colon + 1));
    }
    if eq_ic(scheme, b"sips") {
        return Ok(SchemeOf::Sip(Scheme::Sips, start + colon + 1));
    }
    let rest = &text[colon + 1..];
    if rest.is_empty() || !rest.iter().all(|&b| is_abs_uri(b)) {
        return Err(UriError::Malformed(start));
    }
    Ok(SchemeOf::Other(colon))
}

/// Parses the URI occupying `buf[start..end]` (no surrounding white space).
/// `allow_headers` is false for a Request-URI (RFC 3261 §19.1.5).
pub(crate) fn parse_uri(
    buf: &[u8],
    start: usize,
    end: usize,
    allow_headers: bool,
) -> Result<Uri<'_>, UriError> {
    match scheme_of(buf, start, end)? {
        SchemeOf::Sip(scheme, pos) => {
            parse_sip_rest(buf, start, pos, end, scheme, allow_headers).map(Uri::Sip)
        }
        SchemeOf::Other(colon) => Ok(Uri::Other {
            scheme: &buf[start..start + colon],
            span: Span::new(start, end),
        }),
    }
}

/// Accepts exactly what [`parse_uri`] accepts, with the same error, without building the
/// typed value: for the URIs a proxy only has to validate (Contact, and Route or
/// Record-Route values it does not read), where copying a [`SipUri`] out cost more than
/// checking it.
pub(crate) fn check_uri(
    buf: &[u8],
    start: usize,
    end: usize,
    allow_headers: bool,
) -> Result<(), UriError> {
    match scheme_of(buf, start, end)? {
        SchemeOf::Sip(_, pos) => {
            let (_, pos) = sip_authority(buf, pos, end)?;
            let pos = sip_params(buf, pos, end, |name_start, name, value| {
                check_param(name, value).map_err(|()| UriError::Malformed(name_start))
            })?;
            sip_headers(buf, pos, end, allow_headers).map(|_| ())
        }
        SchemeOf::Other(_) => Ok(()),
    }
}

/// userinfo, host and port of a SIP URI.
struct Authority<'b> {
    user: Option<&'b [u8]>,
    password: Option<&'b [u8]>,
    host: Host<'b>,
    port: Option<u16>,
}

/// Reads `[userinfo "@"] host [":" port]` from `pos`; returns it and the offset after it.
/// `end` is within `buf` (checked by [`scheme_of`]).
#[inline(always)]
fn sip_authority(
    buf: &[u8],
    mut pos: usize,
    end: usize,
) -> Result<(Authority<'_>, usize), UriError> {
    let bad = |at: usize| UriError::Malformed(at);
    let s = buf.get(..end).ok_or(bad(pos))?;
    let text = s.get(pos..).ok_or(bad(pos))?;
    // RFC 3261 §25.1: userinfo cannot contain an unescaped '@', so the first '@' ends it.
    // Neither user nor password characters include '@' or ':', so one scan of each finds
    // the userinfo; a scan that stops elsewhere means there is none, unless an '@' follows
    // (then the userinfo holds a bad character).
    let user_len = class_len(text, &URI_USER);
    let (user, password, userinfo_len) = match text.get(user_len) {
        Some(b'@') => (Some(&text[..user_len]), None, Some(user_len + 1)),
        Some(b':') => {
            let after = &text[user_len + 1..];
            let pass_len = class_len(after, &URI_PASSWORD);
            if after.get(pass_len) == Some(&b'@') {
                (
                    Some(&text[..user_len]),
                    Some(&after[..pass_len]),
                    Some(user_len + 1 + pass_len + 1),
                )
            } else if contains_byte(&after[pass_len..], b'@') {
                return Err(bad(pos));
            } else {
                (None, None, None)
            }
        }
        Some(_) if contains_byte(&text[user_len..], b'@') => return Err(bad(pos)),
        _ => (None, None, None),
    };
    if let Some(len) = userinfo_len {
        if user_len == 0 {
            return Err(bad(pos));
        }
        pos += len;
    }
    let rest = &s[pos..];
    let (host, host_len) = if rest.first() == Some(&b'[') {
        let len = find_byte(rest, b']').map(|i| i + 1).ok_or(bad(pos))?;
        (parse_host(&rest[..len]).ok_or(bad(pos))?, len)
    } else {
        // The host runs to the first ':', ';' or '?' (or the end) and must hold only host
        // characters, none of which is one of those three: one scan of host characters finds
        // it and checks it.
        let len = class_len(rest, &HOST_CHAR);
        if len == 0 || !matches!(rest.get(len), None | Some(b':' | b';' | b'?')) {
            return Err(bad(pos));
        }
        (Host { text: &rest[..len] }, len)
    };
    pos += host_len;
    let mut port = None;
    if s.get(pos) == Some(&b':') {
        let (p, after) = port_at(s, pos + 1).ok_or(bad(pos))?;
        port = Some(p);
        pos = after;
    }
    Ok((
        Authority {
            user,
            password,
            host,
            port,
        },
        pos,
    ))
}

/// Offset of the first byte at or after `from` in `s` that is not a URI `paramchar`.
#[inline(always)]
fn uri_param_end(s: &[u8], from: usize) -> usize {
    from + class_len(s.get(from..).unwrap_or_default(), &URI_PARAM)
}

/// Reads the `;name[=value]` URI parameters from `pos`, handing each to `each` with the
/// offset of its name; returns the offset after the last one. `end` is within `buf`.
#[inline(always)]
fn sip_params<'b>(
    buf: &'b [u8],
    mut pos: usize,
    end: usize,
    mut each: impl FnMut(usize, &'b [u8], Option<&'b [u8]>) -> Result<(), UriError>,
) -> Result<usize, UriError> {
    let s = buf.get(..end).unwrap_or(buf);
    // RFC 3261 §25.1: uri-parameters = *( ";" uri-parameter ), pname = 1*paramchar,
    // pvalue = 1*paramchar.
    while s.get(pos) == Some(&b';') {
        let name_start = pos + 1;
        let name_end = uri_param_end(s, name_start);
        if name_end == name_start {
            return Err(UriError::Malformed(pos));
        }
        pos = name_end;
        let mut value = None;
        if s.get(pos) == Some(&b'=') {
            let value_start = pos + 1;
            let value_end = uri_param_end(s, value_start);
            if value_end == value_start {
                return Err(UriError::Malformed(pos));
            }
            value = Some(&s[value_start..value_end]);
            pos = value_end;
        }
        each(name_start, &s[name_start..name_end], value)?;
    }
    Ok(pos)
}

/// The checks on the parameters the parser interprets: `transport` needs a token value,
/// `maddr` and `comp` a value (RFC 3261 §19.1.1, RFC 3486).
#[inline(always)]
fn check_param(name: &[u8], value: Option<&[u8]>) -> Result<(), ()> {
    match name.len() {
        9 if eq_ic_letters(name, b"transport") => match value {
            Some(v) if v.iter().all(|&b| is_token(b)) => Ok(()),
            _ => Err(()),
        },
        5 if value.is_none() && eq_ic_letters(name, b"maddr") => Err(()),
        4 if value.is_none() && eq_ic_letters(name, b"comp") => Err(()),
        _ => Ok(()),
    }
}

/// Reads `?headers` from `pos` up to `end`, which must then be reached.
#[inline(always)]
fn sip_headers(
    buf: &[u8],
    pos: usize,
    end: usize,
    allow_headers: bool,
) -> Result<Option<&[u8]>, UriError> {
    if pos < end && buf[pos] == b'?' {
        if !allow_headers {
            return Err(UriError::Headers(pos));
        }
        let h = &buf[pos + 1..end];
        if h.is_empty() || !h.iter().all(|&b| is_uri_headers(b)) {
            return Err(UriError::Malformed(pos));
        }
        return Ok(Some(h));
    }
    if pos != end {
        return Err(UriError::Malformed(pos));
    }
    Ok(None)
}

fn parse_sip_rest(
    buf: &[u8],
    start: usize,
    pos: usize,
    end: usize,
    scheme: Scheme,
    allow_headers: bool,
) -> Result<SipUri<'_>, UriError> {
    let (a, params_start) = sip_authority(buf, pos, end)?;
    let mut uri = SipUri {
        span: Span::new(start, end),
        scheme,
        user: a.user,
        password: a.password,
        host: a.host,
        port: a.port,
        params: b"",
        headers: None,
        lr: false,
        ob: false,
        transport: None,
        maddr: None,
        comp: None,
    };
    let pos = sip_params(buf, params_start, end, |name_start, name, value| {
        check_param(name, value).map_err(|()| UriError::Malformed(name_start))?;
        // The length first: most parameters are none of these and cost one compare.
        match name.len() {
            2 if eq_ic_letters(name, b"lr") => uri.lr = true,
            2 if eq_ic_letters(name, b"ob") => uri.ob = true,
            9 if eq_ic_letters(name, b"transport") => {
                uri.transport = value.map(Transport::from_token)
            }
            5 if eq_ic_letters(name, b"maddr") => uri.maddr = value,
            4 if eq_ic_letters(name, b"comp") => uri.comp = value,
            _ => {}
        }
        Ok(())
    })?;
    uri.params = &buf[params_start..pos];
    uri.headers = sip_headers(buf, pos, end, allow_headers)?;
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(text: &str) -> Option<SipUri<'_>> {
        match parse_uri(text.as_bytes(), 0, text.len(), true) {
            Ok(Uri::Sip(u)) => Some(u),
            _ => None,
        }
    }

    macro_rules! uri_table {
        ($($name:ident: $input:expr => |$u:ident| $check:expr;)*) => {
            $(#[test] fn $name() {
                let $u = sip($input);
                assert!($check, "{:?}", $u);
            })*
        };
    }

    uri_table! {
        plain: "sip:alice@atlanta.com" => |u| u.is_some_and(|u| u.user == Some(b"alice") && u.host.text == b"atlanta.com" && u.port.is_none());
        port: "sip:alice@atlanta.com:5070" => |u| u.is_some_and(|u| u.port == Some(5070));
        ipv4: "sip:192.0.2.4" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Ipv4 && u.user.is_none());
        ipv6: "sips:[2001:db8::10]:5061;transport=tls" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Ipv6 && u.host.unbracketed() == b"2001:db8::10" && u.port == Some(5061) && u.transport == Some(Transport::Tls) && u.is_sips());
        lr: "sip:ss1.example.com;lr" => |u| u.is_some_and(|u| u.lr && u.param(b"LR") == Some(None));
        ob_and_params: "sip:ep1.example.com;lr;ob;foo=bar" => |u| u.is_some_and(|u| u.ob && u.param(b"foo") == Some(Some(&b"bar"[..])));
        maddr_comp: "sip:p.example.com;maddr=239.1.1.1;comp=sigcomp" => |u| u.is_some_and(|u| u.maddr == Some(b"239.1.1.1") && u.comp == Some(b"sigcomp"));
        password: "sip:alice:secret@host" => |u| u.is_some_and(|u| u.password == Some(b"secret"));
        headers_allowed: "sip:a@b?subject=x" => |u| u.is_some_and(|u| u.headers == Some(b"subject=x"));
        bad_port: "sip:a@b:99999" => |u| u.is_none();
        empty_host: "sip:a@" => |u| u.is_none();
        space: "sip:a b@c" => |u| u.is_none();
        empty_param: "sip:a@b;;lr" => |u| u.is_none();
        unterminated_v6: "sip:[2001:db8::1" => |u| u.is_none();
        ipv4_host: "sip:a@10.0.0.255:5060" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Ipv4);
        octet_over_255: "sip:a@10.0.0.256" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        four_digit_octet: "sip:a@0010.0.0.1" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        five_labels: "sip:1.2.3.4.5" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        empty_label: "sip:1..3.4" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        trailing_dot: "sip:1.2.3.4." => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        letter_label: "sip:1.2.3.a4" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        long_digits: "sip:99999999999999999999.1.1.1" => |u| u.is_some_and(|u| u.host.kind() == HostKind::Domain);
        host_port_no_user: "sip:host.example.com:5060;lr" => |u| u.is_some_and(|u| u.user.is_none() && u.port == Some(5060) && u.lr);
        empty_user: "sip:@host" => |u| u.is_none();
        empty_password: "sip:a:@host" => |u| u.is_some_and(|u| u.password == Some(b""));
        bad_password_before_at: "sip:a:b c@host" => |u| u.is_none();
        port_then_at_in_params: "sip:host:5060;maddr=x@y" => |u| u.is_none();
        user_with_semicolon: "sip:host;x=a@b" => |u| u.is_some_and(|u| u.user == Some(b"host;x=a") && u.host.text == b"b");
        upper_scheme: "SIP:a@b" => |u| u.is_some_and(|u| u.scheme == Scheme::Sip);
        sips_scheme: "SiPs:a@b" => |u| u.is_some_and(|u| u.scheme == Scheme::Sips);
        intmeth_user: "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com" => |u| u.is_some_and(|u| u.host.text == b"example.com" && u.password.is_some());
    }

    /// The dotted-quad test, eight bytes at a time, agrees with a byte-by-byte reading of the
    /// grammar on every string of up to 16 bytes drawn from digits, dots and a letter.
    #[test]
    fn dotted_quad_matches_a_plain_reading() {
        fn plain(text: &[u8]) -> bool {
            let labels: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
            labels.len() == 4
                && labels.iter().all(|l| {
                    (1..=3).contains(&l.len())
                        && l.iter().all(u8::is_ascii_digit)
                        && std::str::from_utf8(l)
                            .ok()
                            .and_then(|s| s.parse::<u32>().ok())
                            <= Some(255)
                })
        }
        let alphabet = [b'0', b'1', b'2', b'5', b'6', b'9', b'.', b'a'];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 17) as usize;
            let text: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (3 * i + 8)) & 7) as usize])
                .collect();
            assert_eq!(
                is_dotted_quad(&text),
                plain(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
        for text in [
            "1.2.3.4",
            "255.255.255.255",
            "000.000.000.000",
            "1.2.3.04",
            "10.0.0.10",
        ] {
            assert!(is_dotted_quad(text.as_bytes()), "{text}");
        }
        for text in [
            "1.2.3.256",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3",
            "1.2.3.4.5",
            "1.2..3",
            "1234.1.1.1",
        ] {
            assert!(!is_dotted_quad(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn request_uri_headers_rejected() {
        let t = b"sip:user@example.com?Route=%3Csip:example.com%3E";
        assert_eq!(parse_uri(t, 0, t.len(), false), Err(UriError::Headers(20)));
    }

    #[test]
    fn other_scheme_is_opaque() {
        let t = b"nobodyKnowsThisScheme:totallyopaquecontent";
        assert!(matches!(
            parse_uri(t, 0, t.len(), false),
            Ok(Uri::Other {
                scheme: b"nobodyKnowsThisScheme",
                ..
            })
        ));
    }
}
