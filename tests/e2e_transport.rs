//! End to end: TCP connection handling (garbage closes the connection, idle timeout, CRLF
//! keep-alive), an IPv6 listener, and ICMP-driven failover (IP_RECVERR → blacklist → the
//! next backend, counted in `sipedge_backend_failovers_total`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, uac};

fn options_to(target: SocketAddr, via: SocketAddr, transport: &str, tag: &str) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch=z9hG4bK-{tag};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@example.com>;tag={tag}\r\nTo: <sip:{target}>\r\n\
         Call-ID: {tag}@example.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Reads until EOF or `limit`; returns what was read and whether EOF came.
fn read_until_eof(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => {}
        }
    }
    (got, false)
}

fn proxy_with(dir: &TempDir, config: &str) -> Sipedge {
    let path = dir.path("sipedge.toml");
    std::fs::write(&path, config).expect("write config");
    Sipedge::start(
        dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{}", free_port())],
            wait_ready: false,
            extra: vec!["--config".into(), path.to_string_lossy().into_owned()],
            ..SipedgeOptions::default()
        },
    )
}

#[test]
fn e2e_tcp_garbage_is_closed_and_others_still_served() {
    let dir = TempDir::new("tcp-garbage");
    let proxy = proxy_with(&dir, "[health]\nprobe_interval_ms = 0\n");
    let mut bad = TcpStream::connect(proxy.sip_addr()).expect("connect");
    bad.write_all(b"GARBAGE GARBAGE GARBAGE\r\nNo-Length: here\r\n\r\n")
        .expect("write");
    let (_, closed) = read_until_eof(&mut bad, Duration::from_secs(3));
    assert!(closed, "a connection that sent garbage must be closed");
    assert!(proxy.metric("sipedge_errors_total{reason=\"tcp_framing\"}") >= 1.0);

    // A well-behaved connection: keep-alive ping gets a pong, OPTIONS to the proxy gets 200.
    let mut good = TcpStream::connect(proxy.sip_addr()).expect("connect");
    let local = good.local_addr().expect("local");
    good.write_all(b"\r\n\r\n").expect("ping");
    good.write_all(options_to(proxy.sip_addr(), local, "TCP", "tcp-alive").as_bytes())
        .expect("write");
    good.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(11).any(|w| w == b"SIP/2.0 200") {
        let n = good.read(&mut buf).expect("answer over TCP");
        assert!(n > 0, "closed instead of answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"\r\n"),
        "CRLF pong first (RFC 5626 §4.4.1)"
    );
}

#[test]
fn e2e_tcp_idle_connection_is_closed() {
    let dir = TempDir::new("tcp-idle");
    let proxy = proxy_with(
        &dir,
        "[health]\nprobe_interval_ms = 0\n[tcp]\nidle_timeout_secs = 1\n",
    );
    let started = Instant::now();
    let mut idle = TcpStream::connect(proxy.sip_addr()).expect("connect");
    let (_, closed) = read_until_eof(&mut idle, Duration::from_secs(5));
    assert!(closed, "idle connection not closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(proxy.metric("sipedge_errors_total{reason=\"tcp_idle_timeout\"}") >= 1.0);
}

#[test]
fn e2e_ipv6_listener_answers() {
    if UdpSocket::bind("[::1]:0").is_err() {
        panic!("IPv6 loopback (::1) is not available on this machine");
    }
    let dir = TempDir::new("ipv6");
    let port = free_port();
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{}", free_port())],
            wait_ready: false,
            extra: vec![
                "--listen".into(),
                format!("udp:[::1]:{port}"),
                "--listen".into(),
                "udp:127.0.0.1:0".into(),
            ],
            transports: vec![],
            ..SipedgeOptions::default()
        },
    );
    let client = UdpSocket::bind("[::1]:0").expect("bind v6");
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let target: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    let local = client.local_addr().expect("local");
    client
        .send_to(
            options_to(target, local, "UDP", "v6-alive").as_bytes(),
            target,
        )
        .expect("send");
    let mut buf = [0u8; 4096];
    let n = client.recv(&mut buf).expect("answer over IPv6");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(proxy);
}

#[test]
fn e2e_icmp_unreachable_backend_fails_over() {
    let dir = TempDir::new("icmp-failover");
    let live = free_port();
    let dead = free_port(); // nothing listens: every datagram to it draws ICMP port unreachable
    let mut uas = Sipp::uas(&dir, "uas", live, "udp", "uas");
    let config = dir.path("sipedge.toml");
    std::fs::write(&config, "[health]\nprobe_interval_ms = 0\n").expect("write config");
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![
                format!("sip:127.0.0.1:{live}"),
                format!("sip:127.0.0.1:{dead}"),
            ],
            extra: vec!["--config".into(), config.to_string_lossy().into_owned()],
            ..SipedgeOptions::default()
        },
    );
    let mut calls = uac(
        &dir,
        "uac",
        proxy.sip_addr(),
        "udp",
        &["-m", "100", "-r", "50"],
    );
    assert_eq!(
        calls.wait(Duration::from_secs(60)),
        Some(0),
        "calls must survive a dead backend:\n{}\n{}",
        calls.output_text(),
        proxy.log_text()
    );
    uas.stop();
    assert_eq!(
        uas.call_ids().len(),
        100,
        "every call ends up on the live backend"
    );
    assert!(proxy.metric("sipedge_errors_total{reason=\"icmp\"}") >= 1.0);
    let failovers = proxy.metric(&format!(
        "sipedge_backend_failovers_total{{backend=\"sip:127.0.0.1:{dead}\"}}"
    ));
    assert!(failovers >= 10.0, "failovers counted: {failovers}");
}
