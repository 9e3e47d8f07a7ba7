#!/bin/sh
# Instruction counts of the sans-IO per-message path under callgrind (deterministic), and the
# functions that cost the most for an INVITE. See perf/README.md.
#   perf/hotpath.sh             rewrites `## Hot path` in perf/RESULTS.md
#   perf/hotpath.sh --print     prints the section only
#   perf/hotpath.sh --smoke     a short run of the debug build, printed (tests/perf_callgrind_smoke.rs)
#   --bin PATH                  the hotpath bench binary to run instead of building it
set -eu
cd "$(dirname "$0")/.."
MODE=write
BIN=
while [ $# -gt 0 ]; do
    case "$1" in
        --print) MODE=print; shift ;;
        --smoke) MODE=smoke; shift ;;
        --bin) BIN=$2; shift 2 ;;
        *) echo "usage: $0 [--print | --smoke] [--bin PATH]" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install -y valgrind" >&2; exit 1; }
# The figures come from the release profile; the smoke run takes the quicker debug build.
BUILD=bench
[ "$MODE" = smoke ] && BUILD=test
if [ -z "$BIN" ]; then
    BIN=$(cargo $BUILD --bench hotpath --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["name"] == "hotpath":
        print(j["executable"])' | tail -1)
fi
[ -x "$BIN" ] || { echo "could not build the hotpath bench" >&2; exit 1; }
# Instructions per message = (count of 2 N runs - count of N runs) / N.
N=1000
[ "$MODE" = smoke ] && N=20
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Instructions of `--instructions CASE N`; fails when callgrind reports no count.
ir() {
    count=$(valgrind --tool=callgrind --callgrind-out-file="$WORK/$1.$2.out" "$BIN" --instructions "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    [ -n "$count" ] || { echo "callgrind counted nothing for $1 $2" >&2; exit 1; }
    echo "$count"
}

CASES="invite 180 200_invite ack bye 200_bye register invite_unsteered parse_invite parse_invite_extra_lines select_backend blacklist_lookup"
{
    echo "## Hot path"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`perf/hotpath.sh\`: valgrind $(valgrind --version | sed 's/valgrind-//') callgrind,"
    echo "release profile (\`cargo bench\`: LTO, one codegen unit), $(nproc) vCPU, kernel $(uname -r)."
    echo "Instructions per message = (instructions of $((2 * N)) runs - of $N) / $N, so set-up cancels out;"
    echo "identical run to run. \`handle_inbound\` cases run the \`Core\` of the shard owning the call (2 shards, two UDP backends; the ownership check counts:"
    echo "by the parsed Call-ID, as on a kernel-steered socket, except \`invite_unsteered\`, which pays the Call-ID scan before the parse) on the"
    echo "messages of one sipp-shaped call (INVITE with SDP from the client, 180/200 from the backend with our Via,"
    echo "ACK, BYE, 200) and the RFC 3261 §24.1 REGISTER; each is checked to be forwarded before it is counted."
    echo "Wall-clock figures for the same cases: \`cargo bench --bench hotpath\`."
    echo
    echo "| case | instructions per message | bytes in |"
    echo "|---|---|---|"
    for c in $CASES; do
        a=$(ir "$c" $N)
        b=$(ir "$c" $((2 * N)))
        echo "$c $(( (b - a) / N ))" >> "$WORK/counts"
        echo "| $c | $(( (b - a) / N )) | $("$BIN" --size "$c") |"
    done
    echo
    awk '$1 == "invite" { i = $2 } $1 == "parse_invite" { p = $2 }
         $1 == "parse_invite_extra_lines" { x = $2 }
         END { printf "Parsing alone is %d %% of an INVITE'"'"'s path; the rest is the route decision, the branch MAC and the rewrite.\n", 100 * p / i
               printf "One more header line the proxy only carries (`X-Trace-N: carried as written`, 31 bytes) costs the parser %d instructions: `parse_invite_extra_lines` is the INVITE with 10 of them.\n", (x - p) / 10 }' "$WORK/counts"
    echo
    echo "Where an INVITE's instructions go (callgrind, self cost, $((2 * N)) runs, top 15 functions):"
    echo
    echo '```'
    callgrind_annotate --threshold=99 "$WORK/invite.$((2 * N)).out" 2>/dev/null | sed -n '/^Ir/,$p' | head -22 |
        sed 's/ *\[[^]]*\]$//' | cut -c1-150
    echo '```'
    echo
} > "$WORK/section.md"

if [ "$MODE" != write ]; then
    cat "$WORK/section.md"
    exit 0
fi
python3 - "$WORK/section.md" <<'EOF'
import os, sys
section = open(sys.argv[1]).read()
path = "perf/RESULTS.md"
text = open(path).read() if os.path.exists(path) else "# sipedge performance results\n\n"
# The heading at the start of a line: the text elsewhere mentions "`## Hot path`" in passing.
start = text.find("\n## Hot path\n") + 1
if start == 0 and text.startswith("## Hot path\n"):
    start = 0
elif start == 0:
    start = -1
if start < 0:
    text = text.rstrip("\n") + "\n\n" + section
else:
    end = text.find("\n## ", start + 3)
    text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
open(path, "w").write(text)
print(section)
EOF
