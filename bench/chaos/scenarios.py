"""The chaos scenarios: a sustained load of workflows with faults injected repeatedly
while it runs, then every property checked against the database and the receivers' logs.

The suite (tests/e2e/test_chaos.py) and the full-scale command (python -m bench.chaos)
call these same functions; only the sizes differ.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos import checks
from bench.chaos.checks import Outcome
from bench.chaos.fleet import Fleet
from bench.chaos.sinks import REJECT_PREFIX, HttpSink, SmtpSink
from bench.chaos.workload import (
    REJECT_EVERY,
    Db,
    emit_orders,
    emit_refunds,
    expected_retry_delay,
    progress,
    publish_orders,
    publish_outage_workflows,
)
from conveyor.cluster import Cluster

# Short action timeouts and a small visibility margin: a message a killed runner held
# reappears after ~7 s instead of a minute, so a run sees many redeliveries.
RUNNER_ENV = {"CONVEYOR_VISIBILITY_MARGIN": "2", "CONVEYOR_BATCH_SIZE": "10", "CONVEYOR_CONCURRENCY": "16"}


@dataclass(frozen=True)
class Shape:
    """How big a run is: `workflows` orders emitted at a steady rate over `duration`
    seconds; a fault every `interval` seconds on average (jittered 0.5-1.5x) from the first
    order until every execution has finished."""

    workflows: int
    duration: float = 60.0
    interval: float = 3.0
    runners: int = 2
    timeout: float = 900.0
    seed: int = 7


Fault = Callable[[Fleet], None]


def _batches(total: int, duration: float, every: float = 0.5) -> list[tuple[int, int]]:
    size = max(1, -(-total // max(1, int(duration / every))))
    return [(first, min(first + size - 1, total)) for first in range(1, total + 1, size)]


class _Faults(threading.Thread):
    """Injects `fault` every `interval` seconds (jittered) until stopped; counts them and
    keeps what went wrong injecting one."""

    def __init__(self, fault: Fault, fleet: Fleet, interval: float, seed: int) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.fault, self.fleet, self.interval = fault, fleet, interval
        self.random = random.Random(seed)
        self.halt = threading.Event()
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.halt.wait(self.interval * self.random.uniform(0.5, 1.5)):
            try:
                self.fault(self.fleet)
                self.count += 1
            except Exception as exc:
                self.errors.append(f"injecting a fault failed: {exc!r}")
                return

    def stop(self) -> None:
        self.halt.set()
        if self.ident is not None:  # started
            self.join(timeout=120)


def _wait(db: Db, done: Callable[[dict[str, Any]], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if done(progress(db)):
            return True
        time.sleep(0.25)
    return False


def _settled(expected: int) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["undispatched"] == 0 and p["executions"] == expected and p["open"] == 0


def _finish(fleet: Fleet, outcome: Outcome) -> None:
    """Stop the runners still alive (SIGTERM: each must exit 0) and report any that died
    on its own or logged an error."""
    crashed = [r for r in fleet.started if not r.alive and r not in fleet.killed]
    for runner in crashed:
        outcome.problems.append(f"runner {runner.log_path.name} exited on its own ({runner.proc.returncode})")
    codes = fleet.stop()
    for pid, code in codes.items():
        if code != 0:
            outcome.problems.append(f"runner pid {pid} exited {code} on SIGTERM")
    outcome.figures["runners started"] = len(fleet.started)
    outcome.figures["ignored write-backs (late or duplicate results)"] = fleet.messages(
        "result ignored by the database (late, duplicate or cancelled)"
    )
    outcome.figures["runner reconnects"] = fleet.messages("reconnected")
    # Warnings other than the expected ones (a failed action, a lost database) would say
    # why a message was performed twice without a kill: a hung action, a lapsed lease.
    expected = {"action failed", "database unavailable; retrying"}
    for message, n in fleet.warnings().items():
        if message not in expected:
            outcome.figures[f"runner warning: {message[:60]}"] = n
    errors = fleet.errors()
    outcome.problems.extend(f"runner logged an error: {line.get('msg')}" for line in errors[:5])


def _orders_under_faults(name: str, url: str, workdir: Path, shape: Shape, fault: Fault) -> Outcome:
    outcome = Outcome(name)
    db = Db(url)
    sink = HttpSink(latency_ms=(5.0, 80.0), seed=shape.seed)
    sink.start()
    fleet = Fleet(url, workdir / name, env=RUNNER_ENV, seed=shape.seed)
    faults = _Faults(fault, fleet, shape.interval, shape.seed)
    started = time.monotonic()
    deadline = started + shape.timeout
    try:
        publish_orders(db, sink)
        for _ in range(shape.runners):
            fleet.start()
        faults.start()
        batches = _batches(shape.workflows, shape.duration)
        for n, (first, last) in enumerate(batches):
            emit_orders(url, first, last)
            time.sleep(max(0.0, started + shape.duration * (n + 1) / len(batches) - time.monotonic()))
        if not _wait(db, _settled(shape.workflows), deadline):
            outcome.problems.append(f"not settled after {shape.timeout:g} s: {progress(db)}")
        faults.stop()
        outcome.problems += faults.errors
        # No more faults: messages a killed runner held reappear and are consumed (their
        # results are ignored by the write-back).
        if not _wait(db, lambda p: p["queued"] == 0, time.monotonic() + 120):
            outcome.problems.append(f"the queue did not drain: {progress(db)}")
        outcome.seconds = time.monotonic() - started
        _finish(fleet, outcome)

        outcome.statuses = checks.statuses(db)
        if outcome.statuses != {"completed": shape.workflows}:
            outcome.problems.append(
                f"executions {outcome.statuses}, expected {shape.workflows} completed: {checks.failures(db)}"
            )
        runs = checks.step_runs(db)
        outcome.problems += checks.check_events(db, shape.workflows)
        outcome.problems += checks.check_step_runs(runs)
        outcome.problems += checks.check_order_chain(db, runs)
        outcome.problems += checks.check_deliveries(runs, sink.snapshot(), [])
        outcome.problems += checks.check_queue(db)
        outcome.figures = {
            "workflows": shape.workflows,
            **checks.action_figures(runs, sink),
            "messages redelivered": checks.redelivered(db),
            **outcome.figures,
        }
        return outcome
    finally:
        faults.stop()
        fleet.cleanup()
        sink.stop()
        db.close()


def kill_runners(url: str, workdir: Path, shape: Shape) -> Outcome:
    """Scenario 1: SIGKILL a random runner every few seconds and start a new one."""

    def fault(fleet: Fleet) -> None:
        fleet.kill_one()

    outcome = _orders_under_faults("kill-runners", url, workdir, shape, fault)
    outcome.faults["runners SIGKILLed"] = outcome.figures["runners started"] - shape.runners
    return outcome


def restart_postgres(cluster: Cluster, url: str, workdir: Path, shape: Shape, down_s: float = 1.0) -> Outcome:
    """Scenario 2: PostgreSQL stopped (fast shutdown) and started again, repeatedly."""
    restarts = 0

    def fault(fleet: Fleet) -> None:
        nonlocal restarts
        cluster.stop()
        time.sleep(down_s)
        cluster.start()
        restarts += 1

    outcome = _orders_under_faults("restart-postgres", url, workdir, shape, fault)
    outcome.faults["PostgreSQL restarts (fast shutdown)"] = restarts
    if outcome.figures["runner reconnects"] < restarts:
        outcome.problems.append(
            f"{outcome.figures['runner reconnects']} runner reconnects for {restarts} restarts"
        )
    return outcome


def terminate_backends(url: str, workdir: Path, shape: Shape) -> Outcome:
    """Scenario 3: pg_terminate_backend on every connection of the runners, repeatedly."""
    db = Db(url)
    terminated = rounds = 0

    def fault(fleet: Fleet) -> None:
        nonlocal terminated, rounds
        row = db.one(
            "select count(*) filter (where pg_terminate_backend(pid)) as n from pg_stat_activity"
            " where application_name = 'conveyor-runner' and datname = current_database()"
        )
        terminated += int(row["n"])
        rounds += 1

    try:
        outcome = _orders_under_faults("terminate-backends", url, workdir, shape, fault)
    finally:
        db.close()
    outcome.faults["pg_terminate_backend rounds"] = rounds
    outcome.faults["runner connections terminated"] = terminated
    if outcome.figures["runner reconnects"] == 0:
        outcome.problems.append("no runner ever reconnected: the terminations missed them")
    return outcome


def receiver_outage(url: str, workdir: Path, *, workflows: int, outage_s: float, seed: int = 7) -> Outcome:
    """Scenario 4: the HTTP sink and the SMTP server go away for `outage_s` while orders
    flow; then come back. Every order refused with 422 goes to its error branch."""
    outcome = Outcome("receiver-outage")
    refunds = max(1, workflows // 20)
    expected = workflows + refunds
    db = Db(url)
    sink, smtp = HttpSink(seed=seed), SmtpSink()
    sink.start()
    smtp.start()
    fleet = Fleet(url, workdir / "receiver-outage", env=RUNNER_ENV, seed=seed)
    started = time.monotonic()
    try:
        publish_outage_workflows(db, sink, smtp)
        for _ in range(2):
            fleet.start()
        half = workflows // 2
        emit_orders(url, 1, half, routes=True)
        deadline = time.monotonic() + 120
        while not sink.snapshot() and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.stop()
        smtp.stop()
        down_at = time.time()
        emit_orders(url, half + 1, workflows, routes=True)
        emit_refunds(url, refunds)
        time.sleep(outage_s)
        up_at = time.time()
        sink.start()
        smtp.start()
        if not _wait(db, _settled(expected), started + 900):
            outcome.problems.append(f"not settled: {progress(db)}")
        if not _wait(db, lambda p: p["queued"] == 0, time.monotonic() + 120):
            outcome.problems.append(f"the queue did not drain: {progress(db)}")
        outcome.seconds = time.monotonic() - started
        _finish(fleet, outcome)
        outcome.faults["receiver outages"] = 1
        outcome.faults["outage seconds"] = round(up_at - down_at)

        outcome.statuses = checks.statuses(db)
        if outcome.statuses != {"completed": workflows, "failed": refunds}:
            outcome.problems.append(
                f"executions {outcome.statuses}, expected {workflows} completed and {refunds} failed"
            )
        runs = checks.step_runs(db)
        deliveries, mails = sink.snapshot(), smtp.snapshot()
        outcome.problems += checks.check_events(db, expected)
        outcome.problems += checks.check_step_runs(runs)
        outcome.problems += checks.check_deliveries(runs, deliveries, mails)
        outcome.problems += checks.check_queue(db)
        outcome.problems += _check_retries(db, runs)
        outcome.problems += _check_refusals(db, runs, deliveries)
        late = [d for d in deliveries if down_at + 1 < d.at < up_at]
        if late:
            outcome.problems.append(f"{len(late)} requests arrived while the sink was down")
        outcome.figures = {
            "workflows": expected,
            **checks.action_figures(runs, sink, smtp),
            "messages redelivered": checks.redelivered(db),
            "attempts failed during the outage": sum(
                1 for r in runs if r["status"] == "failed" and (r["error"] or {}).get("retryable")
            ),
            "max attempts of one step": max(r["attempt"] for r in runs),
            **outcome.figures,
        }
        return outcome
    finally:
        fleet.cleanup()
        sink.stop()
        smtp.stop()
        db.close()


def _check_retries(db: Db, runs: list[dict[str, Any]]) -> list[str]:
    """Attempts failed by the outage were retryable connection failures, each retried
    after the delay the policy gives (exponential, no jitter), with the same key."""
    problems = []
    retried = [r for r in runs if r["status"] == "failed" and (r["error"] or {}).get("retryable")]
    if not retried:
        problems.append("no attempt failed during the outage: the outage missed the load")
    kinds = {str((r["error"] or {}).get("type")) for r in retried}
    if not kinds <= {"connection", "timeout"}:
        problems.append(f"retryable failures of unexpected kinds: {sorted(kinds)}")
    logs = db.rows(
        "select execution_id, step_id, (details ->> 'attempt')::integer as attempt,"
        " (details ->> 'retry_in_s')::integer as delay from conveyor.execution_logs where details ? 'retry_in_s'"
    )
    if len(logs) != len(retried):
        problems.append(f"{len(logs)} retry log lines for {len(retried)} retried attempts")
    wrong = [r for r in logs if r["delay"] != expected_retry_delay(r["attempt"])]
    if wrong:
        problems.append(
            f"{len(wrong)} retries with an unexpected delay, e.g. attempt {wrong[0]['attempt']} waited "
            f"{wrong[0]['delay']} s instead of {expected_retry_delay(wrong[0]['attempt'])} s"
        )
    return problems


def _check_refusals(db: Db, runs: list[dict[str, Any]], deliveries: list[Any]) -> list[str]:
    """A 422 is permanent: never retried, recorded with the rendered input, the response
    and the error; `fulfil` goes on with its alert step, `refund` fails the execution."""
    problems = []
    refused = {d.key: d for d in deliveries if d.status == 422}
    after = [d for d in deliveries if d.key in refused and d.delivery > refused[d.key].delivery]
    if after:
        problems.append(f"{len(after)} request(s) sent again after a permanent 422")
    final = {
        (r["execution_id"], r["step_id"]): r
        for r in runs
        if r["status"] in ("completed", "failed") and not (r["error"] or {}).get("retryable")
    }
    executions = {e["execution_id"]: e for e in db.rows("select * from conveyor.executions")}
    rejected_orders = 0
    for execution in executions.values():
        payload = execution["trigger"].get("payload", {})
        if "refund" in payload:
            run = final.get((execution["execution_id"], "refund"))
            error = execution["error"] or {}
            if run is None or run["status"] != "failed":
                problems.append(f"refund execution {execution['execution_id']}: no failed refund step")
                continue
            if not (
                execution["status"] == "failed"
                and error.get("step") == "refund"
                and error.get("input") == run["input"]
                and (error.get("output") or {}).get("status") == 422
                and (error.get("detail") or {}).get("status") == 422
            ):
                problems.append(f"refund execution {execution['execution_id']}: error lacks context: {error}")
            problems += _refusal_recorded(
                run, refused, REJECT_PREFIX + "-refund", {"refund": payload["refund"]}
            )
        elif int(payload["order"]) % REJECT_EVERY == 0:
            rejected_orders += 1
            run = final.get((execution["execution_id"], "hook"))
            alert = final.get((execution["execution_id"], "alert"))
            if run is None or alert is None or execution["status"] != "completed":
                problems.append(
                    f"rejected order {payload['order']}: hook {run and run['status']}, alert {alert}"
                )
                continue
            if run["next_step"] != "alert" or alert["status"] != "completed":
                problems.append(f"rejected order {payload['order']}: did not go on with its alert step")
            if "422" not in str(alert["input"]["body"].get("error")):
                problems.append(f"rejected order {payload['order']}: the alert does not carry the error")
            if (execution["execution_id"], "mail") in final:
                problems.append(f"rejected order {payload['order']}: a mail was sent anyway")
            problems += _refusal_recorded(run, refused, "/reject-orders", {"order": payload["order"]})
    if rejected_orders == 0:
        problems.append("no order was rejected: the 422 path was not exercised")
    return checks._limited(problems)


def _refusal_recorded(
    run: dict[str, Any], refused: dict[str | None, Any], path: str, body: dict[str, Any]
) -> list[str]:
    """The step run of a 422: rendered input, the response and a permanent error."""
    output, error, name = run["output"] or {}, run["error"] or {}, f"step run {run['step_run_id']}"
    problems = []
    if not str(run["input"].get("url")).endswith(path) or {
        k: str(v) for k, v in run["input"].get("body", {}).items()
    } != {k: str(v) for k, v in body.items()}:
        problems.append(f"{name}: input is not the rendered request: {run['input']}")
    delivery = refused.get(run["idempotency_key"])
    if (
        delivery is None
        or output.get("status") != 422
        or output.get("body", {}).get("delivery") != delivery.delivery
    ):
        problems.append(f"{name}: the recorded response is not the receiver's 422: {output}")
    if not (
        error.get("status") == 422 and error.get("retryable") is False and "422" in str(error.get("message"))
    ):
        problems.append(f"{name}: the error does not say what failed: {error}")
    return problems
