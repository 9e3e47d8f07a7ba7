//! What the proxy core is told at start: its listeners, the names it answers to, policy knobs.

use std::net::SocketAddr;

use crate::balance::FailoverConfig;
use crate::sip::Transport;

/// One socket the runtime listens on, as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// UDP or TCP (RFC 3261 §18). Other transports are refused by [`ProxyConfig::validate`].
    pub transport: Transport,
    /// The bound address. `Inbound::local` is matched against it to know which listener a
    /// message came in on.
    pub local: SocketAddr,
    /// The host (name or address) written into our Via sent-by and Record-Route URI for
    /// messages that leave through this listener; defaults to the IP of `local`. Needed when
    /// `local` is a wildcard (`0.0.0.0`, `::`) or behind a NAT.
    pub advertised_host: Option<String>,
    /// The port written next to `advertised_host`; defaults to the port of `local`.
    pub advertised_port: Option<u16>,
    /// `Some(i)`: a socket private to this shard that stands in for listener `i` in our Via
    /// sent-by, and the source of UDP requests it forwards through `i` to pool members. Responses follow the
    /// Via (RFC 3261 §18.2.2), so they come back to the shard that forwarded the request, the
    /// one owning the call, with no cross-shard handoff. It is never chosen to send through on
    /// its own and never written into Record-Route: dialogs keep naming the shared listener.
    pub via_for: Option<usize>,
}

impl ListenerConfig {
    /// A listener that advertises its bound address.
    pub fn new(transport: Transport, local: SocketAddr) -> Self {
        Self {
            transport,
            local,
            advertised_host: None,
            advertised_port: None,
            via_for: None,
        }
    }
}

/// Policy and identity of the stateless proxy core. Every shard gets an identical copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The listeners, in order; at most 255. A message leaves through the first listener of
    /// the wanted transport and address family (and its advertised address goes into Via and
    /// Record-Route).
    pub listeners: Vec<ListenerConfig>,
    /// Extra `host` or `host:port` names that mean "this proxy" in a Request-URI or Route
    /// (RFC 3261 §16.4), besides the listeners' bound and advertised addresses.
    pub aliases: Vec<String>,
    /// Insert Record-Route (RFC 3261 §16.6 step 4) into dialog-creating and in-dialog
    /// requests so that the rest of the dialog comes back through the proxy.
    pub record_route: bool,
    /// Secret (at least 16 bytes) that keys the Via branch MAC and the Record-Route affinity
    /// token. Every node that must recognise another node's branches and tokens shares it.
    pub secret: Vec<u8>,
    /// Upper bound written into Max-Forwards (RFC 3261 §16.6 step 3 says 70 when absent; a
    /// larger received value is lowered to this, like Kamailio's `max_limit`).
    pub max_forwards: u8,
    /// A request bigger than this (after our edits) toward a UDP backend is sent over TCP
    /// instead (RFC 3261 §18.1.1: 1300 bytes when the path MTU is unknown). `None` disables it.
    pub udp_size_limit: Option<usize>,
    /// Proxy-Require option tags this proxy supports (RFC 3261 §16.3 item 5); every other tag
    /// is answered with 420 Bad Extension. Empty by default.
    pub proxy_require_supported: Vec<String>,
    /// Value of the `Server` header in responses the proxy generates (`None`: no header).
    pub server_name: Option<String>,
    /// INVITE failover (a refused, silent or unreachable backend is replaced by the next in
    /// hash order before the caller sees anything); `None` keeps the core fully stateless.
    pub failover: Option<FailoverConfig>,
}

impl Default for ProxyConfig {
    /// UDP and TCP on 127.0.0.1:5060, Record-Route on, a fixed development secret.
    fn default() -> Self {
        let local = SocketAddr::from(([127, 0, 0, 1], 5060));
        Self {
            listeners: vec![
                ListenerConfig::new(Transport::Udp, local),
                ListenerConfig::new(Transport::Tcp, local),
            ],
            aliases: Vec::new(),
            record_route: true,
            secret: b"sipedge-development-secret-change-me".to_vec(),
            max_forwards: 70,
            udp_size_limit: Some(1300),
            proxy_require_supported: Vec::new(),
            server_name: Some("sipedge".to_owned()),
            failover: Some(FailoverConfig::default()),
        }
    }
}

/// A configuration the core cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No listener at all: nothing could be advertised in Via.
    #[error("no listener configured")]
    NoListener,
    /// More than 255 listeners (the branch encodes the index in one byte).
    #[error("too many listeners ({0}, at most 255)")]
    TooManyListeners(usize),
    /// A listener transport other than UDP or TCP.
    #[error("listener {0}: only udp and tcp listeners are supported")]
    UnsupportedTransport(usize),
    /// A wildcard bound address without an advertised host.
    #[error("listener {0} is bound to a wildcard address: set an advertised host")]
    WildcardWithoutAdvertised(usize),
    /// An advertised host or alias that is not a valid SIP host.
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    /// The secret is shorter than 16 bytes.
    #[error("the secret must be at least 16 bytes")]
    ShortSecret,
    /// `max_forwards` is zero.
    #[error("max_forwards must be at least 1")]
    ZeroMaxForwards,
}

impl ProxyConfig {
    /// Checks what [`super::Core::new`] relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NoListener);
        }
        if self.listeners.len() > 255 {
            return Err(ConfigError::TooManyListeners(self.listeners.len()));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if !matches!(l.transport, Transport::Udp | Transport::Tcp) {
                return Err(ConfigError::UnsupportedTransport(i));
            }
            match &l.advertised_host {
                None if l.local.ip().is_unspecified() => {
                    return Err(ConfigError::WildcardWithoutAdvertised(i));
                }
                Some(h) if !valid_host(h) => return Err(ConfigError::InvalidHost(h.clone())),
                _ => {}
            }
        }
        for alias in &self.aliases {
            let host = split_host_port(alias).map(|(h, _)| h);
            if !host.is_some_and(valid_host) {
                return Err(ConfigError::InvalidHost(alias.clone()));
            }
        }
        if self.secret.len() < 16 {
            return Err(ConfigError::ShortSecret);
        }
        if self.max_forwards == 0 {
            return Err(ConfigError::ZeroMaxForwards);
        }
        Ok(())
    }
}

/// A host as RFC 3261 §25.1 allows it: a hostname, a dotted quad, or a bracketed IPv6.
fn valid_host(host: &str) -> bool {
    let b = host.as_bytes();
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// Splits `host[:port]` (IPv6 in brackets); `None` for a bad port.
pub(crate) fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match text.rfind(':') {
        Some(colon) if !text[colon..].contains(']') && text[..colon].matches(':').count() == 0 => {
            (&text[..colon], Some(text[colon + 1..].parse::<u16>().ok()?))
        }
        Some(colon) if text.starts_with('[') && text[..colon].ends_with(']') => {
            (&text[..colon], Some(text[colon + 1..].parse::<u16>().ok()?))
        }
        _ => (text, None),
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(ProxyConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_the_core_cannot_use() {
        let mut c = ProxyConfig {
            listeners: Vec::new(),
            ..ProxyConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoListener));
        c.listeners.push(ListenerConfig::new(
            Transport::Udp,
            "0.0.0.0:5060".parse().unwrap(),
        ));
        assert_eq!(c.validate(), Err(ConfigError::WildcardWithoutAdvertised(0)));
        c.listeners[0].advertised_host = Some("sip edge".into());
        assert!(matches!(c.validate(), Err(ConfigError::InvalidHost(_))));
        c.listeners[0].advertised_host = Some("edge.example.net".into());
        assert_eq!(c.validate(), Ok(()));
        c.listeners.push(ListenerConfig::new(
            Transport::Tls,
            "127.0.0.1:5061".parse().unwrap(),
        ));
        assert_eq!(c.validate(), Err(ConfigError::UnsupportedTransport(1)));
        c.listeners.pop();
        c.secret = b"short".to_vec();
        assert_eq!(c.validate(), Err(ConfigError::ShortSecret));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.example"), Some(("a.example", None)));
        assert_eq!(
            split_host_port("a.example:5080"),
            Some(("a.example", Some(5080)))
        );
        assert_eq!(
            split_host_port("[2001:db8::1]"),
            Some(("[2001:db8::1]", None))
        );
        assert_eq!(
            split_host_port("[2001:db8::1]:5070"),
            Some(("[2001:db8::1]", Some(5070)))
        );
        assert_eq!(split_host_port("a:x"), None);
    }
}
