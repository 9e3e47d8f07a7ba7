//! Configuration: TOML text → validated, typed [`Config`].
//!
//! Parsing is strict: unknown keys are errors (a typo must not silently fall back to a
//! default), and every value is checked while it is deserialized, so an error names the key
//! and the line it is on. Cross-field checks (at least one listener, at least one backend)
//! run afterwards and name the key they concern. Nothing here reads files or touches the
//! network; the caller passes the text in.
//!
//! The built-in default ([`DEFAULT_TOML`], printed by `sipedge --print-default-config`):
//! UDP and TCP on `127.0.0.1:5060`, backends `sip:127.0.0.1:5070` and `sip:127.0.0.1:5071`,
//! metrics and admin on `127.0.0.1:9090`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::balance::{BackendSpec, BackendUri};

/// The default configuration, as TOML. [`Config::default`] is this text parsed.
pub const DEFAULT_TOML: &str = r#"# sipedge configuration (this is the built-in default).
# Every key is optional; a missing key takes the value shown here.

# Shards (one monoio runtime per core, each pinned to its own CPU). 0 = one per online CPU.
shards = 0
# I/O driver: "auto" (io_uring when the kernel allows it, else epoll), "io_uring" or "epoll".
driver = "auto"
# CPU scheduling of the shard threads: "batch" (SCHED_BATCH) or "normal" (SCHED_OTHER). A batch
# shard woken by a datagram does not preempt the task running on its core: it runs when that
# task blocks or its slice ends, and reads what arrived meanwhile in the same wake-up. On cores
# of its own this changes nothing; on cores shared with other work it saves context switches
# (perf/RESULTS.md: a fifth less CPU per call at 1,000 calls/s, a third at 7,200, with the load
# on the same cores) for at most one scheduler slice (a few ms) of delay behind a busy neighbour.
scheduling = "batch"
# SIP listeners, "udp:IP:PORT" or "tcp:IP:PORT"; IPv6 as "udp:[::1]:5060". Any number of each.
# The address written into Via and Record-Route is the bound one; behind NAT, or to use a
# name, add ";advertise=HOST[:PORT]": "udp:0.0.0.0:5060;advertise=sip.example.net:5060".
# A wildcard address without it advertises the host's primary address (logged at start).
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
# With 2+ shards, each shard also binds a UDP port of its own (same IP, port chosen by the
# kernel) and names it in the Via of the requests it forwards, so responses come straight back
# to the shard owning the call instead of being handed over between shards. Record-Route keeps
# the shared port. Only for UDP listeners without ";advertise"; false = the shared port only
# (e.g. when a firewall opens just that one).
shard_ports = true
# With 2+ shards, a small eBPF program attached to each UDP listener (SO_ATTACH_REUSEPORT_EBPF)
# makes the kernel deliver a datagram to the shard owning its Call-ID, so the shards need not
# hand requests to each other. Needs CAP_BPF (or root); without it, or on a kernel that
# refuses the program, sipedge logs why and hands off between shards as before.
kernel_steering = true
# Admin HTTP (GET /metrics, /health, /ready; POST /drain).
metrics = "127.0.0.1:9090"
# After SIGTERM or POST /drain: refuse new calls with 503 for this long, then exit.
drain_grace_secs = 30

# The pool new calls are spread over (hash of the Call-ID, so a call stays on one backend).
# A host name (sip:pool.example.net) is resolved per RFC 3263 and may yield several members.
# Either a URI string, or a table with uri, weight (share of calls) and priority (lower is
# preferred; a higher group is used only when no member of a better one is up). Weight 0
# drains a member: it takes no new call, and its calls in progress continue on it.
backends = [
  "sip:127.0.0.1:5070",
  "sip:127.0.0.1:5071",
]

[log]
# error, warn, info, debug, trace, or a tracing filter such as "sipedge=debug,info".
level = "info"
# "text" or "json" (one JSON object per line).
format = "text"

[proxy]
# Insert Record-Route so in-dialog requests come back through the proxy (RFC 3261 §16.6).
record_route = true
# Secret (16+ bytes) keying Via branches and Record-Route affinity tokens. Every node behind
# one name must share it. Unset: a random one per start (dialogs do not survive a restart).
# secret = "change-me-to-32-random-characters"
# Or read it from a file (its trailing line break ignored), e.g. a mounted Kubernetes Secret;
# set one of secret and secret_file.
# secret_file = "/etc/sipedge/secret"
# Other names (host or host:port) that mean this proxy in a Request-URI or Route.
aliases = []
# Max-Forwards written on forwarded requests at most (RFC 3261 §16.6 step 3).
max_forwards = 70
# Requests larger than this toward a UDP next hop go over TCP (RFC 3261 §18.1.1); 0 = never.
udp_size_limit = 1300
# Proxy-Require option tags accepted; any other gets 420 Bad Extension.
proxy_require_supported = []
# Server header of responses sipedge generates; "" = none.
server_name = "sipedge"

[tcp]
# Close a TCP connection that carried nothing (not even a CRLF keep-alive) for this long.
idle_timeout_secs = 300
# Give up connecting to a next hop after this long (and blacklist it).
connect_timeout_ms = 2000
# Most TCP connections per shard, inbound and outbound together.
max_connections_per_shard = 16384

[health]
# Send an OPTIONS probe to every backend this often; 0 turns probing off.
probe_interval_ms = 5000
# A probe not answered within this is a failure.
probe_timeout_ms = 2000
# Consecutive failed probes before a backend is taken out of the pool.
failures_before_down = 3
# Consecutive answered probes before it is put back.
successes_before_up = 2
# Probe answers that count as alive, as codes ("404") or inclusive ranges ("200-299"): any
# final answer that shows a working SIP stack, 2xx-4xx except 408. Anything else is a failure.
alive_codes = ["200-407", "409-499"]

[failover]
# INVITE failover: a new call whose backend refuses it (one of retry_codes), stays silent for
# timeout_ms or cannot be reached, before any provisional response other than 100, is sent to
# the next backend in hash order; the refusal is ACKed and never reaches the caller. When no
# backend is left the caller gets 503 with Retry-After. CANCEL and the ACK of a failed call
# follow the INVITE to the backend that has it. A 503 also blocks that backend for new calls
# for its Retry-After (a silent one for the blacklist's back-off). false = stateless.
enabled = true
# How long a backend has to send any response to an INVITE (less than RFC 3261 Timer B, 32 s).
timeout_ms = 2000
# Final responses (300-699) that move the call to the next backend.
retry_codes = [503]
# Backends tried per call, the first included (1-8).
max_attempts = 3
# Retry-After (seconds) of the 503 sipedge answers when every backend failed.
retry_after_secs = 5
# INVITE transactions tracked per shard, each with up to 4 KiB of request kept (allocated at
# start); beyond it, or for a larger INVITE, new calls are forwarded without failover.
max_transactions = 8192

[dns]
# Backends named by host name are resolved per RFC 3263 (NAPTR, SRV, A/AAAA) and re-resolved
# as their TTLs expire. Name servers as "IP:PORT"; empty = the system's resolv.conf.
nameservers = []

[sigcomp]
# Signaling compression (RFC 3320, 3486, 5049): SigComp messages from clients are
# decompressed (UDP datagrams, and records on TCP sharing the port with plain SIP), and
# messages toward a Via or URI carrying comp=sigcomp are compressed. false = SigComp
# messages are dropped (counted as drops{reason="sigcomp"}) and nothing is compressed.
enabled = true
# UDVM memory offered to each message (RFC 3320 §3.3.1): 2048, 4096, ... 131072 bytes.
decompression_memory_size = 16384
# State memory offered to each compartment (one per client address or TCP connection):
# 0 (no state), 2048, 4096, ... 131072 bytes.
state_memory_size = 16384
# UDVM cycles allowed per bit of a message: 16, 32, 64 or 128.
cycles_per_bit = 64
# Bound on the state memory of all compartments of the process (split evenly over the
# shards); when reached, the least recently used compartments are closed first.
total_memory = 67108864
# A compartment unused for this long is closed.
idle_timeout_secs = 3600
"#;

/// Which I/O driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// io_uring when the kernel supports it (probed at start), else epoll.
    #[default]
    Auto,
    /// io_uring only; start fails if it is unavailable.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "io_uring" | "iouring" | "uring" => Ok(Self::IoUring),
            "epoll" | "legacy" => Ok(Self::Epoll),
            _ => Err(format!(
                "unknown driver {s:?}: expected \"auto\", \"io_uring\" or \"epoll\""
            )),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

/// How the kernel schedules the shard threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// `SCHED_BATCH`: a woken shard waits for the running task's slice instead of
    /// preempting it (see [`DEFAULT_TOML`]).
    #[default]
    Batch,
    /// `SCHED_OTHER`, the kernel's default for every thread.
    Normal,
}

impl FromStr for Scheduling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "batch" => Ok(Self::Batch),
            "normal" | "other" => Ok(Self::Normal),
            _ => Err(format!(
                "unknown scheduling {s:?}: expected \"batch\" or \"normal\""
            )),
        }
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Batch => "batch",
            Self::Normal => "normal",
        })
    }
}

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenTransport {
    /// Datagrams.
    Udp,
    /// A stream, framed by Content-Length (RFC 3261 §18.3).
    Tcp,
}

/// One SIP listener: `udp:IP:PORT` or `tcp:IP:PORT`, optionally followed by
/// `;advertise=HOST[:PORT]`, the name written into Via and Record-Route for messages leaving
/// through it (needed for a wildcard address like `0.0.0.0`, or behind NAT).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listener {
    /// Transport.
    pub transport: ListenTransport,
    /// Local address (port 0 picks a free port, useful in tests).
    pub addr: SocketAddr,
    /// Advertised host and port, when not the bound address.
    pub advertise: Option<(String, Option<u16>)>,
}

impl FromStr for Listener {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (s, advertise) = match s.split_once(';') {
            None => (s, None),
            Some((head, param)) => {
                let value = param
                    .strip_prefix("advertise=")
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        format!("listener {s:?}: the only parameter is ;advertise=HOST[:PORT]")
                    })?;
                (
                    head,
                    Some(parse_host_port(value).map_err(|e| format!("listener {s:?}: {e}"))?),
                )
            }
        };
        let (proto, addr) = s
            .split_once(':')
            .ok_or_else(|| format!("listener {s:?}: expected udp:IP:PORT or tcp:IP:PORT"))?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => ListenTransport::Udp,
            "tcp" => ListenTransport::Tcp,
            _ => {
                return Err(format!(
                    "listener {s:?}: transport must be udp or tcp (got {proto:?})"
                ));
            }
        };
        let addr = addr.parse::<SocketAddr>().map_err(|_| {
            format!("listener {s:?}: {addr:?} is not IP:PORT (IPv6 as [addr]:port)")
        })?;
        Ok(Self {
            transport,
            addr,
            advertise,
        })
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = || format!("{text:?}: bad port");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port())?),
            None if after.is_empty() => None,
            None => return Err(bad_port()),
        };
        return Ok((format!("[{host}]"), port));
    }
    match text.split_once(':') {
        Some((host, port)) if !host.is_empty() => {
            Ok((host.to_owned(), Some(port.parse().map_err(|_| bad_port())?)))
        }
        Some(_) => Err(format!("{text:?}: empty host")),
        None => Ok((text.to_owned(), None)),
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.transport {
            ListenTransport::Udp => "udp",
            ListenTransport::Tcp => "tcp",
        };
        write!(f, "{proto}:{}", self.addr)?;
        match &self.advertise {
            Some((host, Some(port))) => write!(f, ";advertise={host}:{port}"),
            Some((host, None)) => write!(f, ";advertise={host}"),
            None => Ok(()),
        }
    }
}

/// One configured backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Its SIP URI, e.g. `sip:10.0.0.7:5060;transport=tcp`.
    pub uri: String,
    /// Relative share of new calls within its priority group.
    pub weight: u32,
    /// Priority group, lower preferred.
    pub priority: u16,
}

impl FromStr for BackendConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackendUri::parse(s).map_err(|e| format!("backend {s:?}: {e}"))?;
        Ok(Self {
            uri: s.trim().to_owned(),
            weight: 1,
            priority: 0,
        })
    }
}

impl BackendConfig {
    /// The pool member spec, when the host is a numeric address (names go through DNS).
    pub fn spec(&self) -> Result<BackendSpec, crate::balance::SpecError> {
        let mut spec = BackendSpec::from_uri(&self.uri)?;
        spec.weight = self.weight;
        spec.priority = self.priority;
        Ok(spec)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!(
                "unknown log format {s:?}: expected \"text\" or \"json\""
            )),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter (`info`, `sipedge=debug,warn`, ...).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Proxy behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Insert Record-Route (RFC 3261 §16.6 step 4).
    pub record_route: bool,
    /// Secret (at least 16 bytes) keying the Via branch MAC and the Record-Route affinity
    /// token. Every node behind one name must share it; `None` draws a random one at start
    /// (fine for one node, but dialogs then do not survive a restart).
    pub secret: Option<String>,
    /// Extra `host` or `host:port` names meaning "this proxy" in a Request-URI or Route.
    pub aliases: Vec<String>,
    /// Highest Max-Forwards written (70, RFC 3261 §16.6 step 3).
    pub max_forwards: u8,
    /// Requests larger than this toward a UDP next hop go over TCP (RFC 3261 §18.1.1);
    /// `None` disables the switch.
    pub udp_size_limit: Option<usize>,
    /// Proxy-Require option tags accepted (others get 420, RFC 3261 §16.3 item 5).
    pub proxy_require_supported: Vec<String>,
    /// `Server` header of generated responses; `None` writes none.
    pub server_name: Option<String>,
}

/// TCP tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Outgoing connection attempts time out after this long.
    pub connect_timeout: Duration,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
}

/// Active OPTIONS health probing of the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Interval between probes of one backend; `None` = probing off.
    pub probe_interval: Option<Duration>,
    /// Probe answer deadline.
    pub probe_timeout: Duration,
    /// Failed probes in a row before a backend is down.
    pub failures_before_down: u32,
    /// Answered probes in a row before it is up again.
    pub successes_before_up: u32,
    /// Probe reply codes that count as alive, as inclusive ranges.
    pub alive_codes: Vec<CodeRange>,
}

/// An inclusive range of SIP final response codes, written `"404"` or `"200-299"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    /// The lowest code in the range.
    pub low: u16,
    /// The highest code in the range.
    pub high: u16,
}

impl FromStr for CodeRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (200..=699).contains(c))
                .ok_or_else(|| {
                    format!("`{text}`: a final response code is a number from 200 to 699")
                })
        };
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (code(low)?, code(high)?),
            None => {
                let c = code(text)?;
                (c, c)
            }
        };
        if low > high {
            return Err(format!("`{text}`: the range is empty"));
        }
        Ok(Self { low, high })
    }
}

/// INVITE failover (`[failover]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    /// Track INVITEs and retry them on the next backend; `false` = fully stateless.
    pub enabled: bool,
    /// How long a backend has to send any response to an INVITE.
    pub timeout: Duration,
    /// Final response codes that move the call to the next backend.
    pub retry_codes: Vec<u16>,
    /// Backends tried per call (1-8).
    pub max_attempts: usize,
    /// Retry-After of the 503 answered when every backend failed.
    pub retry_after_secs: u32,
    /// INVITE transactions tracked per shard.
    pub max_transactions: usize,
}

impl FailoverSettings {
    /// The proxy core's failover parameters; `None` when disabled.
    pub fn core_config(&self) -> Option<crate::balance::FailoverConfig> {
        if !self.enabled {
            return None;
        }
        let d = crate::balance::FailoverConfig::default();
        let retry_codes = self
            .retry_codes
            .iter()
            .fold(crate::balance::StatusCodes::none(), |codes, &c| {
                codes.with_range(c, c)
            });
        Some(crate::balance::FailoverConfig {
            timeout: self.timeout,
            retry_codes,
            max_attempts: self.max_attempts,
            retry_after: self.retry_after_secs,
            capacity: self.max_transactions,
            ..d
        })
    }
}

/// DNS resolution of backend names (RFC 3263).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Name servers (`IP:PORT`); empty = the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

/// Signaling compression (RFC 3320) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigcompSettings {
    /// Decompress SigComp from clients and compress toward peers that ask (RFC 3486).
    pub enabled: bool,
    /// UDVM memory offered per message (RFC 3320 §3.3.1 value: 2048 << n, at most 131072).
    pub decompression_memory_size: u32,
    /// State memory offered per compartment (0, or 2048 << n up to 131072).
    pub state_memory_size: usize,
    /// UDVM cycles per bit (16, 32, 64 or 128).
    pub cycles_per_bit: u16,
    /// State memory of all compartments of the process together (split over shards).
    pub total_memory: usize,
    /// Idle compartments are closed after this long.
    pub idle_timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Shard count; `None` = one per online CPU.
    pub shards: Option<u16>,
    /// I/O driver choice.
    pub driver: Driver,
    /// Scheduling policy of the shard threads.
    pub scheduling: Scheduling,
    /// SIP listeners (at least one).
    pub listen: Vec<Listener>,
    /// Admin/metrics HTTP address.
    pub metrics: SocketAddr,
    /// How long to keep serving in-dialog traffic after a drain starts.
    pub drain_grace: Duration,
    /// Each shard names a UDP port of its own in the Via of forwarded requests (2+ shards).
    pub shard_ports: bool,
    /// The kernel steers UDP datagrams to the shard owning their Call-ID (2+ shards).
    pub kernel_steering: bool,
    /// The backend pool (at least one).
    pub backends: Vec<BackendConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Proxy switches.
    pub proxy: ProxyConfig,
    /// TCP tuning.
    pub tcp: TcpConfig,
    /// Health probing.
    pub health: HealthConfig,
    /// Backend name resolution.
    pub dns: DnsConfig,
    /// Signaling compression.
    pub sigcomp: SigcompSettings,
    /// INVITE failover.
    pub failover: FailoverSettings,
}

/// Why a configuration was rejected. The message names the key (and, for syntax and value
/// errors, the line and column).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// TOML syntax error, unknown key, or a value that does not parse; carries toml's
    /// message, which shows the line, the column and the key.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A cross-field rule failed.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A value deserialized from a string through `FromStr`, so toml reports the error with
/// the key's line.
#[derive(Debug, Clone)]
struct Parsed<T>(T);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug)]
enum RawBackend {
    Uri(Parsed<BackendConfig>),
    Table(RawBackendTable),
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backend URI string or a table with uri, weight, priority")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBackend, E> {
                v.parse()
                    .map(|b| RawBackend::Uri(Parsed(b)))
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawBackend, A::Error> {
                RawBackendTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTable {
    uri: Parsed<BackendConfig>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u16,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<Parsed<LogFormat>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    record_route: Option<bool>,
    secret: Option<String>,
    secret_file: Option<String>,
    aliases: Option<Vec<String>>,
    max_forwards: Option<u8>,
    udp_size_limit: Option<usize>,
    proxy_require_supported: Option<Vec<String>>,
    server_name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    idle_timeout_secs: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_connections_per_shard: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    probe_interval_ms: Option<u64>,
    probe_timeout_ms: Option<u64>,
    failures_before_down: Option<u32>,
    successes_before_up: Option<u32>,
    alive_codes: Option<Vec<Parsed<CodeRange>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Option<Vec<Parsed<AdminAddr>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigcomp {
    enabled: Option<bool>,
    decompression_memory_size: Option<u32>,
    state_memory_size: Option<usize>,
    cycles_per_bit: Option<u16>,
    total_memory: Option<usize>,
    idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    enabled: Option<bool>,
    timeout_ms: Option<u64>,
    retry_codes: Option<Vec<u16>>,
    max_attempts: Option<usize>,
    retry_after_secs: Option<u32>,
    max_transactions: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    shards: Option<u16>,
    driver: Option<Parsed<Driver>>,
    scheduling: Option<Parsed<Scheduling>>,
    listen: Option<Vec<Parsed<Listener>>>,
    metrics: Option<Parsed<AdminAddr>>,
    drain_grace_secs: Option<u64>,
    shard_ports: Option<bool>,
    kernel_steering: Option<bool>,
    backends: Option<Vec<RawBackend>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    tcp: RawTcp,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    sigcomp: RawSigcomp,
    #[serde(default)]
    failover: RawFailover,
}

#[derive(Debug, Clone, Copy)]
struct AdminAddr(SocketAddr);

impl FromStr for AdminAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(AdminAddr)
            .map_err(|_| format!("{s:?} is not IP:PORT"))
    }
}

/// Reads `proxy.secret_file`: the whole file, without the trailing line break an editor or
/// `kubectl create secret --from-file` leaves, so a Kubernetes Secret or a root-only file can
/// hold the key instead of the configuration itself.
fn read_secret_file(path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("proxy.secret_file", format!("cannot read {path}: {e}")))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(invalid("proxy.secret_file", format!("{path} is empty")));
    }
    Ok(secret.to_owned())
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Parses and validates TOML text. Missing keys take their [`DEFAULT_TOML`] values.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        let d = Self::builtin();
        let config = Self {
            shards: match raw.shards {
                None => d.shards,
                Some(0) => None,
                Some(n) => Some(n),
            },
            driver: raw.driver.map_or(d.driver, |p| p.0),
            scheduling: raw.scheduling.map_or(d.scheduling, |p| p.0),
            listen: raw
                .listen
                .map_or(d.listen, |v| v.into_iter().map(|p| p.0).collect()),
            metrics: raw.metrics.map_or(d.metrics, |p| p.0.0),
            drain_grace: raw
                .drain_grace_secs
                .map_or(d.drain_grace, Duration::from_secs),
            shard_ports: raw.shard_ports.unwrap_or(d.shard_ports),
            kernel_steering: raw.kernel_steering.unwrap_or(d.kernel_steering),
            backends: raw.backends.map_or(d.backends, |v| {
                v.into_iter()
                    .map(|b| match b {
                        RawBackend::Uri(p) => p.0,
                        RawBackend::Table(t) => BackendConfig {
                            weight: t.weight,
                            priority: t.priority,
                            ..t.uri.0
                        },
                    })
                    .collect()
            }),
            log: LogConfig {
                level: raw.log.level.unwrap_or(d.log.level),
                format: raw.log.format.map_or(d.log.format, |p| p.0),
            },
            proxy: ProxyConfig {
                record_route: raw.proxy.record_route.unwrap_or(d.proxy.record_route),
                secret: match (raw.proxy.secret, raw.proxy.secret_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "proxy.secret_file",
                            "set either proxy.secret or proxy.secret_file, not both",
                        ));
                    }
                    (Some(secret), None) => Some(secret),
                    (None, Some(path)) => Some(read_secret_file(&path)?),
                    (None, None) => d.proxy.secret,
                },
                aliases: raw.proxy.aliases.unwrap_or(d.proxy.aliases),
                max_forwards: raw.proxy.max_forwards.unwrap_or(d.proxy.max_forwards),
                udp_size_limit: match raw.proxy.udp_size_limit {
                    None => d.proxy.udp_size_limit,
                    Some(0) => None,
                    Some(n) => Some(n),
                },
                proxy_require_supported: raw
                    .proxy
                    .proxy_require_supported
                    .unwrap_or(d.proxy.proxy_require_supported),
                server_name: match raw.proxy.server_name {
                    None => d.proxy.server_name,
                    Some(s) if s.is_empty() => None,
                    Some(s) => Some(s),
                },
            },
            tcp: TcpConfig {
                idle_timeout: raw
                    .tcp
                    .idle_timeout_secs
                    .map_or(d.tcp.idle_timeout, Duration::from_secs),
                connect_timeout: raw
                    .tcp
                    .connect_timeout_ms
                    .map_or(d.tcp.connect_timeout, Duration::from_millis),
                max_connections_per_shard: raw
                    .tcp
                    .max_connections_per_shard
                    .unwrap_or(d.tcp.max_connections_per_shard),
            },
            health: HealthConfig {
                probe_interval: match raw.health.probe_interval_ms {
                    None => d.health.probe_interval,
                    Some(0) => None,
                    Some(ms) => Some(Duration::from_millis(ms)),
                },
                probe_timeout: raw
                    .health
                    .probe_timeout_ms
                    .map_or(d.health.probe_timeout, Duration::from_millis),
                failures_before_down: raw
                    .health
                    .failures_before_down
                    .unwrap_or(d.health.failures_before_down),
                successes_before_up: raw
                    .health
                    .successes_before_up
                    .unwrap_or(d.health.successes_before_up),
                alive_codes: raw.health.alive_codes.map_or(d.health.alive_codes, |v| {
                    v.into_iter().map(|p| p.0).collect()
                }),
            },
            dns: DnsConfig {
                nameservers: raw.dns.nameservers.map_or(d.dns.nameservers, |v| {
                    v.into_iter().map(|p| p.0.0).collect()
                }),
            },
            sigcomp: SigcompSettings {
                enabled: raw.sigcomp.enabled.unwrap_or(d.sigcomp.enabled),
                decompression_memory_size: raw
                    .sigcomp
                    .decompression_memory_size
                    .unwrap_or(d.sigcomp.decompression_memory_size),
                state_memory_size: raw
                    .sigcomp
                    .state_memory_size
                    .unwrap_or(d.sigcomp.state_memory_size),
                cycles_per_bit: raw
                    .sigcomp
                    .cycles_per_bit
                    .unwrap_or(d.sigcomp.cycles_per_bit),
                total_memory: raw.sigcomp.total_memory.unwrap_or(d.sigcomp.total_memory),
                idle_timeout: raw
                    .sigcomp
                    .idle_timeout_secs
                    .map_or(d.sigcomp.idle_timeout, Duration::from_secs),
            },
            failover: FailoverSettings {
                enabled: raw.failover.enabled.unwrap_or(d.failover.enabled),
                timeout: raw
                    .failover
                    .timeout_ms
                    .map_or(d.failover.timeout, Duration::from_millis),
                retry_codes: raw.failover.retry_codes.unwrap_or(d.failover.retry_codes),
                max_attempts: raw.failover.max_attempts.unwrap_or(d.failover.max_attempts),
                retry_after_secs: raw
                    .failover
                    .retry_after_secs
                    .unwrap_or(d.failover.retry_after_secs),
                max_transactions: raw
                    .failover
                    .max_transactions
                    .unwrap_or(d.failover.max_transactions),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that involve more than one value. Also run after command-line
    /// overrides are applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one listener is required"));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                return Err(invalid("listen", format!("{a} is listed twice")));
            }
        }
        if self.backends.is_empty() {
            return Err(invalid("backends", "at least one backend is required"));
        }
        if self.backends.iter().all(|b| b.weight == 0) {
            return Err(invalid(
                "backends",
                "every backend has weight 0: no backend would take calls",
            ));
        }
        if self.shards.is_some_and(|n| n > 1024) {
            return Err(invalid("shards", "at most 1024 shards"));
        }
        if self.tcp.idle_timeout.is_zero() {
            return Err(invalid("tcp.idle_timeout_secs", "must be at least 1"));
        }
        if self.tcp.connect_timeout.is_zero() {
            return Err(invalid("tcp.connect_timeout_ms", "must be at least 1"));
        }
        if self.tcp.max_connections_per_shard == 0 {
            return Err(invalid(
                "tcp.max_connections_per_shard",
                "must be at least 1",
            ));
        }
        if self.proxy.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("proxy.secret", "must be at least 16 bytes"));
        }
        if self.proxy.max_forwards == 0 {
            return Err(invalid("proxy.max_forwards", "must be at least 1"));
        }
        if self.health.probe_timeout.is_zero() {
            return Err(invalid("health.probe_timeout_ms", "must be at least 1"));
        }
        if self.health.alive_codes.is_empty() {
            return Err(invalid(
                "health.alive_codes",
                "at least one code must count as alive",
            ));
        }
        if self.health.failures_before_down == 0 || self.health.successes_before_up == 0 {
            return Err(invalid(
                "health",
                "failures_before_down and successes_before_up must be at least 1",
            ));
        }
        if let Err(e) = self.log_filter_check() {
            return Err(invalid("log.level", e));
        }
        self.failover_check()?;
        self.sigcomp_check()
    }

    /// The failover timeout must leave the caller's INVITE transaction time for the retry
    /// (RFC 3261 §17.1.1.2: Timer B is 64*T1 = 32 s).
    fn failover_check(&self) -> Result<(), ConfigError> {
        let f = &self.failover;
        if f.timeout.is_zero() || f.timeout >= Duration::from_secs(32) {
            return Err(invalid(
                "failover.timeout_ms",
                "must be between 1 and 31999 (under RFC 3261 Timer B)",
            ));
        }
        if let Some(c) = f.retry_codes.iter().find(|c| !(300..=699).contains(*c)) {
            return Err(invalid(
                "failover.retry_codes",
                format!("{c} is not a final non-2xx status (300-699)"),
            ));
        }
        if !(1..=crate::balance::MAX_ATTEMPTS).contains(&f.max_attempts) {
            return Err(invalid("failover.max_attempts", "must be between 1 and 8"));
        }
        if f.max_transactions > 1 << 20 {
            return Err(invalid(
                "failover.max_transactions",
                "must be at most 1048576",
            ));
        }
        Ok(())
    }

    /// RFC 3320 §3.3.1: the resources are advertised in a 3-bit encoding, so only the
    /// values of its table can be offered.
    fn sigcomp_check(&self) -> Result<(), ConfigError> {
        let s = &self.sigcomp;
        let table = |v: usize| (1..=7).any(|n| v == 1024 << n);
        if !table(s.decompression_memory_size as usize) {
            return Err(invalid(
                "sigcomp.decompression_memory_size",
                "must be one of 2048, 4096, 8192, 16384, 32768, 65536, 131072",
            ));
        }
        if s.state_memory_size != 0 && !table(s.state_memory_size) {
            return Err(invalid(
                "sigcomp.state_memory_size",
                "must be 0 or one of 2048, 4096, 8192, 16384, 32768, 65536, 131072",
            ));
        }
        if ![16, 32, 64, 128].contains(&s.cycles_per_bit) {
            return Err(invalid(
                "sigcomp.cycles_per_bit",
                "must be one of 16, 32, 64, 128",
            ));
        }
        if s.idle_timeout.is_zero() {
            return Err(invalid("sigcomp.idle_timeout_secs", "must be at least 1"));
        }
        if s.total_memory < s.state_memory_size {
            return Err(invalid(
                "sigcomp.total_memory",
                "must hold at least one compartment (state_memory_size)",
            ));
        }
        Ok(())
    }

    fn log_filter_check(&self) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map(drop)
            .map_err(|e| format!("{:?} is not a log level or filter: {e}", self.log.level))
    }

    /// The built-in defaults, without going through TOML.
    fn builtin() -> Self {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Self {
            shards: None,
            driver: Driver::Auto,
            scheduling: Scheduling::Batch,
            listen: vec![
                Listener {
                    transport: ListenTransport::Udp,
                    addr: SocketAddr::new(loopback, 5060),
                    advertise: None,
                },
                Listener {
                    transport: ListenTransport::Tcp,
                    addr: SocketAddr::new(loopback, 5060),
                    advertise: None,
                },
            ],
            metrics: SocketAddr::new(loopback, 9090),
            drain_grace: Duration::from_secs(30),
            shard_ports: true,
            kernel_steering: true,
            backends: ["sip:127.0.0.1:5070", "sip:127.0.0.1:5071"]
                .into_iter()
                .map(|uri| BackendConfig {
                    uri: uri.to_owned(),
                    weight: 1,
                    priority: 0,
                })
                .collect(),
            log: LogConfig {
                level: "info".to_owned(),
                format: LogFormat::Text,
            },
            proxy: ProxyConfig {
                record_route: true,
                secret: None,
                aliases: Vec::new(),
                max_forwards: 70,
                udp_size_limit: Some(1300),
                proxy_require_supported: Vec::new(),
                server_name: Some("sipedge".to_owned()),
            },
            tcp: TcpConfig {
                idle_timeout: Duration::from_secs(300),
                connect_timeout: Duration::from_millis(2000),
                max_connections_per_shard: 16384,
            },
            health: HealthConfig {
                probe_interval: Some(Duration::from_millis(5000)),
                probe_timeout: Duration::from_millis(2000),
                failures_before_down: 3,
                successes_before_up: 2,
                alive_codes: vec![
                    CodeRange {
                        low: 200,
                        high: 407,
                    },
                    CodeRange {
                        low: 409,
                        high: 499,
                    },
                ],
            },
            dns: DnsConfig::default(),
            sigcomp: SigcompSettings {
                enabled: true,
                decompression_memory_size: 16384,
                state_memory_size: 16384,
                cycles_per_bit: 64,
                total_memory: 64 << 20,
                idle_timeout: Duration::from_secs(3600),
            },
            failover: FailoverSettings {
                enabled: true,
                timeout: Duration::from_millis(2000),
                retry_codes: vec![503],
                max_attempts: 3,
                retry_after_secs: 5,
                max_transactions: 8192,
            },
        }
    }
}

impl Default for Config {
    /// The configuration `sipedge` runs with when given no arguments ([`DEFAULT_TOML`]).
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_TOML).map_err(|e| e.to_string());
        assert_eq!(parsed, Ok(Config::default()));
        assert_eq!(Config::from_toml("").map_err(|e| e.to_string()), parsed);
    }

    #[test]
    fn failover_section() {
        let c = Config::from_toml(
            "[failover]\nenabled = true\ntimeout_ms = 1500\nretry_codes = [503, 480]\n\
             max_attempts = 2\nretry_after_secs = 9\nmax_transactions = 100\n",
        )
        .unwrap();
        let f = c.failover.core_config().unwrap();
        assert_eq!(f.timeout, Duration::from_millis(1500));
        assert!(f.retry_codes.contains(480) && f.retry_codes.contains(503));
        assert!(!f.retry_codes.contains(500));
        assert_eq!((f.max_attempts, f.retry_after, f.capacity), (2, 9, 100));
        let off = Config::from_toml("[failover]\nenabled = false\n").unwrap();
        assert_eq!(off.failover.core_config(), None);
        for (text, key) in [
            ("timeout_ms = 32000", "failover.timeout_ms"),
            ("timeout_ms = 0", "failover.timeout_ms"),
            ("retry_codes = [200]", "failover.retry_codes"),
            ("max_attempts = 9", "failover.max_attempts"),
        ] {
            let e = Config::from_toml(&format!("[failover]\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn full_example() {
        let c = Config::from_toml(
            r#"
shards = 2
driver = "epoll"
scheduling = "normal"
listen = ["udp:[::1]:5062", "tcp:0.0.0.0:5060;advertise=edge.example.net:5060", "udp:10.0.0.1:5060"]
metrics = "[::1]:9100"
backends = ["sip:10.0.0.7:5060;transport=tcp", { uri = "sip:10.0.0.8", weight = 3, priority = 1 }]
[log]
format = "json"
level = "sipedge=debug,warn"
[health]
probe_interval_ms = 0
"#,
        )
        .map_err(|e| e.to_string());
        let Ok(c) = c else {
            panic!("{c:?}");
        };
        assert_eq!(c.shards, Some(2));
        assert_eq!(c.driver, Driver::Epoll);
        assert_eq!(c.scheduling, Scheduling::Normal);
        assert_eq!(c.listen.len(), 3);
        assert_eq!(c.listen[0].to_string(), "udp:[::1]:5062");
        assert_eq!(
            c.listen[1].advertise,
            Some(("edge.example.net".to_owned(), Some(5060)))
        );
        assert_eq!(c.backends[1].weight, 3);
        assert_eq!(c.backends[1].priority, 1);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.health.probe_interval, None);
    }

    #[test]
    fn sigcomp_section() {
        let c = Config::from_toml(
            "[sigcomp]\nenabled = false\nstate_memory_size = 0\ncycles_per_bit = 16\n\
             decompression_memory_size = 131072\nidle_timeout_secs = 60\n",
        )
        .map_err(|e| e.to_string());
        let Ok(c) = c else {
            panic!("{c:?}");
        };
        assert!(!c.sigcomp.enabled);
        assert_eq!(c.sigcomp.state_memory_size, 0);
        assert_eq!(c.sigcomp.cycles_per_bit, 16);
        assert_eq!(c.sigcomp.decompression_memory_size, 131_072);
        assert_eq!(c.sigcomp.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.sigcomp.total_memory,
            Config::default().sigcomp.total_memory
        );
    }

    #[test]
    fn health_alive_codes() {
        let c = Config::from_toml("[health]\nalive_codes = [\"200\", \"300-399\"]\n")
            .map_err(|e| e.to_string());
        assert_eq!(
            c.map(|c| c.health.alive_codes),
            Ok(vec![
                CodeRange {
                    low: 200,
                    high: 200
                },
                CodeRange {
                    low: 300,
                    high: 399
                }
            ])
        );
        for bad in ["[\"99\"]", "[\"500-400\"]", "[\"2xx\"]", "[]"] {
            let e = Config::from_toml(&format!("[health]\nalive_codes = {bad}\n"));
            assert!(
                e.is_err_and(|e| e.to_string().contains("alive_codes")),
                "{bad} is refused, naming the key"
            );
        }
    }

    #[test]
    fn secret_from_file() {
        let dir = std::env::temp_dir().join(format!("sipedge-secret-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir);
        assert!(made.is_ok(), "{made:?}");
        let path = dir.join("secret");
        let written = std::fs::write(&path, "0123456789abcdef0123\n");
        assert!(written.is_ok(), "{written:?}");
        let path = path.display().to_string();

        let c = Config::from_toml(&format!("[proxy]\nsecret_file = \"{path}\"\n"))
            .map_err(|e| e.to_string());
        assert_eq!(
            c.map(|c| c.proxy.secret),
            Ok(Some("0123456789abcdef0123".to_owned())),
            "the trailing line break is not part of the secret"
        );

        let both = Config::from_toml(&format!(
            "[proxy]\nsecret = \"0123456789abcdef\"\nsecret_file = \"{path}\"\n"
        ));
        assert!(
            both.is_err_and(|e| e.to_string().contains("not both")),
            "secret and secret_file together are refused"
        );

        let short = std::fs::write(dir.join("short"), "short\n");
        assert!(short.is_ok(), "{short:?}");
        let short = Config::from_toml(&format!(
            "[proxy]\nsecret_file = \"{}\"\n",
            dir.join("short").display()
        ));
        assert!(
            short.is_err_and(|e| e.to_string().contains("at least 16 bytes")),
            "a short secret from a file is refused like an inline one"
        );

        let missing = Config::from_toml("[proxy]\nsecret_file = \"/nonexistent/sipedge\"\n");
        assert!(
            missing.is_err_and(|e| e.to_string().contains("proxy.secret_file")),
            "an unreadable file names the key"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_key_and_line() {
        for (text, needles) in [
            (
                "shards = 1\nlisten = [\"sctp:1.2.3.4:5\"]\n",
                &["line 2", "sctp"][..],
            ),
            ("\n\nbackends = [\"http://x\"]\n", &["line 3", "sip:"]),
            ("unknown_key = 1\n", &["unknown_key", "line 1"]),
            ("[tcp]\nidle_timeout = 3\n", &["idle_timeout", "line 2"]),
            ("metrics = \"localhost\"\n", &["line 1", "IP:PORT"]),
            ("listen = []\n", &["`listen`"]),
            ("backends = []\n", &["`backends`"]),
            ("[log]\nlevel = \"=\"\n", &["log.level"]),
            ("driver = \"kqueue\"\n", &["line 1", "kqueue"]),
            ("scheduling = \"fifo\"\n", &["line 1", "fifo", "batch"]),
            (
                "listen = [\"udp:0.0.0.0:5060;adv=x\"]\n",
                &["line 1", "advertise"],
            ),
            ("[proxy]\nsecret = \"short\"\n", &["proxy.secret"]),
            ("shards = -1\n", &["line 1", "shards"]),
            (
                "[sigcomp]\ndecompression_memory_size = 3000\n",
                &["sigcomp.decompression_memory_size"],
            ),
            (
                "[sigcomp]\ncycles_per_bit = 7\n",
                &["sigcomp.cycles_per_bit"],
            ),
            (
                "[sigcomp]\nstate_memory_size = 1\n",
                &["sigcomp.state_memory_size"],
            ),
            ("[sigcomp]\nenable = true\n", &["enable", "line 2"]),
        ] {
            let err = match Config::from_toml(text) {
                Ok(c) => panic!("accepted {text:?}: {c:?}"),
                Err(e) => e.to_string(),
            };
            for n in needles {
                assert!(err.contains(n), "error for {text:?} lacks {n:?}: {err}");
            }
        }
    }
}
