//! Cost of one message through the stateless proxy core (parse, decide, splice), per kind:
//! an INVITE forwarded to a backend, its 180 relayed back, a 483 answered, a foreign response
//! dropped. `Throughput::Bytes` is the input size.
//!
//! `cargo bench --bench proxy`

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sipedge::balance::{BackendSpec, Blacklist, Pool};
use sipedge::proxy::{Core, Dest, Inbound, Placement, ProxyConfig, Verdict};
use sipedge::sip::Transport;

const PROXY: &str = "192.0.2.10:5060";
const CLIENT: &str = "198.51.100.7:5090";

/// The INVITE sipp's built-in `uac` scenario sends (with its SDP).
const INVITE: &str = "INVITE sip:service@192.0.2.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bK-4711-1-0\r\n\
From: sipp <sip:sipp@198.51.100.7:5090>;tag=4711SIPpTag001\r\n\
To: service <sip:service@192.0.2.10:5060>\r\n\
Call-ID: 1-4711@198.51.100.7\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@198.51.100.7:5090\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length:   129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 198.51.100.7\r\n\
s=-\r\n\
c=IN IP4 198.51.100.7\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

fn core() -> Core {
    let specs: Vec<BackendSpec> = ["sip:192.0.2.70:5070", "sip:192.0.2.71:5070"]
        .iter()
        .map(|u| BackendSpec::from_uri(u).unwrap())
        .collect();
    let mut config = ProxyConfig::default();
    for l in &mut config.listeners {
        l.local = PROXY.parse().unwrap();
    }
    Core::new(config, 0, 1, Arc::new(Pool::new(&specs).unwrap())).unwrap()
}

fn inbound<'b>(src: SocketAddr, bytes: &'b [u8]) -> Inbound<'b> {
    Inbound {
        now: Instant::now(),
        src,
        local: PROXY.parse().unwrap(),
        transport: Transport::Udp,
        flow: None,
        placement: Placement::Unknown,
        compressed: false,
        bytes,
    }
}

fn bench_core(c: &mut Criterion) {
    let mut core = core();
    let bl = Blacklist::default();
    let mut out = vec![0u8; 65_536];
    let client: SocketAddr = CLIENT.parse().unwrap();

    // The 180 a backend sends back for the forwarded INVITE (our Via on top).
    let Verdict::Forward(t) =
        core.handle_inbound(inbound(client, INVITE.as_bytes()), &bl, &mut out)
    else {
        panic!("INVITE not forwarded");
    };
    let Dest::Addr(_, backend) = t.dest else {
        panic!("not to a backend")
    };
    let forwarded = String::from_utf8_lossy(&out[..t.len]).into_owned();
    let vias: String = forwarded
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\n{vias}From: sipp <sip:sipp@198.51.100.7:5090>;tag=4711SIPpTag001\r\n\
         To: service <sip:service@192.0.2.10:5060>;tag=1SIPpTag01\r\nCall-ID: 1-4711@198.51.100.7\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:192.0.2.70:5070;transport=UDP>\r\nContent-Length: 0\r\n\r\n"
    );
    let too_many_hops = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0");
    let foreign = ringing.replacen("branch=z9hG4bK", "branch=z9hG4bKforeign", 1);

    let mut g = c.benchmark_group("proxy");
    let cases: [(&str, SocketAddr, &[u8]); 4] = [
        ("invite_forward", client, INVITE.as_bytes()),
        ("ringing_relay", backend, ringing.as_bytes()),
        ("invite_483", client, too_many_hops.as_bytes()),
        ("foreign_response_drop", backend, foreign.as_bytes()),
    ];
    for (name, src, bytes) in cases {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(core.handle_inbound(inbound(src, black_box(bytes)), &bl, &mut out)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_core
}
criterion_main!(benches);
