#!/usr/bin/env python3
"""Requests a proxy must refuse: what each one costs it, and whether calls beside them suffer.

A carrier's edge proxy takes scanner probes and broken clients all day. sipedge-loadgen's
`--junk-rate` sends, in turn, an INVITE with Max-Forwards 0, one without a Call-ID, one whose
CSeq method is not its own, and an HTTP probe (see `Junk` in src/bin/sipedge-loadgen.rs). For
each proxy, in rounds with the systems interleaved (sipedge-loadgen -> proxy ->
sipedge-responder, all on loopback):

  1. junk alone at --junk-rate for --seconds: the proxy's CPU per junk request (scheduler run
     time, /proc/PID/task/*/schedstat) and what each kind got back;
  2. calls alone at --call-rate, then the same calls with the junk beside them: calls lost and
     the INVITE -> 200 p99 of each.

  perf/junk.py                      writes `## Junk traffic` in perf/RESULTS.md
  perf/junk.py --smoke              one short round, printed only (tests/perf_smoke.rs)
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (perf/bench.py: process control and load generator runs)

KINDS = ("max_forwards_0", "no_call_id", "cseq_method_mismatch", "not_sip")


def one_round(s, name, a):
    proxy = bench.start_system(s, name)
    try:
        junk = ["--junk-rate", str(a.junk_rate)]
        m = bench.Measure(proxy)
        alone = bench.run_loadgen(s, s.port, 0, 0, a.seconds, extra=junk)
        cpu = m.done(max(alone["junk_sent"], 1))
        calls = bench.run_loadgen(s, s.port, a.call_rate, a.call_rate * a.seconds, a.seconds)
        beside = bench.run_loadgen(s, s.port, a.call_rate, a.call_rate * a.seconds, a.seconds, extra=junk)
    finally:
        proxy.stop()
    if not alone["junk_sent"]:
        raise bench.Fatal(f"{name}: the load generator sent no junk")
    return {
        "junk_sent": alone["junk_sent"],
        "us_per_junk": cpu["cpu_sched_s"] / alone["junk_sent"] * 1e6,
        "replies": alone["junk_replies"],
        "stray": alone["junk_stray"],
        "calls": (calls["started"], calls["completed"], calls["invite_rtt_us"]["p99"]),
        "beside": (beside["started"], beside["completed"], beside["invite_rtt_us"]["p99"], beside["junk_sent"]),
    }


def answered(replies, kind, sent):
    """`483 × 250 (of 250)`: what one kind got back. The kinds are sent in turn, `KINDS` order."""
    position = KINDS.index(kind)
    of = sent // len(KINDS) + (1 if position < sent % len(KINDS) else 0)
    by_status = replies.get(kind, {})
    if not by_status:
        return f"nothing (of {of})"
    return ", ".join(f"{status} × {n}" for status, n in sorted(by_status.items())) + f" (of {of})"


def render(a, res, cmd, date):
    kam = res.get("kamailio-n2")
    kam_us = statistics.median(r["us_per_junk"] for r in kam) if kam else None
    m = bench.machine()
    lines = [
        "## Junk traffic", "",
        f"Run {date} with `{cmd}`. Machine: {m['nproc']} vCPU ({m['cpu']}), kernel {m['kernel']}, "
        f"{m['kamailio']}, load average at the start {m['loadavg_start']}. sipedge's shards `--scheduling "
        f"{a.scheduling}`; Kamailio runs `../shared/reference/kamailio.cfg` as in `## Side by side`.",
        "",
        f"sipedge-loadgen sends {a.junk_rate:g} requests/s that a proxy must refuse (`--junk-rate`: "
        "Max-Forwards 0, no Call-ID, a CSeq method not the request's, an HTTP probe; in turn) for "
        f"{a.seconds} s: the proxy's CPU per junk request (scheduler run time) and what each kind got back. "
        f"Then {a.call_rate} calls/s for {a.seconds} s alone and again beside the same junk: calls lost and "
        f"INVITE→200 p99. Rounds: {a.rounds}, systems interleaved; the median round's CPU, every round's in the last column.",
        "",
        "| system | CPU µs per junk request | × Kamailio | " + " | ".join(f"`{k}` answered" for k in KINDS)
        + " | calls lost alone / beside junk | INVITE→200 p99 µs alone / beside | µs per junk request, each round |",
        "|---|---|---|" + "---|" * len(KINDS) + "---|---|---|",
    ]
    for name, rounds in res.items():
        us = statistics.median(r["us_per_junk"] for r in rounds)
        mid = min(rounds, key=lambda r: abs(r["us_per_junk"] - us))
        ratio = f"{us / kam_us:.2f}×" if kam_us else "–"
        lost_alone = sum(r["calls"][0] - r["calls"][1] for r in rounds)
        lost_beside = sum(r["beside"][0] - r["beside"][1] for r in rounds)
        started = sum(r["calls"][0] for r in rounds)
        started_beside = sum(r["beside"][0] for r in rounds)
        p99 = f"{statistics.median(r['calls'][2] for r in rounds):.0f} / {statistics.median(r['beside'][2] for r in rounds):.0f}"
        lines.append(
            f"| {name} | {us:.1f} | {ratio} | "
            + " | ".join(answered(mid["replies"], k, mid["junk_sent"]) for k in KINDS)
            + f" | {lost_alone} of {started} / {lost_beside} of {started_beside} | {p99} | "
            + " / ".join(f"{r['us_per_junk']:.1f}" for r in rounds) + " |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = bench.scenario_arguments(__doc__, base_port=5260, seconds=5, rounds=5,
                                  smoke="one round of one second")
    ap.add_argument("--junk-rate", type=float, default=4000, help="junk requests per second")
    ap.add_argument("--call-rate", type=int, default=1000, help="calls per second beside the junk")
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.seconds, a.junk_rate, a.call_rate = 1, 1, 400, 200

    return bench.run_scenario(
        "junk", a, "## Junk traffic", cases=lambda systems: systems,
        one=lambda s, name: one_round(s, name, a),
        describe=lambda name, r: (f"{name}: {r['us_per_junk']:.1f} µs per junk request, calls "
                                  f"{r['calls'][1]}/{r['calls'][0]} alone, {r['beside'][1]}/{r['beside'][0]} beside junk"),
        render=lambda res, cmd, date: render(a, res, cmd, date), setup=bench.start_responder)


if __name__ == "__main__":
    sys.exit(main())
