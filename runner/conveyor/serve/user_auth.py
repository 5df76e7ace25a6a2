"""Who a request acts for: the platform user a short-lived token names (tokens.py).

Every user route (`/api/me`, notifications, approvals) starts with `authenticated_user`:
it answers 503 when the server has no token secret, 401 (with `WWW-Authenticate`) for a
missing, forged, expired or malformed token or one naming a tenant that does not exist,
and otherwise returns the verified principal. The token comes from `Authorization:
Bearer ...` or, for `EventSource` (which cannot set headers), `?access_token=`.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse

from conveyor.serve.tokens import Principal, TokenError, bearer, verify


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers or None)


def unauthorized(message: str) -> JSONResponse:
    return _error(401, message, **{"WWW-Authenticate": 'Bearer realm="conveyor"'})


async def authenticated_user(request: Request) -> Principal | JSONResponse:
    """The verified principal of the request, or the response that refuses it."""
    secret: str | None = request.app.state.token_secret
    if secret is None:
        return _error(503, "user tokens are not configured on this server (set CONVEYOR_TOKEN_SECRET)")
    try:
        principal = verify(
            secret, bearer(request.headers.get("authorization"), request.query_params.get("access_token"))
        )
    except TokenError as exc:
        return unauthorized(str(exc))
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "select 1 from conveyor.tenants where tenant_id = %s", (principal.tenant,)
        )
        known = await cursor.fetchone()
    if known is None:
        return unauthorized(f"token names tenant {principal.tenant!r}, which does not exist")
    return principal
