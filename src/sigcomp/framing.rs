//! SigComp over stream transports: RFC 3320 §4.2.2 record marking (used by RFC 5049 for
//! SIP over TCP/TLS/SCTP), and the first-byte test that lets SigComp and plain SIP share a
//! port.
//!
//! A TCP connection may carry plain SIP messages and SigComp records one after another. At
//! every message boundary the next byte decides: [`is_sigcomp`] (0xF8..=0xFF, which never
//! starts a SIP message) means a SigComp record follows and [`deframe_record`] takes it;
//! anything else goes to the SIP stream framer. Inside a record 0xFF is escaped, so the
//! record ends only at an unquoted 0xFFFF.

use super::nack::NackReason;

pub use super::message::is_sigcomp;

/// Largest un-escaped record accepted from a stream: a SigComp message can never need
/// more than the largest decompression memory (RFC 3320 §3.3.1: 131072 bytes).
pub const MAX_RECORD: usize = 131_072;

/// Why a stream could not be deframed. Both end the connection (RFC 3320 §4.2.2:
/// the decompressor SHOULD close the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingError {
    /// An unquoted 0xFF80..=0xFFFE (RFC 4077 FRAMING_ERROR).
    ReservedEscape,
    /// A record longer than [`MAX_RECORD`].
    TooLong,
}

impl FramingError {
    /// The NACK reason for this error.
    pub fn nack_reason(self) -> NackReason {
        NackReason::FramingError
    }
}

/// Takes one record from the start of `input` and writes its un-escaped bytes to `out`
/// (cleared first).
///
/// Returns `Ok(Some(consumed))` when the record is complete (`consumed` includes the 0xFFFF
/// delimiter; the record may be empty, e.g. the leading delimiter of RFC 4465 A.2.4, and
/// should then be skipped), `Ok(None)` when more bytes are needed, or the framing error.
pub fn deframe_record(input: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, FramingError> {
    out.clear();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != 0xFF {
            out.push(b);
            i += 1;
        } else {
            let Some(&code) = input.get(i + 1) else {
                return Ok(None);
            };
            match code {
                0xFF => return Ok(Some(i + 2)),
                0x00..=0x7F => {
                    // 0xFF 0xNN: one 0xFF, then NN bytes taken literally.
                    let quoted = usize::from(code);
                    let Some(literal) = input.get(i + 2..i + 2 + quoted) else {
                        return Ok(None);
                    };
                    out.push(0xFF);
                    out.extend_from_slice(literal);
                    i += 2 + quoted;
                }
                _ => return Err(FramingError::ReservedEscape),
            }
        }
        if out.len() > MAX_RECORD {
            return Err(FramingError::TooLong);
        }
    }
    Ok(None)
}

/// Appends `message` to `out` as one record: every 0xFF quotes itself and up to 127 bytes
/// after it (so the worst-case growth is 1 byte in 128 plus one per 0xFF run), then the
/// 0xFFFF delimiter.
pub fn encode_record(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 2);
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if b == 0xFF {
            let quoted = (message.len() - i - 1).min(127);
            out.push(0xFF);
            out.push(quoted as u8);
            out.extend_from_slice(&message[i + 1..i + 1 + quoted]);
            i += 1 + quoted;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out.extend_from_slice(&[0xFF, 0xFF]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        let samples: [&[u8]; 5] = [
            b"",
            &[0xFF],
            &[0xFF, 0xFF, 0xFF],
            &[1, 0xFF, 2, 0xFF, 0xFF],
            &[0xFF; 300],
        ];
        for sample in samples {
            let mut framed = Vec::new();
            encode_record(sample, &mut framed);
            let mut out = Vec::new();
            assert_eq!(deframe_record(&framed, &mut out), Ok(Some(framed.len())));
            assert_eq!(out, sample);
            for cut in 0..framed.len() {
                assert_eq!(deframe_record(&framed[..cut], &mut out), Ok(None));
            }
        }
    }

    #[test]
    fn reserved_escape_is_an_error() {
        let mut out = Vec::new();
        assert_eq!(
            deframe_record(&[0xF8, 0xFF, 0x80], &mut out),
            Err(FramingError::ReservedEscape)
        );
    }
}
