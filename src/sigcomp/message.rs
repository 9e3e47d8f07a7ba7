//! SigComp message header (RFC 3320 §7).

use super::nack::NackReason;

/// What a SigComp message says about the code to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource<'a> {
    /// RFC 3320 §7.3: bytecode uploaded in the message, to be copied to `destination`.
    Upload {
        /// The bytecode (code_len bytes).
        bytecode: &'a [u8],
        /// (destination + 1) * 64, 128..=1024.
        destination: u16,
    },
    /// RFC 3320 §7.2: the first 6, 9 or 12 bytes of a state identifier.
    PartialState {
        /// The partial state identifier.
        partial_id: &'a [u8],
    },
}

/// A parsed SigComp header; `remaining` is the compressed data the UDVM will INPUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The returned feedback item (RFC 3320 §7.1) with its length byte, when T=1.
    pub returned_feedback_item: Option<&'a [u8]>,
    /// Code to run.
    pub code: CodeSource<'a>,
    /// Bytes of header (everything before `remaining`); counts toward the cycle budget.
    pub header_len: usize,
    /// The "remaining SigComp message".
    pub remaining: &'a [u8],
}

/// True if `first_byte` starts a SigComp message (RFC 3320 §4.2: the 11111 prefix).
/// SIP messages start with a token or CRLF, never with 0xF8..=0xFF.
pub fn is_sigcomp(first_byte: u8) -> bool {
    first_byte & 0xF8 == 0xF8
}

/// Parses the SigComp header of a complete message.
///
/// Fails with MESSAGE_TOO_SHORT when a field is cut off, INVALID_CODE_LOCATION for
/// destination 0 (checked before the bytecode length, as RFC 4465 A.2.4 expects), and
/// INTERNAL_ERROR when the first byte is not a SigComp prefix.
pub fn parse_header(message: &[u8]) -> Result<Header<'_>, NackReason> {
    let first = *message.first().ok_or(NackReason::MessageTooShort)?;
    if !is_sigcomp(first) {
        return Err(NackReason::InternalError);
    }
    let mut pos = 1;
    let returned_feedback_item = if first & 0x04 != 0 {
        let lead = *message.get(pos).ok_or(NackReason::MessageTooShort)?;
        let len = if lead & 0x80 == 0 {
            1
        } else {
            1 + usize::from(lead & 0x7F)
        };
        let item = message
            .get(pos..pos + len)
            .ok_or(NackReason::MessageTooShort)?;
        pos += len;
        Some(item)
    } else {
        None
    };
    let code = match first & 0x03 {
        0 => {
            let b = message
                .get(pos..pos + 2)
                .ok_or(NackReason::MessageTooShort)?;
            let code_len = (usize::from(b[0]) << 4) | usize::from(b[1] >> 4);
            let destination_field = u16::from(b[1] & 0x0F);
            if destination_field == 0 {
                return Err(NackReason::InvalidCodeLocation);
            }
            pos += 2;
            let bytecode = message
                .get(pos..pos + code_len)
                .ok_or(NackReason::MessageTooShort)?;
            pos += code_len;
            CodeSource::Upload {
                bytecode,
                destination: (destination_field + 1) * 64,
            }
        }
        len => {
            let id_len = 3 + 3 * usize::from(len);
            let partial_id = message
                .get(pos..pos + id_len)
                .ok_or(NackReason::MessageTooShort)?;
            pos += id_len;
            CodeSource::PartialState { partial_id }
        }
    };
    Ok(Header {
        returned_feedback_item,
        code,
        header_len: pos,
        remaining: &message[pos..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_variants() {
        let h = parse_header(&[0xF8, 0x00, 0x21, 0xAA, 0xBB, 0x01]).unwrap();
        assert_eq!(
            h.code,
            CodeSource::Upload {
                bytecode: &[0xAA, 0xBB],
                destination: 128
            }
        );
        assert_eq!(h.header_len, 5);
        assert_eq!(h.remaining, &[0x01]);
        let h = parse_header(&[0xFD, 0x7F, 1, 2, 3, 4, 5, 6, 9]).unwrap();
        assert_eq!(h.returned_feedback_item, Some(&[0x7F][..]));
        assert_eq!(
            h.code,
            CodeSource::PartialState {
                partial_id: &[1, 2, 3, 4, 5, 6]
            }
        );
        assert_eq!(h.remaining, &[9]);
        assert_eq!(
            parse_header(&[0xFE, 1, 2]),
            Err(NackReason::MessageTooShort)
        );
        assert_eq!(
            parse_header(&[0xF8, 0x00, 0x20]),
            Err(NackReason::InvalidCodeLocation)
        );
        assert_eq!(parse_header(b"INVITE"), Err(NackReason::InternalError));
        assert_eq!(
            parse_header(&[0xFC, 0x85, 1]),
            Err(NackReason::MessageTooShort)
        );
    }
}
