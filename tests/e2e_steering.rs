//! With 2 shards, the kernel delivers each UDP datagram to the shard that owns its Call-ID
//! (`kernel_steering`, `runtime::steer`), so no request is handed between shards.
//!
//! A sipp UAC sends every call from one socket: without steering the kernel's 4-tuple hash
//! puts all of them on one shard, which hands about half the INVITEs, ACKs and BYEs to the
//! other. With steering both shards carry calls and nothing is handed off. Both runs are
//! made, on io_uring and on epoll, against a real sipp UAS.

mod common;

use std::time::Duration;

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, require, uac};

const CALLS: u32 = 200;

fn per_shard(proxy: &Sipedge, family: &str) -> [f64; 2] {
    [0, 1].map(|s| proxy.metric(&format!("{family}{{shard=\"{s}\"}}")))
}

/// Runs `CALLS` calls through sipedge with `kernel_steering` set as given; returns the
/// handoffs sent and the messages each shard processed.
fn run(driver: &'static str, steering: bool) -> (f64, [f64; 2]) {
    require("sipp", "sip-tester");
    let dir = TempDir::new(&format!("steer-{driver}-{steering}"));
    let uas_port = free_port();
    let mut uas = Sipp::uas_with(&dir, "uas", uas_port, "udp", "uas", &["-aa"]);
    let config = dir.path("sipedge.toml");
    std::fs::write(&config, format!("kernel_steering = {steering}\n")).expect("write config");
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{uas_port}")],
            transports: vec!["udp"],
            driver,
            extra: vec!["--config".into(), config.display().to_string()],
            ..SipedgeOptions::default()
        },
    );
    assert_eq!(
        proxy.metric("sipedge_udp_kernel_steering"),
        f64::from(u8::from(steering)),
        "{driver}: steering gauge\n{}",
        proxy.log_text()
    );
    let mut caller = uac(
        &dir,
        "uac",
        proxy.sip_addr(),
        "udp",
        &["-m", &CALLS.to_string(), "-r", "100", "-nr"],
    );
    let code = caller.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "{driver}: sipp UAC failed calls\n{}\n{}",
        caller.output_text(),
        proxy.log_text()
    );
    assert_eq!(caller.stat("SuccessfulCall(C)"), Some(u64::from(CALLS)));
    let sent = per_shard(&proxy, "sipedge_shard_handoffs_sent_total");
    let messages = per_shard(&proxy, "sipedge_shard_messages_total");
    uas.stop();
    (sent[0] + sent[1], messages)
}

fn steering_keeps_calls_on_their_shard(driver: &'static str) {
    let (handoffs, messages) = run(driver, true);
    println!("{driver} with steering: {handoffs} handoffs, messages per shard {messages:?}");
    assert_eq!(
        handoffs, 0.0,
        "{driver}: requests handed between shards despite steering"
    );
    // 6 messages a call through the proxy; each shard owns about half the calls.
    let total = messages[0] + messages[1];
    assert!(
        total >= f64::from(CALLS * 6),
        "{driver}: only {total} messages counted"
    );
    assert!(
        messages.iter().all(|&m| m > total * 0.3),
        "{driver}: calls not spread over both shards: {messages:?}"
    );

    let (handoffs, messages) = run(driver, false);
    println!("{driver} without steering: {handoffs} handoffs, messages per shard {messages:?}");
    // Without steering one shard receives every request of the single UAC socket and hands
    // those of the other shard's calls over: INVITE, ACK and BYE of about half the calls.
    assert!(
        handoffs > f64::from(CALLS),
        "{driver}: only {handoffs} handoffs without steering; the comparison shows nothing"
    );
}

#[test]
fn steering_keeps_calls_on_their_shard_io_uring() {
    steering_keeps_calls_on_their_shard("io_uring");
}

#[test]
fn steering_keeps_calls_on_their_shard_epoll() {
    steering_keeps_calls_on_their_shard("epoll");
}
