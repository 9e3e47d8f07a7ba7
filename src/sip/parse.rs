//! The datagram parser: start line, header lines, typed checks of the headers a proxy uses,
//! and the body by Content-Length.

use super::chars::{
    CALL_ID, TOKEN, class_len, contains_byte, eq_ic, find_byte, find_colon_and_line_break,
    find_either, find_line_break, is_token, parse_decimal,
};
use super::cursor::{ListIter, skip_lws, trim};
use super::uri::{SipUri, Uri, UriError, parse_uri};
use super::values::{
    CSeq, NameAddr, Via, check_name_addr, parse_cseq, parse_name_addr, parse_via,
    parse_via_until_comma,
};
use super::{ErrorKind, Header, HeaderName, Limits, ParseError, Span};

/// A request method (RFC 3261 §7.1, plus the common extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'b> {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// PUBLISH (RFC 3903)
    Publish,
    /// INFO (RFC 6086)
    Info,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// UPDATE (RFC 3311)
    Update,
    /// Any other token, as written. Methods are case-sensitive (RFC 3261 §7.1).
    Other(&'b [u8]),
}

impl<'b> Method<'b> {
    /// Classifies a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_token(token: &'b [u8]) -> Self {
        match token {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"OPTIONS" => Self::Options,
            b"REGISTER" => Self::Register,
            b"PRACK" => Self::Prack,
            b"SUBSCRIBE" => Self::Subscribe,
            b"NOTIFY" => Self::Notify,
            b"PUBLISH" => Self::Publish,
            b"INFO" => Self::Info,
            b"REFER" => Self::Refer,
            b"MESSAGE" => Self::Message,
            b"UPDATE" => Self::Update,
            other => Self::Other(other),
        }
    }

    /// The method token.
    pub fn as_bytes(&self) -> &'b [u8] {
        match self {
            Self::Invite => b"INVITE",
            Self::Ack => b"ACK",
            Self::Bye => b"BYE",
            Self::Cancel => b"CANCEL",
            Self::Options => b"OPTIONS",
            Self::Register => b"REGISTER",
            Self::Prack => b"PRACK",
            Self::Subscribe => b"SUBSCRIBE",
            Self::Notify => b"NOTIFY",
            Self::Publish => b"PUBLISH",
            Self::Info => b"INFO",
            Self::Refer => b"REFER",
            Self::Message => b"MESSAGE",
            Self::Update => b"UPDATE",
            Self::Other(t) => t,
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'b> {
    /// `Method SP Request-URI SP SIP/2.0`.
    Request {
        /// The method.
        method: Method<'b>,
        /// The Request-URI (SIP/SIPS parsed; other schemes opaque).
        uri: Uri<'b>,
    },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase`.
    Response {
        /// The status code, 100..=699.
        code: u16,
        /// The reason phrase as written (may be empty or UTF-8).
        reason: &'b [u8],
    },
}

/// Max-Forwards (RFC 3261 §20.22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxForwards {
    /// The value, 0..=255.
    pub value: u8,
    /// Offsets of the digits; replace this span to rewrite the value (RFC 3261 §16.6 step 3).
    pub span: Span,
}

/// Indices of headers the parser found, into the header slots.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    call_id: Option<u16>,
    cseq: Option<u16>,
    from: Option<u16>,
    to: Option<u16>,
    max_forwards: Option<u16>,
    content_length: Option<u16>,
}

/// A parsed message borrowing the datagram (`'b`) and the caller's header slots (`'h`).
#[derive(Debug, Clone, Copy)]
pub struct Message<'h, 'b> {
    buf: &'b [u8],
    len: usize,
    start_line: StartLine<'b>,
    start_line_span: Span,
    headers: &'h [Header<'b>],
    body: Span,
    known: Known,
    call_id: &'b [u8],
    cseq: CSeq<'b>,
    /// A request's From and To, read and checked by the parse; `None` in a response (see
    /// [`Message::from`]).
    from: Option<NameAddr<'b>>,
    to: Option<NameAddr<'b>>,
    top_via: Via<'b>,
    /// The second Via value, if any: where a proxy relays a response (RFC 3261 §16.7
    /// step 3), so it is kept rather than parsed a second time.
    second_via: Option<Via<'b>>,
    max_forwards: Option<MaxForwards>,
    content_length: Option<u32>,
    /// Per list kind (by [`list_index`]), one past the slot of its last header line, 0 when
    /// absent: the value iterators stop there instead of scanning the remaining lines.
    list_ends: [usize; LIST_KINDS],
}

/// How many header kinds [`HeaderName::is_list`] holds.
const LIST_KINDS: usize = 11;

/// A dense index of the list header kinds ([`HeaderName::is_list`]).
#[inline(always)]
fn list_index(kind: HeaderName) -> Option<usize> {
    Some(match kind {
        HeaderName::Via => 0,
        HeaderName::Route => 1,
        HeaderName::RecordRoute => 2,
        HeaderName::Contact => 3,
        HeaderName::Require => 4,
        HeaderName::ProxyRequire => 5,
        HeaderName::Supported => 6,
        HeaderName::Unsupported => 7,
        HeaderName::Path => 8,
        HeaderName::Allow => 9,
        HeaderName::AllowEvents => 10,
        _ => return None,
    })
}

/// Parses one message from a datagram (RFC 3261 §7, §18.3: one message per datagram;
/// Content-Length may be absent, and bytes beyond Content-Length are ignored).
///
/// `slots` receives the header lines; its length bounds the header count together with
/// [`Limits::max_headers`]. Leading CRLFs are skipped (RFC 3261 §7.5). Validates the start line,
/// every header line's syntax, and the values of Via, From, To, Call-ID, CSeq, Max-Forwards and
/// Content-Length; in requests also those of Route, Record-Route, Contact, Path, Require,
/// Proxy-Require, Supported and Unsupported (a response's are carried as written: a proxy
/// reads none of them, RFC 3261 §16.7, and their iterators end at a value that does not
/// parse). Other headers are kept as written and not interpreted.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [Header<'b>],
    limits: &Limits,
) -> Result<Message<'h, 'b>, ParseError> {
    parse_inner(buf, slots, limits, false)
}

/// Parses one complete message delimited by [`super::frame`] on a stream: as [`parse`], but
/// Content-Length is mandatory (RFC 3261 §18.3).
pub fn parse_stream_message<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [Header<'b>],
    limits: &Limits,
) -> Result<Message<'h, 'b>, ParseError> {
    parse_inner(buf, slots, limits, true)
}

fn err(kind: ErrorKind, offset: usize, header: Option<HeaderName>) -> ParseError {
    ParseError::new(kind, offset, header)
}

/// Finds the end of the line starting at `pos`: returns (end of content, start of next line).
/// A line ends with CRLF or a bare LF.
pub(crate) fn line_end(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    // The first LF ends the line whatever CRs precede it; one CR right before it is part of
    // the line break.
    let nl = pos + find_byte(buf.get(pos..)?, b'\n')?;
    let content_end = if nl > pos && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((content_end, nl + 1))
}

/// One header line: its name as written and classified, its trimmed value and where the
/// next line starts.
struct Line<'b> {
    kind: HeaderName,
    name: &'b [u8],
    value: &'b [u8],
    value_span: Span,
    next: usize,
}

/// What [`header_line_exact`] found at a line start.
enum Scanned<'b> {
    /// A header line.
    Line(Line<'b>),
    /// The empty line ending the headers, and where the body starts.
    End(usize),
}

/// Reads a well-formed header line in one pass: the colon, the name before it, then the value
/// up to the first CRLF or LF not followed by SP/HT (RFC 3261 §7.3.1 folding). `None` for
/// anything else (no colon, a name that is not a token, a bare CR, no line end, a line over
/// `max_line`); [`header_line_exact`] then judges the line and names its defect. Where this
/// returns a line, it is the one [`header_line_exact`] returns.
#[inline(always)]
fn header_line_fast(buf: &[u8], start: usize, max_line: usize) -> Option<Line<'_>> {
    let (colon, mut at) = find_colon_and_line_break(buf, start)?;
    let mut name_end = colon;
    while name_end > start && matches!(buf[name_end - 1], b' ' | b'\t') {
        name_end -= 1;
    }
    let name = &buf[start..name_end];
    let kind = HeaderName::classify(name);
    // A recognised name is all letters and `-`, any other must be a token: either way the
    // name and the white space after it hold no line break, so the colon is this line's.
    // Every byte is looked up, without a branch each: names are short and almost always valid.
    if kind == HeaderName::Other
        && (name.is_empty() || !name.iter().fold(true, |ok, &b| ok & TOKEN[usize::from(b)]))
    {
        return None;
    }
    // The name and its white space hold no line break, so the first break after the colon is
    // the line's first.
    let value_start = colon + 1;
    let (content_end, next) = loop {
        let next = match buf.get(at..) {
            Some([b'\n', ..]) => at + 1,
            Some([b'\r', b'\n', ..]) => at + 2,
            _ => return None,
        };
        if !matches!(buf.get(next), Some(b' ' | b'\t')) {
            break (at, next);
        }
        at = find_line_break(buf, next);
    };
    if content_end - start > max_line {
        return None;
    }
    // The value less surrounding LWS; a fold right after the colon is LWS too.
    let value_span = trim(buf, Span::new(value_start, content_end));
    Some(Line {
        kind,
        name,
        value: value_span.slice(buf),
        value_span,
        next,
    })
}

/// Reads the header line at `line_start` with every check and the error each defect deserves:
/// one scan finds its end, its folds and any bare CR (RFC 3261 §7.3.1 folding, §25.1 no bare
/// CR); the name is then read and classified. `End` for the empty line.
#[inline(never)]
fn header_line_exact(
    buf: &[u8],
    line_start: usize,
    max_line: usize,
) -> Result<Scanned<'_>, ParseError> {
    let mut segment_start = line_start;
    let mut scan = line_start;
    let mut bare_cr = None;
    let (content_end, line_next) = loop {
        let at = find_line_break(buf, scan);
        match buf.get(at) {
            None => return Err(err(ErrorKind::Framing, segment_start, None)),
            Some(b'\r') if buf.get(at + 1) != Some(&b'\n') => {
                bare_cr.get_or_insert(at);
                scan = at + 1;
                continue;
            }
            Some(b'\r') => scan = at + 2,
            _ => scan = at + 1,
        }
        // Unfold: continuation lines start with SP or HT (RFC 3261 §7.3.1); the empty
        // line never continues.
        if at != line_start && matches!(buf.get(scan), Some(b' ' | b'\t')) {
            segment_start = scan;
            continue;
        }
        break (at, scan);
    };
    if content_end == line_start {
        return Ok(Scanned::End(line_next));
    }
    if content_end - line_start > max_line {
        return Err(err(ErrorKind::HeaderTooLong, line_start, None));
    }
    // The name is what precedes the first colon, less trailing SP/HT. A recognised name
    // is all letters and `-` (the comparison is exact), hence a valid token followed by
    // white space and that colon, so only an unrecognised one needs the token scan; when
    // that scan passes, it finds this same name and colon.
    let line = &buf[line_start..content_end];
    let first_colon = find_byte(line, b':');
    let mut name_len = first_colon.unwrap_or(0);
    while name_len > 0 && matches!(line[name_len - 1], b' ' | b'\t') {
        name_len -= 1;
    }
    let name = &line[..name_len];
    let kind = HeaderName::classify(name);
    if kind == HeaderName::Other {
        let token_len = line
            .iter()
            .position(|&b| !is_token(b))
            .unwrap_or(line.len());
        if token_len == 0 {
            return Err(err(ErrorKind::HeaderName, line_start, None));
        }
        let mut colon = token_len;
        while colon < line.len() && matches!(line[colon], b' ' | b'\t') {
            colon += 1;
        }
        if colon >= line.len() || line[colon] != b':' {
            return Err(err(ErrorKind::HeaderName, line_start, None));
        }
        debug_assert!(first_colon == Some(colon) && token_len == name_len);
    }
    let colon = line_start + first_colon.unwrap_or(0);
    // A bare CR inside a line is never legal (RFC 3261 §25.1 excludes it even from
    // quoted-pair). One before the colon has already failed the name check.
    if let Some(cr) = bare_cr {
        return Err(err(ErrorKind::HeaderValue, cr, Some(kind)));
    }
    let value_span = trim(buf, Span::new(colon + 1, content_end));
    Ok(Scanned::Line(Line {
        kind,
        name,
        value: value_span.slice(buf),
        value_span,
        next: line_next,
    }))
}

fn parse_inner<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [Header<'b>],
    limits: &Limits,
    stream: bool,
) -> Result<Message<'h, 'b>, ParseError> {
    if buf
        .first()
        .is_some_and(|&b| super::frame::is_sigcomp_byte(b))
    {
        return Err(err(ErrorKind::SigComp, 0, None));
    }
    // RFC 3261 §7.5: ignore CRLFs preceding the start line.
    let mut pos = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(err(ErrorKind::Empty, 0, None))?;
    let start_pos = pos;
    let (sl_end, next) = line_end(buf, pos).ok_or(err(ErrorKind::Framing, pos, None))?;
    if sl_end - pos > limits.max_header_line {
        return Err(err(ErrorKind::HeaderTooLong, pos, None));
    }
    let start_line = parse_start_line(buf, pos, sl_end)?;
    let start_line_span = Span::new(start_pos, next);
    pos = next;

    // Header lines: the common well-formed line in one pass, anything else by the exact scan.
    let max_headers = slots.len().min(limits.max_headers);
    let slots = &mut slots[..max_headers];
    let mut count = 0usize;
    let mut known = Known::default();
    loop {
        let line = match buf.get(pos) {
            None => {
                // A datagram that ends right after a header line lacks the empty line; accept
                // it with an empty body (liberal, as common UDP stacks are). Streams cannot.
                if stream || pos > buf.len() {
                    return Err(err(ErrorKind::Framing, pos, None));
                }
                break;
            }
            // The empty line (RFC 3261 §7): the body follows.
            Some(b'\r') if buf.get(pos + 1) == Some(&b'\n') => {
                pos += 2;
                break;
            }
            Some(b'\n') => {
                pos += 1;
                break;
            }
            Some(_) => match header_line_fast(buf, pos, limits.max_header_line) {
                Some(line) => line,
                None => match header_line_exact(buf, pos, limits.max_header_line)? {
                    Scanned::Line(line) => line,
                    Scanned::End(next) => {
                        pos = next;
                        break;
                    }
                },
            },
        };
        let Some(slot) = slots.get_mut(count) else {
            return Err(err(ErrorKind::TooManyHeaders, pos, Some(line.kind)));
        };
        let idx = count as u16;
        let known_ref = match line.kind {
            HeaderName::CallId => Some(&mut known.call_id),
            HeaderName::CSeq => Some(&mut known.cseq),
            HeaderName::From => Some(&mut known.from),
            HeaderName::To => Some(&mut known.to),
            HeaderName::MaxForwards => Some(&mut known.max_forwards),
            HeaderName::ContentLength => Some(&mut known.content_length),
            _ => None,
        };
        if let Some(known_ref) = known_ref {
            if known_ref.is_some() {
                return Err(err(ErrorKind::DuplicateHeader, pos, Some(line.kind)));
            }
            *known_ref = Some(idx);
        }
        *slot = Header {
            kind: line.kind,
            name: line.name,
            value: line.value,
            value_span: line.value_span,
            line: Span::new(pos, line.next),
        };
        count += 1;
        pos = line.next;
    }
    let headers: &'h [Header<'b>] = &slots[..count];
    let body_start = pos;

    // Body by Content-Length (RFC 3261 §18.3, §20.14).
    let content_length = match known.content_length {
        Some(i) => {
            let h = &headers[usize::from(i)];
            let n = parse_decimal(h.value, u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(err(
                    ErrorKind::ContentLength,
                    h.value_span.start,
                    Some(HeaderName::ContentLength),
                ))?;
            Some(n)
        }
        None if stream => {
            return Err(err(
                ErrorKind::MissingHeader,
                body_start,
                Some(HeaderName::ContentLength),
            ));
        }
        None => None,
    };
    let body_end = match content_length {
        Some(n) => {
            let end = body_start
                .checked_add(n as usize)
                .filter(|&e| e <= buf.len());
            end.ok_or(err(
                ErrorKind::BodyTruncated,
                body_start,
                Some(HeaderName::ContentLength),
            ))?
        }
        None => buf.len(),
    };
    if body_end > limits.max_message_size {
        return Err(err(
            ErrorKind::TooLarge,
            limits.max_message_size.min(body_end),
            None,
        ));
    }

    // Mandatory headers (RFC 3261 §8.1.1).
    let need = |i: Option<u16>, h: HeaderName| {
        i.map(usize::from)
            .ok_or(err(ErrorKind::MissingHeader, body_start, Some(h)))
    };
    let call_id_h = &headers[need(known.call_id, HeaderName::CallId)?];
    let cseq_h = &headers[need(known.cseq, HeaderName::CSeq)?];
    let from_h = &headers[need(known.from, HeaderName::From)?];
    let to_h = &headers[need(known.to, HeaderName::To)?];

    let call_id = call_id_h.value;
    // RFC 3261 §25.1: callid = word [ "@" word ].
    if call_id.is_empty() || class_len(call_id, &CALL_ID) != call_id.len() {
        return Err(err(
            ErrorKind::CallId,
            call_id_h.value_span.start,
            Some(HeaderName::CallId),
        ));
    }
    let cseq = parse_cseq(buf, cseq_h.value_span)
        .map_err(|at| err(ErrorKind::CSeq, at, Some(HeaderName::CSeq)))?;
    if let StartLine::Request { method, .. } = start_line {
        // RFC 3261 §8.1.1.5 / RFC 4475 §3.1.2.17: the CSeq method matches the request method.
        if cseq.method != method.as_bytes() {
            return Err(err(
                ErrorKind::CSeqMethod,
                cseq_h.value_span.start,
                Some(HeaderName::CSeq),
            ));
        }
    }
    // A proxy relays a response by its Via alone (RFC 3261 §16.7) and carries its From and
    // To as written, so only a request's are read here; `Message::read_from` / `read_to`
    // read a response's on demand.
    let (from, to) = if matches!(start_line, StartLine::Request { .. }) {
        (
            Some(read_name_addr(buf, from_h, HeaderName::From)?),
            Some(read_name_addr(buf, to_h, HeaderName::To)?),
        )
    } else {
        (None, None)
    };
    let max_forwards = match known.max_forwards {
        Some(i) => {
            let h = &headers[usize::from(i)];
            let v = parse_decimal(h.value, 255)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or(err(
                    ErrorKind::MaxForwards,
                    h.value_span.start,
                    Some(HeaderName::MaxForwards),
                ))?;
            Some(MaxForwards {
                value: v,
                span: h.value_span,
            })
        }
        None => None,
    };

    // Multi-value headers: every value must parse; count them against the limit.
    let mut lists = ListCheck {
        buf,
        max_values: limits.max_values,
        values: 0,
        top_via: None,
        second_via: None,
    };
    let mut list_ends = [0usize; LIST_KINDS];
    // A proxy relays a response by its Via alone (RFC 3261 §16.7); Contact, Route,
    // Record-Route, Path and option tags are carried as written, so a backend's 200 OK is
    // not lost over a value the proxy never reads (§16.3 step 1 asks the same of requests'
    // unread parts; there these values are read, hence checked).
    let check_every_list = matches!(start_line, StartLine::Request { .. });
    for (i, h) in headers.iter().enumerate() {
        let Some(list) = list_index(h.kind) else {
            continue;
        };
        list_ends[list] = i + 1;
        if !check_every_list && h.kind != HeaderName::Via {
            continue;
        }
        lists.header(h)?;
    }
    let ListCheck {
        top_via,
        second_via,
        ..
    } = lists;
    let top_via = top_via.ok_or(err(
        ErrorKind::MissingHeader,
        body_start,
        Some(HeaderName::Via),
    ))?;

    Ok(Message {
        buf,
        len: body_end,
        start_line,
        start_line_span,
        headers,
        body: Span::new(body_start, body_end),
        known,
        call_id,
        cseq,
        from,
        to,
        top_via,
        second_via,
        max_forwards,
        content_length,
        list_ends,
    })
}

/// The From or To value of the header line `h`.
#[inline(always)]
fn read_name_addr<'b>(
    buf: &'b [u8],
    h: &Header<'b>,
    kind: HeaderName,
) -> Result<NameAddr<'b>, ParseError> {
    parse_name_addr(buf, h.value_span).map_err(|at| err(ErrorKind::NameAddr, at, Some(kind)))
}

/// The checks of the values of list headers, in message order, with what they keep.
struct ListCheck<'b> {
    buf: &'b [u8],
    max_values: usize,
    /// Values checked so far, over all list headers.
    values: usize,
    top_via: Option<Via<'b>>,
    second_via: Option<Via<'b>>,
}

impl<'b> ListCheck<'b> {
    /// Checks every value of the list header `h`.
    #[inline(always)]
    fn header(&mut self, h: &Header<'b>) -> Result<(), ParseError> {
        if h.kind == HeaderName::Contact && h.value == b"*" {
            return Ok(());
        }
        // A value that parses whole as one Via or name-addr, or is one option tag, holds no
        // comma outside quoted strings and `<>`: the list split would give it whole, so it is
        // checked once, without looking for commas first. Anything else takes the split below,
        // which then finds what it would have found anyway (a failed attempt changes nothing:
        // the count and the kept Vias change only on success).
        if !h.value.is_empty() && self.values < self.max_values {
            let single = match h.kind {
                // Values joined on one line (`Via: a, b`): read one after another, each once
                // (a whole-value read would stop at the comma after reading the first).
                HeaderName::Via if contains_byte(h.value, b',') => return self.via_values(h),
                HeaderName::Via => match parse_via(self.buf, h.value_span) {
                    Ok(via) => {
                        self.keep_via(via);
                        true
                    }
                    Err(_) => false,
                },
                HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Path
                | HeaderName::Contact => check_name_addr(self.buf, h.value_span) == Ok(true),
                HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Supported
                | HeaderName::Unsupported => h.value.iter().all(|&b| is_token(b)),
                _ => false,
            };
            if single {
                self.values += 1;
                return Ok(());
            }
        }
        // Most values hold no comma: then the value, already trimmed, is the one element
        // the list split would give.
        if !contains_byte(h.value, b',') {
            return self.value(h, h.value_span);
        }
        for v in ListIter::new(self.buf, h.value_span) {
            self.value(h, v)?;
        }
        Ok(())
    }

    /// Checks the Via values of `h` (not empty, and holding a comma) one after another, each
    /// read up to the comma that ends it, so values joined on one line
    /// (`Via: a, b`, as some elements write them) are read without splitting the list first.
    /// A value that does not read that way goes to the list split from there on, which names
    /// the error exactly as it always did. (Kept out of line: most Via lines hold one value,
    /// and read faster without this loop beside them.)
    #[inline(never)]
    fn via_values(&mut self, h: &Header<'b>) -> Result<(), ParseError> {
        let end = h.value_span.end;
        let mut start = h.value_span.start;
        while self.values < self.max_values {
            let Ok(via) = parse_via_until_comma(self.buf, Span::new(start, end)) else {
                break;
            };
            // Only white space lies between the value and the comma after it, if any.
            let comma = skip_lws(self.buf, via.span.end);
            self.values += 1;
            self.keep_via(via);
            if comma >= end {
                return Ok(());
            }
            start = skip_lws(self.buf, comma + 1).min(end);
        }
        for v in ListIter::new(self.buf, Span::new(start, end)) {
            self.value(h, v)?;
        }
        Ok(())
    }

    fn keep_via(&mut self, via: Via<'b>) {
        if self.top_via.is_none() {
            self.top_via = Some(via);
        } else if self.second_via.is_none() {
            self.second_via = Some(via);
        }
    }

    /// Checks one value `v` of the list header `h` and counts it against the limit.
    fn value(&mut self, h: &Header<'b>, v: Span) -> Result<(), ParseError> {
        self.values += 1;
        if self.values > self.max_values {
            return Err(err(ErrorKind::TooManyValues, v.start, Some(h.kind)));
        }
        let fail = |kind: ErrorKind| move |at: usize| err(kind, at, Some(h.kind));
        if v.is_empty() {
            let kind = match h.kind {
                HeaderName::Via => ErrorKind::Via,
                HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Supported
                | HeaderName::Unsupported => ErrorKind::OptionTag,
                HeaderName::Allow | HeaderName::AllowEvents => ErrorKind::HeaderValue,
                _ => ErrorKind::NameAddr,
            };
            // RFC 3261 allows an empty Supported header (no option tags at all).
            if h.kind == HeaderName::Supported && h.value.is_empty() {
                return Ok(());
            }
            return Err(err(kind, v.start, Some(h.kind)));
        }
        match h.kind {
            HeaderName::Via => {
                let via = parse_via(self.buf, v).map_err(fail(ErrorKind::Via))?;
                self.keep_via(via);
            }
            HeaderName::Route
            | HeaderName::RecordRoute
            | HeaderName::Path
            | HeaderName::Contact => {
                check_name_addr(self.buf, v).map_err(fail(ErrorKind::NameAddr))?;
            }
            HeaderName::Require
            | HeaderName::ProxyRequire
            | HeaderName::Supported
            | HeaderName::Unsupported
                if !v.slice(self.buf).iter().all(|&b| is_token(b)) =>
            {
                return Err(err(ErrorKind::OptionTag, v.start, Some(h.kind)));
            }
            _ => {}
        }
        Ok(())
    }
}

fn parse_start_line(buf: &[u8], pos: usize, end: usize) -> Result<StartLine<'_>, ParseError> {
    let line = &buf[pos..end];
    let bad = |kind, at| err(kind, at, None);
    if line.len() >= 4 && eq_ic(&line[..4], b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 §7.2).
        let sp = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or(bad(ErrorKind::StartLine, pos))?;
        check_version(&line[..sp], pos)?;
        let code_bytes = line
            .get(sp + 1..sp + 4)
            .ok_or(bad(ErrorKind::StatusCode, pos + sp + 1))?;
        let code = parse_decimal(code_bytes, 699)
            .filter(|&c| c >= 100)
            .ok_or(bad(ErrorKind::StatusCode, pos + sp + 1))? as u16;
        if line.get(sp + 4) != Some(&b' ') {
            return Err(bad(ErrorKind::StatusCode, pos + sp + 1));
        }
        let reason = &line[sp + 5..];
        if reason.iter().any(|&b| b < 0x20 && b != b'\t') {
            return Err(bad(ErrorKind::StartLine, pos + sp + 5));
        }
        return Ok(StartLine::Response { code, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 §7.1): exactly one SP each.
    let method_len = line.iter().take_while(|&&b| is_token(b)).count();
    if method_len == 0 {
        return Err(bad(ErrorKind::Method, pos));
    }
    if line.get(method_len) != Some(&b' ') {
        return Err(bad(
            if line.get(method_len).is_none() {
                ErrorKind::StartLine
            } else {
                ErrorKind::Method
            },
            pos + method_len,
        ));
    }
    let uri_start = method_len + 1;
    let uri_len = find_either(&line[uri_start..], b' ', b'\t').unwrap_or(line.len() - uri_start);
    let version_start = uri_start + uri_len + 1;
    if uri_len == 0 || line.get(uri_start + uri_len) != Some(&b' ') {
        return Err(bad(ErrorKind::StartLine, pos + uri_start));
    }
    let version = &line[version_start..];
    if find_either(version, b' ', b'\t').is_some() {
        // Extra SP inside the Request-URI, or trailing SP after the version (RFC 4475 §3.1.2.8-10).
        return Err(bad(
            if looks_like_version(version) {
                ErrorKind::StartLine
            } else {
                ErrorKind::RequestUri
            },
            pos + version_start,
        ));
    }
    check_version(version, pos + version_start)?;
    let uri =
        parse_uri(buf, pos + uri_start, pos + uri_start + uri_len, false).map_err(|e| match e {
            UriError::Malformed(at) => bad(ErrorKind::RequestUri, at),
            UriError::Headers(at) => bad(ErrorKind::RequestUriHeaders, at),
        })?;
    Ok(StartLine::Request {
        method: Method::from_token(&line[..method_len]),
        uri,
    })
}

fn looks_like_version(v: &[u8]) -> bool {
    v.len() >= 4 && eq_ic(&v[..4], b"SIP/")
}

/// RFC 3261 §7.1: SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; only 2.0 is supported (505 else).
fn check_version(v: &[u8], at: usize) -> Result<(), ParseError> {
    // The version every message carries, which the checks below accept.
    if v == b"SIP/2.0" {
        return Ok(());
    }
    if !looks_like_version(v) {
        return Err(err(ErrorKind::StartLine, at, None));
    }
    let num = &v[4..];
    let dot = num
        .iter()
        .position(|&b| b == b'.')
        .ok_or(err(ErrorKind::StartLine, at, None))?;
    let (major, minor) = (&num[..dot], &num[dot + 1..]);
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !digits(major) || !digits(minor) {
        return Err(err(ErrorKind::StartLine, at, None));
    }
    if major != b"2" || minor != b"0" {
        return Err(err(ErrorKind::Version, at, None));
    }
    Ok(())
}

impl<'h, 'b> Message<'h, 'b> {
    /// The buffer the message was parsed from (may extend beyond the message, see [`Self::len`]).
    pub fn buf(&self) -> &'b [u8] {
        self.buf
    }

    /// Length of the message in the buffer: leading CRLFs, start line, headers, empty line and
    /// Content-Length bytes of body. Octets after it in a datagram are not part of it.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a parsed message has a start line.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message bytes, `buf()[..len()]`.
    pub fn as_bytes(&self) -> &'b [u8] {
        &self.buf[..self.len]
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine<'b> {
        &self.start_line
    }

    /// Offsets of the start line, including leading CRLFs and its terminating CRLF.
    pub fn start_line_span(&self) -> Span {
        self.start_line_span
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    /// The method of a request; for a response, the CSeq method.
    pub fn method(&self) -> Method<'b> {
        match self.start_line {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => Method::from_token(self.cseq.method),
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&Uri<'b>> {
        match &self.start_line {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as a SIP/SIPS URI; [`ErrorKind::UnsupportedUriScheme`] (416) for another
    /// scheme, [`ErrorKind::StartLine`] on a response.
    pub fn request_sip_uri(&self) -> Result<&SipUri<'b>, ParseError> {
        match &self.start_line {
            StartLine::Request {
                uri: Uri::Sip(u), ..
            } => Ok(u),
            StartLine::Request {
                uri: Uri::Other { span, .. },
                ..
            } => Err(err(ErrorKind::UnsupportedUriScheme, span.start, None)),
            StartLine::Response { .. } => {
                Err(err(ErrorKind::StartLine, self.start_line_span.start, None))
            }
        }
    }

    /// The status code of a response.
    pub fn status_code(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason_phrase(&self) -> Option<&'b [u8]> {
        match self.start_line {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// All header lines, in order.
    pub fn headers(&self) -> &'h [Header<'b>] {
        self.headers
    }

    /// Header lines of one kind, in order.
    pub fn headers_of(&self, kind: HeaderName) -> impl Iterator<Item = &'h Header<'b>> + 'h {
        self.headers.iter().filter(move |h| h.kind == kind)
    }

    /// The first header with this name as written (case-insensitive; compact forms are not
    /// expanded here, use [`Self::headers_of`] for known headers).
    pub fn header_named(&self, name: &[u8]) -> Option<&'h Header<'b>> {
        self.headers.iter().find(|h| eq_ic(h.name, name))
    }

    /// The Call-ID value.
    pub fn call_id(&self) -> &'b [u8] {
        self.call_id
    }

    /// The CSeq.
    pub fn cseq(&self) -> &CSeq<'b> {
        &self.cseq
    }

    /// A request's From value (with its tag), read and checked by the parse. `None` for a
    /// response: a proxy relays a response by its Via and carries its From and To as written
    /// (RFC 3261 §16.7), so the parse only makes sure they are there; [`Message::read_from`]
    /// reads a response's.
    pub fn from(&self) -> Option<&NameAddr<'b>> {
        self.from.as_ref()
    }

    /// A request's To value (with its tag, if any); `None` for a response (see
    /// [`Message::from`] and [`Message::read_to`]).
    pub fn to(&self) -> Option<&NameAddr<'b>> {
        self.to.as_ref()
    }

    /// The From value of any message: a request's as the parse read it, a response's read now.
    pub fn read_from(&self) -> Result<NameAddr<'b>, ParseError> {
        match self.from {
            Some(from) => Ok(from),
            None => self.read_known(self.known.from, HeaderName::From),
        }
    }

    /// The To value of any message: a request's as the parse read it, a response's read now.
    pub fn read_to(&self) -> Result<NameAddr<'b>, ParseError> {
        match self.to {
            Some(to) => Ok(to),
            None => self.read_known(self.known.to, HeaderName::To),
        }
    }

    /// Reads the From or To line the parse found (it fails a message without one).
    fn read_known(&self, index: Option<u16>, kind: HeaderName) -> Result<NameAddr<'b>, ParseError> {
        let h = index
            .and_then(|i| self.headers.get(usize::from(i)))
            .ok_or(err(ErrorKind::MissingHeader, self.body.start, Some(kind)))?;
        read_name_addr(self.buf, h, kind)
    }

    /// The Max-Forwards value and span, if present (RFC 2543 requests may lack it).
    pub fn max_forwards(&self) -> Option<MaxForwards> {
        self.max_forwards
    }

    /// The Content-Length, if present.
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// Offsets of the body.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// The body bytes.
    pub fn body(&self) -> &'b [u8] {
        self.body.slice(self.buf)
    }

    /// The header slot index of a singleton header, if present.
    pub fn header_index(&self, kind: HeaderName) -> Option<usize> {
        let k = &self.known;
        let idx = match kind {
            HeaderName::CallId => k.call_id,
            HeaderName::CSeq => k.cseq,
            HeaderName::From => k.from,
            HeaderName::To => k.to,
            HeaderName::MaxForwards => k.max_forwards,
            HeaderName::ContentLength => k.content_length,
            _ => return self.headers.iter().position(|h| h.kind == kind),
        };
        idx.map(usize::from)
    }

    /// The top (first) Via value.
    pub fn top_via(&self) -> &Via<'b> {
        &self.top_via
    }

    /// The second Via value, already parsed: where a response goes once the proxy has taken
    /// its own Via off the top (RFC 3261 §16.7 step 3, §18.2.2). The same value as the second
    /// item of [`Self::vias`], without walking the Via lines again.
    pub fn second_via(&self) -> Option<&Via<'b>> {
        self.second_via.as_ref()
    }

    /// What removing the top Via value takes out: the `removal` of the first item of
    /// [`Self::vias`], found without building the iterator. A stateless proxy removes the
    /// top Via of every response it relays (RFC 3261 §16.7 step 3).
    pub fn top_via_removal(&self) -> Span {
        let Some(line) = self
            .lines_of(HeaderName::Via)
            .iter()
            .find(|h| h.kind == HeaderName::Via)
        else {
            return Span::default();
        };
        // Most Via lines hold one value: then the whole line goes, as `Values` decides.
        if !contains_byte(line.value, b',') {
            return line.line;
        }
        // Values joined on the line (`Via: ours, theirs`, as many UAS copy them): the parse
        // already read the second value where the list split would put it (after the comma
        // and its white space), so the removal runs up to it without splitting the line again.
        if let Some(second) = &self.second_via
            && second.span.start > line.value_span.start
            && second.span.start < line.value_span.end
        {
            return Span::new(line.value_span.start, second.span.start);
        }
        let mut values = ListIter::new(self.buf, line.value_span);
        match (values.next(), values.next()) {
            (Some(top), Some(next)) => Span::new(top.start, next.start),
            _ => line.line,
        }
    }

    /// All Via values in order, across header lines and commas.
    pub fn vias(&self) -> Values<'h, 'b, Via<'b>> {
        // INVARIANT: a parsed message's first Via values are `top_via` and `second_via`
        // (every Via value parsed in this order, none empty), so the iterator starts from
        // them instead of parsing them again.
        Values {
            first: Some(self.top_via),
            second: self.second_via,
            ..Values::new(
                self.buf,
                self.lines_of(HeaderName::Via),
                HeaderName::Via,
                parse_via,
            )
        }
    }

    /// All Route values in order (RFC 3261 §16.4 removes the first when it names this proxy).
    pub fn routes(&self) -> Values<'h, 'b, NameAddr<'b>> {
        Values::new(
            self.buf,
            self.lines_of(HeaderName::Route),
            HeaderName::Route,
            parse_name_addr,
        )
    }

    /// All Record-Route values in order.
    pub fn record_routes(&self) -> Values<'h, 'b, NameAddr<'b>> {
        Values::new(
            self.buf,
            self.lines_of(HeaderName::RecordRoute),
            HeaderName::RecordRoute,
            parse_name_addr,
        )
    }

    /// All Path values in order (RFC 3327).
    pub fn paths(&self) -> Values<'h, 'b, NameAddr<'b>> {
        Values::new(
            self.buf,
            self.lines_of(HeaderName::Path),
            HeaderName::Path,
            parse_name_addr,
        )
    }

    /// All Contact values in order (`Contact: *` yields nothing; see [`Self::is_contact_star`]).
    pub fn contacts(&self) -> Values<'h, 'b, NameAddr<'b>> {
        Values::new(
            self.buf,
            self.lines_of(HeaderName::Contact),
            HeaderName::Contact,
            parse_name_addr,
        )
    }

    /// True for `Contact: *` (RFC 3261 §10.2.2 remove all bindings).
    pub fn is_contact_star(&self) -> bool {
        self.headers_of(HeaderName::Contact)
            .any(|h| h.value == b"*")
    }

    /// Option tags of Require, Proxy-Require, Supported or Unsupported, in order.
    pub fn option_tags(&self, kind: HeaderName) -> Values<'h, 'b, &'b [u8]> {
        fn tag(buf: &[u8], span: Span) -> Result<&[u8], usize> {
            Ok(span.slice(buf))
        }
        Values::new(self.buf, self.lines_of(kind), kind, tag)
    }

    /// The header slots up to the last line of `kind` when it is a list kind (none when it is
    /// absent), else all: the values of that kind all lie within.
    fn lines_of(&self, kind: HeaderName) -> &'h [Header<'b>] {
        match list_index(kind) {
            Some(list) => self
                .headers
                .get(..self.list_ends[list])
                .unwrap_or(self.headers),
            None => self.headers,
        }
    }

    /// Converts a sub-slice of the buffer (any `&[u8]` this message handed out) back into its
    /// offsets; `None` if the slice does not point into the buffer.
    pub fn span_of(&self, part: &[u8]) -> Option<Span> {
        let base = self.buf.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len())?;
        (end <= self.buf.len()).then_some(Span::new(start, end))
    }
}

/// One value of a multi-value header with where it sits, for edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<T> {
    /// The parsed value.
    pub value: T,
    /// Offsets of the value.
    pub span: Span,
    /// Index of the header line (slot) holding the value.
    pub header_index: usize,
    /// Position of the value within its header line (0 = first).
    pub index_in_header: usize,
    /// What to remove to delete exactly this value and keep the message well-formed: the whole
    /// header line when it is the line's only value; otherwise the value with its following
    /// comma and white space (or, for the last value of a line, the preceding comma).
    pub removal: Span,
}

/// Iterator over the values of one header kind, in order, across lines and commas.
pub struct Values<'h, 'b, T> {
    buf: &'b [u8],
    headers: &'h [Header<'b>],
    kind: HeaderName,
    parse: fn(&'b [u8], Span) -> Result<T, usize>,
    header_index: usize,
    current: Option<(ListIter<'b>, usize)>,
    pending: Option<Span>,
    previous_end: Option<usize>,
    /// The first value, when the parser already has it (the top Via): returned instead of
    /// parsing the first span again.
    first: Option<T>,
    /// The second value, likewise (the second Via).
    second: Option<T>,
}

impl<'h, 'b, T> Values<'h, 'b, T> {
    fn new(
        buf: &'b [u8],
        headers: &'h [Header<'b>],
        kind: HeaderName,
        parse: fn(&'b [u8], Span) -> Result<T, usize>,
    ) -> Self {
        Self {
            buf,
            headers,
            kind,
            parse,
            header_index: 0,
            current: None,
            pending: None,
            previous_end: None,
            first: None,
            second: None,
        }
    }

    /// Advances to the next value span with its header index and position in the line.
    fn next_span(&mut self) -> Option<(Span, usize, usize, Option<Span>)> {
        loop {
            if let Some((iter, idx_in_header)) = &mut self.current {
                let span = match self.pending.take() {
                    Some(s) => Some(s),
                    None => iter.next(),
                };
                if let Some(span) = span {
                    let position = *idx_in_header;
                    *idx_in_header += 1;
                    let following = iter.next();
                    self.pending = following;
                    return Some((span, self.header_index - 1, position, following));
                }
                self.current = None;
            }
            let h = self
                .headers
                .get(self.header_index..)?
                .iter()
                .position(|h| h.kind == self.kind)?;
            self.header_index += h + 1;
            let header = &self.headers[self.header_index - 1];
            if header.value.is_empty() || (self.kind == HeaderName::Contact && header.value == b"*")
            {
                continue;
            }
            self.current = Some((ListIter::new(self.buf, header.value_span), 0));
            self.previous_end = None;
        }
    }
}

impl<'b, T> Iterator for Values<'_, 'b, T> {
    type Item = Located<T>;

    fn next(&mut self) -> Option<Located<T>> {
        let (span, header_index, index_in_header, following) = self.next_span()?;
        let header = &self.headers[header_index];
        let removal = match (index_in_header, following) {
            (0, None) => header.line,
            (_, Some(next)) => Span::new(span.start, next.start),
            (_, None) => Span::new(self.previous_end.unwrap_or(span.start), span.end),
        };
        self.previous_end = Some(span.end);
        let value = match self.first.take() {
            Some(value) => value,
            None => match self.second.take() {
                Some(value) => value,
                None => (self.parse)(self.buf, span).ok()?,
            },
        };
        Some(Located {
            value,
            span,
            header_index,
            index_in_header,
            removal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{EMPTY_HEADER, Rport, Splice, Transport};

    /// The Via check as it was before values were read in place: one attempt at the whole
    /// value, then the list split. The reference [`ListCheck::via_values`] must agree with.
    fn via_check_by_split<'b>(lists: &mut ListCheck<'b>, h: &Header<'b>) -> Result<(), ParseError> {
        if !h.value.is_empty() && lists.values < lists.max_values {
            if let Ok(via) = parse_via(lists.buf, h.value_span) {
                lists.keep_via(via);
                lists.values += 1;
                return Ok(());
            }
        }
        for v in ListIter::new(lists.buf, h.value_span) {
            lists.value(h, v)?;
        }
        Ok(())
    }

    #[test]
    fn via_values_read_in_place_agree_with_the_list_split() {
        let base: &[u8] = b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;x=\"a,b\" , SIP/2.0/TCP h;rport,\r\n SIP/2.0/UDP [::1]:5";
        let bytes: &[&[u8]] = &[
            b",", b" ", b"\"", b"<", b">", b"\\", b";", b"=", b"a", b":", b"[", b"/", b"\r\n ", b"",
        ];
        let mut values: Vec<Vec<u8>> = Vec::new();
        for at in 0..=base.len() {
            for b in bytes {
                // Replace the byte at `at` with `b` (deletes with ""), and insert `b` there.
                let mut replaced = base[..at].to_vec();
                replaced.extend_from_slice(b);
                replaced.extend_from_slice(base.get(at + 1..).unwrap_or_default());
                values.push(replaced);
                let mut inserted = base[..at].to_vec();
                inserted.extend_from_slice(b);
                inserted.extend_from_slice(&base[at..]);
                values.push(inserted);
            }
            values.push(base[..at].to_vec());
        }
        let mut checked = 0;
        for value in &values {
            // As the line reader gives it: trimmed of white space at both ends.
            let text = trim(value, Span::new(0, value.len()));
            for max_values in [1, 2, 3, 256] {
                for already in [0, 1] {
                    let h = Header {
                        kind: HeaderName::Via,
                        name: b"Via",
                        value: text.slice(value),
                        value_span: text,
                        line: Span::new(0, value.len()),
                    };
                    let fresh = || ListCheck {
                        buf: value,
                        max_values,
                        values: already,
                        top_via: None,
                        second_via: None,
                    };
                    let (mut new, mut old) = (fresh(), fresh());
                    let got = new.header(&h);
                    let want = via_check_by_split(&mut old, &h);
                    let shown = String::from_utf8_lossy(value);
                    assert_eq!(got, want, "{shown:?} max {max_values} after {already}");
                    assert_eq!(new.values, old.values, "{shown:?}");
                    assert_eq!(new.top_via, old.top_via, "{shown:?}");
                    assert_eq!(new.second_via, old.second_via, "{shown:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    const BASE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
        Max-Forwards: 70\r\n\
        Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
        Route: <sip:p3.example.com;lr>\r\n\
        To: Bob <sip:bob@biloxi.example.com>\r\n\
        From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Content-Length: 4\r\n\r\nbody";

    fn with<T>(text: &str, check: impl FnOnce(Result<Message<'_, '_>, ParseError>) -> T) -> T {
        let mut slots = [EMPTY_HEADER; 32];
        check(parse(text.as_bytes(), &mut slots, &Limits::default()))
    }

    /// `msg!{name, "text", |m| assertion}` parses `text` and checks the result.
    macro_rules! msg {
        ($($name:ident, $text:expr, |$m:ident| $check:expr;)*) => {
            $(#[test] fn $name() { with(&$text, |$m| assert!($check, "{:?}", $m.map(|m| m.as_bytes().len()))); })*
        };
    }

    fn kind(r: Result<Message<'_, '_>, ParseError>) -> Option<ErrorKind> {
        r.err().map(|e| e.kind)
    }

    fn replace(from: &str, to: &str) -> String {
        BASE.replacen(from, to, 1)
    }

    msg! {
        base_parses, BASE, |m| m.is_ok_and(|m| m.is_request() && m.method() == Method::Invite && m.body() == b"body");
        request_contact_checked, replace("Max-Forwards: 70\r\n", "Contact: <sip:a@[x\r\n"), |m| kind(m) == Some(ErrorKind::NameAddr);
        response_contact_carried, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 200 OK", 1).replacen("Max-Forwards: 70\r\n", "Contact: <sip:a@[x\r\nContact: <sip:b@h>\r\n", 1), |m| m.is_ok_and(|m| m.contacts().count() == 0 && m.headers_of(HeaderName::Contact).count() == 2);
        request_to_checked, replace("To: Bob <sip:bob@biloxi.example.com>", "To: Bob <sip:bob@[biloxi"), |m| kind(m) == Some(ErrorKind::NameAddr);
        response_from_to_carried, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 200 OK", 1).replacen("To: Bob <sip:bob@biloxi.example.com>", "To: Bob <sip:bob@[biloxi", 1), |m| m.is_ok_and(|m| m.to().is_none() && m.from().is_none() && m.read_to().is_err_and(|e| e.kind == ErrorKind::NameAddr) && m.read_from().is_ok_and(|f| f.tag == Some(b"1928301774")));
        response_from_to_still_required, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 200 OK", 1).replacen("To: Bob <sip:bob@biloxi.example.com>\r\n", "", 1), |m| kind(m) == Some(ErrorKind::MissingHeader);
        response_via_still_checked, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 200 OK", 1).replacen("SIP/2.0/UDP pc33", "SIP/2.0/UDP pc33:99999", 1), |m| kind(m) == Some(ErrorKind::Via);
        base_top_via, BASE, |m| m.is_ok_and(|m| m.top_via().transport == Transport::Udp && m.top_via().rport == Rport::Requested && m.top_via().host.text == b"pc33.atlanta.example.com");
        base_routes_in_order, BASE, |m| m.is_ok_and(|m| m.routes().map(|r| r.value.uri_bytes().len()).collect::<Vec<_>>() == [21, 21, 21]);
        base_tags, BASE, |m| m.is_ok_and(|m| m.from().and_then(|f| f.tag) == Some(b"1928301774") && m.to().is_some_and(|t| t.tag.is_none()));
        base_cseq, BASE, |m| m.is_ok_and(|m| m.cseq().number == 314159 && m.cseq().method == b"INVITE");
        compact_forms, replace("Call-ID:", "i:").replace("Content-Length:", "l:").replace("Via:", "v:"), |m| m.is_ok_and(|m| m.call_id().starts_with(b"a84b"));
        lower_case_names, replace("CSeq:", "cseq :"), |m| m.is_ok_and(|m| m.cseq().number == 314159);
        folded_via, replace("Via: SIP/2.0/UDP ", "Via: SIP/2.0/UDP\r\n  "), |m| m.is_ok_and(|m| m.top_via().host.text == b"pc33.atlanta.example.com");
        leading_crlf_ignored, format!("\r\n\r\n{BASE}"), |m| m.is_ok_and(|m| m.len() == BASE.len() + 4);
        trailing_octets_ignored, format!("{BASE}garbage"), |m| m.is_ok_and(|m| m.as_bytes() == BASE.as_bytes());
        no_content_length_on_udp, replace("Content-Length: 4\r\n", ""), |m| m.is_ok_and(|m| m.body() == b"body" && m.content_length().is_none());
        ipv6_sent_by, replace("pc33.atlanta.example.com;branch", "[2001:db8::9]:5070;branch"), |m| m.is_ok_and(|m| m.top_via().host.unbracketed() == b"2001:db8::9" && m.top_via().port == Some(5070));
        rport_value, replace(";rport", ";rport=5061;received=192.0.2.1"), |m| m.is_ok_and(|m| m.top_via().rport == Rport::Port(5061) && m.top_via().received.and_then(|r| r.value) == Some(b"192.0.2.1"));
        response_parses, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 180 Ringing", 1), |m| m.is_ok_and(|m| m.status_code() == Some(180) && m.reason_phrase() == Some(b"Ringing"));
        empty_reason, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 100 ", 1), |m| m.is_ok_and(|m| m.reason_phrase() == Some(b""));
        bad_version, replace("SIP/2.0\r\n", "SIP/3.0\r\n"), |m| kind(m) == Some(ErrorKind::Version);
        status_too_big, BASE.replacen("INVITE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 700 Big", 1), |m| kind(m) == Some(ErrorKind::StatusCode);
        double_space, replace("INVITE sip", "INVITE  sip"), |m| kind(m) == Some(ErrorKind::StartLine);
        trailing_space, replace("SIP/2.0\r\n", "SIP/2.0 \r\n"), |m| kind(m).is_some();
        missing_call_id, replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", ""), |m| m.err().is_some_and(|e| e.kind == ErrorKind::MissingHeader && e.header == Some(HeaderName::CallId));
        missing_via, replace("Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n", ""), |m| m.err().is_some_and(|e| e.header == Some(HeaderName::Via));
        duplicate_cseq, replace("CSeq: 314159 INVITE\r\n", "CSeq: 314159 INVITE\r\nCSeq: 1 INVITE\r\n"), |m| kind(m) == Some(ErrorKind::DuplicateHeader);
        cseq_overflow, replace("314159 INVITE", "4294967296 INVITE"), |m| kind(m) == Some(ErrorKind::CSeq);
        cseq_method_mismatch, replace("314159 INVITE", "314159 BYE"), |m| kind(m) == Some(ErrorKind::CSeqMethod);
        max_forwards_256, replace("Max-Forwards: 70", "Max-Forwards: 256"), |m| kind(m) == Some(ErrorKind::MaxForwards);
        negative_length, replace("Content-Length: 4", "Content-Length: -4"), |m| kind(m) == Some(ErrorKind::ContentLength);
        truncated_body, replace("Content-Length: 4", "Content-Length: 5"), |m| kind(m) == Some(ErrorKind::BodyTruncated);
        header_without_colon, replace("Max-Forwards: 70", "Max-Forwards 70"), |m| kind(m) == Some(ErrorKind::HeaderName);
        empty_via_param, replace(";rport", ";;rport"), |m| m.err().is_some_and(|e| e.kind == ErrorKind::Via && e.header == Some(HeaderName::Via));
        empty_route_value, replace("<sip:p1.example.com;lr>, ", "<sip:p1.example.com;lr>, ,"), |m| kind(m) == Some(ErrorKind::NameAddr);
        bracketed_request_uri, replace("INVITE sip:bob@biloxi.example.com", "INVITE <sip:bob@biloxi.example.com>"), |m| kind(m) == Some(ErrorKind::RequestUri);
        unknown_scheme_parses, replace("INVITE sip:bob@biloxi.example.com", "INVITE tel:+15551234"), |m| m.is_ok_and(|m| m.request_sip_uri().err().map(|e| e.status_code()) == Some(416));
        bare_cr_in_value, replace("Call-ID: a84b", "Call-ID: a\r84b"), |m| kind(m) == Some(ErrorKind::HeaderValue);
        sigcomp_first_byte, "\u{f8}rest", |m| kind(m).is_some();
        only_crlf, "\r\n\r\n", |m| kind(m) == Some(ErrorKind::Empty);
        no_empty_line_datagram, BASE.split("Content-Length").next().unwrap_or_default(), |m| m.is_ok();
        fold_after_colon, replace("Via: SIP", "Via:\r\n SIP"), |m| m.is_ok_and(|m| m.top_via().host.text == b"pc33.atlanta.example.com" && m.headers()[0].value.starts_with(b"SIP/2.0"));
        unknown_header_space_before_colon, replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nX-Custom.Header \t:  v1 \r\n"), |m| m.is_ok_and(|m| m.header_named(b"x-custom.header").is_some_and(|h| h.value == b"v1" && h.kind == HeaderName::Other));
        lf_only_lines, BASE.replace("\r\n", "\n"), |m| m.is_ok_and(|m| m.body() == b"body" && m.headers().len() == 9);
        space_inside_name, replace("Max-Forwards:", "Max Forwards:"), |m| m.err().is_some_and(|e| e.kind == ErrorKind::HeaderName && e.offset == BASE.find("Max-Forwards").unwrap_or(0));
        empty_value, replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nSubject:\r\n"), |m| m.is_ok_and(|m| m.header_named(b"subject").is_some_and(|h| h.value.is_empty()));
        bare_cr_after_recognised_name, replace("CSeq: 314159", "CSeq:\r314159"), |m| m.err().is_some_and(|e| e.kind == ErrorKind::HeaderValue && e.header == Some(HeaderName::CSeq));
        unterminated_header_line, "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl:0", |m| m.err().is_some_and(|e| e.kind == ErrorKind::Framing);
    }

    #[test]
    fn list_index_covers_the_list_kinds() {
        let mut seen = [false; LIST_KINDS];
        let names = [
            "via",
            "route",
            "record-route",
            "call-id",
            "cseq",
            "from",
            "to",
            "max-forwards",
            "content-length",
            "content-type",
            "content-encoding",
            "contact",
            "require",
            "proxy-require",
            "supported",
            "unsupported",
            "path",
            "expires",
            "allow",
            "subject",
            "event",
            "allow-events",
            "refer-to",
            "referred-by",
            "session-expires",
            "identity",
            "proxy-authorization",
            "authorization",
            "flow-timer",
            "warning",
            "retry-after",
            "x",
        ];
        for name in names {
            let kind = HeaderName::classify(name.as_bytes());
            assert_eq!(list_index(kind).is_some(), kind.is_list(), "{kind:?}");
            if let Some(i) = list_index(kind) {
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn too_many_headers() {
        let mut slots = [EMPTY_HEADER; 4];
        let r = parse(BASE.as_bytes(), &mut slots, &Limits::default());
        assert_eq!(r.err().map(|e| e.kind), Some(ErrorKind::TooManyHeaders));
    }

    #[test]
    fn header_line_too_long() {
        let limits = Limits {
            max_header_line: 50,
            ..Limits::default()
        };
        let mut slots = [EMPTY_HEADER; 32];
        let r = parse(BASE.as_bytes(), &mut slots, &limits);
        let via = BASE.find("Via:").unwrap_or(0);
        assert_eq!(
            r.err().map(|e| (e.kind, e.offset)),
            Some((ErrorKind::HeaderTooLong, via))
        );
    }

    #[test]
    fn too_large() {
        let limits = Limits {
            max_message_size: 100,
            ..Limits::default()
        };
        let mut slots = [EMPTY_HEADER; 32];
        let r = parse(BASE.as_bytes(), &mut slots, &limits);
        assert_eq!(r.err().map(|e| e.status_code()), Some(513));
    }

    fn splice_out(msg: &Message<'_, '_>, edits: &[crate::sip::Edit<'_>]) -> String {
        let mut s: Splice<'_, 8> = Splice::new();
        for e in edits {
            assert!(s.push(*e).is_ok());
        }
        let mut out = [0u8; 2048];
        let n = s.apply(msg.as_bytes(), &mut out).unwrap_or(0);
        String::from_utf8_lossy(&out[..n]).into_owned()
    }

    #[test]
    fn remove_routes_one_by_one() {
        let mut text = BASE.to_string();
        let mut expected_left = 3;
        while expected_left > 0 {
            let mut slots = [EMPTY_HEADER; 32];
            let Ok(msg) = parse(text.as_bytes(), &mut slots, &Limits::default()) else {
                panic!("reparse failed: {text}");
            };
            assert_eq!(msg.routes().count(), expected_left);
            let first = msg.routes().next().map(|r| r.removal).unwrap_or_default();
            text = splice_out(&msg, &[crate::sip::Edit::Remove(first)]);
            expected_left -= 1;
        }
        assert!(!text.contains("Route"), "{text}");
        assert!(text.contains("Max-Forwards: 70\r\nTo:"), "{text}");
    }

    #[test]
    fn route_removal_spans() {
        with(BASE, |m| {
            let Ok(m) = m else { panic!("parse") };
            let r: Vec<_> = m
                .routes()
                .map(|r| String::from_utf8_lossy(r.removal.slice(m.buf())).into_owned())
                .collect();
            assert_eq!(
                r,
                [
                    "<sip:p1.example.com;lr>, ",
                    ", <sip:p2.example.com;lr>",
                    "Route: <sip:p3.example.com;lr>\r\n"
                ]
            );
        });
    }

    #[test]
    fn forward_edits() {
        with(BASE, |m| {
            let Ok(m) = m else { panic!("parse") };
            let via_line = m
                .headers_of(HeaderName::Via)
                .next()
                .map(|h| h.line.start)
                .unwrap_or(0);
            let mf = m.max_forwards().map(|mf| mf.span).unwrap_or_default();
            let first_route = m.routes().next().map(|r| r.removal).unwrap_or_default();
            let rport = m.top_via().rport_param.unwrap_or_default();
            let out = splice_out(
                &m,
                &[
                    crate::sip::Edit::Insert {
                        at: via_line,
                        bytes: b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew\r\n",
                    },
                    crate::sip::Edit::Replace {
                        span: mf,
                        bytes: b"69",
                    },
                    crate::sip::Edit::Remove(first_route),
                    crate::sip::Edit::Replace {
                        span: rport,
                        bytes: b";received=192.0.2.7;rport=5060",
                    },
                ],
            );
            let expected = BASE
                .replacen(
                    "Via: SIP",
                    "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew\r\nVia: SIP",
                    1,
                )
                .replacen("Max-Forwards: 70", "Max-Forwards: 69", 1)
                .replacen("<sip:p1.example.com;lr>, ", "", 1)
                .replacen(";rport", ";received=192.0.2.7;rport=5060", 1);
            assert_eq!(out, expected);
        });
    }

    #[test]
    fn remove_top_via_of_response() {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
            From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        with(text, |m| {
            let Ok(m) = m else { panic!("parse") };
            let top = m.vias().next().map(|v| v.removal).unwrap_or_default();
            let out = splice_out(&m, &[crate::sip::Edit::Remove(top)]);
            assert!(
                out.starts_with(
                    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n"
                ),
                "{out}"
            );
        });
    }

    #[test]
    fn span_of_recovers_offsets() {
        with(BASE, |m| {
            let Ok(m) = m else { panic!("parse") };
            let branch = m.top_via().branch.unwrap_or_default();
            let span = m.span_of(branch).unwrap_or_default();
            assert_eq!(span.slice(m.buf()), b"z9hG4bK776asdhds");
            assert_eq!(m.span_of(b"elsewhere"), None);
        });
    }
}
