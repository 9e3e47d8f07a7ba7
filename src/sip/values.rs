//! Typed header values: Via, name-addr (From/To/Contact/Route/Record-Route/Path), CSeq and
//! generic parameters. Parsers take the absolute span of one value and return borrowed views.

use super::Span;
use super::Transport;
use super::chars::{
    GEN_VALUE, class_len, contains_byte, eq_ic, eq_ic_letters, find_byte, find_semicolon_or_space,
    is_gen_value, is_lws, is_token,
};
use super::cursor::{Cursor, quoted_string_end, skip_lws, token_end};
use super::uri::{
    HOST_CHAR, Host, Uri, UriError, check_uri, parse_host, parse_port, parse_uri, port_at,
};

/// One `;name[=value]` parameter of a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'b> {
    /// The parameter name as written.
    pub name: &'b [u8],
    /// The value as written (quoted strings keep their quotes), if any.
    pub value: Option<&'b [u8]>,
    /// Offsets from the `;` to the end of the value; removing this span removes the parameter.
    pub span: Span,
}

/// Parses `*( SEMI generic-param )` from `pos` to the end of `s`, the value (RFC 3261 §25.1),
/// handing each parameter to `each` as it is read (one pass: the typed parameters are picked
/// out on the way). Fails on an empty parameter or a value that is neither a token, a host nor
/// a quoted-string, or where `each` fails. Returns the region spanning all parameters.
#[inline(always)]
fn parse_params<'b>(
    s: &'b [u8],
    pos: usize,
    each: impl FnMut(Param<'b>) -> Result<(), usize>,
) -> Result<Span, usize> {
    parse_params_until(s, pos, None, each).map(|(region, _)| region)
}

/// [`parse_params`], which may also end early at the byte `stop` (outside a quoted string):
/// the region and where the parameters ended (`s.len()`, or the offset of that `stop`).
#[inline(always)]
fn parse_params_until<'b>(
    s: &'b [u8],
    pos: usize,
    stop: Option<u8>,
    mut each: impl FnMut(Param<'b>) -> Result<(), usize>,
) -> Result<(Span, usize), usize> {
    let start = pos;
    let mut region_end = pos;
    let mut i = pos;
    loop {
        // RFC 3261 §25.1: SEMI = SWS ";" SWS, EQUAL = SWS "=" SWS.
        i = skip_lws(s, i);
        let Some(&first) = s.get(i) else {
            return Ok((Span::new(start, region_end), i));
        };
        let param_start = i;
        if first != b';' {
            if stop == Some(first) {
                return Ok((Span::new(start, region_end), i));
            }
            return Err(i);
        }
        let name_start = skip_lws(s, i + 1);
        let name_end = token_end(s, name_start);
        if name_end == name_start {
            return Err(name_start);
        }
        i = name_end;
        region_end = name_end;
        let mut value = None;
        let eq = skip_lws(s, name_end);
        if s.get(eq) == Some(&b'=') {
            // gen-value = token / host / quoted-string
            let value_start = skip_lws(s, eq + 1);
            let value_end = if s.get(value_start) == Some(&b'"') {
                quoted_string_end(s, value_start)?
            } else {
                value_start + class_len(s.get(value_start..).unwrap_or_default(), &GEN_VALUE)
            };
            if value_end == value_start {
                return Err(value_start);
            }
            value = Some(&s[value_start..value_end]);
            i = value_end;
            region_end = value_end;
        }
        each(Param {
            name: &s[name_start..name_end],
            value,
            span: Span::new(param_start, region_end),
        })?;
    }
}

/// Iterates over the parameters of a region validated by `parse_params`.
#[derive(Clone)]
pub struct Params<'b> {
    cur: Cursor<'b>,
}

impl<'b> Params<'b> {
    pub(crate) fn new(buf: &'b [u8], region: Span) -> Self {
        Self {
            cur: Cursor::new(buf, region),
        }
    }

    /// Finds a parameter by name (case-insensitive).
    pub fn get(mut self, name: &[u8]) -> Option<Param<'b>> {
        self.find(|p| eq_ic(p.name, name))
    }
}

impl<'b> Iterator for Params<'b> {
    type Item = Param<'b>;

    fn next(&mut self) -> Option<Param<'b>> {
        let cur = &mut self.cur;
        cur.skip_lws();
        let start = cur.pos;
        if !cur.eat(b';') {
            return None;
        }
        cur.skip_lws();
        let name = cur.token()?;
        let mut end = cur.pos;
        let mut value = None;
        cur.skip_lws();
        if cur.eat(b'=') {
            cur.skip_lws();
            let v = if cur.peek() == Some(b'"') {
                cur.quoted_string()?
            } else {
                cur.take_while(is_gen_value)
            };
            value = Some(cur.slice(v));
            end = cur.pos;
        } else {
            cur.pos = end;
        }
        Some(Param {
            name: cur.slice(name),
            value,
            span: Span::new(start, end),
        })
    }
}

/// The `rport` parameter of a Via value (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rport {
    /// No rport parameter.
    Absent,
    /// `;rport` without a value: the client asks for symmetric response routing.
    Requested,
    /// `;rport=PORT`.
    Port(u16),
}

/// One Via value (`via-parm`, RFC 3261 §20.42), borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'b> {
    /// Offsets of the whole value (sent-protocol to the end of the last parameter).
    pub span: Span,
    /// The transport token as written (`UDP`, `TCP`, ...).
    pub transport_token: &'b [u8],
    /// The parsed transport.
    pub transport: Transport,
    /// The sent-by host.
    pub host: Host<'b>,
    /// The sent-by port, if written.
    pub port: Option<u16>,
    /// Offsets of sent-by (host and optional port).
    pub sent_by: Span,
    /// Offsets of the parameter region (empty if none); append new parameters at its end.
    pub params: Span,
    /// The `branch` value (RFC 3261 §8.1.1.7), if present.
    pub branch: Option<&'b [u8]>,
    /// The `received` value (RFC 3261 §18.2.1), if present.
    pub received: Option<Param<'b>>,
    /// The `rport` parameter (RFC 3581).
    pub rport: Rport,
    /// The whole `;rport[=N]` parameter, if present (replace it to fill in the port).
    pub rport_param: Option<Span>,
    /// The `maddr` value, if present.
    pub maddr: Option<&'b [u8]>,
    /// The `comp` value (RFC 3486), if present.
    pub comp: Option<&'b [u8]>,
    /// The `alias` parameter is present (RFC 5923).
    pub alias: bool,
    buf: &'b [u8],
}

impl<'b> Via<'b> {
    /// Iterates over all parameters, including unknown ones, in order.
    pub fn params(&self) -> Params<'b> {
        Params::new(self.buf, self.params)
    }

    /// Looks up any parameter by name (case-insensitive).
    pub fn param(&self, name: &[u8]) -> Option<Param<'b>> {
        self.params().get(name)
    }

    /// True when the branch carries the RFC 3261 magic cookie `z9hG4bK` followed by at least
    /// one more character (RFC 4475 §3.2.1 shows a bare cookie, which is not an RFC 3261 branch).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch
            .is_some_and(|b| b.len() > 7 && b.starts_with(b"z9hG4bK"))
    }
}

/// Parses one Via value occupying `span`.
pub(crate) fn parse_via(buf: &[u8], span: Span) -> Result<Via<'_>, usize> {
    parse_via_inner(buf, span, None)
}

/// Parses the first of the Via values joined in `span` (`a, b`: RFC 3261 §7.3.1), whose
/// start is trimmed. Its span ends with its last parameter (or sent-by); only white space and
/// a comma, or nothing, follow it in `span`. Where this fails, splitting the list first would
/// have failed too (a `<` or an unclosed quote is no part of a valid Via); the caller then
/// takes that path for the exact error.
pub(crate) fn parse_via_until_comma(buf: &[u8], span: Span) -> Result<Via<'_>, usize> {
    parse_via_inner(buf, span, Some(b','))
}

#[inline(always)]
fn parse_via_inner(buf: &[u8], span: Span, stop: Option<u8>) -> Result<Via<'_>, usize> {
    let (s, start) = region(buf, span);
    // RFC 3261 §25.1: sent-protocol = protocol-name SLASH protocol-version SLASH transport,
    // SLASH = SWS "/" SWS. Nearly every Via starts with `SIP/2.0/`, which that grammar reads
    // as two tokens and two slashes; only the transport token is left to read.
    let mut i = start;
    let mut tokens = 3;
    if s.get(start..start + 8) == Some(b"SIP/2.0/") {
        i = skip_lws(s, start + 8);
        tokens = 1;
    }
    let mut transport_start = i;
    for n in 0..tokens {
        if n > 0 {
            i = skip_lws(s, i);
            if s.get(i) != Some(&b'/') {
                return Err(i);
            }
            i = skip_lws(s, i + 1);
        }
        transport_start = i;
        i = token_end(s, i);
        if i == transport_start {
            return Err(i);
        }
    }
    let transport_token = &s[transport_start..i];
    let host_start = skip_lws(s, i);
    if host_start == i {
        return Err(i);
    }
    // sent-by = host [ COLON port ]
    let (host, after_host) = if s.get(host_start) == Some(&b'[') {
        let rest = &s[host_start..];
        let len = rest
            .iter()
            .position(|&b| b == b']' || b == b';' || is_lws(b))
            .unwrap_or(rest.len());
        if rest.get(len) != Some(&b']') {
            return Err(host_start);
        }
        let host_end = host_start + len + 1;
        let host = parse_host(&s[host_start..host_end]).ok_or(host_start)?;
        (host, host_end)
    } else {
        let rest = &s[host_start..];
        let len = class_len(rest, &HOST_CHAR);
        if len == 0 {
            return Err(host_start);
        }
        let host_end = host_start + len;
        (
            Host {
                text: &s[host_start..host_end],
            },
            host_end,
        )
    };
    let mut sent_by_end = after_host;
    let mut port = None;
    let colon = skip_lws(s, after_host);
    if s.get(colon) == Some(&b':') {
        let digits = skip_lws(s, colon + 1);
        let (p, digits_end) = port_at(s, digits).ok_or(digits)?;
        port = Some(p);
        sent_by_end = digits_end;
    }
    let mut branch = None;
    let mut received = None;
    let mut rport = Rport::Absent;
    let mut rport_param = None;
    let mut maddr = None;
    let mut comp = None;
    let mut alias = false;
    let (params, stopped) = parse_params_until(s, sent_by_end, stop, |p| {
        // The length first: most parameters are `branch` or unknown and cost one compare.
        match p.name.len() {
            6 if eq_ic_letters(p.name, b"branch") => branch = Some(p.value.ok_or(p.span.start)?),
            8 if eq_ic_letters(p.name, b"received") => {
                p.value.ok_or(p.span.start)?;
                received = Some(p);
            }
            5 if eq_ic_letters(p.name, b"rport") => {
                rport = match p.value {
                    None => Rport::Requested,
                    Some(v) => Rport::Port(parse_port(v).ok_or(p.span.end - v.len())?),
                };
                rport_param = Some(p.span);
            }
            5 if eq_ic_letters(p.name, b"maddr") => maddr = Some(p.value.ok_or(p.span.start)?),
            4 if eq_ic_letters(p.name, b"comp") => comp = Some(p.value.ok_or(p.span.start)?),
            5 if eq_ic_letters(p.name, b"alias") => alias = true,
            _ => {}
        }
        Ok(())
    })?;
    // Stopped at a comma: the value ends where its parameters do (at the sent-by when there
    // are none), with only white space between.
    let span = if stopped < s.len() {
        Span::new(start, params.end)
    } else {
        span
    };
    Ok(Via {
        span,
        transport_token,
        transport: Transport::from_token(transport_token),
        host,
        port,
        sent_by: Span::new(host_start, sent_by_end),
        params: if params.is_empty() {
            Span::new(sent_by_end, sent_by_end)
        } else {
            params
        },
        branch,
        received,
        rport,
        rport_param,
        maddr,
        comp,
        alias,
        buf,
    })
}

/// The bytes up to the end of `span` (clipped to `buf`) and the offset its value starts at.
#[inline(always)]
fn region(buf: &[u8], span: Span) -> (&[u8], usize) {
    let end = span.end.min(buf.len());
    (&buf[..end], span.start.min(end))
}

/// A `name-addr` or `addr-spec` with header parameters: the value of From, To, Contact, Route,
/// Record-Route and Path (RFC 3261 §20.10, §20.20, §20.30, §20.34, §20.39; RFC 3327).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'b> {
    /// Offsets of the whole value.
    pub span: Span,
    /// The display name as written (quoted-string keeps its quotes), if any.
    pub display_name: Option<&'b [u8]>,
    /// The URI.
    pub uri: Uri<'b>,
    /// True when the URI was enclosed in `<>`.
    pub bracketed: bool,
    /// Offsets of the header-parameter region after the URI (empty if none).
    pub params: Span,
    /// The `tag` parameter (From/To, RFC 3261 §19.3), if present.
    pub tag: Option<&'b [u8]>,
    buf: &'b [u8],
}

impl<'b> NameAddr<'b> {
    /// Iterates over the header parameters in order (not the URI parameters).
    pub fn params(&self) -> Params<'b> {
        Params::new(self.buf, self.params)
    }

    /// Looks up a header parameter by name (case-insensitive).
    pub fn param(&self, name: &[u8]) -> Option<Param<'b>> {
        self.params().get(name)
    }

    /// The URI text as written.
    pub fn uri_bytes(&self) -> &'b [u8] {
        self.uri.span().slice(self.buf)
    }
}

/// The part of a name-addr / addr-spec before its header parameters.
struct NameAddrFront<'b> {
    /// The bytes up to the end of the value.
    s: &'b [u8],
    /// Where the header parameters start: after the URI (and its `>`).
    after_uri: usize,
    display_name: Option<&'b [u8]>,
    angle: bool,
    uri_span: Span,
}

/// Reads the display name and finds the URI of a name-addr / addr-spec value.
#[inline(always)]
fn name_addr_front(buf: &[u8], span: Span) -> Result<NameAddrFront<'_>, usize> {
    let (s, start) = region(buf, span);
    // The form is read from the span as given (none if it reaches past the buffer), the URI
    // and parameters from the clipped region.
    let value = span.slice(buf);
    let mut display_name = None;
    // Offset of the `<` of a name-addr, if the value is one.
    let open = if value.first() == Some(&b'"') {
        let after_quote = quoted_string_end(s, start).map_err(|_| start)?;
        display_name = Some(&s[start..after_quote]);
        let open = skip_lws(s, after_quote);
        if s.get(open) != Some(&b'<') {
            return Err(open);
        }
        Some(open)
    } else {
        // name-addr: everything before '<' must be `*(token LWS)` (RFC 3261 §25.1
        // display-name); without any '<' the value is an addr-spec.
        match find_byte(value, b'<') {
            None => None,
            Some(name_len) => {
                let name = &value[..name_len];
                if let Some(bad) = name.iter().position(|&b| !is_token(b) && !is_lws(b)) {
                    return Err(start + bad);
                }
                let trimmed = super::cursor::trim(buf, Span::new(start, start + name_len));
                display_name = (!trimmed.is_empty()).then(|| trimmed.slice(buf));
                Some(start + name_len)
            }
        }
    };
    let (uri_span, after_uri) = match open {
        Some(open) => {
            let uri_start = open + 1;
            let len = find_byte(&s[uri_start..], b'>').ok_or(uri_start)?;
            (Span::new(uri_start, uri_start + len), uri_start + len + 1)
        }
        None => {
            // addr-spec form: header parameters follow the URI, so the URI ends at ';' or LWS;
            // RFC 3261 §20.10: it may then contain no ',', '?' or ';' of its own.
            let rest = &s[start..];
            // Candidates eight bytes at a time; a control byte other than LWS ends nothing.
            let mut len = rest.len();
            let mut from = 0;
            while let Some(at) = find_semicolon_or_space(&rest[from..]) {
                let i = from + at;
                if rest[i] == b';' || is_lws(rest[i]) {
                    len = i;
                    break;
                }
                from = i + 1;
            }
            (Span::new(start, start + len), start + len)
        }
    };
    Ok(NameAddrFront {
        s,
        after_uri,
        display_name,
        angle: open.is_some(),
        uri_span,
    })
}

/// The header parameters of a name-addr: the first `tag` counts and needs a value
/// (From/To, RFC 3261 §19.3).
#[inline(always)]
fn name_addr_params(s: &[u8], pos: usize) -> Result<(Span, Option<&[u8]>), usize> {
    let mut tag = None;
    let params = parse_params(s, pos, |p| {
        if tag.is_none() && eq_ic_letters(p.name, b"tag") {
            tag = Some(p.value.ok_or(p.span.start)?);
        }
        Ok(())
    })?;
    Ok((params, tag))
}

/// Parses a name-addr / addr-spec value occupying `span`.
#[inline(always)]
pub(crate) fn parse_name_addr(buf: &[u8], span: Span) -> Result<NameAddr<'_>, usize> {
    let NameAddrFront {
        s,
        after_uri,
        display_name,
        angle,
        uri_span,
    } = name_addr_front(buf, span)?;
    let uri = parse_uri(buf, uri_span.start, uri_span.end, angle).map_err(|e| match e {
        UriError::Malformed(at) | UriError::Headers(at) => at,
    })?;
    let (params, tag) = name_addr_params(s, after_uri)?;
    let params = if params.is_empty() {
        Span::new(after_uri, after_uri)
    } else {
        params
    };
    Ok(NameAddr {
        span,
        display_name,
        uri,
        bracketed: angle,
        params,
        tag,
        buf,
    })
}

/// Accepts exactly what [`parse_name_addr`] accepts, failing at the same offset, without
/// building the typed value (for the values the parser only validates: Contact, Route,
/// Record-Route and Path are read later, on demand, through [`parse_name_addr`]).
///
/// On success, also says whether every comma of the value (if any) lies inside a quoted
/// string or inside `<>`, so that splitting the list there (RFC 3261 §7.3.1) would give the
/// value whole: true for a name-addr (commas can only be in its quoted display name, its
/// bracketed URI or quoted parameter values), and for an addr-spec whose URI has no comma.
pub(crate) fn check_name_addr(buf: &[u8], span: Span) -> Result<bool, usize> {
    let NameAddrFront {
        s,
        after_uri,
        angle,
        uri_span,
        ..
    } = name_addr_front(buf, span)?;
    check_uri(buf, uri_span.start, uri_span.end, angle).map_err(|e| match e {
        UriError::Malformed(at) | UriError::Headers(at) => at,
    })?;
    name_addr_params(s, after_uri)?;
    Ok(angle || !contains_byte(uri_span.slice(buf), b','))
}

/// The CSeq value (RFC 3261 §20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'b> {
    /// The sequence number (at most 2**32-1).
    pub number: u32,
    /// The method as written.
    pub method: &'b [u8],
    /// Offsets of the number.
    pub number_span: Span,
}

pub(crate) fn parse_cseq(buf: &[u8], span: Span) -> Result<CSeq<'_>, usize> {
    let mut cur = Cursor::new(buf, span);
    let digits = cur.take_while(|b| b.is_ascii_digit());
    let number = super::chars::parse_decimal(cur.slice(digits), u64::from(u32::MAX))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(span.start)?;
    if !cur.skip_lws() {
        return Err(cur.pos);
    }
    let method = cur.token().ok_or(cur.pos)?;
    cur.skip_lws();
    if !cur.at_end() {
        return Err(cur.pos);
    }
    Ok(CSeq {
        number,
        method: cur.slice(method),
        number_span: digits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::HostKind;

    fn via(text: &str) -> Option<Via<'_>> {
        parse_via(text.as_bytes(), Span::new(0, text.len())).ok()
    }

    fn name_addr(text: &str) -> Option<NameAddr<'_>> {
        parse_name_addr(text.as_bytes(), Span::new(0, text.len())).ok()
    }

    macro_rules! via_table {
        ($($name:ident: $input:expr => |$v:ident| $check:expr;)*) => {
            $(#[test] fn $name() { let $v = via($input); assert!($check, "{:?}", $v); })*
        };
    }

    macro_rules! name_addr_table {
        ($($name:ident: $input:expr => |$n:ident| $check:expr;)*) => {
            $(#[test] fn $name() { let $n = name_addr($input); assert!($check, "{:?}", $n); })*
        };
    }

    via_table! {
        via_plain: "SIP/2.0/UDP host.example.com;branch=z9hG4bK1" => |v| v.is_some_and(|v| v.transport == Transport::Udp && v.branch == Some(b"z9hG4bK1") && v.port.is_none());
        via_port: "SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bK1" => |v| v.is_some_and(|v| v.port == Some(5070) && v.host.kind() == HostKind::Ipv4);
        via_spaces: "SIP / 2.0 / UDP\r\n   host : 5060 ; branch = z9hG4bK1" => |v| v.is_some_and(|v| v.port == Some(5060) && v.branch == Some(b"z9hG4bK1"));
        via_ipv6: "SIP/2.0/UDP [2001:db8::1]:5060;received=2001:db8::2" => |v| v.is_some_and(|v| v.host.kind() == HostKind::Ipv6 && v.received.and_then(|r| r.value) == Some(b"2001:db8::2"));
        via_rport_flag: "SIP/2.0/UDP h;rport;branch=z9hG4bK1" => |v| v.is_some_and(|v| v.rport == Rport::Requested && v.rport_param == Some(Span::new(13, 19)));
        via_rport_value: "SIP/2.0/UDP h;rport=1234" => |v| v.is_some_and(|v| v.rport == Rport::Port(1234));
        via_comp_maddr_alias: "SIP/2.0/UDP h;comp=sigcomp;maddr=224.0.1.75;alias" => |v| v.is_some_and(|v| v.comp == Some(b"sigcomp") && v.maddr == Some(b"224.0.1.75") && v.alias);
        via_unknown_transport: "SIP/2.0/FOO h" => |v| v.is_some_and(|v| v.transport == Transport::Other && v.transport_token == b"FOO");
        via_unknown_param_kept: "SIP/2.0/UDP h;x-id=\"a b\";branch=z9hG4bK1" => |v| v.is_some_and(|v| v.param(b"X-ID").and_then(|p| p.value) == Some(&b"\"a b\""[..]));
        via_params_span_is_append_point: "SIP/2.0/UDP h:5060" => |v| v.is_some_and(|v| v.params == Span::new(18, 18));
        via_missing_host: "SIP/2.0/UDP ;branch=1" => |v| v.is_none();
        via_no_space: "SIP/2.0/UDPhost" => |v| v.is_none();
        via_empty_param: "SIP/2.0/UDP h;;branch=1" => |v| v.is_none();
        via_branch_without_value: "SIP/2.0/UDP h;branch" => |v| v.is_none();
        via_bad_rport: "SIP/2.0/UDP h;rport=99999" => |v| v.is_none();
        via_trailing_garbage: "SIP/2.0/UDP h x" => |v| v.is_none();
        via_space_after_version: "SIP/2.0/ TCP h" => |v| v.is_some_and(|v| v.transport == Transport::Tcp && v.transport_token == b"TCP");
        via_lower_case_protocol: "sip/2.0/udp h;BRANCH=z9hG4bK1" => |v| v.is_some_and(|v| v.transport_token == b"udp" && v.branch == Some(b"z9hG4bK1"));
        via_ipv4_host: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1" => |v| v.is_some_and(|v| v.host.kind() == HostKind::Ipv4 && v.sent_by == Span::new(12, 26) && v.params == Span::new(26, 43));
        via_port_too_long: "SIP/2.0/UDP h:050600" => |v| v.is_none();
    }

    name_addr_table! {
        na_bracketed: "Bob <sip:bob@example.com>;tag=a6c85cf" => |n| n.is_some_and(|n| n.display_name == Some(b"Bob") && n.tag == Some(b"a6c85cf") && n.bracketed);
        na_quoted: "\"Bob \\\"B\\\"\" <sip:bob@example.com>" => |n| n.is_some_and(|n| n.display_name == Some(&b"\"Bob \\\"B\\\"\""[..]) && n.tag.is_none());
        na_addr_spec_params_are_header_params: "sip:+1972@gw1.example.net;unknownparam" => |n| n.is_some_and(|n| n.uri_bytes() == b"sip:+1972@gw1.example.net" && n.param(b"unknownparam").is_some());
        na_uri_params_inside_brackets: "<sip:gw1.example.net;lr>;expires=60" => |n| n.is_some_and(|n| n.uri.as_sip().is_some_and(|u| u.lr) && n.param(b"expires").and_then(|p| p.value) == Some(b"60"));
        na_tel: "<tel:+15551234>" => |n| n.is_some_and(|n| matches!(n.uri, Uri::Other { .. }));
        na_multi_token_display: "token1~` token2'+_ <sip:a@b>" => |n| n.is_some_and(|n| n.display_name == Some(&b"token1~` token2'+_"[..]));
        na_unquoted_comma: "Bell, Alexander <sip:a@b>" => |n| n.is_none();
        na_space_in_brackets: "< sip:a@b >" => |n| n.is_none();
        na_unclosed: "<sip:a@b" => |n| n.is_none();
        na_bare_with_headers: "sip:a@b?Route=x" => |n| n.is_none();
        na_empty_params: "<sip:a@b>;;" => |n| n.is_none();
        na_tag_without_value: "<sip:a@b>;tag" => |n| n.is_none();
        na_sipp_from: "\"sipp\" <sip:sipp@127.0.0.1:5060>;tag=1234SIPpTag001" => |n| n.is_some_and(|n| n.display_name == Some(&b"\"sipp\""[..]) && n.tag == Some(b"1234SIPpTag001") && n.uri.as_sip().is_some_and(|u| u.host.kind() == HostKind::Ipv4 && u.port == Some(5060)));
        na_first_tag_counts: "<sip:a@b> ; tag = x ; TAG=y" => |n| n.is_some_and(|n| n.tag == Some(b"x") && n.params == Span::new(9, 27));
        na_quoted_tag_value: "<sip:a@b>;tag=\"x;y\"" => |n| n.is_some_and(|n| n.tag == Some(&b"\"x;y\""[..]));
        na_unterminated_quote: "\"Bob <sip:a@b>" => |n| n.is_none();
    }

    #[test]
    fn cseq_forms() {
        let ok = |t: &str| {
            parse_cseq(t.as_bytes(), Span::new(0, t.len()))
                .ok()
                .map(|c| (c.number, c.method.to_vec()))
        };
        assert_eq!(ok("0009\r\n  INVITE"), Some((9, b"INVITE".to_vec())));
        assert_eq!(ok("4294967295 BYE"), Some((u32::MAX, b"BYE".to_vec())));
        assert_eq!(ok("4294967296 BYE"), None);
        assert_eq!(ok("1INVITE"), None);
        assert_eq!(ok("1 INVITE x"), None);
        assert_eq!(ok("-1 INVITE"), None);
    }
}
