//! The per-message hot path, sans-IO: parse → route decision → rewrite into the output buffer,
//! as one shard's [`Core::handle_inbound`] does it for each datagram, for the messages of a
//! call (INVITE, 180, 200, ACK, BYE, 200) and a REGISTER; plus its parts: parsing alone,
//! backend selection and the blacklist lookup.
//!
//! ```text
//! cargo bench --bench hotpath                        # criterion, wall-clock
//! target/release/deps/hotpath-* --instructions CASE N  # run CASE N times, for callgrind
//! perf/hotpath.sh                                    # instruction counts per message
//! ```
//!
//! The `--instructions` mode exists because a shared machine's wall-clock figures wander by
//! ±10 %, while callgrind's instruction counts are identical run to run.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use sipedge::balance::{BackendSpec, Blacklist, Pool};
use sipedge::proxy::{Core, Dest, Inbound, ListenerConfig, Placement, ProxyConfig, Verdict};
use sipedge::sip::{self, Transport};

const PROXY: &str = "127.0.0.1:5060";
const CLIENT: &str = "127.0.0.1:5090";
const BACKENDS: [&str; 2] = ["127.0.0.1:5070", "127.0.0.1:5071"];
const CALL_ID: &str = "1-25317@127.0.0.1";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a literal socket address")
}

/// An INVITE as sipp's built-in UAC sends it (same headers, same SDP).
fn invite() -> Vec<u8> {
    let sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
               t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:service@{PROXY} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-25317-1-0\r\n\
         From: sipp <sip:sipp@{CLIENT}>;tag=25317SIPpTag001\r\n\
         To: service <sip:service@{PROXY}>\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: sip:sipp@{CLIENT}\r\n\
         Max-Forwards: 70\r\n\
         Subject: Performance Test\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// The INVITE with [`EXTRA_LINES`] more header lines of a kind the proxy only carries (as
/// trunks add `P-`, `X-` and vendor headers), before Content-Length: what one more header line
/// costs the parser is the difference from `parse_invite`, divided by their number.
fn invite_with_extra_lines() -> Vec<u8> {
    let invite = invite();
    let at = invite
        .windows(16)
        .position(|w| w == b"Content-Length: ")
        .expect("the INVITE has a Content-Length");
    let mut out = invite[..at].to_vec();
    for i in 0..EXTRA_LINES {
        out.extend_from_slice(format!("X-Trace-{i}: carried as written\r\n").as_bytes());
    }
    out.extend_from_slice(&invite[at..]);
    out
}

/// How many lines [`invite_with_extra_lines`] adds.
const EXTRA_LINES: usize = 10;

/// An in-dialog request of the same call (ACK or BYE), as sipp sends it.
fn in_dialog(method: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:service@{PROXY} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-25317-1-{cseq}{method}\r\n\
         From: sipp <sip:sipp@{CLIENT}>;tag=25317SIPpTag001\r\n\
         To: service <sip:service@{PROXY}>;tag=14213SIPpTag011\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: sip:sipp@{CLIENT}\r\n\
         Max-Forwards: 70\r\n\
         Subject: Performance Test\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The REGISTER of RFC 3261 §24.1 from the realistic corpus, sent by our client.
fn register() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/sip-realistic/rfc3261-24.1-F1-register.sip"
    );
    std::fs::read(path).expect("the realistic corpus is present")
}

/// Shards of the default layout: the message path includes the check that the message
/// belongs to the shard reading it.
const SHARDS: u16 = 2;

/// The cores of [`SHARDS`] shards with the benchmark's two backends; each message is handled
/// by the core of the shard owning its Call-ID, as kernel steering delivers it.
struct Fixture {
    cores: Vec<Core>,
    pool: Arc<Pool>,
    blacklist: Blacklist,
    out: Vec<u8>,
    now: Instant,
    /// The proxy's listener address, parsed once: parsing it per message put the standard
    /// socket-address parser (~350 instructions) into every case's count.
    local: SocketAddr,
}

impl Fixture {
    fn new() -> Self {
        let specs: Vec<BackendSpec> = BACKENDS
            .iter()
            .map(|b| BackendSpec::from_uri(&format!("sip:{b}")).expect("a literal backend URI"))
            .collect();
        let pool = Arc::new(Pool::new(&specs).expect("two backends make a pool"));
        let config = ProxyConfig {
            listeners: vec![ListenerConfig::new(Transport::Udp, addr(PROXY))],
            ..ProxyConfig::default()
        };
        let cores = (0..SHARDS)
            .map(|shard| {
                Core::new(config.clone(), shard, SHARDS, Arc::clone(&pool))
                    .expect("a valid proxy config")
            })
            .collect();
        Self {
            cores,
            pool,
            blacklist: Blacklist::default(),
            out: vec![0u8; 65_535],
            now: Instant::now(),
            local: addr(PROXY),
        }
    }

    /// The shard owning a message's Call-ID (worked out once per case, outside the counts).
    fn owner(bytes: &[u8]) -> usize {
        let call_id = sip::salvage_call_id(bytes).map_or(&b""[..], |span| span.slice(bytes));
        usize::from(sipedge::shard::shard_of(call_id, SHARDS))
    }

    fn handle(
        &mut self,
        shard: usize,
        placement: Placement,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Verdict {
        let input = Inbound {
            now: self.now,
            src,
            local: self.local,
            transport: Transport::Udp,
            flow: None,
            placement,
            compressed: false,
            bytes,
        };
        self.cores[shard].handle_inbound(input, &self.blacklist, &mut self.out)
    }

    /// Forwards `bytes` and returns what went out and where.
    fn forward(&mut self, src: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
        match self.handle(Self::owner(bytes), Placement::Steered, src, bytes) {
            Verdict::Forward(t) => match t.dest {
                Dest::Addr(_, to) => (to, self.out[..t.len].to_vec()),
                other => panic!("forwarded to {other:?}, expected an address"),
            },
            other => panic!(
                "expected Forward, got {other:?} for\n{}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
}

/// A backend's response to the request the proxy forwarded (our Via on top), built by the
/// crate's stateless response writer.
fn response_to(forwarded: &[u8], code: u16, reason: &[u8]) -> Vec<u8> {
    let mut slots = [sip::EMPTY_HEADER; 64];
    let msg = sip::parse(forwarded, &mut slots, &sip::Limits::default())
        .expect("forwarded request parses");
    let req = sip::Salvage::from_message(&msg);
    let mut out = vec![0u8; 65_535];
    let len = sip::write_response(
        &req,
        code,
        reason,
        &sip::ResponseOptions::default(),
        &mut out,
    )
    .expect("response fits");
    out.truncate(len);
    out
}

/// One message of the bench, run on the shard owning it.
struct Case {
    name: &'static str,
    src: SocketAddr,
    bytes: Vec<u8>,
    shard: usize,
    placement: Placement,
}

/// The cases, each checked to be forwarded. They arrive as on a kernel-steered socket (the
/// default deployment: the owner is checked by the parsed Call-ID), except
/// `invite_unsteered`, which arrives where any shard may read it (without CAP_BPF) and so
/// pays for the Call-ID scan before the parse.
fn cases(f: &mut Fixture) -> Vec<Case> {
    let client = addr(CLIENT);
    let invite = invite();
    let (backend, forwarded_invite) = f.forward(client, &invite);
    let (_, forwarded_bye) = f.forward(client, &in_dialog("BYE", 2));
    let cases = vec![
        ("invite", client, invite.clone()),
        (
            "180",
            backend,
            response_to(&forwarded_invite, 180, b"Ringing"),
        ),
        (
            "200_invite",
            backend,
            response_to(&forwarded_invite, 200, b"OK"),
        ),
        ("ack", client, in_dialog("ACK", 1)),
        ("bye", client, in_dialog("BYE", 2)),
        ("200_bye", backend, response_to(&forwarded_bye, 200, b"OK")),
        ("register", client, register()),
        ("invite_unsteered", client, invite),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(name, src, bytes)| Case {
            name,
            src,
            shard: Fixture::owner(&bytes),
            placement: if name.ends_with("_unsteered") {
                Placement::Unknown
            } else {
                Placement::Steered
            },
            bytes,
        })
        .collect();
    for case in &cases {
        let (to, _) = f.forward(case.src, &case.bytes);
        assert!(
            (case.src == client) != (to == client),
            "{}: requests must go to a backend and responses to the client",
            case.name
        );
    }
    cases
}

fn bench_hotpath(c: &mut Criterion) {
    let mut f = Fixture::new();
    let cases = cases(&mut f);
    let mut g = c.benchmark_group("handle_inbound");
    for case in &cases {
        g.throughput(Throughput::Bytes(case.bytes.len() as u64));
        g.bench_function(case.name, |b| {
            b.iter(|| {
                black_box(f.handle(case.shard, case.placement, case.src, black_box(&case.bytes)))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parts");
    let invite = invite();
    g.throughput(Throughput::Bytes(invite.len() as u64));
    g.bench_function("parse_invite", |b| {
        b.iter(|| {
            let mut slots = [sip::EMPTY_HEADER; 64];
            black_box(sip::parse(black_box(&invite), &mut slots, &sip::Limits::default()).is_ok())
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("select_backend", |b| {
        b.iter(|| {
            black_box(
                f.pool
                    .select(black_box(CALL_ID.as_bytes()), f.now, &f.blacklist)
                    .map(|b| b.id()),
            )
        })
    });
    let backend = addr(BACKENDS[0]);
    g.bench_function("blacklist_lookup", |b| {
        b.iter(|| black_box(f.blacklist.is_blocked(black_box(backend), f.now)))
    });
    g.finish();
}

criterion_group!(benches, bench_hotpath);

/// `--instructions CASE N`: run one case N times and nothing else, so that callgrind's
/// instruction count of a run with N = 2000 minus one with N = 1000 is the cost of 1000
/// messages, with the set-up cancelled out.
fn instructions(case: &str, n: u64) {
    let mut f = Fixture::new();
    let cases = cases(&mut f);
    let invite = invite();
    let longer = invite_with_extra_lines();
    let backend = addr(BACKENDS[0]);
    for _ in 0..n {
        match case {
            "parse_invite" | "parse_invite_extra_lines" => {
                let bytes = if case == "parse_invite" {
                    &invite
                } else {
                    &longer
                };
                let mut slots = [sip::EMPTY_HEADER; 64];
                black_box(
                    sip::parse(black_box(bytes), &mut slots, &sip::Limits::default()).is_ok(),
                );
            }
            "select_backend" => {
                black_box(
                    f.pool
                        .select(black_box(CALL_ID.as_bytes()), f.now, &f.blacklist)
                        .map(|b| b.id()),
                );
            }
            "blacklist_lookup" => {
                black_box(f.blacklist.is_blocked(black_box(backend), f.now));
            }
            name => {
                let Some(case) = cases.iter().find(|c| c.name == name) else {
                    eprintln!("unknown case {name}");
                    std::process::exit(2);
                };
                black_box(f.handle(case.shard, case.placement, case.src, black_box(&case.bytes)));
            }
        }
    }
}

/// `--size CASE`: the datagram length of a case ("–" for the non-message cases).
fn size(case: &str) {
    let mut f = Fixture::new();
    match cases(&mut f).iter().find(|c| c.name == case) {
        Some(found) => println!("{}", found.bytes.len()),
        None if case == "parse_invite" => println!("{}", invite().len()),
        None if case == "parse_invite_extra_lines" => {
            println!("{}", invite_with_extra_lines().len())
        }
        None => println!("–"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--size") {
        size(args.get(at + 1).map_or("invite", String::as_str));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--instructions") {
        let case = args.get(at + 1).map_or("invite", String::as_str);
        let n = args
            .get(at + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        instructions(case, n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
