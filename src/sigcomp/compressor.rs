//! sipedge's SigComp compressor: an LZSS encoder and the UDVM bytecode that decodes it.
//!
//! # The decoder (UDVM bytecode, uploaded once per compartment)
//!
//! Memory map (all inside the saved state, which spans `64..buffer_end`):
//!
//! | address | use |
//! |---|---|
//! | 64..72 | byte_copy_left/right (= the circular buffer), input_bit_order 0, stack_location |
//! | 72 | `DEST`: next write position in the circular buffer |
//! | 74, 76, 78 | token, offset, output start |
//! | 80 | minimum_access_length for END-MESSAGE (6 = save state, 0 = do not) |
//! | 82 | requested feedback: flags 0x04 (Q=1) and a 1-byte item, the message tag |
//! | 84 | returned parameters: our cpb/dms/sms byte, SigComp_version, empty state list |
//! | 88 | state_length for END-MESSAGE (0 when no state is saved) |
//! | 128.. | the bytecode, then the circular buffer `buffer_start..buffer_end` |
//!
//! The first message of a compartment uploads the bytecode. It loads (part of) the RFC 3485
//! dictionary into the circular buffer as initial history and decodes the message. Every
//! message then saves memory `64..buffer_end` as a state (registers, bytecode and history
//! in one item), so the next message is a partial-state message: 6 bytes of that state's
//! identifier, and decoding continues where the previous message left the buffer.
//!
//! # The compressed data
//!
//! One byte: the message tag (0..=127) that END-MESSAGE requests back as feedback
//! (RFC 3320 §9.4.9); the peer returns it as the returned feedback item of its next
//! message, which tells us the state this message created is stored (RFC 3321 §5.1.1
//! acknowledgement). Then one bit, "save state", then tokens, MSB first:
//!
//! | code | meaning |
//! |---|---|
//! | `0` + 8 bits | literal byte |
//! | `10` + 2 bits | match, length 3..=6 |
//! | `110` + 3 bits | match, length 7..=14 |
//! | `111` + 8 bits | match, length 15..=270 |
//!
//! and after a match length, the offset back into the circular buffer:
//! `0` + 7 bits (1..=128), `10` + 10 bits (129..=1152), `11` + 14 bits (1153..=17536).
//! Both are decoded by one INPUT-HUFFMAN each. Padding is 1-bits, which never complete a
//! token, so the decoder stops at the end of the data.

use super::dictionary::{RFC3485_DICTIONARY, RFC3485_STATE_ID};

/// Length of the RFC 3485 dictionary's string subset (RFC 3485 §3).
const DICTIONARY_STRINGS: usize = 0x0D8C;

/// Where the decoder keeps its variables (see the module docs).
const DEST: u16 = 72;
const TOKEN: u16 = 74;
const OFFSET: u16 = 76;
const OUT_START: u16 = 78;
const SAVE_MAL: u16 = 80;
const FEEDBACK: u16 = 82;
const PARAMETERS: u16 = 84;
const SAVE_LENGTH: u16 = 88;
/// Where the bytecode is uploaded (destination field 1).
pub const CODE_ADDRESS: u16 = 128;
/// First byte of the saved state.
pub const STATE_ADDRESS: u16 = 64;
/// Offset of `DEST` inside a saved state value.
pub const DEST_IN_STATE: usize = (DEST - STATE_ADDRESS) as usize;

/// Longest match one token can carry.
pub const MAX_MATCH: usize = 270;
/// Shortest match.
pub const MIN_MATCH: usize = 3;
/// Largest offset a token can carry.
pub const MAX_OFFSET: usize = 17536;

/// Placement of the decoder's circular buffer for one compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First byte of the circular buffer (after the bytecode).
    pub buffer_start: u16,
    /// One past the last byte of the buffer; the saved state is `64..buffer_end`.
    pub buffer_end: u16,
    /// Bytes of the dictionary's string subset (its high-priority tail) loaded at start.
    pub dictionary_len: u16,
}

impl Layout {
    /// Ring size.
    pub fn ring_len(&self) -> usize {
        usize::from(self.buffer_end - self.buffer_start)
    }

    /// state_length of the saved state.
    pub fn state_len(&self) -> u16 {
        self.buffer_end - STATE_ADDRESS
    }

    /// The layout for a state of at most `max_state_len` bytes and memory of at most
    /// `max_memory` bytes; None if not even a small buffer fits.
    pub fn fit(max_state_len: usize, max_memory: usize) -> Option<Self> {
        let buffer_start = CODE_ADDRESS as usize + bytecode_len();
        let buffer_end = (usize::from(STATE_ADDRESS) + max_state_len)
            .min(max_memory)
            .min(65535);
        let ring = buffer_end.checked_sub(buffer_start)?;
        if ring < 128 {
            return None;
        }
        let dictionary_len = (ring - 1).min(DICTIONARY_STRINGS);
        Some(Self {
            buffer_start: buffer_start as u16,
            buffer_end: buffer_end as u16,
            dictionary_len: dictionary_len as u16,
        })
    }

    /// The history the decoder starts from after the upload: the dictionary tail at the
    /// start of the ring, zeros after it, and the write position after the dictionary.
    pub fn initial_ring(&self) -> (Vec<u8>, usize) {
        let mut ring = vec![0u8; self.ring_len()];
        let n = usize::from(self.dictionary_len);
        ring[..n].copy_from_slice(&RFC3485_DICTIONARY[DICTIONARY_STRINGS - n..DICTIONARY_STRINGS]);
        (ring, n)
    }
}

// ---------------------------------------------------------------------------------------
// A small UDVM assembler (RFC 3320 §8.5 operand encodings).

#[derive(Clone, Copy)]
enum Op {
    /// Literal (#).
    Lit(u16),
    /// Reference ($) to the word at an even address below 256.
    Ref(u16),
    /// Multitype (%) value, shortest encoding.
    Val(u16),
    /// Multitype value in the fixed 3-byte form (layout-dependent constants).
    Val3(u16),
    /// Multitype memory[address] for an even address below 128.
    Mem(u16),
    /// Address (@) of a label, fixed 3-byte form.
    Label(&'static str),
    /// Multitype holding the absolute address of a label, fixed 3-byte form.
    Abs(&'static str),
}

struct Assembler {
    code: Vec<u8>,
    labels: Vec<(&'static str, u16)>,
    /// (position, instruction address or None for absolute, label).
    fixups: Vec<(usize, Option<u16>, &'static str)>,
}

impl Assembler {
    fn new() -> Self {
        Self {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    fn here(&self) -> u16 {
        CODE_ADDRESS + self.code.len() as u16
    }

    fn label(&mut self, name: &'static str) {
        let at = self.here();
        self.labels.push((name, at));
    }

    fn ins(&mut self, opcode: u8, operands: &[Op]) {
        let at = self.here();
        self.code.push(opcode);
        for &op in operands {
            match op {
                Op::Lit(v) => match v {
                    0..=127 => self.code.push(v as u8),
                    128..=16383 => self.code.extend_from_slice(&(0x8000 | v).to_be_bytes()),
                    _ => {
                        self.code.push(0xC0);
                        self.code.extend_from_slice(&v.to_be_bytes());
                    }
                },
                Op::Ref(a) => self.code.push((a / 2) as u8),
                Op::Val(v) => match v {
                    0..=63 => self.code.push(v as u8),
                    _ if v >= 65504 => self.code.push(0xE0 | (v - 65504) as u8),
                    64..=8191 => self.code.extend_from_slice(&(0xA000 | v).to_be_bytes()),
                    _ => {
                        self.code.push(0x80);
                        self.code.extend_from_slice(&v.to_be_bytes());
                    }
                },
                Op::Val3(v) => {
                    self.code.push(0x80);
                    self.code.extend_from_slice(&v.to_be_bytes());
                }
                Op::Mem(a) => self.code.push(0x40 | (a / 2) as u8),
                Op::Label(name) => {
                    self.fixups.push((self.code.len() + 1, Some(at), name));
                    self.code.extend_from_slice(&[0x80, 0, 0]);
                }
                Op::Abs(name) => {
                    self.fixups.push((self.code.len() + 1, None, name));
                    self.code.extend_from_slice(&[0x80, 0, 0]);
                }
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for &(pos, at, name) in &self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |&(_, a)| a);
            let value = at.map_or(target, |at| target.wrapping_sub(at));
            self.code[pos..pos + 2].copy_from_slice(&value.to_be_bytes());
        }
        self.code
    }
}

// Opcodes (RFC 3320 Figure 11).
const DECOMPRESSION_FAILURE: u8 = 0;
const SUBTRACT: u8 = 7;
const MULTIPLY: u8 = 8;
const LOAD: u8 = 14;
const MULTILOAD: u8 = 15;
const COPY_LITERAL: u8 = 19;
const COPY_OFFSET: u8 = 20;
const JUMP: u8 = 22;
const COMPARE: u8 = 23;
const INPUT_BYTES: u8 = 28;
const INPUT_BITS: u8 = 29;
const INPUT_HUFFMAN: u8 = 30;
const STATE_ACCESS: u8 = 31;
const OUTPUT: u8 = 34;
const END_MESSAGE: u8 = 35;

/// The decoder bytecode for `layout`, announcing `parameters_byte` (RFC 3320 §3.3.1
/// encoding of our cpb/dms/sms) and `version` as our decompressor's resources.
/// Returns the code and the absolute address of the per-message entry point.
pub fn bytecode(layout: &Layout, parameters_byte: u8, version: u8) -> (Vec<u8>, u16) {
    use Op::*;
    let mut a = Assembler::new();
    let state_len = layout.state_len();
    // Upload entry: set up the ring and load the dictionary as history.
    a.ins(
        MULTILOAD,
        &[
            Val(64),
            Lit(4),
            Val3(layout.buffer_start),
            Val3(layout.buffer_end),
            Val(0),
            Val(0),
        ],
    );
    a.ins(
        MULTILOAD,
        &[
            Val(FEEDBACK),
            Lit(3),
            Val(0x0400),
            Val3(u16::from_be_bytes([parameters_byte, version])),
            Val(0),
        ],
    );
    let dictionary_begin = (DICTIONARY_STRINGS - usize::from(layout.dictionary_len)) as u16;
    a.ins(
        STATE_ACCESS,
        &[
            Abs("dictionary_id"),
            Val(6),
            Val3(dictionary_begin),
            Val3(layout.dictionary_len),
            Val3(layout.buffer_start),
            Val(0),
        ],
    );
    a.ins(
        LOAD,
        &[Val(DEST), Val3(layout.buffer_start + layout.dictionary_len)],
    );
    // Per-message entry (the saved state's state_instruction).
    a.label("decode");
    a.ins(INPUT_BYTES, &[Val(1), Val(FEEDBACK + 1), Label("fail")]);
    a.ins(INPUT_BITS, &[Val(1), Val(SAVE_MAL), Label("fail")]);
    a.ins(LOAD, &[Val(SAVE_LENGTH), Mem(SAVE_MAL)]);
    a.ins(MULTIPLY, &[Ref(SAVE_LENGTH), Val3(state_len)]);
    a.ins(MULTIPLY, &[Ref(SAVE_MAL), Val(6)]);
    a.label("loop");
    a.ins(
        INPUT_HUFFMAN,
        &[
            Val(TOKEN),
            Label("done"),
            Lit(4),
            Val(4),
            Val(8),
            Val(11),
            Val(259),
            Val(2),
            Val(48),
            Val(55),
            Val(263),
            Val(3),
            Val(0),
            Val(255),
            Val(0),
            Val(2),
            Val(1792),
            Val(2047),
            Val(271),
        ],
    );
    a.ins(
        COMPARE,
        &[
            Mem(TOKEN),
            Val(256),
            Label("literal"),
            Label("literal"),
            Label("match"),
        ],
    );
    a.label("literal");
    a.ins(COPY_LITERAL, &[Val(TOKEN + 1), Val(1), Ref(DEST)]);
    a.ins(OUTPUT, &[Val(TOKEN + 1), Val(1)]);
    a.ins(JUMP, &[Label("loop")]);
    a.label("match");
    a.ins(SUBTRACT, &[Ref(TOKEN), Val(256)]);
    a.ins(
        INPUT_HUFFMAN,
        &[
            Val(OFFSET),
            Label("fail"),
            Lit(3),
            Val(8),
            Val(0),
            Val(127),
            Val(1),
            Val(4),
            Val(2048),
            Val(3071),
            Val(129),
            Val(4),
            Val(49152),
            Val(65535),
            Val(1153),
        ],
    );
    a.ins(LOAD, &[Val(OUT_START), Mem(DEST)]);
    a.ins(COPY_OFFSET, &[Mem(OFFSET), Mem(TOKEN), Ref(DEST)]);
    a.ins(OUTPUT, &[Mem(OUT_START), Mem(TOKEN)]);
    a.ins(JUMP, &[Label("loop")]);
    a.label("done");
    a.ins(
        END_MESSAGE,
        &[
            Val(FEEDBACK),
            Val(PARAMETERS),
            Mem(SAVE_LENGTH),
            Val(STATE_ADDRESS),
            Abs("decode"),
            Mem(SAVE_MAL),
            Val(1),
        ],
    );
    a.label("fail");
    a.ins(DECOMPRESSION_FAILURE, &[]);
    a.label("dictionary_id");
    a.code.extend_from_slice(&RFC3485_STATE_ID[..6]);
    let decode = a
        .labels
        .iter()
        .find(|(n, _)| *n == "decode")
        .map_or(0, |&(_, at)| at);
    (a.finish(), decode)
}

/// Length of the bytecode (independent of the layout: layout constants use fixed forms).
pub fn bytecode_len() -> usize {
    let layout = Layout {
        buffer_start: 1024,
        buffer_end: 2048,
        dictionary_len: 100,
    };
    bytecode(&layout, 0, 0).0.len()
}

// ---------------------------------------------------------------------------------------
// Bit writer and LZSS encoder.

/// Writes bits MSB first (input_bit_order 0).
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    acc: u32,
    nbits: u32,
}

impl BitWriter {
    /// Appends the low `n` bits of `value`, most significant first.
    pub fn put(&mut self, value: u32, n: u32) {
        self.acc = (self.acc << n) | (value & ((1 << n) - 1));
        self.nbits += n;
        while self.nbits >= 8 {
            self.nbits -= 8;
            self.bytes.push((self.acc >> self.nbits) as u8);
        }
        self.acc &= (1 << self.nbits) - 1;
    }

    /// Pads with 1-bits to a byte boundary and returns the bytes.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.nbits > 0 {
            let pad = 8 - self.nbits;
            self.put((1 << pad) - 1, pad);
        }
        out.extend_from_slice(&self.bytes);
    }
}

fn put_literal(w: &mut BitWriter, byte: u8) {
    w.put(u32::from(byte), 9);
}

fn length_bits(len: usize) -> u32 {
    match len {
        3..=6 => 4,
        7..=14 => 6,
        _ => 11,
    }
}

fn offset_bits(offset: usize) -> u32 {
    match offset {
        1..=128 => 8,
        129..=1152 => 12,
        _ => 16,
    }
}

fn put_match(w: &mut BitWriter, len: usize, offset: usize) {
    let len = len as u32;
    match len {
        3..=6 => w.put(0b1000 | (len - 3), 4),
        7..=14 => w.put(0b110000 | (len - 7), 6),
        _ => w.put((0b111 << 8) | (len - 15), 11),
    }
    let offset = offset as u32;
    match offset {
        1..=128 => w.put(offset - 1, 8),
        129..=1152 => w.put((0b10 << 10) | (offset - 129), 12),
        _ => w.put((0b11 << 14) | (offset - 1153), 16),
    }
}

const HASH_BITS: u32 = 13;
const MAX_CHAIN: usize = 48;

fn hash3(data: &[u8], i: usize) -> usize {
    let v = u32::from(data[i]) | (u32::from(data[i + 1]) << 8) | (u32::from(data[i + 2]) << 16);
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// Reusable match-finder tables.
#[derive(Debug, Default)]
pub struct Matcher {
    head: Vec<u32>,
    prev: Vec<u32>,
    data: Vec<u8>,
}

impl Matcher {
    /// Encodes `message` as tokens against `history` (oldest byte first; the decoder's
    /// circular buffer holds `ring_len` bytes) into `w`.
    pub fn encode(&mut self, history: &[u8], ring_len: usize, message: &[u8], w: &mut BitWriter) {
        const NONE: u32 = u32::MAX;
        self.head.clear();
        self.head.resize(1 << HASH_BITS, NONE);
        self.data.clear();
        self.data.extend_from_slice(history);
        self.data.extend_from_slice(message);
        self.prev.clear();
        self.prev.resize(self.data.len(), NONE);
        // The decoder can reach back ring_len - 1 bytes (the slot being written is lost).
        let max_offset = (ring_len - 1).min(MAX_OFFSET);
        let data = &self.data;
        let head = &mut self.head;
        let prev = &mut self.prev;
        fn insert(data: &[u8], head: &mut [u32], prev: &mut [u32], i: usize) {
            if i + 2 < data.len() {
                let h = hash3(data, i);
                prev[i] = head[h];
                head[h] = i as u32;
            }
        }
        let start = history.len().saturating_sub(max_offset);
        for i in start..history.len() {
            insert(data, head, prev, i);
        }
        let find = |i: usize, head: &[u32], prev: &[u32]| -> (usize, usize) {
            if i + MIN_MATCH > data.len() {
                return (0, 0);
            }
            let limit = (data.len() - i).min(MAX_MATCH);
            let mut best = (0, 0);
            let mut candidate = head[hash3(data, i)];
            let mut chain = 0;
            while candidate != NONE && chain < MAX_CHAIN {
                let j = candidate as usize;
                let offset = i - j;
                if offset > max_offset {
                    break;
                }
                let mut len = 0;
                while len < limit && data[j + len] == data[i + len] {
                    len += 1;
                }
                if len > best.0 || (len == best.0 && len > 0 && offset < best.1) {
                    best = (len, offset);
                    if len == limit {
                        break;
                    }
                }
                candidate = prev[j];
                chain += 1;
            }
            best
        };
        let mut i = history.len();
        while i < data.len() {
            let (len, offset) = find(i, head, prev);
            let worth =
                len >= MIN_MATCH && (length_bits(len) + offset_bits(offset)) < 9 * len as u32;
            if worth {
                // Lazy step: prefer a literal now if the next position matches longer.
                insert(data, head, prev, i);
                let (next_len, _) = find(i + 1, head, prev);
                if next_len > len + 1 {
                    put_literal(w, data[i]);
                    i += 1;
                    continue;
                }
                put_match(w, len, offset);
                for k in i + 1..i + len {
                    insert(data, head, prev, k);
                }
                i += len;
            } else {
                put_literal(w, data[i]);
                insert(data, head, prev, i);
                i += 1;
            }
        }
    }
}

/// The circular buffer of a saved state, oldest byte first.
pub fn history_from_state(layout: &Layout, state_value: &[u8]) -> Option<Vec<u8>> {
    let ring = state_value.get(usize::from(layout.buffer_start - STATE_ADDRESS)..)?;
    let dest = usize::from(u16::from_be_bytes([
        *state_value.get(DEST_IN_STATE)?,
        *state_value.get(DEST_IN_STATE + 1)?,
    ]));
    let pos = dest.checked_sub(usize::from(layout.buffer_start))?;
    if pos >= ring.len() {
        return None;
    }
    let mut history = Vec::with_capacity(ring.len());
    history.extend_from_slice(&ring[pos..]);
    history.extend_from_slice(&ring[..pos]);
    Some(history)
}

/// Ring contents of a fresh upload, oldest byte first.
pub fn initial_history(layout: &Layout) -> Vec<u8> {
    let (ring, pos) = layout.initial_ring();
    let mut history = Vec::with_capacity(ring.len());
    history.extend_from_slice(&ring[pos..]);
    history.extend_from_slice(&ring[..pos]);
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_is_small_and_layout_independent() {
        let n = bytecode_len();
        assert!(n < 200, "{n}");
        let l = Layout::fit(5000, 16000).unwrap();
        assert_eq!(bytecode(&l, 0x5B, 2).0.len(), n);
        assert_eq!(usize::from(l.buffer_start), 128 + n);
    }

    #[test]
    fn bit_writer_pads_with_ones() {
        let mut w = BitWriter::default();
        w.put(0b101, 3);
        let mut out = Vec::new();
        w.finish(&mut out);
        assert_eq!(out, [0b1011_1111]);
    }
}
