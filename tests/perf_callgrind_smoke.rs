//! Smoke runs of the two callgrind scripts, so they cannot rot unseen: `perf/hotpath.sh`
//! (instructions per message of the sans-IO path, on the hotpath bench built by
//! `cargo test --all-targets`) and `perf/process.sh` (user instructions per call of the whole
//! proxy process, sipp through sipedge and through the raw relay). Both on the debug build
//! and briefly: the counts mean nothing here, only that every case was counted. Needs valgrind
//! (Debian `valgrind`) and sipp (Debian `sip-tester`).

mod common;

use std::path::{Path, PathBuf};

use common::{require, run_perf_script};

/// Ports 43060..43460 (proxy, backends +10/+11, UAC +30, metrics +40, sipp media from +100):
/// a range no other test of this crate uses.
const BASE_PORT: &str = "43060";

/// The binary directory of this build (`target/debug`).
fn bin_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sipedge"))
        .parent()
        .expect("binary has a directory")
}

/// The newest `hotpath` bench binary of this build: `cargo test --all-targets` builds the
/// benches in test mode under `deps/`. (A nested `cargo` would wait on the build lock the
/// running `cargo test` holds.)
fn hotpath_bench() -> PathBuf {
    let deps = bin_dir().join("deps");
    let newest = std::fs::read_dir(&deps)
        .expect("deps directory")
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("hotpath-") && !name.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    match newest {
        Some((_, path)) => path,
        None => panic!(
            "no hotpath bench binary in {}: run the suite with `cargo test --all-targets`",
            deps.display()
        ),
    }
}

/// The number in the second cell of the markdown table row `| name | number | … |`.
fn count_in_table(stdout: &str, name: &str) -> Option<i64> {
    stdout.lines().find_map(|line| {
        let mut cells = line.split('|').map(str::trim).skip(1);
        (cells.next()? == name).then_some(())?;
        cells.next()?.parse().ok()
    })
}

#[test]
fn hotpath_script_counts_every_case() {
    require("valgrind", "valgrind");
    let bench = hotpath_bench();
    let (stdout, _) = run_perf_script(
        "hotpath.sh",
        &["--smoke".as_ref(), "--bin".as_ref(), bench.as_os_str()],
    );
    for case in [
        "invite",
        "180",
        "200_invite",
        "ack",
        "bye",
        "200_bye",
        "register",
        "invite_unsteered",
        "parse_invite",
        "select_backend",
        "blacklist_lookup",
    ] {
        assert!(
            count_in_table(&stdout, case).is_some_and(|c| c > 0),
            "no positive instruction count for {case}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("PROGRAM TOTALS"),
        "the INVITE profile is missing:\n{stdout}"
    );
}

#[test]
fn process_script_counts_calls_through_sipedge_and_the_relay() {
    require("valgrind", "valgrind");
    require("callgrind_control", "valgrind");
    require("sipp", "sip-tester");
    // The debug build under callgrind keeps up with a few calls a second.
    let bin_dir = bin_dir().to_string_lossy().into_owned();
    let (stdout, stderr) = run_perf_script(
        "process.sh",
        &[
            "--bin-dir",
            &bin_dir,
            "--base-port",
            BASE_PORT,
            "--systems",
            "sipedge-2 relay-2",
            "--calls",
            "10",
            "--warmup",
            "5",
            "--rate",
            "5",
            "--startup",
            "8",
        ],
    );
    for system in ["sipedge-2", "relay-2"] {
        assert!(
            count_in_table(&stdout, system).is_some_and(|c| c > 0),
            "no instructions per call for {system}:\n{stdout}\n{stderr}"
        );
    }
}
