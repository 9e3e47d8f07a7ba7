//! The systemd deliverables: `systemd-analyze verify` and an offline security review of
//! deploy/systemd/sipedge.service (on a copy whose paths point at the built binary and the
//! repository's readiness helper), the example configuration accepted by
//! `sipedge --check-config`, the stop timeout above the drain grace, and the readiness helper
//! against a real sipedge.

mod deploy_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_support::{
    Sipedge, Sipp, TempDir, free_ports, need, repo_path, run_with_timeout, sipedge_bin,
};

const SYSTEMD_INSTALL: &str = "apt-get install systemd (it ships systemd-analyze)";

fn unit_text() -> String {
    let path = repo_path("deploy/systemd/sipedge.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The unit with its installed paths replaced by the ones in this checkout, in `dir`.
fn unit_for_verify(dir: &TempDir) -> PathBuf {
    let text = unit_text()
        .replace("/usr/bin/sipedge", &sipedge_bin().display().to_string())
        .replace(
            "/usr/libexec/sipedge/wait-ready",
            &repo_path("deploy/systemd/wait-ready").display().to_string(),
        );
    assert!(!text.contains("/usr/bin/sipedge") && text.contains("ExecStart="));
    dir.write("sipedge.service", &text)
}

fn unit_value(key: &str) -> String {
    unit_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets no {key}"))
        .trim()
        .to_owned()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let analyze = need("systemd-analyze", SYSTEMD_INSTALL);
    let tmp = TempDir::new("systemd-verify");
    let unit = unit_for_verify(&tmp);
    let out = run_with_timeout(
        Command::new(analyze).arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys and unparsable values, printing a warning: any line
    // about our unit is a failure.
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains("sipedge")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn verify_would_catch_a_mistake() {
    // The check above relies on verify reporting bad lines; make sure this systemd does.
    let analyze = need("systemd-analyze", SYSTEMD_INSTALL);
    let tmp = TempDir::new("systemd-verify-broken");
    let unit = unit_for_verify(&tmp);
    let text = std::fs::read_to_string(&unit).unwrap_or_default().replace(
        "SystemCallFilter=@system-service io_uring_setup",
        "SystemCallFilter=@system-service io_uring_setupp",
    );
    std::fs::write(&unit, text).unwrap_or_else(|e| panic!("write: {e}"));
    let out = run_with_timeout(
        Command::new(analyze).arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("io_uring_setupp"),
        "verify said nothing about a bad syscall name:\n{stderr}"
    );
}

#[test]
fn unit_is_hardened() {
    let analyze = need("systemd-analyze", SYSTEMD_INSTALL);
    for (key, want) in [
        ("User", "sipedge"),
        ("Group", "sipedge"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit_value(key), want, "{key}");
    }
    let nofile: u64 = unit_value("LimitNOFILE").parse().unwrap_or(0);
    assert!(
        nofile >= 65536,
        "LimitNOFILE={nofile} is too low for a TCP edge"
    );
    assert!(unit_text().contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // systemd's own scoring, offline: 10 x the exposure level; 20 is "OK" (2.0).
    let tmp = TempDir::new("systemd-security");
    let unit = unit_for_verify(&tmp);
    let out = run_with_timeout(
        Command::new(analyze)
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.0: {overall}\n{text}"
    );
}

/// The value of the top-level TOML key `key` in the example configuration.
fn example_config_value(key: &str) -> String {
    let path = repo_path("deploy/config/sipedge.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read: {e}"));
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no {key} in deploy/config/sipedge.toml"))
}

#[test]
fn example_config_passes_check_config_and_fits_the_stop_timeout() {
    for file in [
        "deploy/config/sipedge.toml",
        "deploy/container/sipedge.toml",
    ] {
        let out = run_with_timeout(
            Command::new(sipedge_bin())
                .arg("--check-config")
                .arg(repo_path(file)),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "sipedge --check-config {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let grace: u64 = example_config_value("drain_grace_secs")
        .parse()
        .unwrap_or(u64::MAX);
    let stop: u64 = unit_value("TimeoutStopSec").parse().unwrap_or(0);
    assert!(
        stop >= grace + 10,
        "TimeoutStopSec={stop} does not outlast drain_grace_secs={grace}"
    );
}

#[test]
fn wait_ready_gates_on_a_real_sipedge() {
    let [sip, admin, backend] = free_ports(3)[..] else {
        unreachable!()
    };
    let tmp = TempDir::new("wait-ready");
    let wait_ready = repo_path("deploy/systemd/wait-ready");
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));

    // Nothing listens yet: the helper fails, within its timeout.
    let started = Instant::now();
    let out = run_with_timeout(
        Command::new(&wait_ready)
            .arg(admin_addr.to_string())
            .arg("1"),
        Duration::from_secs(20),
    );
    assert!(
        !out.status.success(),
        "wait-ready succeeded with nothing listening"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A backend that answers probes (sipp UAS answering OPTIONS, -aa) and a node in front.
    let uas_scenario = tmp.write("uas.xml", &deploy_support::options_uas_scenario("b1"));
    let _uas = Sipp::start(
        "uas",
        tmp.path(),
        &[
            "-sf".into(),
            uas_scenario.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            backend.to_string(),
        ],
    );
    let config = tmp.write(
        "sipedge.toml",
        &format!(
            "listen = [\"udp:127.0.0.1:{sip}\"]\nmetrics = \"127.0.0.1:{admin}\"\nshards = 1\n\
             backends = [\"sip:127.0.0.1:{backend}\"]\n\n[health]\nprobe_interval_ms = 200\n"
        ),
    );
    let _node = Sipedge::start(&config, admin_addr, &[], tmp.path().join("sipedge.log"));
    let out = run_with_timeout(
        Command::new(&wait_ready)
            .arg(admin_addr.to_string())
            .arg("20"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "wait-ready against a live sipedge: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deploy_support::http_status(admin_addr, "/ready"), 200);
}

#[test]
fn install_script_stages_a_package_root() {
    let analyze = need("systemd-analyze", SYSTEMD_INSTALL);
    let tmp = TempDir::new("systemd-install");
    let root = tmp.path().join("root");
    let out = run_with_timeout(
        Command::new(repo_path("deploy/systemd/install.sh"))
            .arg(sipedge_bin())
            .env("DESTDIR", &root),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "usr/bin/sipedge",
        "usr/libexec/sipedge/wait-ready",
        "lib/systemd/system/sipedge.service",
        "etc/sipedge/sipedge.toml",
        "usr/lib/sysusers.d/sipedge.conf",
        "usr/share/doc/sipedge/deploy/README.md",
    ] {
        assert!(
            root.join(file).is_file(),
            "install.sh did not install /{file}"
        );
    }
    // The sysusers.d entry creates the service's system user (in the staged root).
    let sysusers = need("systemd-sysusers", SYSTEMD_INSTALL);
    std::fs::create_dir_all(root.join("etc")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let out = run_with_timeout(
        Command::new(sysusers)
            .arg(format!("--root={}", root.display()))
            .arg(root.join("usr/lib/sysusers.d/sipedge.conf")),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("sipedge:"))
        .unwrap_or("");
    assert!(
        user.ends_with(":/usr/sbin/nologin"),
        "sysusers made no sipedge login-less user: {passwd}"
    );
    assert_eq!(unit_value("User"), "sipedge");
    // The configuration (it holds proxy.secret) is not world-readable.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("etc/sipedge/sipedge.toml"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o640, "sipedge.toml mode {mode:o}");

    // A second run keeps an operator's configuration.
    let config = root.join("etc/sipedge/sipedge.toml");
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string(&config).unwrap_or_default()
    );
    std::fs::write(&config, &edited).unwrap_or_else(|e| panic!("write: {e}"));
    let again = run_with_timeout(
        Command::new(repo_path("deploy/systemd/install.sh"))
            .arg(sipedge_bin())
            .env("DESTDIR", &root),
        Duration::from_secs(60),
    );
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap_or_default(), edited);
    // The installed unit, pointed at the staged files, verifies.
    let root_str = root.display().to_string();
    let unit_text = std::fs::read_to_string(root.join("lib/systemd/system/sipedge.service"))
        .unwrap_or_default()
        .replace("/usr/bin/sipedge", &format!("{root_str}/usr/bin/sipedge"))
        .replace(
            "/usr/libexec/sipedge/wait-ready",
            &format!("{root_str}/usr/libexec/sipedge/wait-ready"),
        );
    let unit = tmp.write("sipedge.service", &unit_text);
    let out = run_with_timeout(
        Command::new(analyze).arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("sipedge"),
        "verify of the installed unit:\n{text}"
    );
}

/// Every `key=` line of the unit's [Service] section, in order.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// The default of `Environment=NAME=value` in the unit.
fn unit_env(name: &str) -> String {
    unit_values("Environment")
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("the unit sets no Environment={name}"))
}

#[test]
fn unit_lifecycle_commands_drive_a_real_node() {
    // systemd's part played by the test, with the unit's own command lines: ExecStartPre,
    // ExecStart, ExecStartPost (readiness), ExecReload (check, then SIGHUP), then KillSignal
    // within TimeoutStopSec. Paths point at this checkout; SIPEDGE_ADMIN is set as
    // /etc/default/sipedge would set it.
    let [sip, admin, backend, backend2] = free_ports(4)[..] else {
        unreachable!()
    };
    let tmp = TempDir::new("unit-lifecycle");
    let uas_scenario = tmp.write("uas.xml", &deploy_support::options_uas_scenario("b1"));
    let _uas = Sipp::start(
        "uas",
        tmp.path(),
        &[
            "-sf".into(),
            uas_scenario.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            backend.to_string(),
        ],
    );
    let config_for = |backends: &str| {
        format!(
            "shards = 1\nlisten = [\"udp:127.0.0.1:{sip}\"]\ndrain_grace_secs = 2\n\
             backends = [{backends}]\n\n[health]\nprobe_interval_ms = 200\n"
        )
    };
    let config = tmp.write(
        "sipedge.toml",
        &config_for(&format!("\"sip:127.0.0.1:{backend}\"")),
    );
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));
    let env = [
        ("SIPEDGE_ADMIN", admin_addr.to_string()),
        ("SIPEDGE_READY_TIMEOUT", unit_env("SIPEDGE_READY_TIMEOUT")),
    ];
    let expand = |line: &str, main_pid: u32| -> Vec<String> {
        let mut line = line
            .replace("/usr/bin/sipedge", &sipedge_bin().display().to_string())
            .replace(
                "/usr/libexec/sipedge/wait-ready",
                &repo_path("deploy/systemd/wait-ready").display().to_string(),
            )
            .replace("/etc/sipedge/sipedge.toml", &config.display().to_string())
            .replace("$MAINPID", &main_pid.to_string());
        for (name, value) in &env {
            line = line.replace(&format!("${{{name}}}"), value);
        }
        assert!(!line.contains('$'), "unexpanded variable in {line:?}");
        line.split_whitespace().map(str::to_owned).collect()
    };
    let run = |argv: &[String]| {
        run_with_timeout(
            Command::new(&argv[0]).args(&argv[1..]),
            Duration::from_secs(60),
        )
    };

    for line in unit_values("ExecStartPre") {
        let out = run(&expand(&line, 0));
        assert!(
            out.status.success(),
            "ExecStartPre={line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start = expand(&unit_value("ExecStart"), 0);
    assert!(start[0].ends_with("sipedge"), "{start:?}");
    let mut node = Sipedge::start_args(&start[1..], admin_addr, tmp.path().join("sipedge.log"));
    for line in unit_values("ExecStartPost") {
        let out = run(&expand(&line, node.pid()));
        assert!(
            out.status.success(),
            "ExecStartPost={line}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
    }
    assert_eq!(
        deploy_support::http_status(admin_addr, "/ready"),
        200,
        "{}",
        node.log()
    );

    // systemctl reload with an invalid file: the check fails and no SIGHUP is sent.
    let reload = unit_values("ExecReload");
    assert_eq!(reload.len(), 2, "check, then SIGHUP: {reload:?}");
    std::fs::write(&config, "backends = []\n").unwrap_or_else(|e| panic!("write: {e}"));
    let out = run(&expand(&reload[0], node.pid()));
    assert!(
        !out.status.success(),
        "ExecReload={} accepted an empty backend list",
        reload[0]
    );

    // systemctl reload with a new backend: checked, then applied in place.
    std::fs::write(
        &config,
        config_for(&format!(
            "\"sip:127.0.0.1:{backend}\", \"sip:127.0.0.1:{backend2}\""
        )),
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    for line in &reload {
        let out = run(&expand(line, node.pid()));
        assert!(
            out.status.success(),
            "ExecReload={line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let new_backend = format!("sip:127.0.0.1:{backend2}");
    let reloaded = deploy_support::wait_until(Duration::from_secs(10), || {
        let scrape = node.scrape();
        deploy_support::metric_sum(&scrape, "sipedge_config_reloads_total", &[("result", "ok")])
            == 1.0
            && scrape.contains(&new_backend)
    });
    assert!(
        reloaded,
        "the reload did not take:\n{}\n{}",
        node.scrape(),
        node.log()
    );

    // systemctl stop: KillSignal, then the process must be gone within TimeoutStopSec.
    let signal = unit_value("KillSignal");
    let stop_timeout: u64 = unit_value("TimeoutStopSec").parse().unwrap_or(0);
    deploy_support::signal(node.pid(), signal.trim_start_matches("SIG"));
    let status = node.wait_exit(Duration::from_secs(stop_timeout));
    assert!(
        status.is_some_and(|s| s.success()),
        "after {signal}: {status:?}\n{}",
        node.log()
    );
}
