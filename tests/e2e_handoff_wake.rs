//! A handoff wakes an idle owner shard promptly (no stall waiting for unrelated traffic).
//!
//! One client socket sends INVITEs one at a time, each after the previous one was forwarded,
//! so the owning shard is idle and must be woken by the handoff doorbell every time. All of
//! one socket's datagrams land on one shard (the kernel's SO_REUSEPORT hash of the 4-tuple), so
//! the Call-IDs owned by the other shard are exactly the handed-off ones. The test prints the
//! round-trip percentiles of both classes (the difference is the cost of a wake-up) and fails
//! only on a stall: a missed wake-up leaves a message waiting for unrelated traffic, which
//! here never comes, so it shows as a message not forwarded within a second (a bound loose
//! enough for a loaded 2-CPU CI machine, where scheduling alone costs tens of milliseconds).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use sipedge::config::{Config, Driver, Listener};
use sipedge::shard::shard_of;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Messages the shards handed to each other so far (`sipedge_shard_handoffs_sent_total`).
fn handoffs_sent(running: &sipedge::runtime::Running) -> u64 {
    running
        .metrics()
        .encode_prometheus()
        .lines()
        .filter(|l| l.starts_with("sipedge_shard_handoffs_sent_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

fn measure(driver: Driver) {
    let backend = UdpSocket::bind("127.0.0.1:0").expect("backend");
    backend
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let backend_addr = backend.local_addr().expect("addr");
    // The backend is a bare socket that answers nothing: no probing and no INVITE failover
    // (its silence timeout would take the only backend out of the pool mid-run).
    let mut config = Config::from_toml(&format!(
        "shards = 2\nkernel_steering = false\nmetrics = \"127.0.0.1:0\"\nbackends = [\"sip:{backend_addr}\"]\n\
         [health]\nprobe_interval_ms = 0\n[failover]\nenabled = false\n[log]\nlevel = \"warn\"\n"
    ))
    .expect("config");
    config.driver = driver;
    config.listen = vec!["udp:127.0.0.1:0".parse::<Listener>().expect("listener")];
    let running = sipedge::runtime::start(config).expect("start");
    let proxy = running.listeners()[0].addr;
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    let client_addr = client.local_addr().expect("addr");

    let mut by_owner: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 65_536];
    for i in 0..600 {
        let call_id = format!("wake-{i}@example.com");
        let owner = usize::from(shard_of(call_id.as_bytes(), 2));
        let invite = format!(
            "INVITE sip:bob@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {client_addr};branch=z9hG4bK-w{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=w{i}\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{client_addr}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // Let both shards go idle (parked on their sockets and doorbells).
        std::thread::sleep(Duration::from_millis(2));
        let sent = Instant::now();
        client.send_to(invite.as_bytes(), proxy).expect("send");
        backend.recv(&mut buf).expect("forwarded within 2 s");
        by_owner[owner].push(sent.elapsed());
    }
    let handoffs = handoffs_sent(&running);
    // One class was handed off (all of it), the other not at all.
    let (handed, local) = if by_owner[0].len() as u64 == handoffs {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(by_owner[handed].len() as u64, handoffs, "handoff count");
    for class in &mut by_owner {
        class.sort();
    }
    let report = |name: &str, v: &[Duration]| {
        println!(
            "{driver}: {name}: n={} p50={:?} p99={:?} max={:?}",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    };
    report("same shard", &by_owner[local]);
    report("handed off", &by_owner[handed]);
    let worst = by_owner[handed].last().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(1),
        "{driver}: a handed-off message stalled for {worst:?}"
    );
}

#[test]
fn e2e_handoff_wakes_idle_owner_without_stall() {
    measure(Driver::IoUring);
    measure(Driver::Epoll);
}

/// Sustained load through 2 shards: `sipedge-loadgen` at a fixed rate → sipedge → two
/// `sipedge-responder`s (two source ports, so the kernel's SO_REUSEPORT hash may put them on
/// either shard). Every call must finish within 500 ms: a shard that sleeps while datagrams or
/// parcels wait for it shows up as calls delayed by seconds (sipp saw 200s to BYE arrive more
/// than 3 s late), which a loss count alone would miss at the end of a run.
fn sustained(driver: Driver) {
    let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
    // Reserve two ports for the responders (released just before they bind).
    let (r1, r2) = (
        UdpSocket::bind("127.0.0.1:0").expect("port"),
        UdpSocket::bind("127.0.0.1:0").expect("port"),
    );
    let (p1, p2) = (port(&r1), port(&r2));
    drop((r1, r2));
    let mut config = Config::from_toml(&format!(
        "shards = 2\nkernel_steering = false\nmetrics = \"127.0.0.1:0\"\n\
         backends = [\"sip:127.0.0.1:{p1}\", \"sip:127.0.0.1:{p2}\"]\n\
         [health]\nprobe_interval_ms = 0\n[log]\nlevel = \"warn\"\n"
    ))
    .expect("config");
    config.driver = driver;
    config.listen = vec!["udp:127.0.0.1:0".parse::<Listener>().expect("listener")];
    let mut responders: Vec<std::process::Child> = [p1, p2]
        .iter()
        .map(|p| {
            std::process::Command::new(env!("CARGO_BIN_EXE_sipedge-responder"))
                .args(["--listen", &format!("127.0.0.1:{p}")])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("sipedge-responder")
        })
        .collect();
    let running = sipedge::runtime::start(config).expect("start");
    let proxy = running.listeners()[0].addr;
    std::thread::sleep(Duration::from_millis(200));
    // 6,000 calls at 1,500 calls/s (4 s), each call given 500 ms (loadgen counts the slower
    // ones as timed out). --duration bounds the run and is the window in which calls may
    // start: twice the nominal 4 s, so a generator thread woken late on a busy machine still
    // starts every call.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipedge-loadgen"))
        .args([
            "--target",
            &proxy.to_string(),
            "--rate",
            "1500",
            "--calls",
            "6000",
            "--duration",
            "8",
            "--timeout-ms",
            "500",
            "--json",
        ])
        .output()
        .expect("sipedge-loadgen");
    for r in &mut responders {
        let _ = r.kill();
        let _ = r.wait();
    }
    let report = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        report
            .split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let handoffs = handoffs_sent(&running);
    println!("{driver}: sustained 1500 calls/s: {report} handoffs={handoffs}");
    assert!(out.status.success(), "loadgen failed: {report}");
    assert_eq!(field("started"), 6000, "{driver}: {report}");
    assert_eq!(
        field("completed"),
        field("started"),
        "{driver}: calls delayed beyond 500 ms or lost: {report}"
    );
}

#[test]
fn e2e_two_shards_sustained_rate_delays_nothing() {
    sustained(Driver::IoUring);
    sustained(Driver::Epoll);
}
