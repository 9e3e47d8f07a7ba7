//! The parse error: what is wrong, where, and which response it deserves.

use std::fmt;

use super::HeaderName;

/// What is wrong with a message. Each variant documents when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The buffer holds no message (empty, or only CRLFs).
    Empty,
    /// The message exceeds [`super::Limits::max_message_size`] (answer 513).
    TooLarge,
    /// The first byte marks a SigComp message (RFC 3320 §7); hand it to the decompressor.
    SigComp,
    /// The start line is not `Method SP Request-URI SP SIP-Version` nor
    /// `SIP-Version SP Status-Code SP Reason-Phrase` with single spaces (RFC 3261 §7.1, §7.2).
    StartLine,
    /// The method is not a token (RFC 3261 §25.1).
    Method,
    /// The Request-URI is malformed: white space or `<>` around it, bad characters, or a
    /// SIP/SIPS URI that breaks RFC 3261 §19.1.1 (bad host, port or parameter).
    RequestUri,
    /// A SIP/SIPS Request-URI carries `?headers`, forbidden by RFC 3261 §19.1.5.
    RequestUriHeaders,
    /// The version is well-formed but not SIP/2.0 (answer 505).
    Version,
    /// The status code is not three digits in 100..=699 (RFC 3261 §7.2).
    StatusCode,
    /// A header line has no colon or its name is not a token (RFC 3261 §7.3.1).
    HeaderName,
    /// A header value contains a byte that is not allowed (NUL, bare CR, control characters).
    HeaderValue,
    /// A header line is longer than [`super::Limits::max_header_line`].
    HeaderTooLong,
    /// More headers than slots or [`super::Limits::max_headers`].
    TooManyHeaders,
    /// More comma-separated values in the message than [`super::Limits::max_values`].
    TooManyValues,
    /// A mandatory header (Via, From, To, Call-ID, CSeq) is missing (RFC 3261 §8.1.1).
    MissingHeader,
    /// A header that must be unique appears more than once (RFC 3261 §7.3.1, §20).
    DuplicateHeader,
    /// A Via value breaks RFC 3261 §20.42 (sent-protocol, sent-by, or an empty value/param).
    Via,
    /// A From, To, Contact, Route, Record-Route or Path value breaks the name-addr /
    /// addr-spec grammar (RFC 3261 §20.10, §25.1): unquoted display name with separators,
    /// white space inside `<>`, `?`/`,` in a bare addr-spec, empty parameters.
    NameAddr,
    /// A header URI (in From/To/Contact/Route ...) is not a valid SIP/SIPS URI.
    Uri,
    /// Call-ID is empty or contains white space (RFC 3261 §20.8).
    CallId,
    /// CSeq is not `1*DIGIT LWS Method` or the number exceeds 2**32-1 (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.4).
    CSeq,
    /// The CSeq method differs from the request method (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.17).
    CSeqMethod,
    /// Max-Forwards is not an integer in 0..=255 (RFC 3261 §20.22).
    MaxForwards,
    /// Content-Length is not a non-negative integer (RFC 3261 §20.14).
    ContentLength,
    /// Content-Length is larger than the bytes that follow the headers (RFC 3261 §18.3).
    BodyTruncated,
    /// An option-tag list (Require, Proxy-Require, Supported, Unsupported) has an empty or
    /// non-token element (RFC 3261 §20.32).
    OptionTag,
    /// The headers are not terminated by an empty line (datagram), or a stream message has no
    /// Content-Length (RFC 3261 §18.3).
    Framing,
    /// The Request-URI scheme is neither sip nor sips; the message parsed, but a proxy that
    /// cannot route it answers 416 (RFC 3261 §8.2.2.1). Only returned by
    /// [`super::Message::request_sip_uri`].
    UnsupportedUriScheme,
}

impl ErrorKind {
    /// A short phrase naming the defect, used as the reason phrase of the response.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Empty => "Empty Message",
            Self::TooLarge => "Message Too Large",
            Self::SigComp => "SigComp Message",
            Self::StartLine => "Malformed Start Line",
            Self::Method => "Malformed Method",
            Self::RequestUri => "Malformed Request-URI",
            Self::RequestUriHeaders => "Headers Not Allowed In Request-URI",
            Self::Version => "Version Not Supported",
            Self::StatusCode => "Malformed Status Code",
            Self::HeaderName => "Malformed Header Line",
            Self::HeaderValue => "Illegal Character In Header",
            Self::HeaderTooLong => "Header Too Long",
            Self::TooManyHeaders => "Too Many Headers",
            Self::TooManyValues => "Too Many Header Values",
            Self::MissingHeader => "Missing Mandatory Header",
            Self::DuplicateHeader => "Duplicate Header",
            Self::Via => "Malformed Via",
            Self::NameAddr => "Malformed Address",
            Self::Uri => "Malformed URI",
            Self::CallId => "Malformed Call-ID",
            Self::CSeq => "Malformed CSeq",
            Self::CSeqMethod => "CSeq Method Mismatch",
            Self::MaxForwards => "Malformed Max-Forwards",
            Self::ContentLength => "Malformed Content-Length",
            Self::BodyTruncated => "Content-Length Exceeds Body",
            Self::OptionTag => "Malformed Option Tag",
            Self::Framing => "Malformed Framing",
            Self::UnsupportedUriScheme => "Unsupported URI Scheme",
        }
    }
}

/// A parse failure: what ([`ErrorKind`]), where (byte offset into the buffer) and, when it is
/// inside a header, which header. `Copy` and allocation-free, for the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParseError {
    /// What is wrong.
    pub kind: ErrorKind,
    /// Byte offset in the buffer where the defect was found (the start of the offending
    /// element, or of the header line).
    pub offset: usize,
    /// The header the defect is in; for [`ErrorKind::MissingHeader`] the header that is missing.
    pub header: Option<HeaderName>,
}

/// What the receiver of an unparseable message should do (RFC 3261 §16.3, §18.1.2, §21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Answer a request with this status code and reason phrase (statelessly, RFC 3261 §8.2.6).
    Respond {
        /// The status code.
        code: u16,
        /// A reason phrase naming the defect.
        reason: &'static str,
    },
    /// Discard silently: responses (RFC 3261 §18.1.2), or input that is not a SIP message.
    Drop,
    /// Hand the bytes to the SigComp decompressor (RFC 3320 §7).
    SigComp,
}

impl ParseError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, offset: usize, header: Option<HeaderName>) -> Self {
        Self {
            kind,
            offset,
            header,
        }
    }

    /// The status code to answer a request with: 505 for a bad version, 513 for too large,
    /// 416 for an unsupported URI scheme, 400 otherwise (RFC 3261 §21).
    pub fn status_code(&self) -> u16 {
        match self.kind {
            ErrorKind::Version => 505,
            ErrorKind::TooLarge => 513,
            ErrorKind::UnsupportedUriScheme => 416,
            _ => 400,
        }
    }

    /// A reason phrase naming the defect (`"Malformed Via"`, `"Version Not Supported"` ...).
    pub fn reason(&self) -> &'static str {
        self.kind.phrase()
    }

    /// What to do with the message. `is_request` is the salvaged start-line kind
    /// ([`super::Salvage::is_request`]): a malformed response is dropped, never answered, and
    /// a request is answered only when the salvage found what a response needs.
    pub fn action(&self, is_request: bool) -> ErrorAction {
        match self.kind {
            ErrorKind::SigComp => ErrorAction::SigComp,
            ErrorKind::Empty => ErrorAction::Drop,
            _ if !is_request => ErrorAction::Drop,
            _ => ErrorAction::Respond {
                code: self.status_code(),
                reason: self.reason(),
            },
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.phrase(), self.offset)?;
        if let Some(h) = self.header {
            write!(f, " in {}", h.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}
