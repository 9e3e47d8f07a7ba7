#!/bin/sh
# User-space instructions per call of the whole proxy process (runtime, parser, core, metrics,
# monoio) under callgrind, with sipp as UAC and two sipp UAS on loopback; the same for the raw
# UDP relay in the proxy's place, as the floor. Deterministic enough to compare builds where
# CPU time is too noisy: the counts move by about 1 % run to run (batching depends on timing).
# See perf/README.md.
#   perf/process.sh [--bin-dir DIR] [--base-port P] [--calls N] [--systems "sipedge-2 sipedge-1 relay-2"]
#                   [--rate CALLS_PER_S] [--warmup N] [--startup SECONDS] [--keep DIR]
# The test suite runs it briefly on the debug build (tests/perf_callgrind_smoke.rs).
set -eu
cd "$(dirname "$0")/.."
BIN_DIR=target/release
BASE=7060
CALLS=1000
SYSTEMS="sipedge-2 sipedge-1 relay-2"
RATE=100
WARMUP=300
STARTUP=6
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --base-port) BASE=$2; shift 2 ;;
        --calls) CALLS=$2; shift 2 ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --startup) STARTUP=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        *) echo "usage: $0 [--bin-dir DIR] [--base-port P] [--calls N] [--systems LIST] [--rate R] [--warmup N] [--startup S] [--keep DIR]" >&2; exit 2 ;;
    esac
done
for tool in valgrind callgrind_control callgrind_annotate; do
    command -v $tool >/dev/null || { echo "$tool missing: apt-get install -y valgrind" >&2; exit 1; }
done
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
if [ "$BIN_DIR" = target/release ]; then
    cargo build --release --bins --quiet
fi
for b in sipedge udp-relay; do
    [ -x "$BIN_DIR/$b" ] || { echo "$BIN_DIR/$b missing" >&2; exit 1; }
done

WORK=$(mktemp -d)
PIDS=""
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    # --keep: the callgrind profiles, for callgrind_annotate.
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK"/*.cg.* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PROXY=$BASE
UAS_A=$((BASE + 10))
UAS_B=$((BASE + 11))
UAC=$((BASE + 30))
METRICS=$((BASE + 40))

# Two sipp UAS behind the proxy, answering every INVITE with 180 + 200. In `-bg` mode sipp
# exits 99 after printing the PID of the process it left running.
for port in $UAS_A $UAS_B; do
    p=$(sipp -sn uas -i 127.0.0.1 -p $port -mp $((BASE + 100 + 100 * (port - UAS_A))) -nostdin -aa -bg 2>&1 |
        sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' || true)
    [ -n "$p" ] || { echo "sipp UAS on $port did not start" >&2; exit 1; }
    PIDS="$PIDS $p"
done
sleep 0.5

uac() {
    sipp -sn uac "127.0.0.1:$PROXY" -i 127.0.0.1 -p $UAC -mp $((BASE + 300)) -r "$RATE" -m "$1" -nr \
        -recv_timeout 3000 -nostdin >"$WORK/uac.log" 2>&1 || true
    sed -n 's/^ *Successful call *| *[0-9]* *| *\([0-9]*\).*/\1/p' "$WORK/uac.log" | tail -1
}

# Prints "system instructions-per-call successful-calls".
measure() {
    name=$1
    shift
    out="$WORK/$name.cg"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.log" 2>&1 &
    vg=$!
    PIDS="$PIDS $vg"
    sleep "$STARTUP"
    # Warm-up: connections, tables and caches as in steady state; then count from zero.
    uac "$WARMUP" >/dev/null
    callgrind_control -z $vg >/dev/null 2>&1
    ok=$(uac "$CALLS")
    callgrind_control -d $vg >/dev/null 2>&1
    sleep 1
    kill -9 $vg 2>/dev/null || true
    wait $vg 2>/dev/null || true
    total=$(for f in "$out".*; do callgrind_annotate "$f" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p'; done |
        tr -d , | awk '{ s += $1 } END { print s + 0 }')
    if [ "${ok:-0}" -eq 0 ] || [ "$total" -eq 0 ]; then
        echo "$name: no call completed or nothing counted (calls ${ok:-0}, instructions $total)" >&2
        tail -n 20 "$WORK/uac.log" "$WORK/$name.log" >&2
        return 1
    fi
    echo "$name $((total / ok)) $ok"
}

echo "| system | user instructions per call | calls |"
echo "|---|---|---|"
for s in $SYSTEMS; do
    case "$s" in
        sipedge-*)
            shards=${s#sipedge-}
            set -- "$BIN_DIR/sipedge" --listen "udp:127.0.0.1:$PROXY" --shards "$shards" \
                --metrics "127.0.0.1:$METRICS" --backend "sip:127.0.0.1:$UAS_A" \
                --backend "sip:127.0.0.1:$UAS_B" --drain-grace 0 --log-level warn ;;
        relay-*)
            threads=${s#relay-}
            set -- "$BIN_DIR/udp-relay" --listen "127.0.0.1:$PROXY" --threads "$threads" \
                --backend "127.0.0.1:$UAS_A" --backend "127.0.0.1:$UAS_B" ;;
        *) echo "unknown system $s" >&2; exit 2 ;;
    esac
    row=$(measure "$s" "$@") || exit 1
    echo "$row" | awk '{ printf "| %s | %d | %d |\n", $1, $2, $3 }'
done
