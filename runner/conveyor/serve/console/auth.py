"""Who is signed in to the console: the same signed user token as the notification stream
(tokens.py, docs/tokens.md), pasted once (`?token=` or the login form) and then kept in an
HttpOnly, SameSite=Strict cookie. A tenant's token sees its tenant; a token with the
`operator` claim sees every tenant (and picks one with `?tenant=`)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from conveyor.serve.tokens import Principal, TokenError, bearer, verify

COOKIE = "conveyor_console"


async def signed_in(request: Request, token: str | None = None) -> Principal | str:
    """The principal, or the reason there is none (shown on the login page)."""
    secret: str | None = request.app.state.token_secret
    if secret is None:
        return "user tokens are not configured on this server (set CONVEYOR_TOKEN_SECRET)"
    if token is None:
        token = bearer(request.headers.get("authorization"), request.cookies.get(COOKIE))
    try:
        principal = verify(secret, token)
    except TokenError as exc:
        return str(exc)
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "select 1 from conveyor.tenants where tenant_id = %s", (principal.tenant,)
        )
        if await cursor.fetchone() is None:
            return f"token names tenant {principal.tenant!r}, which does not exist"
    return principal


def tenant_of(request: Request, principal: Principal) -> str:
    """The tenant a page shows: the token's, or for an operator the one `?tenant=` names."""
    if principal.operator:
        return request.query_params.get("tenant") or principal.tenant
    return principal.tenant
