"""The DBOS Transact side of bench/e2e_peers.py: a worker process.

    python -m bench.e2e_dbos_app SYSTEM_DB_URL SINK_URL EXECUTOR_ID CONCURRENCY POLLING_S

A workflow of three steps, each a @DBOS.step (checkpointed by DBOS): an internal step, an
HTTP POST to the sink, an internal step. The process launches DBOS, registers the queue
`orders` (worker_concurrency, polling interval) and works until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import httpx
from dbos import DBOS, DBOSConfig

SINK = {"url": ""}
_client = threading.local()


def _http() -> httpx.Client:
    client = getattr(_client, "value", None)
    if client is None:
        client = _client.value = httpx.Client(timeout=30)
    return client


@DBOS.step()
def prepare(phase: str, seq: int) -> dict[str, Any]:
    return {"system": "dbos", "phase": phase, "seq": seq}


@DBOS.step()
def notify(body: dict[str, Any]) -> int:
    response = _http().post(
        f"{SINK['url']}/dbos", json=body, headers={"Idempotency-Key": DBOS.workflow_id or ""}
    )
    response.raise_for_status()
    return response.status_code


@DBOS.step()
def check(status: int) -> bool:
    return status == 200


@DBOS.workflow()
def order_workflow(phase: str, seq: int) -> bool:
    body = prepare(phase, seq)
    status = notify(body)
    return check(status)


def main() -> None:
    url, sink, executor_id, concurrency, polling = sys.argv[1:6]
    SINK["url"] = sink
    config: DBOSConfig = {
        "name": "e2e-peers",
        "system_database_url": url,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(
        "orders",
        worker_concurrency=int(concurrency),
        polling_interval_sec=float(polling),
        on_conflict="always_update",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    DBOS.destroy()


if __name__ == "__main__":
    main()
