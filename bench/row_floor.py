"""PostgreSQL CPU per workflow: Conveyor's engine against the rows alone.

    .venv/bin/python -m bench.row_floor [--workflows 5000] [--rounds 3]

The end-to-end workflow of bench/e2e_peers.py (`set` -> `webhook.send` -> `if`) writes a
fixed set of rows: its execution, three step runs, a queue message that is read, then
archived, and its event marked dispatched. This benchmark drives the same workflows
through Conveyor's functions (`conveyor.dispatch`, `conveyor.read_actions`,
`conveyor.write_back`) and then writes the same rows, in the same batches, with plain
set-based statements that decide nothing (no matching, templates, interpreter, checks of
the result). Each phase runs on its own connection, so its backend's CPU time (from
/proc) is that phase's; the runner's side (HTTP) is not involved: results are made up.

What it shows: how much of PostgreSQL's work per workflow is the rows themselves (their
heap tuples, index entries, WAL and commits) and how much is the engine's logic on top.
The floor is not reachable (something has to decide which rows to write), but the ratio
says how far the engine's logic is from costing nothing, phase by phase.

Batches: dispatch 200 events per call (the runner's DISPATCH_BATCH), reads and write-backs
16 messages per call (the runner's default batch size), one read then its write-back,
like a runner under load. `--rounds` (default 3) runs both sides that many times,
interleaved, each on a fresh database; each phase's lowest measurement counts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.e2e_systems import conveyor_workflow
from bench.harness import process_cpu_s, record, temporary_database

TENANT = "bench"
DISPATCH_BATCH = 200
READ_BATCH = 16
SINK_URL = "http://127.0.0.1:9/conveyor"  # never called: the results are made up
WORKFLOW = conveyor_workflow(SINK_URL)
OUTPUT = {"status": 200, "headers": {"content-type": "text/plain"}, "body": "ok"}


@dataclass
class Phases:
    dispatch_us: float
    read_us: float
    write_back_us: float

    @property
    def total_us(self) -> float:
        return self.dispatch_us + self.read_us + self.write_back_us


def backend_cpu_s(conn: psycopg.Connection[Any]) -> float:
    """CPU time (user + system) of the connection's server process so far."""
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return process_cpu_s(int(row[0]))


def measured(conn: psycopg.Connection[Any], work: Callable[[], None], count: int) -> float:
    """Microseconds of `conn`'s backend CPU per workflow while `work` runs."""
    before = backend_cpu_s(conn)
    work()
    return (backend_cpu_s(conn) - before) * 1e6 / count


def prepare(url: str, workflows: int) -> None:
    """A tenant, the workflow, and `workflows` undispatched events (not measured)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select conveyor.create_tenant(%s, 'Bench')", (TENANT,))
        conn.execute("select conveyor.publish(%s, %s)", (TENANT, Jsonb(WORKFLOW)))
        conn.execute(
            "select conveyor.emit(%s, 'shop.order.created',"
            " jsonb_build_object('new', jsonb_build_object('id', i, 'seq', i, 'phase', 'b')), 'order', i::text)"
            " from generate_series(1, %s) as i",
            (TENANT, workflows),
        )


def rows_written(url: str) -> dict[str, int]:
    """What the run left in the tables, by kind: the engine's and the floor's must match."""
    with psycopg.connect(url, autocommit=True) as conn:
        counts = conn.execute(
            """
            select 'executions ' || status, count(*) from conveyor.executions group by status
            union all
            select 'step_runs ' || step_id || ' ' || status, count(*) from conveyor.step_runs group by step_id, status
            union all
            select 'events undispatched', count(*) from conveyor.events where dispatched_at is null
            union all
            select 'queue', count(*) from pgmq.q_conveyor_actions
            union all
            select 'archive', count(*) from pgmq.a_conveyor_actions
            """
        ).fetchall()
    return {str(kind): int(count) for kind, count in counts}


def engine(url: str, workflows: int) -> Phases:
    """The workflows through Conveyor's own functions."""
    with (
        psycopg.connect(url, autocommit=True) as dispatcher,
        psycopg.connect(url, autocommit=True) as reader,
        psycopg.connect(url, autocommit=True) as writer,
    ):

        def dispatch() -> None:
            while dispatcher.execute("select conveyor.dispatch(%s)", (DISPATCH_BATCH,)).fetchone() != (0,):
                pass

        dispatch_us = measured(dispatcher, dispatch, workflows)
        read_cpu = write_cpu = 0.0
        while True:
            before = backend_cpu_s(reader)
            rows = reader.execute(
                "select msg_id, message from conveyor.read_actions(%s, 30, 30)", (READ_BATCH,)
            ).fetchall()
            read_cpu += backend_cpu_s(reader) - before
            if not rows:
                break
            results = [
                {"msg_id": msg_id, "step_run_id": message["step_run_id"], "ok": True, "output": OUTPUT}
                for msg_id, message in rows
            ]
            before = backend_cpu_s(writer)
            writer.execute("select count(*) from conveyor.write_back(%s)", (Jsonb(results),)).fetchone()
            write_cpu += backend_cpu_s(writer) - before
    return Phases(dispatch_us, read_cpu * 1e6 / workflows, write_cpu * 1e6 / workflows)


# The same rows, decided by nobody: what the engine's statements write, with the values
# the engine would compute written as constants or plain expressions.
FLOOR_EVENTS = """
select array_agg(c.event_id order by c.event_id)
from (
  select e.event_id from conveyor.events as e
  where e.dispatched_at is null
  order by e.event_id
  limit %(limit)s
  for update
) as c
"""
FLOOR_DISPATCH = [
    "update conveyor.events set dispatched_at = now() where event_id = any(%(events)s)",
    """
    with executions as (
      insert into conveyor.executions (
        tenant_id, workflow_id, version, event_id, entity_type, entity_id, status, current_step, wait_kind,
        trigger, vars, step_outputs, steps_run, started_at
      )
      select e.tenant_id, %(workflow_id)s, 1, e.event_id, e.entity_type, e.entity_id, 'waiting', 'notify', 'action',
        jsonb_build_object('event_id', e.event_id, 'payload', e.payload), '{"seq": 1}',
        '{"prepare": {"output": {"seq": 1}}}', 2, now()
      from conveyor.events as e
      where e.event_id = any(%(events)s)
      order by e.event_id
      returning execution_id, tenant_id
    ),
    messages as (
      insert into pgmq.q_conveyor_actions (vt, message)
      select clock_timestamp(), jsonb_build_object(
        'execution_id', x.execution_id, 'tenant_id', x.tenant_id, 'workflow_id', %(workflow_id)s,
        'step_id', 'notify', 'action', 'webhook.send', 'input', %(input)s::jsonb,
        'idempotency_key', x.execution_id || ':notify:1', 'attempt', 1, 'timeout_s', 30)
      from executions as x
      returning msg_id, (message ->> 'execution_id')::bigint as execution_id
    )
    insert into conveyor.step_runs (
      execution_id, tenant_id, step_id, visit, attempt, status, input, output, idempotency_key, msg_id,
      next_step, started_at, finished_at
    )
    select x.execution_id, x.tenant_id, 'prepare', 1, 1, 'completed', '{"seq": 1}'::jsonb, '{"seq": 1}'::jsonb,
      null, null, 'notify', now(), now()
    from executions as x
    union all
    select m.execution_id, %(tenant)s, 'notify', 1, 1, 'queued', %(input)s::jsonb, null, m.execution_id || ':notify:1',
      m.msg_id, null, now(), null
    from messages as m
    """,
    """
    insert into conveyor.workflow_stats as s (workflow_id, shard, tenant_id, started, last_run_at)
    values (%(workflow_id)s, 0, %(tenant)s, cardinality(%(events)s::bigint[]), now())
    on conflict (workflow_id, shard) do update set started = s.started + excluded.started
    """,
]
FLOOR_READ = """
with next as (
  select msg_id from pgmq.q_conveyor_actions
  where vt <= clock_timestamp()
  order by msg_id
  limit %s
  for update skip locked
)
update pgmq.q_conveyor_actions as m
set read_ct = m.read_ct + 1, vt = clock_timestamp() + interval '60 seconds'
from next
where m.msg_id = next.msg_id
returning m.msg_id, (m.message ->> 'execution_id')::bigint
"""
FLOOR_WRITE_BACK = [
    "select from conveyor.executions where execution_id = any(%(executions)s) order by execution_id for update",
    """
    update conveyor.step_runs
    set status = 'completed', output = %(output)s, next_step = 'check', finished_at = now()
    where execution_id = any(%(executions)s) and step_id = 'notify' and visit = 1 and attempt = 1
    """,
    """
    with archived as (delete from pgmq.q_conveyor_actions where msg_id = any(%(messages)s) returning *)
    insert into pgmq.a_conveyor_actions (msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers)
    select msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers from archived
    """,
    """
    with finished as (
      update conveyor.executions as e
      set status = 'completed', current_step = null, wait_kind = null, steps_run = 3, finished_at = now(),
        step_outputs = e.step_outputs || jsonb_build_object(
          'notify', jsonb_build_object('output', %(output)s::jsonb),
          'check', '{"output": {"result": true, "branch": "then"}}'::jsonb)
      where e.execution_id = any(%(executions)s)
      returning e.execution_id, e.tenant_id
    )
    insert into conveyor.step_runs (
      execution_id, tenant_id, step_id, visit, attempt, status, input, output, next_step, started_at, finished_at
    )
    select f.execution_id, f.tenant_id, 'check', 1, 1, 'completed',
      '{"field": "steps.notify.output.status", "op": "equals", "value": 200}'::jsonb,
      '{"result": true, "branch": "then"}'::jsonb, null, now(), now()
    from finished as f
    """,
    """
    insert into conveyor.workflow_stats as s (workflow_id, shard, tenant_id, completed, total_duration_ms, last_run_at)
    values (%(workflow_id)s, 1, %(tenant)s, cardinality(%(executions)s::bigint[]), 0, now())
    on conflict (workflow_id, shard) do update set completed = s.completed + excluded.completed
    """,
]


def floor(url: str, workflows: int) -> Phases:
    """The same rows written by plain statements, in the same batches and transactions."""
    with (
        psycopg.connect(url, autocommit=True) as dispatcher,
        psycopg.connect(url, autocommit=True) as reader,
        psycopg.connect(url, autocommit=True) as writer,
    ):
        row = dispatcher.execute("select workflow_id from conveyor.workflows").fetchone()
        assert row is not None
        params = {
            "workflow_id": row[0],
            "tenant": TENANT,
            "limit": DISPATCH_BATCH,
            "input": Jsonb({"url": SINK_URL, "body": {"system": "conveyor", "phase": "b", "seq": 1}}),
        }

        def dispatch() -> None:
            while True:
                with dispatcher.transaction():
                    row = dispatcher.execute(FLOOR_EVENTS, params).fetchone()
                    if row is None or row[0] is None:
                        return
                    for statement in FLOOR_DISPATCH:
                        dispatcher.execute(statement, {**params, "events": row[0]})

        dispatch_us = measured(dispatcher, dispatch, workflows)
        read_cpu = write_cpu = 0.0
        while True:
            before = backend_cpu_s(reader)
            rows = reader.execute(FLOOR_READ, (READ_BATCH,)).fetchall()
            read_cpu += backend_cpu_s(reader) - before
            if not rows:
                break
            batch = {
                **params,
                "messages": [msg_id for msg_id, _ in rows],
                "executions": sorted(execution_id for _, execution_id in rows),
                "output": Jsonb(OUTPUT),
            }
            before = backend_cpu_s(writer)
            with writer.transaction():
                for statement in FLOOR_WRITE_BACK:
                    writer.execute(statement, batch)
            write_cpu += backend_cpu_s(writer) - before
    return Phases(dispatch_us, read_cpu * 1e6 / workflows, write_cpu * 1e6 / workflows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=5000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each phase's lowest counts"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print only; leave bench/RESULTS.md as it is"
    )
    args = parser.parse_args()

    results: dict[str, Phases] = {}
    written: dict[str, dict[str, int]] = {}
    for round_ in range(1, args.rounds + 1):
        for name, run in (("engine", engine), ("floor", floor)):
            with temporary_database() as url:
                prepare(url, args.workflows)
                phases = run(url, args.workflows)
                written[name] = rows_written(url)
            print(
                f"round {round_}, {name}: dispatch {phases.dispatch_us:.0f}, read {phases.read_us:.0f},"
                f" write-back {phases.write_back_us:.0f}, total {phases.total_us:.0f} us of PostgreSQL CPU"
                " per workflow",
                flush=True,
            )
            best = results.get(name)
            results[name] = (
                phases
                if best is None
                else Phases(
                    min(best.dispatch_us, phases.dispatch_us),
                    min(best.read_us, phases.read_us),
                    min(best.write_back_us, phases.write_back_us),
                )
            )

    if written["engine"] != written["floor"]:
        raise SystemExit(f"the floor wrote other rows than the engine: {written}")
    engine_phases, floor_phases = results["engine"], results["floor"]
    rows = [
        ("dispatch (events -> executions, first steps, queued actions)", "dispatch_us"),
        ("read (messages taken, visibility set)", "read_us"),
        ("write-back (results recorded, last step, archive)", "write_back_us"),
        ("total", "total_us"),
    ]
    lines = [
        "| phase | Conveyor us/workflow | rows alone us/workflow | ratio |",
        "|---|---|---|---|",
    ]
    for label, attribute in rows:
        mine, bare = getattr(engine_phases, attribute), getattr(floor_phases, attribute)
        lines.append(f"| {label} | {mine:.0f} | {bare:.0f} | {mine / bare:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.no_record:
        return
    record(
        "PostgreSQL CPU per workflow: engine vs the rows alone",
        f".venv/bin/python -m bench.row_floor --workflows {args.workflows} --rounds {args.rounds}",
        f"{args.workflows} workflows `set` -> `webhook.send` -> `if` (results made up, no HTTP), batches of "
        f"{DISPATCH_BATCH} events and {READ_BATCH} messages; CPU of each phase's server process, the lowest "
        f"of {args.rounds} interleaved rounds (this machine's speed wanders). "
        "'Rows alone' writes the same rows with plain statements that decide nothing: a floor no engine "
        "reaches, shown to say how much of the work is the rows and how much the engine's logic.\n\n" + table,
    )


if __name__ == "__main__":
    main()
