"""The Procrastinate side of bench/e2e_peers.py: the task, and a worker process.

    python -c "from bench.e2e_procrastinate_app import main; main()" DATABASE_URL SINK_URL CONCURRENCY

Procrastinate has no steps: one async task does the three (an internal step, an HTTP POST
to the sink with an httpx AsyncClient, an internal step). The worker runs with
`concurrency` and LISTEN/NOTIFY until SIGTERM. `make_app` builds the app for a database
(the URL is only known at run time): an async connector for the worker, a synchronous one
for the producer.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import procrastinate

SINK = {"url": ""}
_client: dict[str, httpx.AsyncClient] = {}


async def order_job(context: procrastinate.JobContext, phase: str, seq: int) -> bool:
    body: dict[str, Any] = {"system": "procrastinate", "phase": phase, "seq": seq}  # step 1
    client = _client.get("value")
    if client is None:
        client = _client["value"] = httpx.AsyncClient(timeout=30)
    job_id = context.job.id if context.job is not None else 0
    response = await client.post(  # step 2
        f"{SINK['url']}/procrastinate", json=body, headers={"Idempotency-Key": str(job_id)}
    )
    response.raise_for_status()
    return response.status_code == 200  # step 3


def make_app(url: str, *, sync: bool = False) -> procrastinate.App:
    connector: procrastinate.BaseConnector = (
        procrastinate.SyncPsycopgConnector(conninfo=url)
        if sync
        else procrastinate.PsycopgConnector(conninfo=url)
    )
    app = procrastinate.App(connector=connector)
    app.task(name="order_job", queue="orders", pass_context=True)(order_job)
    return app


def main() -> None:
    url, sink, concurrency = sys.argv[1:4]
    SINK["url"] = sink
    make_app(url).run_worker(
        queues=["orders"], concurrency=int(concurrency), wait=True, install_signal_handlers=True
    )


if __name__ == "__main__":
    main()
