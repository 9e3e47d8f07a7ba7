#!/usr/bin/env python3
"""A/B of two sipedge builds (or one build with two sets of options): CPU per call in pairs.

Each pair runs A and B one after the other at the same fixed rate (sipp UAC -> sipedge -> two
sipp UAS, or sipedge-loadgen -> sipedge -> sipedge-responder), each in a fresh process, and
divides B's scheduler run time per call by A's. The order within a pair alternates, so a
drift of the shared machine favours neither side. The report is every pair's ratio, their
median and how many pairs B won: on a noisy machine a few percent shows only as a majority
of pairs, never as one run. See perf/README.md.

  perf/ab.py --b-bin-dir /path/to/other/build            two builds, sipp at 1,000 calls/s
  perf/ab.py --b-driver epoll                            one build, io_uring against epoll
  perf/ab.py --b-args "--config other.toml"              one build, two option sets
  perf/ab.py --load loadgen --rate 8000 --pairs 6         near the ceiling
  perf/ab.py --a-scheduling normal --b-scheduling batch  one build, two scheduling policies
  perf/ab.py --system relay-2 --a-scheduling normal ...  the raw relay (or kamailio-n2) instead
  perf/ab.py --load loadgen --neighbour ...              with a CPU-bound process on every CPU
  perf/ab.py --smoke ...                                  one short pair (the test suite)
"""
import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (perf/bench.py: process control, sipp and load generator runs)


def start_proxy(s, args, bin_dir, extra, scheduling):
    """The system under test, from `bin_dir`, with `extra` options and `scheduling` (None: as
    the build or configuration has it)."""
    if args.system == "sipedge":
        exe = os.path.join(os.path.abspath(bin_dir), "sipedge")
        if not os.access(exe, os.X_OK):
            raise bench.Fatal(f"{exe} missing: build it first (cargo build --release --bins)")
        policy = ["--scheduling", scheduling] if scheduling else []
        return bench.start_sipedge(s, args.shards, None, "udp", exe=exe, extra=shlex.split(extra) + policy)
    if args.system.startswith("relay"):
        s.bin, s.args.scheduling = os.path.abspath(bin_dir), scheduling
        return bench.start_relay(s, 2 if args.system == "relay-2" else 1, None)
    # Kamailio has no batch policy of its own: "batch" starts its processes under `chrt -b 0`.
    wrap = [bench.need("chrt"), "-b", "0"] if scheduling == "batch" else []
    return bench.start_kamailio(s, 2, None, wrap=wrap)


def start_neighbours(limit_s):
    """One CPU-bound process pinned to each CPU, for at most `limit_s` seconds: the busy
    neighbour a shard's scheduling policy has to get past."""
    spin = f"import time\nend = time.time() + {limit_s}\nwhile time.time() < end:\n    pass\n"
    # taskset execs the interpreter, so the PID kept is the loop's own.
    return [subprocess.Popen([bench.need("taskset"), "-c", str(cpu), sys.executable, "-c", spin],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cpu in range(os.cpu_count() or 1)]


def stop_neighbours(procs):
    for p in procs:
        p.kill()
        p.wait()


def measure(s, side, args):
    """One run of `side` ("A" or "B"): µs of proxy CPU (scheduler run time) per call."""
    if side == "A":
        bin_dir, extra, s.args.sipedge_driver = args.a_bin_dir, args.a_args, args.a_driver
        scheduling = args.a_scheduling
    else:
        bin_dir, extra, s.args.sipedge_driver = args.b_bin_dir or args.a_bin_dir, args.b_args, args.b_driver
        scheduling = args.b_scheduling
    proxy = start_proxy(s, args, bin_dir, extra, scheduling)
    neighbours = start_neighbours(args.seconds * 3 + 15) if args.neighbour else []
    p99 = None
    try:
        calls = int(args.rate * args.seconds)
        m = bench.Measure(proxy)
        if args.load == "sipp":
            r = bench.run_sipp_uac(s, s.port, args.rate, calls, args.seconds * 3 + 10, "u1", f"ab-{side}")
            done = r["successful"]
        else:
            r = bench.run_loadgen(s, s.port, args.rate, calls, args.seconds + 5)
            done, p99 = r["completed"], r["invite_rtt_us"]["p99"]
        cpu = m.done(done)
    finally:
        stop_neighbours(neighbours)
        proxy.stop()
    if not done:
        raise bench.Fatal(f"{side}: no call completed")
    return cpu["cpu_sched_s"] / done * 1e6, done, calls, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a-bin-dir", default=os.path.join(bench.ROOT, "target", "release"))
    ap.add_argument("--b-bin-dir", help="B's build (default: A's)")
    ap.add_argument("--a-args", default="", help="extra sipedge options for A")
    ap.add_argument("--b-args", default="", help="extra sipedge options for B")
    ap.add_argument("--a-driver", default="auto", help="sipedge --driver for A: auto, io_uring or epoll")
    ap.add_argument("--b-driver", default="auto", help="sipedge --driver for B")
    ap.add_argument("--a-scheduling", choices=("batch", "normal"),
                    help="A's scheduling policy (default: the build's own; kamailio-n2: as configured)")
    ap.add_argument("--b-scheduling", choices=("batch", "normal"), help="B's scheduling policy")
    ap.add_argument("--system", choices=("sipedge", "relay", "relay-2", "kamailio-n2"), default="sipedge",
                    help="what runs in the proxy's place (relay: the build's udp-relay)")
    ap.add_argument("--neighbour", action="store_true",
                    help="a CPU-bound process pinned to every CPU while each run lasts")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--load", choices=("sipp", "loadgen"), default="sipp")
    ap.add_argument("--rate", type=int, default=1000, help="calls/s")
    ap.add_argument("--seconds", type=float, default=6.0, help="per run")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--base-port", type=int, default=5060,
                    help="proxy port; backends at +10/+11, sipp UAC at +30, metrics at +50, sipp media from +100")
    ap.add_argument("--smoke", action="store_true", help="one pair of one second at 200 calls/s")
    args = ap.parse_args()
    if (not args.b_bin_dir and (args.a_args, args.a_driver, args.a_scheduling)
            == (args.b_args, args.b_driver, args.b_scheduling) and not args.smoke):
        ap.error("A and B are the same: give --b-bin-dir, --b-driver, --b-scheduling or different --a-args/--b-args")
    if args.smoke:
        args.pairs, args.seconds, args.rate = 1, 1.0, 200
    args.bin_dir, args.sipedge_driver = args.a_bin_dir, args.a_driver
    bench.need("sipp")
    workdir = tempfile.mkdtemp(prefix="sipedge-ab-")
    s = bench.Setup(args, workdir)
    try:
        # The backends stay up for every pair; stop_all() below stops them.
        if args.load == "sipp":
            for b in s.backends:
                bench.start_sipp_uas(s, b)
        else:
            bench.start_responder(s)
        policy = lambda p: f" --scheduling {p}" if p else ""
        print(f"A: {args.system} {args.a_bin_dir} --driver {args.a_driver}{policy(args.a_scheduling)} {args.a_args}".rstrip())
        print(f"B: {args.system} {args.b_bin_dir or args.a_bin_dir} --driver {args.b_driver}"
              f"{policy(args.b_scheduling)} {args.b_args}".rstrip())
        neighbours = ", a CPU-bound process on every CPU" if args.neighbour else ""
        print(f"{args.load} at {args.rate} calls/s, {args.seconds:g} s per run, {args.shards} shard(s){neighbours}\n")
        # The round trip is the load generator's (µs timestamps); sipp's has 1 ms resolution.
        print("| pair | A µs/call | B µs/call | B ÷ A | calls A / B | INVITE→200 p99 µs A / B |")
        print("|---|---|---|---|---|---|")
        ratios = []
        for pair in range(args.pairs):
            order = ("A", "B") if pair % 2 == 0 else ("B", "A")
            got = {side: measure(s, side, args) for side in order}
            (a, a_done, calls, a_p99), (b, b_done, _, b_p99) = got["A"], got["B"]
            ratios.append(b / a)
            rtt = f"{a_p99} / {b_p99}" if a_p99 is not None else "–"
            print(f"| {pair + 1} | {a:.1f} | {b:.1f} | {b / a:.3f} | {a_done} / {b_done} of {calls} | {rtt} |",
                  flush=True)
        lower = sum(r < 1 for r in ratios)
        print(f"\nmedian B ÷ A: {statistics.median(ratios):.3f} ({lower} of {len(ratios)} pairs lower)")
    except bench.Fatal as e:
        print(f"ab: {e}\n(logs kept in {workdir})", file=sys.stderr)
        return 2
    finally:
        bench.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
