"""The console's pages (docs/console.md): workflows with stats, executions with filters,
one execution's timeline, events and why they started what they did, dead letters with a
requeue button, the signed-in user's approvals; campaigns are in campaigns.py. Each page
signs in (auth.py), reads (queries.py, each query tenant-filtered) and renders (html.py,
everything escaped)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from conveyor.serve.console import queries as q
from conveyor.serve.console import timeline
from conveyor.serve.console.auth import COOKIE, signed_in, tenant_of
from conveyor.serve.console.html import chart, esc, execution_link, link, page, status, table, url
from conveyor.serve.tokens import Principal

Page = Callable[[Request, Principal, str], Awaitable[Response]]
MAX_BIGINT = 2**63 - 1


def pool_of(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


def _login_page(reason: str, status_code: int = 401) -> HTMLResponse:
    body = (
        f'<p class="error">{esc(reason)}</p><form method="post" action="/console/login">'
        '<label>User token <input name="token" type="password" autocomplete="off" size="60"></label> '
        '<button type="submit">Sign in</button></form>'
        "<p>Sign a token with <code>conveyor tokens sign</code> (docs/console.md).</p>"
    )
    return HTMLResponse(page("Sign in", body), status_code)


def _with_cookie(response: Response, token: str, principal: Principal) -> Response:
    max_age = max(1, int(principal.expires_at.timestamp() - datetime.now().timestamp()))
    response.set_cookie(COOKIE, token, max_age=max_age, httponly=True, samesite="strict", path="/")
    return response


def console_page(render: Page) -> Callable[[Request], Awaitable[Response]]:
    """Sign in (a `?token=` once sets the cookie and is dropped from the URL), then render."""

    async def endpoint(request: Request) -> Response:
        token = request.query_params.get("token")
        principal = await signed_in(request, token)
        if isinstance(principal, str):
            return _login_page(principal)
        if token is not None:
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            return _with_cookie(RedirectResponse(target, 303), token, principal)
        try:
            return await render(request, principal, tenant_of(request, principal))
        except (ValueError, psycopg.errors.DataError) as exc:
            return HTMLResponse(page("Bad request", f'<p class="error">{esc(exc)}</p>'), 400)

    return endpoint


def who(principal: Principal, tenant: str) -> str:
    role = "operator" if principal.operator else "admin"
    return f"{principal.user} ({role}) · tenant {tenant}"


def _int(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_BIGINT:
        raise ValueError(f"{name}: {text!r} is not an id")
    return int(text)


def _limit(request: Request) -> int:
    size = _int(request, "limit") or q.PAGE_SIZE
    return min(size, q.MAX_PAGE_SIZE)


async def login(request: Request) -> Response:
    body = await request.body()  # a urlencoded form with one field; guard.py bounds the size
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    principal = await signed_in(request, token)
    if isinstance(principal, str):
        return _login_page(principal)
    return _with_cookie(RedirectResponse("/console", 303), token, principal)


async def logout(request: Request) -> Response:
    response = RedirectResponse("/console/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def login_form(request: Request) -> Response:
    return _login_page("paste a user token to sign in", 200)


async def workflows(request: Request, principal: Principal, tenant: str) -> Response:
    found = await q.rows(pool_of(request), q.WORKFLOWS, {"tenant": tenant, "limit": q.MAX_PAGE_SIZE})
    buckets: dict[str, list[tuple[datetime, int, int]]] = {}
    slugs = [w["slug"] for w in found]
    for row in await q.rows(pool_of(request), q.CHART, {"tenant": tenant, "slugs": slugs}):
        buckets.setdefault(row["slug"], []).append((row["at"], row["runs"], row["failed"]))
    body = "<p>The last 24 hours.</p>" + table(
        [
            "Workflow",
            "Name",
            "Active",
            "Runs",
            "Success %",
            "p50 ms",
            "p95 ms",
            "Last error",
            "Runs / failures per hour",
        ],
        [
            [
                f'<a href="{link("/console/executions", tenant=tenant, workflow=w["slug"])}">{esc(w["slug"])}</a>',
                esc(w["name"]),
                "yes" if w["active"] else "no",
                esc(w["runs"]),
                esc(w["success_rate"]),
                esc(w["p50_ms"]),
                esc(w["p95_ms"]),
                esc(w["last_error"]),
                chart(buckets.get(w["slug"], [])),
            ]
            for w in found
        ],
    )
    return HTMLResponse(page("Workflows", body, who=who(principal, tenant), tenant=tenant))


def _filters(request: Request, tenant: str) -> str:
    get = request.query_params.get
    options = "".join(
        f"<option{' selected' if get('status') == s else ''}>{esc(s)}</option>" for s in ("", *q.STATUSES)
    )
    return (
        '<form class="filters" method="get">'
        + (f'<input type="hidden" name="tenant" value="{esc(tenant)}">' if tenant else "")
        + f'<label>Workflow <input name="workflow" value="{esc(get("workflow"))}"></label>'
        f'<label>Status <select name="status">{options}</select></label>'
        f'<label>Entity <input name="entity" value="{esc(get("entity"))}"></label>'
        f'<label>Since <input name="since" type="datetime-local" value="{esc(get("since"))}"></label>'
        f'<label>Until <input name="until" type="datetime-local" value="{esc(get("until"))}"></label>'
        '<button type="submit">Filter</button></form>'
    )


async def executions(request: Request, principal: Principal, tenant: str) -> Response:
    get = request.query_params.get
    if get("status") and get("status") not in q.STATUSES:
        raise ValueError(f"status: {get('status')!r} is not one of {', '.join(q.STATUSES)}")
    limit = _limit(request)
    params = {
        "tenant": tenant,
        "workflow": get("workflow") or None,
        "status": get("status") or None,
        "entity": get("entity") or None,
        "since": q.since_param(get("since")),
        "until": q.since_param(get("until")),
        "before": _int(request, "before"),
        "limit": limit,
    }
    found = await q.rows(pool_of(request), q.EXECUTIONS, params)
    body = _filters(request, tenant) + table(
        ["#", "Workflow", "Status", "Step", "Entity", "Created", "ms", "Error"],
        [
            [
                execution_link(x["execution_id"], tenant),
                esc(x["slug"]),
                status(x["status"]),
                esc(x["current_step"]),
                esc(f"{x['entity_type'] or ''} {x['entity_id'] or ''}".strip()),
                esc(x["created_at"]),
                esc(x["ms"]),
                esc(x["error"]),
            ]
            for x in found
        ],
        row_ids=[str(x["execution_id"]) for x in found],
    )
    if len(found) == limit:
        more = {k: v for k, v in request.query_params.items() if k != "before"} | {
            "before": found[-1]["execution_id"]
        }
        body += f'<p><a class="next" href="{link("/console/executions", **more)}">Older →</a></p>'
    return HTMLResponse(page("Executions", body, who=who(principal, tenant), tenant=tenant))


async def execution(request: Request, principal: Principal, tenant: str) -> Response:
    execution_id = int(request.path_params["id"])
    data = await timeline.load(pool_of(request), tenant, execution_id) if execution_id <= MAX_BIGINT else None
    if data is None:
        return HTMLResponse(
            page("Not found", f"<p>No execution {execution_id} in tenant {esc(tenant)}.</p>"), 404
        )
    body = (
        f'<div id="timeline" data-stream="{link(f"/console/executions/{execution_id}/live", tenant=tenant)}">'
    )
    body += timeline.fragment(data, tenant) + "</div>"
    title = f"Execution {execution_id}"
    return HTMLResponse(page(title, body, who=who(principal, tenant), tenant=tenant, script="live"))


async def events(request: Request, principal: Principal, tenant: str) -> Response:
    params = {"tenant": tenant, "before": _int(request, "before"), "limit": _limit(request)}
    found = await q.rows(pool_of(request), q.EVENTS, params)

    def started(e: dict[str, Any]) -> str:
        return " ".join(execution_link(s["id"], tenant) + " " + status(s["status"]) for s in e["started"])

    def why(e: dict[str, Any]) -> str:
        return "<br>".join(f'<span class="{esc(w["level"])}">{esc(w["message"])}</span>' for w in e["why"])

    body = table(
        ["#", "Type", "Entity", "Occurred", "Dispatched", "Started", "Why (dispatch's log)"],
        [
            [
                esc(e["event_id"]),
                esc(e["event_type"]),
                esc(f"{e['entity_type'] or ''} {e['entity_id'] or ''}"),
                esc(e["occurred_at"]),
                esc(e["dispatched_at"]),
                started(e),
                why(e),
            ]
            for e in found
        ],
    )
    return HTMLResponse(page("Events", body, who=who(principal, tenant), tenant=tenant))


async def dead_letters(request: Request, principal: Principal, tenant: str) -> Response:
    params = {"tenant": tenant, "before": _int(request, "before"), "limit": _limit(request)}
    found = await q.rows(pool_of(request), q.DEAD_LETTERS, params)
    notice = request.query_params.get("requeued")
    body = f'<p class="notice">Requeued as message {esc(notice)}.</p>' if notice else ""
    body += table(
        ["#", "Execution", "Step", "Reason", "Last error", "Attempts", "Dead at", ""],
        [
            [
                esc(d["dead_letter_id"]),
                esc(d["execution_id"]),
                esc(d["step_id"]),
                esc(d["reason"]),
                esc(d["last_error"]),
                esc(d["attempts"]),
                esc(d["dead_at"]),
                '<form method="post" action="'
                + link(f"/console/dead-letters/{d['dead_letter_id']}/requeue", tenant=tenant)
                + '">'
                '<button type="submit" class="requeue">Requeue</button></form>',
            ]
            for d in found
        ],
        row_ids=[str(d["dead_letter_id"]) for d in found],
    )
    return HTMLResponse(page("Dead letters", body, who=who(principal, tenant), tenant=tenant))


async def requeue(request: Request, principal: Principal, tenant: str) -> Response:
    """The same SQL function as `conveyor actions requeue`."""
    dead_letter_id = int(request.path_params["id"])
    async with pool_of(request).connection() as conn:
        try:
            row = await (
                await conn.execute("select conveyor.requeue_dead_letter(%s, %s)", (tenant, dead_letter_id))
            ).fetchone()
        except psycopg.Error as exc:
            message = exc.diag.message_primary or type(exc).__name__
            return HTMLResponse(page("Requeue refused", f'<p class="error">{esc(message)}</p>'), 409)
    assert row is not None
    return RedirectResponse(url("/console/dead-letters", tenant=tenant, requeued=row[0]), 303)


async def approvals(request: Request, principal: Principal, tenant: str) -> Response:
    found = await q.rows(
        pool_of(request),
        "select * from conveyor.list_approvals(%(tenant)s, %(user)s, true, %(limit)s)",
        {"tenant": tenant, "user": principal.user, "limit": q.MAX_PAGE_SIZE},
    )
    body = f"<p>Waiting for {esc(principal.user)} (decide with POST /api/approvals/&lt;id&gt;/approve|reject).</p>"
    body += table(
        ["#", "Execution", "Workflow", "Step", "Title", "Message"],
        [
            [
                esc(a["request_id"]),
                execution_link(a["execution_id"], tenant),
                esc(a["workflow"]),
                esc(a["step_id"]),
                esc(a["title"]),
                esc(a["message"]),
            ]
            for a in found
        ],
    )
    return HTMLResponse(page("Approvals", body, who=who(principal, tenant), tenant=tenant))
