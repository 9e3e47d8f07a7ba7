//! Backend health: active OPTIONS probing and passive failure signals, as a sans-IO state
//! machine.
//!
//! One `Health` runs for the whole process (on whichever thread owns probing). Its driving
//! loop, like every sans-IO machine here:
//!
//! 1. call [`Health::handle_timeout`] when [`Health::poll_timeout`] is reached;
//! 2. drain [`Health::poll_event`]: for [`HealthEvent::ProbeDue`] write the probe with
//!    [`super::write_probe`] and send it; [`HealthEvent::Down`] / [`HealthEvent::Up`] are
//!    already applied to the pool and blacklist and are reported for logs and metrics;
//! 3. feed back what happened: [`Health::handle_probe_response`] for a response recognised by
//!    [`super::recognise_probe_response`], [`Health::handle_send_failure`] when a probe could not
//!    be sent, [`Health::handle_passive`] for failures the shards saw on real traffic;
//! 4. after a pool reload, [`Health::sync`] with the new pool.
//!
//! A member goes down after `down_after` consecutive failed probes (a timeout, a reply code not
//! in `alive_codes`, or a send error) and comes back after `up_after` consecutive good ones.
//! Hard passive evidence (ICMP unreachable, connection refused) counts as a failed probe and
//! triggers an immediate extra probe, so a dead member is confirmed within about one probe
//! timeout instead of waiting for its next interval.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backend::BackendId;
use super::blacklist::{Blacklist, BlockReason};
use super::pool::Pool;

/// Longest accepted probe interval or timeout (one day).
const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// A set of SIP status codes (100..=699): which probe replies count as alive, which final
/// responses trigger failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCodes {
    // INVARIANT: bit (code - 100) set means alive.
    bits: [u64; 10],
}

impl StatusCodes {
    /// The empty set.
    pub const fn none() -> Self {
        Self { bits: [0; 10] }
    }

    /// Adds the inclusive range `lo..=hi` (clamped to 100..=699).
    pub fn with_range(mut self, lo: u16, hi: u16) -> Self {
        for code in lo.max(100)..=hi.min(699) {
            let i = usize::from(code - 100);
            self.bits[i / 64] |= 1 << (i % 64);
        }
        self
    }

    /// Removes one code.
    pub fn without(mut self, code: u16) -> Self {
        if (100..=699).contains(&code) {
            let i = usize::from(code - 100);
            self.bits[i / 64] &= !(1 << (i % 64));
        }
        self
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        if !(100..=699).contains(&code) {
            return false;
        }
        let i = usize::from(code - 100);
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
}

/// The reply codes that count as alive for a probe.
pub type AliveCodes = StatusCodes;

impl Default for StatusCodes {
    /// As probe reply codes: any final answer that shows a working SIP stack: 2xx, 3xx, and 4xx except 408
    /// (a 404/405/403 to OPTIONS still proves the server is processing requests). 5xx and 6xx
    /// mean the member cannot serve calls, provisional responses mean nothing yet.
    fn default() -> Self {
        Self::none().with_range(200, 499).without(408)
    }
}

/// Health checking parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Whether active probing runs at all (passive signals always count).
    pub probing: bool,
    /// Time between two probes of one member.
    pub interval: Duration,
    /// How long a probe waits for a final response before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failures that take an up member down.
    pub down_after: u32,
    /// Consecutive successes that bring a down member back.
    pub up_after: u32,
    /// Reply codes that count as success.
    pub alive_codes: AliveCodes,
}

impl Default for HealthConfig {
    /// 1 s interval, 1 s timeout, down after 2 failures, up after 2 successes: a silent member
    /// is out within about 2-3 s, a refusing one (ICMP) within about one timeout.
    fn default() -> Self {
        Self {
            probing: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            down_after: 2,
            up_after: 2,
            alive_codes: AliveCodes::default(),
        }
    }
}

/// Something the owner of the health machine must do or may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// Send an OPTIONS probe to this member now ([`super::write_probe`] with this `seq`).
    ProbeDue {
        /// Member to probe.
        backend: BackendId,
        /// Its address.
        addr: SocketAddr,
        /// Sequence number to put in the probe.
        seq: u64,
    },
    /// The member was marked down (already applied to the pool and blacklist).
    Down {
        /// The member.
        backend: BackendId,
        /// The failure that tipped it.
        reason: BlockReason,
    },
    /// The member was marked up again (already applied).
    Up {
        /// The member.
        backend: BackendId,
    },
}

/// Health of one member, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHealth {
    /// The member.
    pub backend: BackendId,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it is considered up.
    pub up: bool,
    /// Round-trip time of the last answered probe.
    pub last_rtt: Option<Duration>,
    /// Consecutive failed probes.
    pub failures: u32,
    /// Consecutive good probes.
    pub successes: u32,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes that failed (timeout, bad code, send error).
    pub probes_failed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    seq: u64,
    sent_at: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Member {
    status: MemberHealth,
    next_probe: Instant,
    outstanding: Option<Outstanding>,
}

/// The health state machine (see the module docs).
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    // INVARIANT: sorted by backend id.
    members: Vec<Member>,
    events: VecDeque<HealthEvent>,
    next_seq: u64,
}

impl Health {
    /// Starts checking every member of `pool`. First probes are spread over one interval so
    /// that a large pool is not probed in one burst.
    pub fn new(config: HealthConfig, pool: &Pool, now: Instant) -> Self {
        let mut health = Self {
            config: HealthConfig {
                // Bounded so that `now + interval` can never leave Instant's range.
                interval: config.interval.clamp(Duration::from_millis(10), MAX_PERIOD),
                timeout: config.timeout.clamp(Duration::from_millis(1), MAX_PERIOD),
                down_after: config.down_after.max(1),
                up_after: config.up_after.max(1),
                ..config
            },
            members: Vec::new(),
            events: VecDeque::new(),
            next_seq: 1,
        };
        health.sync(pool, now);
        health
    }

    /// Follows a pool reload: members that stayed keep their counters, new ones start (with
    /// the state the pool gives them) and are probed within one interval, gone ones are
    /// forgotten.
    pub fn sync(&mut self, pool: &Pool, now: Instant) {
        let count = pool.len().max(1) as u32;
        let mut members: Vec<Member> = Vec::with_capacity(pool.len());
        for (i, b) in pool.backends().iter().enumerate() {
            if let Some(old) = self.member(b.id()) {
                let mut m = old.clone();
                m.status.addr = b.addr();
                // The pool was built with the state we had; keep them in step.
                b.set_up(m.status.up);
                members.push(m);
                continue;
            }
            let offset = self.config.interval / count * (i as u32);
            members.push(Member {
                status: MemberHealth {
                    backend: b.id(),
                    addr: b.addr(),
                    up: b.is_up(),
                    last_rtt: None,
                    failures: 0,
                    successes: 0,
                    probes_sent: 0,
                    probes_failed: 0,
                },
                next_probe: now + offset,
                outstanding: None,
            });
        }
        members.sort_by_key(|m| m.status.backend);
        self.members = members;
    }

    /// The next instant [`Health::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members
            .iter()
            .flat_map(|m| {
                let probe = self.config.probing.then_some(m.next_probe);
                let deadline = m.outstanding.map(|o| o.deadline);
                probe.into_iter().chain(deadline)
            })
            .min()
    }

    /// Expires overdue probes and schedules due ones.
    pub fn handle_timeout(&mut self, now: Instant, pool: &Pool, blacklist: &Blacklist) {
        for i in 0..self.members.len() {
            let Some(m) = self.members.get_mut(i) else {
                break;
            };
            if m.outstanding.is_some_and(|o| now >= o.deadline) {
                m.outstanding = None;
                self.record(i, false, BlockReason::Timeout, now, pool, blacklist);
            }
            self.schedule_probe_if_due(i, now);
        }
    }

    /// Next thing to do or report.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// A response to a probe (as recognised by [`super::recognise_probe_response`]).
    /// Provisional responses are ignored (the probe keeps waiting for its final one);
    /// responses to stale probes are ignored.
    pub fn handle_probe_response(
        &mut self,
        backend: BackendId,
        seq: u64,
        code: u16,
        now: Instant,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        if code < 200 {
            return;
        }
        let Some(i) = self.index(backend) else {
            return;
        };
        let Some(m) = self.members.get_mut(i) else {
            return;
        };
        let Some(out) = m.outstanding.filter(|o| o.seq == seq) else {
            return;
        };
        m.outstanding = None;
        m.status.last_rtt = Some(now.saturating_duration_since(out.sent_at));
        let alive = self.config.alive_codes.contains(code);
        let reason = if code == 503 {
            BlockReason::Status503 { retry_after: None }
        } else {
            BlockReason::ProbeFailed
        };
        self.record(i, alive, reason, now, pool, blacklist);
    }

    /// The probe with `seq` could not be sent (the runtime's send failed at once).
    pub fn handle_send_failure(
        &mut self,
        backend: BackendId,
        seq: u64,
        reason: BlockReason,
        now: Instant,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        let Some(i) = self.index(backend) else {
            return;
        };
        let Some(m) = self.members.get_mut(i) else {
            return;
        };
        if m.outstanding.is_some_and(|o| o.seq == seq) {
            m.outstanding = None;
            self.record(i, false, reason, now, pool, blacklist);
        }
    }

    /// A failure seen on real traffic to member `backend` (the shard that saw it has already
    /// reported it to the blacklist). Hard evidence that nothing listens (ICMP unreachable,
    /// connection refused) counts as a failed probe; every passive failure makes the next
    /// probe due at once, so the member's state is confirmed quickly.
    pub fn handle_passive(
        &mut self,
        backend: BackendId,
        reason: BlockReason,
        now: Instant,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        let Some(i) = self.index(backend) else {
            return;
        };
        if matches!(
            reason,
            BlockReason::IcmpUnreachable | BlockReason::ConnectRefused
        ) {
            self.record(i, false, reason, now, pool, blacklist);
        }
        if let Some(m) = self.members.get_mut(i) {
            m.next_probe = m.next_probe.min(now);
        }
        self.schedule_probe_if_due(i, now);
    }

    /// Health of every member, sorted by id.
    pub fn members(&self) -> impl Iterator<Item = &MemberHealth> {
        self.members.iter().map(|m| &m.status)
    }

    /// Health of one member.
    pub fn status(&self, backend: BackendId) -> Option<&MemberHealth> {
        self.member(backend).map(|m| &m.status)
    }

    fn member(&self, backend: BackendId) -> Option<&Member> {
        self.index(backend).and_then(|i| self.members.get(i))
    }

    fn index(&self, backend: BackendId) -> Option<usize> {
        self.members
            .binary_search_by_key(&backend, |m| m.status.backend)
            .ok()
    }

    fn schedule_probe_if_due(&mut self, i: usize, now: Instant) {
        if !self.config.probing {
            return;
        }
        let Some(m) = self.members.get_mut(i) else {
            return;
        };
        if m.outstanding.is_some() || now < m.next_probe {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        m.outstanding = Some(Outstanding {
            seq,
            sent_at: now,
            deadline: now + self.config.timeout,
        });
        m.next_probe = now + self.config.interval;
        m.status.probes_sent += 1;
        self.events.push_back(HealthEvent::ProbeDue {
            backend: m.status.backend,
            addr: m.status.addr,
            seq,
        });
    }

    /// Counts one probe outcome and applies a state change to the pool and blacklist.
    fn record(
        &mut self,
        i: usize,
        alive: bool,
        reason: BlockReason,
        now: Instant,
        pool: &Pool,
        blacklist: &Blacklist,
    ) {
        let (down_after, up_after) = (self.config.down_after, self.config.up_after);
        let Some(m) = self.members.get_mut(i) else {
            return;
        };
        let s = &mut m.status;
        let backend = pool.by_id(s.backend);
        if alive {
            s.failures = 0;
            s.successes = s.successes.saturating_add(1);
            if !s.up && s.successes >= up_after {
                s.up = true;
                if let Some(b) = backend {
                    b.set_up(true);
                }
                // Answered probes prove the address reachable again, which outweighs the
                // evidence of an earlier silence or transport failure (ICMP unreachable,
                // refused or reset connection, send error, timeout): lift those, or a
                // recovered backend would wait out a back-off its probes already disproved.
                // What a backend or an operator asked for stays: a 503's Retry-After
                // (RFC 3261 §21.5.4) and an administrative block keep their own expiry.
                if blacklist.view().entry(s.addr).is_some_and(|e| {
                    !matches!(
                        e.reason,
                        BlockReason::Status503 { .. } | BlockReason::Administrative
                    )
                }) {
                    blacklist.clear(s.addr);
                }
                self.events
                    .push_back(HealthEvent::Up { backend: s.backend });
            }
        } else {
            s.successes = 0;
            s.failures = s.failures.saturating_add(1);
            s.probes_failed += 1;
            if s.up && s.failures >= down_after {
                s.up = false;
                if let Some(b) = backend {
                    b.set_up(false);
                }
                blacklist.report(s.addr, BlockReason::ProbeFailed, now);
                self.events.push_back(HealthEvent::Down {
                    backend: s.backend,
                    reason,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        BackendSpec, ProbeTarget, Transport, recognise_probe_response, write_probe,
    };

    struct Rig {
        pool: Pool,
        bl: Blacklist,
        health: Health,
        t0: Instant,
    }

    fn rig(config: HealthConfig) -> Rig {
        let pool = Pool::new(&[
            BackendSpec::from_uri("sip:127.0.0.1:5070").unwrap(),
            BackendSpec::from_uri("sip:127.0.0.1:5071").unwrap(),
        ])
        .unwrap();
        let t0 = Instant::now();
        let health = Health::new(config, &pool, t0);
        Rig {
            pool,
            bl: Blacklist::default(),
            health,
            t0,
        }
    }

    impl Rig {
        /// Advances to `now` and returns the events produced.
        fn tick(&mut self, now: Instant) -> Vec<HealthEvent> {
            self.health.handle_timeout(now, &self.pool, &self.bl);
            std::iter::from_fn(|| self.health.poll_event()).collect()
        }

        /// Answers every due probe in `events` for `backend` with `code`, after `rtt`.
        fn answer(&mut self, events: &[HealthEvent], backend: BackendId, code: u16, at: Instant) {
            for e in events {
                if let HealthEvent::ProbeDue {
                    backend: b,
                    seq,
                    addr,
                } = *e
                {
                    if b == backend {
                        // Round trip through the wire format.
                        let mut out = [0u8; 512];
                        let n = write_probe(
                            &ProbeTarget {
                                backend: b,
                                addr,
                                transport: Transport::Udp,
                                local: "127.0.0.1:5060".parse().unwrap(),
                                seq,
                            },
                            &mut out,
                        )
                        .unwrap();
                        let call_id = std::str::from_utf8(&out[..n])
                            .unwrap()
                            .lines()
                            .find(|l| l.starts_with("Call-ID:"))
                            .unwrap()
                            .to_owned();
                        let resp = format!("SIP/2.0 {code} X\r\n{call_id}\r\n\r\n");
                        let r = recognise_probe_response(resp.as_bytes()).unwrap();
                        self.health.handle_probe_response(
                            r.backend, r.seq, r.code, at, &self.pool, &self.bl,
                        );
                    }
                }
            }
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn alive_codes() {
        let d = AliveCodes::default();
        for (code, alive) in [
            (100, false),
            (200, true),
            (302, true),
            (404, true),
            (408, false),
            (500, false),
            (503, false),
            (99, false),
            (700, false),
        ] {
            assert_eq!(d.contains(code), alive, "{code}");
        }
        let only_200 = AliveCodes::none().with_range(200, 200);
        assert!(only_200.contains(200) && !only_200.contains(404));
    }

    #[test]
    fn silent_member_goes_down_then_comes_back() {
        let mut r = rig(HealthConfig::default());
        let [a, b] = [r.pool.backends()[0].id(), r.pool.backends()[1].id()];
        let mut now = r.t0;
        let mut down_at = None;
        let mut up_at = None;
        // a never answers for 4 s, then answers 200; b always answers.
        while now < r.t0 + Duration::from_secs(10) {
            let events = r.tick(now);
            for e in &events {
                match *e {
                    HealthEvent::Down { backend, reason } => {
                        assert_eq!((backend, reason), (a, BlockReason::Timeout));
                        down_at = Some(now);
                    }
                    HealthEvent::Up { backend } => {
                        assert_eq!(backend, a);
                        up_at = Some(now);
                    }
                    HealthEvent::ProbeDue { .. } => {}
                }
            }
            r.answer(&events, b, 200, now + ms(5));
            if now >= r.t0 + Duration::from_secs(4) {
                r.answer(&events, a, 200, now + ms(5));
            }
            now = r.health.poll_timeout().unwrap().max(now + ms(1));
        }
        let down_at = down_at.expect("a went down");
        // Two timed-out probes: the first sent at t0, each waits 1 s.
        assert!(
            down_at <= r.t0 + Duration::from_secs(3),
            "{:?}",
            down_at - r.t0
        );
        let up_at = up_at.expect("a came back");
        assert!(up_at > r.t0 + Duration::from_secs(4) && up_at <= r.t0 + Duration::from_secs(7));
        assert!(r.pool.by_id(a).unwrap().is_up());
        assert!(r.pool.by_id(b).unwrap().is_up());
        assert!(!r.bl.is_blocked(r.pool.by_id(a).unwrap().addr(), now));
        let st = r.health.status(a).unwrap();
        assert_eq!(st.last_rtt, Some(ms(5)));
        assert!(st.probes_failed >= 2);
    }

    #[test]
    fn down_member_is_out_of_selection_and_blacklisted() {
        let mut r = rig(HealthConfig {
            down_after: 1,
            ..HealthConfig::default()
        });
        let a = r.pool.backends()[0].id();
        let events = r.tick(r.t0);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, HealthEvent::ProbeDue { backend, .. } if *backend == a))
        );
        r.answer(&events, a, 500, r.t0 + ms(3));
        let events: Vec<_> = std::iter::from_fn(|| r.health.poll_event()).collect();
        assert_eq!(
            events,
            [HealthEvent::Down {
                backend: a,
                reason: BlockReason::ProbeFailed
            }]
        );
        let addr = r.pool.by_id(a).unwrap().addr();
        assert!(r.bl.is_blocked(addr, r.t0 + ms(3)));
        for i in 0..50 {
            let c = format!("call-{i}");
            let chosen = r.pool.select(c.as_bytes(), r.t0 + ms(3), &r.bl).unwrap();
            assert_ne!(chosen.id(), a);
        }
    }

    #[test]
    fn readmission_lifts_transport_blocks_but_not_retry_after() {
        let mut r = rig(HealthConfig {
            down_after: 1,
            up_after: 1,
            ..HealthConfig::default()
        });
        let [a, b] = [r.pool.backends()[0].id(), r.pool.backends()[1].id()];
        let addr_of = |r: &Rig, id| r.pool.by_id(id).map(|m| m.addr());
        let (Some(addr_a), Some(addr_b)) = (addr_of(&r, a), addr_of(&r, b)) else {
            panic!("rig has two members");
        };
        // Both go down on a failed probe; then shards see more failures: a stream of ICMP
        // unreachables for a (a long back-off), a 503 with Retry-After for b.
        let ev = r.tick(r.t0);
        r.answer(&ev, a, 500, r.t0 + ms(1));
        r.answer(&ev, b, 500, r.t0 + ms(1));
        for _ in 0..6 {
            r.bl.report(addr_a, BlockReason::IcmpUnreachable, r.t0 + ms(2));
        }
        r.bl.report(
            addr_b,
            BlockReason::Status503 {
                retry_after: Some(120),
            },
            r.t0 + ms(2),
        );
        // Both answer the next probe again and are re-admitted.
        let mut now = r.t0;
        while !(r.pool.by_id(a).is_some_and(|m| m.is_up())
            && r.pool.by_id(b).is_some_and(|m| m.is_up()))
        {
            assert!(now < r.t0 + Duration::from_secs(60), "never re-admitted");
            now = r.health.poll_timeout().unwrap_or(now).max(now + ms(1));
            let ev = r.tick(now);
            r.answer(&ev, a, 200, now + ms(1));
            r.answer(&ev, b, 200, now + ms(1));
        }
        let now = now + ms(2);
        assert!(
            !r.bl.is_blocked(addr_a, now),
            "the probes disproved the transport failures"
        );
        assert!(
            r.bl.is_blocked(addr_b, now),
            "the backend's own Retry-After still holds"
        );
    }

    #[test]
    fn passive_refusal_triggers_immediate_probe() {
        // A long interval: only the passive signal can cause the second probe in this test.
        let mut r = rig(HealthConfig {
            interval: Duration::from_secs(10),
            ..HealthConfig::default()
        });
        let a = r.pool.backends()[0].id();
        let ev = r.tick(r.t0);
        assert!(matches!(ev[..], [HealthEvent::ProbeDue { backend, .. }] if backend == a));
        r.answer(&ev, a, 200, r.t0 + ms(2));
        let t = r.t0 + Duration::from_secs(1);
        r.health
            .handle_passive(a, BlockReason::ConnectRefused, t, &r.pool, &r.bl);
        let ev: Vec<_> = std::iter::from_fn(|| r.health.poll_event()).collect();
        assert!(matches!(ev[..], [HealthEvent::ProbeDue { backend, .. }] if backend == a));
        // One failure so far (down_after is 2): still up.
        assert!(r.pool.by_id(a).unwrap().is_up());
        assert_eq!(r.health.poll_timeout(), Some(t + Duration::from_secs(1)));
        // The unanswered probe is the second failure: down one probe timeout later.
        let ev = r.tick(t + Duration::from_secs(1));
        assert_eq!(
            ev,
            [HealthEvent::Down {
                backend: a,
                reason: BlockReason::Timeout
            }]
        );
        assert!(!r.pool.by_id(a).unwrap().is_up());
    }

    #[test]
    fn stale_and_provisional_responses_are_ignored() {
        let mut r = rig(HealthConfig {
            down_after: 1,
            ..HealthConfig::default()
        });
        let a = r.pool.backends()[0].id();
        let ev = r.tick(r.t0);
        let seq = ev
            .iter()
            .find_map(|e| match *e {
                HealthEvent::ProbeDue { backend, seq, .. } if backend == a => Some(seq),
                _ => None,
            })
            .unwrap();
        r.health
            .handle_probe_response(a, seq, 100, r.t0, &r.pool, &r.bl);
        r.health
            .handle_probe_response(a, seq + 1000, 500, r.t0, &r.pool, &r.bl);
        assert!(r.health.poll_event().is_none());
        assert!(r.pool.by_id(a).unwrap().is_up());
        r.health
            .handle_send_failure(a, seq, BlockReason::SendError, r.t0, &r.pool, &r.bl);
        assert_eq!(
            r.health.poll_event(),
            Some(HealthEvent::Down {
                backend: a,
                reason: BlockReason::SendError
            })
        );
    }

    #[test]
    fn reload_keeps_state_of_remaining_members() {
        let mut r = rig(HealthConfig {
            down_after: 1,
            ..HealthConfig::default()
        });
        let a = r.pool.backends()[0].id();
        let ev = r.tick(r.t0);
        r.answer(&ev, a, 503, r.t0);
        assert!(!r.pool.by_id(a).unwrap().is_up());
        let next = Pool::new(&[
            BackendSpec::from_uri("sip:127.0.0.1:5070").unwrap(),
            BackendSpec::from_uri("sip:127.0.0.1:5072").unwrap(),
        ])
        .unwrap();
        r.health.sync(&next, r.t0);
        assert!(!next.by_id(a).unwrap().is_up());
        assert_eq!(r.health.members().count(), 2);
        assert!(r.health.members().any(|m| m.addr.port() == 5072 && m.up));
    }

    #[test]
    fn probing_disabled_schedules_nothing() {
        let mut r = rig(HealthConfig {
            probing: false,
            ..HealthConfig::default()
        });
        assert_eq!(r.health.poll_timeout(), None);
        assert!(r.tick(r.t0 + Duration::from_secs(5)).is_empty());
    }
}
