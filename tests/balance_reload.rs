//! Pool changes under load with real peers (Debian `sip-tester`): a backend is added and
//! another removed by SIGHUP while calls are up. Established calls keep their backend (their
//! BYE reaches the UAS that took the INVITE, through the Record-Route affinity token), and new
//! calls move only as rendezvous hashing says: about 1/n of them, exactly the ones the library
//! predicts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Sipedge, SipedgeOptions, Sipp, TempDir, free_port, transport_flag, wait_port};
use sipedge::balance::{BackendSpec, Blacklist, Pool};

/// A UAC that sends ACK and BYE through the Record-Route set, as real dialogs do.
const ROUTED_UAC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/scenarios/balance_uac_routed.xml"
);

/// A UAS that copies Record-Route into its responses (RFC 3261 §12.1.1), unlike sipp's own.
const ROUTED_UAS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/scenarios/balance_uas_rr.xml"
);

/// New calls per phase: enough that the 1/n + 5% bound is about three standard deviations of
/// the moved fraction away from its mean (1/4 here).
const NEW_CALLS: u32 = 600;

const HEALTH: &str = "[health]\nprobe_interval_ms = 500\nprobe_timeout_ms = 500\n";

fn uas(dir: &TempDir, name: &str, port: u16) -> Sipp {
    let args: Vec<String> = [
        "-sf",
        ROUTED_UAS,
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        transport_flag("udp"),
        "-aa",
    ]
    .map(String::from)
    .to_vec();
    let me = Sipp::spawn(dir, name, &args);
    wait_port(port, "udp");
    me
}

/// One UAS per port, named `uas0`, `uas1`, ...
fn uases(dir: &TempDir, ports: &[u16]) -> Vec<Sipp> {
    ports
        .iter()
        .enumerate()
        .map(|(i, &p)| uas(dir, &format!("uas{i}"), p))
        .collect()
}

fn uac(dir: &TempDir, name: &str, proxy: SocketAddr, calls: u32, hold_ms: u32) -> Sipp {
    let args: Vec<String> = [
        "-sf",
        ROUTED_UAC,
        &proxy.to_string(),
        "-i",
        "127.0.0.1",
        "-p",
        &free_port().to_string(),
        "-t",
        transport_flag("udp"),
        "-m",
        &calls.to_string(),
        "-r",
        "200",
        "-d",
        &hold_ms.to_string(),
        "-timeout",
        "60",
        "-timeout_error",
    ]
    .map(String::from)
    .to_vec();
    Sipp::spawn(dir, name, &args)
}

fn finish(uac: &mut Sipp, calls: u64) {
    let code = uac.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "sipp UAC failed:\n{}", uac.output_text());
    assert_eq!(uac.stat("SuccessfulCall(C)"), Some(calls));
}

fn uri(port: u16) -> String {
    format!("sip:127.0.0.1:{port}")
}

/// A configuration whose pool is these backends, each a plain URI string.
fn config_text(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(|p| format!("\"{}\"", uri(*p))).collect();
    format!("backends = [{}]\n{HEALTH}", list.join(", "))
}

fn write_config(path: &std::path::Path, ports: &[u16]) {
    std::fs::write(path, config_text(ports)).expect("write config");
}

fn pool_of(ports: &[u16]) -> Pool {
    let specs: Vec<BackendSpec> = ports
        .iter()
        .map(|p| BackendSpec::from_uri(&uri(*p)).expect("numeric URI"))
        .collect();
    Pool::new(&specs).expect("pool")
}

fn reload(proxy: &Sipedge, path: &std::path::Path, ports: &[u16]) {
    reload_text(proxy, path, &config_text(ports));
}

/// Writes `text` as the configuration, sends SIGHUP and waits until the reload is applied.
fn reload_text(proxy: &Sipedge, path: &std::path::Path, text: &str) {
    let series = "sipedge_config_reloads_total{result=\"ok\"}";
    let before = proxy.metric(series);
    std::fs::write(path, text).expect("write config");
    proxy.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.metric(series) <= before {
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which UAS (by port) saw each Call-ID; panics if a call reached two of them.
fn owners(servers: &BTreeMap<u16, Vec<&Sipp>>) -> BTreeMap<String, u16> {
    let mut owner = BTreeMap::new();
    for (&port, logs) in servers {
        for call in logs.iter().flat_map(|s| s.call_ids()) {
            if let Some(other) = owner.insert(call.clone(), port) {
                assert_eq!(other, port, "call {call} reached two backends");
            }
        }
    }
    owner
}

#[test]
fn add_and_remove_backends_under_load() {
    let dir = TempDir::new("balance-reload");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let servers = uases(&dir, &ports);
    let config = dir.path("pool.toml");
    let three = &ports[..3];
    write_config(&config, three);
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            extra: vec!["--config".into(), config.display().to_string()],
            ..SipedgeOptions::default()
        },
    );
    let by_port: BTreeMap<u16, Vec<&Sipp>> = ports
        .iter()
        .zip(&servers)
        .map(|(&p, s)| (p, vec![s]))
        .collect();

    // Calls held for 3 s are up while a fourth backend joins.
    let mut held = uac(&dir, "uac-held", proxy.sip_addr(), 100, 3000);
    std::thread::sleep(Duration::from_millis(1500));
    reload(&proxy, &config, &ports);
    finish(&mut held, 100);
    let owner = owners(&by_port);
    let held_calls = held.call_ids();
    // Every held call (INVITE to BYE) stayed on one of the three original backends.
    for call in &held_calls {
        let port = owner.get(call).copied();
        assert!(
            port.is_some_and(|p| three.contains(&p)),
            "held call {call} on {port:?}"
        );
    }

    // New calls follow the four-member pool exactly; about a quarter moved.
    let (old, new) = (pool_of(three), pool_of(&ports));
    let mut fresh = uac(&dir, "uac-after-add", proxy.sip_addr(), NEW_CALLS, 0);
    finish(&mut fresh, u64::from(NEW_CALLS));
    let owner = owners(&by_port);
    let now = Instant::now();
    let clean = Blacklist::default();
    let port_of = |pool: &Pool, call: &str| -> Option<u16> {
        pool.select(call.as_bytes(), now, &clean)
            .map(|b| b.addr().port())
    };
    let calls: BTreeSet<String> = fresh.call_ids();
    let mut moved = 0usize;
    for call in &calls {
        let actual = owner.get(call).copied();
        assert_eq!(
            actual,
            port_of(&new, call),
            "call {call} not where the pool puts it"
        );
        if actual != port_of(&old, call) {
            moved += 1;
            assert_eq!(
                actual,
                Some(ports[3]),
                "call {call} moved between old members"
            );
        }
    }
    let added_fraction = moved as f64 / calls.len() as f64;
    let fraction = added_fraction;
    assert!(
        (0.25 - 0.10..=0.25 + 0.05).contains(&fraction),
        "{fraction:.3} of new calls moved after adding one of 4"
    );

    // Remove one original backend: only its calls move.
    let remaining = [ports[0], ports[2], ports[3]];
    reload(&proxy, &config, &remaining);
    let after_remove = pool_of(&remaining);
    let mut last = uac(&dir, "uac-after-remove", proxy.sip_addr(), NEW_CALLS, 0);
    finish(&mut last, u64::from(NEW_CALLS));
    let owner = owners(&by_port);
    let calls = last.call_ids();
    let mut moved = 0usize;
    for call in &calls {
        let actual = owner.get(call).copied();
        assert_eq!(actual, port_of(&after_remove, call));
        let before = port_of(&new, call);
        if actual != before {
            assert_eq!(
                before,
                Some(ports[1]),
                "call {call} moved but its backend stayed"
            );
            moved += 1;
        }
    }
    let fraction = moved as f64 / calls.len() as f64;
    assert!(
        fraction <= 0.25 + 0.05,
        "{fraction:.3} of new calls moved after removing one of 4"
    );
    eprintln!(
        "reload: {} held calls kept their backends; {added_fraction:.3} of new calls moved \
         after adding one of 4, {fraction:.3} after removing one",
        held_calls.len()
    );
}

/// Drains backend 1 by reloading it with `weight = 0` while calls are up: it takes no new
/// call from then on, and the calls it holds end on it (their BYEs follow the Record-Route
/// affinity token to it), with no call failing anywhere.
#[test]
fn drain_a_backend_by_weight_zero_under_load() {
    let dir = TempDir::new("balance-drain");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let servers = uases(&dir, &ports);
    let config = dir.path("pool.toml");
    write_config(&config, &ports);
    let proxy = Sipedge::start(
        &dir,
        &SipedgeOptions {
            extra: vec!["--config".into(), config.display().to_string()],
            ..SipedgeOptions::default()
        },
    );

    // Calls held for 3 s are up when backend 1 is drained.
    let mut held = uac(&dir, "uac-held", proxy.sip_addr(), 100, 3000);
    std::thread::sleep(Duration::from_millis(1500));
    let tables: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let weight = u32::from(i != 1);
            format!("{{ uri = \"{}\", weight = {weight} }}", uri(p))
        })
        .collect();
    reload_text(
        &proxy,
        &config,
        &format!("backends = [{}]\n{HEALTH}", tables.join(", ")),
    );
    finish(&mut held, 100);

    // The drained backend ended every call it had: one BYE per INVITE, and it had some.
    let drained = &servers[1];
    let (invites, byes) = (
        drained.count_messages("INVITE "),
        drained.count_messages("BYE "),
    );
    assert!(invites > 0, "backend 1 took no call before the drain");
    assert_eq!(
        byes, invites,
        "a held call's BYE missed the drained backend"
    );

    // New calls: none reach the drained backend; the others share them.
    let mut fresh = uac(&dir, "uac-after-drain", proxy.sip_addr(), 300, 0);
    finish(&mut fresh, 300);
    assert_eq!(
        drained.count_messages("INVITE "),
        invites,
        "the drained backend got a new call"
    );
    let by_port: BTreeMap<u16, Vec<&Sipp>> = ports
        .iter()
        .zip(&servers)
        .map(|(&p, s)| (p, vec![s]))
        .collect();
    let owner = owners(&by_port);
    let fresh_calls = fresh.call_ids();
    let on = |port: u16| {
        fresh_calls
            .iter()
            .filter(|c| owner.get(*c) == Some(&port))
            .count()
    };
    assert_eq!(on(ports[0]) + on(ports[2]), fresh_calls.len());
    assert!(on(ports[0]) > 0 && on(ports[2]) > 0);
    eprintln!(
        "drain: backend 1 ended its {invites} held calls after the drain; new calls {} / 0 / {}",
        on(ports[0]),
        on(ports[2])
    );
}
