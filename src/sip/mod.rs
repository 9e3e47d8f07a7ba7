//! The SIP message core: a zero-copy, allocation-free, sans-IO parser and serializer.
//!
//! Everything here works on borrowed bytes and writes into caller-owned buffers; nothing
//! allocates, does I/O or reads a clock. Every view into a message is also available as a
//! [`Span`] (byte offsets into the original buffer), because forwarding edits the original bytes
//! by offset rather than re-printing headers.
//!
//! # Receiving
//!
//! ```
//! use sipedge::sip::{self, EMPTY_HEADER, Limits};
//!
//! let bytes = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP client.example.com;branch=z9hG4bK74bf9;rport\r\n\
//!     Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=9fxced76sl\r\n\
//!     To: <sip:bob@example.com>\r\nCall-ID: 3848276298220188511@example.com\r\n\
//!     CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let mut slots = [EMPTY_HEADER; 64];
//! let msg = sip::parse(bytes, &mut slots, &Limits::default()).expect("valid");
//! assert!(msg.is_request());
//! assert_eq!(msg.top_via().branch, Some(&b"z9hG4bK74bf9"[..]));
//! assert_eq!(msg.max_forwards().map(|m| m.value), Some(70));
//! ```
//!
//! * Datagrams: [`classify_datagram`] (SIP / SigComp / keep-alive / STUN), then [`parse`]. One
//!   message per datagram; Content-Length may be absent; octets after Content-Length are not
//!   part of the message ([`Message::len`]).
//! * Streams: accumulate bytes and call [`frame`] (RFC 3261 §18.3). It answers
//!   [`Frame::Message`] with a length, [`Frame::Partial`], [`Frame::KeepAlive`] (RFC 5626
//!   §3.5.1 CRLFCRLF ping / CRLF pong) or [`Frame::SigComp`]; a framing error means the
//!   connection must be closed. Parse the framed bytes with [`parse_stream_message`].
//! * Header slots come from the caller (`[EMPTY_HEADER; N]`, as with `httparse`); [`Limits`]
//!   bounds message size, header count and length, and the number of comma-separated values.
//!   There is no recursion anywhere, so nesting needs no separate bound.
//!
//! [`parse`] validates the start line and every header line, and the values a proxy acts on:
//! Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Route, Record-Route, Path,
//! Contact and the option-tag lists. Other headers are kept byte-exact and not interpreted.
//! Typed access: [`Message::top_via`], [`Message::vias`], [`Message::routes`],
//! [`Message::record_routes`], [`Message::paths`], [`Message::contacts`],
//! [`Message::option_tags`], [`Message::request_uri`], [`Message::cseq`], [`Message::from`],
//! [`Message::to`], [`Message::max_forwards`], [`Message::body_span`]. Multi-value iterators
//! yield [`Located`] values that carry the value's span and the exact span to remove it.
//!
//! # Strictness
//!
//! Where RFC 3261 and RFC 4475 leave a choice, the parser rejects what a repairing element would
//! have to rewrite and accepts what it can pass on untouched:
//!
//! * rejected (400 naming the defect): extra or trailing SP in the start line, `<>` or white space
//!   around the Request-URI, `?headers` in a SIP Request-URI, CSeq method differing from the
//!   request method, CSeq above 2**32-1, Max-Forwards above 255, negative or non-numeric
//!   Content-Length, Content-Length larger than the datagram, duplicate singleton headers
//!   (Call-ID, CSeq, From, To, Max-Forwards, Content-Length), empty list elements or parameters,
//!   unquoted display names with separators, white space inside `<>`, `?` in a bare addr-spec,
//!   bare CR inside a line;
//! * accepted: any case and compact form of header names, LWS and folds anywhere the grammar
//!   allows, leading zeros (`0068`), unknown methods, schemes, transports, headers and
//!   parameters (kept byte-exact), a bare LF as line end, a datagram whose last header line is not
//!   followed by the empty line, octets after Content-Length in a datagram (ignored), a missing
//!   Max-Forwards or Content-Length on UDP (RFC 2543 peers), a non-GMT Date (not interpreted).
//!
//! # Errors and stateless responses
//!
//! A [`ParseError`] is `Copy`: an [`ErrorKind`], the byte offset and the header. Its
//! [`ParseError::action`] says whether to answer (400 naming the defect, 505, 513, 416), drop
//! (responses) or hand the bytes to SigComp. To answer a message that failed to parse, run
//! [`salvage`] on the bytes; it recovers Via, From, To, Call-ID and CSeq so that
//! [`write_response`] can build the response (RFC 3261 §8.2.6, §16.7, §18.2.2; RFC 3581). For a
//! parsed request use [`Salvage::from_message`]. Semantic checks beyond syntax (416 for a
//! non-SIP Request-URI via [`Message::request_sip_uri`], 420 for Proxy-Require, 483 for
//! Max-Forwards 0) are the proxy's to apply with the accessors above.
//!
//! # Forwarding
//!
//! Build a [`Splice`] of [`Edit`]s by offset and [`Splice::apply`] it: unchanged bytes are
//! copied verbatim, so a message with no edits comes out byte-identical. Typical edits:
//! insert a Via line at the `line.start` of the first Via header; remove
//! `msg.routes().next()?.removal`; replace `msg.max_forwards()?.span` with the decremented
//! value; insert a Record-Route line; insert `;received=..` at `via.params.end` or replace
//! `via.rport_param`; remove the top Via value of a response with `msg.vias().next()?.removal`.

mod chars;
mod cursor;
mod error;
mod frame;
mod header;
pub(crate) mod out;
mod parse;
mod response;
#[cfg(target_arch = "x86_64")]
mod simd;
mod splice;
mod transport;
mod uri;
mod values;

pub use error::{ErrorAction, ErrorKind, ParseError};
pub use frame::{DatagramKind, Frame, classify_datagram, frame, is_sigcomp_byte};
pub use header::{EMPTY_HEADER, Header, HeaderName};
pub use parse::{
    Located, MaxForwards, Message, Method, StartLine, Values, parse, parse_stream_message,
};
pub use response::{
    MAX_VIA_LINES, ResponseError, ResponseOptions, Salvage, salvage, salvage_call_id, to_tag,
    write_response,
};
pub use splice::{Edit, Splice, SpliceError};
pub use transport::Transport;
pub use uri::{Host, HostKind, Scheme, SipUri, Uri};
pub use values::{CSeq, NameAddr, Param, Params, Rport, Via};

/// A byte range `start..end` in a message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The bytes of this span in `buf` (empty if out of bounds).
    pub fn slice<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.start..self.end).unwrap_or(b"")
    }
}

/// Bounds on what the parser accepts; work is linear in the message size within these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (headers and body). Larger ones fail with [`ErrorKind::TooLarge`] (513).
    pub max_message_size: usize,
    /// Most header lines (the slot array also bounds this).
    pub max_headers: usize,
    /// Longest header line, folds included.
    pub max_header_line: usize,
    /// Most comma-separated values over all list headers (Via, Route, Contact ...).
    pub max_values: usize,
}

impl Default for Limits {
    /// 64 KiB messages (the UDP maximum), 128 headers, 8 KiB header lines, 256 list values.
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            max_headers: 128,
            max_header_line: 8_192,
            max_values: 256,
        }
    }
}
