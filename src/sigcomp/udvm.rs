//! The Universal Decompressor Virtual Machine (RFC 3320 §8-9, corrected by RFC 4896).
//!
//! [`Udvm::decompress`] runs one SigComp message to completion: it parses the header,
//! initialises the UDVM memory (§7), executes instructions under the cycle budget (§8.6)
//! and returns the output together with the state requests and feedback that END-MESSAGE
//! hands to the state handler. Nothing is stored here: the caller decides, once the
//! application has accepted the message, whether to apply the state requests
//! (RFC 3320 §6.2, see [`super::compartment`]).
//!
//! All work is bounded: every instruction is charged its RFC cost before it acts, byte
//! loops are bounded by those costs, and the cycle budget is at most
//! `cycles_per_bit * (1000 + 8 * message_len)`.

use std::rc::Rc;

use sha1::{Digest, Sha1};

use super::message::{CodeSource, parse_header};
use super::nack::{DecompressionFailure, NackReason};
use super::state::{LookupError, StateItem, StateLookup, StateRequest};

/// Largest output of one message (RFC 3320 §9.4.8).
pub const MAX_OUTPUT: usize = 65536;

/// How the message arrived; it decides the UDVM memory size (RFC 3320 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP and other message-based transports: memory = DMS - message length.
    Message,
    /// TCP and other stream transports: memory = DMS / 2.
    Stream,
}

/// The resources this endpoint offers as a decompressor (RFC 3320 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecompressorParams {
    /// decompression_memory_size in bytes (at least 2048; one of the §3.3.1 values when it
    /// is to be advertised).
    pub decompression_memory_size: u32,
    /// cycles_per_bit: 16, 32, 64 or 128.
    pub cycles_per_bit: u16,
    /// SigComp_version: 0x02 means RFC 4077 NACK support.
    pub sigcomp_version: u8,
}

impl Default for DecompressorParams {
    fn default() -> Self {
        Self {
            decompression_memory_size: 8192,
            cycles_per_bit: 16,
            sigcomp_version: 2,
        }
    }
}

/// Requested feedback data found at END-MESSAGE (RFC 3320 §9.4.9, Figure 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedFeedback {
    /// S bit: the remote compressor will not save or access state.
    pub s_bit: bool,
    /// I bit: the remote compressor will not access our locally available states.
    pub i_bit: bool,
    /// The requested feedback item (with its length byte), to be returned as the returned
    /// feedback item of the next message sent to that peer; None when Q = 0.
    pub item: Option<Vec<u8>>,
}

/// Returned SigComp parameters found at END-MESSAGE (RFC 3320 §9.4.9, Figure 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnedParameters {
    /// cycles_per_bit of the remote decompressor (None if the byte was 0).
    pub cycles_per_bit: Option<u16>,
    /// decompression_memory_size of the remote decompressor.
    pub decompression_memory_size: Option<u32>,
    /// state_memory_size the remote decompressor gives our compartment.
    pub state_memory_size: Option<u32>,
    /// SigComp_version of the remote endpoint (None if 0).
    pub sigcomp_version: Option<u8>,
    /// Partial identifiers of states available at the remote endpoint.
    pub state_ids: Vec<Vec<u8>>,
}

impl ReturnedParameters {
    /// Decodes the first byte of Figure 13 (RFC 3320 §3.3.1 encodings).
    fn decode_resources(&mut self, byte: u8) {
        if byte == 0 {
            return;
        }
        self.cycles_per_bit = Some(16 << (byte >> 6));
        let dms = (byte >> 3) & 0x07;
        self.decompression_memory_size = (dms != 0).then(|| 1024u32 << dms);
        let sms = byte & 0x07;
        self.state_memory_size = Some(if sms == 0 { 0 } else { 1024u32 << sms });
    }
}

/// A successfully decompressed message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decompressed {
    /// UDVM cycles spent on instructions.
    pub cycles_used: u64,
    /// False if END-MESSAGE was reached without any OUTPUT (RFC 3320 §9.4.8).
    pub has_output: bool,
    /// State creation and free requests, in order, to apply on confirmation.
    pub state_requests: Vec<StateRequest>,
    /// Requested feedback (None when requested_feedback_location was 0).
    pub requested_feedback: Option<RequestedFeedback>,
    /// Returned parameters (None when returned_parameters_location was 0).
    pub returned_parameters: Option<ReturnedParameters>,
    /// The returned feedback item carried in the message header (RFC 3320 §7.1).
    pub returned_feedback_item: Option<Vec<u8>>,
    /// Identifier of the state the message was decompressed from, if it used one
    /// (partial-state message); lets the caller refresh that state's use.
    pub accessed_state: Option<[u8; 20]>,
}

/// A reusable UDVM: holds the memory between runs so that decompression does not allocate
/// it again for every message.
#[derive(Debug, Default)]
pub struct Udvm {
    memory: Vec<u8>,
}

type Step<T> = Result<T, NackReason>;

/// Pending STATE-CREATE / STATE-FREE operands, resolved at END-MESSAGE.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Create {
        length: u16,
        address: u16,
        instruction: u16,
        mal: u16,
        priority: u16,
    },
    Free {
        start: u16,
        length: u16,
    },
}

impl Udvm {
    /// A UDVM with no memory allocated yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decompresses one complete SigComp `message` (un-framed) received over `transport`.
    ///
    /// Output is appended to `output` (cleared first). `states` resolves partial state
    /// identifiers: the endpoint's stored states plus its locally available ones. Fails with
    /// the RFC 4077 reason; the caller then discards the output and keeps its state untouched.
    pub fn decompress(
        &mut self,
        params: &DecompressorParams,
        transport: Transport,
        message: &[u8],
        states: &dyn StateLookup,
        output: &mut Vec<u8>,
    ) -> Result<Decompressed, DecompressionFailure> {
        output.clear();
        let header = parse_header(message).map_err(DecompressionFailure::header)?;
        let dms = params.decompression_memory_size as usize;
        let memory_size = match transport {
            Transport::Message => dms.checked_sub(message.len()),
            Transport::Stream => Some(dms / 2),
        }
        .map(|m| m.min(65536))
        .filter(|&m| m >= 72)
        .ok_or_else(|| too_large(params))?;
        self.memory.clear();
        self.memory.resize(memory_size, 0);

        let mut result = Decompressed {
            returned_feedback_item: header.returned_feedback_item.map(<[u8]>::to_vec),
            ..Decompressed::default()
        };
        let (pc, partial_id_len, state_len) = match header.code {
            CodeSource::Upload {
                bytecode,
                destination,
            } => {
                let start = usize::from(destination);
                let target = self
                    .memory
                    .get_mut(start..start + bytecode.len())
                    .ok_or_else(|| too_large(params))?;
                target.copy_from_slice(bytecode);
                (destination, 0u16, 0u16)
            }
            CodeSource::PartialState { partial_id } => {
                let item =
                    find_state(states, partial_id).map_err(|reason| DecompressionFailure {
                        reason,
                        opcode: 0,
                        pc: 0,
                        details: partial_id.to_vec(),
                    })?;
                let start = usize::from(item.address);
                let target = self
                    .memory
                    .get_mut(start..start + item.value.len())
                    .ok_or_else(|| DecompressionFailure::header(NackReason::Segfault))?;
                target.copy_from_slice(&item.value);
                result.accessed_state = Some(item.id);
                (item.instruction, partial_id.len() as u16, item.length())
            }
        };
        // RFC 3320 §7.2 Figure 5: Useful Values, then reserved bytes 10..32 zeroed.
        let useful = [
            (memory_size & 0xFFFF) as u16,
            params.cycles_per_bit,
            u16::from(params.sigcomp_version),
            partial_id_len,
            state_len,
        ];
        for (i, v) in useful.iter().enumerate() {
            self.memory[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        self.memory[10..32].fill(0);

        let cpb = u64::from(params.cycles_per_bit);
        let mut machine = Machine {
            mem: &mut self.memory,
            input: header.remaining,
            in_pos: 0,
            partial: 0,
            partial_bits: 0,
            last_p: None,
            cycles_per_bit: cpb,
            // RFC 3320 §8.6: (1000 + bits in the SigComp header) * cycles_per_bit.
            cycles_allowed: cpb * (1000 + 8 * header.header_len as u64),
            cycles_used: 0,
            output,
            has_output: false,
            pending: Vec::new(),
            creates: 0,
            frees: 0,
            states,
        };
        let mut pc = pc;
        let mut opcode = 0u8;
        let run = machine.run(&mut pc, &mut opcode, &mut result);
        let cycles_used = machine.cycles_used;
        match run {
            Ok(()) => {
                result.cycles_used = cycles_used;
                Ok(result)
            }
            Err(failure) => {
                let details = match failure.reason {
                    NackReason::CyclesExhausted => vec![params.cycles_per_bit.min(255) as u8],
                    _ => failure.details,
                };
                Err(DecompressionFailure {
                    reason: failure.reason,
                    opcode,
                    pc,
                    details,
                })
            }
        }
    }
}

fn too_large(params: &DecompressorParams) -> DecompressionFailure {
    DecompressionFailure {
        reason: NackReason::BytecodesTooLarge,
        opcode: 0,
        pc: 0,
        details: ((params.decompression_memory_size.min(65535)) as u16)
            .to_be_bytes()
            .to_vec(),
    }
}

/// RFC 3320 §7.2 / §9.4.5: exactly one match, and the identifier given must be at least
/// the item's minimum_access_length (else STATE_NOT_FOUND, RFC 4077 §3.2 item 1).
fn find_state(states: &dyn StateLookup, partial_id: &[u8]) -> Step<Rc<StateItem>> {
    match states.lookup(partial_id) {
        Ok(item) if usize::from(item.minimum_access_length) <= partial_id.len() => Ok(item),
        Ok(_) | Err(LookupError::NotFound) => Err(NackReason::StateNotFound),
        Err(LookupError::NotUnique) => Err(NackReason::IdNotUnique),
    }
}

/// A failure inside the machine: reason plus details (the PC/opcode are tracked outside).
struct Fault {
    reason: NackReason,
    details: Vec<u8>,
}

impl From<NackReason> for Fault {
    fn from(reason: NackReason) -> Self {
        Self {
            reason,
            details: Vec::new(),
        }
    }
}

struct Machine<'a> {
    mem: &'a mut [u8],
    input: &'a [u8],
    in_pos: usize,
    /// The fraction of a byte held by the dispatcher (RFC 3320 §8.2).
    partial: u8,
    partial_bits: u8,
    last_p: Option<bool>,
    cycles_per_bit: u64,
    cycles_allowed: u64,
    cycles_used: u64,
    output: &'a mut Vec<u8>,
    has_output: bool,
    pending: Vec<Pending>,
    creates: u8,
    frees: u8,
    states: &'a dyn StateLookup,
}

/// RFC 3320 §8.4 / RFC 4896 §4: the address after `a` in a byte copy.
fn next_addr(a: u16, bcl: u16, bcr: u16) -> u16 {
    let k = a.wrapping_add(1);
    if k == bcr { bcl } else { k }
}

/// ceiling(log2(k)): the smallest i with k <= 2^i.
fn ceil_log2(k: u64) -> u64 {
    if k <= 1 {
        0
    } else {
        u64::from(64 - (k - 1).leading_zeros())
    }
}

impl Machine<'_> {
    fn rb(&self, a: u16) -> Step<u8> {
        self.mem
            .get(usize::from(a))
            .copied()
            .ok_or(NackReason::Segfault)
    }

    fn wb(&mut self, a: u16, v: u8) -> Step<()> {
        let slot = self
            .mem
            .get_mut(usize::from(a))
            .ok_or(NackReason::Segfault)?;
        *slot = v;
        Ok(())
    }

    fn rw(&self, a: u16) -> Step<u16> {
        Ok(u16::from_be_bytes([
            self.rb(a)?,
            self.rb(a.wrapping_add(1))?,
        ]))
    }

    fn ww(&mut self, a: u16, v: u16) -> Step<()> {
        let [hi, lo] = v.to_be_bytes();
        self.wb(a, hi)?;
        self.wb(a.wrapping_add(1), lo)
    }

    fn copy_bounds(&self) -> Step<(u16, u16)> {
        Ok((self.rw(64)?, self.rw(66)?))
    }

    fn fetch(&self, pc: &mut u16) -> Step<u8> {
        let b = self.rb(*pc)?;
        *pc = pc.wrapping_add(1);
        Ok(b)
    }

    fn fetch2(&self, pc: &mut u16) -> Step<u16> {
        Ok(u16::from_be_bytes([self.fetch(pc)?, self.fetch(pc)?]))
    }

    /// Literal (#) operand, RFC 3320 Figure 8.
    fn literal(&self, pc: &mut u16) -> Step<u16> {
        let b = self.fetch(pc)?;
        match b {
            0x00..=0x7F => Ok(u16::from(b)),
            0x80..=0xBF => Ok((u16::from(b & 0x3F) << 8) | u16::from(self.fetch(pc)?)),
            0xC0 => self.fetch2(pc),
            _ => Err(NackReason::InvalidOperand),
        }
    }

    /// Reference ($) operand, RFC 3320 Figure 9: returns the address of the 2-byte value.
    fn reference(&self, pc: &mut u16) -> Step<u16> {
        let b = self.fetch(pc)?;
        match b {
            0x00..=0x7F => Ok(2 * u16::from(b)),
            0x80..=0xBF => Ok(2 * ((u16::from(b & 0x3F) << 8) | u16::from(self.fetch(pc)?))),
            0xC0 => self.fetch2(pc),
            _ => Err(NackReason::InvalidOperand),
        }
    }

    /// Multitype (%) operand, RFC 3320 Figure 10.
    fn multitype(&self, pc: &mut u16) -> Step<u16> {
        let b = self.fetch(pc)?;
        match b {
            0x00..=0x3F => Ok(u16::from(b)),
            0x40..=0x7F => self.rw(2 * u16::from(b & 0x3F)),
            0x86 | 0x87 => Ok(1 << ((b & 1) + 6)),
            0x88..=0x8F => Ok(1 << ((b & 7) + 8)),
            0xE0..=0xFF => Ok(u16::from(b & 0x1F) + 65504),
            0x90..=0x9F => Ok(((u16::from(b & 0x0F) << 8) | u16::from(self.fetch(pc)?)) + 61440),
            0xA0..=0xBF => Ok((u16::from(b & 0x1F) << 8) | u16::from(self.fetch(pc)?)),
            0xC0..=0xDF => self.rw((u16::from(b & 0x1F) << 8) | u16::from(self.fetch(pc)?)),
            0x80 => self.fetch2(pc),
            0x81 => {
                let a = self.fetch2(pc)?;
                self.rw(a)
            }
            0x82..=0x85 => Err(NackReason::InvalidOperand),
        }
    }

    /// Skips a multitype operand without evaluating it (for MULTILOAD's extent check).
    fn skip_multitype(&self, pc: &mut u16) -> Step<()> {
        let b = self.fetch(pc)?;
        let extra = match b {
            0x00..=0x7F | 0x86..=0x8F | 0xE0..=0xFF => 0,
            0x90..=0xDF => 1,
            0x80 | 0x81 => 2,
            0x82..=0x85 => return Err(NackReason::InvalidOperand),
        };
        for _ in 0..extra {
            self.fetch(pc)?;
        }
        Ok(())
    }

    /// Address (@) operand: multitype plus the address of the instruction (RFC 3320 §8.5).
    fn address(&self, pc: &mut u16, instruction: u16) -> Step<u16> {
        Ok(self.multitype(pc)?.wrapping_add(instruction))
    }

    fn charge(&mut self, cost: u64) -> Step<()> {
        self.cycles_used = self.cycles_used.saturating_add(cost);
        if self.cycles_used > self.cycles_allowed {
            return Err(NackReason::CyclesExhausted);
        }
        Ok(())
    }

    /// RFC 3320 §8.6: successful input of n bits earns n * cycles_per_bit.
    fn credit_bits(&mut self, bits: u64) {
        self.cycles_allowed = self
            .cycles_allowed
            .saturating_add(bits * self.cycles_per_bit);
    }

    /// Reads `len` bytes from `start` under the byte copying rules.
    fn read_copy(&self, start: u16, len: u16, bcl: u16, bcr: u16, out: &mut Vec<u8>) -> Step<()> {
        let mut a = start;
        for _ in 0..len {
            out.push(self.rb(a)?);
            a = next_addr(a, bcl, bcr);
        }
        Ok(())
    }

    /// Byte-copies `len` bytes from `src` to `dst`, one at a time (RFC 3320 §8.4): later
    /// source bytes may be ones this copy wrote. Returns the address after the last write.
    fn copy_bytes(&mut self, src: u16, dst: u16, len: u16, bcl: u16, bcr: u16) -> Step<u16> {
        let (mut s, mut d) = (src, dst);
        for _ in 0..len {
            let b = self.rb(s)?;
            self.wb(d, b)?;
            s = next_addr(s, bcl, bcr);
            d = next_addr(d, bcl, bcr);
        }
        Ok(d)
    }

    fn write_copy(&mut self, dst: u16, bytes: &[u8], bcl: u16, bcr: u16) -> Step<u16> {
        let mut d = dst;
        for &b in bytes {
            self.wb(d, b)?;
            d = next_addr(d, bcl, bcr);
        }
        Ok(d)
    }

    fn discard_partial(&mut self) {
        self.partial_bits = 0;
    }

    /// Bits still available from the dispatcher.
    fn bits_available(&self) -> u64 {
        u64::from(self.partial_bits) + 8 * (self.input.len() - self.in_pos) as u64
    }

    /// Takes `n` (<= 16) bits, P bit `lsb_first_bits`, integer order `lsb_first_value`.
    /// The caller has checked availability.
    fn take_bits(&mut self, n: u16, lsb_first_bits: bool, lsb_first_value: bool) -> u16 {
        let mut value = 0u16;
        for i in 0..n {
            if self.partial_bits == 0 {
                self.partial = self.input[self.in_pos];
                self.in_pos += 1;
                self.partial_bits = 8;
            }
            let bit = if lsb_first_bits {
                (self.partial >> (8 - self.partial_bits)) & 1
            } else {
                (self.partial >> (self.partial_bits - 1)) & 1
            };
            self.partial_bits -= 1;
            if lsb_first_value {
                value |= u16::from(bit) << i;
            } else {
                value = (value << 1) | u16::from(bit);
            }
        }
        value
    }

    /// Checks input_bit_order and applies the P-bit discard rule (RFC 3320 §8.2).
    fn bit_order(&mut self) -> Step<u16> {
        let order = self.rw(68)?;
        if order > 7 {
            return Err(NackReason::BadInputBitorder);
        }
        let p = order & 1 != 0;
        if self.last_p.is_some_and(|last| last != p) {
            self.discard_partial();
        }
        self.last_p = Some(p);
        Ok(order)
    }

    fn push(&mut self, value: u16) -> Step<()> {
        let location = self.rw(70)?;
        let fill = self.rw(location)?;
        self.ww(
            location.wrapping_add(fill.wrapping_mul(2)).wrapping_add(2),
            value,
        )?;
        // RFC 4896 §3.4: the original stack_fill + 1 is written back, even over the value.
        self.ww(location, fill.wrapping_add(1))
    }

    fn pop(&mut self) -> Step<u16> {
        let location = self.rw(70)?;
        let fill = self.rw(location)?;
        if fill == 0 {
            return Err(NackReason::StackUnderflow);
        }
        let fill = fill - 1;
        self.ww(location, fill)?;
        self.rw(location.wrapping_add(fill.wrapping_mul(2)).wrapping_add(2))
    }

    fn run(
        &mut self,
        pc: &mut u16,
        opcode: &mut u8,
        result: &mut Decompressed,
    ) -> Result<(), Fault> {
        loop {
            let at = *pc;
            *opcode = 0;
            *opcode = self.rb(at)?;
            let mut p = at.wrapping_add(1);
            let next = match *opcode {
                0 => {
                    self.charge(1)?;
                    return Err(NackReason::UserRequested.into());
                }
                op @ 1..=10 => {
                    let target = self.reference(&mut p)?;
                    let m = self.rw(target)?;
                    let n = if op == 3 { 0 } else { self.multitype(&mut p)? };
                    self.charge(1)?;
                    let r = match op {
                        1 => m & n,
                        2 => m | n,
                        3 => !m,
                        4 => m.checked_shl(u32::from(n)).unwrap_or(0),
                        5 => m.checked_shr(u32::from(n)).unwrap_or(0),
                        6 => m.wrapping_add(n),
                        7 => m.wrapping_sub(n),
                        8 => m.wrapping_mul(n),
                        9 => m.checked_div(n).ok_or(NackReason::DivByZero)?,
                        _ => m.checked_rem(n).ok_or(NackReason::DivByZero)?,
                    };
                    self.ww(target, r)?;
                    p
                }
                op @ (11 | 12) => {
                    let start = self.multitype(&mut p)?;
                    let n = u64::from(self.multitype(&mut p)?);
                    let k = u64::from(self.multitype(&mut p)?);
                    self.charge(1 + k * (ceil_log2(k) + n))?;
                    self.sort(start, n, k, op == 12)?;
                    p
                }
                13 => {
                    let position = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    let destination = self.multitype(&mut p)?;
                    self.charge(1 + u64::from(length))?;
                    let (bcl, bcr) = self.copy_bounds()?;
                    let mut hasher = Sha1::new();
                    let mut a = position;
                    for _ in 0..length {
                        hasher.update([self.rb(a)?]);
                        a = next_addr(a, bcl, bcr);
                    }
                    let digest: [u8; 20] = hasher.finalize().into();
                    self.write_copy(destination, &digest, bcl, bcr)?;
                    p
                }
                14 => {
                    let address = self.multitype(&mut p)?;
                    let value = self.multitype(&mut p)?;
                    self.charge(1)?;
                    self.ww(address, value)?;
                    p
                }
                15 => self.multiload(at, p)?,
                16 => {
                    let value = self.multitype(&mut p)?;
                    self.charge(1)?;
                    self.push(value)?;
                    p
                }
                17 => {
                    let address = self.multitype(&mut p)?;
                    self.charge(1)?;
                    let value = self.pop()?;
                    self.ww(address, value)?;
                    p
                }
                op @ 18..=20 => {
                    let first = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    let (dest_ref, destination) = if op == 18 {
                        (None, self.multitype(&mut p)?)
                    } else {
                        let r = self.reference(&mut p)?;
                        (Some(r), self.rw(r)?)
                    };
                    self.charge(1 + u64::from(length))?;
                    let (bcl, bcr) = self.copy_bounds()?;
                    let position = if op == 20 {
                        copy_offset_position(destination, first, bcl, bcr)
                    } else {
                        first
                    };
                    let after = self.copy_bytes(position, destination, length, bcl, bcr)?;
                    // RFC 3320 §9.2.5: destination is left alone when nothing was copied.
                    if let (Some(r), true) = (dest_ref, length > 0) {
                        self.ww(r, after)?;
                    }
                    p
                }
                21 => {
                    let address = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    let start_value = self.multitype(&mut p)?;
                    let offset = self.multitype(&mut p)?;
                    self.charge(1 + u64::from(length))?;
                    let (bcl, bcr) = self.copy_bounds()?;
                    let mut a = address;
                    for n in 0..length {
                        let v = start_value.wrapping_add(n.wrapping_mul(offset)) as u8;
                        self.wb(a, v)?;
                        a = next_addr(a, bcl, bcr);
                    }
                    p
                }
                22 => {
                    let target = self.address(&mut p, at)?;
                    self.charge(1)?;
                    target
                }
                23 => {
                    let v1 = self.multitype(&mut p)?;
                    let v2 = self.multitype(&mut p)?;
                    let a1 = self.address(&mut p, at)?;
                    let a2 = self.address(&mut p, at)?;
                    let a3 = self.address(&mut p, at)?;
                    self.charge(1)?;
                    match v1.cmp(&v2) {
                        std::cmp::Ordering::Less => a1,
                        std::cmp::Ordering::Equal => a2,
                        std::cmp::Ordering::Greater => a3,
                    }
                }
                24 => {
                    let target = self.address(&mut p, at)?;
                    self.charge(1)?;
                    self.push(p)?;
                    target
                }
                25 => {
                    self.charge(1)?;
                    self.pop()?
                }
                26 => {
                    let n = self.literal(&mut p)?;
                    let j = self.multitype(&mut p)?;
                    let mut chosen = None;
                    for i in 0..n {
                        let a = self.address(&mut p, at)?;
                        if i == j {
                            chosen = Some(a);
                        }
                    }
                    self.charge(1 + u64::from(n))?;
                    chosen.ok_or(NackReason::SwitchValueTooHigh)?
                }
                27 => {
                    let value = self.multitype(&mut p)?;
                    let position = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    let fail_to = self.address(&mut p, at)?;
                    self.charge(1 + u64::from(length))?;
                    let (bcl, bcr) = self.copy_bounds()?;
                    let mut crc = 0xFFFFu16;
                    let mut a = position;
                    for _ in 0..length {
                        crc = fcs16_byte(crc, self.rb(a)?);
                        a = next_addr(a, bcl, bcr);
                    }
                    // RFC 4465 A.1.9: the RFC 1662 FCS without the final complement.
                    if crc == value { p } else { fail_to }
                }
                28 => {
                    let length = self.multitype(&mut p)?;
                    let destination = self.multitype(&mut p)?;
                    let short_to = self.address(&mut p, at)?;
                    self.charge(1 + u64::from(length))?;
                    // RFC 3320 §9.4.2 / RFC 4896 §3.1: a held fraction of a byte is dropped
                    // even when the request then fails.
                    self.discard_partial();
                    let available = self.input.len() - self.in_pos;
                    if usize::from(length) > available {
                        short_to
                    } else {
                        let (bcl, bcr) = self.copy_bounds()?;
                        let bytes = &self.input[self.in_pos..self.in_pos + usize::from(length)];
                        let mut d = destination;
                        for &b in bytes {
                            let slot = self
                                .mem
                                .get_mut(usize::from(d))
                                .ok_or(NackReason::Segfault)?;
                            *slot = b;
                            d = next_addr(d, bcl, bcr);
                        }
                        self.in_pos += usize::from(length);
                        self.credit_bits(8 * u64::from(length));
                        p
                    }
                }
                29 => {
                    let length = self.multitype(&mut p)?;
                    let destination = self.multitype(&mut p)?;
                    let short_to = self.address(&mut p, at)?;
                    self.charge(1)?;
                    let order = self.bit_order()?;
                    if length > 16 {
                        return Err(NackReason::TooManyBitsRequested.into());
                    }
                    if u64::from(length) > self.bits_available() {
                        short_to
                    } else {
                        let v = self.take_bits(length, order & 1 != 0, order & 4 != 0);
                        self.ww(destination, v)?;
                        self.credit_bits(u64::from(length));
                        p
                    }
                }
                30 => self.input_huffman(at, p)?,
                31 => self.state_access(at, p)?,
                32 => {
                    let length = self.multitype(&mut p)?;
                    let address = self.multitype(&mut p)?;
                    let instruction = self.multitype(&mut p)?;
                    let mal = self.multitype(&mut p)?;
                    let priority = self.multitype(&mut p)?;
                    self.charge(1 + u64::from(length))?;
                    if self.creates >= 4 {
                        return Err(NackReason::TooManyStateRequests.into());
                    }
                    if !(6..=20).contains(&mal) {
                        return Err(NackReason::InvalidStateIdLength.into());
                    }
                    if priority == 65535 {
                        return Err(NackReason::InvalidStatePriority.into());
                    }
                    self.creates += 1;
                    self.pending.push(Pending::Create {
                        length,
                        address,
                        instruction,
                        mal,
                        priority,
                    });
                    p
                }
                33 => {
                    let start = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    self.charge(1)?;
                    if self.frees >= 4 {
                        return Err(NackReason::TooManyStateRequests.into());
                    }
                    if !(6..=20).contains(&length) {
                        return Err(NackReason::InvalidStateIdLength.into());
                    }
                    self.frees += 1;
                    self.pending.push(Pending::Free { start, length });
                    p
                }
                34 => {
                    let start = self.multitype(&mut p)?;
                    let length = self.multitype(&mut p)?;
                    self.charge(1 + u64::from(length))?;
                    if self.output.len() + usize::from(length) > MAX_OUTPUT {
                        return Err(NackReason::OutputOverflow.into());
                    }
                    let (bcl, bcr) = self.copy_bounds()?;
                    let mut a = start;
                    for _ in 0..length {
                        let b = self.rb(a)?;
                        self.output.push(b);
                        a = next_addr(a, bcl, bcr);
                    }
                    self.has_output = true;
                    p
                }
                35 => {
                    self.end_message(p, result)?;
                    return Ok(());
                }
                _ => return Err(NackReason::InvalidOpcode.into()),
            };
            *pc = next;
        }
    }

    fn sort(&mut self, start: u16, n: u64, k: u64, descending: bool) -> Step<()> {
        if n == 0 || k == 0 {
            return Ok(());
        }
        // More words than the memory holds would sort overlapping lists; refuse rather than
        // define an order the RFC does not.
        if 2 * n * k > self.mem.len() as u64 {
            return Err(NackReason::Segfault);
        }
        let word = |list: u64, i: u64| start.wrapping_add((2 * (list * k + i)) as u16);
        let mut keys = Vec::with_capacity(k as usize);
        for i in 0..k {
            keys.push((self.rw(word(0, i))?, i));
        }
        // Stable sort keeps equal words in their original order (RFC 3320 §9.1.3).
        if descending {
            keys.sort_by_key(|e| std::cmp::Reverse(e.0));
        } else {
            keys.sort_by_key(|e| e.0);
        }
        let mut list_values = Vec::with_capacity(k as usize);
        for list in 0..n {
            list_values.clear();
            for i in 0..k {
                list_values.push(self.rw(word(list, i))?);
            }
            for (i, &(_, from)) in keys.iter().enumerate() {
                self.ww(word(list, i as u64), list_values[from as usize])?;
            }
        }
        Ok(())
    }

    /// MULTILOAD, executed step by step (RFC 4896 §3.2).
    fn multiload(&mut self, at: u16, mut p: u16) -> Result<u16, Fault> {
        let address = self.multitype(&mut p)?;
        let n = self.literal(&mut p)?;
        let values_start = p;
        let mut end = p;
        for _ in 0..n {
            self.skip_multitype(&mut end)?;
        }
        self.charge(1 + u64::from(n))?;
        // The instruction occupies [at, end); the words written occupy
        // [address, address + 2n). Overlap in the 16-bit address space is failure.
        let instr_len = u32::from(end.wrapping_sub(at));
        let write_len = 2 * u32::from(n);
        let overlaps = |a: u16, a_len: u32, b: u16, b_len: u32| {
            a_len > 0 && b_len > 0 && {
                let d = u32::from(b.wrapping_sub(a));
                let e = u32::from(a.wrapping_sub(b));
                d < a_len || e < b_len
            }
        };
        if overlaps(at, instr_len, address, write_len) {
            return Err(NackReason::MultiloadOverwritten.into());
        }
        let mut q = values_start;
        for i in 0..n {
            let v = self.multitype(&mut q)?;
            self.ww(address.wrapping_add(2 * i), v)?;
        }
        Ok(end)
    }

    fn input_huffman(&mut self, at: u16, mut p: u16) -> Result<u16, Fault> {
        let destination = self.multitype(&mut p)?;
        let short_to = self.address(&mut p, at)?;
        let n = self.literal(&mut p)?;
        let mut sets = Vec::with_capacity(usize::from(n.min(64)));
        let mut total_bits = 0u32;
        for _ in 0..n {
            let bits = self.multitype(&mut p)?;
            let lower = self.multitype(&mut p)?;
            let upper = self.multitype(&mut p)?;
            let uncompressed = self.multitype(&mut p)?;
            total_bits += u32::from(bits);
            sets.push((bits, lower, upper, uncompressed));
        }
        self.charge(1 + u64::from(n))?;
        if n == 0 {
            return Ok(p);
        }
        let order = self.bit_order()?;
        if total_bits > 16 {
            return Err(NackReason::TooManyBitsRequested.into());
        }
        let saved = (self.in_pos, self.partial, self.partial_bits);
        let mut h: u32 = 0;
        let mut taken = 0u64;
        for &(bits, lower, upper, uncompressed) in &sets {
            if u64::from(bits) > self.bits_available() {
                // Nothing is returned: the bits stay in the message (RFC 4896 §3.1).
                (self.in_pos, self.partial, self.partial_bits) = saved;
                return Ok(short_to);
            }
            let k = self.take_bits(bits, order & 1 != 0, order & 2 != 0);
            taken += u64::from(bits);
            h = (h << bits) | u32::from(k);
            if h >= u32::from(lower) && h <= u32::from(upper) {
                let value = (h as u16).wrapping_add(uncompressed).wrapping_sub(lower);
                self.ww(destination, value)?;
                self.credit_bits(taken);
                return Ok(p);
            }
        }
        Err(NackReason::HuffmanNoMatch.into())
    }

    fn state_access(&mut self, at: u16, mut p: u16) -> Result<u16, Fault> {
        let _ = at;
        let id_start = self.multitype(&mut p)?;
        let id_len = self.multitype(&mut p)?;
        let state_begin = self.multitype(&mut p)?;
        let mut state_length = self.multitype(&mut p)?;
        let mut state_address = self.multitype(&mut p)?;
        let mut state_instruction = self.multitype(&mut p)?;
        if !(6..=20).contains(&id_len) {
            return Err(NackReason::InvalidStateIdLength.into());
        }
        let (bcl, bcr) = self.copy_bounds()?;
        let mut partial_id = Vec::with_capacity(20);
        self.read_copy(id_start, id_len, bcl, bcr, &mut partial_id)?;
        let item = find_state(self.states, &partial_id).map_err(|reason| Fault {
            reason,
            details: partial_id.clone(),
        })?;
        if state_length == 0 {
            if state_begin != 0 {
                return Err(NackReason::InvalidStateProbe.into());
            }
            state_length = item.length();
        }
        if state_address == 0 {
            state_address = item.address;
        }
        if state_instruction == 0 {
            state_instruction = item.instruction;
        }
        self.charge(1 + u64::from(state_length))?;
        let begin = usize::from(state_begin);
        let bytes = item
            .value
            .get(begin..begin + usize::from(state_length))
            .ok_or(Fault {
                reason: NackReason::StateTooShort,
                details: partial_id,
            })?;
        self.write_copy(state_address, bytes, bcl, bcr)?;
        Ok(if state_instruction == 0 {
            p
        } else {
            state_instruction
        })
    }

    fn end_message(&mut self, mut p: u16, result: &mut Decompressed) -> Result<(), Fault> {
        let feedback_location = self.multitype(&mut p)?;
        let parameters_location = self.multitype(&mut p)?;
        let length = self.multitype(&mut p)?;
        let address = self.multitype(&mut p)?;
        let instruction = self.multitype(&mut p)?;
        let mal = self.multitype(&mut p)?;
        let priority = self.multitype(&mut p)?;
        self.charge(1 + u64::from(length))?;
        // RFC 3320 §9.4.9: an invalid own request is simply not made.
        if (6..=20).contains(&mal) && priority != 65535 {
            if self.creates >= 4 {
                return Err(NackReason::TooManyStateRequests.into());
            }
            self.creates += 1;
            self.pending.push(Pending::Create {
                length,
                address,
                instruction,
                mal,
                priority,
            });
        }
        // RFC 4896 §4.1: state values are what the memory holds now.
        let (bcl, bcr) = self.copy_bounds()?;
        let pending = std::mem::take(&mut self.pending);
        for request in pending {
            match request {
                Pending::Create {
                    length,
                    address,
                    instruction,
                    mal,
                    priority,
                } => {
                    let mut value = Vec::with_capacity(usize::from(length));
                    self.read_copy(address, length, bcl, bcr, &mut value)?;
                    let item = StateItem::new(value, address, instruction, mal);
                    result
                        .state_requests
                        .push(StateRequest::Create { item, priority });
                }
                Pending::Free { start, length } => {
                    let mut partial_id = Vec::with_capacity(usize::from(length));
                    self.read_copy(start, length, bcl, bcr, &mut partial_id)?;
                    result
                        .state_requests
                        .push(StateRequest::Free { partial_id });
                }
            }
        }
        // RFC 4896 §4.1: feedback is read without the byte copying rules.
        if feedback_location != 0 {
            let flags = self.rb(feedback_location)?;
            let item = if flags & 0x04 != 0 {
                let at = feedback_location.wrapping_add(1);
                let lead = self.rb(at)?;
                let len = if lead & 0x80 == 0 {
                    1
                } else {
                    1 + u16::from(lead & 0x7F)
                };
                let mut item = Vec::with_capacity(usize::from(len));
                for i in 0..len {
                    item.push(self.rb(at.wrapping_add(i))?);
                }
                Some(item)
            } else {
                None
            };
            result.requested_feedback = Some(RequestedFeedback {
                s_bit: flags & 0x02 != 0,
                i_bit: flags & 0x01 != 0,
                item,
            });
        }
        if parameters_location != 0 {
            let mut params = ReturnedParameters {
                cycles_per_bit: None,
                decompression_memory_size: None,
                state_memory_size: None,
                sigcomp_version: None,
                state_ids: Vec::new(),
            };
            params.decode_resources(self.rb(parameters_location)?);
            let version = self.rb(parameters_location.wrapping_add(1))?;
            params.sigcomp_version = (version != 0).then_some(version);
            let mut a = parameters_location.wrapping_add(2);
            // The list ends at a length byte outside 6..=20; bounded by the memory size.
            for _ in 0..self.mem.len() / 7 + 1 {
                let len = self.rb(a)?;
                if !(6..=20).contains(&len) {
                    break;
                }
                let mut id = Vec::with_capacity(usize::from(len));
                for i in 1..=u16::from(len) {
                    id.push(self.rb(a.wrapping_add(i))?);
                }
                params.state_ids.push(id);
                a = a.wrapping_add(1 + u16::from(len));
            }
            result.returned_parameters = Some(params);
        }
        result.has_output = self.has_output;
        Ok(())
    }
}

/// COPY-OFFSET source (RFC 3320 §9.2.6, RFC 4896 §4): from `destination`, step back
/// `offset` addresses, wrapping from byte_copy_left to byte_copy_right - 1. Computed in
/// constant time: straight back until byte_copy_left, then round the circular buffer.
fn copy_offset_position(destination: u16, offset: u16, bcl: u16, bcr: u16) -> u16 {
    let to_left = u32::from(destination.wrapping_sub(bcl));
    let offset = u32::from(offset);
    if offset <= to_left {
        return destination.wrapping_sub(offset as u16);
    }
    let remaining = offset - to_left - 1;
    let cycle = match u32::from(bcr.wrapping_sub(bcl)) {
        0 => 65536,
        l => l,
    };
    bcr.wrapping_sub(1).wrapping_sub((remaining % cycle) as u16)
}

/// One byte of the RFC 1662 16-bit FCS (polynomial x^16 + x^12 + x^5 + 1, reflected).
fn fcs16_byte(fcs: u16, byte: u8) -> u16 {
    let mut fcs = fcs ^ u16::from(byte);
    for _ in 0..8 {
        fcs = if fcs & 1 != 0 {
            (fcs >> 1) ^ 0x8408
        } else {
            fcs >> 1
        };
    }
    fcs
}

impl From<Fault> for DecompressionFailure {
    fn from(f: Fault) -> Self {
        Self {
            reason: f.reason,
            opcode: 0,
            pc: 0,
            details: f.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_offset_wraps_inside_the_circular_buffer() {
        // Buffer [100, 110): from 102 back 5 -> 102,101,100 | 109,108 -> 107? Count: 3 steps
        // reach 99? No: stepping from 102: 101 (1), 100 (2), 109 (3), 108 (4), 107 (5).
        assert_eq!(copy_offset_position(102, 5, 100, 110), 107);
        assert_eq!(copy_offset_position(102, 2, 100, 110), 100);
        assert_eq!(copy_offset_position(102, 12, 100, 110), 100);
        assert_eq!(copy_offset_position(50, 10, 0, 0), 40);
        assert_eq!(copy_offset_position(5, 10, 0, 0), 65531);
    }

    #[test]
    fn fcs_matches_rfc1662_check_value() {
        // RFC 1662: the FCS over "123456789" is 0x6F91 before the final complement.
        let fcs = b"123456789".iter().fold(0xFFFF, |c, &b| fcs16_byte(c, b));
        assert_eq!(fcs, !0x906E);
    }

    #[test]
    fn ceil_log2_values() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 8, 9].map(ceil_log2),
            [0, 0, 1, 2, 2, 3, 3, 4]
        );
    }
}
