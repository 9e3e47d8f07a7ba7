#!/bin/sh
# Side-by-side benchmark of sipedge, Kamailio and the UDP floor. See perf/README.md.
#   perf/run.sh            full run (about 10 minutes), rewrites `## Side by side` in perf/RESULTS.md
#   perf/run.sh --smoke    a few seconds per scenario (the test suite runs this)
# Without --bin-dir it builds and uses the release binaries.
set -eu
cd "$(dirname "$0")/.."
case " $* " in
  *" --bin-dir "*) ;;
  *) cargo build --release --bins --quiet
     set -- --bin-dir "${CARGO_TARGET_DIR:-target}/release" "$@" ;;
esac
SIPEDGE_BENCH_VIA_RUN_SH=1 exec python3 perf/bench.py "$@"
