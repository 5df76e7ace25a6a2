"""What must hold after a chaos run, read from the database and the receivers' logs.

Each check returns problems (sentences naming what is wrong, with ids) rather than
raising, so a run reports every broken property at once; the tests assert there are none.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.chaos.sinks import Delivery, HttpSink, Mail, SmtpSink
from bench.chaos.workload import Db, Row


@dataclass
class Outcome:
    scenario: str
    seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    figures: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def statuses(db: Db) -> dict[str, int]:
    rows = db.rows("select status, count(*) as n from conveyor.executions group by status order by status")
    return {str(r["status"]): int(r["n"]) for r in rows}


def failures(db: Db) -> list[str]:
    """The distinct errors executions failed with, most frequent first (what a problem report needs)."""
    rows = db.rows(
        "select error ->> 'message' as message, count(*) as n from conveyor.executions"
        " where status <> 'completed' group by 1 order by 2 desc limit 5"
    )
    return [f"{r['n']} x {r['message']}" for r in rows]


def step_runs(db: Db) -> list[Row]:
    return db.rows(
        "select r.step_run_id, r.execution_id, r.step_id, r.visit, r.attempt, r.status, r.input, r.output,"
        " r.error, r.idempotency_key, r.msg_id, r.next_step"
        " from conveyor.step_runs as r order by r.step_run_id"
    )


def _limited(problems: list[str], limit: int = 20) -> list[str]:
    if len(problems) <= limit:
        return problems
    return [*problems[:limit], f"... and {len(problems) - limit} more"]


def check_events(db: Db, expected: int) -> list[str]:
    """Every event dispatched, and exactly one execution per event."""
    row = db.one(
        "select (select count(*) from conveyor.events) as events,"
        " (select count(*) from conveyor.events where dispatched_at is null) as undispatched,"
        " count(*) as executions, count(distinct event_id) as distinct_events"
        " from conveyor.executions"
    )
    problems = []
    if row["events"] != expected or row["undispatched"]:
        problems.append(f"{row['events']} events ({row['undispatched']} undispatched), {expected} emitted")
    if row["executions"] != expected or row["distinct_events"] != expected:
        problems.append(
            f"{row['executions']} executions for {row['distinct_events']} distinct events, expected {expected}"
        )
    return problems


def check_step_runs(runs: list[Row]) -> list[str]:
    """No step completed twice; attempts numbered 1..n with only the last one final-or-open."""
    problems = []
    by_step: dict[tuple[int, str, int], list[Row]] = defaultdict(list)
    for run in runs:
        by_step[(run["execution_id"], run["step_id"], run["visit"])].append(run)
    for (execution, step, visit), attempts in by_step.items():
        completed = [r for r in attempts if r["status"] == "completed"]
        if len(completed) > 1:
            problems.append(
                f"execution {execution} step {step!r} (visit {visit}) completed {len(completed)} times: "
                f"step runs {[r['step_run_id'] for r in completed]}"
            )
        numbers = sorted(r["attempt"] for r in attempts)
        if numbers != list(range(1, len(attempts) + 1)):
            problems.append(f"execution {execution} step {step!r}: attempts {numbers}")
        last = max(attempts, key=lambda r: r["attempt"])
        if any(r["status"] != "failed" for r in attempts if r is not last):
            problems.append(f"execution {execution} step {step!r}: an attempt before the last did not fail")
        if last["status"] not in ("completed", "failed"):
            problems.append(f"execution {execution} step {step!r}: last attempt is {last['status']}")
        if len({r["idempotency_key"] for r in attempts}) != 1:
            problems.append(f"execution {execution} step {step!r}: attempts carry different idempotency keys")
    return _limited(problems)


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_deliveries(runs: list[Row], deliveries: list[Delivery], mails: list[Mail]) -> list[str]:
    """The receivers' logs against the step runs.

    * every request carries the idempotency key of a step run of this database;
    * every request with a given key is the same request (path and body equal to that
      step's rendered input): duplicates are only repeats of one action;
    * every completed step's recorded output came from a request the receiver saw with
      its key (the response's delivery number), and every completed email was received.
    """
    problems = []
    webhook_runs: dict[str, Row] = {}
    email_runs: dict[str, Row] = {}
    for run in runs:
        target = webhook_runs if "url" in (run["input"] or {}) else email_runs
        # attempts share the key; keep the last (the one that decided the step)
        previous = target.get(run["idempotency_key"])
        if previous is None or previous["attempt"] < run["attempt"]:
            target[run["idempotency_key"]] = run

    by_key: dict[str | None, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        by_key[delivery.key].append(delivery)
    for key, received in by_key.items():
        found = webhook_runs.get(key) if key is not None else None
        if found is None:
            problems.append(f"the sink received {len(received)} request(s) with unknown key {key!r}")
            continue
        run = found
        contents = {(d.path, d.body) for d in received}
        if len(contents) != 1:
            problems.append(f"key {key!r} was sent with {len(contents)} different requests")
        url = str(run["input"].get("url", ""))
        for d in received[:1]:
            if not url.endswith(d.path) or _json(d.body) != run["input"].get("body"):
                problems.append(f"key {key!r}: the request {d.path} {d.body} is not the step's input {url}")
    for key, run in webhook_runs.items():
        if run["status"] != "completed":
            continue
        output = run["output"] or {}
        number = (output.get("body") or {}).get("delivery") if isinstance(output.get("body"), dict) else None
        if number not in {d.delivery for d in by_key.get(key, []) if d.status == 200}:
            problems.append(
                f"step run {run['step_run_id']} ({key}) recorded delivery {number!r}, which the sink did not "
                "answer 200 for that key"
            )

    mail_keys = Counter(m.key for m in mails)
    for key in mail_keys:
        if key not in email_runs:
            problems.append(f"the SMTP server received {mail_keys[key]} mail(s) with unknown key {key!r}")
    for key, run in email_runs.items():
        if run["status"] == "completed" and key not in mail_keys:
            problems.append(f"step run {run['step_run_id']} completed but its mail {key!r} never arrived")
    return _limited(problems)


def check_queue(db: Db) -> list[str]:
    """Nothing left in the queue; every message a step run was given was archived."""
    row = db.one(
        "select (select count(*) from pgmq.q_conveyor_actions) as queued,"
        " (select count(*) from conveyor.step_runs as r where r.msg_id is not null and not exists"
        "   (select from pgmq.a_conveyor_actions as a where a.msg_id = r.msg_id)) as unarchived"
    )
    problems = []
    if row["queued"]:
        problems.append(f"{row['queued']} message(s) left in the queue")
    if row["unarchived"]:
        problems.append(f"{row['unarchived']} step run message(s) never archived")
    return problems


def check_order_chain(db: Db, runs: list[Row]) -> list[str]:
    """The order workflow: reserve → charge → ship, each completed once, each next request
    naming the delivery the previous step recorded, and the execution's step outputs
    equal to the step runs' outputs."""
    problems = []
    completed: dict[int, dict[str, Row]] = defaultdict(dict)
    for run in runs:
        if run["status"] == "completed":
            completed[run["execution_id"]][run["step_id"]] = run
    executions = db.rows("select execution_id, status, step_outputs from conveyor.executions")
    for execution in executions:
        steps = completed.get(execution["execution_id"], {})
        if set(steps) != {"reserve", "charge", "ship"}:
            problems.append(f"execution {execution['execution_id']}: completed steps {sorted(steps)}")
            continue
        for step, previous, field_name in (
            ("charge", "reserve", "reservation"),
            ("ship", "charge", "charge"),
        ):
            sent = steps[step]["input"]["body"].get(field_name)
            recorded = steps[previous]["output"]["body"]["delivery"]
            if str(sent) != str(recorded):
                problems.append(
                    f"execution {execution['execution_id']}: {step} sent {field_name}={sent!r} but {previous} "
                    f"recorded delivery {recorded!r}"
                )
        for step, run in steps.items():
            if execution["step_outputs"].get(step, {}).get("output") != run["output"]:
                problems.append(f"execution {execution['execution_id']}: step_outputs.{step} != its step run")
    return _limited(problems)


def redelivered(db: Db) -> int:
    """Messages a runner read more than once: held by a killed runner, or whose lease
    lapsed (a runner stalled past its visibility margin) - each a repeated request."""
    return int(db.one("select count(*) as n from pgmq.a_conveyor_actions where read_ct > 1")["n"])


def action_figures(runs: list[Row], sink: HttpSink, smtp: SmtpSink | None = None) -> dict[str, int]:
    deliveries = sink.snapshot()
    mails = smtp.snapshot() if smtp is not None else []
    keys = {d.key for d in deliveries} | {m.key for m in mails}
    return {
        "actions": len({(r["execution_id"], r["step_id"], r["visit"]) for r in runs}),
        "attempts": len(runs),
        "requests received": len(deliveries) + len(mails),
        "repeated requests (same key)": len(deliveries) + len(mails) - len(keys),
    }
