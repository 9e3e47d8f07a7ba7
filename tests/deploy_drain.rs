//! Draining under load, as Kubernetes' preStop hook and systemd's stop do it: sipp UAC →
//! sipedge → sipp UAS with 20 calls in progress, then `POST /drain` (or SIGTERM). Every call
//! in progress completes (its ACK and BYE still cross the node), `/ready` turns 503, a new
//! call is refused with 503, and after SIGTERM the process exits 0 within its grace period.

mod deploy_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use deploy_support::{
    Sipedge, Sipp, TempDir, free_ports, http, http_status, metric_sum, wait_until,
};

/// Calls in progress when the drain starts.
const CALLS: u32 = 20;
/// How long each call lasts after its ACK (sipp -d), so that the drain lands mid-call.
const CALL_MS: u32 = 5000;

/// The SIP transport of a run: sipp's `-t` mode and the listener / backend URI forms.
#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp_mode(self) -> &'static str {
        match self {
            Self::Udp => "u1",
            Self::Tcp => "t1",
        }
    }
    fn listen(self, port: u16) -> String {
        match self {
            Self::Udp => format!("udp:127.0.0.1:{port}"),
            Self::Tcp => format!("tcp:127.0.0.1:{port}"),
        }
    }
    fn backend(self, port: u16) -> String {
        match self {
            Self::Udp => format!("sip:127.0.0.1:{port}"),
            Self::Tcp => format!("sip:127.0.0.1:{port};transport=tcp"),
        }
    }
}

struct Setup {
    transport: Transport,
    tmp: TempDir,
    sip: u16,
    node: Sipedge,
    _uas: Sipp,
    drain_grace: Duration,
}

fn start(name: &str, transport: Transport, drain_grace_secs: u64) -> Setup {
    let tmp = TempDir::new(name);
    let [sip, admin, backend] = free_ports(3)[..] else {
        unreachable!()
    };
    // Probing off: the sipp UAS scenario answers calls only; the backend counts as up.
    let config = tmp.write(
        "sipedge.toml",
        &format!(
            "shards = 2\nlisten = [\"{}\"]\nmetrics = \"127.0.0.1:{admin}\"\n\
             drain_grace_secs = {drain_grace_secs}\nbackends = [\"{}\"]\n\n\
             [health]\nprobe_interval_ms = 0\n",
            transport.listen(sip),
            transport.backend(backend),
        ),
    );
    let uas = Sipp::start(
        "uas",
        tmp.path(),
        &[
            "-sn".into(),
            "uas".into(),
            "-t".into(),
            transport.sipp_mode().into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            backend.to_string(),
        ],
    );
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));
    let mut node = Sipedge::start(&config, admin_addr, &[], tmp.path().join("sipedge.log"));
    node.wait_ready(Duration::from_secs(20));
    Setup {
        transport,
        tmp,
        sip,
        node,
        _uas: uas,
        drain_grace: Duration::from_secs(drain_grace_secs),
    }
}

/// Starts `CALLS` calls of `CALL_MS` each and waits until every one is established (its ACK
/// went through the node).
fn calls_in_progress(s: &Setup) -> Sipp {
    let [port] = free_ports(1)[..] else {
        unreachable!()
    };
    let uac = Sipp::start(
        "uac-calls",
        s.tmp.path(),
        &[
            "-sn".into(),
            "uac".into(),
            "-t".into(),
            s.transport.sipp_mode().into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            CALLS.to_string(),
            "-r".into(),
            CALLS.to_string(),
            "-d".into(),
            CALL_MS.to_string(),
            "-timeout".into(),
            "30s".into(),
            "-timeout_error".into(),
            format!("127.0.0.1:{}", s.sip),
        ],
    );
    let established = wait_until(Duration::from_secs(15), || {
        metric_sum(
            &s.node.scrape(),
            "sipedge_requests_received_total",
            &[("method", "ACK")],
        ) >= f64::from(CALLS)
    });
    assert!(
        established,
        "the {CALLS} calls were not established:\n{}\nsipedge:\n{}",
        uac.log(),
        s.node.log()
    );
    // Nothing has hung up yet: the drain below lands in the middle of every call.
    let byes = metric_sum(
        &s.node.scrape(),
        "sipedge_requests_received_total",
        &[("method", "BYE")],
    );
    assert_eq!(byes, 0.0, "calls ended before the drain; raise CALL_MS");
    uac
}

/// One new call, which must be answered 503 by the draining node.
fn new_call_is_refused(s: &Setup) {
    let [port] = free_ports(1)[..] else {
        unreachable!()
    };
    let scenario = s
        .tmp
        .write("refused.xml", deploy_support::invite_refused_scenario());
    let mut uac = Sipp::start(
        "uac-refused",
        s.tmp.path(),
        &[
            "-sf".into(),
            scenario.display().to_string(),
            "-t".into(),
            s.transport.sipp_mode().into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            "1".into(),
            "-timeout".into(),
            "10s".into(),
            "-timeout_error".into(),
            format!("127.0.0.1:{}", s.sip),
        ],
    );
    let code = uac.finish(Duration::from_secs(20));
    assert_eq!(
        code,
        0,
        "a new call during the drain was not refused with 503:\n{}",
        uac.log()
    );
    let refused = metric_sum(
        &s.node.scrape(),
        "sipedge_local_responses_total",
        &[("status", "503")],
    );
    assert!(
        refused >= 1.0,
        "no 503 counted by sipedge_local_responses_total"
    );
}

fn calls_all_completed(s: &Setup, uac: &mut Sipp) {
    let code = uac.finish(Duration::from_secs(30));
    assert_eq!(
        code,
        0,
        "a call in progress failed during the drain:\n{}\nsipedge:\n{}",
        uac.log(),
        s.node.log()
    );
    let byes = metric_sum(
        &s.node.scrape_or_empty(),
        "sipedge_requests_received_total",
        &[("method", "BYE")],
    );
    assert!(
        byes == 0.0 || byes >= f64::from(CALLS),
        "only {byes} BYEs crossed the node"
    );
}

fn assert_exits_zero_within_grace(s: &mut Setup, since: Instant) {
    let limit = s.drain_grace + Duration::from_secs(3);
    let status = s.node.wait_exit(limit);
    let elapsed = since.elapsed();
    assert!(
        status.is_some(),
        "sipedge still running {elapsed:?} after SIGTERM (grace {:?}):\n{}",
        s.drain_grace,
        s.node.log()
    );
    assert!(
        status.is_some_and(|st| st.success()),
        "sipedge exit after SIGTERM: {status:?}\n{}",
        s.node.log()
    );
}

#[test]
fn post_drain_keeps_calls_in_progress_and_refuses_new_calls() {
    let mut s = start("drain-post", Transport::Udp, 3);
    let mut calls = calls_in_progress(&s);

    let (status, body) =
        http(s.node.admin, "POST", "/drain").unwrap_or_else(|e| panic!("POST /drain: {e}"));
    assert!((200..300).contains(&status), "POST /drain: {status} {body}");
    let admin = s.node.admin;
    assert!(
        wait_until(Duration::from_secs(2), || http_status(admin, "/ready")
            == 503),
        "/ready did not turn 503 after POST /drain"
    );
    assert_eq!(
        http_status(admin, "/health"),
        200,
        "a draining node is still alive"
    );
    assert_eq!(metric_sum(&s.node.scrape(), "sipedge_draining", &[]), 1.0);
    assert_eq!(metric_sum(&s.node.scrape(), "sipedge_ready", &[]), 0.0);

    new_call_is_refused(&s);
    calls_all_completed(&s, &mut calls);

    // Then the stop, as the kubelet sends it after the preStop hook.
    let pid = s.node.pid();
    let since = Instant::now();
    deploy_support::signal(pid, "TERM");
    assert_exits_zero_within_grace(&mut s, since);
}

fn sigterm_mid_call(transport: Transport, name: &str) {
    let mut s = start(name, transport, 10);
    let mut calls = calls_in_progress(&s);

    let since = Instant::now();
    deploy_support::signal(s.node.pid(), "TERM");
    let admin = s.node.admin;
    assert!(
        wait_until(Duration::from_secs(2), || http_status(admin, "/ready")
            == 503),
        "/ready did not turn 503 after SIGTERM"
    );
    new_call_is_refused(&s);
    calls_all_completed(&s, &mut calls);
    assert_exits_zero_within_grace(&mut s, since);
    let log = s.node.log();
    assert!(!log.contains("panicked"), "sipedge log:\n{log}");
}

#[test]
fn sigterm_mid_call_drains_then_exits_zero_udp() {
    sigterm_mid_call(Transport::Udp, "drain-sigterm-udp");
}

#[test]
fn sigterm_mid_call_drains_then_exits_zero_tcp() {
    // In-dialog requests keep flowing over the callers' open TCP connections while the
    // node refuses new calls.
    sigterm_mid_call(Transport::Tcp, "drain-sigterm-tcp");
}
