"""Approvals over HTTP with a user's token (`conveyor serve`, runner/conveyor/serve/approval_routes.py):
list, approve, reject, delegate, and each refusal with its status and the SQL message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.sql.approval_helpers import ask, request_of, result

Conn = psycopg.Connection[dict[str, Any]]
SECRET = "k" * 48


@pytest.fixture
def server(db_url: str, conn: Conn) -> Iterator[str]:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('globex', 'Globex')"
    )
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        yield running.url


def as_user(user: str, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.sign(SECRET, tenant, user, 60)}"}


def test_an_approver_lists_and_approves_with_their_token(server: str, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann", "bob"], "due": "1d", "title": "Laptop"})
    request_id = request_of(conn, execution_id)["request_id"]

    listed = httpx.get(server + "/api/approvals", headers=as_user("ann"))
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["approvals"]
    assert (item["request_id"], item["title"], item["asked"], item["state"], item["workflow"]) == (
        request_id,
        "Laptop",
        True,
        "pending",
        "expense",
    )
    assert item["action_url"] == f"/approvals/{request_id}"
    assert httpx.get(server + "/api/approvals", headers=as_user("eve")).json() == {"approvals": []}

    first = httpx.post(
        server + f"/api/approvals/{request_id}/approve", headers=as_user("ann"), json={"note": "needed"}
    )
    assert first.status_code == 200, first.text
    assert first.json() | {"state": None} == {
        "request_id": request_id,
        "decision": "approve",
        "user": "ann",
        "state": None,
        "outcome": None,
        "continued": False,
    }
    # without a body too
    second = httpx.post(server + f"/api/approvals/{request_id}/approve", headers=as_user("bob"))
    assert second.status_code == 200 and second.json()["continued"] is True, second.text
    assert result(conn, execution_id) == ("completed", "approved")
    decisions = conn.execute(
        "select user_id, decision, note from conveyor.approval_decisions order by decision_id"
    ).fetchall()
    assert decisions == [
        {"user_id": "ann", "decision": "approve", "note": "needed"},
        {"user_id": "bob", "decision": "approve", "note": None},
    ]
    everything = httpx.get(server + "/api/approvals", params={"all": "true"}, headers=as_user("ann")).json()
    assert [(a["request_id"], a["outcome"]) for a in everything["approvals"]] == [(request_id, "approved")]


def test_delegate_and_reject_over_http(server: str, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann"], "due": "1d"})
    request_id = request_of(conn, execution_id)["request_id"]
    handed = httpx.post(
        server + f"/api/approvals/{request_id}/delegate",
        headers=as_user("ann"),
        json={"to_user": "eve", "reason": "holiday"},
    )
    assert handed.status_code == 200 and handed.json()["delegated_to"] == "eve", handed.text
    rejected = httpx.post(
        server + f"/api/approvals/{request_id}/reject", headers=as_user("eve"), json={"note": "no"}
    )
    assert rejected.status_code == 200 and rejected.json()["outcome"] == "rejected", rejected.text
    assert result(conn, execution_id) == ("completed", "rejected")


def test_refusals_answer_with_their_status_and_the_sql_message(server: str, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann", "bob"], "due": "1d", "mode": "sequence"})
    request_id = request_of(conn, execution_id)["request_id"]
    url = server + f"/api/approvals/{request_id}"
    cases = [
        # not an approver
        (httpx.post(url + "/approve", headers=as_user("mallory")), 403, "'mallory' is not an approver"),
        # another tenant's request: as if there were none
        (
            httpx.post(url + "/approve", headers=as_user("ann", "globex")),
            404,
            f"approval request {request_id} does not exist for tenant 'globex'",
        ),
        # not their turn yet
        (
            httpx.post(url + "/approve", headers=as_user("bob")),
            409,
            "in sequence: it waits for 'ann' (approver 1 of 2), not 'bob'",
        ),
        # bodies
        (httpx.post(url + "/delegate", headers=as_user("ann"), json={}), 400, "the body needs to_user"),
        (
            httpx.post(url + "/approve", headers=as_user("ann"), json={"grade": 1}),
            400,
            "unknown body key 'grade'",
        ),
        (
            httpx.post(url + "/approve", headers=as_user("ann"), json={"note": 5}),
            400,
            "note must be a string",
        ),
        (httpx.post(url + "/approve", headers=as_user("ann"), content=b"[1"), 400, "not valid JSON"),
        (httpx.post(url + "/shrug", headers=as_user("ann")), 404, "not found"),
        (
            httpx.post(server + "/api/approvals/99999999999999999999/approve", headers=as_user("ann")),
            404,
            "does not exist",
        ),
        (httpx.get(server + "/api/approvals", params={"limit": "0"}, headers=as_user("ann")), 400, "limit"),
        # no token
        (httpx.post(url + "/approve"), 401, "missing token"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (status, response.text)
        assert message in response.json()["error"], response.text
    assert conn.execute("select count(*) as n from conveyor.approval_decisions").fetchone() == {"n": 0}

    assert httpx.post(url + "/approve", headers=as_user("ann")).status_code == 200
    assert httpx.post(url + "/reject", headers=as_user("bob"), json={"note": "no"}).status_code == 200
    again = httpx.post(url + "/approve", headers=as_user("bob"))
    assert (again.status_code, again.json()) == (
        409,
        {"error": f"approval request {request_id} is already rejected"},
    )
