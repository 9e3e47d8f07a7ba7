//! End to end: the command line, the admin endpoint (`/metrics`, `/health`, `/ready`,
//! `/drain`), draining on SIGTERM, reloading on SIGHUP, and a live scrape checked by promtool.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, http, require, uac};

fn sipedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
}

#[test]
fn e2e_print_default_config_is_valid_and_check_config_names_key_and_line() {
    let dir = TempDir::new("cli");
    let out = sipedge()
        .arg("--print-default-config")
        .output()
        .expect("run sipedge");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        "udp:127.0.0.1:5060",
        "tcp:127.0.0.1:5060",
        "sip:127.0.0.1:5070",
        "sip:127.0.0.1:5071",
        "127.0.0.1:9090",
    ] {
        assert!(text.contains(needle), "default config lacks {needle}");
    }
    let good = dir.path("good.toml");
    std::fs::write(&good, &text).expect("write");
    let check = sipedge()
        .arg("--check-config")
        .arg(&good)
        .output()
        .expect("run");
    assert!(check.status.success(), "{check:?}");

    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        "shards = 2\n\n[tcp]\nidle_timeout_secs = 30\nconect_timeout_ms = 5\n",
    )
    .expect("write");
    let check = sipedge()
        .arg("--check-config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(check.status.code(), Some(2));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("conect_timeout_ms") && err.contains("line 5"),
        "error must name the key and its line: {err}"
    );

    let bad_backend = sipedge()
        .args(["--backend", "http://example.com"])
        .output()
        .expect("run");
    assert_eq!(bad_backend.status.code(), Some(2), "{bad_backend:?}");
}

#[test]
fn e2e_health_ready_metrics_and_promtool() {
    require("promtool", "prometheus");
    let dir = TempDir::new("admin");
    let port = free_port();
    let _uas = Sipp::uas(&dir, "uas", port, "udp", "uas");
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{port}")],
            extra: vec!["--log-format".into(), "json".into()],
            ..SipedgeOptions::default()
        },
    );
    assert_eq!(
        http(proxy.admin, "GET", "/health").map(|r| r.0).ok(),
        Some(200)
    );
    assert_eq!(
        http(proxy.admin, "GET", "/ready").map(|r| r.0).ok(),
        Some(200)
    );
    assert_eq!(
        http(proxy.admin, "GET", "/nope").map(|r| r.0).ok(),
        Some(404)
    );
    assert_eq!(
        http(proxy.admin, "GET", "/drain").map(|r| r.0).ok(),
        Some(405)
    );

    // Some traffic so counters are non-zero.
    let mut client = uac(
        &dir,
        "uac",
        proxy.sip_addr(),
        "udp",
        &["-m", "20", "-r", "50"],
    );
    assert_eq!(
        client.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        client.output_text()
    );

    let (status, body) = http(proxy.admin, "GET", "/metrics").expect("scrape");
    assert_eq!(status, 200);
    for series in [
        "sipedge_requests_received_total{method=\"INVITE\"} 20",
        "sipedge_ready 1",
        "sipedge_shards 2",
        "sipedge_draining 0",
    ] {
        assert!(body.contains(series), "scrape lacks {series}:\n{body}");
    }
    let scrape = dir.path("scrape.txt");
    std::fs::write(&scrape, &body).expect("write scrape");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).expect("open"))
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool check metrics failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // One JSON startup line stating shards, driver, listeners and backends; no per-message
    // logging at info.
    let log = proxy.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines
        .iter()
        .find(|l| l.contains("sipedge started"))
        .unwrap_or_else(|| panic!("no startup line in:\n{log}"));
    assert!(start.starts_with('{'), "not JSON: {start}");
    for key in [
        "\"shards\":2",
        "\"driver\":",
        "\"listeners\":",
        "\"backends\":",
    ] {
        assert!(start.contains(key), "startup line lacks {key}: {start}");
    }
    assert!(lines.len() < 10, "too much logging for 20 calls:\n{log}");
}

#[test]
fn e2e_not_ready_without_backend_up() {
    let dir = TempDir::new("not-ready");
    // Nothing listens on this backend port: probes fail and it goes down.
    let dead = free_port();
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{dead}")],
            wait_ready: false,
            extra: vec![
                "--config".into(),
                write_config(
                    &dir,
                    "probe.toml",
                    "[health]\nprobe_interval_ms = 100\nprobe_timeout_ms = 200\nfailures_before_down = 1\n",
                ),
            ],
            ..SipedgeOptions::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(proxy.admin, "GET", "/ready").expect("ready");
        if status == 503 && body.contains("no backend up") {
            break;
        }
        assert!(Instant::now() < deadline, "still ready with a dead backend");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        proxy.metric(&format!(
            "sipedge_backend_up{{backend=\"sip:127.0.0.1:{dead}\"}}"
        )),
        0.0
    );
}

fn write_config(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

/// Calls established before the drain complete; calls attempted after it get 503.
fn drain_under_load(start_drain: impl FnOnce(&Sipedge), driver: &'static str) {
    let dir = TempDir::new("drain");
    let (port_a, port_b) = (free_port(), free_port());
    let _uas_a = Sipp::uas(&dir, "uas-a", port_a, "udp", "uas");
    let _uas_b = Sipp::uas(&dir, "uas-b", port_b, "udp", "uas");
    let mut proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![
                format!("sip:127.0.0.1:{port_a}"),
                format!("sip:127.0.0.1:{port_b}"),
            ],
            driver,
            drain_grace: 6,
            ..SipedgeOptions::default()
        },
    );
    // 100 calls set up within about a second, each held 3 s before its BYE.
    let mut before = uac(
        &dir,
        "uac-before",
        proxy.sip_addr(),
        "udp",
        &["-m", "100", "-r", "100", "-d", "3000"],
    );
    std::thread::sleep(Duration::from_millis(1800));
    start_drain(&proxy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(proxy.admin, "GET", "/ready").map(|r| r.0).ok() != Some(503) {
        assert!(Instant::now() < deadline, "not unready after drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut after = uac(
        &dir,
        "uac-after",
        proxy.sip_addr(),
        "udp",
        &["-m", "10", "-r", "20", "-recv_timeout", "3000"],
    );
    assert_eq!(
        before.wait(Duration::from_secs(30)),
        Some(0),
        "calls in progress failed during the drain:\n{}\n{}",
        before.output_text(),
        proxy.log_text()
    );
    let _ = after.wait(Duration::from_secs(30));
    assert_eq!(
        after.stat("SuccessfulCall(C)"),
        Some(0),
        "{}",
        after.output_text()
    );
    assert!(
        after.count_messages("SIP/2.0 503") >= 10,
        "every new call must be refused with 503:\n{}",
        after.output_text()
    );
    assert!(proxy.metric("sipedge_local_responses_total{status=\"503\"}") >= 10.0);
    assert_eq!(proxy.metric("sipedge_draining"), 1.0);
    let _ = &mut proxy;
}

#[test]
fn e2e_drain_endpoint_under_load() {
    drain_under_load(
        |proxy| {
            assert_eq!(
                http(proxy.admin, "POST", "/drain").map(|r| r.0).ok(),
                Some(200)
            );
        },
        "io_uring",
    );
}

#[test]
fn e2e_sigterm_drains_then_exits_zero() {
    let dir = TempDir::new("sigterm");
    let port = free_port();
    let _uas = Sipp::uas(&dir, "uas", port, "udp", "uas");
    let mut proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec![format!("sip:127.0.0.1:{port}")],
            driver: "epoll",
            drain_grace: 4,
            ..SipedgeOptions::default()
        },
    );
    let mut calls = uac(
        &dir,
        "uac",
        proxy.sip_addr(),
        "udp",
        &["-m", "50", "-r", "100", "-d", "2000"],
    );
    std::thread::sleep(Duration::from_millis(800));
    let signalled = Instant::now();
    proxy.terminate();
    assert_eq!(
        calls.wait(Duration::from_secs(20)),
        Some(0),
        "calls in progress failed after SIGTERM:\n{}",
        calls.output_text()
    );
    expect_exit_zero(&mut proxy, Duration::from_secs(10));
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "exited before the grace period: {waited:?}"
    );
}

#[test]
fn e2e_sighup_reloads_the_pool() {
    let dir = TempDir::new("sighup");
    let (port_a, port_b) = (free_port(), free_port());
    let _uas_a = Sipp::uas(&dir, "uas-a", port_a, "udp", "uas");
    let _uas_b = Sipp::uas(&dir, "uas-b", port_b, "udp", "uas");
    let sip_port = free_port();
    let admin_port = free_port();
    let config = |backends: &str| {
        format!(
            "listen = [\"udp:127.0.0.1:{sip_port}\"]\nmetrics = \"127.0.0.1:{admin_port}\"\nshards = 2\nbackends = [{backends}]\n"
        )
    };
    let file = write_config(
        &dir,
        "sipedge.toml",
        &config(&format!("\"sip:127.0.0.1:{port_a}\"")),
    );
    let mut child = sipedge()
        .arg("--config")
        .arg(&file)
        .stderr(std::fs::File::create(dir.path("log")).expect("log"))
        .spawn()
        .expect("spawn");
    let admin = ([127, 0, 0, 1], admin_port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(admin, "GET", "/ready").map(|r| r.0).ok() != Some(200) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hup = |child: &std::process::Child| {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's PID.
            unsafe {
                libc::kill(pid, libc::SIGHUP);
            }
        }
    };
    let scrape = || {
        http(admin, "GET", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    };
    // A scrape encodes its families one after another, so one taken while a reload lands may
    // show the new reload count beside the old backends: wait until one shows both.
    let wait_for = |needles: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = scrape();
            if needles.iter().all(|n| body.contains(n)) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "scrape never showed {needles:?}:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let member_b = format!("backend=\"sip:127.0.0.1:{port_b}\"");
    std::fs::write(
        &file,
        config(&format!(
            "\"sip:127.0.0.1:{port_a}\", \"sip:127.0.0.1:{port_b}\""
        )),
    )
    .expect("rewrite");
    hup(&child);
    wait_for(&["sipedge_config_reloads_total{result=\"ok\"} 1", &member_b]);
    // A broken file is refused and the running pool stays.
    std::fs::write(&file, "backends = [\"nonsense\"]\n").expect("rewrite");
    hup(&child);
    let body = wait_for(&["sipedge_config_reloads_total{result=\"error\"} 1"]);
    assert!(
        body.contains(&member_b),
        "the refused reload changed the pool:\n{body}"
    );
    assert_eq!(http(admin, "GET", "/ready").map(|r| r.0).ok(), Some(200));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn e2e_config_file_edit_reloads_the_pool_without_a_signal() {
    let dir = TempDir::new("config-watch");
    let (port_a, port_b) = (free_port(), free_port());
    let _uas_a = Sipp::uas(&dir, "uas-a", port_a, "udp", "uas");
    let _uas_b = Sipp::uas(&dir, "uas-b", port_b, "udp", "uas");
    let (sip_port, admin_port) = (free_port(), free_port());
    let config = |backends: &str| {
        format!(
            "listen = [\"udp:127.0.0.1:{sip_port}\"]\nmetrics = \"127.0.0.1:{admin_port}\"\nshards = 1\nbackends = [{backends}]\n"
        )
    };
    let file = write_config(
        &dir,
        "sipedge.toml",
        &config(&format!("\"sip:127.0.0.1:{port_a}\"")),
    );
    let mut child = sipedge()
        .arg("--config")
        .arg(&file)
        .stderr(std::fs::File::create(dir.path("log")).expect("log"))
        .spawn()
        .expect("spawn");
    let admin = ([127, 0, 0, 1], admin_port).into();
    let scrape = || {
        http(admin, "GET", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !scrape().contains("sipedge_config_reloads_total") {
        assert!(Instant::now() < deadline, "admin endpoint never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&file, config(&format!("\"sip:127.0.0.1:{port_b}\""))).expect("rewrite");
    // The watcher looks once a second and acts when two looks agree: a few seconds at most.
    let log = || std::fs::read_to_string(dir.path("log")).unwrap_or_default();
    let (new_member, old_member) = (
        format!("backend=\"sip:127.0.0.1:{port_b}\""),
        format!("backend=\"sip:127.0.0.1:{port_a}\""),
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let body = scrape();
        if body.contains("sipedge_config_reloads_total{result=\"ok\"} 1")
            && body.contains(&new_member)
            && !body.contains(&old_member)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "editing the file did not install the edited pool:\n{body}\nlog:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Unchanged bytes are not reloaded again.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(scrape().contains("sipedge_config_reloads_total{result=\"ok\"} 1"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (at most `limit`) for sipedge to exit, and fails unless it exited with status 0.
fn expect_exit_zero(proxy: &mut Sipedge, limit: Duration) {
    let status = proxy.wait_exit(limit);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        proxy.log_text()
    );
}

/// Context switches of one thread of `pid` so far (voluntary and not).
fn context_switches(pid: u32, tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("thread status readable");
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn e2e_idle_main_thread_sleeps_until_a_signal() {
    let dir = TempDir::new("idle");
    let mut proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            wait_ready: false,
            drain_grace: 0,
            ..SipedgeOptions::default()
        },
    );
    // The main thread (tid = pid) only waits for signals: at rest it must not poll them.
    // `/health` answers while it may still be waiting for the shards to start, so the
    // first quiet 2 s window of three counts; a polling loop is never quiet.
    let pid = proxy.pid();
    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = context_switches(pid, pid);
        std::thread::sleep(Duration::from_secs(2));
        windows.push(context_switches(pid, pid) - before);
        if windows.last().is_some_and(|&woke| woke <= 2) {
            break;
        }
    }
    assert!(
        windows.iter().any(|&woke| woke <= 2),
        "the idle main thread woke {windows:?} times in each 2 s window (a polling loop?)"
    );
    // And a signal still reaches it at once.
    let signalled = Instant::now();
    proxy.terminate();
    expect_exit_zero(&mut proxy, Duration::from_secs(5));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "SIGTERM took {:?} to end an idle proxy with no grace",
        signalled.elapsed()
    );
}

/// Each thread's scheduling policy by name: field 41 of `/proc/PID/task/TID/stat` (proc(5)),
/// counted after the `)` that ends the name.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read tasks") {
        let path = task.expect("task entry").path();
        let stat = std::fs::read_to_string(path.join("stat")).expect("read stat");
        let comm = std::fs::read_to_string(path.join("comm")).expect("read comm");
        let after_name = stat.rsplit_once(')').expect("stat has a name").1;
        // Fields from 3 on; policy is field 41.
        let policy = after_name
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .expect("policy field");
        out.push((comm.trim().to_owned(), policy));
    }
    out
}

#[test]
fn e2e_shard_threads_run_with_the_configured_scheduling() {
    let dir = TempDir::new("scheduling");
    for (extra, want) in [
        (vec![], libc::SCHED_BATCH),
        (
            vec!["--scheduling".to_owned(), "normal".to_owned()],
            libc::SCHED_OTHER,
        ),
    ] {
        let node = Sipedge::start(
            &dir,
            &SipedgeOptions {
                backends: vec!["sip:127.0.0.1:9".to_owned()],
                wait_ready: false,
                extra: extra.clone(),
                ..SipedgeOptions::default()
            },
        );
        // The shards are running once the start is logged (the log line comes after they
        // started; `/health` may answer before).
        let named = if want == libc::SCHED_BATCH {
            "batch"
        } else {
            "normal"
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.log_text().contains("sipedge started") {
            assert!(
                Instant::now() < deadline,
                "no start logged:\n{}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = node.log_text();
        assert!(log.contains(&format!("scheduling={named}")), "{log}");
        let policies = thread_policies(node.pid());
        let shards: Vec<_> = policies
            .iter()
            .filter(|(name, _)| name.starts_with("sipedge-shard-"))
            .collect();
        assert_eq!(shards.len(), 2, "{policies:?}");
        for (name, policy) in &shards {
            assert_eq!(*policy, want as u32, "{name} with {extra:?}: {policies:?}");
        }
        // The other threads (main, admin) keep the kernel's default.
        for (name, policy) in policies
            .iter()
            .filter(|(n, _)| !n.starts_with("sipedge-shard-"))
        {
            assert_eq!(*policy, libc::SCHED_OTHER as u32, "{name}: {policies:?}");
        }
    }
}
