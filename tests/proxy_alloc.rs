//! The proxy core allocates nothing per message: a counting global allocator watches
//! `Core::handle_inbound` over forwarded requests, relayed responses, generated answers and
//! drops.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sipedge::balance::{BackendSpec, Blacklist, Pool};
use sipedge::proxy::{Core, Dest, FlowId, Inbound, Placement, ProxyConfig, Verdict};
use sipedge::sip::Transport;

struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    if WATCHING.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// How a message arrives: over TCP or UDP, and placed as the runtime would place it.
#[derive(Clone, Copy)]
struct Arrival {
    tcp: bool,
    placement: Placement,
}

const UDP: Arrival = Arrival {
    tcp: false,
    placement: Placement::Unknown,
};

/// The core under test, the blacklist it reads and its output buffer.
struct Rig {
    core: Core,
    bl: Blacklist,
    out: Vec<u8>,
}

impl Rig {
    /// Runs one message through the core; returns the verdict and how many allocations it made.
    fn run(&mut self, src: &str, arrival: Arrival, bytes: &[u8]) -> (Verdict, usize) {
        let input = Inbound {
            now: Instant::now(),
            src: addr(src),
            local: addr("192.0.2.10:5060"),
            transport: if arrival.tcp {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            flow: arrival.tcp.then_some(FlowId(9)),
            placement: arrival.placement,
            compressed: false,
            bytes,
        };
        COUNT.with(|c| c.set(0));
        WATCHING.with(|w| w.set(true));
        let v = self.core.handle_inbound(input, &self.bl, &mut self.out);
        WATCHING.with(|w| w.set(false));
        (v, COUNT.with(Cell::get))
    }
}

#[test]
fn handle_inbound_does_not_allocate() {
    let specs: Vec<BackendSpec> = ["sip:192.0.2.70:5070", "sip:192.0.2.71:5070"]
        .iter()
        .map(|u| BackendSpec::from_uri(u).unwrap())
        .collect();
    let pool = Arc::new(Pool::new(&specs).unwrap());
    let mut config = ProxyConfig::default();
    for l in &mut config.listeners {
        l.local = addr("192.0.2.10:5060");
    }
    let mut rig = Rig {
        core: Core::new(config, 0, 2, pool).unwrap(),
        bl: Blacklist::default(),
        out: vec![0u8; 65_536],
    };
    let client = "198.51.100.7:5090";
    // Warm-up: the first lock-free blacklist read on a thread registers that thread with
    // arc-swap (one allocation per thread for its lifetime, not per message).
    for i in 0..16 {
        let warm = format!(
            "OPTIONS sip:b@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKw\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: warm{i}\r\nCSeq: 1 OPTIONS\r\n\r\n"
        );
        if matches!(rig.run(client, UDP, warm.as_bytes()).0, Verdict::Forward(_)) {
            break;
        }
    }
    let mut kinds = Vec::new();
    for (i, extra) in [
        "",
        "Route: <sip:192.0.2.10;lr>\r\n",
        "Max-Forwards: 0\r\n",
        "Proxy-Require: x\r\n",
        "CSeq: bad\r\n",
    ]
    .iter()
    .enumerate()
    {
        for n in 0..8 {
            let msg = format!(
                "INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bK{i}x{n};rport\r\n\
                 {extra}From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: alloc{i}-{n}\r\n\
                 CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            );
            // UDP checks the owner before the parse, or after it when the kernel steers.
            let steered = Arrival {
                placement: Placement::Steered,
                ..UDP
            };
            let tcp = Arrival { tcp: true, ..UDP };
            for arrival in [UDP, steered, tcp] {
                let (v, allocs) = rig.run(client, arrival, msg.as_bytes());
                assert_eq!(allocs, 0, "{v:?} allocated for\n{msg}");
                kinds.push(std::mem::discriminant(&v));
                // Relay the backend's answer to a forwarded request too.
                if let Verdict::Forward(t) = v
                    && let Dest::Addr(_, backend) = t.dest
                {
                    let fwd = String::from_utf8_lossy(&rig.out[..t.len]).into_owned();
                    let vias: String = fwd
                        .lines()
                        .filter(|l| l.starts_with("Via:"))
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    let response = format!(
                        "SIP/2.0 180 Ringing\r\n{vias}From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>;tag=2\r\n\
                         Call-ID: alloc{i}-{n}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
                    );
                    let over_udp = Arrival {
                        tcp: false,
                        ..arrival
                    };
                    let (v, allocs) = rig.run(&backend.to_string(), over_udp, response.as_bytes());
                    assert_eq!(allocs, 0, "{v:?} allocated relaying\n{response}");
                    kinds.push(std::mem::discriminant(&v));
                }
            }
        }
    }
    let (v, allocs) = rig.run(client, UDP, b"\x16\x03\x01 not sip at all");
    assert_eq!(allocs, 0, "{v:?}");
    // Forward, Respond, Handoff and Drop all happened.
    kinds.sort_by_key(|d| format!("{d:?}"));
    kinds.dedup();
    assert!(kinds.len() >= 3, "{kinds:?}");
}
