//! End to end with real peers: a SigComp UE → sipedge (2 shards) → a plain sipp UAS.
//!
//! The UE is this test, acting as a SigComp endpoint with `sipedge::sigcomp::SigcompEndpoint`
//! (its own compartment, RFC 3320): it sends INVITE, ACK and BYE compressed, with
//! `comp=sigcomp` on its Via (RFC 3486). The backend is `sipp -sn uas` over UDP, which
//! speaks only plain SIP. For each I/O driver (io_uring, epoll):
//!
//! - over UDP, several calls: the UAS receives every INVITE and BYE plain (its message log),
//!   with a Record-Route whose client-side URI carries `comp=sigcomp` (RFC 3486 §5) and a
//!   proxy Via that does not; every response the UE gets (180, 200, 200 for BYE) is
//!   compressed, decompresses to the response for its Call-ID, and messages of later calls
//!   are smaller than the first (they reference state saved earlier);
//! - tshark (Wireshark's own UDVM) decodes a pcap of the compressed responses the UE got to
//!   the same SIP the UE decompressed;
//! - a garbage SigComp datagram is answered with an RFC 4077 NACK naming its SHA-1, and a
//!   call after it still completes;
//! - more UEs make one call each, so that (with two shards) compressed datagrams and
//!   messages to compress cross to the shard owning the UE's compartment;
//! - over TCP (RFC 3320 §4.2.2 record framing, RFC 5049) the same calls, backend still UDP,
//!   then a plain OPTIONS on the same connection (SigComp and SIP share it, decided per
//!   message), answered compressed, and one more compressed call.
//!
//! Fails, naming the Debian package, when sipp (`sip-tester`) or tshark is missing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, require};
use sha1::{Digest, Sha1};
use sipedge::sigcomp::{
    Received, SigcompConfig, SigcompEndpoint, Transport, framing, message::is_sigcomp, nack,
};

const CALLS: usize = 4;
/// Further UDP UEs making one call each.
const EXTRA_UES: usize = 4;

/// How the UE reaches the proxy.
enum Link {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, buf: Vec<u8> },
}

/// One message the UE received: the bytes on the wire (one SigComp message, unframed) and
/// the SIP it decompressed to.
struct Got {
    wire: Vec<u8>,
    sip: String,
}

/// The SigComp UE.
struct Ue {
    link: Link,
    endpoint: SigcompEndpoint<u8>,
    proxy: SocketAddr,
    local: SocketAddr,
    /// Compressed size of every request sent.
    sent: Vec<usize>,
    /// Every response received.
    got: Vec<Got>,
}

impl Ue {
    fn udp(proxy: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let local = sock.local_addr().unwrap();
        Self::new(Link::Udp(sock), proxy, local)
    }

    fn tcp(proxy: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        Self::new(
            Link::Tcp {
                stream,
                buf: Vec::new(),
            },
            proxy,
            local,
        )
    }

    fn new(link: Link, proxy: SocketAddr, local: SocketAddr) -> Self {
        Self {
            link,
            endpoint: SigcompEndpoint::new(SigcompConfig::default()),
            proxy,
            local,
            sent: Vec::new(),
            got: Vec::new(),
        }
    }

    fn transport(&self) -> Transport {
        match self.link {
            Link::Udp(_) => Transport::Message,
            Link::Tcp { .. } => Transport::Stream,
        }
    }

    fn via_transport(&self) -> &'static str {
        match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp { .. } => "TCP",
        }
    }

    /// Compresses `sip` in the UE's compartment and sends it.
    fn send(&mut self, sip: &str) {
        let mut wire = Vec::new();
        let transport = self.transport();
        self.endpoint
            .compress(Instant::now(), &0, transport, sip.as_bytes(), &mut wire)
            .expect("the UE compresses");
        assert!(is_sigcomp(wire[0]));
        self.sent.push(wire.len());
        self.send_raw(&wire);
    }

    /// Sends a plain SIP message (on TCP it shares the stream with SigComp records, RFC 5049).
    fn send_plain(&mut self, sip: &str) {
        match &mut self.link {
            Link::Udp(sock) => {
                sock.send_to(sip.as_bytes(), self.proxy).unwrap();
            }
            Link::Tcp { stream, .. } => stream.write_all(sip.as_bytes()).unwrap(),
        }
    }

    /// Sends one SigComp message as it is (framed as a record on TCP).
    fn send_raw(&mut self, wire: &[u8]) {
        let proxy = self.proxy;
        match &mut self.link {
            Link::Udp(sock) => {
                sock.send_to(wire, proxy).unwrap();
            }
            Link::Tcp { stream, .. } => {
                let mut framed = Vec::new();
                framing::encode_record(wire, &mut framed);
                stream.write_all(&framed).unwrap();
            }
        }
    }

    /// The next message from the proxy (one datagram, or one record), within `limit`.
    fn recv_wire(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match &mut self.link {
                Link::Udp(sock) => {
                    let mut buf = [0u8; 65_535];
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        assert_eq!(from, self.proxy, "only the proxy talks to the UE");
                        return Some(buf[..n].to_vec());
                    }
                }
                Link::Tcp { stream, buf } => {
                    if !buf.is_empty() {
                        assert!(
                            is_sigcomp(buf[0]),
                            "the proxy sent plain bytes on the stream: {:?}",
                            String::from_utf8_lossy(buf)
                        );
                        let mut record = Vec::new();
                        if let Some(used) = framing::deframe_record(buf, &mut record).unwrap() {
                            buf.drain(..used);
                            if !record.is_empty() {
                                return Some(record);
                            }
                            continue;
                        }
                    }
                    let mut chunk = [0u8; 8192];
                    match stream.read(&mut chunk) {
                        Ok(0) => panic!("the proxy closed the connection"),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => {}
                    }
                }
            }
        }
        None
    }

    /// Receives until a response for `call_id` with CSeq method `method` and `status`
    /// arrives; every message must be compressed. Returns the decompressed SIP.
    fn expect(&mut self, call_id: &str, method: &str, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(wire) = self.recv_wire(Duration::from_millis(500)) else {
                continue;
            };
            assert!(
                is_sigcomp(wire[0]),
                "a response to a comp=sigcomp Via came back plain: {:?}",
                String::from_utf8_lossy(&wire)
            );
            let mut sip = Vec::new();
            let now = Instant::now();
            let transport = self.transport();
            let token = match self
                .endpoint
                .decompress(now, &0, transport, &wire, &mut sip)
            {
                Ok(Received::Message(token)) => token,
                Ok(other) => panic!("expected a compressed response, got {other:?}"),
                Err(e) => panic!("the proxy's message does not decompress: {e:?}"),
            };
            self.endpoint.confirm(now, &0, token);
            let sip = String::from_utf8(sip).expect("decompressed SIP is text");
            self.got.push(Got {
                wire,
                sip: sip.clone(),
            });
            let cseq = header(&sip, "CSeq").unwrap_or_default();
            if header(&sip, "Call-ID").as_deref() == Some(call_id)
                && cseq.ends_with(method)
                && sip.starts_with(&format!("SIP/2.0 {status} "))
            {
                return sip;
            }
        }
        panic!("no {status} for {method} of {call_id} within 5 s");
    }

    /// One call: INVITE, 180/200, ACK, BYE, 200, every message compressed both ways.
    fn call(&mut self, call_id: &str) {
        let local = self.local;
        let t = self.via_transport();
        let invite = format!(
            "INVITE sip:service@{proxy} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {local};branch=z9hG4bK-{call_id}-1;rport;comp=sigcomp\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:ue@example.com>;tag=ue-{call_id}\r\n\
             To: <sip:service@example.net>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:ue@{local};comp=sigcomp>\r\n\
             Subject: SigComp end to end\r\n\
             Content-Length: 0\r\n\r\n",
            proxy = self.proxy
        );
        self.send(&invite);
        let ok = self.expect(call_id, "INVITE", 200);
        let to = header(&ok, "To").expect("200 has To");
        assert!(to.contains(";tag="), "{ok}");
        let contact = header(&ok, "Contact").expect("200 has Contact");
        let target = contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default()
            .to_owned();
        let in_dialog = |method: &str, cseq: u32, branch: u32| {
            format!(
                "{method} {target} SIP/2.0\r\n\
                 Via: SIP/2.0/{t} {local};branch=z9hG4bK-{call_id}-{branch};rport;comp=sigcomp\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:ue@example.com>;tag=ue-{call_id}\r\n\
                 To: {to}\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {cseq} {method}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        self.send(&in_dialog("ACK", 1, 2));
        self.send(&in_dialog("BYE", 2, 3));
        self.expect(call_id, "BYE", 200);
    }
}

/// The value of the first header line named `name` (full name only).
fn header(sip: &str, name: &str) -> Option<String> {
    sip.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Internet checksum (RFC 1071) for the IPv4 header.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// One pcap record: Ethernet II, IPv4, UDP 5060 → 5060 (checksum 0 = none), payload.
fn packet(out: &mut Vec<u8>, index: u32, payload: &[u8]) {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&(index as u16).to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&[192, 0, 2, 1]);
    ip.extend_from_slice(&[198, 51, 100, 1]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&5060u16.to_be_bytes());
    frame.extend_from_slice(&5060u16.to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    out.extend_from_slice(&(1_795_000_000 + index).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
}

/// Byte strings of every data source named `name` in `tshark -x` output, in order.
fn hex_sources(dump: &str, name: &str) -> Vec<Vec<u8>> {
    let mut sources = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in dump.lines() {
        if line.starts_with(name) {
            if let Some(done) = current.take() {
                sources.push(done);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(bytes) = current.as_mut() else {
            continue;
        };
        let mut parts = line.splitn(2, "  ");
        let (Some(offset), Some(rest)) = (parts.next(), parts.next()) else {
            sources.push(current.take().unwrap_or_default());
            continue;
        };
        if offset.len() != 4 || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            sources.push(current.take().unwrap_or_default());
            continue;
        }
        for token in rest.split(' ').take_while(|t| !t.is_empty()).take(16) {
            if let (2, Ok(b)) = (token.len(), u8::from_str_radix(token, 16)) {
                bytes.push(b);
            }
        }
    }
    if let Some(done) = current {
        sources.push(done);
    }
    sources
}

/// tshark decodes the compressed messages `got` (in order) to the SIP the UE decompressed.
fn tshark_agrees(dir: &TempDir, got: &[Got]) {
    let mut pcap = Vec::new();
    pcap.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    pcap.extend_from_slice(&2u16.to_le_bytes());
    pcap.extend_from_slice(&4u16.to_le_bytes());
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    for (i, g) in got.iter().enumerate() {
        packet(&mut pcap, i as u32, &g.wire);
    }
    let path = dir.path("ue-received.pcap");
    std::fs::write(&path, &pcap).unwrap();
    let output = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(Path::new(&path))
        .args([
            "-o",
            "sigcomp.decomp.msg:TRUE",
            "-o",
            "sigcomp.display.udvm.code:FALSE",
            "-o",
            "sigcomp.display.bytecode:FALSE",
            "-d",
            "udp.port==5060,sigcomp",
            "-x",
        ])
        .output()
        .expect("run tshark");
    let dump = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoded = hex_sources(&dump, "Decompressed SigComp message");
    assert_eq!(
        decoded.len(),
        got.len(),
        "tshark decompressed {} of {} messages:\n{dump}",
        decoded.len(),
        got.len()
    );
    for (g, d) in got.iter().zip(&decoded) {
        assert_eq!(String::from_utf8_lossy(d), g.sip);
    }
    eprintln!("tshark decoded all {} compressed responses", decoded.len());
}

/// Sum of a per-shard SigComp counter over both shards.
fn sigcomp_count(proxy: &Sipedge, result: &str) -> f64 {
    (0..2)
        .map(|shard| {
            proxy.metric(&format!(
                "sipedge_sigcomp_messages_total{{shard=\"{shard}\",result=\"{result}\"}}"
            ))
        })
        .sum()
}

/// Prints compressed sizes (the numbers the project reports).
fn report(label: &str, sizes: &[usize]) {
    eprintln!("{label}: {sizes:?}");
}

/// Prints each compressed response against its plain size.
fn report_ratios(label: &str, got: &[Got]) {
    let pairs: Vec<String> = got
        .iter()
        .map(|g| {
            format!(
                "{}/{}={:.3}",
                g.wire.len(),
                g.sip.len(),
                g.wire.len() as f64 / g.sip.len() as f64
            )
        })
        .collect();
    eprintln!("{label} compressed/plain bytes: {}", pairs.join(" "));
}

fn run(name: &str, driver: &'static str) {
    require("sipp", "sip-tester");
    require("tshark", "tshark");
    let dir = TempDir::new(name);
    let uas_port = free_port();
    let mut uas = Sipp::uas(&dir, "uas", uas_port, "udp", "uas");
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{uas_port}")],
            driver,
            ..SipedgeOptions::default()
        },
    );
    let context = |what: &str| format!("{what}\n--- sipedge log:\n{}", proxy.log_text());

    // UDP: several calls from one UE (one compartment on each side).
    let mut ue = Ue::udp(proxy.sip_addr());
    for i in 0..CALLS {
        ue.call(&format!("{name}-udp-{i}"));
    }
    let responses: Vec<usize> = ue.got.iter().map(|g| g.wire.len()).collect();
    report("UDP compressed responses (bytes)", &responses);
    report_ratios("UDP responses", &ue.got);
    report("UDP compressed requests (bytes)", &ue.sent);
    let first = responses[0];
    // The first call's responses: 180, 200, 200 for BYE.
    let per_call = 3;
    assert!(
        responses[per_call..].iter().all(|&n| n < first),
        "later responses reference saved state and are smaller than the first: {responses:?}"
    );
    assert!(
        ue.sent[3..].iter().all(|&n| n < ue.sent[0]),
        "later requests are smaller than the first: {:?}",
        ue.sent
    );
    tshark_agrees(&dir, &ue.got);

    // A garbage SigComp datagram: RFC 4077 NACK back, and the proxy keeps serving.
    // (First byte 0xF9: a 6-byte partial state identifier that names no state, then noise.)
    let garbage = b"\xf9\x13\x37\xca\xfe\xba\xbegarbage that is no SigComp message";
    ue.send_raw(garbage);
    let nack_wire = ue
        .recv_wire(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("{}", context("no NACK for a garbage datagram")));
    let parsed = nack::parse_nack(&nack_wire).unwrap_or_else(|| {
        panic!(
            "{}",
            context(&format!(
                "not a NACK: {:02x?}",
                &nack_wire[..nack_wire.len().min(32)]
            ))
        )
    });
    let digest: [u8; 20] = Sha1::digest(garbage).into();
    assert_eq!(
        parsed.message_sha1, digest,
        "the NACK names the failed message"
    );
    eprintln!("NACK reason {:?}", parsed.reason);
    ue.call(&format!("{name}-udp-after-nack"));

    // More UEs, one call each: with two shards, some land on a shard that does not own
    // their compartment, so datagrams and responses to compress cross shards.
    for i in 0..EXTRA_UES {
        let mut other = Ue::udp(proxy.sip_addr());
        other.call(&format!("{name}-udp-ue{i}"));
    }

    // TCP: RFC 3320 §4.2.2 records on the SIP port, backend still UDP.
    let mut ue_tcp = Ue::tcp(proxy.sip_addr());
    for i in 0..CALLS {
        ue_tcp.call(&format!("{name}-tcp-{i}"));
    }
    // A plain request on the same connection (RFC 5049: decided per message): OPTIONS to the
    // proxy itself, answered by it, compressed because the Via asks for it.
    let options = format!(
        "OPTIONS sip:{proxy} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-{name}-options;rport;comp=sigcomp\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ue@example.com>;tag=ue-options\r\n\
         To: <sip:{proxy}>\r\n\
         Call-ID: {name}-tcp-options\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        proxy = proxy.sip_addr(),
        local = ue_tcp.local
    );
    ue_tcp.send_plain(&options);
    ue_tcp.expect(&format!("{name}-tcp-options"), "OPTIONS", 200);
    ue_tcp.call(&format!("{name}-tcp-after-plain"));
    let tcp_sizes: Vec<usize> = ue_tcp.got.iter().map(|g| g.wire.len()).collect();
    report("TCP compressed responses (bytes)", &tcp_sizes);
    report_ratios("TCP responses", &ue_tcp.got);
    assert!(
        tcp_sizes[per_call..].iter().all(|&n| n < tcp_sizes[0]),
        "{tcp_sizes:?}"
    );

    // The proxy's counters agree.
    let calls = (2 * CALLS + 2 + EXTRA_UES) as f64;
    assert!(sigcomp_count(&proxy, "decompressed") >= 3.0 * calls);
    assert!(sigcomp_count(&proxy, "compressed") >= 3.0 * calls);
    assert!(sigcomp_count(&proxy, "failed") >= 1.0);

    // The backend got every request plain, with RFC 3486 §5 Record-Route and a plain Via.
    uas.stop();
    let log = std::fs::read_to_string(&uas.messages).unwrap_or_default();
    let invites = uas.count_messages("INVITE sip:");
    let byes = uas.count_messages("BYE sip:");
    let all_calls = 2 * CALLS + 2 + EXTRA_UES;
    assert_eq!(invites, all_calls, "{}", context(&log));
    assert_eq!(byes, all_calls, "{}", context(&log));
    let rr: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .collect();
    assert!(
        rr.len() >= all_calls
            && rr
                .iter()
                .all(|l| l.matches("comp=sigcomp").count() == 1 && l.ends_with(";comp=sigcomp>")),
        "client-side Record-Route URI carries comp=sigcomp: {rr:?}"
    );
    // The proxy's Via names the shared port, or with 2+ shards the forwarding shard's own
    // port (`shard_ports`); either way its branch is the proxy's: the RFC 3261 magic cookie,
    // 16 hex digits, a dot.
    let proxy_via = format!("127.0.0.1:{};", proxy.sip_port);
    let proxy_branch = |v: &str| {
        v.split(";branch=z9hG4bK").nth(1).is_some_and(|b| {
            b.len() > 16
                && b.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit)
                && b.as_bytes()[16] == b'.'
        })
    };
    let proxy_vias: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("Via:"))
        .flat_map(|v| v.split(','))
        .filter(|v| v.contains(&proxy_via) || proxy_branch(v))
        .collect();
    assert!(proxy_vias.len() >= all_calls);
    let bad: Vec<&&str> = proxy_vias.iter().filter(|v| v.contains("comp=")).collect();
    assert!(
        bad.is_empty(),
        "the proxy's Via toward the plain backend has no comp=sigcomp: {bad:?}"
    );
}

#[test]
fn sigcomp_e2e_io_uring() {
    run("sigcomp-io_uring", "io_uring");
}

#[test]
fn sigcomp_e2e_epoll() {
    run("sigcomp-epoll", "epoll");
}
