//! The Kubernetes manifests of deploy/kubernetes: schema-valid offline (PyPI
//! `kubernetes-validate`, pinned), their embedded sipedge configuration accepted by
//! `sipedge --check-config`, and the numbers that must agree across files (drain grace below
//! the termination grace period, probes and preStop on the configured admin port).

mod deploy_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use deploy_support::{TempDir, need, repo_path, run_with_timeout, sipedge_bin};

/// The validator version the project pins (tests/run.sh installs the same).
const KUBERNETES_VALIDATE_VERSION: &str = "1.34.1";

fn install_hint() -> String {
    format!("pip install kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}")
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo_path("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Custom resources whose schema ships with their operator, not with Kubernetes.
const CUSTOM_KINDS: [(&str, &str); 2] = [
    ("kustomization.yaml", "Kustomization"),
    ("podmonitor.yaml", "PodMonitor"),
];

#[test]
fn manifests_validate_offline_against_the_kubernetes_schema() {
    let validator = need("kubernetes-validate", &install_hint());
    let version = run_with_timeout(
        Command::new(&validator).arg("--version"),
        Duration::from_secs(60),
    );
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert_eq!(
        version,
        KUBERNETES_VALIDATE_VERSION,
        "kubernetes-validate {version} is installed; the pinned one is: {}",
        install_hint()
    );
    let files = manifests();
    assert!(files.len() >= 10, "manifests: {files:?}");
    let out = run_with_timeout(
        Command::new(&validator).arg("--strict").args(&files),
        Duration::from_secs(120),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    let mut passed = 0;
    for line in text.lines() {
        if line.starts_with("INFO") && line.contains(" passed for resource ") {
            passed += 1;
            continue;
        }
        // The only tolerated warning: no built-in schema for an operator's custom resource.
        let custom = CUSTOM_KINDS.iter().any(|(file, kind)| {
            line.starts_with("WARN")
                && line.contains(file)
                && line.contains(&format!("Couldn't find schema for kind {kind} "))
        });
        assert!(custom, "kubernetes-validate: {line}\n{text}");
    }
    // Namespace, ConfigMap x2, Deployment, DaemonSet, Service x2, PDB, HPA, NetworkPolicy.
    assert_eq!(passed, 10, "resources validated:\n{text}");
}

#[test]
fn validator_rejects_a_broken_manifest() {
    // The check above means something only if the validator fails on a real mistake.
    let validator = need("kubernetes-validate", &install_hint());
    let tmp = TempDir::new("k8s-broken");
    let broken = read(&repo_path("deploy/kubernetes/deployment.yaml"))
        .replace("replicas: 3", "replicas: three");
    let path = tmp.write("deployment.yaml", &broken);
    let out = run_with_timeout(
        Command::new(validator).arg("--strict").arg(&path),
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "a Deployment with replicas: three validated"
    );
}

#[test]
fn kustomization_lists_existing_manifests() {
    let text = read(&repo_path("deploy/kubernetes/kustomization.yaml"));
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert!(listed.len() >= 6, "{listed:?}");
    for file in listed {
        assert!(
            repo_path("deploy/kubernetes").join(file).is_file(),
            "{file} is listed but missing"
        );
    }
}

/// The TOML embedded as `sipedge.toml: |` in the ConfigMap.
fn configmap_toml() -> String {
    let text = read(&repo_path("deploy/kubernetes/configmap.yaml"));
    let mut lines = text.lines().skip_while(|l| l.trim() != "sipedge.toml: |");
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no sipedge.toml key in the ConfigMap"));
    let key_indent = header.len() - header.trim_start().len();
    let mut toml = String::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        toml.push_str(line.get(key_indent + 2..).unwrap_or(""));
        toml.push('\n');
    }
    toml
}

/// The integer value of `key: N` on its first occurrence in `text`.
fn yaml_int(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no integer {key}"))
}

/// The integer value of the top-level TOML key `key`.
fn toml_int(toml: &str, key: &str) -> u64 {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no integer {key} in:\n{toml}"))
}

/// The string value of the top-level TOML key `key`.
fn toml_str(toml: &str, key: &str) -> String {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no string {key} in:\n{toml}"))
}

#[test]
fn configmap_configuration_passes_check_config() {
    let toml = configmap_toml();
    assert!(toml.contains("backends"), "ConfigMap TOML:\n{toml}");
    let tmp = TempDir::new("k8s-config");
    let path = tmp.write("sipedge.toml", &toml);
    let out = run_with_timeout(
        Command::new(sipedge_bin()).arg("--check-config").arg(&path),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "sipedge --check-config rejects the ConfigMap's configuration:\n{}{}\n{toml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check is a real one: the same file with a misspelt key is refused.
    let broken = tmp.write(
        "broken.toml",
        &toml.replace("drain_grace_secs", "drain_grace_sec"),
    );
    let out = run_with_timeout(
        Command::new(sipedge_bin())
            .arg("--check-config")
            .arg(&broken),
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "sipedge --check-config accepts the misspelt key drain_grace_sec"
    );
}

#[test]
fn grace_periods_and_admin_port_agree() {
    let toml = configmap_toml();
    let drain_grace = toml_int(&toml, "drain_grace_secs");
    let metrics = toml_str(&toml, "metrics");
    let admin_port = metrics.rsplit(':').next().unwrap_or_default().to_owned();
    assert!(
        metrics.starts_with("0.0.0.0:") || metrics.starts_with("[::]:"),
        "the kubelet probes the pod IP: the admin listener must not be loopback ({metrics})"
    );
    for file in ["deployment.yaml", "daemonset-hostnetwork.yaml"] {
        let text = read(&repo_path("deploy/kubernetes").join(file));
        let termination = yaml_int(&text, "terminationGracePeriodSeconds");
        assert!(
            termination >= drain_grace + 10,
            "{file}: terminationGracePeriodSeconds {termination} leaves no room for drain_grace_secs {drain_grace}"
        );
        assert!(
            text.contains(&format!("containerPort: {admin_port}")),
            "{file}: no admin containerPort {admin_port}"
        );
        assert!(
            text.contains(&format!("http://127.0.0.1:{admin_port}/drain")),
            "{file}: the preStop hook must POST /drain on port {admin_port}"
        );
        for path in ["/ready", "/health"] {
            assert!(
                text.contains(&format!("path: {path}")),
                "{file}: no probe on {path}"
            );
        }
    }
    // The image's own config has the same admin port the manifests probe.
    let image_toml = read(&repo_path("deploy/container/sipedge.toml"));
    assert_eq!(toml_str(&image_toml, "metrics"), metrics);
}

/// The preStop hook's command line, one argument per `- ` line under `command:`.
fn prestop_command(manifest: &str) -> Vec<String> {
    let text = read(&repo_path("deploy/kubernetes").join(manifest));
    let mut lines = text.lines().skip_while(|l| l.trim() != "preStop:");
    let mut args = Vec::new();
    let mut in_command = false;
    for line in lines.by_ref() {
        let t = line.trim();
        if t == "command:" {
            in_command = true;
            continue;
        }
        if in_command {
            match t.strip_prefix("- ") {
                Some(arg) => args.push(arg.trim_matches('"').to_owned()),
                None => break,
            }
        }
    }
    args
}

#[test]
fn prestop_hook_drains_a_real_node() {
    // The hook exactly as the manifests run it, with the image's wget (busybox, the same
    // static binary build.sh copies in), against a live sipedge on a free admin port.
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "no /bin/busybox: apt-get install busybox-static"
    );
    let deployment = prestop_command("deployment.yaml");
    assert_eq!(deployment, prestop_command("daemonset-hostnetwork.yaml"));
    assert_eq!(
        deployment.first().map(String::as_str),
        Some("/usr/libexec/sipedge/wget")
    );

    let [sip, admin, backend] = deploy_support::free_ports(3)[..] else {
        unreachable!()
    };
    let tmp = TempDir::new("prestop");
    let config = tmp.write(
        "sipedge.toml",
        &format!(
            "shards = 1\nlisten = [\"udp:127.0.0.1:{sip}\"]\nmetrics = \"127.0.0.1:{admin}\"\n\
             backends = [\"sip:127.0.0.1:{backend}\"]\n\n[health]\nprobe_interval_ms = 0\n"
        ),
    );
    let admin_addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, admin));
    let mut node = deploy_support::Sipedge::start(&config, admin_addr, &[], tmp.path().join("log"));
    node.wait_ready(Duration::from_secs(20));

    // busybox picks the applet from argv[0]: run it under the hook's name.
    let wget = tmp.path().join("wget");
    std::fs::copy(busybox, &wget).unwrap_or_else(|e| panic!("copy busybox: {e}"));
    let port_in_hook = deployment
        .iter()
        .find_map(|a| a.strip_prefix("http://127.0.0.1:"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no admin URL in the hook: {deployment:?}"))
        .to_owned();
    let args: Vec<String> = deployment[1..]
        .iter()
        .map(|a| a.replace(&format!(":{port_in_hook}/"), &format!(":{admin}/")))
        .collect();
    let out = run_with_timeout(Command::new(&wget).args(&args), Duration::from_secs(20));
    assert!(
        out.status.success(),
        "preStop {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deploy_support::http_status(admin_addr, "/ready"), 503);
    let scrape = node.scrape();
    assert_eq!(
        deploy_support::metric_sum(&scrape, "sipedge_draining", &[]),
        1.0
    );
    // The liveness probe keeps passing while draining: the kubelet must not restart the pod.
    assert_eq!(deploy_support::http_status(admin_addr, "/health"), 200);
}
