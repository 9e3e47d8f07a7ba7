//! INVITE failover: the minimal transaction state a shard keeps so that a new call whose
//! backend fails before answering is retried on the next backend in hash order.
//!
//! The shard owning a Call-ID owns all of its INVITE transactions, so this table is per shard
//! and needs no lock. For each INVITE forwarded to the pool it remembers the original request,
//! the backends tried and the current one, until the transaction is over:
//!
//! - a retryable final response (503 by default; configurable) or a transport error before any
//!   provisional response other than 100 moves the call to the next backend; the response is
//!   absorbed (the proxy ACKs it, [`write_ack`]) and never reaches the caller;
//! - no response at all within `timeout` (shorter than RFC 3261 Timer B) does the same;
//! - when no backend is left, the proxy answers 503 with Retry-After itself;
//! - retransmissions of the INVITE, its CANCEL and the ACK of a non-2xx final response follow
//!   the INVITE to the backend that has it now ([`InviteFailover::route_in_transaction`]).
//!
//! Driving loop (sans-IO): call [`InviteFailover::route_invite`] for each INVITE from outside,
//! [`InviteFailover::handle_response`] for each response to one,
//! [`InviteFailover::handle_transport_error`] when sending it failed, and
//! [`InviteFailover::handle_timeout`] at [`InviteFailover::poll_timeout`]; then drain
//! [`InviteFailover::poll_event`] and act on it.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backend::{Backend, BackendId};
use super::blacklist::{Blacklist, BlockReason};
use super::health::StatusCodes;
use super::pool::Pool;
use crate::sip::out::Out;
use crate::sip::{EMPTY_HEADER, HeaderName, Limits, parse};

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
}

impl Default for FailoverConfig {
    /// 2 s timeout, retry on 503 only, 3 attempts, Retry-After 5, 200 s ringing, 32 s linger,
    /// 65 536 entries.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retry_codes: StatusCodes::none().with_range(503, 503),
            max_attempts: 3,
            retry_after: 5,
            ringing: Duration::from_secs(200),
            linger: Duration::from_secs(32),
            capacity: 65_536,
        }
    }
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
        /// Seconds for the Retry-After header.
        retry_after: u32,
    },
}

/// Identity of an INVITE transaction for one table ([`InviteFailover::key`]): Call-ID and CSeq
/// number (a CANCEL and the ACK of a non-2xx response carry the same pair, RFC 3261 §9.1,
/// §17.1.1.3). The Call-ID is hashed with a per-table random key, so a caller cannot craft
/// Call-IDs that collide with another call's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    call_id: u64,
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

#[derive(Debug)]
struct Entry {
    call_id: Box<[u8]>,
    request: Box<[u8]>,
    // INVARIANT: tried[..attempts] are the backends tried, the last one is current.
    tried: [BackendId; MAX_ATTEMPTS],
    attempts: usize,
    current_addr: SocketAddr,
    phase: Phase,
    deadline: Instant,
    /// Bumped at each deadline change; heap items with another generation are stale.
    generation: u32,
    retry_after: Option<u32>,
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
    entries: HashMap<TxKey, Entry>,
    timers: BinaryHeap<Reverse<(Instant, TxKey, u32)>>,
    events: VecDeque<FailoverEvent>,
    hasher: RandomState,
}

impl InviteFailover {
    /// An empty table.
    pub fn new(config: FailoverConfig) -> Self {
        Self {
            config: FailoverConfig {
                max_attempts: config.max_attempts.clamp(1, MAX_ATTEMPTS),
                timeout: config.timeout.min(Duration::from_secs(3600)),
                linger: config.linger.min(Duration::from_secs(3600)),
                ringing: config.ringing.min(Duration::from_secs(3600)),
                ..config
            },
            entries: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            hasher: RandomState::new(),
        }
    }

    /// The key of the INVITE transaction with this Call-ID and CSeq number in this table.
    pub fn key(&self, call_id: &[u8], cseq: u32) -> TxKey {
        TxKey {
            call_id: self.hasher.hash_one(call_id),
            cseq,
        }
    }

    /// Transactions tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Routes an INVITE from outside. A new transaction gets the pool's choice and is tracked;
    /// a retransmission goes where the transaction is now (or is rejected again if it was
    /// given up).
    pub fn route_invite<'p>(
        &mut self,
        now: Instant,
        call_id: &[u8],
        cseq: u32,
        request: &[u8],
        pool: &'p Pool,
        blacklist: &Blacklist,
    ) -> InviteRoute<'p> {
        let key = self.key(call_id, cseq);
        if let Some(e) = self.entries.get(&key).filter(|e| *e.call_id == *call_id) {
            if let Phase::Completed { gave_up: true } = e.phase {
                return InviteRoute::Reject {
                    retry_after: e.retry_after.unwrap_or(self.config.retry_after),
                };
            }
            if let Some(b) = pool.by_id(e.current()) {
                return InviteRoute::Forward(b);
            }
        }
        let Some(backend) = pool.select(call_id, now, blacklist) else {
            return InviteRoute::Reject {
                retry_after: self.config.retry_after,
            };
        };
        if self.entries.len() < self.config.capacity {
            let mut tried = [BackendId(0); MAX_ATTEMPTS];
            tried[0] = backend.id();
            let deadline = now + self.config.timeout;
            self.entries.insert(
                key,
                Entry {
                    call_id: call_id.into(),
                    request: request.into(),
                    tried,
                    attempts: 1,
                    current_addr: backend.addr(),
                    phase: Phase::Calling,
                    deadline,
                    generation: 0,
                    retry_after: None,
                },
            );
            self.timers.push(Reverse((deadline, key, 0)));
        }
        InviteRoute::Forward(backend)
    }

    /// The backend a CANCEL or an ACK (of a non-2xx response) with this Call-ID and CSeq
    /// number must follow, if the INVITE is tracked.
    pub fn route_in_transaction(&self, call_id: &[u8], cseq: u32) -> Option<BackendId> {
        self.entries
            .get(&self.key(call_id, cseq))
            .filter(|e| *e.call_id == *call_id)
            .map(Entry::current)
    }

    /// The original request of a tracked transaction (for a retry or the final 503).
    pub fn request(&self, key: TxKey) -> Option<&[u8]> {
        self.entries.get(&key).map(|e| &*e.request)
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
        let key = self.key(call_id, cseq);
        let Some(e) = self
            .entries
            .get_mut(&key)
            .filter(|e| *e.call_id == *call_id)
        else {
            return ResponseAction::Forward;
        };
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
                Self::rearm(&mut self.timers, key, e, now + self.config.ringing);
                ResponseAction::Forward
            }
            (Phase::Calling | Phase::Trying, 101..=199) => {
                e.phase = Phase::Proceeding;
                Self::rearm(&mut self.timers, key, e, now + self.config.ringing);
                ResponseAction::Forward
            }
            (Phase::Calling | Phase::Trying, _) if self.config.retry_codes.contains(code) => {
                let reason = if code == 503 {
                    BlockReason::Status503 { retry_after }
                } else {
                    BlockReason::Timeout
                };
                blacklist.report(from, reason, now);
                if let Some(r) = retry_after {
                    e.retry_after = Some(e.retry_after.map_or(r, |old| old.min(r)));
                }
                self.fail_over(key, now, pool, blacklist);
                ResponseAction::AckAndAbsorb
            }
            (Phase::Completed { .. }, _) | (_, 0..=99) => ResponseAction::Forward,
            (_, 100..=199) => ResponseAction::Forward,
            (_, _) => {
                self.complete(key, now, false);
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
        let key = self.key(call_id, cseq);
        let Some(e) = self.entries.get(&key).filter(|e| *e.call_id == *call_id) else {
            return;
        };
        if !matches!(e.phase, Phase::Calling | Phase::Trying) {
            return;
        }
        blacklist.report(e.current_addr, reason, now);
        self.fail_over(key, now, pool, blacklist);
    }

    /// The next instant [`InviteFailover::handle_timeout`] is needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Fails over transactions whose backend stayed silent, forgets finished ones.
    pub fn handle_timeout(&mut self, now: Instant, pool: &Pool, blacklist: &Blacklist) {
        while let Some(&Reverse((at, key, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(e) = self.entries.get(&key) else {
                continue;
            };
            if e.generation != generation {
                continue;
            }
            match e.phase {
                Phase::Calling => {
                    blacklist.report(e.current_addr, BlockReason::Timeout, now);
                    self.fail_over(key, now, pool, blacklist);
                }
                Phase::Trying | Phase::Proceeding | Phase::Completed { .. } => {
                    self.entries.remove(&key);
                }
            }
        }
    }

    /// Next piece of work.
    pub fn poll_event(&mut self) -> Option<FailoverEvent> {
        self.events.pop_front()
    }

    fn fail_over(&mut self, key: TxKey, now: Instant, pool: &Pool, blacklist: &Blacklist) {
        let max_attempts = self.config.max_attempts;
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let from = e.current();
        let next = if e.attempts < max_attempts {
            pool.select_excluding(&e.call_id, now, blacklist, e.tried())
        } else {
            None
        };
        match next {
            Some(b) if e.attempts < MAX_ATTEMPTS => {
                e.tried[e.attempts] = b.id();
                e.attempts += 1;
                e.current_addr = b.addr();
                e.phase = Phase::Calling;
                Self::rearm(&mut self.timers, key, e, now + self.config.timeout);
                self.events.push_back(FailoverEvent::Retry {
                    key,
                    backend: b.id(),
                    from,
                });
            }
            _ => {
                let retry_after = e.retry_after.unwrap_or(self.config.retry_after);
                self.events
                    .push_back(FailoverEvent::GiveUp { key, retry_after });
                self.complete(key, now, true);
            }
        }
    }

    fn complete(&mut self, key: TxKey, now: Instant, gave_up: bool) {
        let linger = self.config.linger;
        if let Some(e) = self.entries.get_mut(&key) {
            e.phase = Phase::Completed { gave_up };
            Self::rearm(&mut self.timers, key, e, now + linger);
        }
    }

    /// Moves the entry's single timer to `deadline` (older heap items become stale).
    fn rearm(
        timers: &mut BinaryHeap<Reverse<(Instant, TxKey, u32)>>,
        key: TxKey,
        e: &mut Entry,
        deadline: Instant,
    ) {
        e.deadline = deadline;
        e.generation = e.generation.wrapping_add(1);
        timers.push(Reverse((deadline, key, e.generation)));
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

    impl Rig {
        fn invite(&mut self, now: Instant) -> InviteRoute<'_> {
            self.fo
                .route_invite(now, CALL_ID, 314159, INVITE, &self.pool, &self.bl)
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
        let key = r.fo.key(CALL_ID, 314159);
        assert_eq!(
            r.events(),
            [FailoverEvent::Retry {
                key,
                backend: order[1],
                from: order[0]
            }]
        );
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
        let key = r.fo.key(CALL_ID, 314159);
        assert_eq!(
            r.events(),
            [FailoverEvent::Retry {
                key,
                backend: order[1],
                from: order[0]
            }]
        );
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
