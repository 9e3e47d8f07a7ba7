//! End to end with real peers: sipp UAC → sipedge (2 shards) → two sipp UAS backends.
//!
//! For each transport (UDP, TCP) and each I/O driver (io_uring, epoll): 1000 full
//! INVITE/ACK/BYE calls with sipp's built-in `uac`/`uas` scenarios, and 1000 REGISTERs with the
//! scenarios in `tests/scenarios/`. Every call must succeed, both backends must get calls, and
//! every call's messages must reach one backend only (Call-IDs of the two backends' message
//! logs are disjoint and together are exactly the client's).

mod common;

use std::time::Duration;

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, scenario, transport_flag};

const CALLS: u32 = 1000;

struct Case {
    name: &'static str,
    transport: &'static str,
    driver: &'static str,
    uac: String,
    uas: String,
}

fn run(case: &Case) {
    let dir = TempDir::new(case.name);
    let (port_a, port_b) = (free_port(), free_port());
    let suffix = if case.transport == "tcp" {
        ";transport=tcp"
    } else {
        ""
    };
    let mut uas_a = Sipp::uas(&dir, "uas-a", port_a, case.transport, &case.uas);
    let mut uas_b = Sipp::uas(&dir, "uas-b", port_b, case.transport, &case.uas);
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![
                format!("sip:127.0.0.1:{port_a}{suffix}"),
                format!("sip:127.0.0.1:{port_b}{suffix}"),
            ],
            driver: case.driver,
            ..SipedgeOptions::default()
        },
    );
    let uac_port = free_port();
    let mut args: Vec<String> = if case.uac.ends_with(".xml") {
        vec!["-sf".into(), case.uac.clone()]
    } else {
        vec!["-sn".into(), case.uac.clone()]
    };
    args.extend(
        [
            proxy.sip_addr().to_string().as_str(),
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port.to_string(),
            "-t",
            transport_flag(case.transport),
            "-m",
            &CALLS.to_string(),
            "-r",
            "250",
            "-l",
            "200",
            "-timeout",
            "60",
            "-timeout_error",
        ]
        .map(String::from),
    );
    let mut uac = Sipp::spawn(&dir, "uac", &args);
    let code = uac.wait(Duration::from_secs(90));
    let context = || {
        format!(
            "case {}\n--- uac output:\n{}\n--- sipedge log:\n{}",
            case.name,
            uac.output_text(),
            proxy.log_text()
        )
    };
    assert_eq!(
        code,
        Some(0),
        "sipp UAC reported failed calls; {}",
        context()
    );
    assert_eq!(
        uac.stat("SuccessfulCall(C)"),
        Some(u64::from(CALLS)),
        "{}",
        context()
    );
    assert_eq!(uac.stat("FailedCall(C)"), Some(0), "{}", context());

    // The UAS message logs are complete once they have stopped.
    uas_a.stop();
    uas_b.stop();
    let client = uac.call_ids();
    let a = uas_a.call_ids();
    let b = uas_b.call_ids();
    assert_eq!(client.len(), CALLS as usize, "{}", context());
    assert!(
        a.len() > 100 && b.len() > 100,
        "both backends must get calls: {} and {}",
        a.len(),
        b.len()
    );
    let both: Vec<_> = a.intersection(&b).collect();
    assert!(
        both.is_empty(),
        "{} calls reached both backends, e.g. {:?}",
        both.len(),
        both.first()
    );
    let union: std::collections::BTreeSet<String> = a.union(&b).cloned().collect();
    assert_eq!(
        union, client,
        "backends saw other calls than the client made"
    );

    // The proxy's own counters agree with what the peers saw.
    let forwarded = proxy.metric(&format!(
        "sipedge_backend_requests_total{{backend=\"sip:127.0.0.1:{port_a}{suffix}\"}}"
    )) + proxy.metric(&format!(
        "sipedge_backend_requests_total{{backend=\"sip:127.0.0.1:{port_b}{suffix}\"}}"
    ));
    assert!(
        forwarded >= f64::from(CALLS),
        "backend request counters: {forwarded}"
    );
}

fn calls(name: &'static str, transport: &'static str, driver: &'static str) -> Case {
    Case {
        name,
        transport,
        driver,
        uac: "uac".into(),
        uas: "uas".into(),
    }
}

fn registers(name: &'static str, transport: &'static str, driver: &'static str) -> Case {
    Case {
        name,
        transport,
        driver,
        uac: scenario("register_uac.xml"),
        uas: scenario("register_uas.xml"),
    }
}

#[test]
fn e2e_udp_calls_io_uring() {
    run(&calls("udp-calls-io_uring", "udp", "io_uring"));
}

#[test]
fn e2e_udp_calls_epoll() {
    run(&calls("udp-calls-epoll", "udp", "epoll"));
}

#[test]
fn e2e_tcp_calls_io_uring() {
    run(&calls("tcp-calls-io_uring", "tcp", "io_uring"));
}

#[test]
fn e2e_tcp_calls_epoll() {
    run(&calls("tcp-calls-epoll", "tcp", "epoll"));
}

#[test]
fn e2e_udp_register_io_uring() {
    run(&registers("udp-register-io_uring", "udp", "io_uring"));
}

#[test]
fn e2e_tcp_register_epoll() {
    run(&registers("tcp-register-epoll", "tcp", "epoll"));
}
