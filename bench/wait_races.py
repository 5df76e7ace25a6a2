"""Waits for events under races, thousands of trials: is a correlated event ever lost, or a wait
resumed twice?

    .venv/bin/python -m bench.wait_races [--trials 1000]

A trial is a question (chat.question.asked, payload.q) whose workflow waits for its answer
(chat.answer.given with the same q). Throughout, two dispatch loops (`conveyor.dispatch`) and
two tick loops (`conveyor.resume_due`, which confirms new waits and times them out) race, and
events of the same tenant that answer nothing flow every ~5 ms. Scenarios:

* same statement: question and answer emitted by one statement;
* same transaction: by two statements of one transaction;
* two connections: question and answer sent from two connections at random 0-50 ms gaps;
* burst: the same with a burst of 400 events queued before every 100 trials;
* after waiting: the answer sent 0-50 ms after the question's execution is visibly waiting.

At the end everything is dispatched and confirmed, and what still waits is timed out: a lost
trial took the timeout branch although its answer had committed. The small version runs in
CI (tests/sql/test_wait_races.py).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bench.harness import record, temporary_database

Conn = psycopg.Connection[dict[str, Any]]

TENANT = "acme"


def ask_workflow(
    slug: str = "ask", steps_before: list[dict[str, Any]] | None = None, **wait: Any
) -> dict[str, Any]:
    """Trigger chat.question.asked (payload.q), wait for chat.answer.given with the same q."""
    return {
        "slug": slug,
        "name": slug,
        "trigger": {"event": "chat.question.asked"},
        "steps": [
            *(steps_before or []),
            {
                "id": "reply",
                "wait_for_event": {
                    "event": "chat.answer.given",
                    "match": {"payload.q": "{{trigger.payload.q}}"},
                    "timeout": "1h",
                    **wait,
                },
                "on_event": "answered",
                "on_timeout": "unanswered",
            },
            {
                "id": "answered",
                "set": {"r": "event", "a": "{{steps.reply.output.event.payload.a}}"},
                "next": None,
            },
            {"id": "unanswered", "set": {"r": "timeout"}},
        ],
    }


def connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def publish(conn: Conn, tenant: str, doc: dict[str, Any]) -> None:
    conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(doc)))


def emit(conn: Conn, event_type: str, payload: dict[str, Any], tenant: str = TENANT) -> int:
    row = conn.execute(
        "select conveyor.emit(%s, %s, %s) as id", (tenant, event_type, Jsonb(payload))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def ask(conn: Conn, q: str) -> int:
    return emit(conn, "chat.question.asked", {"q": q})


def answer(conn: Conn, q: str, a: str = "yes") -> int:
    return emit(conn, "chat.answer.given", {"q": q, "a": a})


def dispatch(conn: Conn) -> int:
    row = conn.execute("select conveyor.dispatch() as n").fetchone()
    assert row is not None
    return int(row["n"])


def tick(conn: Conn, at: str = "now()") -> int:
    row = conn.execute(f"select conveyor.resume_due({at}) as n").fetchone()
    assert row is not None
    return int(row["n"])


def settle_without_timeouts(conn: Conn) -> None:
    """Dispatch and confirm until nothing is left."""
    for _ in range(1000):
        if dispatch(conn) == 0 and tick(conn) == 0:
            return


def settle(conn: Conn) -> None:
    """Dispatch and confirm until nothing is left, then time out whatever still waits."""
    settle_without_timeouts(conn)
    tick(conn, "now() + interval '2 hours'")


def outcomes(conn: Conn) -> dict[str, dict[str, Any]]:
    """Per question: the execution's status, its branch and how often its wait completed."""
    rows = conn.execute("""
        select x.trigger -> 'payload' ->> 'q' as q, x.status, x.vars,
          (select count(*) from conveyor.step_runs as r
            where r.execution_id = x.execution_id and r.step_id = 'reply' and r.status = 'completed') as waits_done
        from conveyor.executions as x
        """).fetchall()
    return {r["q"]: r for r in rows}


def lost_and_twice(conn: Conn, questions: list[str]) -> tuple[list[str], list[str]]:
    result = outcomes(conn)
    lost = sorted(q for q in questions if q not in result or result[q]["vars"].get("r") != "event")
    twice = sorted(q for q in questions if q in result and result[q]["waits_done"] > 1)
    return lost, twice


class Racers:
    """Two dispatch loops, two tick loops and unrelated events of the tenant every ~5 ms."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(body,))
            for body in (self._noise, self._dispatcher, self._dispatcher, self._ticker, self._ticker)
        ]

    def _loop(self, body: Callable[[Conn], None]) -> None:
        try:
            with connect(self.url) as c:
                while not self.stop.is_set():
                    body(c)
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)

    def _noise(self, c: Conn) -> None:
        emit(c, "chat.typing.started", {"q": "noise"})
        time.sleep(0.005)

    def _dispatcher(self, c: Conn) -> None:
        if dispatch(c) == 0:
            time.sleep(0.002)

    def _ticker(self, c: Conn) -> None:
        tick(c)
        time.sleep(0.003)

    def __enter__(self) -> Racers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self.stop.set()
        for t in self.threads:
            t.join()
        assert self.errors == [], self.errors


def same_statement(url: str, prefix: str, trials: int, rng: random.Random) -> None:
    with connect(url) as c:
        for i in range(trials):
            c.execute(
                "select conveyor.emit(%(t)s, 'chat.question.asked', %(q)s),"
                " conveyor.emit(%(t)s, 'chat.answer.given', %(a)s)",
                {
                    "t": TENANT,
                    "q": Jsonb({"q": f"{prefix}{i}"}),
                    "a": Jsonb({"q": f"{prefix}{i}", "a": "yes"}),
                },
            )
            time.sleep(rng.uniform(0, 0.01))


def same_transaction(url: str, prefix: str, trials: int, rng: random.Random) -> None:
    with connect(url) as c:
        for i in range(trials):
            with c.transaction():
                ask(c, f"{prefix}{i}")
                answer(c, f"{prefix}{i}")
            time.sleep(rng.uniform(0, 0.01))


def two_connections(url: str, prefix: str, trials: int, rng: random.Random, burst: int = 0) -> None:
    with connect(url) as asker, connect(url) as answerer:
        for i in range(trials):
            if burst and i % 100 == 0:
                asker.execute(
                    "select conveyor.emit(%s, 'chat.typing.started', '{}') from generate_series(1, %s)",
                    (TENANT, burst),
                )
            ask(asker, f"{prefix}{i}")
            time.sleep(rng.uniform(0, 0.05))
            answer(answerer, f"{prefix}{i}")


def during_burst(url: str, prefix: str, trials: int, rng: random.Random) -> None:
    two_connections(url, prefix, trials, rng, burst=400)


def after_waiting(url: str, prefix: str, trials: int, rng: random.Random) -> None:
    """Questions in groups of 20; each answered 0-50 ms after its execution is seen waiting."""
    with connect(url) as asker, connect(url) as answerer:
        for first in range(0, trials, 20):
            group = [f"{prefix}{i}" for i in range(first, min(first + 20, trials))]
            for q in group:
                ask(asker, q)
            pending = set(group)
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                rows = answerer.execute(
                    "select trigger -> 'payload' ->> 'q' as q from conveyor.executions"
                    " where status = 'waiting' and trigger -> 'payload' ->> 'q' = any(%s)",
                    (list(pending),),
                ).fetchall()
                for row in rows:
                    time.sleep(rng.uniform(0, 0.05))
                    answer(answerer, row["q"])
                    pending.discard(row["q"])
                time.sleep(0.005)
            assert not pending, f"never seen waiting: {sorted(pending)}"


SCENARIOS: list[tuple[str, str, Callable[[str, str, int, random.Random], None]]] = [
    ("same statement", "s", same_statement),
    ("same transaction", "t", same_transaction),
    ("two connections, 0-50 ms gaps", "c", two_connections),
    ("two connections during 400-event bursts", "b", during_burst),
    ("answer 0-50 ms after the wait is visible", "w", after_waiting),
]


def run(url: str, trials: int, seed: int = 7) -> list[tuple[str, int, int, int]]:
    """Every scenario with racing dispatchers and ticks; (scenario, trials, lost, twice) each."""
    rng = random.Random(seed)
    results = []
    with connect(url) as conn:
        conn.execute("select conveyor.create_tenant(%s, 'Acme')", (TENANT,))
        publish(conn, TENANT, ask_workflow())
        for name, prefix, scenario in SCENARIOS:
            with Racers(url):
                scenario(url, prefix, trials, rng)
            settle(conn)
            lost, twice = lost_and_twice(conn, [f"{prefix}{i}" for i in range(trials)])
            results.append((name, trials, len(lost), len(twice)))
            print(f"{name}: {trials} trials, {len(lost)} lost, {len(twice)} resumed twice", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=1000, help="trials per scenario")
    args = parser.parse_args()
    with temporary_database() as url:
        results = run(url, args.trials)
    total_lost = sum(r[2] for r in results)
    total_twice = sum(r[3] for r in results)
    print(f"all scenarios: {total_lost} lost, {total_twice} resumed twice (target 0 and 0)")
    body = (
        "Two dispatch loops and two tick loops racing, events of the same tenant that answer nothing\n"
        "every ~5 ms; wait timeout 1 h, everything timed out at the end.\n\n"
        "| scenario | trials | lost | resumed twice |\n|---|---|---|---|\n"
        + "\n".join(f"| {n} | {t:,} | {lost} | {twice} |" for n, t, lost, twice in results)
    )
    command = ".venv/bin/python -m bench.wait_races"
    if args.trials != 1000:
        command += f" --trials {args.trials}"
    record("Waits for events under races", command, body)
    if total_lost or total_twice:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
