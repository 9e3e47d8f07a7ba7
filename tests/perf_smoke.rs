//! Smoke run of the side-by-side benchmark (`perf/run.sh --smoke`): every scenario of the
//! full run (sipp floor, raw UDP relay, Kamailio, sipedge with 1 and 2 shards, the load
//! generator's ceiling runs, TCP) for about a second each, so the scripts cannot rot unseen.
//! It checks that each scenario carried calls end to end; the figures themselves mean nothing
//! at this length. Needs sipp (Debian `sip-tester`), kamailio (Debian `kamailio`) and python3.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::{require, run_perf_script};

/// Ports 41060..41460 (proxy, backends +10/+11, UAC +30, sipp media from +100): a range no
/// other test of this crate uses.
const BASE_PORT: &str = "41060";

/// The two tests take turns: the A/B smoke run spins a CPU-bound process on every CPU, which
/// the side-by-side smoke run should not have to share the machine with.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn number(json: &str, key: &str) -> Vec<f64> {
    let needle = format!("\"{key}\": ");
    json.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &json[at + needle.len()..];
            let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
            rest[..end].trim().parse().ok()
        })
        .collect()
}

/// Where this build's binaries are: sipedge and, built with the test beside it, the load
/// generator, the responder and the raw relay the scripts drive.
fn built_bin_dir() -> &'static Path {
    let _ = (
        env!("CARGO_BIN_EXE_udp-relay"),
        env!("CARGO_BIN_EXE_sipedge-loadgen"),
        env!("CARGO_BIN_EXE_sipedge-responder"),
    );
    Path::new(env!("CARGO_BIN_EXE_sipedge"))
        .parent()
        .expect("binary has a directory")
}

#[test]
fn perf_scripts_smoke_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require("sipp", "sip-tester");
    require("kamailio", "kamailio");
    require("python3", "python3");
    let bin_dir = built_bin_dir();
    let json_path =
        std::env::temp_dir().join(format!("sipedge-perf-smoke-{}.json", std::process::id()));
    let (stdout, _) = run_perf_script(
        "run.sh",
        &[
            "--smoke".as_ref(),
            "--bin-dir".as_ref(),
            bin_dir.as_os_str(),
            "--base-port".as_ref(),
            BASE_PORT.as_ref(),
            "--json".as_ref(),
            json_path.as_os_str(),
        ],
    );
    let json = std::fs::read_to_string(&json_path).expect("raw results written");
    let _ = std::fs::remove_file(&json_path);

    // Every system answered calls under sipp over UDP and TCP.
    for system in ["direct", "relay", "kamailio-n2", "sipedge-1", "sipedge-2"] {
        assert!(
            json.contains(&format!("\"{system}\"")),
            "no result for {system}:\n{stdout}"
        );
    }
    let successful = number(&json, "successful");
    // UDP search (5 systems) + TCP search (3); the smoke run has no fixed-rate phase.
    assert!(
        successful.len() >= 8,
        "too few sipp runs: {successful:?}\n{stdout}"
    );
    assert!(
        successful.iter().all(|&n| n > 0.0),
        "a sipp run completed no call: {successful:?}\n{stdout}"
    );
    // The load generator completed calls in every latency and ceiling run, and sipedge
    // delivered the replies of each call in order.
    let completed = number(&json, "completed");
    assert!(
        completed.len() >= 5 + 6,
        "too few load generator runs: {completed:?}\n{stdout}"
    );
    assert!(
        completed.iter().all(|&n| n > 0.0),
        "a load generator run completed no call: {completed:?}\n{stdout}"
    );
    // The report names each target row, so the rendering ran to the end.
    assert!(
        stdout.contains("### Targets (issue 8)"),
        "report incomplete:\n{stdout}"
    );
}

/// Runs `perf/ab.py --smoke` with `extra` on this build and returns its output and the cells
/// of its one pair row, after checking what every pair must show: both sides with completed
/// calls and a CPU figure, and the summary line.
fn ab_smoke_pair(extra: &[&str]) -> (String, Vec<String>) {
    let bin_dir = built_bin_dir();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--smoke".as_ref(),
        "--a-bin-dir".as_ref(),
        bin_dir.as_os_str(),
        "--base-port".as_ref(),
        "41560".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let (stdout, _) = run_perf_script("ab.py", &args);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap_or_else(|| panic!("no pair row:\n{stdout}"));
    let cells: Vec<String> = row.split('|').map(|c| c.trim().to_owned()).collect();
    let a: f64 = cells[2].parse().unwrap_or(0.0);
    let b: f64 = cells[3].parse().unwrap_or(0.0);
    assert!(a > 0.0 && b > 0.0, "no CPU per call measured: {row}");
    assert!(
        !cells[5].starts_with("0 /") && !cells[5].contains("/ 0 of"),
        "a side completed no call: {row}"
    );
    assert!(stdout.contains("median B ÷ A:"), "no summary:\n{stdout}");
    (stdout, cells)
}

/// Processes still running the neighbours' busy loop (`perf/ab.py --neighbour`).
fn spinning_neighbours() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains("while time.time() < end"))
        .count()
}

/// `perf/ab.py --smoke`: one short pair of the same build, so the A/B script cannot rot unseen;
/// then one pair of the two scheduling policies with a busy neighbour on every CPU.
/// Ports 41560..41760, beside the range of the test above.
#[test]
fn ab_script_smoke_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require("sipp", "sip-tester");
    require("python3", "python3");
    ab_smoke_pair(&[]);

    // The load generator's pair with a busy neighbour on every CPU, one policy each: both
    // sides give a round trip, and no spinning neighbour outlives the script.
    let (stdout, cells) = ab_smoke_pair(&[
        "--load",
        "loadgen",
        "--neighbour",
        "--a-scheduling",
        "normal",
        "--b-scheduling",
        "batch",
    ]);
    let p99s: Vec<u64> = cells[6]
        .split(" / ")
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        p99s.len() == 2 && p99s.iter().all(|&v| v > 0),
        "no round trip for both sides: {cells:?}"
    );
    assert!(
        stdout.contains("a CPU-bound process on every CPU"),
        "{stdout}"
    );
    assert_eq!(spinning_neighbours(), 0, "a neighbour outlived perf/ab.py");
}

/// Runs `perf/SCRIPT --smoke` (a scenario script: sipedge and Kamailio, the load generator and
/// responder) on this build with its proxy on `base_port`, and returns its output.
fn scenario_smoke_run(script: &str, base_port: &str) -> String {
    require("kamailio", "kamailio");
    require("python3", "python3");
    let bin_dir = built_bin_dir();
    let (stdout, _) = run_perf_script(
        script,
        &[
            "--smoke".as_ref(),
            "--bin-dir".as_ref(),
            bin_dir.as_os_str(),
            "--base-port".as_ref(),
            base_port.as_ref(),
        ],
    );
    stdout
}

/// The cells of the report's table row that starts with `| {first} |`.
fn table_row(stdout: &str, first: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {first} |")))
        .unwrap_or_else(|| panic!("no row for {first}:\n{stdout}"));
    line.split('|').map(|c| c.trim().to_owned()).collect()
}

/// `perf/junk.py --smoke`: one short round of requests a proxy must refuse, against sipedge
/// and Kamailio. sipedge must answer each SIP kind with its RFC 3261 status, send nothing back
/// to the HTTP probe, and lose no call of the load beside the junk.
#[test]
fn junk_script_smoke_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stdout = scenario_smoke_run("junk.py", "41660");
    let sipedge = table_row(&stdout, "sipedge-2");
    let kamailio = table_row(&stdout, "kamailio-n2");
    for cells in [&sipedge, &kamailio] {
        let us: f64 = cells[2].parse().unwrap_or(0.0);
        assert!(us > 0.0, "no CPU per junk request measured: {cells:?}");
    }
    // Columns: max_forwards_0, no_call_id, cseq_method_mismatch, not_sip.
    assert!(sipedge[4].starts_with("483 × "), "{sipedge:?}");
    assert!(sipedge[5].starts_with("400 × "), "{sipedge:?}");
    assert!(sipedge[6].starts_with("400 × "), "{sipedge:?}");
    assert!(sipedge[7].starts_with("nothing"), "{sipedge:?}");
    for answered in &sipedge[4..7] {
        let (got, of) = answered
            .split_once(" × ")
            .and_then(|(_, rest)| rest.split_once(" (of "))
            .unwrap_or_else(|| panic!("unreadable cell {answered}"));
        assert_eq!(
            got,
            of.trim_end_matches(')'),
            "a junk request went unanswered: {answered}"
        );
    }
    let lost = &sipedge[8];
    assert!(
        lost.starts_with("0 of ") && lost.contains(" / 0 of ") && !lost.contains("0 of 0"),
        "calls lost or none run: {lost}"
    );
}

/// `perf/failover.py --smoke`: one short round per way a backend dies (killed, hung) under
/// sipedge and Kamailio. sipedge must lose (almost) no call: the killed backend's ICMP errors
/// and the hung one's silence both move its calls to the other. Kamailio with the reference
/// configuration loses the calls hashed to the dead backend, which shows the backend did die.
#[test]
fn failover_script_smoke_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stdout = scenario_smoke_run("failover.py", "41760");
    // (started, lost) of a row.
    let counts = |system: &str, mode: &str| -> (u64, u64) {
        let cells = table_row(&stdout, &format!("{system} | {mode}"));
        let count = |cell: &str| -> u64 {
            cell.split_whitespace()
                .next()
                .and_then(|n| n.replace(',', "").parse().ok())
                .unwrap_or_else(|| panic!("unreadable cell {cell} in {cells:?}"))
        };
        (count(&cells[3]), count(&cells[7]))
    };
    for mode in ["killed", "hung"] {
        let (started, lost) = counts("sipedge-2", mode);
        assert!(started > 0, "no call started ({mode})");
        // A call in flight when the backend is killed may lose its BYE: at most a handful.
        assert!(
            lost * 100 <= started,
            "sipedge lost {lost} of {started} ({mode})"
        );
        let (started, lost) = counts("kamailio-n2", mode);
        assert!(
            started > 0 && lost > 0,
            "the backend did not die ({mode}): Kamailio lost none"
        );
    }
}
