"""Inbound webhooks and manual runs over real HTTP through `conveyor serve`."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from conveyor.serve import ServeSettings, serve_in_thread
from tests.e2e.helpers import publish_by_hand

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=2)) as running:
        yield running.url


def publish_hook(conn: Conn, webhook: dict[str, Any] | None = None) -> dict[str, Any]:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme') on conflict do nothing"
    )
    document = {
        "slug": "form-submitted",
        "name": "Form submitted",
        "trigger": {"webhook": webhook or {}},
        "steps": [{"id": "keep", "set": {"email": "{{trigger.payload.body.email}}"}}],
    }
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
    row = conn.execute("select * from conveyor.webhook_endpoint('acme', 'form-submitted')").fetchone()
    assert row is not None
    return row


def signed(secret: str, body: bytes, at: float | None = None) -> dict[str, str]:
    stamp = str(int(at if at is not None else time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Conveyor-Signature": f"t={stamp},v1={digest}", "Content-Type": "application/json"}


def executions(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select execution_id, status, vars, trigger from conveyor.executions").fetchall()


def test_signed_delivery_starts_the_workflow(server: str, conn: Conn) -> None:
    endpoint = publish_hook(conn)
    body = json.dumps({"email": "ada@example.com"}).encode()
    headers = {**signed(endpoint["secret"], body), "X-Conveyor-Delivery": "d-1", "Authorization": "Bearer x"}
    response = httpx.post(server + endpoint["path"], content=body, headers=headers)
    assert response.status_code == 202, response.text
    [execution] = executions(conn)
    assert response.json() == {"status": "accepted", "execution_id": execution["execution_id"]}
    assert execution["status"] == "completed" and execution["vars"] == {"email": "ada@example.com"}
    sent_headers = execution["trigger"]["payload"]["headers"]
    assert "x-conveyor-signature" not in sent_headers and "authorization" not in sent_headers
    assert sent_headers["x-conveyor-delivery"] == "d-1"


def test_duplicate_delivery_is_acknowledged_but_not_run_twice(server: str, conn: Conn) -> None:
    endpoint = publish_hook(conn)
    body = b'{"email": "a@b.c"}'
    headers = {**signed(endpoint["secret"], body), "X-Conveyor-Delivery": "same"}
    first = httpx.post(server + endpoint["path"], content=body, headers=headers)
    second = httpx.post(server + endpoint["path"], content=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert second.json()["execution_id"] == first.json()["execution_id"]
    assert len(executions(conn)) == 1


@pytest.mark.parametrize(
    ("tamper", "status", "error"),
    [
        ("bad_signature", 401, "signature does not match"),
        ("no_signature", 401, "missing or malformed X-Conveyor-Signature"),
        ("replayed", 401, "outside the allowed tolerance"),
        ("future", 401, "outside the allowed tolerance"),
    ],
)
def test_unsigned_or_replayed_requests_are_refused(
    server: str, conn: Conn, tamper: str, status: int, error: str
) -> None:
    endpoint = publish_hook(conn)
    body = b'{"email": "a@b.c"}'
    headers = {
        "bad_signature": signed("not-the-secret" * 3, body),
        "no_signature": {"Content-Type": "application/json"},
        "replayed": signed(endpoint["secret"], body, at=time.time() - 600),
        "future": signed(endpoint["secret"], body, at=time.time() + 600),
    }[tamper]
    response = httpx.post(server + endpoint["path"], content=body, headers=headers)
    assert response.status_code == status
    assert error in response.json()["error"]
    assert executions(conn) == []


def test_method_ip_and_size_limits(server: str, conn: Conn) -> None:
    endpoint = publish_hook(conn, {"methods": ["PUT"], "max_body_bytes": 64})
    body = b'{"email": "a@b.c"}'
    wrong_method = httpx.post(
        server + endpoint["path"], content=body, headers=signed(endpoint["secret"], body)
    )
    assert wrong_method.status_code == 405 and "use PUT" in wrong_method.json()["error"]
    big = b'{"email": "' + b"x" * 100 + b'"}'
    too_big = httpx.put(server + endpoint["path"], content=big, headers=signed(endpoint["secret"], big))
    assert too_big.status_code == 413
    ok = httpx.put(server + endpoint["path"], content=body, headers=signed(endpoint["secret"], body))
    assert ok.status_code == 202
    conn.execute("update conveyor.webhook_endpoints set ip_allowlist = '{10.0.0.0/8}'")
    blocked = httpx.put(server + endpoint["path"], content=body, headers=signed(endpoint["secret"], body))
    assert blocked.status_code == 403 and "127.0.0.1 is not allowed" in blocked.json()["error"]
    counts = conn.execute(
        "select call_count, accepted_count, last_status from conveyor.webhook_endpoints"
    ).fetchone()
    assert counts == {"call_count": 4, "accepted_count": 1, "last_status": 403}


def test_unknown_path_is_404(server: str, conn: Conn) -> None:
    publish_hook(conn)
    response = httpx.post(server + "/hooks/" + "x" * 43, content=b"{}")
    assert response.status_code == 404


def test_rotated_secret_replaces_the_old_one(server: str, conn: Conn) -> None:
    endpoint = publish_hook(conn)
    new_secret = conn.execute(
        "select conveyor.rotate_webhook_secret('acme', 'form-submitted') as s"
    ).fetchone()
    assert new_secret is not None
    body = b"{}"
    assert (
        httpx.post(
            server + endpoint["path"], content=body, headers=signed(endpoint["secret"], body)
        ).status_code
        == 401
    )
    assert (
        httpx.post(server + endpoint["path"], content=body, headers=signed(new_secret["s"], body)).status_code
        == 202
    )


def test_manual_run_over_http_needs_a_valid_api_key(server: str, conn: Conn) -> None:
    key = {"k": publish_by_hand(conn)}
    url = server + "/api/workflows/by-hand/runs"
    assert httpx.post(url, json={"who": "x"}).status_code == 401
    assert (
        httpx.post(url, json={"who": "x"}, headers={"Authorization": "Bearer cvk_wrong"}).status_code == 401
    )
    missing = httpx.post(
        server + "/api/workflows/nope/runs", json={}, headers={"Authorization": f"Bearer {key['k']}"}
    )
    assert missing.status_code == 404
    response = httpx.post(url, json={"who": "Ada"}, headers={"Authorization": f"Bearer {key['k']}"})
    assert response.status_code == 202, response.text
    assert [e["vars"] for e in executions(conn)] == [{"who": "Ada"}]
    conn.execute("select conveyor.revoke_api_key('acme', 'ci')")
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {key['k']}"}).status_code == 401


def test_healthz(server: str) -> None:
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}


def test_a_replayed_signature_with_a_new_or_missing_delivery_id_is_refused(server: str, conn: Conn) -> None:
    endpoint = publish_hook(conn)
    url = server + endpoint["path"]
    body = b'{"email": "a@b.c"}'
    now = time.time()
    captured = signed(endpoint["secret"], body, at=now - 10)
    first = httpx.post(url, content=body, headers={**captured, "X-Conveyor-Delivery": "d-1"})
    assert first.status_code == 202
    for replay in ({**captured, "X-Conveyor-Delivery": "d-2"}, captured):
        response = httpx.post(url, content=body, headers=replay)
        assert response.status_code == 409, response.text
        assert "this signature was already used" in response.json()["error"]
    # The sender's own redelivery (same id) is still acknowledged as a duplicate.
    again = httpx.post(url, content=body, headers={**captured, "X-Conveyor-Delivery": "d-1"})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # A new delivery is signed anew (another timestamp) and runs, with or without an id.
    for delivery, at in (("d-2", now - 5), (None, now - 4)):
        fresh = {
            **signed(endpoint["secret"], body, at=at),
            **({"X-Conveyor-Delivery": delivery} if delivery else {}),
        }
        assert httpx.post(url, content=body, headers=fresh).status_code == 202
    assert len(executions(conn)) == 3


def test_signatures_are_forgotten_once_their_timestamp_is_outside_the_tolerance(conn: Conn) -> None:
    endpoint = publish_hook(conn)
    token = endpoint["path"].removeprefix("/hooks/")
    start = int(time.time())
    for at in (start, start + 200, start + 400):
        body = b'{"email": "a@b.c"}'
        row = conn.execute(
            "select status from conveyor.receive_webhook(%s, 'POST', %s, %s, '127.0.0.1', to_timestamp(%s))",
            (
                token,
                Jsonb({k.lower(): v for k, v in signed(endpoint["secret"], body, at=at).items()}),
                body,
                at,
            ),
        ).fetchone()
        assert row == {"status": 202}
    kept = conn.execute("select extract(epoch from signed_at)::bigint as t from conveyor.webhook_signatures")
    assert sorted(r["t"] for r in kept.fetchall()) == [start + 200, start + 400]


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"caf\xe9", "text/plain", "body is not valid UTF-8 text or contains a NUL byte"),
        (b"a\x00b", "text/plain", "body is not valid UTF-8 text or contains a NUL byte"),
        (b'{"email": "\\u0000"}', "application/json", "body is not valid JSON: unsupported Unicode escape"),
        (b"[" * 1000 + b"]" * 1000, "application/json", "nested deeper than 64 levels"),
    ],
)
def test_a_webhook_body_that_cannot_be_stored_gets_400(
    server: str, conn: Conn, body: bytes, content_type: str, error: str
) -> None:
    endpoint = publish_hook(conn)
    headers = {**signed(endpoint["secret"], body), "Content-Type": content_type}
    response = httpx.post(server + endpoint["path"], content=body, headers=headers)
    assert response.status_code == 400 and error in response.json()["error"]
    assert executions(conn) == []


def test_a_delivery_past_the_plans_executions_per_month_gets_429_and_starts_nothing(
    server: str, conn: Conn
) -> None:
    endpoint = publish_hook(conn)
    conn.execute("select conveyor.set_plan('pro', %s)", (Jsonb({"executions_per_month": 1}),))
    conn.execute("select conveyor.set_tenant_plan('acme', 'pro')")
    body = b'{"email": "a@b.c"}'
    # a second apart from the first's stamp, so not its replay (stamps are whole seconds: a
    # second taken from a later clock reading could land in the first's)
    now = time.time()
    first = httpx.post(
        server + endpoint["path"], content=body, headers=signed(endpoint["secret"], body, at=now)
    )
    assert first.status_code == 202, first.text
    refused = httpx.post(
        server + endpoint["path"],
        content=body,
        headers={**signed(endpoint["secret"], body, at=now - 1), "X-Conveyor-Delivery": "d-9"},
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"].startswith(
        'quota executions_per_month of plan "pro" exceeded: tenant "acme"'
    )
    assert len(executions(conn)) == 1
    # not recorded as a delivery: sent again once the tenant has room, it runs
    assert conn.execute("select count(*) as n from conveyor.webhook_deliveries").fetchone() == {"n": 0}
    line = conn.execute(
        "select details ->> 'reason' as reason, details ->> 'delivery_id' as delivery from conveyor.execution_logs"
        " where details ->> 'reason' = 'executions_per_month'"
    ).fetchone()
    assert line == {"reason": "executions_per_month", "delivery": "d-9"}
