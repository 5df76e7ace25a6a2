"""Run the chaos scenarios at full scale and record the results in bench/RESULTS.md.

    .venv/bin/python -m bench.chaos [SCENARIO ...] [--workflows 5000] [--outage 30] ...

Scenarios: kill, restart, terminate, outage, schedules (default: all). Everything runs
against one private PostgreSQL cluster (the restart scenario restarts it), a fresh
database per scenario. Exit status 1 if any property did not hold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos.checks import Outcome
from bench.chaos.cluster import fresh_database, private_cluster
from bench.chaos.scenarios import Shape, kill_runners, receiver_outage, restart_postgres, terminate_backends
from bench.chaos.schedules import schedule_race
from bench.harness import record

SCENARIOS = ["kill", "restart", "terminate", "outage", "schedules"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"{', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument(
        "--workflows", type=int, default=5000, help="orders per load scenario (3 webhooks each)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds over which the orders are emitted"
    )
    parser.add_argument("--interval", type=float, default=3.0, help="mean seconds between faults")
    parser.add_argument("--restart-interval", type=float, default=10.0, help="mean seconds between restarts")
    parser.add_argument("--runners", type=int, default=2, help="runner processes alive at a time")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the receivers are down")
    parser.add_argument("--outage-workflows", type=int, default=1000, help="orders in the outage scenario")
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes of the schedule race")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--quick", action="store_true", help="suite scale (what tests/e2e/test_chaos.py runs)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--logs", help="keep the runners' logs here (by default kept only if a run fails)")
    args = parser.parse_args(argv)
    if args.quick:
        args.workflows, args.duration, args.interval, args.restart_interval = 300, 10.0, 1.5, 4.0
        args.outage, args.outage_workflows = 6.0, 100
    chosen = args.scenarios or SCENARIOS
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    command = ".venv/bin/python -m bench.chaos" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")

    outcomes: list[Outcome] = []
    began = time.monotonic()
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="conveyor-chaos-logs-"))
    with private_cluster() as cluster:
        for name in chosen:
            print(f"--- {name}", flush=True)
            url = fresh_database(cluster, f"chaos_{name}")
            shape = Shape(args.workflows, args.duration, args.interval, args.runners, seed=args.seed)
            if name == "kill":
                outcome = kill_runners(url, logs, shape)
            elif name == "restart":
                restart_shape = Shape(
                    args.workflows, args.duration, args.restart_interval, args.runners, seed=args.seed
                )
                outcome = restart_postgres(cluster, url, logs, restart_shape)
            elif name == "terminate":
                outcome = terminate_backends(url, logs, shape)
            elif name == "outage":
                outcome = receiver_outage(
                    url, logs, workflows=args.outage_workflows, outage_s=args.outage, seed=args.seed
                )
            else:
                outcome = schedule_race(url, schedules=args.schedules, minutes=args.minutes, seed=args.seed)
            print(describe(outcome), flush=True)
            outcomes.append(outcome)
    total = time.monotonic() - began
    failed = [o for o in outcomes if not o.ok]
    if failed or args.logs:
        print(f"runner logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    body = report(outcomes, total)
    print(body)
    if not args.no_record:
        record("Chaos", command, body)
    return 1 if failed else 0


def _pairs(values: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in values.items())


def describe(outcome: Outcome) -> str:
    lines = [
        f"{outcome.scenario}: {'PASS' if outcome.ok else 'FAIL'} in {outcome.seconds:.0f} s",
        f"  faults: {_pairs(outcome.faults)}",
        f"  executions: {_pairs(outcome.statuses)}",
        f"  figures: {_pairs(outcome.figures)}",
    ]
    lines += [f"  PROBLEM: {p}" for p in outcome.problems]
    return "\n".join(lines)


def report(outcomes: list[Outcome], total: float) -> str:
    rows = "\n".join(
        f"| {o.scenario} | {_pairs(o.faults)} | {_pairs(o.statuses)} | {_pairs(o.figures)} | {o.seconds:.0f} s "
        f"| {'all properties held' if o.ok else 'FAILED: ' + '; '.join(o.problems[:3])} |"
        for o in outcomes
    )
    return f"""
Sustained load with repeated faults: `bench/chaos/`, the same code as `tests/e2e/test_chaos.py`
(which runs it smaller). Load scenarios: orders of three chained `webhook.send` steps to a
local HTTP sink (5-80 ms latency), emitted at a steady rate while a fault thread strikes
until every execution has finished; two runner processes (concurrency 16, visibility margin
2 s, step timeout 5 s). The outage scenario: webhook → email (aiosmtpd) → webhook, retry
exponential 1 s .. 4 s without jitter, every tenth order refused with 422 (on_error goto an
alert step) plus refunds always refused (on_error fail). Checked afterwards, from the
database and the receivers' logs: every event dispatched once, every execution completed
(or failed where its workflow says so); no step completed twice; every request the receivers
got carries the idempotency key of one step and equals that step's rendered input (repeats
are only repeats of that action); every step's recorded output names a delivery the receiver
answered for that key, and the next step's request names it; queue empty, every message
archived; SIGTERM exits 0. Schedule race: every slot croniter computes fired exactly once,
each with its completed execution. Total {total:.0f} s.

| scenario | faults | executions | figures | duration | result |
|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    sys.exit(main())
