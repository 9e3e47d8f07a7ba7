//! End to end: a backend named by a host name is resolved per RFC 3263 (here DNS SRV served by
//! a real dnsmasq on loopback, Debian package `dnsmasq`), each SRV target becomes a pool
//! member with its own metrics label, and calls spread over them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, require, uac};

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Only the PID this test started.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn e2e_srv_named_backend_spreads_calls_over_its_targets() {
    require("dnsmasq", "dnsmasq");
    let dir = TempDir::new("dns");
    let (port_a, port_b) = (free_port(), free_port());
    let mut uas_a = Sipp::uas(&dir, "uas-a", port_a, "udp", "uas");
    let mut uas_b = Sipp::uas(&dir, "uas-b", port_b, "udp", "uas");
    let dns_port = free_port();
    let _dnsmasq = Dnsmasq(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
                &format!("--port={dns_port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--host-record=a.pool.test,127.0.0.1",
                "--host-record=b.pool.test,127.0.0.1",
                &format!("--srv-host=_sip._udp.pool.test,a.pool.test,{port_a},10,50"),
                &format!("--srv-host=_sip._udp.pool.test,b.pool.test,{port_b},10,50"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian package `dnsmasq`)"),
    );
    let config = dir.path("sipedge.toml");
    std::fs::write(
        &config,
        format!("[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n"),
    )
    .expect("write config");
    // Ready only once the name is resolved and a member is up.
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            backends: vec!["sip:pool.test".into()],
            extra: vec!["--config".into(), config.to_string_lossy().into_owned()],
            ..SipedgeOptions::default()
        },
    );
    let mut calls = uac(
        &dir,
        "uac",
        proxy.sip_addr(),
        "udp",
        &["-m", "200", "-r", "100"],
    );
    assert_eq!(
        calls.wait(Duration::from_secs(60)),
        Some(0),
        "{}\n{}",
        calls.output_text(),
        proxy.log_text()
    );
    uas_a.stop();
    uas_b.stop();
    let (a, b) = (uas_a.call_ids(), uas_b.call_ids());
    assert!(
        a.len() > 20 && b.len() > 20,
        "both SRV targets get calls: {} / {}",
        a.len(),
        b.len()
    );
    assert_eq!(a.len() + b.len(), 200);
    assert!(a.is_disjoint(&b));
    let label =
        format!("sipedge_backend_requests_total{{backend=\"sip:pool.test (127.0.0.1:{port_a})\"}}");
    assert!(
        proxy.metric(&label) > 0.0,
        "per-target metrics label {label}"
    );
}
