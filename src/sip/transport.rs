//! The transport named in a Via `sent-protocol` or a URI `transport=` parameter.

use super::chars::eq_ic;

/// A SIP transport (RFC 3261 §18, RFC 4168 SCTP, RFC 7118 WebSocket).
///
/// Parsed case-insensitively from a Via transport token (`UDP`, `TLS-SCTP` ...) or a
/// `transport=` URI parameter (`udp`, `tls` ...). Anything else is [`Transport::Other`], which
/// the proxy must carry through unchanged (RFC 4475 §3.1.1.10 requires accepting unknown ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// UDP (RFC 3261 §18).
    Udp,
    /// TCP (RFC 3261 §18).
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2).
    Tls,
    /// SCTP (RFC 4168).
    Sctp,
    /// TLS over SCTP (RFC 4168 `TLS-SCTP`).
    TlsSctp,
    /// WebSocket (RFC 7118 `WS`).
    Ws,
    /// Secure WebSocket (RFC 7118 `WSS`).
    Wss,
    /// A transport this crate does not know; the token is in the message.
    Other,
}

impl Transport {
    /// Parses a transport token, case-insensitively; unknown tokens give [`Transport::Other`].
    pub fn from_token(token: &[u8]) -> Self {
        const TABLE: [(&[u8], Transport); 7] = [
            (b"UDP", Transport::Udp),
            (b"TCP", Transport::Tcp),
            (b"TLS", Transport::Tls),
            (b"SCTP", Transport::Sctp),
            (b"TLS-SCTP", Transport::TlsSctp),
            (b"WS", Transport::Ws),
            (b"WSS", Transport::Wss),
        ];
        // The tokens as almost every message writes them, before the case-insensitive table.
        match token {
            b"UDP" => return Self::Udp,
            b"TCP" => return Self::Tcp,
            _ => {}
        }
        TABLE
            .iter()
            .find(|(name, _)| eq_ic(name, token))
            .map_or(Self::Other, |&(_, t)| t)
    }

    /// The token to write in a Via header (`SIP/2.0/<token>`); `None` for [`Transport::Other`].
    pub fn as_via_str(self) -> Option<&'static str> {
        match self {
            Self::Udp => Some("UDP"),
            Self::Tcp => Some("TCP"),
            Self::Tls => Some("TLS"),
            Self::Sctp => Some("SCTP"),
            Self::TlsSctp => Some("TLS-SCTP"),
            Self::Ws => Some("WS"),
            Self::Wss => Some("WSS"),
            Self::Other => None,
        }
    }

    /// The value to write in a URI `transport=` parameter (lower case by convention).
    pub fn as_uri_param(self) -> Option<&'static str> {
        match self {
            Self::Udp => Some("udp"),
            Self::Tcp => Some("tcp"),
            Self::Tls => Some("tls"),
            Self::Sctp => Some("sctp"),
            Self::TlsSctp => Some("tls-sctp"),
            Self::Ws => Some("ws"),
            Self::Wss => Some("wss"),
            Self::Other => None,
        }
    }

    /// True for transports that carry a byte stream and therefore need RFC 3261 §18.3 framing.
    pub fn is_stream(self) -> bool {
        matches!(self, Self::Tcp | Self::Tls | Self::Ws | Self::Wss)
    }

    /// True for transports secured with TLS (RFC 3261 §26.2: `sips` needs these on every hop).
    pub fn is_secure(self) -> bool {
        matches!(self, Self::Tls | Self::TlsSctp | Self::Wss)
    }

    /// True for transports that are reliable (RFC 3261 §17.1.1.2: no retransmission timers).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp | Self::Other)
    }

    /// RFC 3263 §4.2 default port: 5061 for TLS transports, 5060 otherwise; 80/443 for WS/WSS.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tls | Self::TlsSctp => 5061,
            Self::Ws => 80,
            Self::Wss => 443,
            _ => 5060,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! transport_table {
        ($($name:ident: $input:expr => $expected:expr,)*) => {
            $(#[test] fn $name() { assert_eq!(Transport::from_token($input), $expected); })*
        };
    }

    transport_table! {
        udp_upper: b"UDP" => Transport::Udp,
        udp_lower: b"udp" => Transport::Udp,
        tcp_mixed: b"tCp" => Transport::Tcp,
        tls: b"TLS" => Transport::Tls,
        sctp: b"SCTP" => Transport::Sctp,
        tls_sctp: b"TLS-SCTP" => Transport::TlsSctp,
        ws: b"ws" => Transport::Ws,
        wss: b"WSS" => Transport::Wss,
        unknown: b"UNKNOWN" => Transport::Other,
        empty: b"" => Transport::Other,
    }

    #[test]
    fn via_tokens_round_trip() {
        for t in [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Sctp,
            Transport::TlsSctp,
            Transport::Ws,
            Transport::Wss,
        ] {
            let token = t.as_via_str().unwrap_or_default();
            assert_eq!(Transport::from_token(token.as_bytes()), t);
            let param = t.as_uri_param().unwrap_or_default();
            assert_eq!(Transport::from_token(param.as_bytes()), t);
        }
        assert_eq!(Transport::Other.as_via_str(), None);
    }
}
