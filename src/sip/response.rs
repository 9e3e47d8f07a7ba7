//! Stateless responses (RFC 3261 §8.2.6, §16.7) and the salvage scan that makes them possible
//! for messages that failed to parse (RFC 3261 §18.2.2, RFC 3581 §4).

use super::chars::{eq_ic, find_byte, is_lws};
use super::cursor::{ListIter, trim};
use super::out::Out;
use super::parse::{Message, line_end};
use super::values::{Rport, parse_via};
use super::{HeaderName, Span};

/// How many Via header lines a salvage or response keeps; more are a sign of abuse and the
/// response is then refused with [`ResponseError::TooManyVias`].
pub const MAX_VIA_LINES: usize = 32;

/// The parts of a request a stateless response copies: Via lines, From, To, Call-ID, CSeq.
/// Built from a parsed [`Message`] ([`Salvage::from_message`]) or by a best-effort scan of bytes
/// that failed to parse ([`salvage`]).
#[derive(Debug, Clone, Copy)]
pub struct Salvage<'b> {
    buf: &'b [u8],
    /// True when the start line does not begin with `SIP/` (so the message is a request and
    /// may be answered; responses are never answered, RFC 3261 §18.1.2).
    pub is_request: bool,
    /// The request method token, if the start line has one.
    pub method: Option<&'b [u8]>,
    vias: [Span; MAX_VIA_LINES],
    via_count: usize,
    via_overflow: bool,
    /// Offsets of the From value.
    pub from: Option<Span>,
    /// Offsets of the To value.
    pub to: Option<Span>,
    /// Offsets of the Call-ID value.
    pub call_id: Option<Span>,
    /// Offsets of the CSeq value.
    pub cseq: Option<Span>,
}

impl<'b> Salvage<'b> {
    fn empty(buf: &'b [u8]) -> Self {
        Self {
            buf,
            is_request: false,
            method: None,
            vias: [Span::new(0, 0); MAX_VIA_LINES],
            via_count: 0,
            via_overflow: false,
            from: None,
            to: None,
            call_id: None,
            cseq: None,
        }
    }

    fn push_via(&mut self, value: Span) {
        match self.vias.get_mut(self.via_count) {
            Some(slot) => {
                *slot = value;
                self.via_count += 1;
            }
            None => self.via_overflow = true,
        }
    }

    /// The parts of a successfully parsed message.
    pub fn from_message(msg: &Message<'_, 'b>) -> Self {
        let mut s = Self::empty(msg.buf());
        s.is_request = msg.is_request();
        s.method = Some(msg.method().as_bytes());
        for h in msg.headers_of(HeaderName::Via) {
            s.push_via(h.value_span);
        }
        let value = |kind| msg.header_index(kind).map(|i| msg.headers()[i].value_span);
        s.from = value(HeaderName::From);
        s.to = value(HeaderName::To);
        s.call_id = value(HeaderName::CallId);
        s.cseq = value(HeaderName::CSeq);
        s
    }

    /// The Via header values (one per line, commas included), in order.
    pub fn via_lines(&self) -> &[Span] {
        &self.vias[..self.via_count]
    }

    /// True when a response can be built: at least one Via, and From, To, Call-ID, CSeq.
    pub fn is_answerable(&self) -> bool {
        self.is_request
            && self.via_count > 0
            && !self.via_overflow
            && self.from.is_some()
            && self.to.is_some()
            && self.call_id.is_some()
            && self.cseq.is_some()
    }

    /// The buffer the spans point into.
    pub fn buf(&self) -> &'b [u8] {
        self.buf
    }

    /// The first value of the first Via line, parsed, if it is well-formed: where a response
    /// goes (RFC 3261 §18.2.2 maddr / sent-by port, RFC 3581 rport) even when the rest of the
    /// message is broken.
    pub fn top_via(&self) -> Option<super::Via<'b>> {
        let line = *self.via_lines().first()?;
        let first = ListIter::new(self.buf, line).next()?;
        parse_via(self.buf, first).ok()
    }
}

/// Best-effort scan of a message that failed to parse: finds the start-line kind and the
/// values of Via, From, To, Call-ID and CSeq, tolerating any defect elsewhere. Bounded by the
/// buffer length; allocation-free.
pub fn salvage(buf: &[u8]) -> Salvage<'_> {
    let mut s = Salvage::empty(buf);
    let Some((first, lines)) = salvage_lines(buf) else {
        return s;
    };
    s.is_request = !(first.len() >= 4 && eq_ic(&first[..4], b"SIP/"));
    if s.is_request {
        let method_len = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
        s.method = (method_len > 0).then(|| &first[..method_len]);
    }
    for (start, end) in lines {
        record(&mut s, buf, start, end);
    }
    s
}

/// The Call-ID [`salvage`] would find, without reading the other headers: it stops at the
/// first Call-ID line. This is what decides the shard a message belongs to, for every
/// message, so it must cost little and agree with `salvage` exactly.
pub fn salvage_call_id(buf: &[u8]) -> Option<Span> {
    let (_, lines) = salvage_lines(buf)?;
    for (start, end) in lines {
        let line = &buf[start..end];
        // Only a name starting with `c` or `i` can be Call-ID's: most lines end here.
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if !first.is_some_and(|&b| matches!(b | 0x20, b'c' | b'i')) {
            continue;
        }
        let Some(colon) = find_byte(line, b':') else {
            continue;
        };
        if HeaderName::classify(line[..colon].trim_ascii()) == HeaderName::CallId {
            return Some(trim(buf, Span::new(start + colon + 1, end)));
        }
    }
    None
}

/// The start line of a message (after any leading CRLFs) and an iterator over its header
/// lines as [`salvage`] reads them; `None` for a buffer of line breaks only.
fn salvage_lines(buf: &[u8]) -> Option<(&[u8], SalvageLines<'_>)> {
    let pos = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let (first_end, next) = line_end(buf, pos).unwrap_or((buf.len(), buf.len()));
    Some((&buf[pos..first_end], SalvageLines { buf, pos: next }))
}

/// Header lines as (start, end of content), folded continuation lines joined (RFC 3261
/// §7.3.1), up to the empty line; an unterminated last line still counts.
struct SalvageLines<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl Iterator for SalvageLines<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let (buf, pos) = (self.buf, self.pos);
        if pos >= buf.len() {
            return None;
        }
        let Some((mut end, mut next)) = line_end(buf, pos) else {
            self.pos = buf.len();
            return Some((pos, buf.len()));
        };
        if end == pos {
            self.pos = buf.len();
            return None;
        }
        while buf.get(next).is_some_and(|&b| b == b' ' || b == b'\t') {
            (end, next) = line_end(buf, next).unwrap_or((buf.len(), buf.len()));
        }
        self.pos = next;
        Some((pos, end))
    }
}

fn record(s: &mut Salvage<'_>, buf: &[u8], start: usize, end: usize) {
    let line = &buf[start..end];
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return;
    };
    let name = line[..colon].trim_ascii();
    let value = trim(buf, Span::new(start + colon + 1, end));
    match HeaderName::classify(name) {
        HeaderName::Via => s.push_via(value),
        HeaderName::From if s.from.is_none() => s.from = Some(value),
        HeaderName::To if s.to.is_none() => s.to = Some(value),
        HeaderName::CallId if s.call_id.is_none() => s.call_id = Some(value),
        HeaderName::CSeq if s.cseq.is_none() => s.cseq = Some(value),
        _ => {}
    }
}

/// Why a response could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// The request lacks a part the response must copy (Via, From, To, Call-ID or CSeq), or
    /// was a response.
    NotAnswerable,
    /// More Via lines than [`MAX_VIA_LINES`].
    TooManyVias,
    /// `out` is too small; the response needs `required_size` bytes.
    InsufficientSize {
        /// Bytes needed.
        required_size: usize,
    },
}

/// Options of a stateless response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseOptions<'a> {
    /// Add `;received=` with this address to the top Via (RFC 3261 §18.2.1), replacing any
    /// received already there.
    pub received: Option<&'a [u8]>,
    /// Fill `;rport=` with this source port if the top Via asked for it (RFC 3581 §4).
    pub rport: Option<u16>,
    /// Extra header lines written before Content-Length, each ending in CRLF
    /// (e.g. `Warning: 399 edge "Malformed Via"\r\nRetry-After: 5\r\n`).
    pub extra_headers: &'a [u8],
    /// Answer even when From, To or Call-ID is missing, leaving out what is missing (RFC 4475
    /// §3.1.2.19 "insuf" wants a 400). The top Via and CSeq, which the client matches a
    /// response with (RFC 3261 §17.1.3), are still required.
    pub partial: bool,
}

/// Writes a stateless response (RFC 3261 §8.2.6.2): status line, all Via lines in order (the
/// top value with received/rport when asked), From, To (with a tag added when the request had
/// none, see [`to_tag`]), Call-ID, CSeq, the extra headers, and `Content-Length: 0`.
/// Returns the length written into `out`.
pub fn write_response(
    req: &Salvage<'_>,
    code: u16,
    reason: &[u8],
    opts: &ResponseOptions<'_>,
    out: &mut [u8],
) -> Result<usize, ResponseError> {
    if req.via_overflow {
        return Err(ResponseError::TooManyVias);
    }
    let answerable = if opts.partial {
        req.is_request && req.via_count > 0 && req.cseq.is_some()
    } else {
        req.is_answerable()
    };
    let Some(cseq) = req.cseq.filter(|_| answerable) else {
        return Err(ResponseError::NotAnswerable);
    };
    let buf = req.buf;
    let mut w = Out::new(out);
    w.put(b"SIP/2.0 ");
    w.put_u64(u64::from(code.clamp(100, 699)));
    w.put(b" ");
    w.put(reason);
    w.put(b"\r\n");
    for (i, line) in req.via_lines().iter().enumerate() {
        w.put(b"Via: ");
        if i == 0 {
            write_top_via(&mut w, buf, *line, opts);
        } else {
            w.put(line.slice(buf));
        }
        w.put(b"\r\n");
    }
    for (name, span) in [(&b"From: "[..], req.from), (b"To: ", req.to)] {
        let Some(span) = span else { continue };
        w.put(name);
        w.put(span.slice(buf));
        if name == b"To: " && !has_tag(span.slice(buf)) {
            w.put(b";tag=");
            w.put(&to_tag(req));
        }
        w.put(b"\r\n");
    }
    if let Some(call_id) = req.call_id {
        w.put(b"Call-ID: ");
        w.put(call_id.slice(buf));
        w.put(b"\r\n");
    }
    w.put(b"CSeq: ");
    w.put(cseq.slice(buf));
    w.put(b"\r\n");
    w.put(opts.extra_headers);
    w.put(b"Content-Length: 0\r\n\r\n");
    if w.overflowed() {
        return Err(ResponseError::InsufficientSize {
            required_size: w.required(),
        });
    }
    Ok(w.len())
}

/// Writes the first Via line; its first value gets received/rport.
fn write_top_via(w: &mut Out<'_>, buf: &[u8], line: Span, opts: &ResponseOptions<'_>) {
    let first = ListIter::new(buf, line).next().unwrap_or(line);
    let Ok(via) = parse_via(buf, first) else {
        // Unparseable: copy as is; the response still goes back to the source address.
        w.put(line.slice(buf));
        return;
    };
    let mut skip = [Span::new(0, 0); 2];
    if let (Some(_), Some(r)) = (opts.received, via.received) {
        skip[0] = r.span;
    }
    let fill_rport = opts.rport.filter(|_| via.rport != Rport::Absent);
    if let (Some(_), Some(r)) = (fill_rport, via.rport_param) {
        skip[1] = r;
    }
    if skip[0].start > skip[1].start {
        skip.swap(0, 1);
    }
    let mut read = line.start;
    for s in skip.iter().filter(|s| !s.is_empty()) {
        w.put(&buf[read..s.start]);
        read = s.end;
    }
    w.put(&buf[read..first.end]);
    if let Some(received) = opts.received {
        w.put(b";received=");
        w.put(received);
    }
    if let Some(port) = fill_rport {
        w.put(b";rport=");
        w.put_u64(u64::from(port));
    }
    w.put(&buf[first.end..line.end]);
}

/// True when a To/From value carries a `tag` header parameter (best effort, case-insensitive).
fn has_tag(value: &[u8]) -> bool {
    let params = match value.iter().rposition(|&b| b == b'>') {
        Some(gt) => &value[gt + 1..],
        None => value,
    };
    params.split(|&b| b == b';').skip(1).any(|p| {
        let name = p.split(|&b| b == b'=').next().unwrap_or(b"");
        let name = trim_lws(name);
        eq_ic(name, b"tag")
    })
}

fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_lws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_lws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The To tag of a stateless response: 16 hex digits of a 64-bit FNV-1a hash over the request's
/// Call-ID, From, CSeq and top Via line. A retransmission carries the same bytes and so gets the
/// same tag (RFC 3261 §8.2.6.2, §16.7: the UAC must see one tag per transaction).
pub fn to_tag(req: &Salvage<'_>) -> [u8; 16] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        req.call_id,
        req.from,
        req.cseq,
        req.via_lines().first().copied(),
    ];
    for part in parts.iter().flatten() {
        for &b in part.slice(req.buf) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut tag = [0u8; 16];
    for (i, t) in tag.iter_mut().enumerate() {
        let nibble = (hash >> (60 - 4 * i)) & 0xf;
        *t = b"0123456789abcdef"[nibble as usize];
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSUF: &[u8] = b"INVITE sip:user@example.com SIP/2.0\r\nCSeq: 193942 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf;rport\r\nl: 0\r\n\r\n";

    #[test]
    fn partial_answers_without_from_to_call_id() {
        let req = salvage(INSUF);
        let mut out = [0u8; 512];
        let opts = ResponseOptions::default();
        assert_eq!(
            write_response(&req, 400, b"Missing", &opts, &mut out),
            Err(ResponseError::NotAnswerable)
        );
        let opts = ResponseOptions {
            partial: true,
            rport: Some(5061),
            ..Default::default()
        };
        let n = write_response(&req, 400, b"Missing", &opts, &mut out).unwrap_or(0);
        assert_eq!(
            &out[..n],
            &b"SIP/2.0 400 Missing\r\nVia: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf;rport=5061\r\n\
CSeq: 193942 INVITE\r\nContent-Length: 0\r\n\r\n"[..]
        );
    }

    #[test]
    fn top_via_of_a_salvage() {
        let req = salvage(INSUF);
        let via = req.top_via();
        assert_eq!(via.map(|v| v.host.text), Some(&b"192.0.2.95"[..]));
        assert_eq!(via.map(|v| v.rport), Some(Rport::Requested));
        assert!(
            salvage(b"INVITE x SIP/2.0\r\nVia: garbage\r\n\r\n")
                .top_via()
                .is_none()
        );
    }

    use crate::sip::{EMPTY_HEADER, Limits, parse};

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP p.example.com;branch=z9hG4bKb\r\n\
        Via: SIP/2.0/TCP q.example.com;branch=z9hG4bKc\r\n\
        From: <sip:alice@example.com>;tag=abc\r\nTo: <sip:bob@example.com>\r\n\
        Call-ID: 1@h\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    fn respond(basis: &Salvage<'_>, opts: &ResponseOptions<'_>) -> String {
        let mut out = [0u8; 1024];
        let n = write_response(basis, 483, b"Too Many Hops", opts, &mut out).unwrap_or(0);
        String::from_utf8_lossy(&out[..n]).into_owned()
    }

    #[test]
    fn from_parsed_request() {
        let mut slots = [EMPTY_HEADER; 16];
        let Ok(msg) = parse(REQ, &mut slots, &Limits::default()) else {
            panic!("parse")
        };
        let basis = Salvage::from_message(&msg);
        let opts = ResponseOptions {
            received: Some(b"192.0.2.9"),
            rport: Some(40000),
            extra_headers: b"Retry-After: 5\r\n",
            partial: false,
        };
        let text = respond(&basis, &opts);
        let tag = to_tag(&basis);
        let tag = std::str::from_utf8(&tag).unwrap_or_default();
        assert_eq!(
            text,
            format!(
                "SIP/2.0 483 Too Many Hops\r\n\
                 Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=192.0.2.9;rport=40000, SIP/2.0/UDP p.example.com;branch=z9hG4bKb\r\n\
                 Via: SIP/2.0/TCP q.example.com;branch=z9hG4bKc\r\n\
                 From: <sip:alice@example.com>;tag=abc\r\nTo: <sip:bob@example.com>;tag={tag}\r\n\
                 Call-ID: 1@h\r\nCSeq: 7 INVITE\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n"
            )
        );
        let mut slots = [EMPTY_HEADER; 16];
        let Ok(resp) = parse(text.as_bytes(), &mut slots, &Limits::default()) else {
            panic!("response must parse")
        };
        assert_eq!(resp.status_code(), Some(483));
        assert_eq!(resp.vias().count(), 3);
    }

    #[test]
    fn salvage_matches_parse_and_tag_is_stable() {
        let mut slots = [EMPTY_HEADER; 16];
        let Ok(msg) = parse(REQ, &mut slots, &Limits::default()) else {
            panic!("parse")
        };
        let parsed = Salvage::from_message(&msg);
        let scanned = salvage(REQ);
        assert_eq!(
            respond(&parsed, &ResponseOptions::default()),
            respond(&scanned, &ResponseOptions::default())
        );
        assert_eq!(to_tag(&parsed), to_tag(&salvage(REQ)));
        let other = salvage(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: a\r\nTo: b\r\nCall-ID: 2@h\r\nCSeq: 7 INVITE\r\n\r\n");
        assert_ne!(to_tag(&parsed), to_tag(&other));
    }

    #[test]
    fn salvage_of_broken_request() {
        let broken = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: z\r\nCSeq: 1 INVITE\r\nGarbage\r\n\r\n";
        let basis = salvage(broken);
        assert!(basis.is_answerable());
        let text = respond(
            &basis,
            &ResponseOptions {
                received: Some(b"192.0.2.1"),
                ..ResponseOptions::default()
            },
        );
        assert!(
            text.contains("Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n"),
            "{text}"
        );
        assert!(text.contains("To: <sip:c@d>;tag=2\r\n"), "{text}");
    }

    #[test]
    fn responses_are_not_answered() {
        let basis = salvage(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: a\r\nTo: b\r\nCall-ID: 2@h\r\nCSeq: 7 INVITE\r\n\r\n");
        let mut out = [0u8; 512];
        assert_eq!(
            write_response(&basis, 400, b"Bad", &ResponseOptions::default(), &mut out),
            Err(ResponseError::NotAnswerable)
        );
    }

    #[test]
    fn small_buffer_reports_size() {
        let basis = salvage(REQ);
        let mut big = [0u8; 1024];
        let n = write_response(
            &basis,
            400,
            b"Bad Request",
            &ResponseOptions::default(),
            &mut big,
        )
        .unwrap_or(0);
        let mut small = [0u8; 10];
        assert_eq!(
            write_response(
                &basis,
                400,
                b"Bad Request",
                &ResponseOptions::default(),
                &mut small
            ),
            Err(ResponseError::InsufficientSize { required_size: n })
        );
    }
}
