"""GET /api/executions/<id> for the HTTP API that starts runs: the same bearer API key as
POST /api/workflows/<slug>/runs (conveyor.http_trigger) reads only its tenant's executions;
another tenant's id, like one that does not exist, is 404."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from conveyor.serve.console import timeline

MAX_BIGINT = 2**63 - 1
# The key's tenant, as conveyor.http_trigger finds it (sql/webhooks.sql).
KEY_TENANT = """
select tenant_id from conveyor.api_keys
where key_hash = sha256(pg_catalog.convert_to(%s, 'UTF8')) and revoked_at is null
"""


async def execution_json(request: Request) -> Response:
    authorization = request.headers.get("authorization", "")
    key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    if not key:
        return JSONResponse({"error": "missing API key: send Authorization: Bearer <key>"}, 401)
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        row = await (await conn.execute(KEY_TENANT, (key,))).fetchone()
    if row is None:
        return JSONResponse({"error": "missing, unknown or revoked API key"}, 401)
    execution_id = int(request.path_params["id"])
    data = await timeline.load(pool, row[0], execution_id) if execution_id <= MAX_BIGINT else None
    if data is None:
        return JSONResponse({"error": f"no execution {execution_id}"}, 404)
    return JSONResponse(timeline.as_json(data))
