#!/usr/bin/env python3
"""One of two backends dies under load: how many calls each proxy loses.

sipedge-loadgen at --rate calls/s -> proxy -> two sipedge-responder processes, one per backend
port; after a third of the run one responder is

  * killed (SIGTERM: its port closes, so the kernel answers datagrams to it with ICMP port
    unreachable, as a host whose SIP server crashed does), or
  * hung (SIGSTOP: the port stays open and swallows datagrams silently, as a wedged server or a
    host gone from the network does).

The load generator waits --timeout-ms for each call (longer than sipedge's INVITE failover
timeout, so a call moved to the other backend counts as completed, with its delay in the
INVITE -> 200 p99). Kamailio runs `../shared/reference/kamailio.cfg` (dispatcher, dst
blocklist) as in `## Side by side`. Rounds with the systems interleaved; every process is
stopped by PID.

  perf/failover.py                  writes `## A backend dies` in perf/RESULTS.md
  perf/failover.py --smoke          one short round, printed only (tests/perf_smoke.rs)
"""
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (perf/bench.py: process control and load generator runs)

MODES = ("killed", "hung")


def start_backend(s, port, name):
    p = bench.Proc(name, [s.exe("sipedge-responder"), "--listen", f"127.0.0.1:{port}"], s.workdir)
    bench.wait_bound(p, port)
    return p


def one_round(s, name, mode, a):
    backends = [start_backend(s, port, f"responder-{i}") for i, port in enumerate(s.backends)]
    proxy = bench.start_system(s, name)
    victim = backends[1]
    called_off = threading.Event()

    def strike():
        # Not once the round is over: the PID may belong to another process by then.
        if not called_off.wait(a.seconds / 3) and victim.alive():
            os.kill(victim.pid, signal.SIGTERM if mode == "killed" else signal.SIGSTOP)

    striker = threading.Thread(target=strike)
    striker.start()
    try:
        # Room for every call of the run to be waiting at once: calls the dead backend swallows
        # hold their place until they time out, and must not keep the next ones from starting.
        window = a.rate * (a.timeout_ms // 1000 + 1)
        r = bench.run_loadgen(s, s.port, a.rate, a.rate * a.seconds, a.seconds, window=window,
                              extra=["--timeout-ms", str(a.timeout_ms)])
    finally:
        called_off.set()
        striker.join()
        if mode == "hung" and victim.alive():
            os.kill(victim.pid, signal.SIGCONT)
        proxy.stop()
        for b in backends:
            b.stop()
    return {"started": r["started"], "completed": r["completed"], "failed": r["failed"],
            "timed_out": r["timed_out"], "p90": r["invite_rtt_us"]["p90"], "p99": r["invite_rtt_us"]["p99"],
            "max": r["invite_rtt_us"]["max"]}


def render(a, res, cmd, date):
    m = bench.machine()
    lines = [
        "## A backend dies", "",
        f"Run {date} with `{cmd}`. Machine: {m['nproc']} vCPU ({m['cpu']}), kernel {m['kernel']}, "
        f"{m['kamailio']}, load average at the start {m['loadavg_start']}. sipedge at its defaults "
        "(INVITE failover `timeout_ms = 2000`, health probes, shared blacklist); Kamailio runs "
        "`../shared/reference/kamailio.cfg` (dispatcher by Call-ID hash, dst blocklist).",
        "",
        f"sipedge-loadgen at {a.rate} calls/s for {a.seconds} s → proxy → two sipedge-responder processes; "
        f"after {a.seconds / 3:.1f} s one of them is killed (SIGTERM: the port closes and the kernel answers "
        "with ICMP port unreachable) or hung (SIGSTOP: the port swallows datagrams, no answer at all). "
        f"Each call has {a.timeout_ms / 1000:g} s to finish; a call moved to the other backend counts as completed "
        f"and shows in the INVITE→200 tail. Rounds: {a.rounds}, systems interleaved; sums over the rounds. "
        "A hung backend costs sipedge the failover timeout once per call sent to it before the first such "
        "timeout blocked it for new calls (the shared blacklist), which is the p99; a killed one costs nothing "
        "that shows, as its ICMP errors block it at once. The reference configuration probes no backend "
        "(`ds_ping_interval=0`) and forwards statelessly, so Kamailio keeps sending a dead backend its share "
        "of the calls: this is the reference's figure, not the best Kamailio can be configured to do.",
        "",
        "| system | backend | calls started | completed | failed (final ≥ 300) | timed out | lost | INVITE→200 p90 / p99 / max µs, each round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, mode), rounds in res.items():
        started = sum(r["started"] for r in rounds)
        completed = sum(r["completed"] for r in rounds)
        failed = sum(r["failed"] for r in rounds)
        timed_out = sum(r["timed_out"] for r in rounds)
        lost = started - completed
        pct = 100 * lost / started if started else 0
        tails = "; ".join(f"{r['p90']:,} / {r['p99']:,} / {r['max']:,}" for r in rounds)
        lines.append(f"| {name} | {mode} | {started:,} | {completed:,} | {failed:,} | {timed_out:,} | "
                     f"{lost:,} ({pct:.2f} %) | {tails} |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = bench.scenario_arguments(__doc__, base_port=5360, seconds=9, rounds=3,
                                  smoke="one round of three seconds at 200 calls/s")
    ap.add_argument("--modes", default=",".join(MODES), help="subset of: " + ", ".join(MODES))
    ap.add_argument("--rate", type=int, default=1000, help="calls per second")
    ap.add_argument("--timeout-ms", type=int, default=5000, help="how long the load generator waits for a call")
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.seconds, a.rate = 1, 3, 200
    modes = a.modes.split(",")
    if any(mode not in MODES for mode in modes):
        print(f"failover: --modes takes {', '.join(MODES)}", file=sys.stderr)
        return 2

    return bench.run_scenario(
        "failover", a, "## A backend dies",
        cases=lambda systems: [(name, mode) for mode in modes for name in systems],
        one=lambda s, case: one_round(s, *case, a),
        describe=lambda case, r: (f"{case[0]} {case[1]}: {r['completed']} of {r['started']} calls completed, "
                                  f"{r['failed']} failed, {r['timed_out']} timed out"),
        render=lambda res, cmd, date: render(a, res, cmd, date))


if __name__ == "__main__":
    sys.exit(main())
