//! The monoio shell: the only part of sipedge that touches sockets, threads, clocks and signals.
//!
//! [`run`] starts the process:
//!
//! 1. picks the I/O driver (io_uring when the kernel allows it, else epoll; or as configured);
//! 2. binds, for every shard and every configured listener, its own `SO_REUSEPORT` UDP socket
//!    or TCP listener (all in the calling thread, so a bad address fails the start cleanly);
//! 3. starts the admin HTTP server (metrics, health, readiness, drain) on its own thread;
//! 4. starts one thread per shard, pinned to its CPU, each running a monoio runtime
//!    ([`shard`]) that receives, runs the proxy engine, and sends;
//! 5. waits for signals: SIGTERM/SIGINT drain for the grace period and exit 0 (a second one
//!    exits at once), SIGHUP reloads the configuration (the backend pool is swapped; calls in
//!    flight are not dropped).
//!
//! Messages whose Call-ID another shard owns are handed to it through bounded lock-free
//! queues ([`handoff`]); nothing on the message path takes a lock or allocates.
//!
//! [`dns`]: RFC 3263 resolution of backend names on its own thread.

mod admin;
pub mod dns;
mod engine;
mod handoff;
mod probe;
mod shard;
mod sockopt;
pub mod steer;

pub use sockopt::{disable_transparent_huge_pages, set_batch_scheduling};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;

use self::handoff::{Mailbox, PostOffice};
use self::shard::{ShardSetup, Shared};
use crate::balance::{
    AliveCodes, BackendEntry, BackendSpec, Blacklist, BlacklistConfig, HealthConfig, Pool,
    SpecError,
};
use crate::config::{Config, Driver, ListenTransport, Listener, Scheduling};
use crate::metrics::{BlacklistReason, Metrics};
use crate::shard::ShardId;

/// Attaches the Call-ID steering program ([`steer`]) to every UDP listener's reuseport
/// group. Shard `i` bound socket `i` of each group ([`run`] binds every listener in shard
/// order), so the program's index is the shard. Returns whether every UDP listener is steered; on any
/// failure the shards' own handoff keeps every message on its owner, so this only logs.
fn steer_udp(setups: &[ShardSetup], shards: ShardId) -> bool {
    use std::os::fd::AsRawFd;
    let Some(first) = setups.first() else {
        return false;
    };
    if first.udp.is_empty() {
        return false;
    }
    let steering = match steer::Steering::load(shards) {
        Ok(steering) => steering,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "kernel steering of UDP by Call-ID unavailable (needs CAP_BPF); shards hand \
                 datagrams to their owner instead"
            );
            return false;
        }
    };
    let mut all = true;
    for sock in &first.udp {
        let local = sock.local_addr().ok();
        match steering.attach(sock.as_raw_fd()) {
            Ok(()) => {
                tracing::info!(listener = ?local, shards, "UDP datagrams steered to their Call-ID's shard by the kernel")
            }
            Err(e) => {
                all = false;
                tracing::warn!(listener = ?local, error = %e, "could not attach the steering program; shards hand datagrams to their owner instead");
            }
        }
    }
    all
}

/// The I/O driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// Linux io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl DriverKind {
    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Why the process could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// io_uring was required but the kernel (or a seccomp policy) refuses it.
    #[error("io_uring was requested but is not available on this system")]
    IoUringUnavailable,
    /// A backend URI could not become a pool member.
    #[error("backend {uri}: {reason}")]
    Backend {
        /// The backend's URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot bind {listener}: {source}")]
    Bind {
        /// The listener.
        listener: String,
        /// The OS error.
        source: io::Error,
    },
    /// The admin/metrics address could not be bound.
    #[error("cannot bind the metrics/admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy core refused its configuration.
    #[error("proxy configuration: {0}")]
    Proxy(#[from] crate::proxy::ConfigError),
    /// Another start-up failure (thread, doorbell, signal handler).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

/// Chooses the driver: `auto` probes io_uring (creating a small ring) and falls back to epoll.
pub fn select_driver(choice: Driver) -> Result<DriverKind, RunError> {
    let uring = monoio::utils::detect_uring();
    match choice {
        Driver::Auto if uring => Ok(DriverKind::IoUring),
        Driver::Auto => Ok(DriverKind::Epoll),
        Driver::IoUring if uring => Ok(DriverKind::IoUring),
        Driver::IoUring => Err(RunError::IoUringUnavailable),
        Driver::Epoll => Ok(DriverKind::Epoll),
    }
}

/// Number of shards for a configuration: as configured, else one per online CPU.
pub fn shard_count(config: &Config) -> u16 {
    config.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX))
            .unwrap_or(1)
    })
}

/// Builds the pool specs of the numeric backends of a configuration, and says whether some
/// backend is a host name (resolved per RFC 3263 on the DNS thread, see [`dns`]).
pub fn backend_specs(config: &Config) -> Result<(Vec<BackendSpec>, bool), RunError> {
    let mut specs = Vec::with_capacity(config.backends.len());
    let mut names = false;
    for b in &config.backends {
        match b.spec() {
            Ok(spec) => specs.push(spec),
            Err(SpecError::NeedsResolution) => names = true,
            Err(e) => {
                return Err(RunError::Backend {
                    uri: b.uri.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok((specs, names))
}

/// The DNS thread's view of the configured backends.
fn backend_entries(config: &Config) -> Vec<BackendEntry> {
    config
        .backends
        .iter()
        .map(|b| BackendEntry {
            uri: b.uri.clone(),
            weight: b.weight,
            priority: u8::try_from(b.priority).unwrap_or(u8::MAX),
            drain: false,
        })
        .collect()
}

/// Metric label of each pool member, in pool order: its URI, with the address added when
/// several members share one URI (a name resolving to several servers).
fn backend_labels(pool: &Pool) -> Vec<String> {
    let members = pool.backends();
    members
        .iter()
        .map(|b| {
            if members.iter().filter(|o| o.uri() == b.uri()).count() > 1 {
                format!("{} ({})", b.uri(), b.addr())
            } else {
                b.uri().to_owned()
            }
        })
        .collect()
}

/// Swaps in a new pool for every shard: metrics first (a shard looking up a new member's
/// counters must find them), then the pool, then the epoch the shards watch.
fn install_pool(shared: &Shared, specs: &[BackendSpec]) -> Result<Vec<String>, String> {
    let pool = shared
        .pool
        .load()
        .reload(specs)
        .map_err(|e| e.to_string())?;
    let labels = backend_labels(&pool);
    shared.metrics.set_backends(&labels);
    shared.pool.store(Arc::new(pool));
    shared.pool_epoch.fetch_add(1, Ordering::SeqCst);
    Ok(labels)
}

/// Starts RFC 3263 resolution when some backend is a host name; each resolution publishes
/// the full member list (numeric backends included) as the new pool.
fn start_dns(shared: &Arc<Shared>, config: &Config) -> Result<Option<dns::DnsHandle>, RunError> {
    let dns_config = dns::DnsConfig {
        nameservers: config.dns.nameservers.clone(),
        ..dns::DnsConfig::default()
    };
    let target = Arc::clone(shared);
    let handle = dns::spawn(
        dns_config,
        backend_entries(config),
        move |specs| match install_pool(&target, &specs) {
            Ok(labels) => tracing::info!(backends = %labels.join(","), "backends resolved"),
            Err(e) => tracing::error!(error = %e, "resolved backends rejected"),
        },
    )
    .map_err(|e| RunError::Backend {
        uri: String::new(),
        reason: e.to_string(),
    })?;
    Ok(Some(handle))
}

/// Loads a new configuration on SIGHUP (re-reading the file and re-applying command-line
/// overrides is the caller's business).
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Runs sipedge with `config` until a signal ends it. Returns `Ok` after a drain completed.
pub fn run(config: Config, reload: Reloader) -> Result<(), RunError> {
    // Handlers first: a SIGHUP or SIGTERM arriving while starting must not kill the process.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(io_err("installing signal handlers"))?;
    let running = start(config)?;
    signal_loop(signals, running, reload)
}

/// A started sipedge: shards, admin endpoint and (for named backends) the DNS thread run on
/// their own threads until the process exits. [`run`] is [`start`] plus the signal handling.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    config: Config,
    listeners: Vec<Listener>,
    admin: SocketAddr,
    dns: Option<dns::DnsHandle>,
}

impl Running {
    /// The listeners as bound (a configured port 0 shows the port the kernel chose).
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The bound admin/metrics address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Starts draining, as SIGTERM or `POST /drain` do (without exiting).
    pub fn drain(&self) {
        admin::start_drain(&self.shared);
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }
}

/// Binds every socket, starts the shards and the admin endpoint, and returns once every
/// shard runs (at most 10 s). Installs no signal handler; see [`run`].
pub fn start(config: Config) -> Result<Running, RunError> {
    let driver = select_driver(config.driver)?;
    let shards = shard_count(&config).max(1);
    let (specs, needs_dns) = backend_specs(&config)?;
    let pool = Pool::new(&specs).map_err(|e| RunError::Backend {
        uri: String::new(),
        reason: e.to_string(),
    })?;
    let names = backend_labels(&pool);
    let metrics = Arc::new(Metrics::new(usize::from(shards), &names));
    metrics.set_driver(driver.name());

    let mut mailboxes = Vec::with_capacity(usize::from(shards));
    let mut bells = Vec::with_capacity(usize::from(shards));
    for id in 0..shards {
        let (mailbox, bell) = Mailbox::new(id).map_err(io_err("creating handoff queues"))?;
        mailboxes.push(mailbox);
        bells.push(bell);
    }

    // Bind every shard's sockets here, so a bad or busy address fails the start at once.
    // A listener on port 0 gets its port from the first bind; the other shards reuse it.
    let mut listeners: Vec<Listener> = config.listen.clone();
    let mut setups: Vec<ShardSetup> = Vec::with_capacity(usize::from(shards));
    for (id, bell) in (0..shards).zip(bells) {
        let mut setup = ShardSetup {
            id,
            udp: Vec::new(),
            tcp: Vec::new(),
            via_udp: Vec::new(),
            bell,
        };
        for listener in &mut listeners {
            let bind_err = |source| RunError::Bind {
                listener: listener.to_string(),
                source,
            };
            match listener.transport {
                ListenTransport::Udp => {
                    let sock = sockopt::bind_udp(listener.addr).map_err(bind_err)?;
                    listener.addr = sock.local_addr().map_err(io_err("local address"))?;
                    setup.udp.push(sock);
                }
                ListenTransport::Tcp => {
                    let sock = sockopt::bind_tcp(listener.addr).map_err(bind_err)?;
                    listener.addr = sock.local_addr().map_err(io_err("local address"))?;
                    setup.tcp.push(sock);
                }
            }
        }
        setups.push(setup);
    }
    let udp_steered = shards > 1 && config.kernel_steering && steer_udp(&setups, shards);
    metrics.set_kernel_steering(udp_steered);
    // Each shard's own UDP port for the Via of the requests it forwards (see
    // `ListenerConfig::via_for`): responses then arrive at the shard owning the call. Not with
    // one shard (nothing to steer) nor behind an advertised address (the port would not be
    // reachable through the NAT or name it stands for).
    if shards > 1 && config.shard_ports {
        for setup in &mut setups {
            for (index, listener) in listeners.iter().enumerate() {
                if listener.transport != ListenTransport::Udp || listener.advertise.is_some() {
                    continue;
                }
                let private = SocketAddr::new(listener.addr.ip(), 0);
                let sock = sockopt::bind_udp_private(private).map_err(|source| RunError::Bind {
                    listener: format!("udp:{private} (shard {} Via port)", setup.id),
                    source,
                })?;
                setup.via_udp.push((sock, index));
            }
        }
    }

    let proxy = proxy_config(&config, &listeners)?;
    // Validate once here, so a bad setting fails the start instead of a shard (what
    // `Core::new` checks, without building a core and its failover table).
    proxy.validate()?;

    let admin_listener =
        std::net::TcpListener::bind(config.metrics).map_err(|source| RunError::Admin {
            addr: config.metrics,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(io_err("admin local address"))?;

    let shared = Arc::new(Shared {
        metrics: Arc::clone(&metrics),
        blacklist: Arc::new(Blacklist::new(BlacklistConfig::default())),
        pool: Arc::new(ArcSwap::from_pointee(pool)),
        post: PostOffice::new(mailboxes),
        shards,
        udp_steered,
        driver,
        tcp: config.tcp.clone(),
        draining: AtomicBool::new(false),
        started: AtomicUsize::new(0),
        pool_epoch: AtomicU64::new(0),
        passive: ArrayQueue::new(1024),
        health: health_config(&config),
        proxy,
        sigcomp: shard::sigcomp_config(&config.sigcomp, shards),
    });

    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sipedge-admin".to_owned())
            .spawn(move || admin::serve(admin_listener, shared))
            .map_err(io_err("starting the admin thread"))?;
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scheduling = config.scheduling;
    for setup in setups {
        let shared = Arc::clone(&shared);
        let id = setup.id;
        std::thread::Builder::new()
            .name(format!("sipedge-shard-{id}"))
            .spawn(move || {
                // Pinning keeps a shard's caches warm; without it the shard still runs.
                if let Err(e) = monoio::utils::bind_to_cpu_set([usize::from(id) % cpus]) {
                    tracing::warn!(shard = id, error = ?e, "could not pin shard to its CPU");
                }
                if scheduling == Scheduling::Batch {
                    if let Err(e) = sockopt::set_batch_scheduling() {
                        tracing::warn!(shard = id, error = %e, "could not make the shard SCHED_BATCH");
                    }
                }
                if let Err(e) = shard::run(setup, shared) {
                    tracing::error!(shard = id, error = %e, "shard stopped");
                    // A shard that cannot run leaves a hole in the Call-ID space: stop.
                    std::process::exit(1);
                }
            })
            .map_err(io_err("starting a shard thread"))?;
    }

    let dns = if needs_dns {
        start_dns(&shared, &config)?
    } else {
        None
    };

    wait_started(&shared, Duration::from_secs(10));
    let listen_list: Vec<String> = listeners.iter().map(ToString::to_string).collect();
    tracing::info!(
        shards,
        driver = driver.name(),
        scheduling = %config.scheduling,
        listeners = %listen_list.join(","),
        backends = %names.join(","),
        metrics = %admin_addr,
        "sipedge started"
    );
    Ok(Running {
        shared,
        config,
        listeners,
        admin: admin_addr,
        dns,
    })
}

fn wait_started(shared: &Shared, limit: Duration) {
    let deadline = Instant::now() + limit;
    while shared.started.load(Ordering::SeqCst) < usize::from(shared.shards)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal_loop(
    mut signals: signal_hook::iterator::Signals,
    running: Running,
    reload: Reloader,
) -> Result<(), RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Running {
        shared,
        config,
        mut dns,
        ..
    } = running;
    let shared = &shared;
    let mut drain_deadline: Option<Instant> = None;
    let mut config = config;
    loop {
        // Idle, the thread sleeps until a signal comes (a proxy at rest wakes nothing);
        // draining, it looks every 20 ms for the end of the grace or a second signal.
        let arrived = match drain_deadline {
            None => signals.wait(),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    tracing::info!("drain complete, exiting");
                    return Ok(());
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
                signals.pending()
            }
        };
        for signal in arrived {
            match signal {
                SIGTERM | SIGINT => {
                    if drain_deadline.is_some() {
                        tracing::info!("second termination signal: exiting now");
                        return Ok(());
                    }
                    admin::start_drain(shared);
                    drain_deadline = Some(Instant::now() + config.drain_grace);
                    tracing::info!(
                        grace_secs = config.drain_grace.as_secs_f64(),
                        "termination signal: draining (new calls get 503, dialogs continue)"
                    );
                }
                SIGHUP => match reload_config(shared, &config, &reload, &mut dns) {
                    Ok(next) => config = next,
                    Err(e) => {
                        shared.metrics.reload(false);
                        tracing::error!(error = %e, "configuration reload failed; keeping the running configuration");
                    }
                },
                _ => {}
            }
        }
    }
}

fn reload_config(
    shared: &Arc<Shared>,
    running: &Config,
    reload: &Reloader,
    dns: &mut Option<dns::DnsHandle>,
) -> Result<Config, String> {
    let next = reload()?;
    let (specs, needs_dns) = backend_specs(&next).map_err(|e| e.to_string())?;
    if needs_dns {
        match dns {
            Some(handle) if next.dns == running.dns => handle.reload(backend_entries(&next)),
            _ => *dns = start_dns(shared, &next).map_err(|e| e.to_string())?,
        }
    } else {
        *dns = None;
    }
    // Numeric members at once; named ones follow when resolved.
    let labels = install_pool(shared, &specs)?;
    shared.metrics.reload(true);
    if next.listen != running.listen
        || next.shards != running.shards
        || next.driver != running.driver
        || next.scheduling != running.scheduling
        || next.metrics != running.metrics
        || next.tcp != running.tcp
        || next.proxy != running.proxy
        || next.health != running.health
        || next.sigcomp != running.sigcomp
    {
        tracing::warn!(
            "listeners, shards, driver, scheduling, metrics address, [proxy], [tcp], [health] and [sigcomp] change only on restart"
        );
    }
    tracing::info!(backends = %labels.join(","), "configuration reloaded");
    Ok(next)
}

/// The shard that owns a TCP flow id minted by this runtime.
pub fn flow_shard(flow: u64) -> ShardId {
    (flow >> 48) as ShardId
}

/// The health machine's settings from the configuration; `None` when probing is off.
fn health_config(config: &Config) -> Option<HealthConfig> {
    let interval = config.health.probe_interval?;
    Some(HealthConfig {
        probing: true,
        interval,
        timeout: config.health.probe_timeout,
        down_after: config.health.failures_before_down,
        up_after: config.health.successes_before_up,
        alive_codes: config
            .health
            .alive_codes
            .iter()
            .fold(AliveCodes::none(), |codes, r| {
                codes.with_range(r.low, r.high)
            }),
    })
}

/// Counts the active blacklist entries by reason into the metrics, and marks each backend
/// whose address is blocked with its reason (one writer: the admin thread, on scrape).
pub(crate) fn publish_blacklist(shared: &Shared) {
    let now = Instant::now();
    let counts = shared.blacklist.active_by_reason(now);
    for (&reason, &count) in BlacklistReason::ALL.iter().zip(counts.iter()) {
        shared.metrics.set_blacklist_entries(reason, count);
    }
    // The metrics list the pool's members in the pool's order (see `Shard::count_backend`).
    let pool = shared.pool.load();
    let view = shared.blacklist.view();
    for (backend, metrics) in pool.backends().iter().zip(shared.metrics.backends().iter()) {
        let reason = view
            .entry(backend.addr())
            .filter(|e| e.is_active(now))
            .map(|e| e.reason.metric_reason());
        metrics.set_blacklisted(reason);
    }
}

/// The proxy core's configuration: the bound listeners (ports resolved) and `[proxy]`.
fn proxy_config(
    config: &Config,
    listeners: &[Listener],
) -> Result<crate::proxy::ProxyConfig, RunError> {
    use crate::proxy::{ListenerConfig, ProxyConfig};
    use crate::sip::Transport;
    let secret = match &config.proxy.secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "no proxy.secret configured: using a random one (set it on every node behind one name)"
            );
            random_secret().map_err(io_err("reading /dev/urandom"))?
        }
    };
    Ok(ProxyConfig {
        listeners: listeners
            .iter()
            .map(|l| ListenerConfig {
                transport: match l.transport {
                    ListenTransport::Udp => Transport::Udp,
                    ListenTransport::Tcp => Transport::Tcp,
                },
                local: l.addr,
                advertised_host: l
                    .advertise
                    .as_ref()
                    .map(|(h, _)| h.clone())
                    .or_else(|| primary_address(l)),
                advertised_port: l.advertise.as_ref().and_then(|(_, p)| *p),
                via_for: None,
            })
            .collect(),
        aliases: config.proxy.aliases.clone(),
        record_route: config.proxy.record_route,
        secret,
        max_forwards: config.proxy.max_forwards,
        udp_size_limit: config.proxy.udp_size_limit,
        proxy_require_supported: config.proxy.proxy_require_supported.clone(),
        server_name: config.proxy.server_name.clone(),
        failover: config.failover.core_config(),
    })
}

/// For a wildcard listener without `advertise`: the address the host routes from by default
/// (a UDP "connect" toward a documentation address sends no packet, RFC 5737 / RFC 3849).
fn primary_address(listener: &Listener) -> Option<String> {
    let ip = listener.addr.ip();
    if !ip.is_unspecified() {
        return None;
    }
    let (bind, probe): (SocketAddr, SocketAddr) = if ip.is_ipv6() {
        (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            "[2001:db8::1]:5060".parse().ok()?,
        )
    } else {
        (
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            "203.0.113.1:5060".parse().ok()?,
        )
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    let local = socket
        .connect(probe)
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .unwrap_or(if ip.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    let host = match local {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    tracing::warn!(
        listener = %listener,
        advertised = %host,
        "wildcard listener without ;advertise=: advertising the primary address"
    );
    Some(host)
}

fn random_secret() -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}
