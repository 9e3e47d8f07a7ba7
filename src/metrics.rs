//! Plain per-shard counters, summed on scrape and exposed in the Prometheus text format.
//!
//! Every shard owns one [`ShardMetrics`] and is the only writer of it, so a count is a
//! relaxed load and store on a cache line no other core writes: no lock, no contended
//! atomic read-modify-write on the message path. A scrape (cold path, admin thread) reads
//! every shard's cells and sums them. The few process-wide values (backend state, probe
//! round-trip time, blacklist size, readiness) each have a single writer too.
//!
//! # Metric names (stable: dashboards and alerts are written against them)
//!
//! Counters (Prometheus adds the `_total` suffix shown here):
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `sipedge_requests_received_total` | `method` | SIP requests received from the network |
//! | `sipedge_requests_sent_total` | `method` | SIP requests sent (forwarded, or OPTIONS probes) |
//! | `sipedge_responses_received_total` | `class` (`1xx`..`6xx`) | SIP responses received |
//! | `sipedge_responses_sent_total` | `class` | SIP responses sent (relayed or generated) |
//! | `sipedge_local_responses_total` | `status` | responses sipedge generated itself (400, 483, 503 while draining, ...) |
//! | `sipedge_drops_total` | `reason` | messages discarded without an answer, see [`DropReason`] |
//! | `sipedge_errors_total` | `reason` | socket and connection errors, see [`ErrorReason`] |
//! | `sipedge_shard_messages_total` | `shard` | messages each shard processed (its load) |
//! | `sipedge_shard_handoffs_sent_total` | `shard` | messages a shard handed to the shard owning their call |
//! | `sipedge_shard_handoffs_received_total` | `shard` | messages a shard received from other shards |
//! | `sipedge_backend_requests_total` | `backend` | requests forwarded to each backend |
//! | `sipedge_backend_failovers_total` | `backend` | requests that hashed to this backend but went elsewhere because it was unavailable |
//! | `sipedge_backend_probes_total` | `backend`, `result` (`ok`, `timeout`, `error`) | OPTIONS health probes and their outcome |
//! | `sipedge_config_reloads_total` | `result` (`ok`, `error`) | configuration reloads (SIGHUP) |
//! | `sipedge_sigcomp_messages_total` | `shard`, `result` | SigComp messages per shard, see [`SigcompResult`] |
//!
//! Gauges:
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `sipedge_shard_queue_depth` | `shard` | messages waiting in the shard's handoff queue when it last drained it |
//! | `sipedge_shard_tcp_connections` | `shard`, `direction` (`inbound`, `outbound`) | open TCP connections |
//! | `sipedge_sigcomp_compartments` | `shard` | open SigComp compartments (one per compressing peer) |
//! | `sipedge_backend_up` | `backend` | 1 when the backend takes new calls, else 0 |
//! | `sipedge_backend_state` | `backend`, `state` (`up`, `suspect`, `down`) | 1 for the backend's current health state, 0 for the others |
//! | `sipedge_backend_probe_rtt_seconds` | `backend` | round-trip time of the last answered OPTIONS probe |
//! | `sipedge_blacklist_entries` | `reason` | destinations currently blacklisted, see [`BlacklistReason`] |
//! | `sipedge_backend_blacklisted` | `backend`, `reason` | 1 for the reason the backend's address is blacklisted now (all 0 when it is not) |
//! | `sipedge_ready` | | 1 when listeners are bound, at least one backend is up and not draining |
//! | `sipedge_draining` | | 1 after SIGTERM or `POST /drain` |
//! | `sipedge_shards` | | number of shards (cores) |
//! | `sipedge_udp_kernel_steering` | | 1 when the kernel delivers UDP datagrams to the shard owning their Call-ID (`kernel_steering`) |
//! | `sipedge_build_info` | `version`, `driver` | always 1; carries the version and the I/O driver in use |
//!
//! `method` is one of [`METHODS`] (anything else counts as `other`); `status` is one of
//! [`LOCAL_STATUSES`] or `other`. Every label value exists from the first scrape on (zeros
//! included), so `rate()` and alert expressions never see a series appear out of nowhere.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// SIP methods with their own `method` label value; anything else is `other`.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
    "other",
];

/// Response classes, the `class` label values.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// Status codes sipedge may generate itself, the `status` label values (plus `other`).
pub const LOCAL_STATUSES: [u16; 19] = [
    100, 200, 400, 403, 404, 408, 413, 416, 420, 480, 482, 483, 500, 501, 502, 503, 504, 505, 513,
];

/// Index of the `other` method / status cell.
const OTHER_METHOD: usize = METHODS.len() - 1;
const STATUS_CELLS: usize = LOCAL_STATUSES.len() + 1;

/// Returns the [`METHODS`] index of a request method (case-sensitive, RFC 3261 §7.1).
pub fn method_index(method: &[u8]) -> usize {
    // A match, not a search of `METHODS`: it compiles to a switch on the length and word
    // compares, where the search compared each name in turn (a `memcmp` each). The test
    // `label_indexes` keeps the two in step.
    match method {
        b"INVITE" => 0,
        b"ACK" => 1,
        b"BYE" => 2,
        b"CANCEL" => 3,
        b"OPTIONS" => 4,
        b"REGISTER" => 5,
        b"PRACK" => 6,
        b"SUBSCRIBE" => 7,
        b"NOTIFY" => 8,
        b"PUBLISH" => 9,
        b"INFO" => 10,
        b"REFER" => 11,
        b"MESSAGE" => 12,
        b"UPDATE" => 13,
        _ => OTHER_METHOD,
    }
}

/// Returns the [`CLASSES`] index of a status code, or `None` outside 100..=699.
pub fn class_index(status: u16) -> Option<usize> {
    match status {
        100..=699 => Some(usize::from(status / 100 - 1)),
        _ => None,
    }
}

fn status_index(status: u16) -> usize {
    LOCAL_STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(LOCAL_STATUSES.len())
}

macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }
        impl $name {
            /// Every variant, in label order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];
            /// Number of variants.
            pub const COUNT: usize = Self::ALL.len();
            /// The label value exposed on the scrape.
            pub fn label(self) -> &'static str {
                match self { $(Self::$variant => $label,)+ }
            }
        }
    };
}

label_enum! {
    /// Why a message was discarded without an answer (`sipedge_drops_total{reason}`).
    ///
    /// The first group mirrors the proxy core's reasons (same labels), the rest are the shell's.
    DropReason {
        /// Not a SIP message at all, or an empty datagram.
        NotSip => "not_sip",
        /// A CRLF keep-alive or STUN packet on UDP (RFC 5626 §3.5.1); not an error.
        KeepAlive => "keepalive",
        /// A SigComp message (RFC 3320) while SigComp is disabled (`[sigcomp] enabled = false`).
        Sigcomp => "sigcomp",
        /// A response that does not parse (RFC 3261 §18.1.2: responses are never answered).
        MalformedResponse => "malformed_response",
        /// A response whose top Via is not this proxy's (RFC 3261 §16.7 step 2).
        ForeignVia => "foreign_via",
        /// A response with no Via after ours.
        NoNextVia => "no_next_via",
        /// A malformed ACK, or an ACK that would deserve an error (ACKs are never answered).
        BadAck => "bad_ack",
        /// A request too broken to answer at all (no usable Via to send an error to).
        Unanswerable => "unanswerable",
        /// No backend available (an ACK; other requests get 503).
        NoBackend => "no_backend",
        /// The next hop is a host name the message path cannot resolve.
        Unresolved => "unresolved",
        /// The next hop needs a transport with no listener here (TLS, SCTP, WebSocket).
        UnsupportedTransport => "unsupported_transport",
        /// The output buffer could not hold the message.
        BufferTooSmall => "buffer_too_small",
        /// A response from a backend an INVITE already failed over from (RFC 3261 §16.7:
        /// the proxy absorbs it; only the backend in charge answers the caller).
        Superseded => "superseded",
        /// No local socket to send from (no listener of the destination's address family).
        NoRoute => "no_route",
        /// The owning shard's handoff queue was full.
        HandoffQueueFull => "handoff_queue_full",
        /// No free handoff buffer left on this shard.
        HandoffPoolEmpty => "handoff_pool_empty",
        /// A message larger than any buffer (64 KiB).
        TooLarge => "too_large",
        /// A response or in-dialog request for a TCP connection that is gone.
        UnknownFlow => "unknown_flow",
        /// A reason not listed above.
        Other => "other",
    }
}

label_enum! {
    /// Socket and connection errors (`sipedge_errors_total{reason}`).
    ErrorReason {
        /// `recvmsg` on a UDP socket failed.
        UdpRecv => "udp_recv",
        /// `sendmsg` on a UDP socket failed.
        UdpSend => "udp_send",
        /// An ICMP error reported on a UDP socket (`IP_RECVERR`): port or host unreachable.
        Icmp => "icmp",
        /// `accept` failed.
        TcpAccept => "tcp_accept",
        /// An outgoing TCP connection could not be established.
        TcpConnect => "tcp_connect",
        /// Reading from a TCP connection failed.
        TcpRead => "tcp_read",
        /// Writing to a TCP connection failed.
        TcpWrite => "tcp_write",
        /// A TCP peer sent bytes that are not SIP; the connection was closed.
        TcpFraming => "tcp_framing",
        /// A TCP connection idle for longer than the configured timeout was closed.
        TcpIdleTimeout => "tcp_idle_timeout",
        /// The connection limit was reached and a new connection was refused.
        TcpLimit => "tcp_limit",
    }
}

label_enum! {
    /// Why a destination is blacklisted (`sipedge_blacklist_entries{reason}`); the labels are
    /// those of [`crate::balance::BlockReason`].
    BlacklistReason {
        /// ICMP destination or port unreachable (IP_RECVERR).
        IcmpUnreachable => "icmp_unreachable",
        /// A TCP connection attempt was refused or timed out.
        ConnectRefused => "connect_refused",
        /// An established TCP connection was reset.
        Reset => "reset",
        /// The kernel rejected a send.
        SendError => "send_error",
        /// The destination answered 503.
        Status503 => "status_503",
        /// A transaction or probe timed out.
        Timeout => "timeout",
        /// Health probing declared it down.
        ProbeFailed => "probe_failed",
        /// Blocked by an operator or configuration.
        Administrative => "administrative",
    }
}

label_enum! {
    /// Health state of a backend (`sipedge_backend_state{state}`).
    BackendState {
        /// Takes new calls.
        Up => "up",
        /// Missed probes or had errors; still takes calls until it is declared down.
        Suspect => "suspect",
        /// Takes no new calls; in-dialog traffic still reaches it.
        Down => "down",
    }
}

label_enum! {
    /// Outcome of one OPTIONS health probe (`sipedge_backend_probes_total{result}`).
    ProbeResult {
        /// Any response arrived (RFC 3261 §11: even a 4xx means the server is alive).
        Ok => "ok",
        /// No response within the probe timeout.
        Timeout => "timeout",
        /// The probe could not be sent or the backend answered 5xx/6xx.
        Error => "error",
    }
}

label_enum! {
    /// What happened to a SigComp message (`sipedge_sigcomp_messages_total{result}`).
    SigcompResult {
        /// Decompressed into a SIP message that went on like any other.
        Decompressed => "decompressed",
        /// Failed to decompress (RFC 3320 §8.7); a NACK was sent back (RFC 4077).
        Failed => "failed",
        /// A NACK from a peer for one of our messages: its compressor state was reset.
        NackReceived => "nack_received",
        /// A message compressed toward a peer that asked for it (RFC 3486).
        Compressed => "compressed",
        /// Compression was impossible within the peer's resources; sent uncompressed.
        SentPlain => "sent_plain",
    }
}

label_enum! {
    /// TCP connection direction (`sipedge_shard_tcp_connections{direction}`).
    Direction {
        /// Accepted from a client.
        Inbound => "inbound",
        /// Opened toward a backend or another next hop.
        Outbound => "outbound",
    }
}

/// Adds one to a counter with a single writer (cheaper than `fetch_add`: no locked RMW).
#[inline]
fn bump(cell: &AtomicU64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// One shard's counters. Only that shard writes them; scrapes read them.
///
/// Aligned to 128 bytes so two shards' counters never share a cache line (adjacent-line
/// prefetch pairs lines on x86).
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    requests_in: [AtomicU64; METHODS.len()],
    requests_out: [AtomicU64; METHODS.len()],
    responses_in: [AtomicU64; CLASSES.len()],
    responses_out: [AtomicU64; CLASSES.len()],
    local_responses: [AtomicU64; STATUS_CELLS],
    drops: [AtomicU64; DropReason::COUNT],
    errors: [AtomicU64; ErrorReason::COUNT],
    messages: AtomicU64,
    handoffs_sent: AtomicU64,
    handoffs_received: AtomicU64,
    queue_depth: AtomicU64,
    tcp_connections: [AtomicI64; Direction::COUNT],
    sigcomp: [AtomicU64; SigcompResult::COUNT],
    sigcomp_compartments: AtomicU64,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self {
            requests_in: std::array::from_fn(|_| AtomicU64::new(0)),
            requests_out: std::array::from_fn(|_| AtomicU64::new(0)),
            responses_in: std::array::from_fn(|_| AtomicU64::new(0)),
            responses_out: std::array::from_fn(|_| AtomicU64::new(0)),
            local_responses: std::array::from_fn(|_| AtomicU64::new(0)),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            messages: AtomicU64::new(0),
            handoffs_sent: AtomicU64::new(0),
            handoffs_received: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            tcp_connections: std::array::from_fn(|_| AtomicI64::new(0)),
            sigcomp: std::array::from_fn(|_| AtomicU64::new(0)),
            sigcomp_compartments: AtomicU64::new(0),
        }
    }
}

impl ShardMetrics {
    /// Counts a message this shard took in (from a socket or from another shard).
    pub fn message(&self) {
        bump(&self.messages);
    }

    /// Counts a request received from the network; `method` is its raw method token.
    pub fn request_in(&self, method: &[u8]) {
        bump(&self.requests_in[method_index(method)]);
    }

    /// Counts a request sent; `method` is its raw method token.
    pub fn request_out(&self, method: &[u8]) {
        bump(&self.requests_out[method_index(method)]);
    }

    /// Counts a response received from the network.
    pub fn response_in(&self, status: u16) {
        if let Some(i) = class_index(status) {
            bump(&self.responses_in[i]);
        }
    }

    /// Counts a response sent (relayed or generated).
    pub fn response_out(&self, status: u16) {
        if let Some(i) = class_index(status) {
            bump(&self.responses_out[i]);
        }
    }

    /// Counts a response sipedge generated itself (also call [`Self::response_out`]).
    pub fn local_response(&self, status: u16) {
        bump(&self.local_responses[status_index(status)]);
    }

    /// Counts a discarded message.
    pub fn drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize]);
    }

    /// Counts a socket or connection error.
    pub fn error(&self, reason: ErrorReason) {
        bump(&self.errors[reason as usize]);
    }

    /// Counts a message handed to another shard.
    pub fn handoff_sent(&self) {
        bump(&self.handoffs_sent);
    }

    /// Counts a message received from another shard.
    pub fn handoff_received(&self) {
        bump(&self.handoffs_received);
    }

    /// Records how many messages were waiting in the handoff queue when the shard drained it.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    /// Counts a SigComp message and what became of it.
    pub fn sigcomp(&self, result: SigcompResult) {
        bump(&self.sigcomp[result as usize]);
    }

    /// Records how many SigComp compartments the shard holds.
    pub fn set_sigcomp_compartments(&self, count: usize) {
        self.sigcomp_compartments
            .store(count as u64, Ordering::Relaxed);
    }

    /// Records a TCP connection opened (`+1`) or closed (`-1`).
    pub fn tcp_connection(&self, direction: Direction, delta: i64) {
        let cell = &self.tcp_connections[direction as usize];
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(delta),
            Ordering::Relaxed,
        );
    }
}

/// One backend's counters and health values.
///
/// Request and failover counts have one cell per shard (each written by its shard); state,
/// probe results and RTT are written only by the health prober.
#[derive(Debug)]
pub struct BackendMetrics {
    name: String,
    requests: Box<[PaddedU64]>,
    failovers: Box<[PaddedU64]>,
    state: AtomicU8,
    probe_rtt_micros: AtomicU64,
    probes: [AtomicU64; ProbeResult::COUNT],
    /// 0 when the address is not blacklisted, else 1 + the [`BlacklistReason`] index.
    blacklisted: AtomicU8,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedU64(AtomicU64);

impl BackendMetrics {
    /// Creates the metrics of backend `name` (its label value, e.g. `sip:10.0.0.7:5060`).
    pub fn new(name: &str, shards: usize) -> Self {
        Self {
            name: name.to_owned(),
            requests: (0..shards).map(|_| PaddedU64::default()).collect(),
            failovers: (0..shards).map(|_| PaddedU64::default()).collect(),
            state: AtomicU8::new(BackendState::Up as u8),
            probe_rtt_micros: AtomicU64::new(0),
            probes: std::array::from_fn(|_| AtomicU64::new(0)),
            blacklisted: AtomicU8::new(0),
        }
    }

    /// Records whether the backend's address is blacklisted now, and why (written on scrape).
    pub fn set_blacklisted(&self, reason: Option<BlacklistReason>) {
        let raw = reason.map_or(0, |r| r as u8 + 1);
        self.blacklisted.store(raw, Ordering::Relaxed);
    }

    /// Why the backend's address is blacklisted, as last recorded.
    pub fn blacklisted(&self) -> Option<BlacklistReason> {
        let raw = usize::from(self.blacklisted.load(Ordering::Relaxed));
        raw.checked_sub(1)
            .and_then(|i| BlacklistReason::ALL.get(i).copied())
    }

    /// The backend's label value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a request `shard` forwarded to this backend.
    pub fn request(&self, shard: usize) {
        if let Some(cell) = self.requests.get(shard) {
            bump(&cell.0);
        }
    }

    /// Counts a request of `shard` that hashed to this backend but went to another one.
    pub fn failover(&self, shard: usize) {
        if let Some(cell) = self.failovers.get(shard) {
            bump(&cell.0);
        }
    }

    /// Sets the health state (called by the health prober only).
    pub fn set_state(&self, state: BackendState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Returns the last recorded health state.
    pub fn state(&self) -> BackendState {
        let raw = usize::from(self.state.load(Ordering::Relaxed));
        BackendState::ALL
            .get(raw)
            .copied()
            .unwrap_or(BackendState::Down)
    }

    /// Records one probe outcome, with its round-trip time when answered.
    pub fn probe(&self, result: ProbeResult, rtt: Option<std::time::Duration>) {
        bump(&self.probes[result as usize]);
        if let Some(rtt) = rtt {
            let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
            self.probe_rtt_micros.store(micros, Ordering::Relaxed);
        }
    }

    fn requests_total(&self) -> u64 {
        self.requests
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    fn failovers_total(&self) -> u64 {
        self.failovers
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// All of the process's metrics: one [`ShardMetrics`] per shard plus process-wide values.
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[ShardMetrics]>,
    backends: ArcSwap<Vec<Arc<BackendMetrics>>>,
    blacklist: [AtomicU64; BlacklistReason::COUNT],
    reloads: [AtomicU64; 2],
    ready: AtomicU8,
    draining: AtomicU8,
    kernel_steering: AtomicU8,
    version: &'static str,
    driver: ArcSwap<String>,
}

impl Metrics {
    /// Creates zeroed metrics for `shards` shards and the given backend names.
    pub fn new(shards: usize, backends: &[String]) -> Self {
        let shard_count = shards.max(1);
        Self {
            shards: (0..shard_count).map(|_| ShardMetrics::default()).collect(),
            backends: ArcSwap::from_pointee(
                backends
                    .iter()
                    .map(|b| Arc::new(BackendMetrics::new(b, shard_count)))
                    .collect(),
            ),
            blacklist: std::array::from_fn(|_| AtomicU64::new(0)),
            reloads: std::array::from_fn(|_| AtomicU64::new(0)),
            ready: AtomicU8::new(0),
            draining: AtomicU8::new(0),
            kernel_steering: AtomicU8::new(0),
            version: env!("CARGO_PKG_VERSION"),
            driver: ArcSwap::from_pointee(String::new()),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The counters of shard `shard` (clamped into range, so an index never panics).
    pub fn shard(&self, shard: usize) -> &ShardMetrics {
        let last = self.shards.len() - 1;
        &self.shards[shard.min(last)]
    }

    /// The current backend table, in pool order.
    pub fn backends(&self) -> Arc<Vec<Arc<BackendMetrics>>> {
        self.backends.load_full()
    }

    /// Replaces the backend table after a reload. Backends that keep their name keep their
    /// counters (counters must not go backwards across a reload).
    pub fn set_backends(&self, names: &[String]) {
        let old = self.backends.load_full();
        let table = names
            .iter()
            .map(|name| {
                old.iter()
                    .find(|b| b.name == *name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(BackendMetrics::new(name, self.shards.len())))
            })
            .collect();
        self.backends.store(Arc::new(table));
    }

    /// Sets the number of blacklisted destinations for one reason (one writer: the shell).
    pub fn set_blacklist_entries(&self, reason: BlacklistReason, entries: u64) {
        self.blacklist[reason as usize].store(entries, Ordering::Relaxed);
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the `sipedge_ready` gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(u8::from(ready), Ordering::Relaxed);
    }

    /// Sets the `sipedge_draining` gauge.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(u8::from(draining), Ordering::Relaxed);
    }

    /// Sets the `sipedge_udp_kernel_steering` gauge.
    pub fn set_kernel_steering(&self, on: bool) {
        self.kernel_steering.store(u8::from(on), Ordering::Relaxed);
    }

    /// Records the I/O driver in use (`io_uring` or `epoll`) for `sipedge_build_info`.
    pub fn set_driver(&self, driver: &str) {
        self.driver.store(Arc::new(driver.to_owned()));
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4).
    pub fn encode_prometheus(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(self))));
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }

    fn sum<F: Fn(&ShardMetrics) -> u64>(&self, f: F) -> u64 {
        self.shards.iter().map(f).sum()
    }
}

/// The content type of [`Metrics::encode_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct Scrape(Arc<Metrics>);

fn load(cell: &AtomicU64) -> u64 {
    cell.load(Ordering::Relaxed)
}

/// Writes one metric family whose members are `(labels, value)` pairs.
/// A gauge family with one member and no labels.
fn unlabelled_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        [([] as [(&str, String); 0], value)],
    )
}

fn family<L, V, I>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    members: I,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    I: IntoIterator<Item = (L, V)>,
    V: Into<Value>,
{
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in members {
        let metric = family.encode_family(&labels)?;
        match (metric_type, value.into()) {
            (MetricType::Counter, Value::Int(v)) => ConstCounter::new(v).encode(metric)?,
            (MetricType::Counter, Value::Float(v)) => ConstCounter::new(v).encode(metric)?,
            (_, Value::Int(v)) => {
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric)?;
            }
            (_, Value::Signed(v)) => ConstGauge::new(v).encode(metric)?,
            (_, Value::Float(v)) => ConstGauge::new(v).encode(metric)?,
        }
    }
    Ok(())
}

enum Value {
    Int(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Signed(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

fn l1(k: &'static str, v: impl ToString) -> Labels1 {
    [(k, v.to_string())]
}
fn l2(k1: &'static str, v1: impl ToString, k2: &'static str, v2: impl ToString) -> Labels2 {
    [(k1, v1.to_string()), (k2, v2.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &*self.0;
        let e = &mut enc;
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;

        family(
            e,
            "sipedge_requests_received",
            "SIP requests received from the network",
            counter,
            METHODS
                .iter()
                .enumerate()
                .map(|(i, name)| (l1("method", name), m.sum(|s| load(&s.requests_in[i])))),
        )?;
        family(
            e,
            "sipedge_requests_sent",
            "SIP requests sent (forwarded or probes)",
            counter,
            METHODS
                .iter()
                .enumerate()
                .map(|(i, name)| (l1("method", name), m.sum(|s| load(&s.requests_out[i])))),
        )?;
        family(
            e,
            "sipedge_responses_received",
            "SIP responses received from the network",
            counter,
            CLASSES
                .iter()
                .enumerate()
                .map(|(i, name)| (l1("class", name), m.sum(|s| load(&s.responses_in[i])))),
        )?;
        family(
            e,
            "sipedge_responses_sent",
            "SIP responses sent (relayed or generated)",
            counter,
            CLASSES
                .iter()
                .enumerate()
                .map(|(i, name)| (l1("class", name), m.sum(|s| load(&s.responses_out[i])))),
        )?;
        family(
            e,
            "sipedge_local_responses",
            "SIP responses generated by sipedge itself",
            counter,
            (0..STATUS_CELLS).map(|i| {
                let status = LOCAL_STATUSES
                    .get(i)
                    .map_or_else(|| "other".to_owned(), u16::to_string);
                (l1("status", status), m.sum(|s| load(&s.local_responses[i])))
            }),
        )?;
        family(
            e,
            "sipedge_drops",
            "Messages discarded without an answer",
            counter,
            DropReason::ALL.iter().map(|&r| {
                (
                    l1("reason", r.label()),
                    m.sum(|s| load(&s.drops[r as usize])),
                )
            }),
        )?;
        family(
            e,
            "sipedge_errors",
            "Socket and connection errors",
            counter,
            ErrorReason::ALL.iter().map(|&r| {
                (
                    l1("reason", r.label()),
                    m.sum(|s| load(&s.errors[r as usize])),
                )
            }),
        )?;
        family(
            e,
            "sipedge_shard_messages",
            "Messages processed per shard",
            counter,
            m.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (l1("shard", i), load(&s.messages))),
        )?;
        family(
            e,
            "sipedge_shard_handoffs_sent",
            "Messages handed to the shard owning their call",
            counter,
            m.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (l1("shard", i), load(&s.handoffs_sent))),
        )?;
        family(
            e,
            "sipedge_shard_handoffs_received",
            "Messages received from other shards",
            counter,
            m.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (l1("shard", i), load(&s.handoffs_received))),
        )?;
        family(
            e,
            "sipedge_shard_queue_depth",
            "Messages waiting in the shard's handoff queue when it last drained it",
            gauge,
            m.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (l1("shard", i), load(&s.queue_depth))),
        )?;
        family(
            e,
            "sipedge_shard_tcp_connections",
            "Open TCP connections per shard",
            gauge,
            m.shards.iter().enumerate().flat_map(|(i, s)| {
                Direction::ALL.iter().map(move |&d| {
                    (
                        l2("shard", i, "direction", d.label()),
                        s.tcp_connections[d as usize].load(Ordering::Relaxed),
                    )
                })
            }),
        )?;
        family(
            e,
            "sipedge_sigcomp_messages",
            "SigComp messages per shard and what became of them",
            counter,
            m.shards.iter().enumerate().flat_map(|(i, s)| {
                SigcompResult::ALL.iter().map(move |&r| {
                    (
                        l2("shard", i, "result", r.label()),
                        load(&s.sigcomp[r as usize]),
                    )
                })
            }),
        )?;
        family(
            e,
            "sipedge_sigcomp_compartments",
            "Open SigComp compartments per shard",
            gauge,
            m.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (l1("shard", i), load(&s.sigcomp_compartments))),
        )?;

        let backends = m.backends.load_full();
        family(
            e,
            "sipedge_backend_requests",
            "Requests forwarded to each backend",
            counter,
            backends
                .iter()
                .map(|b| (l1("backend", &b.name), b.requests_total())),
        )?;
        family(
            e,
            "sipedge_backend_failovers",
            "Requests that went to another backend because this one was unavailable",
            counter,
            backends
                .iter()
                .map(|b| (l1("backend", &b.name), b.failovers_total())),
        )?;
        family(
            e,
            "sipedge_backend_probes",
            "OPTIONS health probes by outcome",
            counter,
            backends.iter().flat_map(|b| {
                ProbeResult::ALL.iter().map(move |&r| {
                    (
                        l2("backend", &b.name, "result", r.label()),
                        load(&b.probes[r as usize]),
                    )
                })
            }),
        )?;
        family(
            e,
            "sipedge_backend_up",
            "1 when the backend takes new calls",
            gauge,
            backends.iter().map(|b| {
                (
                    l1("backend", &b.name),
                    u64::from(b.state() != BackendState::Down),
                )
            }),
        )?;
        family(
            e,
            "sipedge_backend_state",
            "1 for the backend's current health state",
            gauge,
            backends.iter().flat_map(|b| {
                let current = b.state();
                BackendState::ALL.iter().map(move |&st| {
                    (
                        l2("backend", &b.name, "state", st.label()),
                        u64::from(st == current),
                    )
                })
            }),
        )?;
        family(
            e,
            "sipedge_backend_probe_rtt_seconds",
            "Round-trip time of the last answered OPTIONS probe",
            gauge,
            backends.iter().map(|b| {
                let micros = load(&b.probe_rtt_micros) as f64;
                (l1("backend", &b.name), micros / 1e6)
            }),
        )?;
        family(
            e,
            "sipedge_backend_blacklisted",
            "1 for the reason the backend's address is blacklisted now",
            gauge,
            backends.iter().flat_map(|b| {
                let current = b.blacklisted();
                BlacklistReason::ALL.iter().map(move |&r| {
                    (
                        l2("backend", &b.name, "reason", r.label()),
                        u64::from(current == Some(r)),
                    )
                })
            }),
        )?;
        family(
            e,
            "sipedge_blacklist_entries",
            "Destinations currently blacklisted",
            gauge,
            BlacklistReason::ALL
                .iter()
                .map(|&r| (l1("reason", r.label()), load(&m.blacklist[r as usize]))),
        )?;
        family(
            e,
            "sipedge_config_reloads",
            "Configuration reloads by result",
            counter,
            [("ok", 0usize), ("error", 1)]
                .into_iter()
                .map(|(label, i)| (l1("result", label), load(&m.reloads[i]))),
        )?;
        unlabelled_gauge(
            e,
            "sipedge_ready",
            "1 when listeners are bound, a backend is up and the process is not draining",
            u64::from(m.ready.load(Ordering::Relaxed)),
        )?;
        unlabelled_gauge(
            e,
            "sipedge_draining",
            "1 while draining (after SIGTERM or POST /drain)",
            u64::from(m.draining.load(Ordering::Relaxed)),
        )?;
        unlabelled_gauge(
            e,
            "sipedge_udp_kernel_steering",
            "1 when the kernel steers UDP datagrams to the shard owning their Call-ID",
            u64::from(m.kernel_steering.load(Ordering::Relaxed)),
        )?;
        unlabelled_gauge(
            e,
            "sipedge_shards",
            "Number of shards",
            m.shards.len() as u64,
        )?;
        let driver = m.driver.load_full();
        family(
            e,
            "sipedge_build_info",
            "Version and I/O driver; always 1",
            gauge,
            [(l2("version", m.version, "driver", driver.as_str()), 1u64)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_shards_and_render() {
        let metrics = Arc::new(Metrics::new(2, &["sip:127.0.0.1:5070".to_owned()]));
        metrics.shard(0).request_in(b"INVITE");
        metrics.shard(1).request_in(b"INVITE");
        metrics.shard(1).request_in(b"FOO");
        metrics.shard(0).response_out(486);
        metrics.shard(0).local_response(483);
        metrics.shard(1).drop(DropReason::ForeignVia);
        metrics.shard(1).tcp_connection(Direction::Inbound, 1);
        metrics.backends()[0].request(1);
        metrics.backends()[0].probe(
            ProbeResult::Ok,
            Some(std::time::Duration::from_micros(1500)),
        );
        let text = metrics.encode_prometheus();
        for line in [
            "sipedge_requests_received_total{method=\"INVITE\"} 2",
            "sipedge_requests_received_total{method=\"other\"} 1",
            "sipedge_responses_sent_total{class=\"4xx\"} 1",
            "sipedge_local_responses_total{status=\"483\"} 1",
            "sipedge_drops_total{reason=\"foreign_via\"} 1",
            "sipedge_shard_tcp_connections{shard=\"1\",direction=\"inbound\"} 1",
            "sipedge_backend_requests_total{backend=\"sip:127.0.0.1:5070\"} 1",
            "sipedge_backend_probe_rtt_seconds{backend=\"sip:127.0.0.1:5070\"} 0.0015",
            "sipedge_backend_up{backend=\"sip:127.0.0.1:5070\"} 1",
            "sipedge_ready 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn reload_keeps_counters_of_surviving_backends() {
        let metrics = Metrics::new(1, &["sip:a".to_owned(), "sip:b".to_owned()]);
        metrics.backends()[1].request(0);
        metrics.set_backends(&["sip:b".to_owned(), "sip:c".to_owned()]);
        let table = metrics.backends();
        assert_eq!(table[0].name(), "sip:b");
        assert_eq!(table[0].requests_total(), 1);
        assert_eq!(table[1].requests_total(), 0);
    }

    #[test]
    fn label_indexes() {
        assert_eq!(METHODS[method_index(b"BYE")], "BYE");
        for (i, name) in METHODS.iter().enumerate() {
            assert_eq!(method_index(name.as_bytes()), i, "{name}");
        }
        assert_eq!(method_index(b"INVITEX"), OTHER_METHOD);
        assert_eq!(method_index(b""), OTHER_METHOD);
        assert_eq!(METHODS[method_index(b"bye")], "other");
        assert_eq!(class_index(99), None);
        assert_eq!(class_index(180), Some(0));
        assert_eq!(class_index(699), Some(5));
        assert_eq!(class_index(700), None);
        assert_eq!(status_index(9), LOCAL_STATUSES.len());
    }
}
