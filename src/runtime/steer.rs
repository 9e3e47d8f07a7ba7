//! Kernel steering of UDP datagrams to the shard that owns their Call-ID.
//!
//! Every shard binds the same UDP address with `SO_REUSEPORT`; by default the kernel picks
//! the socket by a hash of the 4-tuple, so all datagrams of one peer (a trunk, a sipp UAC)
//! land on one shard, which then hands the calls it does not own to their owner: a queue
//! push, a doorbell and a wake-up of the other core for about half of all requests.
//!
//! This module gives the kernel the ownership rule instead. A small eBPF program, attached
//! to the reuseport group with `SO_ATTACH_REUSEPORT_EBPF`, finds the Call-ID header in the
//! datagram, hashes its value exactly as [`crate::shard::shard_of`] does, and returns the
//! owning shard's index in the group (shards bind their sockets in shard order, so index =
//! shard). Where it finds no Call-ID (SigComp, keep-alives, a Call-ID past the scan limit, a
//! folded header) it returns an index past the group, and the kernel falls back to its own
//! hash: the shards still check ownership and hand off, so steering is an optimisation that
//! never decides correctness.
//!
//! The program is built here as bytecode (no compiler at build time) by a pure function,
//! [`program`]; the kernel's verifier checks it at load, and the tests run it on the whole
//! SIP corpus through `BPF_PROG_TEST_RUN` and compare with `shard_of`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How far into a datagram the program looks for the Call-ID header. Call-ID sits among
/// the first headers of nearly every message; one found later is handed off by the shards.
pub const SCAN_LIMIT: i32 = 1024;

/// The result that means "no choice": any index past the group makes the kernel use its
/// own 4-tuple hash (`reuseport_select_sock`).
pub const NO_CHOICE: u32 = u32::MAX;

// FNV-1a 64 and the MurmurHash3 finaliser, as in `crate::shard`.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FMIX_1: u64 = 0xff51_afd7_ed55_8ccd;
const FMIX_2: u64 = 0xc4ce_b9fe_1a85_ec53;

// Registers. LD_IND reads the packet through R6, which must hold the context, and clobbers
// R0–R5; everything that lives across a load is in R6–R9.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const CTX: u8 = 6;
const POS: u8 = 7;
const HASH: u8 = 8;
const COUNT: u8 = 9;

/// Bounds of the loops after the name: whitespace runs and the value's length.
const WHITESPACE_RUN: i32 = 16;
const VALUE_LIMIT: i32 = 256;

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
const LD_IMM64: u8 = 0x18;
const LD_IND_B: u8 = 0x50;
const LD_IND_H: u8 = 0x48;
const LD_IND_W: u8 = 0x40;
const LDX_W: u8 = 0x61;
const ALU64_ADD_K: u8 = 0x07;
const ALU64_ADD_X: u8 = 0x0f;
const ALU64_MUL_K: u8 = 0x27;
const ALU64_MUL_X: u8 = 0x2f;
const ALU64_OR_K: u8 = 0x47;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_SUB_X: u8 = 0x1f;
const ALU64_AND_K: u8 = 0x57;
const ALU64_XOR_X: u8 = 0xaf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JGT_X: u8 = 0x2d;
const JGE_K: u8 = 0x35;
const JLT_X: u8 = 0xad;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Scan,
    ScanNext,
    Compact,
    Long,
    FoundCompact,
    FoundLong,
    Found,
    SkipBeforeColon,
    BeforeColonNext,
    Colon,
    SkipAfterColon,
    AfterColonNext,
    Value,
    Done,
    NoChoice,
}

const LABELS: usize = 15;

/// A two-pass assembler: jumps name labels, resolved once every label is placed.
struct Asm {
    code: Vec<Insn>,
    at: [Option<usize>; LABELS],
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    fn new() -> Self {
        Self {
            code: Vec::with_capacity(128),
            at: [None; LABELS],
            jumps: Vec::new(),
        }
    }

    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.code.push(Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        });
    }

    fn op(&mut self, code: u8, dst: u8, src: u8, imm: i32) {
        self.raw(code, dst, src, 0, imm);
    }

    fn imm64(&mut self, dst: u8, value: u64) {
        // The wide load spans two instructions: low half, then high half.
        self.raw(LD_IMM64, dst, 0, 0, value as u32 as i32);
        self.raw(0, 0, 0, 0, (value >> 32) as u32 as i32);
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.raw(code, dst, src, 0, imm);
    }

    fn place(&mut self, label: Label) {
        self.at[label as usize] = Some(self.code.len());
    }

    fn finish(mut self) -> Vec<Insn> {
        for &(from, to) in &self.jumps {
            let target = self.at[to as usize].unwrap_or(from + 1);
            self.code[from].off = (target as i64 - from as i64 - 1) as i16;
        }
        self.code
    }

    /// After a header name (byte in R0): a colon or whitespace means the name is whole.
    fn name_end(&mut self, found: Label) {
        for b in [b':', b' ', b'\t'] {
            self.jump(JEQ_K, R0, 0, i32::from(b), found);
        }
    }

    /// Ends the program with [`NO_CHOICE`] unless the jump `code` (dst, src, imm) is taken.
    ///
    /// The verifier walks the fall-through first and keeps the other side pending; with the
    /// short exit as the fall-through nothing piles up over a long loop (it allows 8,192
    /// pending branches).
    fn give_up_unless(&mut self, code: u8, dst: u8, src: u8, imm: i32) {
        self.raw(code, dst, src, 2, imm);
        self.op(ALU32_MOV_K, R0, 0, NO_CHOICE as i32);
        self.op(EXIT, 0, 0, 0);
    }

    /// Goes to `Done` when R0 is `byte` (the fall-through, for the same reason).
    fn done_if(&mut self, byte: u8) {
        self.raw(JNE_K, R0, 0, 1, i32::from(byte));
        self.jump(JA, 0, 0, 0, Label::Done);
    }

    /// Loop head of a bounded loop: gives up after `limit` turns or at the packet's end,
    /// else loads the byte at POS into R0.
    fn load_next(&mut self, limit: i32, give_up: Label) {
        self.jump(JGE_K, COUNT, 0, limit, give_up);
        self.raw(LDX_W, R0, CTX, 0, 0);
        self.give_up_unless(JLT_X, POS, R0, 0);
        self.op(LD_IND_B, 0, POS, 0);
    }

    /// The next turn of a bounded loop: one byte on.
    fn step(&mut self) {
        self.op(ALU64_ADD_K, POS, 0, 1);
        self.op(ALU64_ADD_K, COUNT, 0, 1);
    }

    /// HASH ^= HASH >> 33.
    fn xor_shift_33(&mut self) {
        self.op(ALU64_MOV_X, R1, HASH, 0);
        self.op(ALU64_RSH_K, R1, 0, 33);
        self.op(ALU64_XOR_X, HASH, R1, 0);
    }
}

/// The steering program for `shard_count` shards: a socket filter whose return value is the
/// index of the socket to deliver to (`SO_ATTACH_REUSEPORT_EBPF`). At entry R1 is the
/// `__sk_buff` and offset 0 of the packet is the first byte of the UDP payload.
///
/// It looks, in the first [`SCAN_LIMIT`] bytes, for a header line named `Call-ID` or `i`
/// (RFC 3261 §7.3.1 and §20.8: names are case-insensitive, whitespace may precede the colon),
/// hashes the value's bytes up to the first whitespace or line end, and maps the hash onto
/// `0..shard_count` with the same FNV-1a, finaliser and multiply-shift as
/// [`crate::shard::shard_of`].
///
/// Shape, for the verifier: the line scan carries only its position, so the verifier walks
/// it once per position; once the header is found the position is made opaque to the
/// verifier (it gains nothing from it, every load is checked at run time), so the short
/// loops over the value are verified once, not once per place the header could start.
pub fn program(shard_count: u16) -> Vec<Insn> {
    let n = i32::from(shard_count.max(1));
    let mut a = Asm::new();
    a.op(ALU64_MOV_X, CTX, R1, 0);
    a.op(ALU64_MOV_K, POS, 0, 0);
    a.imm64(HASH, FNV_OFFSET);

    // The line scan: POS walks the bytes; at each '\n' the next line's name is checked.
    a.place(Label::Scan);
    a.jump(JGE_K, POS, 0, SCAN_LIMIT, Label::NoChoice);
    a.raw(LDX_W, R0, CTX, 0, 0); // __sk_buff.len: the payload's length here
    a.give_up_unless(JLT_X, POS, R0, 0);
    a.op(LD_IND_B, 0, POS, 0);
    a.jump(JNE_K, R0, 0, i32::from(b'\n'), Label::ScanNext);
    // The longest name check reads 9 bytes from here; a load past the end would end the
    // program with 0, which is a real index.
    a.op(ALU64_MOV_X, R1, POS, 0);
    a.op(ALU64_ADD_K, R1, 0, 9);
    a.raw(LDX_W, R0, CTX, 0, 0);
    a.jump(JGT_X, R1, R0, 0, Label::ScanNext);
    a.op(LD_IND_B, 0, POS, 1);
    // The empty line ends the headers: no Call-ID in this message.
    a.give_up_unless(JNE_K, R0, 0, i32::from(b'\r'));
    a.give_up_unless(JNE_K, R0, 0, i32::from(b'\n'));
    a.op(ALU64_OR_K, R0, 0, 0x20); // ASCII lower case
    a.jump(JEQ_K, R0, 0, i32::from(b'i'), Label::Compact);
    a.jump(JEQ_K, R0, 0, i32::from(b'c'), Label::Long);
    a.jump(JA, 0, 0, 0, Label::ScanNext);

    a.place(Label::Compact);
    a.op(LD_IND_B, 0, POS, 2);
    a.name_end(Label::FoundCompact);
    a.jump(JA, 0, 0, 0, Label::ScanNext);

    a.place(Label::Long);
    a.op(LD_IND_W, 0, POS, 1);
    a.op(ALU64_OR_K, R0, 0, 0x2020_2020);
    a.jump(JNE_K, R0, 0, 0x6361_6c6c, Label::ScanNext); // "call"
    a.op(LD_IND_H, 0, POS, 5);
    a.op(ALU64_OR_K, R0, 0, 0x2020);
    a.jump(JNE_K, R0, 0, 0x2d69, Label::ScanNext); // "-i"
    a.op(LD_IND_B, 0, POS, 7);
    a.op(ALU64_OR_K, R0, 0, 0x20);
    a.jump(JNE_K, R0, 0, i32::from(b'd'), Label::ScanNext);
    a.op(LD_IND_B, 0, POS, 8);
    a.name_end(Label::FoundLong);
    // "Call-Info", "In-Reply-To" and the like.
    a.place(Label::ScanNext);
    a.op(ALU64_ADD_K, POS, 0, 1);
    a.jump(JA, 0, 0, 0, Label::Scan);

    a.place(Label::FoundCompact);
    a.op(ALU64_ADD_K, POS, 0, 2);
    a.jump(JA, 0, 0, 0, Label::Found);
    a.place(Label::FoundLong);
    a.op(ALU64_ADD_K, POS, 0, 8);
    a.place(Label::Found);
    // POS is on the first byte after the name. Adding and taking away an unknown (the
    // length) leaves its value and makes it unknown to the verifier; the mask bounds it.
    a.raw(LDX_W, R0, CTX, 0, 0);
    a.op(ALU64_ADD_X, POS, R0, 0);
    a.op(ALU64_SUB_X, POS, R0, 0);
    a.op(ALU64_AND_K, POS, 0, 0xffff);

    // Whitespace, then the colon.
    a.op(ALU64_MOV_K, COUNT, 0, 0);
    a.place(Label::SkipBeforeColon);
    a.load_next(WHITESPACE_RUN, Label::NoChoice);
    a.jump(JEQ_K, R0, 0, i32::from(b':'), Label::Colon);
    a.jump(JEQ_K, R0, 0, i32::from(b' '), Label::BeforeColonNext);
    a.jump(JEQ_K, R0, 0, i32::from(b'\t'), Label::BeforeColonNext);
    a.jump(JA, 0, 0, 0, Label::NoChoice);
    a.place(Label::BeforeColonNext);
    a.step();
    a.jump(JA, 0, 0, 0, Label::SkipBeforeColon);

    // Whitespace, then the value. An empty or folded value (§7.3.1) is left to the shards.
    a.place(Label::Colon);
    a.step();
    a.op(ALU64_MOV_K, COUNT, 0, 0);
    a.place(Label::SkipAfterColon);
    a.load_next(WHITESPACE_RUN, Label::NoChoice);
    a.jump(JEQ_K, R0, 0, i32::from(b' '), Label::AfterColonNext);
    a.jump(JEQ_K, R0, 0, i32::from(b'\t'), Label::AfterColonNext);
    a.give_up_unless(JNE_K, R0, 0, i32::from(b'\r'));
    a.give_up_unless(JNE_K, R0, 0, i32::from(b'\n'));
    a.op(ALU64_MOV_K, COUNT, 0, 0);
    a.jump(JA, 0, 0, 0, Label::Value);
    a.place(Label::AfterColonNext);
    a.step();
    a.jump(JA, 0, 0, 0, Label::SkipAfterColon);

    // The value: one word (RFC 3261 §25.1 `callid`), closed by whitespace or the line end.
    a.place(Label::Value);
    a.load_next(VALUE_LIMIT, Label::NoChoice);
    for end in [b' ', b'\t', b'\r', b'\n'] {
        a.done_if(end);
    }
    a.op(ALU64_XOR_X, HASH, R0, 0);
    a.imm64(R1, FNV_PRIME);
    a.op(ALU64_MUL_X, HASH, R1, 0);
    a.step();
    a.jump(JA, 0, 0, 0, Label::Value);

    a.place(Label::Done);
    a.xor_shift_33();
    a.imm64(R1, FMIX_1);
    a.op(ALU64_MUL_X, HASH, R1, 0);
    a.xor_shift_33();
    a.imm64(R1, FMIX_2);
    a.op(ALU64_MUL_X, HASH, R1, 0);
    a.xor_shift_33();
    // (hash * n) >> 64 from 32-bit halves (eBPF has no 128-bit multiply):
    // ((hi * n) + ((lo * n) >> 32)) >> 32, where both products fit in 48 bits.
    a.op(ALU64_MOV_X, R1, HASH, 0);
    a.op(ALU64_RSH_K, R1, 0, 32);
    a.op(ALU64_MUL_K, R1, 0, n);
    a.op(ALU32_MOV_X, R2, HASH, 0);
    a.op(ALU64_MUL_K, R2, 0, n);
    a.op(ALU64_RSH_K, R2, 0, 32);
    a.op(ALU64_ADD_X, R1, R2, 0);
    a.op(ALU64_RSH_K, R1, 0, 32);
    a.op(ALU64_MOV_X, R0, R1, 0);
    a.op(EXIT, 0, 0, 0);

    a.place(Label::NoChoice);
    a.op(ALU32_MOV_K, R0, 0, NO_CHOICE as i32);
    a.op(EXIT, 0, 0, 0);
    a.finish()
}

// bpf(2) commands and the program type.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `union bpf_attr` for `BPF_PROG_LOAD` (the fields used; the zero tail is accepted).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    tail: [u64; 8],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    tail: [u64; 8],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix of the size passed; every
    // pointer inside it refers to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The steering program, loaded into the kernel.
#[derive(Debug)]
pub struct Steering {
    fd: OwnedFd,
    shard_count: u16,
}

impl Steering {
    /// Loads (and so verifies) the program for `shard_count` shards. Needs `CAP_BPF` (or
    /// root); the error then says why, with the verifier's log when it rejected the code.
    pub fn load(shard_count: u16) -> io::Result<Self> {
        let insns = program(shard_count);
        let license = b"Apache-2.0\0";
        let mut name = [0u8; 16];
        name[..13].copy_from_slice(b"sipedge_steer");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        // The verifier gives up with EAGAIN when a signal is pending (a busy start-up);
        // try again a few times, as libbpf does.
        let mut loaded = bpf(BPF_PROG_LOAD, &mut attr);
        for _ in 0..8 {
            match &loaded {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    loaded = bpf(BPF_PROG_LOAD, &mut attr);
                }
                _ => break,
            }
        }
        let fd = match loaded {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Err(e),
            Err(first) => {
                // Load again with the verifier's log, to say why.
                let mut log = vec![0u8; 1 << 20];
                attr.log_level = 1;
                attr.log_size = log.len() as u32;
                attr.log_buf = log.as_mut_ptr() as u64;
                return match bpf(BPF_PROG_LOAD, &mut attr) {
                    Ok(fd) => {
                        // SAFETY: a successful load returns a new descriptor we own.
                        drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
                        Err(first)
                    }
                    Err(e) => {
                        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                        let text = String::from_utf8_lossy(&log[..end]);
                        let tail: Vec<&str> = text.lines().rev().take(12).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        Err(io::Error::new(
                            e.kind(),
                            format!("{first}; verifier: {}", tail.join(" | ")),
                        ))
                    }
                };
            }
        };
        // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { fd, shard_count })
    }

    /// The shard count the program maps onto.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// Attaches the program to the reuseport group of `socket` (any bound member: the group
    /// shares it). Socket `i` of the group must be shard `i`'s.
    pub fn attach(&self, socket: RawFd) -> io::Result<()> {
        let prog: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: `prog` lives across the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_EBPF,
                (&prog as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Runs the program in the kernel on one UDP payload (`BPF_PROG_TEST_RUN`) and returns
    /// the socket index it chose, or [`NO_CHOICE`]. For tests and diagnostics.
    pub fn choose(&self, payload: &[u8]) -> io::Result<u32> {
        // The test harness treats the data as an Ethernet frame and starts a socket filter
        // after the 14-byte link header, so the payload goes after 14 bytes of padding.
        let mut frame = vec![0u8; 14 + payload.len()];
        frame[14..].copy_from_slice(payload);
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        for n in [1u16, 2, 3, 8, 64] {
            let code = program(n);
            for (pc, insn) in code.iter().enumerate() {
                let class = insn.code & 0x07;
                let op = insn.code & 0xf0;
                if class == 0x05 && op != 0x80 && op != 0x90 {
                    let target = pc as i64 + 1 + i64::from(insn.off);
                    assert!(
                        (0..code.len() as i64).contains(&target),
                        "jump at {pc} to {target}"
                    );
                }
            }
            assert_eq!(code.last().map(|i| i.code), Some(EXIT));
        }
    }
}
