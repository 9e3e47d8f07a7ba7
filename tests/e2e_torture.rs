//! Every RFC 4475 torture message, sent over UDP to a running sipedge, gets the behaviour
//! `../shared/testdata/sip-torture/index.json` expects, and the process still serves after.
//!
//! The two backends are plain sockets of this test (UDP, plus TCP on the same ports for
//! requests over 1300 bytes, RFC 3261 §18.1.1), so a forwarded request is seen on the wire.
//! Error responses go where RFC 3261 §18.2.2 / RFC 3581 send them (the torture messages' Via
//! addresses), so they are observed through sipedge's own counters
//! (`sipedge_local_responses_total{status}`), as are drops (`sipedge_drops_total{reason}`).
//! The exact bytes of each verdict are the proxy core's business and are checked in-process by
//! `tests/proxy_torture.rs`; this test proves the wire path: sockets, shards, handoff, metrics.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, TempDir, free_port, http};
use serde_json::Value;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-torture"
);

/// Counts what reaches one backend address over UDP and TCP.
struct Backend {
    port: u16,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start() -> Self {
        let port = free_port();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind(("127.0.0.1", port)).expect("bind backend UDP");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let tcp = TcpListener::bind(("127.0.0.1", port)).expect("bind backend TCP");
        tcp.set_nonblocking(true).expect("nonblocking");
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = udp.recv(&mut buf) {
                    if n > 0 {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut conns = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if let Ok((c, _)) = tcp.accept() {
                    let _ = c.set_nonblocking(true);
                    conns.push(c);
                }
                for c in &mut conns {
                    if let Ok(n) = c.read(&mut buf) {
                        if n > 0 {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            port,
            received,
            stop,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Forwarded,
    Responded(u16),
    Dropped(String),
    Nothing,
}

/// Counters of one scrape: local responses by status, drops by reason.
fn snapshot(proxy: &Sipedge) -> Vec<(String, f64)> {
    let (_, body) = http(proxy.admin, "GET", "/metrics").expect("scrape");
    body.lines()
        .filter(|l| {
            l.starts_with("sipedge_local_responses_total") || l.starts_with("sipedge_drops_total")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn label(series: &str, key: &str) -> String {
    series
        .split(&format!("{key}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_owned()
}

fn observe(
    proxy: &Sipedge,
    backends: &[Backend],
    before: &[(String, f64)],
    forwarded: usize,
) -> Seen {
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let total: usize = backends
            .iter()
            .map(|b| b.received.load(Ordering::SeqCst))
            .sum();
        if total > forwarded {
            return Seen::Forwarded;
        }
        let now = snapshot(proxy);
        for (series, value) in &now {
            let old = before
                .iter()
                .find(|(s, _)| s == series)
                .map_or(0.0, |(_, v)| *v);
            if *value > old {
                if series.starts_with("sipedge_local_responses_total") {
                    return Seen::Responded(label(series, "status").parse().unwrap_or(0));
                }
                return Seen::Dropped(label(series, "reason"));
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    Seen::Nothing
}

#[test]
fn e2e_every_torture_message_over_udp() {
    let index_text = std::fs::read_to_string(format!("{DIR}/index.json"))
        .unwrap_or_else(|e| panic!("{DIR}/index.json missing ({e}): ../shared must be present"));
    let index: Value = serde_json::from_str(&index_text).expect("index.json is JSON");
    let entries = index["entries"].as_array().expect("entries");
    assert!(entries.len() >= 30, "too few torture entries");

    let dir = TempDir::new("torture");
    let backends = [Backend::start(), Backend::start()];
    let config = dir.path("sipedge.toml");
    // The test's backends answer nothing, neither OPTIONS nor INVITE: no probing and no
    // INVITE failover (whose silence timeout would take them out of the pool mid-run).
    std::fs::write(
        &config,
        "[health]\nprobe_interval_ms = 0\n[failover]\nenabled = false\n",
    )
    .expect("write config");
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: backends
                .iter()
                .map(|b| format!("sip:127.0.0.1:{}", b.port))
                .collect(),
            extra: vec!["--config".into(), config.to_string_lossy().into_owned()],
            ..SipedgeOptions::default()
        },
    );
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");

    let mut failures = Vec::new();
    let mut tally = [0usize; 4];
    for entry in entries {
        let file = entry["file"].as_str().expect("file");
        let bytes = std::fs::read(format!("{DIR}/{file}")).expect("message file");
        let expectation = &entry["proxy_expectation"];
        let action = expectation["action"].as_str();
        let statuses: Vec<u16> = expectation["statuses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|s| s as u16)
                    .collect()
            })
            .unwrap_or_default();
        let is_response = entry["message_kind"] == "response";

        let before = snapshot(&proxy);
        let forwarded: usize = backends
            .iter()
            .map(|b| b.received.load(Ordering::SeqCst))
            .sum();
        client.send_to(&bytes, proxy.sip_addr()).expect("send");
        let seen = observe(&proxy, &backends, &before, forwarded);
        tally[match seen {
            Seen::Forwarded => 0,
            Seen::Responded(_) => 1,
            Seen::Dropped(_) => 2,
            Seen::Nothing => 3,
        }] += 1;
        let ok = match (is_response, action, &seen) {
            (false, Some("forward"), Seen::Forwarded) => true,
            (false, Some("reject"), Seen::Responded(code)) => {
                statuses.contains(code) || (statuses.is_empty() && *code >= 400)
            }
            (false, Some("reject_or_repair" | "forward_or_reject"), Seen::Forwarded) => true,
            (false, Some("reject_or_repair" | "forward_or_reject"), Seen::Responded(code)) => {
                statuses.contains(code)
            }
            // Not described by RFC 4475: anything but forwarding it.
            (false, None, s) => *s != Seen::Forwarded,
            (true, Some("drop"), Seen::Dropped(_)) => true,
            // A response "to relay" arriving from outside carries no Via of ours, so a
            // stateless proxy discards it (RFC 3261 §18.1.2); relaying under our Via is
            // checked in-process by tests/proxy_torture.rs.
            (true, Some("forward"), Seen::Dropped(reason)) => reason == "foreign_via",
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{file}: expected {action:?} {statuses:?}, saw {seen:?}"
            ));
        }
    }
    // The archive holds all three behaviours; seeing each proves the observation works.
    assert!(
        tally[0] >= 10 && tally[1] >= 10 && tally[2] >= 2,
        "forwarded/responded/dropped/nothing = {tally:?}"
    );
    assert!(
        failures.is_empty(),
        "{} torture messages misbehaved over the wire:\n{}\n--- log:\n{}",
        failures.len(),
        failures.join("\n"),
        proxy.log_text()
    );

    // Still serving: OPTIONS addressed to the proxy itself is answered 200 (RFC 3261 §11),
    // over both shards' sockets (several source ports spread over SO_REUSEPORT).
    for _ in 0..4 {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("socket");
        probe
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let local: SocketAddr = probe.local_addr().expect("addr");
        let options = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-alive-{p};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: alive-{p}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            port = proxy.sip_port,
            p = local.port()
        );
        probe
            .send_to(options.as_bytes(), proxy.sip_addr())
            .expect("send");
        let mut buf = [0u8; 4096];
        let n = probe.recv(&mut buf).expect("sipedge stopped answering");
        assert!(
            buf[..n].starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert_eq!(
        http(proxy.admin, "GET", "/health").map(|r| r.0).ok(),
        Some(200)
    );
}
