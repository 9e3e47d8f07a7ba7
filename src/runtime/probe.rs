//! Active OPTIONS health probing of the backends (RFC 3261 §11), run by shard 0 only.
//!
//! The sans-IO [`Health`] machine decides when to probe and what the answers mean; this task
//! sends the probes and feeds back answers, send failures, timeouts and the passive failures
//! other shards saw on real traffic. UDP probes leave from a socket of their own (not a SIP
//! listener) whose address is in the probe's Via, so the answers come straight back to the
//! prober and never cost the message path a lookup. TCP probes use a short-lived connection
//! each, in a task of their own.
//!
//! A UDP probe allocates nothing: it is written into a buffer on the stack and sent with one
//! non-blocking `sendto`, and answers are read with `recvfrom` into one buffer that lives as
//! long as the prober. Probing goes on for the life of the process, so a per-probe task and
//! buffer would keep the allocator handing out blocks long after start, where a proxy's
//! memory must stay flat over weeks (`tests/perf_alloc.rs` counts probing's allocations with
//! the message path's: none).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::net::udp::UdpSocket;

use super::shard::Shared;
use super::sockopt;
use crate::balance::{
    AliveCodes, BackendId, BlockReason, Health, HealthConfig, HealthEvent, Pool, ProbeTarget,
    Transport, recognise_probe_response, write_probe,
};
use crate::metrics::{BackendState, ProbeResult};

/// Longest sleep of the prober between two looks at its state.
const TICK: Duration = Duration::from_millis(100);

/// Room for one probe request: an OPTIONS with two IPv6 socket addresses in it is under 600
/// bytes (`balance::write_probe`).
const PROBE_BUF: usize = 2048;

struct Prober {
    shared: Arc<Shared>,
    health: RefCell<Health>,
    /// Probes in flight: (backend, seq) → sent at.
    outstanding: RefCell<HashMap<(BackendId, u64), Instant>>,
    udp4: Option<(UdpSocket, SocketAddr)>,
    udp6: Option<(UdpSocket, SocketAddr)>,
    timeout: Duration,
    alive: AliveCodes,
    /// Added to the health machine's sequence number on the wire (Call-ID, branch, CSeq) and
    /// taken off again when an answer comes back. Random per process: the health machine
    /// numbers probes from 1 at every start, and RFC 3261 §8.1.1.4 / §8.1.1.7 want the
    /// Call-ID and branch unique across time. A restarted proxy that reused its predecessor's
    /// Call-IDs was answered at the predecessor's (closed) probe port by a UAS that keeps
    /// per-Call-ID state (sipp sends the response to the address it first saw for the
    /// Call-ID), so every probe timed out and the healthy backends were marked down.
    wire_base: u64,
}

/// A random probe sequence base for this process (see [`Prober::wire_base`]); std's hasher
/// keys are random per process, mixed with the time and the pid for good measure.
fn random_wire_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    // 40 random bits above the low 20: room for a million probes before the base's bits
    // change, and the CSeq (`seq mod 2^31`, RFC 3261 §8.1.1.5) still varies per probe.
    (h.finish() & ((1 << 40) - 1)) << 20
}

/// Runs the prober until the process exits. `listen_ips` are the IPs of the UDP listeners,
/// used as the probes' source where they are specific.
pub(crate) async fn run(shared: Arc<Shared>, config: HealthConfig, listen_ips: Vec<IpAddr>) {
    let pool = shared.pool.load_full();
    let bind = |v6: bool| -> Option<(UdpSocket, SocketAddr)> {
        let ip = listen_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6 && !ip.is_unspecified())
            .or_else(|| {
                // A wildcard listener: probe from the address the kernel would route from.
                let target = pool.backends().iter().find(|b| b.addr().is_ipv6() == v6)?;
                let unspecified: SocketAddr = if v6 {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let probe = std::net::UdpSocket::bind(unspecified).ok()?;
                probe.connect(target.addr()).ok()?;
                probe.local_addr().ok().map(|a| a.ip())
            })?;
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
        let local = sock.local_addr().ok()?;
        Some((sock, local))
    };
    let prober = Rc::new(Prober {
        health: RefCell::new(Health::new(config, &pool, Instant::now())),
        outstanding: RefCell::new(HashMap::new()),
        udp4: bind(false),
        udp6: bind(true),
        timeout: config.timeout,
        alive: config.alive_codes,
        wire_base: random_wire_base(),
        shared,
    });
    for v6 in [false, true] {
        let p = Rc::clone(&prober);
        monoio::spawn(async move { receive_loop(p, v6).await });
    }
    let mut epoch = prober.shared.pool_epoch.load(Ordering::SeqCst);
    loop {
        let now = Instant::now();
        let pool = prober.shared.pool.load_full();
        let current = prober.shared.pool_epoch.load(Ordering::SeqCst);
        if current != epoch {
            epoch = current;
            prober.health.borrow_mut().sync(&pool, now);
        }
        while let Some((addr, reason)) = prober.shared.passive.pop() {
            if let Some(b) = pool.by_addr(addr) {
                prober.health.borrow_mut().handle_passive(
                    b.id(),
                    reason,
                    now,
                    &pool,
                    &prober.shared.blacklist,
                );
            }
        }
        prober
            .health
            .borrow_mut()
            .handle_timeout(now, &pool, &prober.shared.blacklist);
        prober.expire(now, &pool);
        loop {
            let event = prober.health.borrow_mut().poll_event();
            let Some(event) = event else { break };
            prober.handle_event(event, &pool);
        }
        prober.publish(&pool);
        let next = prober.health.borrow().poll_timeout();
        let wait = next.map_or(TICK, |t| {
            t.saturating_duration_since(Instant::now()).min(TICK)
        });
        monoio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

impl Prober {
    fn handle_event(self: &Rc<Self>, event: HealthEvent, pool: &Pool) {
        match event {
            HealthEvent::ProbeDue { backend, addr, seq } => {
                let Some(member) = pool.by_id(backend) else {
                    return;
                };
                let transport = member.transport();
                self.outstanding
                    .borrow_mut()
                    .insert((backend, seq), Instant::now());
                if transport == Transport::Udp {
                    let failure = self.send_udp(backend, addr, seq);
                    self.probe_failed(backend, seq, failure);
                } else {
                    let p = Rc::clone(self);
                    monoio::spawn(async move {
                        let failure = p.probe_tcp(backend, addr, seq).await;
                        p.probe_failed(backend, seq, failure);
                    });
                }
            }
            HealthEvent::Down { backend, reason } => {
                let uri = pool.by_id(backend).map_or("", |b| b.uri());
                tracing::warn!(backend = uri, reason = reason.label(), "backend down");
            }
            HealthEvent::Up { backend } => {
                let uri = pool.by_id(backend).map_or("", |b| b.uri());
                tracing::info!(backend = uri, "backend up");
            }
        }
    }

    /// Feeds a probe that could not be sent, or whose connection failed, to the health
    /// machine; `None` is a probe on its way.
    fn probe_failed(&self, backend: BackendId, seq: u64, failure: Option<BlockReason>) {
        let Some(reason) = failure else { return };
        self.outstanding.borrow_mut().remove(&(backend, seq));
        self.count(backend, ProbeResult::Error, None);
        let pool = self.shared.pool.load_full();
        self.health.borrow_mut().handle_send_failure(
            backend,
            seq,
            reason,
            Instant::now(),
            &pool,
            &self.shared.blacklist,
        );
    }

    /// Sends a UDP probe from the prober's own socket. A probe is a few hundred bytes and the
    /// socket sends nothing else, so its buffer is never full; were it full, the probe counts
    /// as a send failure, as a lost one would count as a timeout.
    fn send_udp(&self, backend: BackendId, addr: SocketAddr, seq: u64) -> Option<BlockReason> {
        let (sock, local) = if addr.is_ipv6() {
            self.udp6.as_ref()?
        } else {
            self.udp4.as_ref()?
        };
        let target = ProbeTarget {
            backend,
            addr,
            transport: Transport::Udp,
            local: *local,
            seq: seq.wrapping_add(self.wire_base),
        };
        let mut buf = [0u8; PROBE_BUF];
        let len = write_probe(&target, &mut buf).ok()?;
        match sockopt::send_to(sock.as_raw_fd(), &buf[..len], addr) {
            Ok(_) => None,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                Some(BlockReason::IcmpUnreachable)
            }
            Err(_) => Some(BlockReason::SendError),
        }
    }

    /// One probe over a fresh TCP connection; the answer is handled here too.
    async fn probe_tcp(
        &self,
        backend: BackendId,
        addr: SocketAddr,
        seq: u64,
    ) -> Option<BlockReason> {
        let connect = TcpStream::connect_addr(addr);
        let Ok(Ok(mut stream)) = monoio::time::timeout(self.timeout, connect).await else {
            return Some(BlockReason::ConnectRefused);
        };
        let local = stream.local_addr().ok()?;
        let target = ProbeTarget {
            backend,
            addr,
            transport: Transport::Tcp,
            local,
            seq: seq.wrapping_add(self.wire_base),
        };
        let mut buf = [0u8; PROBE_BUF];
        let len = write_probe(&target, &mut buf).ok()?;
        let (result, _) = stream.write_all(buf[..len].to_vec()).await;
        if result.is_err() {
            return Some(BlockReason::Reset);
        }
        let deadline = Instant::now() + self.timeout;
        let mut response: Vec<u8> = Vec::with_capacity(4096);
        while !response.windows(4).any(|w| w == b"\r\n\r\n") && response.len() < 16_384 {
            let wait = deadline.saturating_duration_since(Instant::now());
            let chunk = Vec::with_capacity(4096);
            match monoio::time::timeout(wait, stream.read(chunk)).await {
                Ok((Ok(n), chunk)) if n > 0 => response.extend_from_slice(&chunk[..n]),
                // Closed, failed or timed out: the expiry pass counts the timeout.
                _ => return None,
            }
        }
        self.answer(&response);
        None
    }

    /// Handles bytes that may be a probe answer.
    fn answer(&self, bytes: &[u8]) {
        let Some(r) = recognise_probe_response(bytes) else {
            return;
        };
        if r.code < 200 {
            return;
        }
        let seq = r.seq.wrapping_sub(self.wire_base);
        let sent = self.outstanding.borrow_mut().remove(&(r.backend, seq));
        let Some(sent) = sent else {
            return; // a late answer to a probe already counted as timed out
        };
        let now = Instant::now();
        let result = if self.alive.contains(r.code) {
            ProbeResult::Ok
        } else {
            ProbeResult::Error
        };
        self.count(r.backend, result, Some(now.saturating_duration_since(sent)));
        let pool = self.shared.pool.load_full();
        self.health.borrow_mut().handle_probe_response(
            r.backend,
            seq,
            r.code,
            now,
            &pool,
            &self.shared.blacklist,
        );
    }

    /// Counts probes that got no answer in time (the health machine does its own expiry).
    fn expire(&self, now: Instant, pool: &Pool) {
        self.outstanding.borrow_mut().retain(|&(backend, _), sent| {
            let expired = now.saturating_duration_since(*sent) > self.timeout;
            if expired && pool.by_id(backend).is_some() {
                self.count(backend, ProbeResult::Timeout, None);
            }
            !expired
        });
    }

    fn count(&self, backend: BackendId, result: ProbeResult, rtt: Option<Duration>) {
        let pool = self.shared.pool.load();
        if let Some(i) = pool.backends().iter().position(|b| b.id() == backend) {
            if let Some(m) = self.shared.metrics.backends().get(i) {
                m.probe(result, rtt);
            }
        }
    }

    /// Copies the health of every member into the metrics.
    fn publish(&self, pool: &Pool) {
        let table = self.shared.metrics.backends();
        let health = self.health.borrow();
        for (i, b) in pool.backends().iter().enumerate() {
            let Some(m) = table.get(i) else { continue };
            let failing = health.status(b.id()).is_some_and(|s| s.failures > 0);
            m.set_state(match (b.is_up(), failing) {
                (false, _) => BackendState::Down,
                (true, true) => BackendState::Suspect,
                (true, false) => BackendState::Up,
            });
        }
    }
}

async fn receive_loop(prober: Rc<Prober>, v6: bool) {
    let sock = if v6 { &prober.udp6 } else { &prober.udp4 };
    let Some((sock, _)) = sock.as_ref() else {
        return;
    };
    let fd = sock.as_raw_fd();
    // The largest datagram, once: an answer is never cut short, and nothing is allocated
    // per answer.
    let mut buf = vec![0u8; 65_535];
    loop {
        match sockopt::recv_from(fd, &mut buf) {
            Ok((n, _)) => prober.answer(buf.get(..n).unwrap_or(&buf)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.readable(false).await.is_err() {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // An ICMP error of an earlier probe, reported once on this socket: the probe it
            // belongs to times out, so the error is only taken off here.
            Err(e) if e.raw_os_error().is_some_and(is_icmp_error) => {}
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Errors a UDP socket reports for an ICMP message about an earlier datagram.
fn is_icmp_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EMSGSIZE
    )
}
