//! RFC 3263 resolution against a real dnsmasq on loopback (Debian package `dnsmasq`).
//!
//! Each test starts its own dnsmasq on a free port with its records on the command line,
//! changes them by restarting it, and kills only the process it started.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sipedge::balance::{BackendEntry, BackendSpec, Blacklist, BlockReason, Pool, Transport};
use sipedge::runtime::dns::{self, DnsConfig, Rfc3263Resolver};

/// A dnsmasq process serving `records` on 127.0.0.1:`port`.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(port: u16, records: &[String]) -> Self {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                // Authoritative for .test: unknown names get NXDOMAIN, not REFUSED.
                "--local=/test/",
                "--local-ttl=1",
            ])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dnsmasq ({e}): install the Debian package `dnsmasq`")
            });
        Self { child, port }
    }

    fn nameserver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stop(&mut self) {
        // Only the PID this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A UDP "backend": a bound socket that counts what it receives.
struct Sink {
    socket: UdpSocket,
}

impl Sink {
    fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self { socket }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn drain(&self) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while self.socket.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

fn config(ns: SocketAddr) -> DnsConfig {
    DnsConfig {
        nameservers: vec![ns],
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(5),
        retry: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
    }
}

/// Sends one datagram per call to the backend the pool picks; returns the picks.
fn send_calls(pool: &Pool, bl: &Blacklist, calls: u32) -> Vec<SocketAddr> {
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let now = Instant::now();
    (0..calls)
        .filter_map(|i| {
            let call_id = format!("{i}-dns@client.test");
            let b = pool.select(call_id.as_bytes(), now, bl)?;
            client.send_to(call_id.as_bytes(), b.addr()).ok()?;
            Some(b.addr())
        })
        .collect()
}

fn ports(specs: &[BackendSpec]) -> BTreeSet<u16> {
    specs.iter().map(|s| s.addr.port()).collect()
}

fn next_publish(rx: &mpsc::Receiver<Vec<BackendSpec>>, within: Duration) -> Vec<BackendSpec> {
    rx.recv_timeout(within)
        .expect("the DNS thread published a member set in time")
}

#[test]
fn srv_priorities_weights_failover_and_record_changes() {
    let sinks: Vec<Sink> = (0..4).map(|_| Sink::new()).collect();
    let p: Vec<u16> = sinks.iter().map(Sink::port).collect();
    let hosts: Vec<String> = (1..=4)
        .map(|i| format!("--host-record=b{i}.pool.test,127.0.0.1"))
        .collect();
    let srv = |target: usize, prio: u16, weight: u16| {
        format!(
            "--srv-host=_sip._udp.pool.test,b{}.pool.test,{},{prio},{weight}",
            target + 1,
            p[target]
        )
    };
    let mut records = hosts.clone();
    records.extend([srv(0, 10, 50), srv(1, 10, 50), srv(2, 20, 50)]);
    let port = free_udp_port();
    let mut server = Dnsmasq::start(port, &records);

    let (tx, rx) = mpsc::channel();
    let handle = dns::spawn(
        config(server.nameserver()),
        vec![BackendEntry::new("sip:pool.test")],
        move |specs| {
            let _ = tx.send(specs);
        },
    )
    .expect("DNS thread starts");

    // dnsmasq may need a moment to listen: failed attempts are retried every 500 ms.
    let first = next_publish(&rx, Duration::from_secs(10));
    assert_eq!(
        ports(&first),
        BTreeSet::from([p[0], p[1], p[2]]),
        "{first:?}"
    );
    assert!(first.iter().all(|s| s.transport == Transport::Udp));
    let prio = |specs: &[BackendSpec], port: u16| {
        specs
            .iter()
            .find(|s| s.addr.port() == port)
            .map(|s| s.priority)
    };
    assert_eq!(prio(&first, p[0]), prio(&first, p[1]));
    assert!(prio(&first, p[0]) < prio(&first, p[2]));

    // Traffic goes to the preferred SRV priority only, shared by weight.
    let pool = Pool::new(&first).expect("pool");
    let bl = Blacklist::default();
    let picks = send_calls(&pool, &bl, 300);
    let counts: Vec<usize> = sinks.iter().map(Sink::drain).collect();
    assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
    assert!(counts[0] > 90 && counts[1] > 90, "{counts:?}");
    assert_eq!(counts[0] + counts[1], picks.len());

    // Failover across SRV targets: both preferred targets fail, the next priority serves.
    let now = Instant::now();
    for s in &first {
        if s.addr.port() != p[2] {
            bl.report(s.addr, BlockReason::IcmpUnreachable, now);
        }
    }
    send_calls(&pool, &bl, 50);
    let counts: Vec<usize> = sinks.iter().map(Sink::drain).collect();
    assert_eq!(counts, [0, 0, 50, 0]);

    // The records change (b2 replaced by b4): resolution follows within a few TTLs.
    server.stop();
    let mut records = hosts.clone();
    records.extend([srv(0, 10, 50), srv(3, 10, 50), srv(2, 20, 50)]);
    server = Dnsmasq::start(port, &records);
    let deadline = Instant::now() + Duration::from_secs(15);
    let changed = loop {
        let specs = next_publish(&rx, deadline.saturating_duration_since(Instant::now()));
        if ports(&specs).contains(&p[3]) {
            break specs;
        }
    };
    assert_eq!(ports(&changed), BTreeSet::from([p[0], p[2], p[3]]));
    let next = pool.reload(&changed).expect("reload");
    let clean = Blacklist::default();
    let before: Vec<SocketAddr> = send_calls(&pool, &clean, 300);
    sinks.iter().for_each(|s| {
        s.drain();
    });
    let after = send_calls(&next, &clean, 300);
    let counts: Vec<usize> = sinks.iter().map(Sink::drain).collect();
    assert_eq!(counts[1] + counts[2], 0, "{counts:?}");
    assert!(counts[0] > 90 && counts[3] > 90, "{counts:?}");
    // Rendezvous hashing: a call either keeps its target or moves to the new one (b4); only
    // the removed target's calls all move.
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a == b || a.port() == p[3] || b.port() == p[1],
            "call moved from {b} to {a}"
        );
    }
    // Of b1's calls, the new target wins about a third (it beats b1 given b1 beat b2).
    let on_b1: Vec<bool> = before
        .iter()
        .zip(&after)
        .filter(|(b, _)| b.port() == p[0])
        .map(|(b, a)| a == b)
        .collect();
    let stayed = on_b1.iter().filter(|&&s| s).count();
    assert!(
        stayed * 2 > on_b1.len(),
        "only {stayed} of b1's {} calls stayed",
        on_b1.len()
    );

    // DNS goes away: the last good members stay published.
    server.stop();
    handle.refresh();
    match rx.recv_timeout(Duration::from_millis(2500)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("members changed while DNS was down: {other:?}"),
    }
    drop(handle);
}

#[test]
fn naptr_transport_explicit_port_and_address_fallback() {
    let port = free_udp_port();
    let records: Vec<String> = [
        "--host-record=t1.naptr.test,127.0.0.21",
        "--host-record=u1.naptr.test,127.0.0.22",
        "--host-record=plain.test,127.0.0.23",
        // NAPTR prefers TCP over UDP for naptr.test (RFC 3263 §4.1).
        "--naptr-record=naptr.test,10,10,S,SIP+D2T,,_sip._tcp.naptr.test",
        "--naptr-record=naptr.test,20,10,S,SIP+D2U,,_sip._udp.naptr.test",
        "--srv-host=_sip._tcp.naptr.test,t1.naptr.test,5080,0,0",
        "--srv-host=_sip._udp.naptr.test,u1.naptr.test,5090,0,0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let _server = Dnsmasq::start(port, &records);
    let resolver =
        Rfc3263Resolver::new(config(SocketAddr::from(([127, 0, 0, 1], port)))).expect("resolver");
    let resolve = |uri: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match resolver.resolve(&BackendEntry::new(uri)) {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{uri}: {e}"),
            }
        }
    };

    let r = resolve("sip:naptr.test");
    let got: Vec<(SocketAddr, Transport)> = r.specs.iter().map(|s| (s.addr, s.transport)).collect();
    assert_eq!(got, [("127.0.0.21:5080".parse().unwrap(), Transport::Tcp)]);
    // TTLs are honoured: dnsmasq serves them with TTL 1, clamped up to min_ttl.
    assert_eq!(r.valid_for, Duration::from_secs(1));

    // An explicit transport skips NAPTR and asks the SRV of that transport.
    let r = resolve("sip:naptr.test;transport=udp");
    assert_eq!(r.specs.len(), 1);
    assert_eq!(r.specs[0].addr, "127.0.0.22:5090".parse().unwrap());

    // An explicit port skips NAPTR and SRV.
    let r = resolve("sip:t1.naptr.test:5999");
    assert_eq!(r.specs[0].addr, "127.0.0.21:5999".parse().unwrap());
    assert_eq!(r.specs[0].transport, Transport::Udp);

    // No NAPTR, no SRV: A record on the transport's default port.
    let r = resolve("sip:plain.test;transport=tcp");
    assert_eq!(r.specs[0].addr, "127.0.0.23:5060".parse().unwrap());
    assert_eq!(r.specs[0].transport, Transport::Tcp);

    // A name that does not exist is an error, not an empty pool.
    assert!(
        resolver
            .resolve(&BackendEntry::new("sip:missing.test"))
            .is_err()
    );
}
