//! One shard: a monoio runtime on its own pinned thread, its own `SO_REUSEPORT` sockets, its
//! own engine, connections and buffers.
//!
//! Tasks of a shard (all on its one thread, sharing the shard through an `Rc`):
//! - one receive loop per UDP listener socket;
//! - one accept loop per TCP listener, then a reader and a writer task per connection;
//! - the handoff loop, which drains the shard's inbox when its doorbell rings;
//! - with SigComp enabled, its compartment timer (see [`sigcomp`]);
//! - on shard 0 only, the health prober.
//!
//! Every loop owns its receive buffer and one send buffer, allocated once when the loop
//! starts; the engine writes into the send buffer and the socket borrows it back, so a
//! message costs no allocation. The engine is borrowed only between awaits. The UDP receive
//! loops trade their send buffer for a spare one of the shard's send batch instead (no copy;
//! the batch's buffers are allocated once too), and send the batch with one `sendmmsg` per
//! socket when their receive batch is done.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::udp::UdpSocket;
use monoio::net::unix::UnixDatagram;
use monoio::net::{TcpListener, TcpStream};

mod sigcomp;

use super::DriverKind;
use super::engine::{Dest, Engine, FlowId, Inbound, Transmit, Transport, Verdict};
use super::handoff::{HandoffError, Parcel, ParcelKind, PostOffice};
use super::sockopt::{self, Sent};
use crate::balance::{BackendId, Blacklist, BlockReason, FailoverConfig, HealthConfig, Pool};
use crate::config::TcpConfig;
use crate::metrics::{Direction, DropReason, ErrorReason, Metrics, ShardMetrics};
use crate::proxy::{Event, ProxyConfig};
use crate::proxy::{MessageKind, Placement};
use crate::shard::ShardId;
use crate::sigcomp::SigcompConfig;
use crate::sip::{Frame, Limits, ResponseOptions, frame, is_sigcomp_byte, salvage, write_response};

pub(crate) use self::sigcomp::endpoint_config as sigcomp_config;

/// Size of every receive and send buffer: the largest UDP payload.
pub(crate) const BUF_SIZE: usize = 65_535;

/// Messages of its own (failover retries, 503s) the core may send per drain.
const CORE_TRANSMITS_PER_DRAIN: usize = 1024;

/// Bytes queued for one TCP connection beyond which it is considered stuck and closed.
const MAX_PENDING: usize = 4 << 20;

/// State shared by every shard (and the admin and signal threads).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) blacklist: Arc<Blacklist>,
    pub(crate) pool: Arc<ArcSwap<Pool>>,
    pub(crate) post: PostOffice,
    pub(crate) shards: u16,
    /// Whether the kernel steers every UDP listener's datagrams to their Call-ID's shard.
    pub(crate) udp_steered: bool,
    pub(crate) driver: DriverKind,
    pub(crate) tcp: TcpConfig,
    /// Set by SIGTERM or `POST /drain`.
    pub(crate) draining: AtomicBool,
    /// Shards whose sockets are registered and whose loops run.
    pub(crate) started: AtomicUsize,
    /// Bumped after every pool swap, so shards and the prober notice a reload.
    pub(crate) pool_epoch: AtomicU64,
    /// Failures seen on real traffic, for the health prober (cold: failures only).
    pub(crate) passive: ArrayQueue<(SocketAddr, BlockReason)>,
    /// Health probing settings; `None` = off.
    pub(crate) health: Option<HealthConfig>,
    /// The proxy core's configuration (every shard builds its core from it).
    pub(crate) proxy: ProxyConfig,
    /// Each shard's SigComp endpoint settings; `None` = SigComp disabled.
    pub(crate) sigcomp: Option<SigcompConfig>,
}

impl Shared {
    /// Reports a failure toward `addr` to the blacklist and to the health prober.
    pub(crate) fn report_failure(&self, addr: SocketAddr, reason: BlockReason) {
        self.blacklist.report(addr, reason, Instant::now());
        // A full queue already holds plenty of evidence for the prober.
        let _ = self.passive.push((addr, reason));
    }
}

/// What a shard thread starts with: sockets bound (by the main thread, so bind errors are
/// reported before anything runs) and its doorbell.
#[derive(Debug)]
pub(crate) struct ShardSetup {
    pub(crate) id: ShardId,
    pub(crate) udp: Vec<std::net::UdpSocket>,
    pub(crate) tcp: Vec<std::net::TcpListener>,
    /// The shard's own UDP sockets, each standing in for the UDP listener at that index of
    /// `Shared::proxy` in the Via of forwarded requests (`ListenerConfig::via_for`).
    pub(crate) via_udp: Vec<(std::net::UdpSocket, usize)>,
    pub(crate) bell: std::os::unix::net::UnixDatagram,
}

struct UdpEndpoint {
    sock: UdpSocket,
    local: SocketAddr,
    fd: RawFd,
    /// Whether the kernel places this socket's datagrams on their call's shard.
    placement: Placement,
}

/// A TCP connection of this shard (accepted, or opened toward a next hop).
struct Conn {
    id: FlowId,
    peer: SocketAddr,
    /// The address the core sees as `local`: the accepting listener, or for an outgoing
    /// connection the TCP listener of the same family (the address our Via advertises).
    local: SocketAddr,
    outbound: bool,
    fd: Cell<RawFd>,
    pending: RefCell<Vec<u8>>,
    writer: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    last_activity: Cell<Instant>,
}

impl Conn {
    fn enqueue(&self, bytes: &[u8], metrics: &ShardMetrics) -> bool {
        if self.closed.get() {
            metrics.drop(DropReason::UnknownFlow);
            return false;
        }
        let mut pending = self.pending.borrow_mut();
        if pending.len() + bytes.len() > MAX_PENDING {
            drop(pending);
            metrics.error(ErrorReason::TcpWrite);
            self.close();
            return false;
        }
        pending.extend_from_slice(bytes);
        drop(pending);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
        true
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let fd = self.fd.get();
        if fd >= 0 {
            // SAFETY: `fd` is the connection's socket, still open: it is closed only when
            // both halves are dropped, which happens after the tasks observe `closed`.
            // shutdown() wakes the reader blocked in read() with end-of-file.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves when the connection has bytes to write or is closed.
struct WritePending<'a>(&'a Conn);

impl Future for WritePending<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = self.0;
        if conn.closed.get() || !conn.pending.borrow().is_empty() {
            Poll::Ready(())
        } else {
            *conn.writer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Task slots of monoio's run queue (`monoio::scheduler::TaskQueue`, 0.2).
const RUN_QUEUE_SLOTS: usize = 4096;

/// Moves the head of monoio's run queue once round its ring, so every slot is written now.
///
/// A task woken while it runs (a plain yield) goes back to the *front* of the queue
/// (`LocalScheduler::yield_now` is a `push_front`), which leaves the head where it was; a task
/// woken by another goes to the back, and the head moves one slot when it runs. So two tasks
/// take turns, each waking the other and waiting for its turn, one slot per turn.
async fn lap_run_queue() {
    let relay = Rc::new(Relay {
        waiting: RefCell::new(None),
        turns_left: Cell::new(RUN_QUEUE_SLOTS + 1),
    });
    let runners = [Rc::clone(&relay), relay].map(|relay| {
        monoio::spawn(async move {
            while relay.turns_left.get() > 0 {
                Turn {
                    relay: &relay,
                    taken: false,
                }
                .await;
            }
            if let Some(partner) = relay.waiting.take() {
                partner.wake();
            }
        })
    });
    for runner in runners {
        runner.await;
    }
}

/// What the two tasks of [`lap_run_queue`] share.
struct Relay {
    /// The task waiting for its turn.
    waiting: RefCell<Option<Waker>>,
    turns_left: Cell<usize>,
}

/// One turn: wake the partner, then wait until it hands the turn back.
struct Turn<'a> {
    relay: &'a Relay,
    taken: bool,
}

impl Future for Turn<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.taken {
            return Poll::Ready(());
        }
        if let Some(partner) = self.relay.waiting.take() {
            partner.wake();
        }
        let left = self.relay.turns_left.get();
        if left == 0 {
            return Poll::Ready(());
        }
        self.relay.turns_left.set(left - 1);
        *self.relay.waiting.borrow_mut() = Some(cx.waker().clone());
        self.taken = true;
        Poll::Pending
    }
}

/// Yields to the scheduler once, so other tasks (timers, the handoff loop) run. Under the
/// epoll driver a socket that always has data would otherwise never yield.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[derive(Default)]
struct Conns {
    by_id: HashMap<FlowId, Rc<Conn>>,
    outbound: HashMap<SocketAddr, Rc<Conn>>,
    next: u64,
}

struct Shard {
    id: ShardId,
    shared: Arc<Shared>,
    engine: RefCell<Engine>,
    udp: Vec<UdpEndpoint>,
    tcp_locals: Vec<SocketAddr>,
    conns: RefCell<Conns>,
    /// Messages a receive loop handles before it yields.
    yield_every: u32,
    /// The SigComp endpoint (RFC 3320), when enabled.
    sigcomp: Option<sigcomp::ShardSigcomp>,
    /// UDP datagrams the receive loops produced during their current receive batch, sent
    /// with one `sendmmsg` per socket when the batch is done (see [`SendMode`]).
    udp_out: RefCell<sockopt::SendBatch>,
}

/// How a task sends the UDP datagrams it produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendMode {
    /// At once (one `sendto` each): every task but the UDP receive loops, which have no
    /// point at which a batch would be sure to be flushed.
    Now,
    /// Into [`Shard::udp_out`]: only a UDP receive loop, which flushes it before it reads
    /// again, sleeps or yields.
    Batched,
}

/// Runs shard `setup.id` on the current thread until the process exits.
pub(crate) fn run(setup: ShardSetup, shared: Arc<Shared>) -> io::Result<()> {
    match shared.driver {
        DriverKind::IoUring => {
            // Only this thread ever enters the shard's ring, so the kernel may leave a
            // completion's task work for the shard's next system call instead of interrupting
            // it (COOP_TASKRUN, Linux 5.19; SINGLE_ISSUER, 6.0): less CPU per call at 1,000
            // calls/s in 7 of 7 interleaved pairs, median -8 % (perf/RESULTS.md). DEFER_TASKRUN
            // (6.1) goes further: the task work waits until the shard asks for completions,
            // which monoio does only when it parks, and then wakes it directly: median -3.5 %
            // per call at 1,000 calls/s (14 of 20 pairs lower), none at 8,000. An older
            // kernel refuses a flag and gets the ring one step plainer.
            let build = |level: u8| {
                let mut ring = io_uring::IoUring::builder();
                if level >= 1 {
                    ring.setup_coop_taskrun().setup_single_issuer();
                }
                if level >= 2 {
                    ring.setup_defer_taskrun();
                }
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .uring_builder(ring)
                    .with_entries(2048)
                    .enable_timer()
                    .build()
            };
            let mut rt = build(2).or_else(|_| build(1)).or_else(|_| build(0))?;
            rt.block_on(shard_main(setup, shared))
        }
        DriverKind::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()?;
            rt.block_on(shard_main(setup, shared))
        }
    }
}

async fn shard_main(setup: ShardSetup, shared: Arc<Shared>) -> io::Result<()> {
    let epoll = shared.driver == DriverKind::Epoll;
    let mut udp = Vec::with_capacity(setup.udp.len() + setup.via_udp.len());
    let mut proxy = shared.proxy.clone();
    // The kernel steers the shared listeners' datagrams by Call-ID when the steering
    // program is attached; the shard's own Via ports receive the responses to its requests.
    let listener_placement = if shared.udp_steered {
        Placement::Steered
    } else {
        Placement::Unknown
    };
    let mut sockets: Vec<_> = setup
        .udp
        .into_iter()
        .map(|sock| (sock, listener_placement))
        .collect();
    for (sock, index) in setup.via_udp {
        let Some(public) = proxy.listeners.get(index) else {
            continue;
        };
        let mut private = crate::proxy::ListenerConfig::new(public.transport, sock.local_addr()?);
        // The same host as the shared listener; the port is the shard's own.
        private.advertised_host = public.advertised_host.clone();
        private.via_for = Some(index);
        proxy.listeners.push(private);
        sockets.push((sock, Placement::Steered));
    }
    for (sock, placement) in sockets {
        let local = sock.local_addr()?;
        let fd = sock.as_raw_fd();
        if epoll {
            sock.set_nonblocking(true)?;
        }
        udp.push(UdpEndpoint {
            sock: UdpSocket::from_std(sock)?,
            local,
            fd,
            placement,
        });
    }
    let mut listeners = Vec::with_capacity(setup.tcp.len());
    let mut tcp_locals = Vec::with_capacity(setup.tcp.len());
    for l in setup.tcp {
        let local = l.local_addr()?;
        if epoll {
            l.set_nonblocking(true)?;
        }
        tcp_locals.push(local);
        listeners.push((TcpListener::from_std(l)?, local));
    }
    if epoll {
        setup.bell.set_nonblocking(true)?;
    }
    let bell = UnixDatagram::from_std(setup.bell)?;
    let engine =
        Engine::new(proxy, setup.id, &shared).map_err(|e| io::Error::other(e.to_string()))?;
    let sigcomp = shared.sigcomp.map(sigcomp::ShardSigcomp::new);
    let shard = Rc::new(Shard {
        id: setup.id,
        engine: RefCell::new(engine),
        shared,
        udp,
        tcp_locals,
        conns: RefCell::new(Conns::default()),
        yield_every: if epoll { 32 } else { 256 },
        sigcomp,
        udp_out: RefCell::new(sockopt::SendBatch::new(BUF_SIZE)),
    });
    // Receive batches are made resident here, before the shard counts as started (and the
    // process as ready): faulting in megabytes while datagrams queue would delay the first
    // calls by tens of milliseconds.
    for i in 0..shard.udp.len() {
        let batch = sockopt::RecvBatch::new(BUF_SIZE);
        monoio::spawn(udp_loop(Rc::clone(&shard), i, batch));
    }
    for (listener, local) in listeners {
        monoio::spawn(accept_loop(Rc::clone(&shard), listener, local));
    }
    if shard.sigcomp.is_some() {
        monoio::spawn(sigcomp::timer_loop(Rc::clone(&shard)));
    }
    if let Some(failover) = shard.shared.proxy.failover {
        monoio::spawn(core_timer_loop(Rc::clone(&shard), failover));
    }
    if shard.id == 0 {
        if let Some(health) = shard.shared.health {
            let ips = shard.udp.iter().map(|e| e.local.ip()).collect();
            monoio::spawn(super::probe::run(Arc::clone(&shard.shared), health, ips));
        }
    }
    // monoio's run queue is a ring of 4,096 task slots (32 KiB) whose head moves one slot per
    // wake-up of a spawned task: left alone, its pages become resident over the first minutes
    // of traffic, which reads as growth. Two tasks that wake each other in turn go once round
    // it now (see `crate::shard`), for about a millisecond.
    lap_run_queue().await;
    shard.shared.started.fetch_add(1, Ordering::SeqCst);
    handoff_loop(shard, bell).await;
    Ok(())
}

impl Shard {
    fn metrics(&self) -> &ShardMetrics {
        self.shared.metrics.shard(usize::from(self.id))
    }

    /// Runs one inbound message through the engine and carries out the verdict.
    async fn dispatch(
        self: &Rc<Self>,
        input: Inbound<'_>,
        sbuf: Vec<u8>,
        mode: SendMode,
    ) -> Vec<u8> {
        let mut sbuf = sbuf;
        let metrics = self.metrics();
        metrics.message();
        if input.placement != Placement::HandedOff {
            count_message(metrics, input.bytes, true);
        }
        if self.shared.draining.load(Ordering::Relaxed) {
            if let Some(t) = self.refuse_new_call(&input, &mut sbuf) {
                metrics.local_response(503);
                return self.transmit(t, input.local, sbuf, mode).await;
            }
        }
        let verdict = {
            let mut engine = self.engine.borrow_mut();
            let verdict = engine.handle_inbound(
                &self.shared,
                Inbound {
                    now: input.now,
                    src: input.src,
                    local: input.local,
                    transport: input.transport,
                    flow: input.flow,
                    placement: input.placement,
                    compressed: input.compressed,
                    bytes: input.bytes,
                },
                &mut sbuf,
            );
            while let Some(event) = engine.poll_event() {
                self.handle_event(event);
            }
            let info = engine.last_message();
            if let (Verdict::Forward(_), Some(backend), MessageKind::Request(_)) =
                (&verdict, info.backend, info.kind)
            {
                self.count_forwarded_request(&engine, backend, &input);
            }
            verdict
        };
        let sbuf = match verdict {
            Verdict::Forward(t) => match self.transmit_batched(&t, input.local, sbuf, mode) {
                Ok(spare) => spare,
                Err(sbuf) => self.transmit(t, input.local, sbuf, mode).await,
            },
            Verdict::Respond(t) => {
                if let Some(status) = sbuf.get(..t.len).and_then(status_of) {
                    metrics.local_response(status);
                }
                match self.transmit_batched(&t, input.local, sbuf, mode) {
                    Ok(spare) => spare,
                    Err(sbuf) => self.transmit(t, input.local, sbuf, mode).await,
                }
            }
            Verdict::Handoff(owner) => {
                let result = self.shared.post.send(
                    self.id,
                    owner,
                    |p| {
                        p.kind = ParcelKind::Inbound;
                        p.src = input.src;
                        p.local = input.local;
                        p.tcp = input.transport == Transport::Tcp;
                        p.flow = input.flow.map(|f| f.0);
                        p.compressed = input.compressed;
                    },
                    input.bytes,
                );
                self.count_handoff(result);
                sbuf
            }
            Verdict::Drop(reason) => {
                metrics.drop(reason.into());
                sbuf
            }
        };
        // The core has queued nothing of its own almost always: one look without an await
        // (see `drain_core`).
        let mut sbuf = sbuf;
        match self.poll_core(&mut sbuf, input.now) {
            Some(first) => self.send_core_transmits(first, sbuf, mode).await,
            None => sbuf,
        }
    }

    /// Acts on an event of the core.
    fn handle_event(&self, event: Event) {
        match event {
            Event::BackendTimeout(addr) => {
                self.shared.report_failure(addr, BlockReason::Timeout);
            }
            Event::Failover { from, .. } => self.count_failover_of(from),
        }
    }

    /// Sends what the core queued on its own (INVITE failover: retries and 503s), after a
    /// message, a timer or a transport error handled at `now`. Bounded per call; the timer
    /// loop sends the rest.
    async fn drain_core(self: &Rc<Self>, sbuf: Vec<u8>, mode: SendMode, now: Instant) -> Vec<u8> {
        let mut sbuf = sbuf;
        // Nothing is queued almost always: the time of what was just handled serves for the
        // first look; a look after a send (which may have waited) reads the clock again.
        match self.poll_core(&mut sbuf, now) {
            Some(first) => self.send_core_transmits(first, sbuf, mode).await,
            None => sbuf,
        }
    }

    /// Sends `first` (which [`Shard::poll_core`] wrote into `sbuf`) and whatever else the core
    /// has queued, [`CORE_TRANSMITS_PER_DRAIN`] in all at most.
    async fn send_core_transmits(
        self: &Rc<Self>,
        first: Transmit,
        sbuf: Vec<u8>,
        mode: SendMode,
    ) -> Vec<u8> {
        let mut sbuf = sbuf;
        let mut t = first;
        for taken in 1..=CORE_TRANSMITS_PER_DRAIN {
            let from = t
                .src
                .or_else(|| self.udp.first().map(|e| e.local))
                .or_else(|| self.tcp_locals.first().copied());
            if let Some(from) = from {
                sbuf = match self.transmit_batched(&t, from, sbuf, mode) {
                    Ok(spare) => spare,
                    Err(sbuf) => self.transmit(t, from, sbuf, mode).await,
                };
            }
            // Taken from the core means sent: stop before taking one past the bound.
            if taken == CORE_TRANSMITS_PER_DRAIN {
                break;
            }
            match self.poll_core(&mut sbuf, Instant::now()) {
                Some(next) => t = next,
                None => break,
            }
        }
        sbuf
    }

    /// Takes the next message the core queued on its own into `sbuf`, counted (a 503 it
    /// generated, or a request to a backend), after acting on the core's events.
    fn poll_core(&self, sbuf: &mut [u8], now: Instant) -> Option<Transmit> {
        let mut engine = self.engine.borrow_mut();
        let t = engine.poll_transmit(now, sbuf)?;
        while let Some(event) = engine.poll_event() {
            self.handle_event(event);
        }
        let info = engine.last_message();
        if let Some(status) = info.responded {
            self.metrics().local_response(status);
        } else if let Some(metrics) = info.backend.and_then(|b| engine.backend_metrics(b)) {
            metrics.request(usize::from(self.id));
        }
        Some(t)
    }

    /// Tells the core that `addr` could not be reached, so INVITEs waiting on it move on
    /// (the caller drains [`Shard::drain_core`] afterwards).
    fn core_transport_error(&self, addr: SocketAddr, reason: BlockReason) {
        if let Ok(mut engine) = self.engine.try_borrow_mut() {
            engine.handle_transport_error(&self.shared, addr, reason);
        }
    }

    /// While draining, answers a request that would start something new (an out-of-dialog
    /// request from outside the pool: no To tag, not ACK or CANCEL) with 503 and Retry-After
    /// (RFC 3261 §21.5.4), so clients go to another node. In-dialog requests, CANCEL, ACK,
    /// responses and traffic from backends pass on.
    fn refuse_new_call(&self, input: &Inbound<'_>, out: &mut [u8]) -> Option<Transmit> {
        let request = salvage(input.bytes);
        let method = request.method?;
        if !request.is_request || method == b"ACK" || method == b"CANCEL" {
            return None;
        }
        let to = request.to?.slice(input.bytes);
        if to.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")) {
            return None;
        }
        if self.shared.pool.load().is_backend(input.src) {
            return None;
        }
        let mut received = [0u8; 48];
        let received_len = {
            let mut cursor = std::io::Cursor::new(&mut received[..]);
            std::io::Write::write_fmt(&mut cursor, format_args!("{}", input.src.ip())).ok()?;
            usize::try_from(cursor.position()).ok()?
        };
        let options = ResponseOptions {
            received: received.get(..received_len),
            rport: Some(input.src.port()),
            extra_headers: b"Retry-After: 30\r\n",
            partial: false,
        };
        let len = write_response(&request, 503, b"Service Unavailable", &options, out).ok()?;
        // RFC 3261 §18.2.2 / RFC 3581: back to the source (over its connection on TCP).
        let dest = match input.flow {
            Some(flow) => Dest::Flow(flow),
            None => Dest::Addr(input.transport, input.src),
        };
        Some(Transmit {
            dest,
            src: Some(input.local),
            len,
            // RFC 3486 §4: the response goes to the top Via, which may ask for SigComp.
            compress: request
                .top_via()
                .is_some_and(|v| v.comp.is_some_and(|c| c.eq_ignore_ascii_case(b"sigcomp"))),
        })
    }

    fn count_handoff(&self, result: Result<(), HandoffError>) {
        let metrics = self.metrics();
        match result {
            Ok(()) => metrics.handoff_sent(),
            Err(HandoffError::PoolEmpty) => metrics.drop(DropReason::HandoffPoolEmpty),
            Err(HandoffError::QueueFull) => metrics.drop(DropReason::HandoffQueueFull),
            Err(HandoffError::TooLarge) => metrics.drop(DropReason::TooLarge),
        }
    }

    /// [`Shard::transmit`] without an await, so without building its future, in the common
    /// case: a plain UDP datagram of a receive loop that the send batch takes as it is (in
    /// exchange for a spare buffer, returned). `Err(sbuf)`, neither counted nor queued, when
    /// anything else is needed.
    fn transmit_batched(
        &self,
        t: &Transmit,
        arrived_on: SocketAddr,
        sbuf: Vec<u8>,
        mode: SendMode,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let Dest::Addr(Transport::Udp, to) = t.dest else {
            return Err(sbuf);
        };
        if mode != SendMode::Batched || (t.compress && self.sigcomp.is_some()) {
            return Err(sbuf);
        }
        let Some(endpoint) = self.udp_endpoint(t.src.unwrap_or(arrived_on), to) else {
            return Err(sbuf);
        };
        let mut out = self.udp_out.borrow_mut();
        if !out.takes(&sbuf, t.len) || out.conflicts(endpoint.fd, to) {
            return Err(sbuf);
        }
        // Counted before it is queued, as `transmit` does; `takes` checked the length.
        count_message(self.metrics(), sbuf.get(..t.len).unwrap_or_default(), false);
        out.push_owned(endpoint.fd, sbuf, t.len, to)
    }

    /// Sends `sbuf[..t.len]` where the engine said.
    async fn transmit(
        self: &Rc<Self>,
        t: Transmit,
        arrived_on: SocketAddr,
        sbuf: Vec<u8>,
        mode: SendMode,
    ) -> Vec<u8> {
        let Some(bytes) = sbuf.get(..t.len) else {
            self.metrics().drop(DropReason::Other);
            return sbuf;
        };
        count_message(self.metrics(), bytes, false);
        if t.compress && self.sigcomp.is_some() {
            return self.transmit_compressed(t, arrived_on, sbuf).await;
        }
        match t.dest {
            Dest::Addr(Transport::Udp, addr) => {
                let from = t.src.unwrap_or(arrived_on);
                self.send_udp(from, addr, sbuf, t.len, mode).await
            }
            Dest::Addr(Transport::Tcp, addr) => {
                self.send_tcp(addr, bytes);
                sbuf
            }
            Dest::Flow(flow) => {
                self.send_flow(flow, bytes);
                sbuf
            }
            Dest::Addr(_, _) => {
                // TLS, SCTP, WebSocket: no listener of ours speaks them.
                self.metrics().drop(DropReason::NoRoute);
                sbuf
            }
        }
    }

    /// Counts one INVITE failover away from `backend` (`sipedge_backend_failovers_total`).
    fn count_failover_of(&self, backend: BackendId) {
        let pool = self.shared.pool.load();
        if let Some(i) = pool.backends().iter().position(|b| b.id() == backend) {
            if let Some(m) = self.shared.metrics.backends().get(i) {
                m.failover(usize::from(self.id));
            }
        }
    }

    /// Counts a request the core forwarded to `backend` and, when it came from outside the
    /// pool, a failover if it went elsewhere than its home. The engine's pool and metrics
    /// table serve both (no load of either per message).
    fn count_forwarded_request(&self, engine: &Engine, backend: BackendId, input: &Inbound<'_>) {
        if let Some(metrics) = engine.backend_metrics(backend) {
            metrics.request(usize::from(self.id));
        }
        if !engine.pool().is_backend(input.src) {
            self.count_failover(engine, input.bytes, backend, input.now);
        }
    }

    /// Counts a failover when a new call went to another member than the one it belongs to
    /// when all are healthy. The Call-ID is looked up only while some member is unusable at
    /// `now` (when the request arrived).
    fn count_failover(&self, engine: &Engine, bytes: &[u8], chosen: BackendId, now: Instant) {
        let pool = engine.pool();
        // Health first: it needs no load of the blacklist, which is then read once.
        let degraded = pool.backends().iter().any(|b| !b.accepts_new_calls()) || {
            let blacklist = self.shared.blacklist.view();
            pool.backends()
                .iter()
                .any(|b| blacklist.is_blocked(b.addr(), now))
        };
        if !degraded {
            return;
        }
        let request = salvage(bytes);
        if matches!(request.method, Some(b"ACK" | b"CANCEL") | None) {
            return; // they follow their INVITE, counted already
        }
        let Some(to) = request.to else { return };
        if to
            .slice(bytes)
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b";tag="))
        {
            return; // in-dialog: follows its dialog, not the hash
        }
        let Some(call_id) = request.call_id else {
            return;
        };
        let Some(home) = pool.home(call_id.slice(bytes)) else {
            return;
        };
        if home.id() != chosen {
            if let Some(metrics) = engine.backend_metrics(home.id()) {
                metrics.failover(usize::from(self.id));
            }
        }
    }

    /// The socket a datagram from `from` to `to` leaves on.
    fn udp_endpoint(&self, from: SocketAddr, to: SocketAddr) -> Option<&UdpEndpoint> {
        self.udp
            .iter()
            .find(|e| e.local == from)
            .or_else(|| self.udp.iter().find(|e| e.local.is_ipv4() == to.is_ipv4()))
    }

    /// Sends `sbuf[..len]` as one datagram. `Batched` hands `sbuf` to [`Shard::udp_out`]
    /// (which the receive loop sends when its receive batch is done, or now when the batch is
    /// full) and returns a spare buffer of the batch in its place, so the bytes are not
    /// copied. `Now` sends at once, after whatever a receive loop has batched (it may be for
    /// the same destination, and a call's messages leave in order).
    async fn send_udp(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        sbuf: Vec<u8>,
        len: usize,
        mode: SendMode,
    ) -> Vec<u8> {
        let Some(endpoint) = self.udp_endpoint(from, to) else {
            self.metrics().drop(DropReason::NoRoute);
            return sbuf;
        };
        if len > sbuf.len() {
            return sbuf;
        }
        let mut sbuf = sbuf;
        if mode == SendMode::Batched {
            // Bounded: each flush empties the batch, and only this task runs between the
            // flush and the push unless the flush waited for a full socket buffer.
            for _ in 0..4 {
                let queued = {
                    let mut out = self.udp_out.borrow_mut();
                    if out.is_full() || out.conflicts(endpoint.fd, to) {
                        Err(sbuf)
                    } else {
                        out.push_owned(endpoint.fd, sbuf, len, to)
                    }
                };
                match queued {
                    Ok(spare) => return spare,
                    Err(buf) => sbuf = buf,
                }
                self.flush_udp().await;
            }
        }
        let Some(bytes) = sbuf.get(..len) else {
            return sbuf;
        };
        if !self.udp_out.borrow().is_empty() {
            self.flush_udp().await;
        }
        // A full socket buffer: wait until it drains, a few times at most (UDP may drop).
        for _ in 0..4 {
            match sockopt::send_to(endpoint.fd, bytes, to) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if endpoint.sock.writable(false).await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.udp_send_failed(endpoint, to, &e) {
                        break;
                    }
                }
            }
        }
        sbuf
    }

    /// Sends every datagram of [`Shard::udp_out`]: one `sendmmsg` per socket, more only when
    /// a datagram fails. A failed datagram gets what [`Shard::send_udp`] does to one: a full
    /// socket buffer is waited for a few times at most (UDP may drop), `EINTR` retried, an
    /// earlier datagram's ICMP error reported and the datagram sent again, its own error
    /// reported and the datagram dropped ([`Shard::udp_send_failed`]); the others still go. The batch is never borrowed across an await, so another task may push or
    /// flush meanwhile.
    async fn flush_udp(&self) {
        // Attempts on the datagram heading the batch.
        let mut attempts = 0u32;
        loop {
            let sent = self.udp_out.borrow_mut().send();
            match sent {
                Sent::Empty => return,
                Sent::All => attempts = 0,
                Sent::Part(fd) => {
                    // An ICMP error of an earlier datagram is still in the error queue:
                    // report it as `send_udp` would have. Any other error comes back when
                    // the datagram that met it heads the next call.
                    attempts = 0;
                    if let Some(endpoint) = self.udp.iter().find(|e| e.fd == fd) {
                        self.udp_icmp_errors(endpoint);
                    }
                }
                Sent::Failed { fd, to, error, id } => {
                    attempts += 1;
                    let endpoint = self.udp.iter().find(|e| e.fd == fd);
                    let retry = match (error.kind(), endpoint) {
                        (io::ErrorKind::Interrupted, Some(_)) => attempts < 4,
                        (io::ErrorKind::WouldBlock, Some(endpoint)) => {
                            attempts < 4 && endpoint.sock.writable(false).await.is_ok()
                        }
                        (_, Some(endpoint)) => {
                            self.udp_send_failed(endpoint, to, &error) && attempts < 4
                        }
                        (_, None) => false,
                    };
                    if !retry {
                        attempts = 0;
                        // By id: another task may have sent it while this one waited.
                        self.udp_out.borrow_mut().drop_pending(id);
                    }
                }
            }
        }
    }

    /// Reports the destinations the socket's error queue names (IP_RECVERR: each datagram
    /// an ICMP error came back for, port or host unreachable); how many.
    fn udp_icmp_errors(&self, endpoint: &UdpEndpoint) -> usize {
        let metrics = self.metrics();
        let now = Instant::now();
        let mut reported = 0;
        sockopt::drain_error_queue(endpoint.fd, |addr| {
            reported += 1;
            metrics.error(ErrorReason::Icmp);
            self.shared
                .blacklist
                .report(addr, BlockReason::IcmpUnreachable, now);
            self.core_transport_error(addr, BlockReason::IcmpUnreachable);
        });
        reported
    }

    /// After a send to `to` failed with `e`: whether to send the same datagram again.
    ///
    /// An ICMP error that came back for an earlier datagram (IP_RECVERR) is reported by the
    /// socket's next send, which then sends nothing (on loopback it is there before the next
    /// send even starts). That is an earlier destination's failure, not `to`'s: the error
    /// queue names who it was, and this datagram goes again. `ECONNREFUSED` is always such an
    /// error (the kernel refuses no datagram of an unconnected socket itself), even when its
    /// queue entry is gone. Any other error is this datagram's own and reported against `to`.
    fn udp_send_failed(&self, endpoint: &UdpEndpoint, to: SocketAddr, e: &io::Error) -> bool {
        if self.udp_icmp_errors(endpoint) > 0 {
            return true;
        }
        self.metrics().error(ErrorReason::UdpSend);
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => true,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                // No route to `to` itself: this datagram's own failure.
                self.shared
                    .blacklist
                    .report(to, BlockReason::SendError, Instant::now());
                self.core_transport_error(to, BlockReason::SendError);
                false
            }
            _ => false,
        }
    }

    /// Counts a UDP receive error and reports the destinations the error queue names (the
    /// ICMP errors behind it) to the blacklist.
    fn udp_recv_error(&self, endpoint: &UdpEndpoint) {
        if self.udp_icmp_errors(endpoint) == 0 {
            self.metrics().error(ErrorReason::UdpSend);
        }
    }

    fn send_tcp(self: &Rc<Self>, addr: SocketAddr, bytes: &[u8]) {
        self.tcp_conn(addr).enqueue(bytes, self.metrics());
    }

    /// This shard's open connection to `addr`, or a new one.
    fn tcp_conn(self: &Rc<Self>, addr: SocketAddr) -> Rc<Conn> {
        let existing = self.conns.borrow().outbound.get(&addr).cloned();
        match existing {
            Some(c) if !c.closed.get() => c,
            _ => self.open_outbound(addr),
        }
    }

    fn send_flow(self: &Rc<Self>, flow: FlowId, bytes: &[u8]) {
        let owner = flow_owner(flow);
        if owner == self.id {
            let conn = self.conns.borrow().by_id.get(&flow).cloned();
            match conn {
                Some(c) => {
                    c.enqueue(bytes, self.metrics());
                }
                None => self.metrics().drop(DropReason::UnknownFlow),
            }
        } else {
            let result = self.shared.post.send(
                self.id,
                owner,
                |p| p.kind = ParcelKind::ToFlow(flow.0),
                bytes,
            );
            self.count_handoff(result);
        }
    }

    fn new_conn(&self, peer: SocketAddr, local: SocketAddr, outbound: bool, fd: RawFd) -> Rc<Conn> {
        let mut conns = self.conns.borrow_mut();
        conns.next += 1;
        // INVARIANT: the top 16 bits name the owning shard (see `flow_owner`).
        let id = FlowId((u64::from(self.id) << 48) | (conns.next & ((1 << 48) - 1)));
        let conn = Rc::new(Conn {
            id,
            peer,
            local,
            outbound,
            fd: Cell::new(fd),
            pending: RefCell::new(Vec::new()),
            writer: RefCell::new(None),
            closed: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
        });
        conns.by_id.insert(id, Rc::clone(&conn));
        if outbound {
            conns.outbound.insert(peer, Rc::clone(&conn));
        }
        let direction = if outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        self.metrics().tcp_connection(direction, 1);
        conn
    }

    fn forget_conn(&self, conn: &Conn) {
        conn.close();
        if let Some(sc) = &self.sigcomp {
            sc.close_flow(conn.id);
        }
        let mut conns = self.conns.borrow_mut();
        if conns.by_id.remove(&conn.id).is_some() {
            let direction = if conn.outbound {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            self.metrics().tcp_connection(direction, -1);
        }
        if conn.outbound
            && conns
                .outbound
                .get(&conn.peer)
                .is_some_and(|c| c.id == conn.id)
        {
            conns.outbound.remove(&conn.peer);
        }
    }

    fn open_outbound(self: &Rc<Self>, addr: SocketAddr) -> Rc<Conn> {
        let local = self
            .tcp_locals
            .iter()
            .find(|l| l.is_ipv4() == addr.is_ipv4())
            .copied()
            .unwrap_or(addr);
        let conn = self.new_conn(addr, local, true, -1);
        monoio::spawn(outbound_conn(Rc::clone(self), Rc::clone(&conn)));
        conn
    }

    fn connection_count(&self) -> usize {
        self.conns.borrow().by_id.len()
    }
}

/// The shard that owns a flow.
fn flow_owner(flow: FlowId) -> ShardId {
    (flow.0 >> 48) as ShardId
}

/// The status code of a response's status line, `None` for a request.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"SIP/2.0 ")?;
    let &[first, second, third] = rest.get(..3)? else {
        return None;
    };
    let digit = |d: u8| d.is_ascii_digit().then(|| u16::from(d - b'0'));
    // The three bytes as `str::parse::<u16>` reads them (a leading `+` included), without
    // its UTF-8 check and generic loop.
    if first == b'+' {
        Some(digit(second)? * 10 + digit(third)?)
    } else {
        Some(digit(first)? * 100 + digit(second)? * 10 + digit(third)?)
    }
}

/// Counts a message by method or response class from its start line alone (no parse).
fn count_message(metrics: &ShardMetrics, bytes: &[u8], inbound: bool) {
    if let Some(status) = status_of(bytes) {
        if inbound {
            metrics.response_in(status);
        } else {
            metrics.response_out(status);
        }
    } else if let Some(sp) = bytes
        .get(..32)
        .unwrap_or(bytes)
        .iter()
        .position(|&b| b == b' ')
    {
        // The method token ends at the first space within the first 32 bytes (a plain
        // slice search: cheaper than an iterator `take`).
        let method = &bytes[..sp];
        if inbound {
            metrics.request_in(method);
        } else {
            metrics.request_out(method);
        }
    }
}

async fn udp_loop(shard: Rc<Shard>, index: usize, mut batch: sockopt::RecvBatch) {
    // Allocated once: the receive buffers of a whole batch (by the caller) and the send buffer.
    let mut sbuf: Vec<u8> = crate::shard::resident_zeroes(BUF_SIZE);
    let mut since_yield = 0u32;
    let Some(endpoint) = shard.udp.get(index) else {
        return;
    };
    let local = endpoint.local;
    loop {
        // One recvmmsg reads every queued datagram (up to a batch). A short batch means the
        // queue was empty, so the loop waits for readiness (io_uring PollAdd / epoll) without
        // a recvfrom that would only say EAGAIN; that wait checks the socket again before it
        // sleeps, so a datagram queued meanwhile is not missed. No allocation per message.
        let n = match batch.recv(endpoint.fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if endpoint.sock.readable(false).await.is_err() {
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shard.udp_recv_error(endpoint);
                sbuf = shard
                    .drain_core(sbuf, SendMode::Batched, Instant::now())
                    .await;
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
                ) {
                    shard.metrics().error(ErrorReason::UdpRecv);
                }
                0
            }
        };
        // One recvmmsg read the whole batch: its datagrams arrived by now, and the core takes
        // this as their arrival time (timers, blacklist) without a clock read per datagram.
        let mut arrived = Instant::now();
        for i in 0..n {
            let Some((message, src)) = batch.get(i) else {
                continue;
            };
            if message.first().copied().is_some_and(is_sigcomp_byte) {
                // RFC 3320 §7: the first byte tells SigComp from SIP.
                sbuf = shard
                    .receive_sigcomp_datagram(src, local, message, sbuf)
                    .await;
            } else if !message.is_empty() {
                let input = Inbound {
                    now: arrived,
                    src,
                    local,
                    transport: Transport::Udp,
                    flow: None,
                    placement: endpoint.placement,
                    compressed: false,
                    bytes: message,
                };
                sbuf = shard.dispatch(input, sbuf, SendMode::Batched).await;
            }
            since_yield += 1;
            if since_yield >= shard.yield_every {
                since_yield = 0;
                // Nothing waits in the batch while other tasks run.
                shard.flush_udp().await;
                YieldNow(false).await;
                // Other tasks ran: the rest of the batch is handled later than it arrived.
                arrived = Instant::now();
            }
        }
        // The receive batch is done: what it produced leaves now, with one sendmmsg per
        // socket, before the loop reads or sleeps again.
        shard.flush_udp().await;
        if n == 0 {
            // The error arm: counts towards the yield like a message did before.
            since_yield += 1;
            if since_yield >= shard.yield_every {
                since_yield = 0;
                YieldNow(false).await;
            }
        } else if n < sockopt::RECV_BATCH {
            // A short batch: the queue was empty when it was read.
            if endpoint.sock.readable(false).await.is_err() {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Runs the core's timers (INVITE failover): sleeps until [`Engine::poll_timeout`], calls
/// `handle_timeout`, sends what it produced. Every deadline the core sets lies at least the
/// shortest failover duration ahead, so waking at least that often misses none without the
/// message path having to wake this task.
async fn core_timer_loop(shard: Rc<Shard>, failover: FailoverConfig) {
    let mut sbuf: Vec<u8> = crate::shard::resident_zeroes(BUF_SIZE);
    let longest = failover
        .timeout
        .min(failover.ringing)
        .min(failover.linger)
        .clamp(Duration::from_millis(10), Duration::from_secs(60));
    loop {
        let now = Instant::now();
        let due = shard.engine.borrow().poll_timeout();
        let wake = due.map_or(now + longest, |d| d.min(now + longest));
        monoio::time::sleep(wake.saturating_duration_since(now)).await;
        let now = Instant::now();
        {
            let mut engine = shard.engine.borrow_mut();
            if engine.poll_timeout().is_some_and(|d| d <= now) {
                engine.handle_timeout(&shard.shared, now);
            }
        }
        sbuf = shard.drain_core(sbuf, SendMode::Now, now).await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, local: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if shard.connection_count() >= shard.shared.tcp.max_connections_per_shard {
                    shard.metrics().error(ErrorReason::TcpLimit);
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = shard.new_conn(peer, local, false, stream.as_raw_fd());
                monoio::spawn(run_conn(Rc::clone(&shard), conn, stream));
            }
            Err(_) => {
                shard.metrics().error(ErrorReason::TcpAccept);
                // EMFILE and friends: back off instead of spinning on the error.
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn outbound_conn(shard: Rc<Shard>, conn: Rc<Conn>) {
    let connect = TcpStream::connect_addr(conn.peer);
    let Ok(Ok(stream)) = monoio::time::timeout(shard.shared.tcp.connect_timeout, connect).await
    else {
        shard.metrics().error(ErrorReason::TcpConnect);
        shard
            .shared
            .report_failure(conn.peer, BlockReason::ConnectRefused);
        shard.forget_conn(&conn);
        // INVITEs queued on this connection are lost: the core retries them elsewhere
        // (a cold path, so a buffer of its own is fine).
        shard.core_transport_error(conn.peer, BlockReason::ConnectRefused);
        let _ = shard
            .drain_core(vec![0u8; BUF_SIZE], SendMode::Now, Instant::now())
            .await;
        return;
    };
    if conn.closed.get() {
        shard.forget_conn(&conn);
        return;
    }
    let _ = stream.set_nodelay(true);
    conn.fd.set(stream.as_raw_fd());
    run_conn(shard, conn, stream).await;
}

/// Drives one established connection: a writer task and this reader until either ends.
async fn run_conn(shard: Rc<Shard>, conn: Rc<Conn>, stream: TcpStream) {
    let (mut reader, mut writer) = stream.into_split();
    let wconn = Rc::clone(&conn);
    let wshard = Rc::clone(&shard);
    let write_task = monoio::spawn(async move {
        let mut spare: Vec<u8> = Vec::new();
        loop {
            WritePending(&wconn).await;
            if wconn.pending.borrow().is_empty() {
                break; // closed and nothing left to write
            }
            std::mem::swap(&mut *wconn.pending.borrow_mut(), &mut spare);
            let (result, buf) = writer.write_all(spare).await;
            spare = buf;
            spare.clear();
            wconn.last_activity.set(Instant::now());
            if result.is_err() {
                wshard.metrics().error(ErrorReason::TcpWrite);
                wconn.close();
                break;
            }
            if wconn.closed.get() && wconn.pending.borrow().is_empty() {
                break;
            }
        }
    });

    let mut buf: Vec<u8> = Vec::with_capacity(BUF_SIZE + 1);
    let mut sbuf: Vec<u8> = vec![0u8; BUF_SIZE];
    let idle = shard.shared.tcp.idle_timeout;
    let limits = Limits::default();
    'conn: loop {
        let mut start = 0;
        loop {
            match frame(&buf[start..], &limits) {
                Ok(Frame::Message { len }) => {
                    let input = Inbound {
                        now: Instant::now(),
                        src: conn.peer,
                        local: conn.local,
                        transport: Transport::Tcp,
                        flow: Some(conn.id),
                        placement: Placement::Unknown,
                        compressed: false,
                        bytes: &buf[start..start + len],
                    };
                    sbuf = shard.dispatch(input, sbuf, SendMode::Now).await;
                    start += len;
                }
                Ok(Frame::KeepAlive { len, ping }) => {
                    // RFC 5626 §4.4.1: answer a CRLFCRLF ping with a CRLF pong.
                    if ping {
                        conn.enqueue(b"\r\n", shard.metrics());
                    }
                    start += len;
                }
                Ok(Frame::Partial) => break,
                Ok(Frame::SigComp) => {
                    // RFC 3320 §4.2.2 / RFC 5049: a SigComp record at a message boundary
                    // (plain SIP and SigComp share the port, decided per message).
                    let (outcome, s) = shard
                        .receive_sigcomp_record(&conn, &buf[start..], sbuf)
                        .await;
                    sbuf = s;
                    match outcome {
                        sigcomp::RecordOutcome::Consumed(len) => start += len,
                        sigcomp::RecordOutcome::Partial => break,
                        sigcomp::RecordOutcome::Close => break 'conn,
                    }
                }
                Err(_) => {
                    shard.metrics().error(ErrorReason::TcpFraming);
                    break 'conn;
                }
            }
        }
        if start > 0 {
            buf.drain(..start);
        }
        if conn.closed.get() {
            break;
        }
        let (len, cap) = (buf.len(), buf.capacity());
        if len >= cap {
            // A message larger than any SIP message we accept: the stream cannot be
            // resynchronised (RFC 3261 §18.3), close it.
            shard.metrics().error(ErrorReason::TcpFraming);
            break;
        }
        let deadline = conn.last_activity.get() + idle;
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, reader.read(buf.slice_mut(len..cap))).await {
            Ok((Ok(0), _)) => break,
            Ok((Ok(_), slice)) => {
                buf = slice.into_inner();
                conn.last_activity.set(Instant::now());
            }
            Ok((Err(_), _)) => {
                if !conn.closed.get() {
                    shard.metrics().error(ErrorReason::TcpRead);
                }
                break;
            }
            Err(_) => {
                if conn.last_activity.get() + idle <= Instant::now() {
                    shard.metrics().error(ErrorReason::TcpIdleTimeout);
                    break;
                }
                // Written to meanwhile: the cancelled read kept its buffer, start a new one
                // (rare: a connection idle on reads but busy with writes).
                buf = Vec::with_capacity(BUF_SIZE + 1);
            }
        }
    }
    shard.forget_conn(&conn);
    let _ = write_task.await;
}

async fn handoff_loop(shard: Rc<Shard>, bell: UnixDatagram) {
    let bell_fd = bell.as_raw_fd();
    let mut sbuf: Vec<u8> = crate::shard::resident_zeroes(BUF_SIZE);
    let Some(mailbox) = shard.shared.post.mailbox(shard.id) else {
        return;
    };
    loop {
        shard.metrics().set_queue_depth(mailbox.depth());
        let mut handled = 0u32;
        while let Some(parcel) = mailbox.take() {
            sbuf = handle_parcel(&shard, &parcel, sbuf).await;
            shard.shared.post.recycle(parcel);
            handled += 1;
            if handled % shard.yield_every == 0 {
                YieldNow(false).await;
            }
        }
        if mailbox.arm() {
            // Wait for a ring, then swallow every byte rung so far (allocation-free).
            if bell.readable(false).await.is_err() {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            sockopt::drain(bell_fd);
            mailbox.disarm();
        }
    }
}

async fn handle_parcel(shard: &Rc<Shard>, parcel: &Parcel, sbuf: Vec<u8>) -> Vec<u8> {
    shard.metrics().handoff_received();
    match parcel.kind {
        ParcelKind::Inbound => {
            let input = Inbound {
                now: Instant::now(),
                src: parcel.src,
                local: parcel.local,
                transport: if parcel.tcp {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                flow: parcel.flow.map(FlowId),
                placement: Placement::HandedOff,
                compressed: parcel.compressed,
                bytes: parcel.bytes(),
            };
            shard.dispatch(input, sbuf, SendMode::Now).await
        }
        ParcelKind::ToFlow(flow) => {
            shard.send_flow(FlowId(flow), parcel.bytes());
            sbuf
        }
        ParcelKind::SigcompDatagram => {
            shard
                .receive_sigcomp_datagram(parcel.src, parcel.local, parcel.bytes(), sbuf)
                .await
        }
        ParcelKind::CompressTo => {
            let mut sbuf = sbuf;
            let plain = parcel.bytes();
            let Some(slot) = sbuf.get_mut(..plain.len()) else {
                shard.metrics().drop(DropReason::TooLarge);
                return sbuf;
            };
            slot.copy_from_slice(plain);
            shard
                .send_udp_compressed(parcel.local, parcel.src, sbuf, plain.len())
                .await
        }
        ParcelKind::CompressToFlow(flow) => {
            shard.send_flow_compressed(FlowId(flow), parcel.bytes());
            sbuf
        }
    }
}
