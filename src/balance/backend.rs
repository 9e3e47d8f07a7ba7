//! One pool member: its stable id, how to reach it, and its shared health flags.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::shard::fnv1a64;

pub use crate::sip::Transport;

/// The port a backend URI without one uses (RFC 3263 §4.2: 5061 for TLS, 5060 otherwise).
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls | Transport::TlsSctp => 5061,
        _ => 5060,
    }
}

/// Stable identity of a backend across pool reloads.
///
/// It is what the affinity token (see [`crate::balance::affinity_token`]) carries, so an
/// in-dialog request keeps reaching the same member after the pool is rebuilt. By default
/// it is derived from the backend's URI and resolved address ([`BackendId::derive`]), so the
/// same configuration gives the same ids on every node and after every restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u32);

impl BackendId {
    /// Derives the id of the backend named `uri` and reached at `addr`.
    ///
    /// Both parts are hashed because one URI without a port can resolve (RFC 3263) to several
    /// SRV targets, each of which is its own member.
    pub fn derive(uri: &str, addr: SocketAddr) -> Self {
        let mut key = fnv1a64(uri.as_bytes());
        key ^= mix64(addr_hash(addr));
        Self((mix64(key) >> 32) as u32)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// What the configuration (or DNS resolution) says about one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Explicit id; `None` derives it from `uri` and `addr` ([`BackendId::derive`]).
    pub id: Option<BackendId>,
    /// The SIP URI the operator named the backend with (kept for logs and metrics labels).
    pub uri: String,
    /// Resolved address requests are sent to.
    pub addr: SocketAddr,
    /// Transport used toward the backend.
    pub transport: Transport,
    /// Relative share of new calls within its priority group; 0 takes no new calls.
    pub weight: u32,
    /// Priority group: lower is preferred; a group is used only when every better one has
    /// no usable member (the SRV rule, RFC 2782).
    pub priority: u16,
    /// Draining: no new calls, established dialogs continue (affinity still resolves).
    pub drain: bool,
}

/// Why a URI text could not become a [`BackendSpec`] by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The text is not a `sip:` or `sips:` URI.
    #[error("backend URI must start with sip: or sips:")]
    Scheme,
    /// The host part is missing or malformed (e.g. an unclosed IPv6 bracket).
    #[error("backend URI has no valid host")]
    Host,
    /// The port is not a number in 1..=65535.
    #[error("backend URI has an invalid port")]
    Port,
    /// The `transport` parameter names a transport sipedge does not speak.
    #[error("backend URI has an unsupported transport parameter")]
    Transport,
    /// The host is a domain name: it must go through RFC 3263 resolution first.
    #[error("backend host is a name and needs DNS resolution (RFC 3263)")]
    NeedsResolution,
}

/// The parts of a backend SIP URI that resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUri<'a> {
    /// `sips:` scheme (forces TLS, RFC 3263 §4.1).
    pub secure: bool,
    /// Host text without brackets.
    pub host: &'a str,
    /// Explicit port, if any.
    pub port: Option<u16>,
    /// Explicit `transport` parameter, if any.
    pub transport: Option<Transport>,
}

impl<'a> BackendUri<'a> {
    /// Splits a backend URI such as `sip:10.0.0.7:5060;transport=tcp` or `sip:pool.example.net`.
    ///
    /// A user part (`user@`) is accepted and ignored: requests keep their own Request-URI.
    pub fn parse(text: &'a str) -> Result<Self, SpecError> {
        let text = text.trim();
        let (secure, rest) = if let Some(r) = strip_prefix_ci(text, "sips:") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(text, "sip:") {
            (false, r)
        } else {
            return Err(SpecError::Scheme);
        };
        let rest = rest.split(['?']).next().unwrap_or(rest);
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or("");
        let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
        let (host, port_text) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(SpecError::Host)?;
            match after {
                "" => (h, None),
                _ => (h, Some(after.strip_prefix(':').ok_or(SpecError::Host)?)),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(SpecError::Host);
        }
        let port = match port_text {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(SpecError::Port),
                Ok(n) => Some(n),
            },
        };
        let mut transport = None;
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name.eq_ignore_ascii_case("transport") {
                // Backends are reached over UDP, TCP or TLS only.
                transport = Some(match Transport::from_token(value.as_bytes()) {
                    t @ (Transport::Udp | Transport::Tcp | Transport::Tls) => t,
                    _ => return Err(SpecError::Transport),
                });
            }
        }
        Ok(Self {
            secure,
            host,
            port,
            transport,
        })
    }

    /// The host as an IP address, when it is a numeric one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

impl BackendSpec {
    /// Builds a spec from a URI whose host is a numeric address (no DNS needed).
    ///
    /// RFC 3263 §4.1-4.2: a numeric host without `transport` uses UDP (TLS for `sips:`), and
    /// without a port the transport's default port. Weight 1, priority 0, not draining.
    pub fn from_uri(text: &str) -> Result<Self, SpecError> {
        let uri = BackendUri::parse(text)?;
        let ip = uri.ip().ok_or(SpecError::NeedsResolution)?;
        let transport = match (uri.secure, uri.transport) {
            (true, _) => Transport::Tls,
            (false, Some(t)) => t,
            (false, None) => Transport::Udp,
        };
        let port = uri.port.unwrap_or(default_port(transport));
        Ok(Self {
            id: None,
            uri: text.trim().to_owned(),
            addr: SocketAddr::new(ip, port),
            transport,
            weight: 1,
            priority: 0,
            drain: false,
        })
    }

    /// The id this spec will have in a pool.
    pub fn backend_id(&self) -> BackendId {
        self.id
            .unwrap_or_else(|| BackendId::derive(&self.uri, self.addr))
    }
}

/// A pool member.
///
/// The health and drain flags are atomics so that one pool, shared by every shard behind an
/// `Arc`, can be marked up/down or drained without a lock and without rebuilding it.
#[derive(Debug)]
pub struct Backend {
    id: BackendId,
    uri: Box<str>,
    addr: SocketAddr,
    transport: Transport,
    weight: u32,
    priority: u16,
    /// Per-member salt for rendezvous hashing, derived from `id` so it survives reloads.
    pub(crate) seed: u64,
    up: AtomicBool,
    drain: AtomicBool,
}

impl Backend {
    pub(crate) fn new(spec: &BackendSpec) -> Self {
        let id = spec.backend_id();
        Self {
            id,
            uri: spec.uri.clone().into_boxed_str(),
            addr: spec.addr,
            transport: spec.transport,
            weight: spec.weight,
            priority: spec.priority,
            seed: mix64(u64::from(id.0) ^ 0x5bd1_e995_9e37_79b9),
            up: AtomicBool::new(true),
            drain: AtomicBool::new(spec.drain),
        }
    }

    /// Stable id (see [`BackendId`]).
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// The SIP URI the backend was configured with. It may contain operator PII; log it
    /// redacted where that matters.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Resolved address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Transport toward the backend.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Relative weight within the priority group.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Priority group (lower is preferred).
    pub fn priority(&self) -> u16 {
        self.priority
    }

    /// Whether health checking currently considers the backend alive. New backends start up
    /// so that a fresh process serves at once; probing takes them down within its window.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks the backend up or down (called by the health state machine's owner). Every
    /// shard sees the change on its next selection.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Whether the backend is draining (takes no new calls).
    pub fn is_draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// Starts or stops draining.
    pub fn set_draining(&self, drain: bool) {
        self.drain.store(drain, Ordering::Relaxed);
    }

    /// Whether the backend may take a new call, ignoring the blacklist.
    pub fn accepts_new_calls(&self) -> bool {
        self.weight > 0 && self.is_up() && !self.is_draining()
    }
}

/// 64-bit finalizer (splitmix64 / Stafford variant 13): turns a weak hash into one whose every
/// output bit depends on every input bit.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of a socket address (IP and port), independent of its textual form.
pub(crate) fn addr_hash(addr: SocketAddr) -> u64 {
    let (ip, tag) = match addr.ip() {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()), 4u64),
        IpAddr::V6(v6) => (v6.to_bits(), 6u64),
    };
    let mut h = mix64((ip as u64) ^ tag.rotate_left(56));
    h = mix64(h ^ ((ip >> 64) as u64));
    mix64(h ^ u64::from(addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let s = BackendSpec::from_uri("sip:127.0.0.1:5070").unwrap();
        assert_eq!(s.addr, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(s.transport, Transport::Udp);
        let s = BackendSpec::from_uri("sip:10.0.0.7;transport=TCP").unwrap();
        assert_eq!(s.addr, "10.0.0.7:5060".parse().unwrap());
        assert_eq!(s.transport, Transport::Tcp);
        let s = BackendSpec::from_uri("sips:[::1]").unwrap();
        assert_eq!(s.addr, "[::1]:5061".parse().unwrap());
        assert_eq!(s.transport, Transport::Tls);
        let s = BackendSpec::from_uri("SIP:svc@[2001:db8::5]:5080;lr").unwrap();
        assert_eq!(s.addr, "[2001:db8::5]:5080".parse().unwrap());
    }

    #[test]
    fn uri_errors() {
        let cases: &[(&str, SpecError)] = &[
            ("http://x", SpecError::Scheme),
            ("sip:", SpecError::Host),
            ("sip:[::1", SpecError::Host),
            ("sip:1.2.3.4:0", SpecError::Port),
            ("sip:1.2.3.4:99999", SpecError::Port),
            ("sip:1.2.3.4;transport=sctp", SpecError::Transport),
            ("sip:pool.example.net", SpecError::NeedsResolution),
            ("sí", SpecError::Scheme),
        ];
        for (text, err) in cases {
            assert_eq!(BackendSpec::from_uri(text).unwrap_err(), *err, "{text}");
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5060".parse().unwrap();
        assert_eq!(BackendId::derive("sip:x", a), BackendId::derive("sip:x", a));
        assert_ne!(BackendId::derive("sip:x", a), BackendId::derive("sip:x", b));
        assert_ne!(BackendId::derive("sip:x", a), BackendId::derive("sip:y", a));
    }
}
