//! INVITE failover: the minimal transaction state a shard keeps so that a new call whose
//! backend fails before answering is retried on the next backend in hash order.
//!
//! The shard owning a Call-ID owns all of its INVITE transactions, so this table is per shard
//! and needs no lock. For each INVITE forwarded to the pool it remembers the original request,
//! where it came from, the backends tried and the current one, until the transaction is over:
//!
//! - a retryable final response (503 by default; configurable) or a transport error before any
//!   provisional response other than 100 moves the call to the next backend; the response is
//!   absorbed (the proxy ACKs it, [`write_ack`]) and never reaches the caller;
//! - no response at all within `timeout` (shorter than RFC 3261 Timer B) does the same;
//! - when no backend is left, the proxy answers 503 with Retry-After itself;
//! - retransmissions of the INVITE, its CANCEL and the ACK of a non-2xx final response follow
//!   the INVITE to the backend that has it now ([`InviteFailover::route_in_transaction`]).
//!
//! Storage is allocated once, when the table is built: `capacity` entries, each with a slot of
//! `slot_bytes` for the Call-ID and the request, an open-addressing index of at least twice
//! `capacity` buckets (so it never grows and stays at most half full), and
//! one intrusive deadline list per timer length (every deadline in a list is `now` plus the
//! same duration, so appending keeps each list sorted). Tracking, retrying and forgetting a
//! transaction therefore allocate nothing. An INVITE that does not fit (table full, request
//! larger than a slot) is forwarded without failover.
//!
//! Driving loop (sans-IO): call [`InviteFailover::route_invite`] for each INVITE from outside,
//! [`InviteFailover::handle_response`] for each response to one,
//! [`InviteFailover::handle_transport_error`] / [`InviteFailover::handle_backend_failure`]
//! when sending failed, and [`InviteFailover::handle_timeout`] at
//! [`InviteFailover::poll_timeout`]; then drain [`InviteFailover::poll_event`] and act on it.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::proxy::siphash::SipHasher13;
use crate::shard::{resident_vec, resident_zeroes};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backend::{Backend, BackendId};
use super::blacklist::{Blacklist, BlockReason};
use super::health::StatusCodes;
use super::pool::Pool;
use crate::sip::out::Out;
use crate::sip::{EMPTY_HEADER, HeaderName, Limits, Transport, parse};

/// Most backends one INVITE is tried on, whatever the configuration says.
pub const MAX_ATTEMPTS: usize = 8;

/// Failover parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Wait for any response from a backend before trying the next one. Keep it well under
    /// RFC 3261 Timer B (32 s) so that the caller's transaction has time left for the retry.
    pub timeout: Duration,
    /// Final response codes that move the call to the next backend.
    pub retry_codes: StatusCodes,
    /// Backends tried per INVITE, at most [`MAX_ATTEMPTS`].
    pub max_attempts: usize,
    /// Retry-After (seconds) of the 503 the proxy answers when no backend is left.
    pub retry_after: u32,
    /// How long a transaction that got a provisional response is remembered, so that its
    /// CANCEL finds the backend while it rings (beyond RFC 3261 §16.6's 3 min Timer C).
    pub ringing: Duration,
    /// How long a finished transaction is remembered, so that the ACK of a non-2xx final
    /// response and late retransmissions still find their backend (RFC 3261 §17.1.1.2: 64*T1).
    pub linger: Duration,
    /// Most transactions tracked per shard; beyond it INVITEs are forwarded without failover.
    pub capacity: usize,
    /// Bytes kept per transaction for its Call-ID and original request; a larger INVITE is
    /// forwarded without failover.
    pub slot_bytes: usize,
}

impl Default for FailoverConfig {
    /// 2 s timeout, retry on 503 only, 3 attempts, Retry-After 5, 200 s ringing, 32 s linger,
    /// 8192 entries of 4 KiB.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retry_codes: StatusCodes::none().with_range(503, 503),
            max_attempts: 3,
            retry_after: 5,
            ringing: Duration::from_secs(200),
            linger: Duration::from_secs(32),
            capacity: 8192,
            slot_bytes: 4096,
        }
    }
}

/// Where a tracked INVITE came from: what the proxy needs to forward it again, or to answer
/// it, long after the message itself is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The caller's address (the RFC 3581 source).
    pub src: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The transport it arrived over.
    pub transport: Transport,
    /// The connection it arrived on (the runtime's flow number), for stream transports.
    pub flow: Option<u64>,
    /// It arrived SigComp-compressed.
    pub compressed: bool,
}

/// Where an INVITE from outside goes.
#[derive(Debug, Clone, Copy)]
pub enum InviteRoute<'p> {
    /// Forward it to this backend.
    Forward(&'p Backend),
    /// Answer 503 with this Retry-After: no backend can take the call.
    Reject {
        /// Seconds for the Retry-After header.
        retry_after: u32,
    },
}

impl PartialEq for InviteRoute<'_> {
    /// Two routes are equal when they name the same backend (by id) or the same rejection.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Forward(a), Self::Forward(b)) => a.id() == b.id(),
            (Self::Reject { retry_after: a }, Self::Reject { retry_after: b }) => a == b,
            _ => false,
        }
    }
}

/// What to do with a response to a tracked INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAction {
    /// Not a tracked transaction, or an ordinary response: forward it as usual.
    Forward,
    /// Absorb it (never forward it) and ACK it toward its sender ([`write_ack`]). The retry
    /// or the 503 that follows is announced by [`InviteFailover::poll_event`].
    AckAndAbsorb,
    /// Drop it silently (a late 1xx from a backend that is no longer in charge).
    Absorb,
}

/// Work for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverEvent {
    /// Forward the original request ([`InviteFailover::request`]) to `backend` now.
    Retry {
        /// Transaction.
        key: TxKey,
        /// Next backend.
        backend: BackendId,
        /// The backend it leaves.
        from: BackendId,
    },
    /// No backend left: answer the original request with 503 and this Retry-After.
    GiveUp {
        /// Transaction.
        key: TxKey,
        /// The backend tried last.
        from: BackendId,
        /// Seconds for the Retry-After header.
        retry_after: u32,
    },
}

/// 128 bits no caller can predict: std's per-process random seed (varied per `RandomState`)
/// run through its keyed hash.
fn random_key() -> [u8; 16] {
    let random = RandomState::new();
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random.hash_one(0u8).to_le_bytes());
    key[8..].copy_from_slice(&random.hash_one(1u8).to_le_bytes());
    key
}

/// Identity of an INVITE transaction for one table ([`InviteFailover::key`]): Call-ID and CSeq
/// number (a CANCEL and the ACK of a non-2xx response carry the same pair, RFC 3261 §9.1,
/// §17.1.1.3). Both are hashed together with a per-table random key (SipHash-1-3, as std's
/// `RandomState` does), so a caller cannot craft Call-IDs or CSeqs that collide with another
/// call's entry or pile up in one probe run of the index (the stored Call-ID is compared too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    hash: u64,
    cseq: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for any response from the current backend.
    Calling,
    /// The backend sent 100 Trying: it is alive, but may still refuse with a 503.
    Trying,
    /// A provisional response beyond 100 went to the caller: no failover any more.
    Proceeding,
    /// Final response forwarded, or given up: remembered for routing ACK/retransmissions.
    Completed { gave_up: bool },
}

/// The deadline lists, one per timer length.
const CALLING: usize = 0;
const RINGING: usize = 1;
const LINGER: usize = 2;
/// No slot (end of a list).
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: TxKey,
    // INVARIANT: the slot holds call_id_len bytes of Call-ID, then request_len of request.
    call_id_len: usize,
    request_len: usize,
    origin: Origin,
    // INVARIANT: tried[..attempts] are the backends tried, the last one is current.
    tried: [BackendId; MAX_ATTEMPTS],
    attempts: usize,
    current_addr: SocketAddr,
    phase: Phase,
    deadline: Instant,
    retry_after: Option<u32>,
    /// The deadline list this entry is on, and its neighbours there.
    list: usize,
    prev: u32,
    next: u32,
}

impl Entry {
    fn current(&self) -> BackendId {
        self.tried[self.attempts.saturating_sub(1).min(MAX_ATTEMPTS - 1)]
    }

    fn tried(&self) -> &[BackendId] {
        &self.tried[..self.attempts.min(MAX_ATTEMPTS)]
    }
}

/// The per-shard INVITE failover table (see the module docs).
#[derive(Debug)]
pub struct InviteFailover {
    config: FailoverConfig,
    /// Open addressing with linear probing: each bucket holds the slot of a tracked
    /// transaction or `NIL`; a key's run starts at `hash & mask`. A power of two of at least
    /// twice `capacity` buckets, so it never grows, is at most half full and every probe run
    /// ends at an empty bucket. The key's hash is already keyed and uniform, so it indexes
    /// directly (a `HashMap<TxKey, _>` would hash the hash again on every message).
    index: Vec<u32>,
    /// `index.len() - 1`.
    mask: usize,
    /// Transactions tracked (occupied buckets).
    tracked: usize,
    /// `entries[i]` is slot `i` (its bytes: `bytes[i * slot_bytes..]`).
    entries: Vec<Entry>,
    free: Vec<u32>,
    bytes: Vec<u8>,
    /// Head and tail of each deadline list.
    lists: [(u32, u32); 3],
    events: VecDeque<FailoverEvent>,
    /// Keyed with 128 random bits per table. The crate's own SipHash, fed the Call-ID and
    /// the CSeq number as raw bytes: through `BuildHasher::hash_one` the same SipHash-1-3
    /// also hashed a length prefix and paid the generic `Hasher` plumbing on every INVITE
    /// and every response to one.
    hasher: SipHasher13,
}

impl InviteFailover {
    /// An empty table, with all of its storage allocated.
    pub fn new(config: FailoverConfig) -> Self {
        let config = FailoverConfig {
            max_attempts: config.max_attempts.clamp(1, MAX_ATTEMPTS),
            timeout: config.timeout.min(Duration::from_secs(3600)),
            linger: config.linger.min(Duration::from_secs(3600)),
            ringing: config.ringing.min(Duration::from_secs(3600)),
            capacity: config.capacity.min(1 << 20),
            slot_bytes: config.slot_bytes.min(1 << 16),
            ..config
        };
        let buckets = config.capacity.saturating_mul(2).max(2).next_power_of_two();
        Self {
            config,
            index: vec![NIL; buckets],
            mask: buckets - 1,
            tracked: 0,
            // All resident now (`crate::shard`): how many transactions are in flight at
            // once peaks at random, and a new peak hours in would show as growth.
            entries: resident_vec(config.capacity),
            free: resident_vec(config.capacity),
            bytes: resident_zeroes(config.capacity * config.slot_bytes),
            lists: [(NIL, NIL); 3],
            events: VecDeque::from(resident_vec(config.capacity.saturating_add(1))),
            hasher: SipHasher13::new(&random_key()),
        }
    }

    /// The configuration in force (after clamping).
    pub fn config(&self) -> &FailoverConfig {
        &self.config
    }

    /// The key of the INVITE transaction with this Call-ID and CSeq number in this table.
    pub fn key(&self, call_id: &[u8], cseq: u32) -> TxKey {
        // Unambiguous without a length prefix: the CSeq number has a fixed size and comes
        // last. Collisions would be harmless anyway: the CSeq and the stored Call-ID are
        // compared.
        TxKey {
            hash: self.hasher.hash_bytes_u32(call_id, cseq),
            cseq,
        }
    }

    /// Transactions tracked.
    pub fn len(&self) -> usize {
        self.tracked
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracked == 0
    }

    /// First bucket of the key's probe run.
    fn home(&self, key: TxKey) -> usize {
        // Truncation intended: only the low bits select the bucket.
        key.hash as usize & self.mask
    }

    /// The bucket holding the entry with this key and its slot, or the empty bucket that ends
    /// the key's probe run and `NIL`. It ends: the index is never more than half full.
    fn lookup(&self, key: TxKey) -> (usize, u32) {
        let mut i = self.home(key);
        loop {
            let slot = self.index[i];
            if slot == NIL || self.entries[slot as usize].key == key {
                return (i, slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot of the entry with this key, if any.
    fn slot_of(&self, key: TxKey) -> Option<u32> {
        let (_, slot) = self.lookup(key);
        (slot != NIL).then_some(slot)
    }

    /// Takes `slot` out of the index if it is the entry there for its key, closing the gap by
    /// backward shifting (linear probing without tombstones, so runs never lengthen).
    fn unindex(&mut self, slot: u32) {
        let (mut hole, found) = self.lookup(self.entries[slot as usize].key);
        if found != slot {
            return;
        }
        self.tracked -= 1;
        let mut j = hole;
        loop {
            self.index[hole] = NIL;
            loop {
                j = (j + 1) & self.mask;
                let s = self.index[j];
                if s == NIL {
                    return;
                }
                // The entry at `j` may fill the hole when the hole lies in its run, i.e.
                // cyclically in [home, j).
                let home = self.home(self.entries[s as usize].key);
                if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                    self.index[hole] = s;
                    hole = j;
                    break;
                }
            }
        }
    }

    fn slot_range(&self, slot: u32) -> std::ops::Range<usize> {
        let start = slot as usize * self.config.slot_bytes;
        start..start + self.config.slot_bytes
    }

    fn call_id_of(&self, slot: u32) -> &[u8] {
        let range = self.slot_range(slot);
        let len = self.entries[slot as usize].call_id_len;
        &self.bytes[range.start..range.start + len]
    }

    /// The slot of the transaction with this key, checking the stored Call-ID.
    fn find(&self, call_id: &[u8], cseq: u32) -> Option<u32> {
        let slot = self.slot_of(self.key(call_id, cseq))?;
        (self.call_id_of(slot) == call_id).then_some(slot)
    }

    /// Routes an INVITE from outside. A new transaction gets the pool's choice and is tracked
    /// (when it fits); a retransmission goes where the transaction is now (or is rejected
    /// again if it was given up). With the route comes the attempt number its requests carry
    /// ([`Self::current`]; 0 for an untracked INVITE), from the same single lookup.
    #[allow(clippy::too_many_arguments)] // each input is one fact about the request
    pub fn route_invite<'p>(
        &mut self,
        now: Instant,
        call_id: &[u8],
        cseq: u32,
        request: &[u8],
        origin: Origin,
        pool: &'p Pool,
        blacklist: &Blacklist,
    ) -> (InviteRoute<'p>, usize) {
        // One hash and one probe serve the retransmission check and the insertion: nothing
        // below touches the index before the entry goes into `bucket`.
        let key = self.key(call_id, cseq);
        let (bucket, found) = self.lookup(key);
        // The attempt of a tracked transaction the INVITE is not routed by (its backend left
        // the pool), while it stays in the table.
        let mut stale_attempt = 0;
        if found != NIL && self.call_id_of(found) == call_id {
            let e = &self.entries[found as usize];
            if let Phase::Completed { gave_up: true } = e.phase {
                let retry_after = e.retry_after.unwrap_or(self.config.retry_after);
                return (InviteRoute::Reject { retry_after }, 0);
            }
            let attempt = e.attempts.saturating_sub(1);
            if let Some(b) = pool.by_id(e.current()) {
                return (InviteRoute::Forward(b), attempt);
            }
            stale_attempt = attempt;
        }
        let Some(backend) = pool.select(call_id, now, blacklist) else {
            let retry_after = self.config.retry_after;
            return (InviteRoute::Reject { retry_after }, 0);
        };
        let fits = call_id.len() + request.len() <= self.config.slot_bytes;
        if fits && self.tracked < self.config.capacity {
            let slot = match self.free.pop() {
                Some(s) => s,
                None => self.entries.len() as u32,
            };
            let range = self.slot_range(slot);
            let (cid, rest) = self.bytes[range].split_at_mut(call_id.len());
            cid.copy_from_slice(call_id);
            rest[..request.len()].copy_from_slice(request);
            let mut tried = [BackendId(0); MAX_ATTEMPTS];
            tried[0] = backend.id();
            let entry = Entry {
                key,
                call_id_len: call_id.len(),
                request_len: request.len(),
                origin,
                tried,
                attempts: 1,
                current_addr: backend.addr(),
                phase: Phase::Calling,
                deadline: now,
                retry_after: None,
                list: CALLING,
                prev: NIL,
                next: NIL,
            };
            if slot as usize == self.entries.len() {
                self.entries.push(entry);
            } else {
                self.entries[slot as usize] = entry;
            }
            // A stale entry under the same key (hash collision, or a transaction whose
            // backend left the pool) is replaced in its bucket.
            self.index[bucket] = slot;
            if found == NIL {
                self.tracked += 1;
            } else {
                self.unlink(found);
                self.free.push(found);
            }
            self.link(slot, CALLING, now + self.config.timeout);
            return (InviteRoute::Forward(backend), 0);
        }
        (InviteRoute::Forward(backend), stale_attempt)
    }

    /// The backend a CANCEL or an ACK (of a non-2xx response) with this Call-ID and CSeq
    /// number must follow, if the INVITE is tracked.
    pub fn route_in_transaction(&self, call_id: &[u8], cseq: u32) -> Option<BackendId> {
        self.current(call_id, cseq).map(|(b, _)| b)
    }

    /// The backend that has the tracked transaction now and its attempt number (0 for the
    /// first backend tried): requests of the transaction sent there carry the branch of that
    /// attempt.
    pub fn current(&self, call_id: &[u8], cseq: u32) -> Option<(BackendId, usize)> {
        let e = &self.entries[self.find(call_id, cseq)? as usize];
        Some((e.current(), e.attempts.saturating_sub(1)))
    }

    /// The original request of a tracked transaction (for a retry, the final 503 or an ACK).
    pub fn request(&self, key: TxKey) -> Option<&[u8]> {
        let slot = self.slot_of(key)?;
        let e = &self.entries[slot as usize];
        let start = self.slot_range(slot).start + e.call_id_len;
        self.bytes.get(start..start + e.request_len)
    }

    /// Where the original request of a tracked transaction came from.
    pub fn origin(&self, key: TxKey) -> Option<Origin> {
        let slot = self.slot_of(key)?;
        Some(self.entries[slot as usize].origin)
    }

    /// The current backend and attempt number of a tracked transaction, by key.
    pub fn attempt(&self, key: TxKey) -> Option<(BackendId, usize)> {
        let slot = self.slot_of(key)?;
        let e = &self.entries[slot as usize];
        Some((e.current(), e.attempts.saturating_sub(1)))
    }

    /// A response to an INVITE, received from `from`. `retry_after` is its Retry-After
    /// value in seconds, if any.
    #[allow(clippy::too_many_arguments)] // each input is one fact about the response
    pub fn handle_response(
        &mut self,
        now: Instant,
        call_id: &[u8],
        cseq: u32,
        code: u16,
        retry_after: Option<u32>,
        from: SocketAddr,
        pool: &Pool,
        blacklist: &Blacklist,
    ) -> ResponseAction {
        let Some(slot) = self.find(call_id, cseq) else {
            return ResponseAction::Forward;
        };
        let e = &mut self.entries[slot as usize];
        if from != e.current_addr {
            // A backend we already left: ACK its final responses (it retransmits them until
            // then), drop the rest. Its 2xx would establish a dialog we do not want, but it
            // must reach the caller to be ended properly, so it is forwarded.
            return match code {
                100..=199 => ResponseAction::Absorb,
                200..=299 => ResponseAction::Forward,
                _ => ResponseAction::AckAndAbsorb,
            };
        }
        match (e.phase, code) {
            (Phase::Calling, 100) => {
                // Alive: no more silence timeout; a refusal may still follow.
                e.phase = Phase::Trying;
                self.relink(slot, RINGING, now + self.config.ringing);
                ResponseAction::Forward
            }
            (Phase::Calling | Phase::Trying, 101..=199) => {
                e.phase = Phase::Proceeding;
                self.relink(slot, RINGING, now + self.config.ringing);
                ResponseAction::Forward
            }
            (Phase::Calling | Phase::Trying, _) if self.config.retry_codes.contains(code) => {
                if let Some(r) = retry_after {
                    e.retry_after = Some(e.retry_after.map_or(r, |old| old.min(r)));
                }
                // RFC 3261 §21.5.4: a 503 (with its Retry-After) marks the backend
                // unavailable for other calls too; other retry codes count as a timeout.
                let reason = if code == 503 {
                    BlockReason::Status503 { retry_after }
                } else {
                    BlockReason::Timeout
                };
                blacklist.report(from, reason, now);
                self.fail_over(slot, now, pool, blacklist);
                ResponseAction::AckAndAbsorb
            }
            (Phase::Completed { .. }, _) | (_, 0..=99) => ResponseAction::Forward,
            (_, 100..=199) => ResponseAction::Forward,
            (_, 200..=299) if e.attempts <= 1 => {
                // Accepted by the backend the Call-ID hashes to: the ACK of a 2xx is end to
                // end (RFC 3261 §13.2.2.4) and anything else of this call routes statelessly
                // to the same member, so the entry has nothing left to steer. Freeing it now
                // keeps the table (and the memory it touches) at the calls still being set
                // up, not every call of the last `linger` seconds.
                self.remove(slot);
                ResponseAction::Forward
            }
            (_, _) => {
                self.complete(slot, now, false);
                ResponseAction::Forward
            }
        }
    }

    /// Sending the INVITE to its current backend failed (ICMP unreachable, connection refused
    /// or reset, send error). The failure is also reported to the blacklist.
    pub fn handle_transport_error(
        &mut self,
        now: Instant,
        call_id: &[u8],
        cseq: u32,
        reason: BlockReason,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        let Some(slot) = self.find(call_id, cseq) else {
            return;
        };
        let e = &self.entries[slot as usize];
        if !matches!(e.phase, Phase::Calling | Phase::Trying) {
            return;
        }
        blacklist.report(e.current_addr, reason, now);
        self.fail_over(slot, now, pool, blacklist);
    }

    /// The runtime could not reach `addr` (connection refused or timed out, ICMP unreachable,
    /// send error) and does not know which messages were lost: every transaction still
    /// waiting on that backend (no provisional response beyond 100) moves to the next one.
    /// The failure is reported to the blacklist once. A cold path: it walks the waiting
    /// transactions.
    pub fn handle_backend_failure(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        reason: BlockReason,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        let mut reported = false;
        for list in [CALLING, RINGING] {
            let mut at = self.lists[list].0;
            // Entries moved by fail_over go to the tail of CALLING with another address, so
            // the walk sees each at most twice and ends.
            while at != NIL {
                let e = self.entries[at as usize];
                let next = e.next;
                if e.current_addr == addr && matches!(e.phase, Phase::Calling | Phase::Trying) {
                    if !reported {
                        blacklist.report(addr, reason, now);
                        reported = true;
                    }
                    self.fail_over(at, now, pool, blacklist);
                }
                at = next;
            }
        }
    }

    /// The next instant [`InviteFailover::handle_timeout`] is needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lists
            .iter()
            .filter(|(head, _)| *head != NIL)
            .map(|(head, _)| self.entries[*head as usize].deadline)
            .min()
    }

    /// Fails over transactions whose backend stayed silent, forgets finished ones.
    pub fn handle_timeout(&mut self, now: Instant, pool: &Pool, blacklist: &Blacklist) {
        for list in [CALLING, RINGING, LINGER] {
            // Each pass either removes the head or moves it to another list or the tail
            // with a later deadline, so the loop ends.
            loop {
                let head = self.lists[list].0;
                if head == NIL {
                    break;
                }
                let e = self.entries[head as usize];
                if e.deadline > now {
                    break;
                }
                match e.phase {
                    Phase::Calling => {
                        blacklist.report(e.current_addr, BlockReason::Timeout, now);
                        self.fail_over(head, now, pool, blacklist);
                    }
                    Phase::Trying | Phase::Proceeding | Phase::Completed { .. } => {
                        self.remove(head);
                    }
                }
            }
        }
    }

    /// Whether [`InviteFailover::poll_event`] has anything: a cheap test the caller makes
    /// after every message before draining.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Next piece of work.
    pub fn poll_event(&mut self) -> Option<FailoverEvent> {
        self.events.pop_front()
    }

    fn fail_over(&mut self, slot: u32, now: Instant, pool: &Pool, blacklist: &Blacklist) {
        let max_attempts = self.config.max_attempts;
        let range = self.slot_range(slot);
        let e = &mut self.entries[slot as usize];
        let call_id = &self.bytes[range.start..range.start + e.call_id_len];
        let from = e.current();
        let next = if e.attempts < max_attempts {
            pool.select_excluding(call_id, now, blacklist, e.tried())
        } else {
            None
        };
        let key = e.key;
        match next {
            Some(b) if e.attempts < MAX_ATTEMPTS => {
                e.tried[e.attempts] = b.id();
                e.attempts += 1;
                e.current_addr = b.addr();
                e.phase = Phase::Calling;
                self.relink(slot, CALLING, now + self.config.timeout);
                self.events.push_back(FailoverEvent::Retry {
                    key,
                    backend: b.id(),
                    from,
                });
            }
            _ => {
                let retry_after = e.retry_after.unwrap_or(self.config.retry_after);
                self.events.push_back(FailoverEvent::GiveUp {
                    key,
                    from,
                    retry_after,
                });
                self.complete(slot, now, true);
            }
        }
    }

    fn complete(&mut self, slot: u32, now: Instant, gave_up: bool) {
        self.entries[slot as usize].phase = Phase::Completed { gave_up };
        self.relink(slot, LINGER, now + self.config.linger);
    }

    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        self.unindex(slot);
        self.free.push(slot);
    }

    /// Moves the entry to the tail of `list` with this deadline.
    fn relink(&mut self, slot: u32, list: usize, deadline: Instant) {
        self.unlink(slot);
        self.link(slot, list, deadline);
    }

    fn link(&mut self, slot: u32, list: usize, deadline: Instant) {
        let tail = self.lists[list].1;
        let e = &mut self.entries[slot as usize];
        e.list = list;
        e.deadline = deadline;
        e.prev = tail;
        e.next = NIL;
        if tail == NIL {
            self.lists[list].0 = slot;
        } else {
            self.entries[tail as usize].next = slot;
        }
        self.lists[list].1 = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Entry {
            list, prev, next, ..
        } = self.entries[slot as usize];
        if prev == NIL {
            if self.lists[list].0 == slot {
                self.lists[list].0 = next;
            }
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            if self.lists[list].1 == slot {
                self.lists[list].1 = prev;
            }
        } else {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[slot as usize];
        e.prev = NIL;
        e.next = NIL;
    }
}

/// Why an ACK could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The request or the response does not parse.
    #[error("request or response does not parse")]
    Parse,
    /// `out` is too small; `required` bytes are needed.
    #[error("buffer too small for the ACK: {required} bytes needed")]
    BufferTooSmall {
        /// Bytes needed.
        required: usize,
    },
}

/// Writes the ACK for a non-2xx final `response` to the INVITE `request` (RFC 3261 §17.1.1.3)
/// into `out` and returns its length.
///
/// Request-URI, From, Call-ID, CSeq number and Route come from the request; the single Via is
/// the response's top Via (the proxy's own, as the backend saw it, so the ACK matches the
/// backend's server transaction by branch); To comes from the response (it carries the tag).
pub fn write_ack(request: &[u8], response: &[u8], out: &mut [u8]) -> Result<usize, AckError> {
    let limits = Limits::default();
    let mut req_slots = [EMPTY_HEADER; 64];
    let req = parse(request, &mut req_slots, &limits).map_err(|_| AckError::Parse)?;
    let mut resp_slots = [EMPTY_HEADER; 64];
    let resp = parse(response, &mut resp_slots, &limits).map_err(|_| AckError::Parse)?;
    if req.request_uri().is_none() || resp.status_code().is_none() {
        return Err(AckError::Parse);
    }
    let uri_text = uri_bytes(request, &req);
    // Only the first value of a comma-separated Via line.
    let top_via = resp.top_via().span.slice(response);
    let from = req
        .headers_of(HeaderName::From)
        .next()
        .ok_or(AckError::Parse)?;
    let to = resp
        .headers_of(HeaderName::To)
        .next()
        .ok_or(AckError::Parse)?;
    let mut w = Out::new(out);
    w.put(b"ACK ");
    w.put(uri_text);
    w.put(b" SIP/2.0\r\nVia: ");
    w.put(top_via);
    w.put(b"\r\nMax-Forwards: 70\r\n");
    for route in req.headers_of(HeaderName::Route) {
        w.put(b"Route: ");
        w.put(route.value);
        w.put(b"\r\n");
    }
    w.put(b"From: ");
    w.put(from.value);
    w.put(b"\r\nTo: ");
    w.put(to.value);
    w.put(b"\r\nCall-ID: ");
    w.put(req.call_id());
    w.put(b"\r\nCSeq: ");
    w.put_u64(u64::from(req.cseq().number));
    w.put(b" ACK\r\nContent-Length: 0\r\n\r\n");
    if w.overflowed() {
        return Err(AckError::BufferTooSmall {
            required: w.required(),
        });
    }
    Ok(w.len())
}

/// The Request-URI as written in the request line.
fn uri_bytes<'b>(buf: &'b [u8], msg: &crate::sip::Message<'_, 'b>) -> &'b [u8] {
    let line = msg.start_line_span().slice(buf);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let _method = parts.next();
    parts.next().unwrap_or(b"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendSpec;

    const INVITE: &[u8] = b"INVITE sip:bob@edge.example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        Route: <sip:next.example.com;lr>\r\n\
        To: Bob <sip:bob@example.com>\r\n\
        From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@192.0.2.10>\r\n\
        Content-Length: 0\r\n\r\n";
    const CALL_ID: &[u8] = b"a84b4c76e66710@pc33.example.com";

    struct Rig {
        pool: Pool,
        bl: Blacklist,
        fo: InviteFailover,
        t0: Instant,
    }

    fn rig(config: FailoverConfig) -> Rig {
        let specs: Vec<BackendSpec> = (0..3)
            .map(|i| BackendSpec::from_uri(&format!("sip:127.0.0.1:{}", 5070 + i)).unwrap())
            .collect();
        Rig {
            pool: Pool::new(&specs).unwrap(),
            bl: Blacklist::default(),
            fo: InviteFailover::new(config),
            t0: Instant::now(),
        }
    }

    /// The caller every test INVITE comes from.
    fn test_origin() -> Origin {
        Origin {
            src: "192.0.2.10:5060".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            flow: None,
            compressed: false,
        }
    }

    impl Rig {
        fn invite(&mut self, now: Instant) -> InviteRoute<'_> {
            let origin = test_origin();
            self.fo
                .route_invite(now, CALL_ID, 314159, INVITE, origin, &self.pool, &self.bl)
                .0
        }

        fn respond(
            &mut self,
            now: Instant,
            code: u16,
            ra: Option<u32>,
            from: BackendId,
        ) -> ResponseAction {
            let addr = self.pool.by_id(from).unwrap().addr();
            self.fo
                .handle_response(now, CALL_ID, 314159, code, ra, addr, &self.pool, &self.bl)
        }

        fn events(&mut self) -> Vec<FailoverEvent> {
            std::iter::from_fn(|| self.fo.poll_event()).collect()
        }

        /// Asserts that the only event is a retry of the test INVITE from `from` on
        /// `backend`; returns the transaction's key.
        fn expect_retry(&mut self, from: BackendId, backend: BackendId) -> TxKey {
            let key = self.fo.key(CALL_ID, 314159);
            assert_eq!(self.events(), [FailoverEvent::Retry { key, backend, from }]);
            key
        }

        fn order(&self) -> Vec<BackendId> {
            self.pool
                .candidates(CALL_ID, self.t0, &Blacklist::default())
                .map(Backend::id)
                .collect()
        }
    }

    fn forwarded(route: InviteRoute<'_>) -> BackendId {
        match route {
            InviteRoute::Forward(b) => b.id(),
            InviteRoute::Reject { .. } => panic!("rejected"),
        }
    }

    #[test]
    fn refusals_walk_the_hash_order_then_give_up_with_retry_after() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        assert_eq!(forwarded(r.invite(t0)), order[0]);
        let key = r.fo.key(CALL_ID, 314159);
        assert_eq!(
            r.respond(t0, 503, Some(30), order[0]),
            ResponseAction::AckAndAbsorb
        );
        assert_eq!(
            r.events(),
            [FailoverEvent::Retry {
                key,
                backend: order[1],
                from: order[0]
            }]
        );
        assert_eq!(r.fo.request(key), Some(INVITE));
        // The refusing backend is blacklisted for its Retry-After: new calls avoid it too.
        assert!(r.bl.is_blocked(
            r.pool.by_id(order[0]).unwrap().addr(),
            t0 + Duration::from_secs(29)
        ));
        // A retransmitted INVITE and a CANCEL go where the transaction is now.
        assert_eq!(forwarded(r.invite(t0)), order[1]);
        assert_eq!(r.fo.route_in_transaction(CALL_ID, 314159), Some(order[1]));
        assert_eq!(r.respond(t0, 100, None, order[1]), ResponseAction::Forward);
        // 100 Trying does not stop failover: the backend may still refuse.
        assert_eq!(
            r.respond(t0, 503, Some(10), order[1]),
            ResponseAction::AckAndAbsorb
        );
        assert_eq!(
            r.events(),
            [FailoverEvent::Retry {
                key,
                backend: order[2],
                from: order[1]
            }]
        );
        assert_eq!(
            r.respond(t0, 503, None, order[2]),
            ResponseAction::AckAndAbsorb
        );
        // No backend left: 503 with the smallest Retry-After the backends asked for.
        assert_eq!(
            r.events(),
            [FailoverEvent::GiveUp {
                key,
                from: order[2],
                retry_after: 10
            }]
        );
        assert_eq!(r.invite(t0), InviteRoute::Reject { retry_after: 10 });
        // Late retransmission of the first 503: ACK it again, never forward it.
        assert_eq!(
            r.respond(t0, 503, Some(30), order[0]),
            ResponseAction::AckAndAbsorb
        );
        assert_eq!(r.respond(t0, 180, None, order[0]), ResponseAction::Absorb);
        // Forgotten after the linger time.
        r.fo.handle_timeout(t0 + Duration::from_secs(33), &r.pool, &r.bl);
        assert!(r.fo.is_empty());
    }

    #[test]
    fn silence_fails_over_after_the_timeout() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        assert_eq!(r.fo.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        r.fo.handle_timeout(t0 + Duration::from_secs(1), &r.pool, &r.bl);
        assert!(r.events().is_empty());
        let t = t0 + Duration::from_secs(2);
        r.fo.handle_timeout(t, &r.pool, &r.bl);
        r.expect_retry(order[0], order[1]);
        let silent = r.pool.by_id(order[0]).unwrap().addr();
        assert_eq!(
            r.bl.view().entry(silent).map(|e| e.reason),
            Some(BlockReason::Timeout)
        );
        // The next backend answers: the call completes there.
        assert_eq!(r.respond(t, 200, None, order[1]), ResponseAction::Forward);
        r.fo.handle_timeout(t + Duration::from_secs(10), &r.pool, &r.bl);
        assert!(r.events().is_empty());
        assert_eq!(r.fo.route_in_transaction(CALL_ID, 314159), Some(order[1]));
    }

    #[test]
    fn accepted_first_attempt_frees_its_entry_but_a_failed_over_call_keeps_it() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        assert_eq!(r.fo.len(), 1);
        assert_eq!(r.respond(t0, 180, None, order[0]), ResponseAction::Forward);
        assert_eq!(r.fo.len(), 1, "kept while ringing: a CANCEL must find it");
        assert_eq!(r.respond(t0, 200, None, order[0]), ResponseAction::Forward);
        assert_eq!(
            r.fo.len(),
            0,
            "the hash choice answered: nothing left to steer"
        );
        assert_eq!(r.fo.route_in_transaction(CALL_ID, 314159), None);

        // The same call failed over once: its 2xx keeps the entry for the linger time, so a
        // retransmitted INVITE still reaches the backend that answered, not the hash choice.
        let mut r = rig(FailoverConfig::default());
        r.invite(t0);
        r.respond(t0, 503, None, order[0]);
        r.events();
        assert_eq!(r.respond(t0, 200, None, order[1]), ResponseAction::Forward);
        assert_eq!(r.fo.len(), 1);
        assert_eq!(r.fo.route_in_transaction(CALL_ID, 314159), Some(order[1]));
    }

    #[test]
    fn no_failover_once_ringing() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        assert_eq!(r.respond(t0, 180, None, order[0]), ResponseAction::Forward);
        assert_eq!(r.respond(t0, 503, None, order[0]), ResponseAction::Forward);
        assert!(r.events().is_empty());
        // No silence timeout while ringing either.
        r.fo.handle_timeout(t0 + Duration::from_secs(5), &r.pool, &r.bl);
        assert!(r.events().is_empty());
        assert_eq!(r.fo.route_in_transaction(CALL_ID, 314159), Some(order[0]));
    }

    #[test]
    fn transport_error_fails_over_and_blacklists() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        r.fo.handle_transport_error(
            t0,
            CALL_ID,
            314159,
            BlockReason::IcmpUnreachable,
            &r.pool,
            &r.bl,
        );
        r.expect_retry(order[0], order[1]);
        assert!(r.bl.is_blocked(r.pool.by_id(order[0]).unwrap().addr(), t0));
        // Other calls now avoid the failed backend on every shard (same blacklist).
        for i in 0..50 {
            let c = format!("other-{i}");
            assert_ne!(
                r.pool.select(c.as_bytes(), t0, &r.bl).unwrap().id(),
                order[0]
            );
        }
    }

    #[test]
    fn a_backend_failure_moves_every_call_waiting_on_it() {
        let mut r = rig(FailoverConfig::default());
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        let addr = r.pool.by_id(order[0]).unwrap().addr();
        r.fo.handle_backend_failure(t0, addr, BlockReason::ConnectRefused, &r.pool, &r.bl);
        r.expect_retry(order[0], order[1]);
        assert_eq!(r.fo.current(CALL_ID, 314159), Some((order[1], 1)));
        // Another address failing changes nothing.
        let other = r.pool.by_id(order[2]).unwrap().addr();
        r.fo.handle_backend_failure(t0, other, BlockReason::SendError, &r.pool, &r.bl);
        assert!(r.events().is_empty());
    }

    #[test]
    fn slots_are_reused_and_oversized_requests_are_not_tracked() {
        let mut r = rig(FailoverConfig {
            capacity: 2,
            slot_bytes: CALL_ID.len() + INVITE.len(),
            ..FailoverConfig::default()
        });
        let t0 = r.t0;
        r.invite(t0);
        assert_eq!(r.fo.len(), 1);
        // Forgotten after ringing ends, then tracked again in the freed slot.
        let order = r.order();
        r.respond(t0, 180, None, order[0]);
        r.fo.handle_timeout(t0 + Duration::from_secs(201), &r.pool, &r.bl);
        assert!(r.fo.is_empty());
        r.invite(t0 + Duration::from_secs(202));
        assert_eq!(r.fo.len(), 1);
        assert_eq!(r.fo.request(r.fo.key(CALL_ID, 314159)), Some(INVITE));
        let mut small = rig(FailoverConfig {
            slot_bytes: 16,
            ..FailoverConfig::default()
        });
        small.invite(t0);
        assert!(small.fo.is_empty());
    }

    #[test]
    fn index_survives_churn_in_a_full_table() {
        // A small table, kept full, with entries leaving in an order unrelated to their
        // buckets: every tracked transaction stays findable after the backward shifts.
        let mut r = rig(FailoverConfig {
            capacity: 16,
            ..FailoverConfig::default()
        });
        let origin = test_origin();
        let mut live: Vec<(String, Instant)> = Vec::new();
        let mut t = r.t0;
        let mut seed = 12345u64;
        for n in 0..400u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += Duration::from_millis(1 + (seed >> 60));
            let call_id = format!("churn-{n}@example.com");
            r.fo.route_invite(t, call_id.as_bytes(), 1, INVITE, origin, &r.pool, &r.bl);
            if r.fo.current(call_id.as_bytes(), 1).is_some() {
                // Ringing: forgotten `ringing` after now, so removals interleave.
                let from = r.fo.current(call_id.as_bytes(), 1).unwrap().0;
                let addr = r.pool.by_id(from).unwrap().addr();
                r.fo.handle_response(t, call_id.as_bytes(), 1, 180, None, addr, &r.pool, &r.bl);
                live.push((call_id, t + Duration::from_secs(200)));
            }
            let now = t + Duration::from_secs(199);
            r.fo.handle_timeout(now, &r.pool, &r.bl);
            live.retain(|(_, until)| *until > now);
            assert_eq!(r.fo.len(), live.len());
            for (c, _) in &live {
                assert!(r.fo.current(c.as_bytes(), 1).is_some(), "{c} lost");
                assert!(r.fo.current(c.as_bytes(), 2).is_none());
            }
        }
        assert!(r.events().is_empty());
        assert_eq!(r.fo.len(), 16);
    }

    #[test]
    fn attempts_and_capacity_are_bounded() {
        let mut r = rig(FailoverConfig {
            max_attempts: 1,
            ..FailoverConfig::default()
        });
        let order = r.order();
        let t0 = r.t0;
        r.invite(t0);
        r.respond(t0, 503, None, order[0]);
        let key = r.fo.key(CALL_ID, 314159);
        assert_eq!(
            r.events(),
            [FailoverEvent::GiveUp {
                key,
                from: order[0],
                retry_after: 5
            }]
        );

        let mut r = rig(FailoverConfig {
            capacity: 0,
            ..FailoverConfig::default()
        });
        assert_eq!(forwarded(r.invite(t0)), order[0]);
        assert!(r.fo.is_empty());
        assert_eq!(r.respond(t0, 503, None, order[0]), ResponseAction::Forward);
    }

    #[test]
    fn no_usable_backend_rejects_at_once() {
        let mut r = rig(FailoverConfig::default());
        for b in r.pool.backends() {
            b.set_up(false);
        }
        assert_eq!(r.invite(r.t0), InviteRoute::Reject { retry_after: 5 });
    }

    #[test]
    fn ack_for_a_refusal() {
        let response = b"SIP/2.0 503 Service Unavailable\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKedge1, SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
            To: Bob <sip:bob@example.com>;tag=a6c85cf\r\n\
            From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
            Call-ID: a84b4c76e66710@pc33.example.com\r\n\
            CSeq: 314159 INVITE\r\n\
            Retry-After: 30\r\n\
            Content-Length: 0\r\n\r\n";
        let mut out = [0u8; 1024];
        let n = write_ack(INVITE, response, &mut out).unwrap();
        let ack = std::str::from_utf8(&out[..n]).unwrap();
        assert_eq!(
            ack,
            "ACK sip:bob@edge.example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKedge1\r\n\
             Max-Forwards: 70\r\n\
             Route: <sip:next.example.com;lr>\r\n\
             From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
             To: Bob <sip:bob@example.com>;tag=a6c85cf\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: 314159 ACK\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // The result parses as a SIP request.
        let mut slots = [EMPTY_HEADER; 16];
        let msg = parse(ack.as_bytes(), &mut slots, &Limits::default()).unwrap();
        assert_eq!(msg.cseq().number, 314159);
        let mut small = [0u8; 10];
        assert_eq!(
            write_ack(INVITE, response, &mut small),
            Err(AckError::BufferTooSmall { required: n })
        );
        assert_eq!(
            write_ack(b"garbage", response, &mut out),
            Err(AckError::Parse)
        );
    }
}
