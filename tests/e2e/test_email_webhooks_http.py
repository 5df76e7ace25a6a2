"""Email providers' event webhooks over real HTTP through `conveyor serve`
(sql/email_webhooks.sql): Svix-signed (Resend) and Mailgun deliveries, valid, forged,
stale, replayed and duplicated, and events for messages we never sent."""

from __future__ import annotations

import base64
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

Conn = psycopg.Connection[dict[str, Any]]

SVIX_KEY = b"0123456789abcdef0123456789abcdef"
SVIX_SECRET = "whsec_" + base64.b64encode(SVIX_KEY).decode()
MAILGUN_KEY = "key-mailgun-signing-0123456789"


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=2)) as running:
        yield running.url


@pytest.fixture
def tenant(conn: Conn) -> str:
    conn.execute("select conveyor.create_tenant('acme', 'Acme', 'UTC')")
    conn.execute(
        """insert into conveyor.email_messages (tenant_id, to_address, message_id, provider_message_id, tags)
           values ('acme', 'ann@x.test', '<m1@acme.test>', 're_1', '{"campaign_id": "c1"}')"""
    )
    return "acme"


def endpoint(conn: Conn, provider: str, secret: str) -> str:
    row = conn.execute(
        "select conveyor.set_email_webhook('acme', %s, %s) as r", (provider, secret)
    ).fetchone()
    assert row is not None
    return str(row["r"]["path"])


def svix_headers(body: bytes, msg_id: str, at: float | None = None, key: bytes = SVIX_KEY) -> dict[str, str]:
    stamp = str(int(at if at is not None else time.time()))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    signature = "v1," + base64.b64encode(digest).decode()
    return {"svix-id": msg_id, "svix-timestamp": stamp, "svix-signature": f"v1,{'A' * 43}= {signature}"}


def resend(kind: str, email_id: str = "re_1", **data: Any) -> bytes:
    body = {"type": kind, "created_at": "2026-12-04T00:00:00Z", "data": {"email_id": email_id, **data}}
    return json.dumps(body).encode()


def mailgun(event: str, message_id: str = "m1@acme.test", at: float | None = None, **extra: Any) -> bytes:
    stamp = str(int(at if at is not None else time.time()))
    token = hashlib.sha256(f"{event}{stamp}{extra}".encode()).hexdigest()[:50]
    signature = hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    data = {"id": f"ev-{event}-{stamp}", "event": event, "timestamp": float(stamp)}
    data |= {"message": {"headers": {"message-id": message_id}}} | extra
    return json.dumps(
        {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}
    ).encode()


def message(conn: Conn) -> dict[str, Any]:
    row = conn.execute("select * from conveyor.email_messages").fetchone()
    assert row is not None
    return row


def events(conn: Conn) -> list[str]:
    rows = conn.execute("select event_type from conveyor.events order by event_id").fetchall()
    return [r["event_type"] for r in rows]


def test_svix_deliveries_valid_forged_stale_and_duplicate(server: str, conn: Conn, tenant: str) -> None:
    url = server + endpoint(conn, "svix", SVIX_SECRET)
    body = resend("email.delivered")
    answer = httpx.post(url, content=body, headers=svix_headers(body, "msg_1"))
    assert (answer.status_code, answer.json()) == (200, {"status": "recorded", "kind": "delivered"})
    assert message(conn)["status"] == "delivered" and events(conn) == ["email.message.delivered"]

    # the same request again, and a redelivery signed anew under the same svix-id
    assert httpx.post(url, content=body, headers=svix_headers(body, "msg_1")).json()["status"] == "duplicate"
    later = svix_headers(body, "msg_1", time.time() + 2)
    assert httpx.post(url, content=body, headers=later).json()["status"] == "duplicate"

    opened = resend("email.opened")
    forged = svix_headers(opened, "msg_2", key=b"not-the-key-not-the-key-not-the!")
    assert httpx.post(url, content=opened, headers=forged).status_code == 401
    tampered = svix_headers(opened, "msg_2")
    assert httpx.post(url, content=resend("email.clicked"), headers=tampered).status_code == 401
    stale = svix_headers(opened, "msg_2", time.time() - 301)
    answer = httpx.post(url, content=opened, headers=stale)
    assert answer.status_code == 401 and "tolerance" in answer.json()["error"]
    assert httpx.post(url, content=opened, headers={}).status_code == 401
    assert (
        httpx.post(server + "/email/hooks/" + "x" * 43, content=opened, headers=tampered).status_code == 404
    )
    assert message(conn)["opened_count"] == 0 and events(conn) == ["email.message.delivered"]

    bounced = resend("email.bounced", bounce={"message": "550 unknown user", "type": "Permanent"})
    assert httpx.post(url, content=bounced, headers=svix_headers(bounced, "msg_3")).status_code == 200
    row = message(conn)
    assert (row["status"], row["bounce_reason"]) == ("bounced", "550 unknown user")
    suppressed = conn.execute(
        "select reason from conveyor.email_suppressions where address = 'ann@x.test'"
    ).fetchone()
    assert suppressed == {"reason": "bounced"}

    # an event of mail sent by other means: acknowledged (202), nothing recorded
    other = resend("email.delivered", email_id="re_other")
    answer = httpx.post(url, content=other, headers=svix_headers(other, "msg_4"))
    assert (answer.status_code, answer.json()["status"]) == (202, "unmatched")
    odd = resend("email.opened", created_at="last tuesday")
    assert httpx.post(url, content=odd, headers=svix_headers(odd, "msg_6")).json()["status"] == "recorded"
    assert message(conn)["first_opened_at"] is not None
    ignored = resend("email.sent")
    assert (
        httpx.post(url, content=ignored, headers=svix_headers(ignored, "msg_5")).json()["status"] == "ignored"
    )
    assert events(conn) == ["email.message.delivered", "email.message.bounced", "email.message.opened"]
    event = conn.execute("select payload from conveyor.events order by event_id desc limit 1").fetchone()
    assert event is not None and event["payload"]["tags"] == {"campaign_id": "c1"}


def test_mailgun_deliveries_valid_forged_stale_and_replayed(server: str, conn: Conn, tenant: str) -> None:
    url = server + endpoint(conn, "mailgun", MAILGUN_KEY)
    body = mailgun("opened")
    assert httpx.post(url, content=body).json() == {"status": "recorded", "kind": "opened"}
    assert message(conn)["opened_count"] == 1
    # the same token and signature again (any body): a replay
    replay = json.loads(body)
    replay["event-data"]["event"] = "clicked"
    answer = httpx.post(url, content=json.dumps(replay).encode())
    assert answer.status_code == 409
    forged = json.loads(mailgun("clicked", url="https://x.test"))
    forged["signature"]["signature"] = "0" * 64
    assert httpx.post(url, content=json.dumps(forged).encode()).status_code == 401
    assert httpx.post(url, content=mailgun("clicked", at=time.time() - 600)).status_code == 401
    assert httpx.post(url, content=b"not json").status_code == 401
    assert message(conn)["clicked_count"] == 0

    # the same event id delivered again under a fresh signature: recorded once
    first = json.loads(mailgun("clicked", url="https://x.test/a"))
    again = json.loads(mailgun("clicked", at=time.time() + 1, url="https://x.test/a"))
    again["event-data"]["id"] = first["event-data"]["id"]
    assert httpx.post(url, content=json.dumps(first).encode()).json()["status"] == "recorded"
    assert httpx.post(url, content=json.dumps(again).encode()).json()["status"] == "duplicate"
    assert message(conn)["clicked_count"] == 1

    # a temporary failure is not a bounce; a permanent one is
    temporary = mailgun("failed", severity="temporary", at=time.time() + 2)
    assert httpx.post(url, content=temporary).json()["status"] == "ignored"
    permanent = mailgun(
        "failed", severity="permanent", at=time.time() + 3, **{"delivery-status": {"description": "gone"}}
    )
    assert httpx.post(url, content=permanent).json()["status"] == "recorded"
    assert (message(conn)["status"], message(conn)["bounce_reason"]) == ("bounced", "gone")
    unknown = mailgun("delivered", message_id="nobody@x.test", at=time.time() + 4)
    assert httpx.post(url, content=unknown).status_code == 202
    assert events(conn) == ["email.message.opened", "email.message.clicked", "email.message.bounced"]


def test_a_second_tenant_reads_none_of_the_first_tenants_email_rows(
    db_url: str, conn: Conn, tenant: str
) -> None:
    conn.execute("select conveyor.create_tenant('globex', 'Globex', 'UTC')")
    endpoint(conn, "svix", SVIX_SECRET)
    conn.execute(
        "select conveyor.record_email_event('acme', 're_1', 'unsubscribed', now(), %s)", (Jsonb({}),)
    )
    tokens = {
        t: conn.execute("select conveyor.mint_tenant_token(%s, interval '1 hour') as t", (t,)).fetchone()
        for t in ("acme", "globex")
    }

    def seen(app: psycopg.Connection[Any], tenant_id: str, table: str) -> int:
        with app.transaction():  # a verified tenant lasts for its transaction
            app.execute("select conveyor.set_tenant(%s)", (tokens[tenant_id]["t"],))  # type: ignore[index]
            row = app.execute(f"select count(*) from conveyor.{table}").fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute("set role conveyor_app")
        for table in ("email_messages", "email_events", "email_suppressions"):
            assert (seen(app, "acme", table), seen(app, "globex", table)) == (1, 0)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("select secret from conveyor.email_webhooks")
