//! Shared helpers for integration tests that run the real `sipedge` binary against real peers.
//!
//! Use from a test file with `mod common;`. What is here:
//!
//! - [`require`]: fail (never skip) when a peer program is missing, naming its Debian package;
//! - [`run_perf_script`]: runs a `perf/` script, fails unless it exits 0;
//! - [`free_port`]: a port free for both UDP and TCP on 127.0.0.1, distinct within the process;
//! - [`Sipedge`]: starts the binary with free ports, waits until `/ready` (or `/health`) answers,
//!   kills it (by its PID only) when dropped; [`Sipedge::terminate`] sends SIGTERM;
//! - [`Sipp`]: starts `sipp` as UAS or UAC with a message log, kills it by PID when dropped;
//! - [`http`]: one HTTP/1.1 request to the admin endpoint;
//! - [`TempDir`]: a per-test scratch directory, removed when dropped.
//!
//! Everything stays on loopback, every wait is bounded, and only processes started here are
//! ever signalled.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Panics (failing the test) when `program` is not on PATH, naming the Debian package.
pub fn require(program: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not installed: install the Debian package `{debian_package}` \
         (apt-get install -y {debian_package})"
    );
}

/// Runs `perf/<script>` with `args` from the crate root, fails unless it exits 0, and returns
/// its standard output and error.
pub fn run_perf_script<A: AsRef<std::ffi::OsStr>>(script: &str, args: &[A]) -> (String, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(Path::new(root).join("perf").join(script))
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("perf/{script} does not run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "perf/{script} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    (stdout, stderr)
}

/// A port on 127.0.0.1 that is free for both UDP and TCP right now.
///
/// Ports are probed in a range derived from the process id, then bound and released, so
/// parallel test processes rarely collide and one process never returns the same port twice.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 400) * 100;
    for _ in 0..2_000 {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % 20_000;
        let port = u16::try_from(20_000 + (base - 20_000 + offset) % 40_000).unwrap_or(20_000);
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}

/// A scratch directory under the target directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `target/e2e-tmp/<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test directory");
        Self(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Sends one HTTP/1.1 request; returns the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A running sipedge process.
pub struct Sipedge {
    child: Option<Child>,
    /// The SIP port (UDP and TCP on 127.0.0.1).
    pub sip_port: u16,
    /// The admin/metrics address.
    pub admin: SocketAddr,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

/// How to start sipedge.
#[derive(Clone, Debug)]
pub struct SipedgeOptions {
    /// Backend URIs.
    pub backends: Vec<String>,
    /// `udp`, `tcp` listeners on the SIP port (default both).
    pub transports: Vec<&'static str>,
    /// Shards (default 2, so cross-shard handoff is always exercised).
    pub shards: u16,
    /// `auto`, `io_uring` or `epoll`.
    pub driver: &'static str,
    /// Drain grace in seconds.
    pub drain_grace: u64,
    /// Extra arguments.
    pub extra: Vec<String>,
    /// Wait for `/ready` (true) or only `/health` (false) before returning.
    pub wait_ready: bool,
}

impl Default for SipedgeOptions {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            transports: vec!["udp", "tcp"],
            shards: 2,
            driver: "auto",
            drain_grace: 2,
            extra: Vec::new(),
            wait_ready: true,
        }
    }
}

impl Sipedge {
    /// Starts sipedge on free ports and waits (at most 10 s) until it answers. A port taken
    /// by a parallel test between probing and binding makes it try again with other ports.
    pub fn start(dir: &TempDir, options: &SipedgeOptions) -> Self {
        for attempt in 1..=3 {
            match Self::try_start(dir, options) {
                Ok(me) => return me,
                Err(log) if attempt < 3 && log.contains("Address already in use") => {}
                Err(log) => panic!("sipedge exited at start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn try_start(dir: &TempDir, options: &SipedgeOptions) -> Result<Self, String> {
        let sip_port = free_port();
        let admin_port = free_port();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let log = dir.path(&format!("sipedge-{sip_port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipedge"));
        for t in &options.transports {
            cmd.arg("--listen").arg(format!("{t}:127.0.0.1:{sip_port}"));
        }
        for b in &options.backends {
            cmd.arg("--backend").arg(b);
        }
        cmd.arg("--shards")
            .arg(options.shards.to_string())
            .arg("--driver")
            .arg(options.driver)
            .arg("--metrics")
            .arg(admin.to_string())
            .arg("--drain-grace")
            .arg(options.drain_grace.to_string())
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log file"));
        let child = cmd.spawn().expect("spawn sipedge");
        let mut me = Self {
            child: Some(child),
            sip_port,
            admin,
            log,
        };
        let path = if options.wait_ready {
            "/ready"
        } else {
            "/health"
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = http(admin, "GET", path) {
                break;
            }
            if let Some(status) = me.try_wait() {
                return Err(format!("({status})\n{}", me.log_text()));
            }
            assert!(
                Instant::now() < deadline,
                "sipedge not answering {path} within 10 s:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// The SIP address.
    pub fn sip_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.sip_port).into()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to this process (and only it).
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            if pid > 0 {
                // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Fetches `/metrics` and returns the value of one sample line (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = http(self.admin, "GET", "/metrics").unwrap_or((0, String::new()));
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
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

/// A running sipp.
pub struct Sipp {
    child: Option<Child>,
    /// Its `-message_file` (every message sent and received, with `-trace_msg`).
    pub messages: PathBuf,
    /// Its `-stf` statistics file (UAC).
    pub stats: PathBuf,
    /// Its stdout and stderr.
    pub output: PathBuf,
}

impl Sipp {
    /// Starts sipp with `args` plus a message log and statistics file in `dir`.
    pub fn spawn(dir: &TempDir, name: &str, args: &[String]) -> Self {
        require("sipp", "sip-tester");
        let messages = dir.path(&format!("{name}-messages.log"));
        let stats = dir.path(&format!("{name}-stats.csv"));
        let output = dir.path(&format!("{name}.out"));
        let out = std::fs::File::create(&output).expect("create sipp output");
        let err = out.try_clone().expect("clone sipp output");
        let child = Command::new("sipp")
            .args(args)
            .arg("-nostdin")
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn sipp");
        Self {
            child: Some(child),
            messages,
            stats,
            output,
        }
    }

    /// A UAS on 127.0.0.1:`port`: `scenario` is `-sn uas` style built-in name or an XML path.
    pub fn uas(dir: &TempDir, name: &str, port: u16, transport: &str, scenario: &str) -> Self {
        Self::uas_with(dir, name, port, transport, scenario, &[])
    }

    /// [`Sipp::uas`] with `extra` arguments (for instance `-aa`, to answer OPTIONS probes).
    pub fn uas_with(
        dir: &TempDir,
        name: &str,
        port: u16,
        transport: &str,
        scenario: &str,
        extra: &[&str],
    ) -> Self {
        let mut args = scenario_args(scenario);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args.extend(
            [
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                transport_flag(transport),
            ]
            .map(String::from),
        );
        let me = Self::spawn(dir, name, &args);
        wait_port(port, transport);
        me
    }

    /// Waits at most `limit` for sipp to exit; returns its exit code (sipp: 0 = every call
    /// succeeded, 1 = at least one failed), or `None` (and kills it) on timeout.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.code();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    /// Stops sipp gracefully (SIGUSR1 makes it flush its logs and exit), killing it if it
    /// has not exited within 3 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGUSR1);
                }
            }
        }
        let _ = self.wait(Duration::from_secs(3));
    }

    /// How many messages in the message log start with `start_line` (e.g. `SIP/2.0 503`).
    pub fn count_messages(&self, start_line: &str) -> usize {
        let text = std::fs::read_to_string(&self.messages).unwrap_or_default();
        text.lines().filter(|l| l.starts_with(start_line)).count()
    }

    /// The output (stdout and stderr) so far.
    pub fn output_text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Call-IDs of every message in the message log, except sipedge's health probes.
    pub fn call_ids(&self) -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(&self.messages).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim();
                let value = value.trim();
                ((name.eq_ignore_ascii_case("call-id") || name == "i")
                    && !value.starts_with("sipedge-probe-"))
                .then(|| value.to_owned())
            })
            .collect()
    }

    /// A counter from the last line of the `-stf` statistics file (e.g. `SuccessfulCall(C)`).
    pub fn stat(&self, column: &str) -> Option<u64> {
        let text = std::fs::read_to_string(&self.stats).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split(';').collect();
        let last: Vec<&str> = lines.last()?.split(';').collect();
        let i = header.iter().position(|h| *h == column)?;
        // Date columns contain a tab-separated time but no extra ';', so indexes line up.
        last.get(i)?.trim().parse().ok()
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

fn scenario_args(scenario: &str) -> Vec<String> {
    if Path::new(scenario).extension().is_some_and(|e| e == "xml") {
        vec!["-sf".to_owned(), scenario.to_owned()]
    } else {
        vec!["-sn".to_owned(), scenario.to_owned()]
    }
}

/// Starts a sipp UAC running built-in `scenario` against `target` with `extra` arguments
/// (for instance `-m`, `-r`, `-d`).
pub fn uac(dir: &TempDir, name: &str, target: SocketAddr, transport: &str, extra: &[&str]) -> Sipp {
    let port = free_port().to_string();
    let mut args: Vec<String> = vec![
        "-sn".into(),
        "uac".into(),
        target.to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port,
        "-t".into(),
        transport_flag(transport).into(),
        "-timeout".into(),
        "60".into(),
        "-timeout_error".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Sipp::spawn(dir, name, &args)
}

/// sipp's `-t` value for a transport: one socket (`u1`/`t1`).
pub fn transport_flag(transport: &str) -> &'static str {
    if transport == "tcp" { "t1" } else { "u1" }
}

/// Waits (at most 5 s) until something listens on 127.0.0.1:`port` for `transport`.
pub fn wait_port(port: u16, transport: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let busy = if transport == "tcp" {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
        } else {
            UdpSocket::bind(("127.0.0.1", port)).is_err()
        };
        if busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {transport} port {port} after 5 s");
}

/// Path of a scenario file in `tests/scenarios/`.
pub fn scenario(name: &str) -> String {
    format!("{}/tests/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}
