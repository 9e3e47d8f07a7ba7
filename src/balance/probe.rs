//! The OPTIONS probe (RFC 3261 §11) sent to each backend, and recognition of its response.
//!
//! A probe's Call-ID names the backend and the probe's sequence number
//! (`sipedge-probe-<id>-<seq>`), so a response is matched to its probe without any state in
//! the shard that receives it: whoever receives a response from a backend first asks
//! [`recognise_probe_response`], and hands a match to the health machine instead of routing it.

use std::io::Write;
use std::net::SocketAddr;

use super::backend::{BackendId, Transport};

/// Prefix of every probe Call-ID.
pub const PROBE_CALL_ID_PREFIX: &str = "sipedge-probe-";

/// The output buffer was too small for the probe; `required` bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer too small for the probe: {required} bytes needed")]
pub struct InsufficientSize {
    /// Bytes the probe needs.
    pub required: usize,
}

/// What to probe and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Backend being probed.
    pub backend: BackendId,
    /// Its address.
    pub addr: SocketAddr,
    /// Transport the probe is sent over (written into the Via).
    pub transport: Transport,
    /// The local address the probe leaves from (Via sent-by and From host).
    pub local: SocketAddr,
    /// Probe sequence number (from [`super::HealthEvent::ProbeDue`]).
    pub seq: u64,
}

/// Writes the OPTIONS request probing `target` into `out` and returns its length.
pub fn write_probe(target: &ProbeTarget, out: &mut [u8]) -> Result<usize, InsufficientSize> {
    let mut cursor = std::io::Cursor::new(&mut *out);
    if write_probe_to(target, &mut cursor).is_ok() {
        // The cursor position is at most out.len(), which is a usize.
        return Ok(usize::try_from(cursor.position()).unwrap_or(usize::MAX));
    }
    let mut counter = Counter(0);
    // Writing to the counter cannot fail.
    let _ = write_probe_to(target, &mut counter);
    Err(InsufficientSize {
        required: counter.0,
    })
}

fn write_probe_to(t: &ProbeTarget, w: &mut impl Write) -> std::io::Result<()> {
    let via_transport = t.transport.as_via_str().unwrap_or("UDP");
    let (scheme, param_name, param_value) = match t.transport {
        Transport::Udp => ("sip", "", ""),
        Transport::Tls => ("sips", "", ""),
        other => ("sip", ";transport=", other.as_uri_param().unwrap_or("udp")),
    };
    let id = t.backend.0;
    let seq = t.seq;
    // SocketAddr's Display brackets IPv6 hosts, as a SIP hostport requires (RFC 3261 §25.1).
    let (addr, local) = (t.addr, t.local);
    write!(
        w,
        "OPTIONS {scheme}:{addr}{param_name}{param_value} SIP/2.0\r\n\
         Via: SIP/2.0/{via_transport} {local};branch=z9hG4bK-sep-{id:08x}-{seq:x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{scheme}:sipedge@{local}>;tag=sep{id:08x}\r\n\
         To: <{scheme}:{addr}>\r\n\
         Call-ID: {PROBE_CALL_ID_PREFIX}{id:08x}-{seq:x}\r\n\
         CSeq: {cseq} OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        // RFC 3261 §8.1.1.5: the CSeq number must stay below 2^31.
        cseq = seq % (1 << 31),
    )
}

struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A response to one of our probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResponse {
    /// The backend the probe was for.
    pub backend: BackendId,
    /// The probe's sequence number.
    pub seq: u64,
    /// The response's status code.
    pub code: u16,
}

/// Recognises a response to a probe written by [`write_probe`]; `None` for any other message
/// (including requests and malformed bytes). Bounded work: one pass over the header block.
pub fn recognise_probe_response(bytes: &[u8]) -> Option<ProbeResponse> {
    let rest = bytes.strip_prefix(b"SIP/2.0 ")?;
    let code_text = rest.get(..3)?;
    if !code_text.iter().all(u8::is_ascii_digit) || rest.get(3) != Some(&b' ') {
        return None;
    }
    let code = code_text
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return None;
    }
    for line in bytes.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        // RFC 3261 §7.3.3: `i` is the compact form of Call-ID.
        if !(name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i")) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        let ids = value.strip_prefix(PROBE_CALL_ID_PREFIX.as_bytes())?;
        let dash = ids.iter().position(|&b| b == b'-')?;
        let id = parse_hex(&ids[..dash])?;
        let seq = parse_hex(&ids[dash + 1..])?;
        return Some(ProbeResponse {
            backend: BackendId(u32::try_from(id).ok()?),
            seq,
            code,
        });
    }
    None
}

fn parse_hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &c| {
        let d = (c as char).to_digit(16)?;
        Some((n << 4) | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(transport: Transport, addr: &str) -> ProbeTarget {
        ProbeTarget {
            backend: BackendId(0xdead_beef),
            addr: addr.parse().unwrap(),
            transport,
            local: "127.0.0.1:5060".parse().unwrap(),
            seq: 0x1f,
        }
    }

    #[test]
    fn probe_is_a_well_formed_options_request() {
        let mut out = [0u8; 1024];
        let t = target(Transport::Udp, "127.0.0.1:5070");
        let n = write_probe(&t, &mut out).unwrap();
        let line = b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\n";
        assert!(out[..n].starts_with(line));
        // The header block is plain RFC 822 style: an independent parser must accept it whole.
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let parsed = httparse::parse_headers(&out[line.len()..n], &mut headers).unwrap();
        let httparse::Status::Complete((used, headers)) = parsed else {
            panic!("incomplete header block");
        };
        assert_eq!(line.len() + used, n);
        for name in [
            "Via",
            "Max-Forwards",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Content-Length",
        ] {
            assert!(headers.iter().any(|h| h.name == name), "{name} missing");
        }
        let via = headers.iter().find(|h| h.name == "Via").unwrap();
        assert!(
            via.value
                .starts_with(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
        );
        let v6 = target(Transport::Tcp, "[::1]:5070");
        let n = write_probe(&v6, &mut out).unwrap();
        assert!(out[..n].starts_with(b"OPTIONS sip:[::1]:5070;transport=tcp SIP/2.0\r\n"));
    }

    #[test]
    fn small_buffer_reports_required_size() {
        let t = target(Transport::Tls, "10.0.0.1:5061");
        let mut big = [0u8; 1024];
        let n = write_probe(&t, &mut big).unwrap();
        let mut small = [0u8; 40];
        assert_eq!(
            write_probe(&t, &mut small),
            Err(InsufficientSize { required: n })
        );
    }

    #[test]
    fn response_to_a_probe_is_recognised() {
        let mut out = [0u8; 1024];
        let t = target(Transport::Udp, "127.0.0.1:5070");
        let n = write_probe(&t, &mut out).unwrap();
        let request = std::str::from_utf8(&out[..n]).unwrap();
        // A UAS copies Via, From, Call-ID and CSeq into its response (RFC 3261 §8.2.6.2).
        let copied: String = request
            .split("\r\n")
            .filter(|l| {
                ["Via:", "From:", "Call-ID:", "CSeq:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        for code in [200u16, 404, 503] {
            let resp = format!(
                "SIP/2.0 {code} Whatever\r\n{copied}To: <sip:x>;tag=1\r\nContent-Length: 0\r\n\r\n"
            );
            assert_eq!(
                recognise_probe_response(resp.as_bytes()),
                Some(ProbeResponse {
                    backend: t.backend,
                    seq: t.seq,
                    code
                })
            );
        }
        let compact = "SIP/2.0 200 OK\r\ni: sipedge-probe-00000001-2\r\n\r\n";
        assert_eq!(
            recognise_probe_response(compact.as_bytes()).map(|r| (r.backend, r.seq)),
            Some((BackendId(1), 2))
        );
    }

    #[test]
    fn other_messages_are_not_probe_responses() {
        let cases: &[&[u8]] = &[
            b"",
            b"SIP/2.0 200 OK\r\nCall-ID: abc@host\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\nCall-ID: sipedge-probe-1-2\r\n\r\n",
            b"SIP/2.0 2x0 OK\r\nCall-ID: sipedge-probe-1-2\r\n\r\n",
            b"SIP/2.0 099 OK\r\nCall-ID: sipedge-probe-1-2\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: sipedge-probe-1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: sipedge-probe-1ffffffff-2\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\nCall-ID: sipedge-probe-1-2\r\n",
        ];
        for c in cases {
            assert_eq!(
                recognise_probe_response(c),
                None,
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
