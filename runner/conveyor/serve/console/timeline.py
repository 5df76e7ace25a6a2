"""One execution as the console shows it: its header, its steps (each run with input,
output, error and timing) and its children (parallel / for_each / call, migration 0027).
The same fragment is the page's body and what its live stream (live.py) sends."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from conveyor.serve.console import queries as q
from conveyor.serve.console.html import esc, execution_link, link, shown_json, status, table

MAX_STEPS = 500
MAX_CHILDREN = 200


async def load(pool: AsyncConnectionPool[Any], tenant: str, execution_id: int) -> dict[str, Any] | None:
    params = {"tenant": tenant, "id": execution_id, "limit": MAX_STEPS}
    found = await q.rows(pool, q.EXECUTION, params)
    if not found:
        return None
    steps = await q.rows(pool, q.STEPS, params)
    children = await q.rows(pool, q.CHILDREN, params | {"limit": MAX_CHILDREN})
    return {"execution": found[0], "steps": steps, "children": children}


def fragment(data: dict[str, Any], tenant: str) -> str:
    x = data["execution"]
    head = (
        f'<dl class="execution"><dt>Workflow</dt><dd>{esc(x["name"])} ({esc(x["slug"])} v{esc(x["version"])})</dd>'
        f'<dt>Status</dt><dd id="execution-status">{status(x["status"])} {esc(x["wait_kind"])}</dd>'
        f"<dt>Entity</dt><dd>{esc(x['entity_type'])} {esc(x['entity_id'])}</dd>"
        f"<dt>Created</dt><dd>{esc(x['created_at'])}</dd><dt>Finished</dt><dd>{esc(x['finished_at'])}</dd>"
    )
    if x["parent_execution_id"]:
        parent = link(f"/console/executions/{x['parent_execution_id']}", tenant=tenant)
        head += f'<dt>Parent</dt><dd><a href="{parent}">#{esc(x["parent_execution_id"])}</a></dd>'
    if x["error"]:
        head += f'<dt>Error</dt><dd class="error">{shown_json(x["error"])}</dd>'
    head += "</dl>"
    steps = table(
        ["Step", "Visit", "Attempt", "Status", "Started", "ms", "Input", "Output", "Error"],
        [
            [
                esc(s["step_id"]),
                esc(s["visit"]),
                esc(s["attempt"]),
                status(s["status"]),
                esc(s["started_at"]),
                esc(s["ms"]),
                f"<pre>{shown_json(s['input'])}</pre>",
                f"<pre>{shown_json(s['output'])}</pre>",
                f"<pre>{shown_json(s['error'])}</pre>",
            ]
            for s in data["steps"]
        ],
        row_ids=[f"{s['step_id']}:{s['visit']}:{s['attempt']}" for s in data["steps"]],
    )
    children = ""
    if data["children"]:
        children = "<h2>Children</h2>" + table(
            ["Step", "Kind", "#", "Execution", "Workflow", "Status", "Error"],
            [
                [
                    esc(c["step_id"]),
                    esc(c["kind"]),
                    esc(c["child_index"]),
                    execution_link(c["execution_id"], tenant),
                    esc(c["slug"]),
                    status(c["status"]),
                    esc(c["error"]),
                ]
                for c in data["children"]
            ],
        )
    return f'{head}<h2>Steps</h2><div id="steps">{steps}</div>{children}'


def as_json(data: dict[str, Any]) -> dict[str, Any]:
    """GET /api/executions/<id>: status, steps with status/timing/output/error, children."""
    x = data["execution"]

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": x["execution_id"],
        "workflow": x["slug"],
        "version": x["version"],
        "status": x["status"],
        "current_step": x["current_step"],
        "entity": {"type": x["entity_type"], "id": x["entity_id"]},
        "created_at": iso(x["created_at"]),
        "finished_at": iso(x["finished_at"]),
        "error": x["error"],
        "steps": [
            {
                "step": s["step_id"],
                "visit": s["visit"],
                "attempt": s["attempt"],
                "status": s["status"],
                "started_at": iso(s["started_at"]),
                "finished_at": iso(s["finished_at"]),
                "ms": float(s["ms"]) if s["ms"] is not None else None,
                "output": s["output"],
                "error": s["error"],
            }
            for s in data["steps"]
        ],
        "children": [
            {
                "id": c["execution_id"],
                "step": c["step_id"],
                "kind": c["kind"],
                "index": c["child_index"],
                "workflow": c["slug"],
                "status": c["status"],
                "error": c["error"],
            }
            for c in data["children"]
        ],
    }
