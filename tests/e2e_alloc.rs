//! The message path allocates nothing: 10,000 INVITEs through UDP in → (cross-shard handoff
//! for about half of them) → proxy core → UDP out, and the backend's 180 to each relayed back
//! to the client, under each I/O driver, with a counting global allocator watching every
//! thread of the process.
//!
//! sipedge runs in-process ([`sipedge::runtime::start`]) with two shards; the client and the
//! backend are plain std sockets of this test, whose send/receive loops allocate nothing
//! either (every message is built before the count starts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sipedge::config::{Config, Driver, ListenTransport, Listener};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MESSAGES: usize = 10_000;

fn invite(i: usize, client: SocketAddr, proxy: SocketAddr) -> Vec<u8> {
    format!(
        "INVITE sip:bob@{proxy} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {client};branch=z9hG4bK-alloc-{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a{i}\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: alloc-{i}-f81d4fae@example.com\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{client}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `batch` (in windows, so no socket buffer overflows) and waits until the backend got
/// them all; the backend answers each with a 180 built in `answer` (its status line, then the
/// forwarded request's header lines and body as they came: Via lines included), which the
/// proxy relays to the client. Allocation-free: every buffer exists before the call.
fn pump(
    client: &UdpSocket,
    backend: &UdpSocket,
    proxy: SocketAddr,
    batch: &[Vec<u8>],
    buf: &mut [u8],
    answer: &mut [u8],
) {
    const STATUS: &[u8] = b"SIP/2.0 180 Ringing\r\n";
    let (mut received, mut relayed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for window in batch.chunks(64) {
        for msg in window {
            client.send_to(msg, proxy).expect("send");
        }
        let want = received + window.len();
        while received < want {
            assert!(
                Instant::now() < deadline,
                "only {received} messages forwarded"
            );
            let Ok((n, from)) = backend.recv_from(buf) else {
                continue;
            };
            received += 1;
            let request = &buf[..n];
            let headers = request
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a request line")
                + 2;
            let len = STATUS.len() + n - headers;
            answer[..STATUS.len()].copy_from_slice(STATUS);
            answer[STATUS.len()..len].copy_from_slice(&request[headers..]);
            backend.send_to(&answer[..len], from).expect("answer");
        }
        while relayed < want {
            assert!(
                Instant::now() < deadline,
                "only {relayed} responses relayed"
            );
            if client.recv(buf).is_ok() {
                assert!(buf.starts_with(STATUS), "a relayed 180");
                relayed += 1;
            }
        }
    }
}

fn check(driver: Driver) {
    let backend = UdpSocket::bind("127.0.0.1:0").expect("backend");
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let backend_addr = backend.local_addr().expect("addr");
    // The backend never answers: INVITE failover tracks every INVITE (its table is part of
    // the measured path), with a timeout beyond the run so that the silent backend is not
    // blacklisted halfway through and the INVITEs keep reaching it.
    let mut config = Config::from_toml(&format!(
        "shards = 2\nkernel_steering = false\nmetrics = \"127.0.0.1:0\"\nbackends = [\"sip:{backend_addr}\"]\n\
         [health]\nprobe_interval_ms = 0\n[log]\nlevel = \"warn\"\n\
         [failover]\ntimeout_ms = 30000\n"
    ))
    .expect("config");
    config.driver = driver;
    config.listen = vec!["udp:127.0.0.1:0".parse::<Listener>().expect("listener")];
    let running = sipedge::runtime::start(config).expect("start sipedge");
    let proxy = running
        .listeners()
        .iter()
        .find(|l| l.transport == ListenTransport::Udp)
        .map(|l| l.addr)
        .expect("UDP listener");
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let client_addr = client.local_addr().expect("addr");
    let warmup: Vec<Vec<u8>> = (0..2_000)
        .map(|i| invite(1_000_000 + i, client_addr, proxy))
        .collect();
    let measured: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| invite(i, client_addr, proxy))
        .collect();
    let mut buf = vec![0u8; 65_536];
    let mut answer = vec![0u8; 65_536];

    // Warm-up: connection of lazily built structures (runtime slabs, timer wheels).
    pump(&client, &backend, proxy, &warmup, &mut buf, &mut answer);
    std::thread::sleep(Duration::from_millis(200));

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    pump(&client, &backend, proxy, &measured, &mut buf, &mut answer);
    let after = ALLOCATIONS.load(Ordering::SeqCst);

    let handoffs: u64 = (0..2)
        .map(|s| {
            let text = running.metrics().encode_prometheus();
            let series = format!("sipedge_shard_handoffs_sent_total{{shard=\"{s}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        handoffs > 1_000,
        "{driver}: too few cross-shard handoffs ({handoffs}) to exercise them"
    );
    assert_eq!(
        after - before,
        0,
        "{driver}: {} allocations for {MESSAGES} forwarded INVITEs and their relayed 180s",
        after - before
    );
}

#[test]
fn e2e_message_path_allocates_nothing() {
    // One test, both drivers in turn: the allocation counter is process-wide.
    check(Driver::IoUring);
    check(Driver::Epoll);
}
