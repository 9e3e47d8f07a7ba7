//! The backend pool and weighted rendezvous (highest random weight) selection.
//!
//! Every member gets a score per Call-ID, `weight / -ln(u)` with `u` a uniform hash of the
//! Call-ID and the member's id in (0, 1); the highest score wins. This is weighted rendezvous
//! hashing (Schindelhauer & Schomaker's logarithmic method): each member wins a share of calls
//! proportional to its weight, and adding or removing one member moves only the calls that it
//! wins or won, about 1/n of them, while no other call changes owner. The order of scores is
//! also the failover order ("next in hash order").

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::backend::{Backend, BackendId, BackendSpec, mix64};
use super::blacklist::{Blacklist, BlacklistView};
use crate::shard::fnv1a64;

/// Why a pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Two specs have the same id (two identical entries, or an explicit id reused).
    #[error("duplicate backend id {0}")]
    DuplicateId(BackendId),
}

/// The set of backends new calls are spread over.
///
/// Built once per configuration and shared read-only by every shard (behind an `Arc`, swapped
/// on reload); only the members' up/drain flags change in place, atomically.
#[derive(Debug, Default)]
pub struct Pool {
    // INVARIANT: sorted by (priority, id).
    backends: Box<[Backend]>,
    // INVARIANT: contiguous, in order, covering `backends`; one range per distinct priority.
    groups: Box<[Group]>,
    // INVARIANT: sorted by id; indexes into `backends`.
    by_id: Box<[(BackendId, usize)]>,
    // INVARIANT: sorted by address; indexes into `backends`.
    by_addr: Box<[(SocketAddr, usize)]>,
}

impl Pool {
    /// Builds a pool from `specs`. Every member starts up (probing will say otherwise).
    pub fn new(specs: &[BackendSpec]) -> Result<Self, PoolError> {
        let mut backends: Vec<Backend> = specs.iter().map(Backend::new).collect();
        backends.sort_by_key(|b| (b.priority(), b.id()));
        let mut by_id: Vec<(BackendId, usize)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id(), i))
            .collect();
        by_id.sort_unstable();
        if let Some(w) = by_id.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(PoolError::DuplicateId(w[0].0));
        }
        let mut by_addr: Vec<(SocketAddr, usize)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.addr(), i))
            .collect();
        by_addr.sort_unstable();
        let mut groups = Vec::new();
        let mut start = 0;
        for i in 1..=backends.len() {
            if i == backends.len() || backends[i].priority() != backends[start].priority() {
                let mut weights = backends[start..i]
                    .iter()
                    .map(Backend::weight)
                    .filter(|&w| w > 0);
                let first = weights.next();
                let uniform = weights.all(|w| Some(w) == first);
                groups.push(Group {
                    start,
                    end: i,
                    uniform,
                });
                start = i;
            }
        }
        Ok(Self {
            backends: backends.into_boxed_slice(),
            groups: groups.into_boxed_slice(),
            by_id: by_id.into_boxed_slice(),
            by_addr: by_addr.into_boxed_slice(),
        })
    }

    /// Builds the pool for a new configuration, keeping the health state of members whose
    /// id is unchanged (ids are stable, so affinity tokens issued before still resolve).
    pub fn reload(&self, specs: &[BackendSpec]) -> Result<Self, PoolError> {
        let next = Self::new(specs)?;
        for b in next.backends.iter() {
            if let Some(old) = self.by_id(b.id()) {
                b.set_up(old.is_up());
            }
        }
        Ok(next)
    }

    /// All members, sorted by priority then id.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the pool has no member.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The member with this id, whatever its state: a dialog bound to a draining member by
    /// its affinity token still goes there.
    pub fn by_id(&self, id: BackendId) -> Option<&Backend> {
        let i = self.by_id.binary_search_by_key(&id, |&(k, _)| k).ok()?;
        self.by_id.get(i).and_then(|&(_, j)| self.backends.get(j))
    }

    /// The member whose resolved address is exactly `addr` (IP and port).
    pub fn by_addr(&self, addr: SocketAddr) -> Option<&Backend> {
        let i = self
            .by_addr
            .binary_search_by(|(k, _)| addr_order(k, &addr))
            .ok()?;
        self.by_addr.get(i).and_then(|&(_, j)| self.backends.get(j))
    }

    /// Whether `addr` (IP and port) is a member. A request from a backend is routed by its
    /// Route/Request-URI (RFC 3261 §16.5-16.6), not hashed back into the pool.
    ///
    /// The port counts: several backends (or a backend and a client) may share one IP. A TCP
    /// peer connecting from an ephemeral port is recognised with [`Pool::is_backend_ip`].
    pub fn is_backend(&self, addr: SocketAddr) -> bool {
        self.by_addr
            .binary_search_by(|(k, _)| addr_order(k, &addr))
            .is_ok()
    }

    /// Whether any member has the IP address `ip`, whatever the port.
    pub fn is_backend_ip(&self, ip: IpAddr) -> bool {
        // The address table is sorted by (ip, port), so the first address not below
        // (ip, 0) is the only candidate.
        let i = self
            .by_addr
            .partition_point(|&(a, _)| a < SocketAddr::new(ip, 0));
        self.by_addr.get(i).is_some_and(|&(a, _)| a.ip() == ip)
    }

    /// The backend for a new call with this Call-ID: the highest rendezvous score among the
    /// usable members (up, not draining, weight > 0, not blacklisted at `now`) of the most
    /// preferred priority group that has one. `None` when no member is usable (answer 503).
    ///
    /// Allocates nothing and takes no lock: one blacklist pointer load, one pass over the
    /// members.
    pub fn select(&self, call_id: &[u8], now: Instant, blacklist: &Blacklist) -> Option<&Backend> {
        self.candidates(call_id, now, blacklist).next()
    }

    /// The member a call with this Call-ID belongs to when every member is healthy: the top
    /// rendezvous score of the most preferred group with a member of non-zero weight,
    /// ignoring health, drain and blacklist. When [`Pool::select`] returns another member the
    /// call failed over (the `sipedge_backend_failovers_total` counter of this one).
    pub fn home(&self, call_id: &[u8]) -> Option<&Backend> {
        let key = call_key(call_id);
        let group = self.groups.iter().find(|g| {
            self.backends
                .get(g.start..g.end)
                .is_some_and(|members| members.iter().any(|b| b.weight() > 0))
        })?;
        let mut best: Option<(f64, usize)> = None;
        for i in group.start..group.end {
            let Some(b) = self.backends.get(i).filter(|b| b.weight() > 0) else {
                continue;
            };
            let s = Self::score(b, key, group.uniform);
            if best.is_none_or(|best| ranks_after(best, (s, i))) {
                best = Some((s, i));
            }
        }
        best.and_then(|(_, i)| self.backends.get(i))
    }

    /// Like [`Pool::select`], skipping the members in `tried` (failover after they failed
    /// this transaction): the next usable member in hash order.
    pub fn select_excluding(
        &self,
        call_id: &[u8],
        now: Instant,
        blacklist: &Blacklist,
        tried: &[BackendId],
    ) -> Option<&Backend> {
        self.candidates(call_id, now, blacklist)
            .find(|b| !tried.contains(&b.id()))
    }

    /// Every usable member in failover order for this Call-ID: the preferred priority group
    /// by descending score, then the next group, and so on. The first item is what
    /// [`Pool::select`] returns. Allocates nothing; each step is one pass over a group.
    pub fn candidates<'p>(
        &'p self,
        call_id: &[u8],
        now: Instant,
        blacklist: &Blacklist,
    ) -> Candidates<'p> {
        Candidates {
            pool: self,
            view: blacklist.view(),
            now,
            key: call_key(call_id),
            group: 0,
            last: None,
        }
    }

    /// The member's rendezvous score for a call key; higher wins. Within a group of equal
    /// weights `weight / -ln(u)` orders members exactly as `u` does, so the logarithm is
    /// skipped there (scores are only ever compared within one group).
    fn score(backend: &Backend, key: u64, uniform: bool) -> f64 {
        let h = mix64(key ^ backend.seed);
        if uniform {
            return (h >> 11) as f64;
        }
        // 53 high bits -> uniform in (0, 1), never 0 or 1, so ln() is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        f64::from(backend.weight()) / -u.ln()
    }
}

/// One priority group: `backends[start..end]`.
#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    /// Every member with a non-zero weight has the same weight.
    uniform: bool,
}

/// Hash of a Call-ID for rendezvous scoring. Salted so that it is independent of the
/// shard mapping ([`crate::shard::shard_of`]), which hashes the same bytes.
fn call_key(call_id: &[u8]) -> u64 {
    mix64(fnv1a64(call_id) ^ 0x243f_6a88_85a3_08d3)
}

/// Usable members in failover order (see [`Pool::candidates`]).
pub struct Candidates<'p> {
    pool: &'p Pool,
    view: BlacklistView,
    now: Instant,
    key: u64,
    group: usize,
    /// Score and index of the member returned last within the current group.
    last: Option<(f64, usize)>,
}

impl<'p> Iterator for Candidates<'p> {
    type Item = &'p Backend;

    fn next(&mut self) -> Option<&'p Backend> {
        let pool = self.pool;
        while let Some(&Group {
            start,
            end,
            uniform,
        }) = pool.groups.get(self.group)
        {
            let mut best: Option<(f64, usize)> = None;
            for (i, b) in pool.backends.iter().enumerate().take(end).skip(start) {
                if !b.accepts_new_calls() {
                    continue;
                }
                let s = Pool::score(b, self.key, uniform);
                // Strictly after the previous pick in (score desc, index asc) order.
                if let Some(last) = self.last {
                    if !ranks_after((s, i), last) {
                        continue;
                    }
                }
                if best.is_some_and(|best| !ranks_after(best, (s, i))) {
                    continue;
                }
                if self.view.is_blocked(b.addr(), self.now) {
                    continue;
                }
                best = Some((s, i));
            }
            if let Some((s, i)) = best {
                self.last = Some((s, i));
                return pool.backends.get(i);
            }
            self.group += 1;
            self.last = None;
        }
        None
    }
}

/// Whether `a` comes after `b` in (score descending, index ascending) order.
fn ranks_after(a: (f64, usize), b: (f64, usize)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// `a.cmp(b)` in `SocketAddr`'s own order (the address table is sorted by it), with two
/// IPv4 addresses compared as two integers: every request and response looks its source up,
/// and the general comparison went through the enum and the octets.
#[inline]
fn addr_order(a: &SocketAddr, b: &SocketAddr) -> std::cmp::Ordering {
    match (a, b) {
        (SocketAddr::V4(a), SocketAddr::V4(b)) => {
            (a.ip().to_bits(), a.port()).cmp(&(b.ip().to_bits(), b.port()))
        }
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::{BlockReason, Transport};

    #[test]
    fn addr_order_is_the_socket_address_order() {
        let addrs: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "127.0.0.1:5060",
            "127.0.0.1:5061",
            "127.0.0.2:5060",
            "192.0.2.70:5070",
            "192.0.2.70:1",
            "255.255.255.255:65535",
            "10.0.0.1:5060",
            "[::1]:5060",
            "[::1]:5061",
            "[2001:db8::1]:5060",
            "[::ffff:127.0.0.1]:5060",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for a in &addrs {
            for b in &addrs {
                assert_eq!(addr_order(a, b), a.cmp(b), "{a} {b}");
            }
        }
    }

    fn spec(i: u8, weight: u32, priority: u16) -> BackendSpec {
        BackendSpec {
            id: None,
            uri: format!("sip:10.0.0.{i}:5060"),
            addr: SocketAddr::from(([10, 0, 0, i], 5060)),
            transport: Transport::Udp,
            weight,
            priority,
            drain: false,
        }
    }

    fn call(i: u32) -> String {
        format!("{i:x}-8cf2@client.example.com")
    }

    #[test]
    fn selection_is_deterministic_and_skips_unusable() {
        let pool = Pool::new(&[spec(1, 1, 0), spec(2, 1, 0), spec(3, 1, 0)]).unwrap();
        let bl = Blacklist::default();
        let now = Instant::now();
        for i in 0..200 {
            let c = call(i);
            let a = pool.select(c.as_bytes(), now, &bl).unwrap().id();
            assert_eq!(pool.select(c.as_bytes(), now, &bl).unwrap().id(), a);
            // Down, drained and blacklisted members are skipped, and the call moves to the
            // next in hash order.
            let order: Vec<BackendId> = pool
                .candidates(c.as_bytes(), now, &bl)
                .map(Backend::id)
                .collect();
            assert_eq!(order.len(), 3);
            assert_eq!(order[0], a);
            let first = pool.by_id(a).unwrap();
            first.set_up(false);
            assert_eq!(pool.select(c.as_bytes(), now, &bl).unwrap().id(), order[1]);
            first.set_up(true);
            first.set_draining(true);
            assert_eq!(pool.select(c.as_bytes(), now, &bl).unwrap().id(), order[1]);
            first.set_draining(false);
            assert_eq!(
                pool.select_excluding(c.as_bytes(), now, &bl, &[order[0], order[1]])
                    .unwrap()
                    .id(),
                order[2]
            );
        }
        let c = call(7);
        let first = pool.select(c.as_bytes(), now, &bl).unwrap();
        bl.report(first.addr(), BlockReason::Timeout, now);
        let other = pool.select(c.as_bytes(), now, &bl).unwrap();
        assert_ne!(other.id(), first.id());
        // Once the block expires the call goes home again.
        let later = now + Duration::from_secs(3);
        assert_eq!(
            pool.select(c.as_bytes(), later, &bl).unwrap().id(),
            first.id()
        );
    }

    #[test]
    fn home_is_the_choice_of_a_healthy_pool() {
        let pool = Pool::new(&[spec(1, 1, 0), spec(2, 2, 0), spec(3, 1, 1)]).unwrap();
        let bl = Blacklist::default();
        let now = Instant::now();
        for i in 0..200 {
            let c = call(i);
            let chosen = pool.select(c.as_bytes(), now, &bl).unwrap().id();
            assert_eq!(pool.home(c.as_bytes()).unwrap().id(), chosen);
        }
        // Members down: home stays, the choice moves (a failover).
        pool.backends()[0].set_up(false);
        pool.backends()[1].set_up(false);
        let c = call(1);
        let home = pool.home(c.as_bytes()).unwrap();
        assert_eq!(home.priority(), 0);
        assert_eq!(pool.select(c.as_bytes(), now, &bl).unwrap().priority(), 1);
        assert!(Pool::new(&[spec(1, 0, 0)]).unwrap().home(b"x").is_none());
    }

    #[test]
    fn lower_priority_group_only_when_better_one_is_empty() {
        let pool = Pool::new(&[spec(1, 1, 0), spec(2, 1, 0), spec(3, 5, 1)]).unwrap();
        let bl = Blacklist::default();
        let now = Instant::now();
        for i in 0..100 {
            let b = pool.select(call(i).as_bytes(), now, &bl).unwrap();
            assert_eq!(b.priority(), 0);
        }
        let backup = pool.backends()[2].id();
        pool.backends()[0].set_up(false);
        bl.report(pool.backends()[1].addr(), BlockReason::Reset, now);
        for i in 0..100 {
            assert_eq!(
                pool.select(call(i).as_bytes(), now, &bl).unwrap().id(),
                backup
            );
        }
        pool.backends()[2].set_draining(true);
        assert!(pool.select(call(1).as_bytes(), now, &bl).is_none());
    }

    #[test]
    fn lookups_by_id_and_address() {
        let mut specs = vec![spec(1, 1, 0), spec(2, 1, 0)];
        specs.push(BackendSpec {
            addr: SocketAddr::from(([10, 0, 0, 1], 5070)),
            uri: "sip:10.0.0.1:5070".into(),
            ..spec(1, 1, 0)
        });
        let pool = Pool::new(&specs).unwrap();
        for s in &specs {
            let b = pool.by_id(s.backend_id()).unwrap();
            assert_eq!(b.addr(), s.addr);
            assert!(pool.is_backend(s.addr));
            assert_eq!(pool.by_addr(s.addr).unwrap().id(), b.id());
        }
        assert!(!pool.is_backend(SocketAddr::from(([10, 0, 0, 1], 5071))));
        assert!(pool.is_backend_ip([10, 0, 0, 1].into()));
        assert!(pool.is_backend_ip([10, 0, 0, 2].into()));
        assert!(!pool.is_backend_ip([10, 0, 0, 3].into()));
        assert!(pool.by_id(BackendId(0)).is_none());
        let dup = Pool::new(&[spec(1, 1, 0), spec(1, 2, 0)]);
        assert!(matches!(dup, Err(PoolError::DuplicateId(_))));
    }

    #[test]
    fn reload_keeps_ids_and_health() {
        let pool = Pool::new(&[spec(1, 1, 0), spec(2, 1, 0)]).unwrap();
        pool.backends()[0].set_up(false);
        let down = pool.backends()[0].id();
        let next = pool
            .reload(&[spec(1, 1, 0), spec(2, 1, 0), spec(3, 1, 0)])
            .unwrap();
        assert!(!next.by_id(down).unwrap().is_up());
        assert_eq!(next.len(), 3);
    }

    #[test]
    fn equal_weights_order_like_the_weighted_formula() {
        let uniform =
            Pool::new(&[spec(1, 3, 0), spec(2, 3, 0), spec(3, 3, 0), spec(4, 0, 0)]).unwrap();
        assert!(uniform.groups[0].uniform);
        let bl = Blacklist::default();
        let now = Instant::now();
        for i in 0..500 {
            let c = call(i);
            let fast: Vec<BackendId> = uniform
                .candidates(c.as_bytes(), now, &bl)
                .map(Backend::id)
                .collect();
            let key = call_key(c.as_bytes());
            let mut slow: Vec<(f64, BackendId)> = uniform
                .backends()
                .iter()
                .filter(|b| b.weight() > 0)
                .map(|b| (Pool::score(b, key, false), b.id()))
                .collect();
            slow.sort_by(|a, b| b.0.total_cmp(&a.0));
            let slow: Vec<BackendId> = slow.into_iter().map(|(_, id)| id).collect();
            assert_eq!(fast, slow);
        }
        let mixed = Pool::new(&[spec(1, 1, 0), spec(2, 2, 0)]).unwrap();
        assert!(!mixed.groups[0].uniform);
    }

    #[test]
    fn empty_pool_selects_nothing() {
        let pool = Pool::new(&[]).unwrap();
        assert!(pool.is_empty());
        assert!(
            pool.select(b"x", Instant::now(), &Blacklist::default())
                .is_none()
        );
    }
}
