//! RFC 3263 resolution of backend names, on a thread of its own.
//!
//! hickory-resolver needs tokio; the shards run monoio. So resolution lives on one separate
//! thread (`sipedge-dns`) with a single-threaded tokio runtime, and the shards never wait for
//! DNS: whenever the resolved member set changes, the thread hands the complete list of
//! [`BackendSpec`]s to a `publish` callback, which builds the new pool
//! ([`crate::balance::Pool::reload`], keeping ids and health) and swaps it in for every shard.
//!
//! Each configured entry is re-resolved when the smallest TTL of the records it used expires
//! (clamped to `[min_ttl, max_ttl]`). A failed resolution keeps the entry's last good members
//! (a DNS outage must not empty the pool) and is retried after `retry`. The decisions of RFC 3263
//! (NAPTR, then SRV, then A/AAAA; ports; transports) are in [`crate::balance::rfc3263`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::balance::rfc3263::{
    self, BackendEntry, Naptr, Plan, SrvTarget, choose_naptr, specs_from_targets, srv_name,
};
use crate::balance::{BackendSpec, Transport, default_port};

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask (UDP, TCP on truncation). Empty: the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time between two resolutions of one entry, whatever the TTL says.
    pub min_ttl: Duration,
    /// Longest time a resolution is trusted, whatever the TTL says.
    pub max_ttl: Duration,
    /// Wait before retrying an entry whose resolution failed.
    pub retry: Duration,
    /// Timeout of one DNS query.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    /// System name servers, TTLs clamped to 1 s..5 min, retry after 5 s, 2 s query timeout.
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            retry: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why an entry could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The URI is not a usable backend URI.
    #[error("bad backend URI: {0}")]
    Uri(#[from] crate::balance::SpecError),
    /// The name has no address (after NAPTR/SRV, if any).
    #[error("{0} has no A or AAAA record")]
    NoAddress(String),
    /// The resolver failed (timeout, SERVFAIL, network error).
    #[error("DNS lookup failed: {0}")]
    Lookup(#[from] NetError),
    /// The resolver or its runtime could not be built.
    #[error("DNS resolver setup failed: {0}")]
    Setup(#[from] io::Error),
}

/// A blocking RFC 3263 resolver (one tokio current-thread runtime inside). Used by the DNS
/// thread, and directly at start-up to build the first pool before serving.
pub struct Rfc3263Resolver {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
    config: DnsConfig,
}

impl std::fmt::Debug for Rfc3263Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc3263Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Members resolved for one entry and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Pool members.
    pub specs: Vec<BackendSpec>,
    /// Time until the entry must be resolved again.
    pub valid_for: Duration,
}

impl Rfc3263Resolver {
    /// A resolver asking `config.nameservers` (or the system's).
    pub fn new(config: DnsConfig) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut opts = ResolverOpts::default();
        opts.timeout = config.timeout;
        opts.attempts = 2;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // TTLs are honoured here, per entry; a second cache would only delay changes.
        opts.cache_size = 0;
        let builder = if config.nameservers.is_empty() {
            Resolver::builder_tokio()?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = ns.port();
                    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = {
            // The provider spawns its background tasks on the current tokio runtime.
            let _guard = runtime.enter();
            builder.with_options(opts).build()?
        };
        Ok(Self {
            runtime,
            resolver,
            config,
        })
    }

    /// Resolves one entry per RFC 3263 §4 (blocking).
    pub fn resolve(&self, entry: &BackendEntry) -> Result<Resolved, DnsError> {
        let plan = rfc3263::plan(entry)?;
        let (specs, ttls) = match plan {
            Plan::Numeric(spec) => {
                return Ok(Resolved {
                    specs: vec![spec],
                    valid_for: self.config.max_ttl,
                });
            }
            Plan::Address {
                host,
                port,
                transport,
            } => self.block_on(self.by_address(entry, &host, port, transport))?,
            Plan::Srv { host, transport } => {
                self.block_on(self.by_srv_or_address(entry, &host, transport))?
            }
            Plan::Naptr { host, secure } => self.block_on(self.by_naptr(entry, &host, secure))?,
        };
        Ok(Resolved {
            specs,
            valid_for: rfc3263::validity(ttls, self.config.min_ttl, self.config.max_ttl),
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// §4.1: NAPTR first; without a usable one, SRV per supported transport in order.
    async fn by_naptr(
        &self,
        entry: &BackendEntry,
        host: &str,
        secure: bool,
    ) -> Result<(Vec<BackendSpec>, Vec<u32>), DnsError> {
        let mut ttls = Vec::new();
        let records = match self.resolver.lookup(host, RecordType::NAPTR).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NAPTR(n) => {
                        ttls.push(r.ttl);
                        Some(Naptr {
                            order: n.order,
                            preference: n.preference,
                            flags: String::from_utf8_lossy(&n.flags).into_owned(),
                            services: String::from_utf8_lossy(&n.services).into_owned(),
                            replacement: n.replacement.to_ascii(),
                        })
                    }
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if let Some((transport, srv)) = choose_naptr(&records, secure) {
            let (targets, srv_ttls) = self.srv_targets(&srv).await?;
            if !targets.is_empty() {
                ttls.extend(srv_ttls);
                return Ok((specs_from_targets(entry, transport, &targets), ttls));
            }
        }
        for &transport in rfc3263::srv_fallback_order(secure) {
            let (targets, srv_ttls) = self.srv_targets(&srv_name(transport, host)).await?;
            if !targets.is_empty() {
                ttls.extend(srv_ttls);
                return Ok((specs_from_targets(entry, transport, &targets), ttls));
            }
        }
        // §4.2: no SRV either: A/AAAA on the default port, UDP (TLS for sips).
        let transport = if secure {
            Transport::Tls
        } else {
            Transport::Udp
        };
        let (specs, more) = self
            .by_address(entry, host, default_port(transport), transport)
            .await?;
        ttls.extend(more);
        Ok((specs, ttls))
    }

    /// §4.2: transport known, no port: SRV, else A/AAAA on the default port.
    async fn by_srv_or_address(
        &self,
        entry: &BackendEntry,
        host: &str,
        transport: Transport,
    ) -> Result<(Vec<BackendSpec>, Vec<u32>), DnsError> {
        let (targets, ttls) = self.srv_targets(&srv_name(transport, host)).await?;
        if !targets.is_empty() {
            return Ok((specs_from_targets(entry, transport, &targets), ttls));
        }
        self.by_address(entry, host, default_port(transport), transport)
            .await
    }

    /// §4.2: explicit port: A/AAAA only.
    async fn by_address(
        &self,
        entry: &BackendEntry,
        host: &str,
        port: u16,
        transport: Transport,
    ) -> Result<(Vec<BackendSpec>, Vec<u32>), DnsError> {
        let (addrs, ttls) = self.addresses(host).await?;
        if addrs.is_empty() {
            return Err(DnsError::NoAddress(host.to_owned()));
        }
        let target = SrvTarget {
            priority: 0,
            weight: 1,
            port,
            addrs,
        };
        let mut specs = specs_from_targets(entry, transport, &[target]);
        // A plain A/AAAA set has no SRV weight: every address gets the entry's weight.
        for s in &mut specs {
            s.weight = entry.weight;
        }
        Ok((specs, ttls))
    }

    /// SRV records of `name` with their targets' addresses; empty when there is none.
    /// A target that does not resolve is left out (the others still serve).
    async fn srv_targets(&self, name: &str) -> Result<(Vec<SrvTarget>, Vec<u32>), DnsError> {
        let lookup = match self.resolver.srv_lookup(name).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(e.into()),
        };
        let mut ttls = Vec::new();
        let mut targets = Vec::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            ttls.push(record.ttl);
            // RFC 2782: a target of "." means the service is decidedly not available.
            if srv.target.is_root() {
                continue;
            }
            let target = srv.target.to_ascii();
            match self.addresses(&target).await {
                Ok((addrs, addr_ttls)) if !addrs.is_empty() => {
                    ttls.extend(addr_ttls);
                    targets.push(SrvTarget {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        addrs,
                    });
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(target = %target, srv = %name, "SRV target has no address");
                }
            }
        }
        Ok((targets, ttls))
    }

    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Vec<u32>), DnsError> {
        match self.resolver.lookup_ip(host).await {
            Ok(lookup) => {
                let ttls = lookup.as_lookup().answers().iter().map(|r| r.ttl).collect();
                let mut addrs: Vec<IpAddr> = lookup.iter().collect();
                addrs.sort_unstable();
                addrs.dedup();
                Ok((addrs, ttls))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(DnsError::NoAddress(host.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

enum Command {
    Reload(Vec<BackendEntry>),
    Refresh,
    Stop,
}

/// Control of the DNS thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct DnsHandle {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl DnsHandle {
    /// Replaces the configured entries (SIGHUP reload); they are resolved at once.
    pub fn reload(&self, entries: Vec<BackendEntry>) {
        let _ = self.commands.send(Command::Reload(entries));
    }

    /// Re-resolves every entry now, whatever the TTLs say.
    pub fn refresh(&self) {
        let _ = self.commands.send(Command::Refresh);
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the DNS thread for `entries`. `publish` is called on that thread with the complete
/// member list after the first resolution and after every change; it must not block for long.
pub fn spawn(
    config: DnsConfig,
    entries: Vec<BackendEntry>,
    publish: impl FnMut(Vec<BackendSpec>) + Send + 'static,
) -> Result<DnsHandle, DnsError> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("sipedge-dns".into())
        .spawn(move || {
            // The resolver (and its tokio runtime) is built on, and never leaves, this thread.
            let resolver = match Rfc3263Resolver::new(config) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            run(&resolver, entries, &rx, publish);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(DnsHandle {
            commands: tx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(DnsError::Setup(io::Error::other(
                "DNS thread exited at start",
            )))
        }
    }
}

struct Slot {
    entry: BackendEntry,
    specs: Vec<BackendSpec>,
    due: Instant,
}

fn run(
    resolver: &Rfc3263Resolver,
    entries: Vec<BackendEntry>,
    commands: &mpsc::Receiver<Command>,
    mut publish: impl FnMut(Vec<BackendSpec>),
) {
    let slots_for = |entries: Vec<BackendEntry>, now: Instant| -> Vec<Slot> {
        entries
            .into_iter()
            .map(|entry| Slot {
                entry,
                specs: Vec::new(),
                due: now,
            })
            .collect()
    };
    let mut slots = slots_for(entries, Instant::now());
    let mut published: Option<Vec<BackendSpec>> = None;
    loop {
        let now = Instant::now();
        for slot in slots.iter_mut().filter(|s| s.due <= now) {
            match resolver.resolve(&slot.entry) {
                Ok(r) => {
                    slot.specs = r.specs;
                    slot.due = now + r.valid_for;
                }
                Err(e) => {
                    // Keep the last good members: a DNS outage must not empty the pool.
                    tracing::warn!(error = %e, "backend resolution failed; keeping previous members");
                    slot.due = now + resolver.config.retry;
                }
            }
        }
        let mut current: Vec<BackendSpec> = Vec::new();
        for spec in slots.iter().flat_map(|s| s.specs.iter()) {
            // Two entries naming the same member: the first one configured wins.
            if !current.iter().any(|c| c.backend_id() == spec.backend_id()) {
                current.push(spec.clone());
            }
        }
        // Only changes are news. The pool starts without these members, so an empty set before
        // any answer is none: a name server still starting up must not publish an empty pool.
        let news = match &published {
            Some(last) => *last != current,
            None => !current.is_empty(),
        };
        if news {
            publish(current.clone());
            published = Some(current);
        }
        let next = slots.iter().map(|s| s.due).min();
        let wait = next.map_or(Duration::from_secs(3600), |due| {
            due.saturating_duration_since(Instant::now())
        });
        match commands.recv_timeout(wait) {
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Command::Reload(entries)) => {
                let now = Instant::now();
                // Keep what is known about unchanged entries until their fresh resolution.
                let mut fresh = slots_for(entries, now);
                for f in &mut fresh {
                    if let Some(old) = slots.iter().find(|s| s.entry.uri == f.entry.uri) {
                        f.specs.clone_from(&old.specs);
                    }
                }
                slots = fresh;
            }
            Ok(Command::Refresh) => {
                let now = Instant::now();
                slots.iter_mut().for_each(|s| s.due = now);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}
