"""The approval routes of `conveyor serve` (docs/approvals.md): a user's approvals, acted on
with their user token (user_auth.authenticated_user: its tenant and user are who decides).
Each forwards to one SQL function of sql/approvals.sql, which decides everything.

  GET  /api/approvals[?all=true&limit=N]   → conveyor.list_approvals(tenant, user, pending_only, limit)
  POST /api/approvals/<id>/approve         → conveyor.decide_approval(..., 'approve', note)  {"note"?}
  POST /api/approvals/<id>/reject          → conveyor.decide_approval(..., 'reject', note)   {"note"?}
  POST /api/approvals/<id>/delegate        → conveyor.delegate_approval(..., to_user, reason)
                                              {"to_user", "reason"?}

A refusal answers with the SQL message, by its SQLSTATE: 404 no such request of this
tenant, 403 not (or no longer) an approver, 409 already decided, not their turn or a
limit, 400 a bad argument or body.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.serve.bodies import BadRequest, json_too_deep, parse_json_object
from conveyor.serve.limits import Limits
from conveyor.serve.tokens import Principal
from conveyor.serve.user_auth import authenticated_user

log = logging.getLogger("conveyor.serve")

# What the SQL API's refusals answer (sql/approvals.sql lists them).
STATUS_BY_SQLSTATE = {"P0002": 404, "42501": 403, "55000": 409, "54000": 409, "22023": 400}
# The body keys each action takes; the first of delegate's is required.
BODY_KEYS = {"approve": ("note",), "reject": ("note",), "delegate": ("to_user", "reason")}
MAX_LIMIT = 500
MAX_BIGINT = 2**63 - 1


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def _one(request: Request, query: str, params: tuple[Any, ...]) -> Response:
    """The single value `query` returns, as the 200 answer; a refusal as its status."""
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute(query, params)).fetchone()
    except psycopg.Error as exc:
        status = STATUS_BY_SQLSTATE.get(exc.sqlstate or "")
        message = exc.diag.message_primary or type(exc).__name__
        if status is None:
            log.error("request failed", extra={"path": request.url.path, "error": message})
            return _error(500, "internal error")
        return _error(status, message)
    assert row is not None
    return JSONResponse(row[0])


def _body(request: Request, body: bytes, action: str) -> dict[str, Any] | Response:
    """The action's body: a JSON object of its keys, each a string; empty for approve / reject."""
    limits: Limits = request.app.state.limits
    if json_too_deep(body, limits.max_json_depth):
        return _error(400, f"body is JSON nested deeper than {limits.max_json_depth} levels")
    try:
        data = parse_json_object(body) if body.strip() else {}
    except BadRequest as exc:
        return _error(exc.status, exc.error)
    keys = BODY_KEYS[action]
    unknown = sorted(set(data) - set(keys))
    if unknown:
        return _error(400, f"{action}: unknown body key {unknown[0]!r} (expected {', '.join(keys)})")
    wrong = next((k for k in keys if k in data and not isinstance(data[k], str | None)), None)
    if wrong is not None:
        return _error(400, f"{action}: {wrong} must be a string")
    if action == "delegate" and not data.get("to_user"):
        return _error(400, "delegate: the body needs to_user (the user to hand the approval to)")
    return data


async def list_approvals(request: Request) -> Response:
    principal = await authenticated_user(request)
    if isinstance(principal, Response):
        return principal
    every = request.query_params.get("all", "false").lower()
    if every not in ("true", "false", "1", "0"):
        return _error(400, f"all: expected true or false (got {every!r})")
    limit_text = request.query_params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        return _error(400, f"limit: expected a number of requests from 1 to {MAX_LIMIT} (got {limit_text!r})")
    return await _one(
        request,
        "select jsonb_build_object('approvals', coalesce(jsonb_agg(to_jsonb(a)), '[]'))"
        " from conveyor.list_approvals(%s, %s, %s, %s) as a",
        (principal.tenant, principal.user, every in ("false", "0"), int(limit_text)),
    )


async def act(request: Request) -> Response:
    principal = await authenticated_user(request)
    if isinstance(principal, Response):
        return principal
    action = request.path_params["action"]
    if action not in BODY_KEYS:
        return _error(404, "not found")
    data = _body(request, await request.body(), action)
    if isinstance(data, Response):
        return data
    return await _decision(request, principal, action, data)


async def _decision(request: Request, principal: Principal, action: str, data: dict[str, Any]) -> Response:
    request_id: int = request.path_params["request_id"]
    if request_id > MAX_BIGINT:
        return _error(404, f"approval request {request_id} does not exist for tenant {principal.tenant!r}")
    if action == "delegate":
        return await _one(
            request,
            "select conveyor.delegate_approval(%s, %s, %s, %s, %s)",
            (principal.tenant, principal.user, request_id, data["to_user"], data.get("reason")),
        )
    return await _one(
        request,
        "select conveyor.decide_approval(%s, %s, %s, %s, %s)",
        (principal.tenant, principal.user, request_id, action, data.get("note")),
    )


APPROVAL_ROUTES = [
    Route("/api/approvals", list_approvals, methods=["GET"]),
    Route("/api/approvals/{request_id:int}/{action}", act, methods=["POST"]),
]
