//! Stream framing (RFC 3261 §18.3) and datagram classification.

use super::parse::line_end;
use super::{ErrorKind, HeaderName, Limits, ParseError};

/// RFC 3320 §7: a SigComp message starts with a byte whose top five bits are `11111`;
/// no SIP message can start that way.
pub fn is_sigcomp_byte(first: u8) -> bool {
    first & 0xf8 == 0xf8
}

/// What the next bytes of a stream hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A complete SIP message occupies `buf[..len]` (leading CRLFs included).
    Message {
        /// Bytes of the message.
        len: usize,
    },
    /// Not enough bytes yet; read more and call again with everything accumulated.
    Partial,
    /// An RFC 5626 §3.5.1 keep-alive: `ping` for the double CRLF (answer with one CRLF),
    /// otherwise a single CRLF pong (or a stray CRLF, RFC 3261 §7.5). Consume `len` bytes.
    KeepAlive {
        /// Bytes to consume (4 for a ping, 2 for a pong).
        len: usize,
        /// True for a CRLFCRLF ping.
        ping: bool,
    },
    /// The stream carries SigComp (RFC 3320 §4.2.2: messages delimited by 0xFFFF); hand the
    /// bytes to the SigComp layer, which does its own framing.
    SigComp,
}

/// Finds the next message on a stream (RFC 3261 §18.3). Content-Length is mandatory; a message
/// whose headers exceed [`Limits::max_message_size`] without ending, or whose Content-Length
/// would exceed it, is an error (close the connection: the stream cannot be resynchronised).
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    let Some(&first) = buf.first() else {
        return Ok(Frame::Partial);
    };
    if is_sigcomp_byte(first) {
        return Ok(Frame::SigComp);
    }
    if first == b'\r' || first == b'\n' {
        return Ok(match buf {
            [b'\r', b'\n', b'\r', b'\n', ..] => Frame::KeepAlive { len: 4, ping: true },
            [b'\r', b'\n', b'\r'] | [b'\r'] => Frame::Partial,
            [b'\r', b'\n', ..] => Frame::KeepAlive {
                len: 2,
                ping: false,
            },
            [b'\n', ..] => Frame::KeepAlive {
                len: 1,
                ping: false,
            },
            _ => return Err(ParseError::new(ErrorKind::Framing, 0, None)),
        });
    }
    // Scan header lines for the empty line and Content-Length.
    let mut pos = 0;
    let mut content_length: Option<usize> = None;
    loop {
        if pos > limits.max_message_size {
            return Err(ParseError::new(
                ErrorKind::TooLarge,
                limits.max_message_size,
                None,
            ));
        }
        let Some((content_end, next)) = line_end(buf, pos) else {
            if buf.len() > limits.max_message_size {
                return Err(ParseError::new(
                    ErrorKind::TooLarge,
                    limits.max_message_size,
                    None,
                ));
            }
            return Ok(Frame::Partial);
        };
        if content_end - pos > limits.max_header_line {
            return Err(ParseError::new(ErrorKind::HeaderTooLong, pos, None));
        }
        if content_end == pos {
            pos = next;
            break;
        }
        let line = &buf[pos..content_end];
        // The start line and folded continuation lines carry no header name.
        let is_header_line = pos != 0 && !line.starts_with(b" ") && !line.starts_with(b"\t");
        if is_header_line {
            let colon = line.iter().position(|&b| b == b':').ok_or(ParseError::new(
                ErrorKind::HeaderName,
                pos,
                None,
            ))?;
            let name = line[..colon].trim_ascii_end();
            if HeaderName::classify(name) == HeaderName::ContentLength {
                let value = content_length_value(buf, pos + colon + 1, next);
                let n = super::chars::parse_decimal(value, limits.max_message_size as u64).ok_or(
                    ParseError::new(
                        ErrorKind::ContentLength,
                        pos,
                        Some(HeaderName::ContentLength),
                    ),
                )?;
                if content_length.is_some() {
                    return Err(ParseError::new(
                        ErrorKind::DuplicateHeader,
                        pos,
                        Some(HeaderName::ContentLength),
                    ));
                }
                content_length = Some(n as usize);
            }
        }
        pos = next;
    }
    let Some(body_len) = content_length else {
        return Err(ParseError::new(
            ErrorKind::MissingHeader,
            pos,
            Some(HeaderName::ContentLength),
        ));
    };
    let total = pos + body_len;
    if total > limits.max_message_size {
        return Err(ParseError::new(
            ErrorKind::TooLarge,
            pos,
            Some(HeaderName::ContentLength),
        ));
    }
    if buf.len() < total {
        Ok(Frame::Partial)
    } else {
        Ok(Frame::Message { len: total })
    }
}

/// The Content-Length value starting after the colon, including folded continuation lines.
fn content_length_value(buf: &[u8], value_start: usize, mut next: usize) -> &[u8] {
    let mut end = next;
    while buf.get(next).is_some_and(|&b| b == b' ' || b == b'\t') {
        match line_end(buf, next) {
            Some((_, n)) => {
                end = n;
                next = n;
            }
            None => break,
        }
    }
    buf.get(value_start..end).unwrap_or(b"").trim_ascii()
}

/// What a received datagram is, before parsing (RFC 5626 §3.5.1, RFC 3320 §7, RFC 5389).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// Looks like SIP text; call [`super::parse`].
    Sip,
    /// SigComp (first byte `11111xxx`).
    SigComp,
    /// Only CR/LF bytes: a keep-alive (RFC 5626 §3.5.1 over UDP uses STUN, but CRLF is common).
    KeepAlive,
    /// A STUN message (first two bits zero and the RFC 5389 magic cookie at offset 4):
    /// the RFC 5626 §4.4.2 keep-alive over UDP.
    Stun,
}

/// Classifies a datagram by its first bytes.
pub fn classify_datagram(buf: &[u8]) -> DatagramKind {
    match buf.first() {
        Some(&b) if is_sigcomp_byte(b) => DatagramKind::SigComp,
        Some(&b) if b & 0xc0 == 0 && buf.len() >= 20 && buf[4..8] == [0x21, 0x12, 0xa4, 0x42] => {
            DatagramKind::Stun
        }
        _ if buf.iter().all(|&b| b == b'\r' || b == b'\n') => DatagramKind::KeepAlive,
        _ => DatagramKind::Sip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 3\r\n\r\nabc";

    macro_rules! frame_table {
        ($($name:ident: $input:expr => $expected:expr,)*) => {
            $(#[test] fn $name() { assert_eq!(frame($input, &Limits::default()), $expected); })*
        };
    }

    frame_table! {
        empty: b"" => Ok(Frame::Partial),
        ping: b"\r\n\r\n" => Ok(Frame::KeepAlive { len: 4, ping: true }),
        ping_then_message: b"\r\n\r\nOPTIONS" => Ok(Frame::KeepAlive { len: 4, ping: true }),
        pong: b"\r\n" => Ok(Frame::KeepAlive { len: 2, ping: false }),
        half_ping: b"\r\n\r" => Ok(Frame::Partial),
        lone_cr: b"\r" => Ok(Frame::Partial),
        sigcomp: b"\xf8\x00\x01" => Ok(Frame::SigComp),
        whole: MSG => Ok(Frame::Message { len: MSG.len() }),
        headers_only: &MSG[..MSG.len() - 3] => Ok(Frame::Partial),
        half_line: &MSG[..30] => Ok(Frame::Partial),
        no_length: b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n" => Err(ParseError::new(ErrorKind::MissingHeader, 35, Some(HeaderName::ContentLength))),
        negative_length: b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n" => Err(ParseError::new(ErrorKind::ContentLength, 25, Some(HeaderName::ContentLength))),
        folded_length: b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 0\r\n\r\n" => Ok(Frame::Message { len: 48 }),
    }

    #[test]
    fn two_messages_back_to_back() {
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(
            frame(&two, &Limits::default()),
            Ok(Frame::Message { len: MSG.len() })
        );
    }

    #[test]
    fn unterminated_headers_beyond_limit() {
        let limits = Limits {
            max_message_size: 64,
            ..Limits::default()
        };
        let long = [b'a'; 100];
        assert_eq!(
            frame(&long, &limits).map_err(|e| e.kind),
            Err(ErrorKind::TooLarge)
        );
    }

    #[test]
    fn datagram_kinds() {
        assert_eq!(classify_datagram(MSG), DatagramKind::Sip);
        assert_eq!(classify_datagram(b"\r\n\r\n"), DatagramKind::KeepAlive);
        assert_eq!(classify_datagram(b"\xf9abc"), DatagramKind::SigComp);
        let mut stun = [0u8; 20];
        stun[1] = 1;
        stun[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(classify_datagram(&stun), DatagramKind::Stun);
    }
}
