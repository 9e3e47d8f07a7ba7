//! Decompression failure reasons and RFC 4077 NACK messages.

use sha1::{Digest, Sha1};

/// Why a SigComp message failed to decompress (RFC 4077 §3.2 reason codes).
///
/// Every decompression failure, whether found while parsing the SigComp header or while the
/// UDVM runs, maps to exactly one of these; the numeric value is the code sent in a NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum NackReason {
    /// A partial state identifier matched no state, or matched one whose
    /// minimum_access_length is longer than the identifier given.
    StateNotFound = 1,
    /// The message used more UDVM cycles than `cycles_per_bit` allows (RFC 3320 §8.6).
    CyclesExhausted = 2,
    /// The bytecode executed DECOMPRESSION-FAILURE.
    UserRequested = 3,
    /// A read or write outside the UDVM memory.
    Segfault = 4,
    /// More than four state creation or four state free requests.
    TooManyStateRequests = 5,
    /// A partial state identifier or minimum_access_length outside 6..=20.
    InvalidStateIdLength = 6,
    /// STATE-CREATE with retention priority 65535.
    InvalidStatePriority = 7,
    /// More than 65536 bytes of output, or more than the caller accepts.
    OutputOverflow = 8,
    /// POP or RETURN with an empty stack.
    StackUnderflow = 9,
    /// input_bit_order has a reserved bit set when an INPUT-BITS/HUFFMAN runs.
    BadInputBitorder = 10,
    /// DIVIDE or REMAINDER by zero.
    DivByZero = 11,
    /// SWITCH index not below the number of branches.
    SwitchValueTooHigh = 12,
    /// INPUT-BITS of more than 16 bits, or INPUT-HUFFMAN whose bit counts sum past 16.
    TooManyBitsRequested = 13,
    /// An operand whose encoding is reserved.
    InvalidOperand = 14,
    /// INPUT-HUFFMAN bits matched no interval.
    HuffmanNoMatch = 15,
    /// The SigComp header is truncated.
    MessageTooShort = 16,
    /// The bytecode destination field is 0 (RFC 3320 §7.3).
    InvalidCodeLocation = 17,
    /// The message or its bytecode does not fit the decompression memory.
    BytecodesTooLarge = 18,
    /// An undefined instruction byte.
    InvalidOpcode = 19,
    /// STATE-ACCESS with state_length 0 but state_begin non-zero.
    InvalidStateProbe = 20,
    /// A partial state identifier matched more than one state item.
    IdNotUnique = 21,
    /// MULTILOAD would overwrite its own instruction bytes (RFC 4896 §3.2).
    MultiloadOverwritten = 22,
    /// STATE-ACCESS asked for bytes past the end of the state value.
    StateTooShort = 23,
    /// An unexpected internal condition.
    InternalError = 24,
    /// Bad record marking on a stream transport (unquoted 0xFF80..0xFFFE).
    FramingError = 25,
}

impl NackReason {
    /// The RFC 4077 reason code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The RFC 4077 name, e.g. `"STATE_NOT_FOUND"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::StateNotFound => "STATE_NOT_FOUND",
            Self::CyclesExhausted => "CYCLES_EXHAUSTED",
            Self::UserRequested => "USER_REQUESTED",
            Self::Segfault => "SEGFAULT",
            Self::TooManyStateRequests => "TOO_MANY_STATE_REQUESTS",
            Self::InvalidStateIdLength => "INVALID_STATE_ID_LENGTH",
            Self::InvalidStatePriority => "INVALID_STATE_PRIORITY",
            Self::OutputOverflow => "OUTPUT_OVERFLOW",
            Self::StackUnderflow => "STACK_UNDERFLOW",
            Self::BadInputBitorder => "BAD_INPUT_BITORDER",
            Self::DivByZero => "DIV_BY_ZERO",
            Self::SwitchValueTooHigh => "SWITCH_VALUE_TOO_HIGH",
            Self::TooManyBitsRequested => "TOO_MANY_BITS_REQUESTED",
            Self::InvalidOperand => "INVALID_OPERAND",
            Self::HuffmanNoMatch => "HUFFMAN_NO_MATCH",
            Self::MessageTooShort => "MESSAGE_TOO_SHORT",
            Self::InvalidCodeLocation => "INVALID_CODE_LOCATION",
            Self::BytecodesTooLarge => "BYTECODES_TOO_LARGE",
            Self::InvalidOpcode => "INVALID_OPCODE",
            Self::InvalidStateProbe => "INVALID_STATE_PROBE",
            Self::IdNotUnique => "ID_NOT_UNIQUE",
            Self::MultiloadOverwritten => "MULTILOAD_OVERWRITTEN",
            Self::StateTooShort => "STATE_TOO_SHORT",
            Self::InternalError => "INTERNAL_ERROR",
            Self::FramingError => "FRAMING_ERROR",
        }
    }

    /// The reason for an RFC 4077 code, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        const ALL: [NackReason; 25] = [
            NackReason::StateNotFound,
            NackReason::CyclesExhausted,
            NackReason::UserRequested,
            NackReason::Segfault,
            NackReason::TooManyStateRequests,
            NackReason::InvalidStateIdLength,
            NackReason::InvalidStatePriority,
            NackReason::OutputOverflow,
            NackReason::StackUnderflow,
            NackReason::BadInputBitorder,
            NackReason::DivByZero,
            NackReason::SwitchValueTooHigh,
            NackReason::TooManyBitsRequested,
            NackReason::InvalidOperand,
            NackReason::HuffmanNoMatch,
            NackReason::MessageTooShort,
            NackReason::InvalidCodeLocation,
            NackReason::BytecodesTooLarge,
            NackReason::InvalidOpcode,
            NackReason::InvalidStateProbe,
            NackReason::IdNotUnique,
            NackReason::MultiloadOverwritten,
            NackReason::StateTooShort,
            NackReason::InternalError,
            NackReason::FramingError,
        ];
        ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl std::fmt::Display for NackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decompression failure with the context an RFC 4077 NACK carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecompressionFailure {
    /// The reason code.
    pub reason: NackReason,
    /// Opcode at the failing PC, 0 if the UDVM had not started (RFC 4077 §3.1).
    pub opcode: u8,
    /// PC of the failing instruction, 0 if the UDVM had not started.
    pub pc: u16,
    /// Reason-specific details (RFC 4077 §3.2): a state identifier, the cycles_per_bit
    /// byte, or the 2-byte decompression_memory_size; empty for the other reasons.
    pub details: Vec<u8>,
}

impl DecompressionFailure {
    /// A failure before any instruction ran (header errors).
    pub fn header(reason: NackReason) -> Self {
        Self {
            reason,
            opcode: 0,
            pc: 0,
            details: Vec::new(),
        }
    }
}

impl std::fmt::Display for DecompressionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at pc {} (opcode {})",
            self.reason, self.pc, self.opcode
        )
    }
}

impl std::error::Error for DecompressionFailure {}

/// Length of the NACK built by [`write_nack`] for `failure`.
pub fn nack_len(failure: &DecompressionFailure) -> usize {
    3 + 1 + 1 + 2 + 20 + failure.details.len()
}

/// Writes the RFC 4077 §3.1 NACK (version 1, no returned feedback item) for `failure` of
/// `failed_message` (the whole SigComp message, un-escaped) into `out`.
///
/// Returns the length written, or `Err(required_len)` if `out` is too small. For
/// FRAMING_ERROR the hash field is all zeros (RFC 4077 §3.2 item 25).
pub fn write_nack(
    failure: &DecompressionFailure,
    failed_message: &[u8],
    out: &mut [u8],
) -> Result<usize, usize> {
    let len = nack_len(failure);
    let Some(out) = out.get_mut(..len) else {
        return Err(len);
    };
    // RFC 4077 §3: a bytecode-upload header with code_len 0, destination = NACK version 1.
    out[0] = 0xF8;
    out[1] = 0x00;
    out[2] = 0x01;
    out[3] = failure.reason.code();
    out[4] = failure.opcode;
    out[5..7].copy_from_slice(&failure.pc.to_be_bytes());
    if failure.reason == NackReason::FramingError {
        out[7..27].fill(0);
    } else {
        out[7..27].copy_from_slice(&Sha1::digest(failed_message));
    }
    out[27..].copy_from_slice(&failure.details);
    Ok(len)
}

/// A NACK received from a peer (RFC 4077 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack<'a> {
    /// Why the peer failed (None if the code is unknown to us).
    pub reason: Option<NackReason>,
    /// Raw reason code.
    pub code: u8,
    /// Opcode at the peer's failing PC.
    pub opcode: u8,
    /// The peer's failing PC.
    pub pc: u16,
    /// SHA-1 of the message the peer could not decompress.
    pub message_sha1: [u8; 20],
    /// Reason-specific details.
    pub details: &'a [u8],
}

/// Recognises an RFC 4077 NACK: a bytecode-upload header with code_len 0 and destination 1.
/// `message` is a whole SigComp message (after un-framing). Returns None for anything else.
pub fn parse_nack(message: &[u8]) -> Option<Nack<'_>> {
    let first = *message.first()?;
    if first & 0xF8 != 0xF8 || first & 0x03 != 0 {
        return None;
    }
    let mut pos = 1;
    if first & 0x04 != 0 {
        let item = *message.get(pos)?;
        pos += if item & 0x80 == 0 {
            1
        } else {
            1 + usize::from(item & 0x7F)
        };
    }
    let header = message.get(pos..pos + 2)?;
    if header != [0x00, 0x01] {
        return None;
    }
    let body = message.get(pos + 2..)?;
    if body.len() < 24 {
        return None;
    }
    let mut message_sha1 = [0u8; 20];
    message_sha1.copy_from_slice(&body[4..24]);
    Some(Nack {
        reason: NackReason::from_code(body[0]),
        code: body[0],
        opcode: body[1],
        pc: u16::from_be_bytes([body[2], body[3]]),
        message_sha1,
        details: &body[24..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 1..=25u8 {
            let reason = NackReason::from_code(code).unwrap();
            assert_eq!(reason.code(), code);
        }
        assert_eq!(NackReason::from_code(0), None);
        assert_eq!(NackReason::from_code(26), None);
    }

    #[test]
    fn nack_round_trip() {
        let failure = DecompressionFailure {
            reason: NackReason::StateNotFound,
            opcode: 31,
            pc: 0x1234,
            details: vec![1, 2, 3, 4, 5, 6],
        };
        let mut out = [0u8; 64];
        assert_eq!(write_nack(&failure, b"msg", &mut out[..10]), Err(33));
        let n = write_nack(&failure, b"msg", &mut out).unwrap();
        let nack = parse_nack(&out[..n]).unwrap();
        assert_eq!(nack.reason, Some(NackReason::StateNotFound));
        assert_eq!(nack.pc, 0x1234);
        assert_eq!(nack.opcode, 31);
        assert_eq!(nack.details, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(nack.message_sha1[..], Sha1::digest(b"msg")[..]);
    }
}
