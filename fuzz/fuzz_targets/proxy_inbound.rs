//! The proxy core's entry point, `Core::handle_inbound`. The first byte picks the source (a
//! client or a backend), the transport and the placement; the rest is the message. Properties: no panic; a
//! forwarded request parses, carries one Via more than it came with (ours, with the magic
//! cookie), the same Call-ID and body, and Max-Forwards at most 70; a relayed response parses
//! with one Via fewer; a generated response has a status line; a handoff names another shard.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sipedge::balance::{BackendSpec, Blacklist, FailoverConfig, Pool};
use sipedge::proxy::{Core, FlowId, Inbound, Placement, ProxyConfig, Verdict};
use sipedge::sip::{self, EMPTY_HEADER, Limits, Transport};

fn pool() -> Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let specs: Vec<BackendSpec> = ["sip:192.0.2.70:5070", "sip:192.0.2.71:5070;transport=tcp"]
            .iter()
            .map(|u| BackendSpec::from_uri(u).expect("backend"))
            .collect();
        Arc::new(Pool::new(&specs).expect("pool"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let mut config = ProxyConfig::default();
    // A few slots are enough to exercise the table; the default's 32 MiB would be made
    // resident for every input.
    config.failover = Some(FailoverConfig { capacity: 16, ..FailoverConfig::default() });
    for l in &mut config.listeners {
        l.local = "192.0.2.10:5060".parse().expect("addr");
    }
    let mut core = Core::new(config, 0, 2, pool()).expect("config");
    let blacklist = Blacklist::default();
    let src: SocketAddr = if selector & 1 == 0 { "198.51.100.7:5090" } else { "192.0.2.70:5070" }
        .parse()
        .expect("addr");
    let tcp = selector & 2 != 0;
    let input = Inbound {
        now: Instant::now(),
        src,
        local: "192.0.2.10:5060".parse().expect("addr"),
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        flow: tcp.then_some(FlowId(u64::from(selector))),
        placement: if selector & 4 != 0 {
            Placement::HandedOff
        } else if selector & 16 != 0 {
            Placement::Steered
        } else {
            Placement::Unknown
        },
        compressed: selector & 8 != 0,
        bytes,
    };
    let mut out = vec![0u8; 70_000];
    let verdict = core.handle_inbound(input, &blacklist, &mut out);
    let limits = Limits::default();
    let mut slots = [EMPTY_HEADER; 128];
    let original = if tcp { sip::parse_stream_message(bytes, &mut slots, &limits) } else { sip::parse(bytes, &mut slots, &limits) };
    match verdict {
        Verdict::Forward(t) => {
            let msg = original.expect("only parsed messages are forwarded");
            let mut slots2 = [EMPTY_HEADER; 128];
            let fwd = sip::parse(&out[..t.len], &mut slots2, &limits).expect("forwarded message parses");
            assert_eq!(fwd.call_id(), msg.call_id());
            assert_eq!(fwd.body(), msg.body());
            if msg.is_request() {
                assert_eq!(fwd.vias().count(), msg.vias().count() + 1);
                assert!(fwd.top_via().has_rfc3261_branch());
                assert!(fwd.max_forwards().is_some_and(|m| m.value <= 70));
            } else {
                assert_eq!(fwd.vias().count() + 1, msg.vias().count());
            }
        }
        Verdict::Respond(t) => assert!(out[..t.len].starts_with(b"SIP/2.0 ")),
        Verdict::Handoff(shard) => assert_eq!(shard, 1),
        Verdict::Drop(_) => {}
    }
});
