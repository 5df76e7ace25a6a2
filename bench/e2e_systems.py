"""The systems bench/e2e_peers.py compares, each started the same way (worker processes,
concurrency) on its own database: Conveyor, DBOS Transact, Procrastinate; and the
process bookkeeping (children, the postmaster, CPU) they share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.e2e_measure import Phase, Sink, collect, steady, wait_until_done
from bench.harness import process_cpu_s

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLOT = HERE / "e2e_peers.png"
TENANT = "bench"


def conveyor_workflow(url: str) -> dict[str, Any]:
    """The end-to-end workflow: `set` -> `webhook.send` (a POST to `url`) -> `if` on its status."""
    return {
        "slug": "order-hook",
        "name": "Order hook",
        "trigger": {"event": "shop.order.created"},
        "steps": [
            {"id": "prepare", "set": {"seq": "{{trigger.payload.new.seq}}"}},
            {
                "id": "notify",
                "action": "webhook.send",
                "with": {
                    "url": url,
                    "body": {
                        "system": "conveyor",
                        "phase": "{{trigger.payload.new.phase}}",
                        "seq": "{{vars.seq}}",
                    },
                },
            },
            {
                "id": "check",
                "if": {"field": "steps.notify.output.status", "op": "equals", "value": 200},
                "then": None,
                "else": None,
            },
        ],
    }


class System:
    """A system under test: set up, start workers, produce a burst or one event, count done."""

    name = ""
    description = ""

    def setup(self) -> None: ...

    def start_workers(self) -> None: ...

    def stop_workers(self) -> None: ...

    def burst(self, label: str, count: int) -> float: ...

    def one(self, label: str, seq: int) -> None: ...

    def done(self, label: str) -> tuple[int, int]: ...

    workers: list[subprocess.Popen[bytes]]
    postmaster = 0  # the cluster's postmaster: its children's CPU is PostgreSQL's

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by this system's worker processes, and by the cluster's."""
        return sum(process_cpu_s(w.pid) for w in self.workers), sum(
            map(process_cpu_s, _children(self.postmaster))
        )

    def run(self, sink: Sink, burst: int, rate: float, seconds: float) -> dict[str, Phase]:
        self.setup()
        self.start_workers()
        try:
            # A short warm-up (imports, plans, connections), not measured.
            self.burst("warmup", 50)
            wait_until_done(lambda: self.done("warmup"), 50, 120)
            sink.arrivals()
            phases: dict[str, Phase] = {}

            phase = Phase()
            workers_before, postgres_before = self.cpu()
            started = time.perf_counter()
            committed = self.burst("burst", burst)
            phase.producer_s = time.perf_counter() - started
            phase.first_commit = committed
            phase.committed = dict.fromkeys(range(burst), committed)
            phase.last_completed = wait_until_done(lambda: self.done("burst"), burst, 600)
            workers_after, postgres_after = self.cpu()
            phase.worker_cpu_s = workers_after - workers_before
            phase.postgres_cpu_s = postgres_after - postgres_before
            collect(phase, sink, self.name, "burst", burst)
            phases["burst"] = phase

            phase = steady(rate, seconds, lambda seq: self.one("steady", seq))
            phase.last_completed = wait_until_done(lambda: self.done("steady"), len(phase.committed), 600)
            collect(phase, sink, self.name, "steady", len(phase.committed))
            phases["steady"] = phase
            return phases
        finally:
            self.stop_workers()


def _children(ppid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def postmaster_pid(url: str) -> int:
    # read while the connection is open: a closed connection's backend may already have
    # exited, which made some runs report 0.00 ms of PostgreSQL CPU
    with psycopg.connect(url) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        try:
            return int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # the server runs elsewhere (not the harness's cluster): no PostgreSQL CPU
            return -1


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def database_url(url: str, name: str) -> str:
    """A fresh database `name` in the cluster of `url`; returns its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'create database "{name}"')
    base, _, _ = url.rpartition("/")
    query = url.split("?", 1)[1] if "?" in url else ""
    return f"{base}/{name}" + (f"?{query}" if query else "")


# --- Conveyor ----------------------------------------------------------------------


class Conveyor(System):
    name = "conveyor"

    def __init__(self, url: str, sink: Sink, processes: int, concurrency: int) -> None:
        self.url = url
        self.sink = sink
        self.processes = processes
        self.concurrency = concurrency
        self.workers: list[subprocess.Popen[bytes]] = []
        self.conn = psycopg.connect(url, autocommit=True)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.producers: list[psycopg.Connection[Any]] = []
        self.description = (
            f"{processes} `conveyor run` process(es), CONVEYOR_CONCURRENCY={concurrency},"
            f" CONVEYOR_BATCH_SIZE={concurrency}; events are rows inserted into a watched table"
            " (statement trigger capture), the burst as one multi-row INSERT;"
            " workflow `set` → `webhook.send` → `if`"
        )

    def setup(self) -> None:
        conn = self.conn
        conn.execute("select conveyor.create_tenant(%s, 'Bench')", (TENANT,))
        conn.execute("create schema shop")
        conn.execute(
            "create table shop.orders (id bigint generated always as identity primary key,"
            " tenant_id text not null, seq integer not null, phase text not null,"
            " created_at timestamptz not null default now())"
        )
        conn.execute("select conveyor.watch('shop.orders', 'shop', 'order')")
        document = conveyor_workflow(f"{self.sink.url}/conveyor")
        conn.execute("select conveyor.publish(%s, %s)", (TENANT, Jsonb(document)))

    def start_workers(self) -> None:
        env = {
            **os.environ,
            "CONVEYOR_DATABASE_URL": self.url,
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
            "CONVEYOR_CONCURRENCY": str(self.concurrency),
            "CONVEYOR_BATCH_SIZE": str(self.concurrency),
            "CONVEYOR_LOG_LEVEL": "WARNING",
        }
        for _ in range(self.processes):
            self.workers.append(
                subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run"], env=env, cwd=ROOT)
            )
        deadline = time.monotonic() + 60
        while True:
            row = self.conn.execute("select count(*) from conveyor.live_runners()").fetchone()
            if row is not None and row[0] >= self.processes:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError("the runners did not start")
            time.sleep(0.05)

    def stop_workers(self) -> None:
        _stop(self.workers)
        self.workers = []
        self.conn.close()
        for conn in self.producers:
            conn.close()

    def burst(self, label: str, count: int) -> float:
        self.conn.execute(
            "insert into shop.orders (tenant_id, seq, phase) select %s, i, %s from generate_series(0, %s - 1) as i",
            (TENANT, label, count),
        )
        return time.time()

    def one(self, label: str, seq: int) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:  # one connection per producer thread, closed with the workers
            conn = self.local.conn = psycopg.connect(self.url, autocommit=True)
            with self.lock:
                self.producers.append(conn)
        conn.execute(
            "insert into shop.orders (tenant_id, seq, phase) values (%s, %s, %s)", (TENANT, seq, label)
        )

    def done(self, label: str) -> tuple[int, int]:
        # Phases run one after another: while an event is undispatched or an execution is
        # active (both cheap partial-index probes), the phase is not done; then count once.
        busy = self.conn.execute(
            "select exists (select from conveyor.events where dispatched_at is null)"
            " or exists (select from conveyor.executions where status in ('pending', 'running', 'waiting'))"
        ).fetchone()
        if busy is None or busy[0]:
            return 0, 0
        row = self.conn.execute(
            "select count(*) filter (where e.status = 'completed'),"
            " count(*) filter (where e.status in ('failed', 'cancelled', 'timed_out'))"
            " from conveyor.executions as e where e.trigger -> 'payload' -> 'new' ->> 'phase' = %s",
            (label,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


# --- DBOS ----------------------------------------------------------------------------


class Dbos(System):
    name = "dbos"

    def __init__(
        self,
        url: str,
        sink: Sink,
        processes: int,
        concurrency: int,
        polling: float,
        dbname: str = "dbos_bench",
    ) -> None:
        self.url = database_url(url, dbname)
        self.sink = sink
        self.processes = processes
        self.concurrency = concurrency
        self.polling = polling
        self.workers: list[subprocess.Popen[bytes]] = []
        self.description = (
            f"{processes} worker process(es) (DBOS.launch(), executor ids w0..), one DBOS queue with"
            f" worker_concurrency={concurrency} and polling_interval_sec={polling:g}; a workflow of three"
            " @DBOS.step steps (the POST in the second, httpx keep-alive client); enqueued with DBOSClient,"
            " the burst with enqueue_in_transaction in one transaction"
        )

    def start_workers(self) -> None:
        for k in range(self.processes):
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from bench.e2e_dbos_app import main; main()",
                        self.url,
                        self.sink.url,
                        f"w{k}",
                        str(self.concurrency),
                        str(self.polling),
                    ],
                    cwd=ROOT,
                )
            )
        import sqlalchemy as sa
        from dbos import DBOSClient

        deadline = time.monotonic() + 120
        while True:  # the first worker creates the system database's schema and the queue
            try:
                self.client = DBOSClient(system_database_url=self.url, application_name="e2e-peers")
                queues = [q.name for q in self.client.list_queues()]
                if "orders" in queues:
                    break
                self.client.destroy()
            except Exception:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError("the DBOS workers did not start")
            time.sleep(0.2)
        self.engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.conn = psycopg.connect(self.url, autocommit=True)
        time.sleep(1.0)  # every worker lists its queues once a second

    def stop_workers(self) -> None:
        _stop(self.workers)
        self.workers = []
        self.conn.close()
        self.client.destroy()
        self.engine.dispose()

    def _options(self, label: str, seq: int) -> Any:
        return {"queue_name": "orders", "workflow_name": "order_workflow", "workflow_id": f"{label}-{seq}"}

    def burst(self, label: str, count: int) -> float:
        with self.engine.begin() as conn:
            for seq in range(count):
                self.client.enqueue_in_transaction(conn, self._options(label, seq), label, seq)
        return time.time()

    def one(self, label: str, seq: int) -> None:
        self.client.enqueue(self._options(label, seq), label, seq)

    def done(self, label: str) -> tuple[int, int]:
        busy = self.conn.execute(  # cheap while work is left (index on status), then count once
            "select exists (select from dbos.workflow_status where status in ('ENQUEUED', 'PENDING'))"
        ).fetchone()
        if busy is None or busy[0]:
            return 0, 0
        row = self.conn.execute(
            "select count(*) filter (where status = 'SUCCESS'), count(*) filter (where status = 'ERROR')"
            " from dbos.workflow_status where workflow_uuid like %s",
            (f"{label}-%",),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


# --- Procrastinate --------------------------------------------------------------------


class Procrastinate(System):
    name = "procrastinate"

    def __init__(
        self, url: str, sink: Sink, processes: int, concurrency: int, dbname: str = "procrastinate_bench"
    ) -> None:
        self.url = database_url(url, dbname)
        self.sink = sink
        self.processes = processes
        self.concurrency = concurrency
        self.workers: list[subprocess.Popen[bytes]] = []
        self.description = (
            f"{processes} worker process(es) (app.run_worker, concurrency={concurrency}, LISTEN/NOTIFY on);"
            " one async task doing the three steps (the POST with an httpx keep-alive AsyncClient);"
            " deferred with a SyncPsycopgConnector, the burst with batch_defer in one transaction"
        )

    def setup(self) -> None:
        from bench import e2e_procrastinate_app as papp

        self.app = papp.make_app(self.url, sync=True)
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.conn = psycopg.connect(self.url, autocommit=True)

    def start_workers(self) -> None:
        for _ in range(self.processes):
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from bench.e2e_procrastinate_app import main; main()",
                        self.url,
                        self.sink.url,
                        str(self.concurrency),
                    ],
                    cwd=ROOT,
                )
            )
        deadline = time.monotonic() + 60
        while True:
            row = self.conn.execute("select count(*) from procrastinate_workers").fetchone()
            if row is not None and row[0] >= self.processes:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError("the Procrastinate workers did not start")
            time.sleep(0.1)

    def stop_workers(self) -> None:
        _stop(self.workers)
        self.workers = []
        self.app.close()
        self.conn.close()

    def burst(self, label: str, count: int) -> float:
        self.app.configure_task("order_job").batch_defer(*({"phase": label, "seq": s} for s in range(count)))
        return time.time()

    def one(self, label: str, seq: int) -> None:
        self.app.configure_task("order_job").defer(phase=label, seq=seq)

    def done(self, label: str) -> tuple[int, int]:
        busy = self.conn.execute(  # cheap while work is left (partial index), then count once
            "select exists (select from procrastinate_jobs where status in ('todo', 'doing'))"
        ).fetchone()
        if busy is None or busy[0]:
            return 0, 0
        row = self.conn.execute(
            "select count(*) filter (where status = 'succeeded'), count(*) filter (where status = 'failed')"
            " from procrastinate_jobs where args ->> 'phase' = %s",
            (label,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
