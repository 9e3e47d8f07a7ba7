//! Failover with real peers: sipp UAC → sipedge → three sipp UAS (Debian `sip-tester`).
//!
//! One UAS is killed by PID during a bounded load run: once the detection window has passed no
//! call fails and the dead one gets nothing; restarted, it is re-admitted by probing and gets
//! calls again. Run over UDP and over TCP.
//!
//! One UAS stays up (it answers the OPTIONS probes) but refuses every INVITE with 503 and
//! Retry-After (`tests/scenarios/uas_503.xml`): sipedge's INVITE failover ACKs each refusal and
//! retries the call on the next backend, so the caller sees no failure; the refusal, seen on
//! one shard, blocks that backend for the other shard too (shared blacklist). Over UDP and TCP.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, scenario, transport_flag};

/// Probing fast enough for a short test: a dead backend is down after two missed probes.
const HEALTH: &str = "[health]\nprobe_interval_ms = 200\nprobe_timeout_ms = 300\n\
                      failures_before_down = 2\nsuccesses_before_up = 2\n";

/// sipp's built-in UAS, answering sipedge's OPTIONS probes (`-aa`).
fn uas(dir: &TempDir, name: &str, port: u16, transport: &str) -> Sipp {
    Sipp::uas_with(dir, name, port, transport, "uas", &["-aa"])
}

/// sipedge in front of backends on 127.0.0.1:`ports` over `transport` with configuration
/// `toml`; returns the backend URIs and the proxy.
fn start_proxy(
    dir: &TempDir,
    ports: &[u16],
    transport: &str,
    toml: &str,
) -> (Vec<String>, Sipedge) {
    let suffix = if transport == "tcp" {
        ";transport=tcp"
    } else {
        ""
    };
    let config = dir.path("sipedge.toml");
    std::fs::write(&config, toml).expect("write config");
    let uris: Vec<String> = ports
        .iter()
        .map(|p| format!("sip:127.0.0.1:{p}{suffix}"))
        .collect();
    let proxy = Sipedge::start(
        dir,
        &SipedgeOptions {
            backends: uris.clone(),
            extra: vec!["--config".into(), config.display().to_string()],
            ..SipedgeOptions::default()
        },
    );
    (uris, proxy)
}

/// Runs `calls` calls at `rate` per second through `proxy`; returns the UAC when it is done.
fn load(
    dir: &TempDir,
    name: &str,
    proxy: &Sipedge,
    transport: &str,
    calls: u32,
    rate: u32,
) -> Sipp {
    let args: Vec<String> = [
        "-sn",
        "uac",
        &proxy.sip_addr().to_string(),
        "-i",
        "127.0.0.1",
        "-p",
        &free_port().to_string(),
        "-t",
        transport_flag(transport),
        "-m",
        &calls.to_string(),
        "-r",
        &rate.to_string(),
        // A call that gets no answer fails after 8 s instead of hanging the run.
        "-recv_timeout",
        "8000",
        "-timeout",
        "60",
        "-timeout_error",
    ]
    .map(String::from)
    .to_vec();
    Sipp::spawn(dir, name, &args)
}

fn finish(uac: &mut Sipp) -> (u64, u64) {
    let code = uac.wait(Duration::from_secs(60));
    assert!(
        code.is_some(),
        "sipp UAC did not finish:\n{}",
        uac.output_text()
    );
    (
        uac.stat("SuccessfulCall(C)").unwrap_or(0),
        uac.stat("FailedCall(C)").unwrap_or(0),
    )
}

fn wait_metric(proxy: &Sipedge, series: &str, value: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while proxy.metric(series) != value {
        assert!(
            Instant::now() < deadline,
            "{series} did not become {value} within {limit:?}:\n{}",
            proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_one_backend(transport: &str) {
    let dir = TempDir::new(&format!("balance-failover-{transport}"));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Option<Sipp>> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| Some(uas(&dir, &format!("uas{i}"), p, transport)))
        .collect();
    // A killed UDP backend is detected by ICMP and a killed TCP one by the refused connect,
    // not by silence: a long INVITE timeout keeps a slow machine's late answers from counting
    // as failovers while every backend is healthy.
    let (uris, proxy) = start_proxy(
        &dir,
        &ports,
        transport,
        &format!("{HEALTH}[failover]\ntimeout_ms = 8000\n"),
    );
    let up = |i: usize| format!("sipedge_backend_up{{backend=\"{}\"}}", uris[i]);
    let failovers = format!("sipedge_backend_failovers_total{{backend=\"{}\"}}", uris[0]);

    // Baseline: every backend takes calls.
    let mut warm = load(&dir, "uac-warm", &proxy, transport, 90, 60);
    let (ok, failed) = finish(&mut warm);
    assert_eq!((ok, failed), (90, 0), "baseline:\n{}", warm.output_text());

    // Kill backend 0 by PID in the middle of a bounded run.
    let mut during = load(&dir, "uac-during", &proxy, transport, 200, 50);
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    drop(servers[0].take());
    wait_metric(&proxy, &up(0), 0.0, Duration::from_secs(5));
    let detection = killed_at.elapsed();
    let (ok_during, failed_during) = finish(&mut during);
    // Only calls caught on the dead backend inside the detection window may fail.
    assert_eq!(ok_during + failed_during, 200);
    assert!(
        failed_during <= 40,
        "{failed_during} calls failed around the kill (detection took {detection:?})"
    );

    // After the detection window: no call fails, all of them on the two survivors.
    let mut after = load(&dir, "uac-after", &proxy, transport, 150, 60);
    let (ok, failed) = finish(&mut after);
    assert_eq!(
        (ok, failed),
        (150, 0),
        "after detection:\n{}",
        after.output_text()
    );
    let calls = after.call_ids();
    let survivors: BTreeSet<String> = servers.iter().flatten().flat_map(Sipp::call_ids).collect();
    assert!(
        calls.is_subset(&survivors),
        "a call of the last run reached no live backend"
    );
    // The dead backend's share of new calls (about a third) is counted as its failovers.
    let failed_over = proxy.metric(&failovers);
    assert!(
        failed_over >= 20.0,
        "only {failed_over} failovers counted for the dead backend"
    );

    // Restart it on the same port: probing re-admits it and it gets calls again.
    servers[0] = Some(uas(&dir, "uas0-restarted", ports[0], transport));
    wait_metric(&proxy, &up(0), 1.0, Duration::from_secs(10));
    let mut back = load(&dir, "uac-back", &proxy, transport, 150, 60);
    let (ok, failed) = finish(&mut back);
    assert_eq!(
        (ok, failed),
        (150, 0),
        "after re-admission:\n{}",
        back.output_text()
    );
    assert_eq!(
        proxy.metric(&failovers),
        failed_over,
        "failovers counted while every backend was healthy"
    );
    let restarted = servers[0].as_ref().map(Sipp::call_ids).unwrap_or_default();
    let back_calls = back.call_ids();
    let share = back_calls.intersection(&restarted).count();
    assert!(
        share >= 20,
        "the re-admitted backend got only {share} of 150 calls"
    );
    eprintln!(
        "{transport}: detection {detection:?}, {failed_during} of 200 calls failed around the kill, \
         {failed_over} failovers counted, re-admitted backend took {share} of 150"
    );
}

#[test]
fn killed_backend_is_avoided_and_readmitted_udp() {
    kill_one_backend("udp");
}

#[test]
fn killed_backend_is_avoided_and_readmitted_tcp() {
    kill_one_backend("tcp");
}

/// A sipp UAS running `tests/scenarios/uas_503.xml` (503 to every INVITE, 200 to OPTIONS).
fn refusing_uas(dir: &TempDir, name: &str, port: u16, transport: &str) -> Sipp {
    Sipp::uas_with(
        dir,
        name,
        port,
        transport,
        &scenario("uas_503.xml"),
        &["-aa"],
    )
}

fn refusing_backend(transport: &str) {
    let dir = TempDir::new(&format!("balance-failover-503-{transport}"));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut refusing = refusing_uas(&dir, "uas503", ports[0], transport);
    let mut servers: Vec<Sipp> = (1..3)
        .map(|i| uas(&dir, &format!("uas{i}"), ports[i], transport))
        .collect();
    let (uris, proxy) = start_proxy(
        &dir,
        &ports,
        transport,
        &format!("{HEALTH}[failover]\ntimeout_ms = 2000\nretry_codes = [503]\n"),
    );
    let calls = 150;
    let mut uac = load(&dir, "uac", &proxy, transport, calls, 50);
    let (ok, failed) = finish(&mut uac);
    // The scrape shows why the refusing backend is out (Retry-After: 30 outlasts the
    // test), and that the answering ones are not: scraped while every UAS still runs.
    let blacklisted = |backend: &str, reason: &str| {
        proxy.metric(&format!(
            "sipedge_backend_blacklisted{{backend=\"{backend}\",reason=\"{reason}\"}}"
        ))
    };
    let blocked: Vec<f64> = uris.iter().map(|u| blacklisted(u, "status_503")).collect();
    refusing.stop();
    for s in &mut servers {
        s.stop();
    }
    assert_eq!(
        (ok, failed),
        (u64::from(calls), 0),
        "calls failed although two backends answer:\n{}\n{}",
        uac.output_text(),
        proxy.log_text()
    );
    // The refusing backend got INVITEs and refused them; the caller never saw a 503.
    let invites = refusing.count_messages("INVITE ");
    let refusals = refusing.count_messages("SIP/2.0 503");
    assert!(
        invites >= 1 && refusals >= 1,
        "{invites} INVITEs, {refusals} 503s"
    );
    assert_eq!(
        uac.count_messages("SIP/2.0 503"),
        0,
        "a 503 reached the caller"
    );
    // Every call was answered by one of the two others.
    let answered: BTreeSet<String> = servers.iter().flat_map(Sipp::call_ids).collect();
    let missing = uac.call_ids().difference(&answered).count();
    assert_eq!(missing, 0, "{missing} calls reached no answering backend");
    // About a third of the calls hash to the refusing backend. Its 503 (Retry-After: 30),
    // seen on whichever shard owns that call, blocks it on both shards: it is offered only
    // the few calls in flight before the first refusal, not a third of each shard's share.
    assert!(
        invites <= 10,
        "the refusing backend got {invites} INVITEs: its Retry-After was not honoured by every shard"
    );
    assert_eq!(
        blocked,
        [1.0, 0.0, 0.0],
        "sipedge_backend_blacklisted{{reason=\"status_503\"}} of the refusing and the answering backends"
    );
    let per_shard: Vec<f64> = (0..2)
        .map(|s| proxy.metric(&format!("sipedge_shard_messages_total{{shard=\"{s}\"}}")))
        .collect();
    assert!(
        per_shard.iter().all(|&m| m >= 100.0),
        "both shards must carry calls for this to test anything: {per_shard:?}"
    );
    let failovers = proxy.metric(&format!(
        "sipedge_backend_failovers_total{{backend=\"{}\"}}",
        uris[0]
    ));
    assert!(
        failovers >= 20.0,
        "only {failovers} failovers counted for the refusing backend"
    );
    eprintln!(
        "{transport}: {ok} of {calls} calls answered, refusing backend got {invites} INVITEs \
         ({refusals} 503s), {failovers} failovers counted, shard messages {per_shard:?}"
    );
}

#[test]
fn refusing_backend_is_failed_over_on_503_udp() {
    refusing_backend("udp");
}

#[test]
fn refusing_backend_is_failed_over_on_503_tcp() {
    refusing_backend("tcp");
}
