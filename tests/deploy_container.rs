//! The OCI image of deploy/container: built by build.sh without a daemon or a registry
//! (umoci), checked for a non-root numeric user and the Containerfile's entry point, then
//! unpacked and run with runc (host network, read-only root, the config mounted at
//! /etc/sipedge as a Kubernetes ConfigMap would be) in front of a sipp UAS; a sipp UAC's
//! OPTIONS crosses it and the backend's answer comes back.

mod deploy_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deploy_support::{
    Sipp, TempDir, free_ports, http_status, need, repo_path, run_with_timeout, sipedge_bin,
    wait_timeout, wait_until,
};

const TAG: &str = "test";

/// Builds the image from the test binary into `dir/oci`; returns the layout path.
fn build_image(dir: &Path) -> PathBuf {
    need("umoci", "apt-get install umoci");
    let layout = dir.join("oci");
    let out = run_with_timeout(
        Command::new(repo_path("deploy/container/build.sh"))
            .arg("--binary")
            .arg(sipedge_bin())
            .arg("--out")
            .arg(&layout)
            .args(["--tag", TAG]),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "deploy/container/build.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    layout
}

fn json_file(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    json_file(&layout.join("blobs/sha256").join(hex))
}

#[test]
fn image_builds_without_a_daemon_and_runs_as_non_root() {
    let tmp = TempDir::new("image-build");
    let layout = build_image(tmp.path());
    let index = json_file(&layout.join("index.json"));
    let manifest_ref = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == TAG)
        })
        .unwrap_or_else(|| panic!("no manifest tagged {TAG}: {index}"));
    let manifest = blob(&layout, manifest_ref["digest"].as_str().unwrap_or_default());
    let layers = manifest["layers"].as_array().map_or(0, Vec::len);
    assert_eq!(layers, 1, "one layer, no base image: {manifest}");
    let config = blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    );
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "numeric non-root user: {config}");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/bin/sipedge"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["--config", "/etc/sipedge/sipedge.toml"])
    );
    for port in ["5060/udp", "5060/tcp", "9090/tcp"] {
        assert!(
            c["ExposedPorts"].get(port).is_some(),
            "{port} not exposed: {config}"
        );
    }
    assert_eq!(c["StopSignal"], "SIGTERM");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .map(|e| e.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(
        env.contains(&"NO_COLOR=1"),
        "ENV of the Containerfile: {env:?}"
    );
    assert_eq!(config["os"], "linux");
}

/// A runc container; deleted (by its ID) on drop.
struct Container {
    id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Container {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PID of the container's process (on the host), from `runc state`.
    fn pid(&self) -> u64 {
        let out = run_with_timeout(
            Command::new("runc").args(["state", &self.id]),
            Duration::from_secs(10),
        );
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        state["pid"].as_u64().unwrap_or(0)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn image_answers_options_through_a_sipp_backend_under_runc() {
    let runc = need("runc", "apt-get install runc");
    need("sipp", "apt-get install sip-tester");
    let uid = run_with_timeout(Command::new("id").arg("-u"), Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "running the image with runc needs root (CI runs as root)"
    );
    let tmp = TempDir::new("image-run");
    let layout = build_image(tmp.path());
    let bundle = tmp.path().join("bundle");
    let out = run_with_timeout(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{TAG}", layout.display()))
            .arg(&bundle),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The configuration a ConfigMap would mount, on loopback ports free on this host.
    let [sip, admin, backend] = free_ports(3)[..] else {
        unreachable!()
    };
    let config_dir = tmp.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    std::fs::write(
        config_dir.join("sipedge.toml"),
        format!(
            "shards = 1\nlisten = [\"udp:127.0.0.1:{sip}\", \"tcp:127.0.0.1:{sip}\"]\n\
             metrics = \"127.0.0.1:{admin}\"\ndrain_grace_secs = 2\n\
             backends = [\"sip:127.0.0.1:{backend}\"]\n\n[health]\nprobe_interval_ms = 500\n"
        ),
    )
    .unwrap_or_else(|e| panic!("write config: {e}"));

    // Host network (as a hostNetwork pod), read-only root, the config mounted read-only.
    let spec_path = bundle.join("config.json");
    let mut spec = json_file(&spec_path);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["readonly"] = serde_json::json!(true);
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|n| n["type"] != "network");
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/etc/sipedge",
            "type": "bind",
            "source": config_dir.display().to_string(),
            "options": ["rbind", "ro"],
        }));
    }
    assert_eq!(spec["process"]["user"]["uid"], 65532, "{}", spec["process"]);
    std::fs::write(&spec_path, spec.to_string()).unwrap_or_else(|e| panic!("write spec: {e}"));

    // The backend: a sipp UAS that answers OPTIONS (the proxy's probes and the test's).
    let marker = format!("uas-{}", std::process::id());
    let uas_scenario = tmp.write("uas.xml", &deploy_support::options_uas_scenario(&marker));
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

    let id = format!("sipedge-test-{}-{sip}", std::process::id());
    let log = tmp.path().join("container.log");
    let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
    let log_err = log_file.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
    let child = Command::new(&runc)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("runc run: {e}"));
    let mut container = Container {
        id: id.clone(),
        child: Some(child),
        log,
    };
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));
    let ready = wait_until(Duration::from_secs(30), || {
        if let Some(child) = container.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the container exited ({status}):\n{}", container.log());
            }
        }
        http_status(admin_addr, "/ready") == 200
    });
    assert!(
        ready,
        "the container never became ready:\n{}",
        container.log()
    );

    wait_until(Duration::from_secs(10), || {
        container.log().contains("sipedge started")
    });
    let started = container.log();
    assert!(
        started.contains("sipedge started") && started.contains("driver="),
        "no start line naming the I/O driver:\n{started}"
    );
    eprintln!("{}", started.lines().next().unwrap_or(""));

    // The process in the container runs as the image's numeric user.
    let pid = container.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65532"),
        "container process {pid}: {uid_line}"
    );

    // One OPTIONS from a sipp UAC through the container to the backend and back.
    let uac_scenario = tmp.write("uac.xml", &deploy_support::options_uac_scenario(&marker));
    let mut uac = Sipp::start(
        "uac",
        tmp.path(),
        &[
            "-sf".into(),
            uac_scenario.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-m".into(),
            "1".into(),
            "-timeout".into(),
            "15s".into(),
            "-timeout_error".into(),
            format!("127.0.0.1:{sip}"),
        ],
    );
    let code = uac.finish(Duration::from_secs(30));
    assert_eq!(
        code,
        0,
        "the OPTIONS did not come back from the backend through the container:\n{}\ncontainer:\n{}",
        uac.log(),
        container.log()
    );

    // SIGTERM through the runtime: drain, then exit 0 within the grace period (2 s).
    let kill = run_with_timeout(
        Command::new(&runc).args(["kill", &id, "TERM"]),
        Duration::from_secs(10),
    );
    assert!(
        kill.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let child = container.child.as_mut().unwrap_or_else(|| unreachable!());
    let exit = wait_timeout(child, Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "container exit after SIGTERM: {exit:?}\n{}",
        container.log()
    );
    container.child = None;
}

/// podman with its state under `dir` (so the test leaves nothing in the host's storage), the
/// vfs driver, runc and cgroupfs (the forms that work in a nested, hybrid-cgroup sandbox).
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new(need("podman", "apt-get install podman"));
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    cmd
}

/// A `podman run` child; on drop the container is removed (by name) and the child reaped.
struct PodmanRun {
    dir: PathBuf,
    name: String,
    child: Option<Child>,
}

impl Drop for PodmanRun {
    fn drop(&mut self) {
        let _ = podman(&self.dir)
            .args(["rm", "--force", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unmount and drop the image in the test's own storage (vfs copies are large); the
        // directory goes with the TempDir. Nothing outside that storage is touched.
        let _ = podman(&self.dir)
            .args(["rmi", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn containerfile_builds_and_runs_with_podman() {
    let tmp = TempDir::new("podman");
    let stage = tmp.path().join("stage");
    let out = run_with_timeout(
        Command::new(repo_path("deploy/container/build.sh"))
            .arg("--binary")
            .arg(sipedge_bin())
            .arg("--stage")
            .arg(&stage),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "build.sh --stage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tag = format!("localhost/sipedge:test-{}", std::process::id());
    let out = run_with_timeout(
        podman(tmp.path())
            .args(["build", "--network", "host", "-f"])
            .arg(repo_path("deploy/container/Containerfile"))
            .args(["-t", &tag])
            .arg(&stage),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "podman build -f deploy/container/Containerfile: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let [sip, admin, backend] = free_ports(3)[..] else {
        unreachable!()
    };
    let config_dir = tmp.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    std::fs::write(
        config_dir.join("sipedge.toml"),
        format!(
            "shards = 1\nlisten = [\"udp:127.0.0.1:{sip}\"]\nmetrics = \"127.0.0.1:{admin}\"\n\
             drain_grace_secs = 1\nbackends = [\"sip:127.0.0.1:{backend}\"]\n\n\
             [health]\nprobe_interval_ms = 0\n\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("write config: {e}"));
    let name = format!("sipedge-test-{}-{sip}", std::process::id());
    let log = tmp.path().join("podman-run.log");
    let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
    let log_err = log_file.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
    // The image's own ENTRYPOINT and CMD, read-only root, the config mounted like a ConfigMap.
    // The limits are pinned because the default ones exceed this sandbox's hard limits.
    let child = podman(tmp.path())
        .args([
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "host",
            "--read-only",
        ])
        .args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .arg("-v")
        .arg(format!("{}:/etc/sipedge:ro", config_dir.display()))
        .arg(&tag)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("podman run: {e}"));
    let mut run = PodmanRun {
        dir: tmp.path().to_owned(),
        name: name.clone(),
        child: Some(child),
    };
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(60), || {
        if let Some(Ok(Some(status))) = run.child.as_mut().map(Child::try_wait) {
            panic!("podman run exited ({status}):\n{}", read_log());
        }
        http_status(admin_addr, "/ready") == 200
    });
    assert!(
        ready,
        "the podman container never became ready:\n{}",
        read_log()
    );
    // JSON log lines, as the mounted configuration asks: the start line names the driver.
    // (conmon relays the container's output a little after the fact.)
    wait_until(Duration::from_secs(10), || {
        read_log().contains("sipedge started")
    });
    let started = read_log()
        .lines()
        .find(|l| l.contains("sipedge started"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        started.starts_with('{') && started.contains("\"driver\""),
        "no JSON start line:\n{}",
        read_log()
    );
    let stop = run_with_timeout(
        podman(tmp.path()).args(["stop", "-t", "10", &name]),
        Duration::from_secs(30),
    );
    assert!(
        stop.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let exit = run
        .child
        .as_mut()
        .and_then(|c| wait_timeout(c, Duration::from_secs(20)));
    assert!(
        exit.is_some_and(|s| s.success()),
        "podman run after stop: {exit:?}\n{}",
        read_log()
    );
    run.child = None;
    drop(run);
    let _ = podman(tmp.path()).args(["rmi", "-f", &tag]).output();
}
