//! RFC 3263 server location, the decision part: which DNS questions a backend URI needs, and
//! how the answers become pool members. The questions themselves are asked by
//! `runtime::dns`; nothing here does I/O.
//!
//! Mapping onto the pool: every address of every SRV target becomes one [`BackendSpec`].
//! SRV priorities become pool priority groups (a lower group is used only when every member of
//! the better one is unusable, which is the RFC 2782 rule and RFC 3263 §4.3's "the next SHOULD
//! be tried"), SRV weights become rendezvous weights. Failover across SRV targets is therefore
//! the pool's ordinary failover.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::backend::{BackendSpec, BackendUri, SpecError, Transport};

/// A backend as configured, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    /// SIP URI naming the backend (`sip:10.0.0.7:5060`, `sip:pool.example.net`, ...).
    pub uri: String,
    /// Weight multiplier for every member the URI resolves to.
    pub weight: u32,
    /// Priority of the URI among configured entries (lower preferred), 0..=255; SRV
    /// priorities order members within it.
    pub priority: u8,
    /// Drain every member of this entry.
    pub drain: bool,
}

impl BackendEntry {
    /// An entry with weight 1, priority 0, not draining.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            weight: 1,
            priority: 0,
            drain: false,
        }
    }
}

/// What resolving a URI takes (RFC 3263 §4.1-4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Numeric host: no DNS at all.
    Numeric(BackendSpec),
    /// Explicit port: only A/AAAA of `host` (§4.2), with the transport from §4.1.
    Address {
        /// Host name.
        host: String,
        /// Port from the URI.
        port: u16,
        /// Transport.
        transport: Transport,
    },
    /// Explicit transport, no port: SRV of `name` (§4.2); A/AAAA on the host's default port
    /// if there is none.
    Srv {
        /// Host name.
        host: String,
        /// Transport.
        transport: Transport,
    },
    /// Neither: NAPTR of `host` first (§4.1), then SRV per supported transport.
    Naptr {
        /// Host name.
        host: String,
        /// `sips:` URI: only TLS may be chosen.
        secure: bool,
    },
}

/// Decides how `entry`'s URI is resolved.
pub fn plan(entry: &BackendEntry) -> Result<Plan, SpecError> {
    match BackendSpec::from_uri(&entry.uri) {
        Ok(spec) => return Ok(Plan::Numeric(apply_entry(spec, entry, 0, 1))),
        Err(SpecError::NeedsResolution) => {}
        Err(e) => return Err(e),
    }
    let uri = BackendUri::parse(&entry.uri)?;
    // A fully qualified name avoids search-domain expansion in the resolver.
    let host = if uri.host.ends_with('.') {
        uri.host.to_owned()
    } else {
        format!("{}.", uri.host)
    };
    let transport = if uri.secure {
        Some(Transport::Tls)
    } else {
        uri.transport
    };
    Ok(match (uri.port, transport) {
        // §4.1: a port without transport means UDP for sip:, TLS for sips:.
        (Some(port), t) => Plan::Address {
            host,
            port,
            transport: t.unwrap_or(Transport::Udp),
        },
        (None, Some(transport)) if !uri.secure || uri.transport.is_some() => {
            Plan::Srv { host, transport }
        }
        (None, _) => Plan::Naptr {
            host,
            secure: uri.secure,
        },
    })
}

/// The SRV owner name for `transport` at `host` (RFC 3263 §4.1: `_sip._udp`, `_sip._tcp`,
/// `_sips._tcp`).
pub fn srv_name(transport: Transport, host: &str) -> String {
    let prefix = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
        // Not produced by `plan` (backend URIs are UDP, TCP or TLS); RFC 4168 §6 naming.
        _ => "_sip._sctp",
    };
    format!("{prefix}.{host}")
}

/// Transports tried, in order, when there are no NAPTR records (§4.1): a `sip:` URI prefers
/// UDP, then TCP, then TLS; a `sips:` URI only TLS.
pub fn srv_fallback_order(secure: bool) -> &'static [Transport] {
    if secure {
        &[Transport::Tls]
    } else {
        &[Transport::Udp, Transport::Tcp, Transport::Tls]
    }
}

/// One NAPTR record, as far as SIP uses it (RFC 3263 §4.1, RFC 3403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Order (lower first).
    pub order: u16,
    /// Preference among equal order (lower first).
    pub preference: u16,
    /// Flags; SIP uses `s` (the replacement is an SRV name).
    pub flags: String,
    /// Service, e.g. `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`.
    pub services: String,
    /// Replacement domain.
    pub replacement: String,
}

/// The NAPTR record to follow: the lowest (order, preference) with flag `s` and a service we
/// speak (`SIPS+D2T` only, for a `sips:` URI), as its transport and SRV name.
pub fn choose_naptr(records: &[Naptr], secure: bool) -> Option<(Transport, String)> {
    records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let transport = if r.services.eq_ignore_ascii_case("SIP+D2U") && !secure {
                Transport::Udp
            } else if r.services.eq_ignore_ascii_case("SIP+D2T") && !secure {
                Transport::Tcp
            } else if r.services.eq_ignore_ascii_case("SIPS+D2T") {
                Transport::Tls
            } else {
                return None;
            };
            Some(((r.order, r.preference), transport, r.replacement.clone()))
        })
        .min_by_key(|(rank, _, _)| *rank)
        .map(|(_, t, name)| (t, name))
}

/// One SRV target with its resolved addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// SRV priority (lower first).
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Addresses of the target (A and AAAA).
    pub addrs: Vec<IpAddr>,
}

/// Pool members for `entry` from resolved SRV targets (or one pseudo-target for the A/AAAA
/// fallback). Distinct SRV priorities become consecutive sub-priorities under the entry's
/// priority; SRV weight 0 becomes the smallest weight (RFC 2782: "a very small chance").
pub fn specs_from_targets(
    entry: &BackendEntry,
    transport: Transport,
    targets: &[SrvTarget],
) -> Vec<BackendSpec> {
    let mut priorities: Vec<u16> = targets.iter().map(|t| t.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut specs = Vec::new();
    for t in targets {
        let rank = priorities
            .iter()
            .position(|&p| p == t.priority)
            .unwrap_or(0);
        let rank = u8::try_from(rank).unwrap_or(u8::MAX);
        // SRV weights are relative within one priority; scale them so 0 stays above nothing.
        let weight = if t.weight == 0 {
            1
        } else {
            u32::from(t.weight) * 100
        };
        for &ip in &t.addrs {
            let spec = BackendSpec {
                id: None,
                uri: entry.uri.clone(),
                addr: SocketAddr::new(ip, t.port),
                transport,
                weight: 1,
                priority: 0,
                drain: false,
            };
            specs.push(apply_entry(spec, entry, rank, weight));
        }
    }
    // One address listed by two targets is one member, at its better priority (equal ids
    // would make the pool refuse the set).
    specs.sort_by_key(|s| (s.addr, s.priority));
    specs.dedup_by_key(|s| s.addr);
    specs.sort_by_key(|s| (s.priority, s.addr));
    specs
}

fn apply_entry(mut spec: BackendSpec, entry: &BackendEntry, rank: u8, weight: u32) -> BackendSpec {
    spec.uri = entry.uri.clone();
    spec.priority = u16::from(entry.priority) << 8 | u16::from(rank);
    spec.weight = entry.weight.saturating_mul(weight);
    spec.drain = entry.drain;
    spec
}

/// How long a resolution stays valid: the smallest TTL of the records it used, clamped to
/// `[min, max]` (a TTL of 0 would otherwise mean re-resolving continuously).
pub fn validity(ttls: impl IntoIterator<Item = u32>, min: Duration, max: Duration) -> Duration {
    let ttl = ttls
        .into_iter()
        .min()
        .map_or(max, |s| Duration::from_secs(u64::from(s)));
    ttl.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let e = |u: &str| plan(&BackendEntry::new(u)).unwrap();
        assert!(matches!(e("sip:127.0.0.1:5070"), Plan::Numeric(s) if s.addr.port() == 5070));
        assert_eq!(
            e("sip:b1.example.net:5080"),
            Plan::Address {
                host: "b1.example.net.".into(),
                port: 5080,
                transport: Transport::Udp
            }
        );
        assert_eq!(
            e("sip:example.net;transport=tcp"),
            Plan::Srv {
                host: "example.net.".into(),
                transport: Transport::Tcp
            }
        );
        assert_eq!(
            e("sips:example.net"),
            Plan::Naptr {
                host: "example.net.".into(),
                secure: true
            }
        );
        assert_eq!(
            e("sip:example.net."),
            Plan::Naptr {
                host: "example.net.".into(),
                secure: false
            }
        );
        assert!(plan(&BackendEntry::new("mailto:x")).is_err());
        assert_eq!(
            srv_name(Transport::Tls, "example.net."),
            "_sips._tcp.example.net."
        );
    }

    #[test]
    fn naptr_choice_follows_order_preference_and_support() {
        let n = |order, preference, services: &str, r: &str| Naptr {
            order,
            preference,
            flags: "S".into(),
            services: services.into(),
            replacement: r.into(),
        };
        let recs = [
            n(20, 10, "SIP+D2U", "_sip._udp.x."),
            n(10, 50, "SIP+D2T", "_sip._tcp.x."),
            n(10, 60, "SIPS+D2T", "_sips._tcp.x."),
            n(5, 1, "SIP+D2S", "_sip._sctp.x."),
        ];
        assert_eq!(
            choose_naptr(&recs, false),
            Some((Transport::Tcp, "_sip._tcp.x.".into()))
        );
        assert_eq!(
            choose_naptr(&recs, true),
            Some((Transport::Tls, "_sips._tcp.x.".into()))
        );
        assert_eq!(choose_naptr(&recs[3..], false), None);
    }

    #[test]
    fn srv_targets_become_priority_groups_and_weights() {
        let entry = BackendEntry {
            priority: 1,
            weight: 2,
            ..BackendEntry::new("sip:pool.example.net")
        };
        let t = |priority, weight, port, ip: [u8; 4]| SrvTarget {
            priority,
            weight,
            port,
            addrs: vec![IpAddr::from(ip)],
        };
        let specs = specs_from_targets(
            &entry,
            Transport::Udp,
            &[
                t(10, 60, 5070, [10, 0, 0, 1]),
                t(10, 0, 5071, [10, 0, 0, 2]),
                t(20, 5, 5072, [10, 0, 0, 3]),
            ],
        );
        let got: Vec<(u16, u32, u16)> = specs
            .iter()
            .map(|s| (s.priority, s.weight, s.addr.port()))
            .collect();
        assert_eq!(
            got,
            [(256, 12_000, 5070), (256, 2, 5071), (257, 1_000, 5072)]
        );
        assert!(specs.iter().all(|s| s.uri == entry.uri));
        // Ids are distinct per address and stable.
        assert_ne!(specs[0].backend_id(), specs[1].backend_id());
    }

    #[test]
    fn an_address_behind_two_targets_is_one_member_at_the_better_priority() {
        let entry = BackendEntry::new("sip:pool.example.net");
        let t = |priority, ips: &[[u8; 4]]| SrvTarget {
            priority,
            weight: 1,
            port: 5060,
            addrs: ips.iter().map(|&ip| IpAddr::from(ip)).collect(),
        };
        let specs = specs_from_targets(
            &entry,
            Transport::Udp,
            &[
                t(20, &[[10, 0, 0, 1]]),
                t(10, &[[10, 0, 0, 1], [10, 0, 0, 2]]),
            ],
        );
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.priority == 0));
        assert!(crate::balance::Pool::new(&specs).is_ok());
    }

    #[test]
    fn validity_is_the_smallest_ttl_clamped() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(validity([60, 30, 3600], min, max), Duration::from_secs(30));
        assert_eq!(validity([0], min, max), min);
        assert_eq!(validity([86_400], min, max), max);
        assert_eq!(validity([], min, max), max);
    }
}
