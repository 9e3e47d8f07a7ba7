//! A proxy started after another one (a restart, or a second node) gets its health probes
//! answered by a UAS that keeps per-Call-ID state.
//!
//! sipp as a UAS answers a request at the address it first saw for the request's Call-ID.
//! Probe Call-IDs used to be `sipedge-probe-<backend>-<seq>` with `seq` counting from 1 in every
//! process, so the second proxy's probes reused the first one's Call-IDs and their answers went
//! to the first proxy's probe port: every probe timed out and healthy backends went down
//! (in the side-by-side benchmark, sipedge with 2 shards ran after sipedge with 1 shard against
//! the same sipp UAS and failed calls in bursts once its backends were marked down).
//! RFC 3261 §8.1.1.4: a Call-ID must be unique across space and time.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sipedge::config::{Config, Driver, Listener};

/// A UAS that answers every request with 200 at the first source seen for its Call-ID.
fn sticky_uas(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut first_seen: HashMap<String, SocketAddr> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, src)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("SIP/2.0") {
                continue;
            }
            let header = |name: &str| -> String {
                text.lines()
                    .filter(|l| {
                        l.split(':')
                            .next()
                            .is_some_and(|h| h.trim().eq_ignore_ascii_case(name))
                    })
                    .map(|l| format!("{l}\r\n"))
                    .collect()
            };
            let call_id = header("Call-ID");
            let to = *first_seen.entry(call_id.clone()).or_insert(src);
            let response = format!(
                "SIP/2.0 200 OK\r\n{}{}{}{call_id}{}Content-Length: 0\r\n\r\n",
                header("Via"),
                header("From"),
                header("To"),
                header("CSeq"),
            );
            let _ = sock.send_to(response.as_bytes(), to);
        }
    })
}

fn probe_counts(running: &sipedge::runtime::Running) -> (u64, u64) {
    let text = running.metrics().encode_prometheus();
    let sum = |result: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("sipedge_backend_probes_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    (sum("ok"), sum("timeout"))
}

fn start(backend: SocketAddr, driver: Driver) -> sipedge::runtime::Running {
    let mut config = Config::from_toml(&format!(
        "shards = 1\nmetrics = \"127.0.0.1:0\"\nbackends = [\"sip:{backend}\"]\n\
         [health]\nprobe_interval_ms = 100\nprobe_timeout_ms = 300\n[log]\nlevel = \"warn\"\n"
    ))
    .expect("config");
    config.driver = driver;
    config.listen = vec!["udp:127.0.0.1:0".parse::<Listener>().expect("listener")];
    sipedge::runtime::start(config).expect("start")
}

#[test]
fn e2e_second_proxy_probes_are_answered_by_a_call_id_sticky_uas() {
    let uas = UdpSocket::bind("127.0.0.1:0").expect("uas");
    let backend = uas.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let thread = sticky_uas(uas, Arc::clone(&stop));
    let first = start(backend, Driver::IoUring);
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe_counts(&first).0 < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        probe_counts(&first).0 >= 3,
        "first proxy: {:?}",
        probe_counts(&first)
    );
    // The second proxy probes the same UAS from another port, as a restarted one would.
    let second = start(backend, Driver::Epoll);
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe_counts(&second).0 < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, timeouts) = probe_counts(&second);
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    assert!(
        ok >= 3 && timeouts == 0,
        "second proxy: {ok} probes answered, {timeouts} timed out"
    );
}
