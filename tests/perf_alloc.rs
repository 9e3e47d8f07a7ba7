//! Zero allocations per message: a counting global allocator watches 10,000 messages cross
//! the real runtime (UDP in, proxy, UDP out) with 2 shards, so that about half of the calls
//! arrive on the shard that does not own them and take the cross-shard handoff.
//!
//! The runtime runs in this process (`sipedge::runtime::run` on its own threads); the UAC and
//! the two UAS are plain blocking sockets in this test, allocation-free during the measured
//! window (messages are built beforehand, replies are written by the crate's stateless
//! response writer into fixed buffers). The allocator counts per OS thread and per size, so a
//! failure names the thread that allocated and shows backtraces of the first allocations.
//!
//! What it asserts: no allocation on the message path other than the boxes monoio 0.2.4's
//! `UdpSocket::send_to`/`recv_from` make per operation (measured by this test on a bare monoio
//! runtime, not assumed), and no more of those than one per socket operation. The day the
//! runtime stops using those calls, or monoio stops boxing, the calibration finds no sizes and
//! the assertion becomes "zero allocations". Covered: UDP receive, proxy core, cross-shard
//! handoff (parcels and queues), UDP send, on the io_uring driver with 2 shards, and the
//! OPTIONS health probes shard 0 sends all the while (every 20 ms per backend here; the UAS
//! answer them): probing lasts as long as the process, so it must not allocate either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sipedge::sip;

/// Counts allocations per thread while [`COUNTING`] is set.
struct Counting;

const THREAD_SLOTS: usize = 256;
static COUNTING: AtomicBool = AtomicBool::new(false);
static TIDS: [AtomicI32; THREAD_SLOTS] = [const { AtomicI32::new(0) }; THREAD_SLOTS];
static COUNTS: [AtomicU64; THREAD_SLOTS] = [const { AtomicU64::new(0) }; THREAD_SLOTS];
static UNTRACKED: AtomicU64 = AtomicU64::new(0);
/// Backtraces of the first few counted allocations, to name the code in a failure message.
static TRACES_LEFT: AtomicU64 = AtomicU64::new(6);
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread captures a backtrace, whose own allocations are not counted.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// Allocation sizes seen while counting, over all threads: (size, count).
static SIZES: [(AtomicUsize, AtomicU64); THREAD_SLOTS] =
    [const { (AtomicUsize::new(0), AtomicU64::new(0)) }; THREAD_SLOTS];

fn record(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) || TRACING.with(Cell::get) {
        return;
    }
    for (slot, count) in &SIZES {
        let seen = slot.load(Ordering::Relaxed);
        if seen == size
            || (seen == 0
                && slot
                    .compare_exchange(0, size, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            count.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    if TRACES_LEFT.load(Ordering::Relaxed) > 0 && TRACES_LEFT.fetch_sub(1, Ordering::Relaxed) > 0 {
        TRACING.with(|t| t.set(true));
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        if let Ok(mut traces) = TRACES.lock() {
            traces.push(trace);
        }
        TRACING.with(|t| t.set(false));
    }
    // SAFETY: gettid has no preconditions and does not allocate.
    let tid = unsafe { libc::gettid() };
    for (slot, count) in TIDS.iter().zip(&COUNTS) {
        let owner = slot.load(Ordering::Relaxed);
        if owner == tid
            || (owner == 0
                && slot
                    .compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    UNTRACKED.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Ports 42060..42099: proxy, backends +10/+11, metrics +20; no other test uses them.
const PROXY_PORT: u16 = 42060;
const WARM_UP_CALLS: usize = 300;
/// 6 messages cross the proxy per call: 1,667 calls are 10,002 messages.
const MEASURED_CALLS: usize = 1_667;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A stateless UAS on `socket` until `stop`: INVITE → 180 + 200, ACK → nothing, else 200.
fn serve(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_535];
    let mut out = vec![0u8; 65_535];
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, src)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let mut slots = [sip::EMPTY_HEADER; 64];
        let Ok(msg) = sip::parse(&buf[..len], &mut slots, &sip::Limits::default()) else {
            continue;
        };
        if !msg.is_request() {
            continue;
        }
        let replies: &[(u16, &[u8])] = match msg.method().as_bytes() {
            b"ACK" => &[],
            b"INVITE" => &[(180, b"Ringing"), (200, b"OK")],
            _ => &[(200, b"OK")],
        };
        let req = sip::Salvage::from_message(&msg);
        for &(code, reason) in replies {
            if let Ok(n) = sip::write_response(
                &req,
                code,
                reason,
                &sip::ResponseOptions::default(),
                &mut out,
            ) {
                let _ = socket.send_to(&out[..n], src);
            }
        }
    }
}

/// INVITE, ACK and BYE of call `i`, built before the measured window.
fn call(i: usize, client: SocketAddr) -> [Vec<u8>; 3] {
    let proxy = addr(PROXY_PORT);
    let request = |method: &str, cseq: u32, to_tag: &str| {
        format!(
            "{method} sip:service@{proxy} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {client};branch=z9hG4bK-alloc-{i}-{cseq}{method}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:uac@{client}>;tag={i}\r\n\
             To: <sip:service@{proxy}>{to_tag}\r\n\
             Call-ID: alloc-{i}@perf.invalid\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:uac@{client}>\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    [
        request("INVITE", 1, ""),
        request("ACK", 1, ";tag=uas"),
        request("BYE", 2, ";tag=uas"),
    ]
}

/// Runs one call; returns false if a reply did not come within the socket's timeout.
fn run_call(client: &UdpSocket, msgs: &[Vec<u8>; 3], buf: &mut [u8]) -> bool {
    let proxy = addr(PROXY_PORT);
    let [invite, ack, bye] = msgs;
    if client.send_to(invite, proxy).is_err() {
        return false;
    }
    for _ in 0..2 {
        if client.recv_from(buf).is_err() {
            return false;
        }
    }
    client.send_to(ack, proxy).is_ok()
        && client.send_to(bye, proxy).is_ok()
        && client.recv_from(buf).is_ok()
}

/// A counter summed over shards from the Prometheus endpoint.
fn metric_sum(metrics: SocketAddr, name: &str) -> u64 {
    let Ok(mut stream) = TcpStream::connect(metrics) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Allocations counted per thread id and per size.
type Counts = (Vec<(i32, u64)>, Vec<(usize, u64)>);

/// Reads and clears the counters.
fn take_counts() -> Counts {
    let per_thread = TIDS
        .iter()
        .zip(&COUNTS)
        .map(|(t, c)| (t.swap(0, Ordering::Relaxed), c.swap(0, Ordering::Relaxed)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let per_size = SIZES
        .iter()
        .map(|(s, c)| (s.swap(0, Ordering::Relaxed), c.swap(0, Ordering::Relaxed)))
        .filter(|&(_, n)| n > 0)
        .collect();
    (per_thread, per_size)
}

/// What monoio 0.2.4's own UDP operations allocate, measured here rather than assumed: one
/// io_uring runtime on this thread, 200 `send_to` + `recv_from` pairs after a warm-up. Its
/// `SendMsg`/`RecvMsg` ops box their `msghdr` and address per call (`driver/op/send.rs`,
/// `recv.rs`), which no caller can avoid while using `UdpSocket::send_to`/`recv_from`.
fn monoio_udp_allocation_sizes() -> (Vec<usize>, f64) {
    const PAIRS: u64 = 200;
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()
        .expect("io_uring runtime (the platform supports it)");
    rt.block_on(async {
        let a = monoio::net::udp::UdpSocket::bind(addr(0)).expect("bind");
        let b = monoio::net::udp::UdpSocket::bind(addr(0)).expect("bind");
        let to = b.local_addr().expect("local address");
        let (mut out, mut inb) = (vec![7u8; 600], Vec::with_capacity(2048));
        for round in 0..2 {
            if round == 1 {
                let _ = take_counts();
                COUNTING.store(true, Ordering::SeqCst);
            }
            for _ in 0..PAIRS {
                let (sent, o) = a.send_to(out, to).await;
                out = o;
                let (received, i) = b.recv_from(inb).await;
                inb = i;
                assert!(sent.is_ok() && received.is_ok(), "loopback UDP works");
            }
        }
        COUNTING.store(false, Ordering::SeqCst);
    });
    let (_, sizes) = take_counts();
    let total: u64 = sizes.iter().map(|&(_, n)| n).sum();
    (
        sizes.into_iter().map(|(s, _)| s).collect(),
        total as f64 / (2 * PAIRS) as f64,
    )
}

fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).map_or_else(
        |_| format!("thread {tid} (gone)"),
        |n| format!("{} (tid {tid})", n.trim()),
    )
}

#[test]
fn ten_thousand_messages_through_two_shards_allocate_nothing() {
    let backends: Vec<UdpSocket> = [PROXY_PORT + 10, PROXY_PORT + 11]
        .iter()
        .map(|&p| UdpSocket::bind(addr(p)).expect("backend port free"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = backends
        .into_iter()
        .map(|socket| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(&socket, &stop))
        })
        .collect();

    let metrics = addr(PROXY_PORT + 20);
    let config = sipedge::config::Config::from_toml(&format!(
        "shards = 2\nkernel_steering = false\ndriver = \"io_uring\"\nlisten = [\"udp:127.0.0.1:{PROXY_PORT}\"]\nmetrics = \"{metrics}\"\n\
         backends = [\"sip:127.0.0.1:{}\", \"sip:127.0.0.1:{}\"]\n\
         [log]\nlevel = \"error\"\n[health]\nprobe_interval_ms = 20\n",
        PROXY_PORT + 10,
        PROXY_PORT + 11
    ))
    .expect("valid test configuration");
    // The runtime serves until the test process exits.
    std::thread::spawn(move || {
        sipedge::runtime::run(config, Box::new(|| Err("no reload in this test".into())))
    });

    let client = UdpSocket::bind(addr(0)).expect("client socket");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let local = client.local_addr().expect("local address");
    let calls: Vec<[Vec<u8>; 3]> = (0..WARM_UP_CALLS + MEASURED_CALLS)
        .map(|i| call(i, local))
        .collect();
    let mut buf = vec![0u8; 65_535];

    // Warm-up: the runtime comes up, every buffer pool and queue reaches its working size.
    let mut up = false;
    for _ in 0..50 {
        if run_call(&client, &calls[0], &mut buf) {
            up = true;
            break;
        }
    }
    assert!(
        up,
        "the proxy on 127.0.0.1:{PROXY_PORT} never completed a call"
    );
    for msgs in &calls[1..WARM_UP_CALLS] {
        assert!(run_call(&client, msgs, &mut buf), "warm-up call lost");
    }

    let handoffs_before = metric_sum(metrics, "sipedge_shard_handoffs_sent_total");
    let probes_before = metric_sum(metrics, "sipedge_backend_probes_total");
    let _ = take_counts();
    COUNTING.store(true, Ordering::SeqCst);
    let mut completed = 0usize;
    for msgs in &calls[WARM_UP_CALLS..] {
        completed += usize::from(run_call(&client, msgs, &mut buf));
    }
    COUNTING.store(false, Ordering::SeqCst);
    let (per_thread, per_size) = take_counts();
    let handoffs = metric_sum(metrics, "sipedge_shard_handoffs_sent_total") - handoffs_before;
    let probes = metric_sum(metrics, "sipedge_backend_probes_total") - probes_before;
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }

    let (monoio_sizes, monoio_per_op) = monoio_udp_allocation_sizes();
    let messages = completed * 6;
    let threads: Vec<String> = per_thread
        .iter()
        .map(|&(t, n)| format!("{}: {n}", thread_name(t)))
        .collect();
    let total: u64 = per_thread.iter().map(|&(_, n)| n).sum();
    let foreign: Vec<(usize, u64)> = per_size
        .iter()
        .copied()
        .filter(|(s, _)| !monoio_sizes.contains(s))
        .collect();
    let untracked = UNTRACKED.load(Ordering::Relaxed);
    let traces = TRACES
        .lock()
        .map(|t| t.join("\n----\n"))
        .unwrap_or_default();
    println!(
        "{messages} messages in {completed} calls, {handoffs} cross-shard handoffs, {probes} probes \
         answered or timed out; allocations {total} \
         ({:.2} per message) by thread {threads:?}, by size {per_size:?}; monoio's UDP ops allocate \
         sizes {monoio_sizes:?}, {monoio_per_op:.2} per operation",
        total as f64 / messages.max(1) as f64
    );
    assert!(
        completed >= MEASURED_CALLS * 99 / 100,
        "only {completed} of {MEASURED_CALLS} calls completed"
    );
    assert!(
        handoffs > 0,
        "no message took the cross-shard handoff; the test would not cover it"
    );
    assert!(
        probes > 0,
        "no health probe completed while counting; the test would not cover probing"
    );
    assert!(
        untracked == 0,
        "{untracked} allocations on untracked threads"
    );
    // Only the shards' own threads may allocate: the test's UAC and UAS threads must not, or
    // the count would not be the proxy's.
    assert!(
        per_thread
            .iter()
            .all(|&(t, _)| thread_name(t).starts_with("sipedge-shard")),
        "a thread other than a shard allocated: {threads:?}\n{traces}"
    );
    // Every allocation on the message path is one of monoio's per-operation boxes: sipedge's
    // own code (proxy core, handoff, buffers) allocates nothing per message.
    assert!(
        foreign.is_empty(),
        "allocations of sizes monoio's UDP operations do not make: {foreign:?} during {messages} messages; \
         first ones:\n{traces}"
    );
    // And there are no more of them than one per socket operation: a message is received once
    // and sent once (plus at most a doorbell send and receive per handoff).
    let ops = (2 * messages) as f64 + 2.0 * handoffs as f64;
    assert!(
        total as f64 <= ops * monoio_per_op.max(0.0) + 0.5,
        "{total} allocations for {messages} messages and {handoffs} handoffs: more than monoio's \
         {monoio_per_op:.2} per socket operation"
    );
}
