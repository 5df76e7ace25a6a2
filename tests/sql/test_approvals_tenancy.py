"""Approvals through the application role (conveyor_app with conveyor.set_tenant): a tenant
decides, delegates and lists its own requests only; another tenant's request is refused as
if it did not exist, and nothing of it changes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.approval_helpers import ask, audit, decide, delegate, listed, request_of, result
from tests.sql.tenant_context import acting_for, mint_token

Conn = psycopg.Connection[dict[str, Any]]

PAIR = {"approvers": ["ann", "bob"], "due": "2d", "quorum": "any"}


def test_a_tenant_decides_its_own_request_through_the_application_role(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    execution_id = ask(two_tenants, "acme", PAIR)
    request_id = request_of(two_tenants, execution_id)["request_id"]
    with acting_for(app, acme):
        assert listed(app, "acme", "ann") == [request_id]
        delegate(app, "acme", "bob", request_id, "eve", "away")
        answer = decide(app, "acme", "ann", request_id, "approve", "ok")
    assert answer["continued"] is True
    assert result(two_tenants, execution_id) == ("completed", "approved")


def test_another_tenants_request_is_refused_and_left_unchanged(app: Conn, two_tenants: Conn) -> None:
    execution_id = ask(two_tenants, "acme", PAIR)
    request_id = request_of(two_tenants, execution_id)["request_id"]
    globex = mint_token(two_tenants, "globex")
    # in its own name: the request is not globex's, and looks like none at all
    with (
        pytest.raises(
            psycopg.errors.NoDataFound,
            match=f"approval request {request_id} does not exist for tenant 'globex'",
        ),
        acting_for(app, globex),
    ):
        decide(app, "globex", "ann", request_id, "approve")
    with (
        pytest.raises(psycopg.errors.NoDataFound, match="does not exist for tenant 'globex'"),
        acting_for(app, globex),
    ):
        delegate(app, "globex", "ann", request_id, "mallory")
    # in acme's name with globex's token: refused before anything is read
    with (
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="tenant 'acme' is not this session's tenant"
        ),
        acting_for(app, globex),
    ):
        decide(app, "acme", "ann", request_id, "approve")
    with (
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="tenant 'acme' is not this session's tenant"
        ),
        acting_for(app, globex),
    ):
        listed(app, "acme", "ann")
    with acting_for(app, globex):
        assert listed(app, "globex", "ann") == []
        # row-level security: globex sees its own seeded request, not acme's
        rows = app.execute("select request_id, tenant_id from conveyor.approval_requests").fetchall()
        assert request_id not in [r["request_id"] for r in rows]
        assert {r["tenant_id"] for r in rows} == {"globex"}
    assert audit(two_tenants, request_id) == []
    assert request_of(two_tenants, execution_id)["votes"] == [None, None]
    assert result(two_tenants, execution_id) == ("waiting", None)


def test_without_a_verified_tenant_the_application_role_may_not_decide(app: Conn, two_tenants: Conn) -> None:
    execution_id = ask(two_tenants, "acme", PAIR)
    request_id = request_of(two_tenants, execution_id)["request_id"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set for this session"):
        decide(app, "acme", "ann", request_id, "approve")


@pytest.mark.parametrize(
    "call",
    [
        "select conveyor.approval_due(now(), 10)",
        "select conveyor.approval_close(1, 'cancelled')",
        "select conveyor.approval_apply(null, now())",
    ],
)
def test_the_engines_approval_internals_are_refused_to_the_application_role(
    app: Conn, acme: str, call: str
) -> None:
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for"),
        acting_for(app, acme),
    ):
        app.execute(call)
