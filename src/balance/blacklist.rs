//! The destination blacklist shared by every shard.
//!
//! One `Arc<Blacklist>` is handed to all shards. Readers do one lock-free pointer load
//! ([`arc_swap::ArcSwap::load`]) and a binary search in an immutable snapshot; writers build a
//! new snapshot and swap it in with a compare-and-swap loop, so neither side ever blocks the
//! other. A failure reported on one shard is therefore seen by every other shard on its next
//! lookup. Writes happen only on failures (rare next to lookups), so copying a snapshot of at
//! most `capacity` entries per write is cheap where it matters.
//!
//! This is the failure cache that RFC 3263 §4.3 and the SIP WG's non-INVITE transaction work
//! ask for ("the next SHOULD be tried"), with a weighted back-off: an address that keeps failing
//! stays out longer, up to a cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};

use crate::metrics::BlacklistReason;

/// Why an address was blacklisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockReason {
    /// ICMP destination/port unreachable reported for a UDP send (IP_RECVERR).
    IcmpUnreachable,
    /// A TCP/TLS connection attempt was refused.
    ConnectRefused,
    /// An established TCP/TLS connection was reset.
    Reset,
    /// The kernel rejected a send for another reason.
    SendError,
    /// The backend answered 503 (RFC 3261 §21.5.4), honouring Retry-After (§20.33) when given.
    Status503 {
        /// Seconds from the Retry-After header, if present.
        retry_after: Option<u32>,
    },
    /// A transaction toward the address timed out without any response.
    Timeout,
    /// Active OPTIONS probing declared the backend down.
    ProbeFailed,
    /// Blocked by an operator or by configuration.
    Administrative,
}

impl BlockReason {
    /// A short stable label, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::IcmpUnreachable => "icmp_unreachable",
            Self::ConnectRefused => "connect_refused",
            Self::Reset => "reset",
            Self::SendError => "send_error",
            Self::Status503 { .. } => "status_503",
            Self::Timeout => "timeout",
            Self::ProbeFailed => "probe_failed",
            Self::Administrative => "administrative",
        }
    }

    /// The `sipedge_blacklist_entries{reason}` label this reason is counted under.
    pub fn metric_reason(self) -> BlacklistReason {
        match self {
            Self::IcmpUnreachable => BlacklistReason::IcmpUnreachable,
            Self::ConnectRefused => BlacklistReason::ConnectRefused,
            Self::Reset => BlacklistReason::Reset,
            Self::SendError => BlacklistReason::SendError,
            Self::Status503 { .. } => BlacklistReason::Status503,
            Self::Timeout => BlacklistReason::Timeout,
            Self::ProbeFailed => BlacklistReason::ProbeFailed,
            Self::Administrative => BlacklistReason::Administrative,
        }
    }

    /// How much one failure of this kind counts: hard network evidence (nothing listening)
    /// weighs more than a lost message, which may be a transient drop.
    fn weight(self) -> u32 {
        match self {
            Self::IcmpUnreachable | Self::ConnectRefused | Self::ProbeFailed => 2,
            Self::Reset | Self::SendError | Self::Timeout | Self::Administrative => 1,
            Self::Status503 { .. } => 1,
        }
    }
}

/// Tuning of the blacklist back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlacklistConfig {
    /// Block time of a first failure of weight 1; each further failure while remembered
    /// doubles it.
    pub base: Duration,
    /// Longest block a failure (or a Retry-After) can cause.
    pub max: Duration,
    /// A failure is forgotten (the back-off restarts at `base`) once the address has been
    /// clear for this long.
    pub forget_after: Duration,
    /// Most addresses tracked at once; when full, the entry expiring first is dropped.
    pub capacity: usize,
}

impl Default for BlacklistConfig {
    /// 2 s first block, 5 min cap, history forgotten after 10 min, 4096 addresses.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
            forget_after: Duration::from_secs(600),
            capacity: 4096,
        }
    }
}

/// One blacklisted (or recently blacklisted) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// The destination.
    pub addr: SocketAddr,
    /// Reason of the latest failure.
    pub reason: BlockReason,
    /// The address is blocked until this instant.
    pub until: Instant,
    /// Failures counted toward the back-off (decays after `forget_after`).
    pub strikes: u32,
    /// When the latest failure was reported.
    pub last_failure: Instant,
}

impl BlacklistEntry {
    /// Whether this entry blocks its address at `now`.
    pub fn is_active(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// Immutable set of entries, sorted by address for binary search.
#[derive(Debug, Default)]
struct Snapshot {
    // INVARIANT: sorted by `addr`, no duplicate addresses, len <= capacity.
    entries: Box<[BlacklistEntry]>,
}

impl Snapshot {
    fn find(&self, addr: SocketAddr) -> Option<&BlacklistEntry> {
        self.entries
            .binary_search_by(|e| e.addr.cmp(&addr))
            .ok()
            .and_then(|i| self.entries.get(i))
    }
}

/// Upper bound on any configured `max` (one day).
const MAX_HOLD: Duration = Duration::from_secs(86_400);

/// The shared destination blacklist (see the module docs).
#[derive(Debug)]
pub struct Blacklist {
    config: BlacklistConfig,
    current: ArcSwap<Snapshot>,
}

impl Default for Blacklist {
    fn default() -> Self {
        Self::new(BlacklistConfig::default())
    }
}

impl Blacklist {
    /// An empty blacklist.
    pub fn new(config: BlacklistConfig) -> Self {
        Self {
            config: BlacklistConfig {
                capacity: config.capacity.max(1),
                // Keeps `now + hold` far from Instant's range limit.
                max: config.max.min(MAX_HOLD),
                ..config
            },
            current: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &BlacklistConfig {
        &self.config
    }

    /// Whether `addr` is blocked at `now`. One atomic load and a binary search; no lock,
    /// no allocation.
    pub fn is_blocked(&self, addr: SocketAddr, now: Instant) -> bool {
        self.view().is_blocked(addr, now)
    }

    /// A consistent read view, for callers that look up several addresses at once (pool
    /// selection does one load per selection, not one per member).
    pub fn view(&self) -> BlacklistView {
        BlacklistView {
            snapshot: self.current.load(),
        }
    }

    /// Records a failure of `addr` and returns the instant until which it is now blocked.
    ///
    /// The block lasts `base * weight(reason) * 2^(strikes-1)`, capped at `max`; strikes
    /// accumulate while failures keep coming and reset after `forget_after` without one.
    /// A 503 with Retry-After blocks for exactly that long (capped at `max`), RFC 3261 §21.5.4.
    pub fn report(&self, addr: SocketAddr, reason: BlockReason, now: Instant) -> Instant {
        let mut until = now;
        self.current.rcu(|old| {
            let previous = old.find(addr);
            let strikes = match previous {
                Some(p) if now.saturating_duration_since(p.until) < self.config.forget_after => {
                    p.strikes.saturating_add(reason.weight())
                }
                _ => reason.weight(),
            };
            let hold = self.hold_for(reason, strikes);
            // A new report never shortens a block already in force (e.g. a long Retry-After).
            let new_until = previous
                .map(|p| p.until)
                .filter(|&u| u > now + hold)
                .unwrap_or(now + hold);
            until = new_until;
            let entry = BlacklistEntry {
                addr,
                reason,
                until: new_until,
                strikes,
                last_failure: now,
            };
            Arc::new(self.with_entry(old, entry, now))
        });
        until
    }

    /// Removes `addr` (e.g. a probe succeeded, or an operator cleared it); its back-off
    /// history is forgotten too.
    pub fn clear(&self, addr: SocketAddr) {
        self.current.rcu(|old| {
            if old.find(addr).is_none() {
                return Arc::clone(old);
            }
            let entries: Box<[BlacklistEntry]> = old
                .entries
                .iter()
                .filter(|e| e.addr != addr)
                .copied()
                .collect();
            Arc::new(Snapshot { entries })
        });
    }

    /// Every tracked entry (active or only remembered), sorted by address, for metrics.
    pub fn snapshot(&self) -> Vec<BlacklistEntry> {
        self.current.load().entries.to_vec()
    }

    /// Calls `f` on each tracked entry without copying the table.
    pub fn for_each(&self, f: impl FnMut(&BlacklistEntry)) {
        let snap = self.current.load();
        snap.entries.iter().for_each(f);
    }

    /// Active entries at `now` per metrics reason, indexed like [`BlacklistReason::ALL`], for
    /// [`crate::metrics::Metrics::set_blacklist_entries`].
    pub fn active_by_reason(&self, now: Instant) -> [u64; BlacklistReason::COUNT] {
        let mut counts = [0u64; BlacklistReason::COUNT];
        self.for_each(|e| {
            if e.is_active(now) {
                if let Some(c) = counts.get_mut(e.reason.metric_reason() as usize) {
                    *c += 1;
                }
            }
        });
        counts
    }

    fn hold_for(&self, reason: BlockReason, strikes: u32) -> Duration {
        if let BlockReason::Status503 {
            retry_after: Some(secs),
        } = reason
        {
            return Duration::from_secs(u64::from(secs)).min(self.config.max);
        }
        // strikes >= 1; the doubling exponent is capped so the shift cannot overflow.
        let doublings = strikes.saturating_sub(1).min(30);
        self.config
            .base
            .saturating_mul(1u32 << doublings)
            .min(self.config.max)
    }

    /// A copy of `old` with `entry` inserted or replaced, stale history pruned, and the table
    /// kept within capacity.
    fn with_entry(&self, old: &Snapshot, entry: BlacklistEntry, now: Instant) -> Snapshot {
        let forget = self.config.forget_after;
        let mut entries: Vec<BlacklistEntry> = Vec::with_capacity(old.entries.len() + 1);
        entries.extend(
            old.entries.iter().copied().filter(|e| {
                e.addr != entry.addr && now.saturating_duration_since(e.until) < forget
            }),
        );
        while entries.len() >= self.config.capacity {
            // Drop the entry whose block ends first: it is the least useful one to keep.
            let Some(victim) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.until)
                .map(|(i, _)| i)
            else {
                break;
            };
            entries.swap_remove(victim);
        }
        entries.push(entry);
        entries.sort_unstable_by_key(|a| a.addr);
        Snapshot {
            entries: entries.into_boxed_slice(),
        }
    }
}

/// A read view of the blacklist at one moment (one pointer load). Hold it only briefly: it
/// keeps its snapshot alive.
pub struct BlacklistView {
    snapshot: Guard<Arc<Snapshot>>,
}

impl BlacklistView {
    /// Whether `addr` is blocked at `now` in this view.
    pub fn is_blocked(&self, addr: SocketAddr, now: Instant) -> bool {
        if self.snapshot.entries.is_empty() {
            return false;
        }
        self.snapshot.find(addr).is_some_and(|e| e.is_active(now))
    }

    /// The entry for `addr`, active or remembered.
    pub fn entry(&self, addr: SocketAddr) -> Option<BlacklistEntry> {
        self.snapshot.find(addr).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 5000 + i))
    }

    fn config() -> BlacklistConfig {
        BlacklistConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(20),
            forget_after: Duration::from_secs(60),
            capacity: 8,
        }
    }

    #[test]
    fn block_expires() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        assert!(!bl.is_blocked(addr(1), t0));
        let until = bl.report(addr(1), BlockReason::Timeout, t0);
        assert_eq!(until, t0 + Duration::from_secs(1));
        assert!(bl.is_blocked(addr(1), t0));
        assert!(!bl.is_blocked(addr(2), t0));
        assert!(!bl.is_blocked(addr(1), until));
    }

    #[test]
    fn back_off_grows_caps_and_is_forgotten() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        let mut now = t0;
        let mut holds = Vec::new();
        for _ in 0..8 {
            let until = bl.report(addr(1), BlockReason::SendError, now);
            holds.push(until - now);
            now = until;
        }
        let secs: Vec<u64> = holds.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 20, 20, 20]);
        // Clear for longer than forget_after: back to the base.
        now += Duration::from_secs(61);
        let until = bl.report(addr(1), BlockReason::SendError, now);
        assert_eq!(until - now, Duration::from_secs(1));
    }

    #[test]
    fn hard_failures_weigh_more() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        let until = bl.report(addr(1), BlockReason::ConnectRefused, t0);
        assert_eq!(until - t0, Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        let r = |s| BlockReason::Status503 {
            retry_after: Some(s),
        };
        assert_eq!(bl.report(addr(1), r(7), t0) - t0, Duration::from_secs(7));
        assert_eq!(
            bl.report(addr(2), r(3600), t0) - t0,
            Duration::from_secs(20)
        );
        // A later short failure does not shorten the Retry-After block.
        assert_eq!(
            bl.report(addr(1), BlockReason::Timeout, t0) - t0,
            Duration::from_secs(7)
        );
        let e = bl.view().entry(addr(1)).unwrap();
        assert_eq!(e.reason, BlockReason::Timeout);
    }

    #[test]
    fn clear_and_capacity() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        bl.report(addr(1), BlockReason::Reset, t0);
        bl.clear(addr(1));
        assert!(!bl.is_blocked(addr(1), t0));
        assert!(bl.snapshot().is_empty());
        for i in 0..20 {
            bl.report(
                addr(i),
                BlockReason::Reset,
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        let snap = bl.snapshot();
        assert_eq!(snap.len(), 8);
        // The most recent reports are the ones kept.
        assert!(bl.is_blocked(addr(19), t0));
        assert!(!bl.is_blocked(addr(0), t0));
        assert!(snap.windows(2).all(|w| w[0].addr < w[1].addr));
    }

    #[test]
    fn active_entries_counted_per_metric_reason() {
        let bl = Blacklist::new(config());
        let t0 = Instant::now();
        bl.report(addr(1), BlockReason::IcmpUnreachable, t0);
        bl.report(addr(2), BlockReason::ConnectRefused, t0);
        bl.report(addr(3), BlockReason::Reset, t0);
        bl.report(addr(4), BlockReason::Timeout, t0);
        // Weight-1 failures (reset, timeout) are out for 1 s, weight-2 ones for 2 s.
        let counts = bl.active_by_reason(t0 + Duration::from_millis(1500));
        let get =
            |r: BlacklistReason| counts[BlacklistReason::ALL.iter().position(|&x| x == r).unwrap()];
        assert_eq!(get(BlacklistReason::IcmpUnreachable), 1);
        assert_eq!(get(BlacklistReason::ConnectRefused), 1);
        // Expired: remembered for the back-off, not counted.
        assert_eq!(get(BlacklistReason::Reset), 0);
        assert_eq!(get(BlacklistReason::Timeout), 0);
        assert_eq!(counts.iter().sum::<u64>(), 2);
    }

    #[test]
    fn one_report_seen_by_other_threads() {
        let bl = Arc::new(Blacklist::new(config()));
        let t0 = Instant::now();
        let writer = {
            let bl = Arc::clone(&bl);
            std::thread::spawn(move || {
                for i in 0..8 {
                    bl.report(addr(i), BlockReason::IcmpUnreachable, t0);
                }
            })
        };
        writer.join().unwrap();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let bl = Arc::clone(&bl);
                std::thread::spawn(move || (0..8).all(|i| bl.is_blocked(addr(i), t0)))
            })
            .collect();
        for r in readers {
            assert!(r.join().unwrap());
        }
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let bl = Arc::new(Blacklist::new(BlacklistConfig {
            capacity: 64,
            ..config()
        }));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let bl = Arc::clone(&bl);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        bl.report(addr(t * 10 + i), BlockReason::Reset, t0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(bl.snapshot().len(), 40);
    }
}
