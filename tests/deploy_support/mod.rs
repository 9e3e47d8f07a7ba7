//! Shared helpers of the `deploy_*` tests: locating tools (failing with the package to
//! install), free loopback ports, a running sipedge child, a minimal HTTP client for the admin
//! endpoint, and sipp peers. Every process started here is killed by its own PID on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path inside the repository.
pub(crate) fn repo_path(relative: &str) -> PathBuf {
    repo().join(relative)
}

/// The sipedge binary cargo built for the tests.
pub(crate) fn sipedge_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sipedge"))
}

/// Finds `program` on PATH, or fails the test naming how to install it.
pub(crate) fn need(program: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{program}` is not installed: {install}");
}

/// A fresh, empty scratch directory under the target dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `target/deploy-tests/<name>-<pid>-<n>`.
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "deploy-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that is free for both UDP and TCP right now.
pub(crate) fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        if TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// `count` distinct ports from [`free_port`].
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// Runs a command to completion with a time limit; kills it (by PID) when the limit passes.
pub(crate) fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let status = wait_timeout(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} did not finish within {limit:?}");
    });
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Waits for a child for at most `limit`.
pub(crate) fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait for child {}: {e}", child.id()),
        }
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub(crate) fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (a name such as `TERM`) to the process `pid`, one this test started.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("run kill: {e}"));
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// One HTTP/1.1 exchange with the admin endpoint: (status, body).
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(std::io::Error::other("truncated HTTP response"));
        }
        Err(e) => return Err(std::io::Error::other(format!("bad HTTP response: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let body = String::from_utf8_lossy(&raw[head_len..]).into_owned();
    Ok((status, body))
}

/// The HTTP status of `GET path`, or 0 when nothing answers.
pub(crate) fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path).map_or(0, |(status, _)| status)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Metric name (counters with their `_total`).
    pub(crate) name: String,
    /// Label pairs, in exposition order.
    pub(crate) labels: Vec<(String, String)>,
    /// The value.
    pub(crate) value: f64,
}

/// Parses a Prometheus text exposition into samples.
pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => continue,
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, Vec::new()),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(match escaped {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((name, value));
        rest = &after[end..];
    }
    labels
}

/// Sum of every sample of `name` whose labels include all of `want`.
pub(crate) fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    parse_exposition(text)
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// A sipedge process started for a test; killed (SIGKILL, by PID) on drop if still running.
pub(crate) struct Sipedge {
    child: Option<Child>,
    /// The admin / metrics listener.
    pub(crate) admin: SocketAddr,
    log: PathBuf,
}

impl Sipedge {
    /// Starts `sipedge --config <config>` with `extra` arguments; its stderr goes to `log`.
    pub(crate) fn start(config: &Path, admin: SocketAddr, extra: &[&str], log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create log: {e}"));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log: {e}"));
        let child = Command::new(sipedge_bin())
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", sipedge_bin().display()));
        Self {
            child: Some(child),
            admin,
            log,
        }
    }

    /// Starts the binary with exactly `args` (for command lines taken from a unit file).
    pub(crate) fn start_args(args: &[String], admin: SocketAddr, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create log: {e}"));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log: {e}"));
        let child = Command::new(sipedge_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", sipedge_bin().display()));
        Self {
            child: Some(child),
            admin,
            log,
        }
    }

    /// The process ID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the process logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET /ready` answers 200, failing the test (with the log) after `limit`.
    pub(crate) fn wait_ready(&mut self, limit: Duration) {
        let admin = self.admin;
        let ready = wait_until(limit, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sipedge exited early ({status}):\n{}", self.log());
                }
            }
            http_status(admin, "/ready") == 200
        });
        assert!(
            ready,
            "sipedge not ready on {admin} within {limit:?}; log:\n{}",
            self.log()
        );
    }

    /// Waits until the admin endpoint answers `GET path` with any status; fails the test
    /// (with the log) when the process exits first or `limit` passes.
    pub(crate) fn wait_admin(&mut self, path: &str, limit: Duration) {
        let admin = self.admin;
        let answered = wait_until(limit, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sipedge exited early ({status}):\n{}", self.log());
                }
            }
            http_status(admin, path) != 0
        });
        assert!(
            answered,
            "no answer on {admin}{path} within {limit:?}; log:\n{}",
            self.log()
        );
    }

    /// A scrape of `/metrics`.
    pub(crate) fn scrape(&self) -> String {
        match http(self.admin, "GET", "/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /metrics: {status}\n{body}"),
            Err(e) => panic!("GET /metrics on {}: {e}\nlog:\n{}", self.admin, self.log()),
        }
    }

    /// A scrape of `/metrics`, or an empty text when the process no longer answers.
    pub(crate) fn scrape_or_empty(&self) -> String {
        match http(self.admin, "GET", "/metrics") {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    /// Waits for the process to exit, for at most `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_timeout(child, limit);
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Sipedge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A sipp process; killed (by PID) on drop if still running.
pub(crate) struct Sipp {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Sipp {
    /// Starts sipp with `args` (plus `-nostdin`), logging its output to `dir/<name>.log`.
    pub(crate) fn start(name: &str, dir: &Path, args: &[String]) -> Self {
        let sipp = need("sipp", "apt-get install sip-tester");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create log: {e}"));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log: {e}"));
        let child = Command::new(sipp)
            .args(args)
            .arg("-nostdin")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("start sipp: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
            log,
        }
    }

    /// What sipp printed.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for sipp to finish within `limit` and returns its exit code (0: every call passed).
    pub(crate) fn finish(&mut self, limit: Duration) -> i32 {
        let Some(child) = self.child.as_mut() else {
            panic!("sipp {} already finished", self.name)
        };
        let Some(status) = wait_timeout(child, limit) else {
            panic!(
                "sipp {} still running after {limit:?}:\n{}",
                self.name,
                self.log()
            )
        };
        self.child = None;
        status.code().unwrap_or(-1)
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A sipp UAS scenario that answers any OPTIONS with 200 carrying `X-Backend: <marker>`.
pub(crate) fn options_uas_scenario(marker: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options answered by a backend">
  <recv request="OPTIONS" crlf="true"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
X-Backend: {marker}
Content-Length: 0

]]>
  </send>
</scenario>
"#
    )
}

/// A sipp UAC scenario that sends one OPTIONS to a user behind the proxy and requires a 200
/// carrying `X-Backend: <marker>` (so the answer came from the backend, not the proxy).
pub(crate) fn options_uac_scenario(marker: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options through the proxy">
  <send retrans="500">
    <![CDATA[
OPTIONS sip:pool@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:probe@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:pool@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Contact: <sip:probe@[local_ip]:[local_port]>
Accept: application/sdp
Content-Length: 0

]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp="X-Backend: {marker}" search_in="msg" check_it="true" assign_to="marker"/>
    </action>
  </recv>
  <Reference variables="marker"/>
</scenario>
"#
    )
}

/// A sipp UAC scenario for one new call that must be refused with 503 (then ACKed).
pub(crate) fn invite_refused_scenario() -> &'static str {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="new call refused with 503">
  <send retrans="500">
    <![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="503"/>
  <send>
    <![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
</scenario>
"#
}
