"""Replies from Mailgun's inbound routes over real HTTP through `conveyor serve`
(POST /email/inbound/<token>, conveyor.receive_email_inbound): a signed form, urlencoded or
multipart (an attachment left out), correlated to our message by In-Reply-To or
References; forged, stale and replayed posts refused; a reply to nothing we sent is 202."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import httpx

from tests.e2e.test_email_webhooks_http import MAILGUN_KEY, Conn, endpoint, events, message, server, tenant

__all__ = ["server", "tenant"]  # the fixtures


def signed(at: float | None = None, key: str = MAILGUN_KEY) -> dict[str, str]:
    stamp = str(int(at if at is not None else time.time()))
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": stamp, "token": token, "signature": signature}


def reply(**headers: str) -> dict[str, str]:
    return {"from": "Ann <ann@x.test>", "subject": "Re: Hi", "Message-Id": "<r1@x.test>", "body-plain": "Thanks!",
            **headers}  # fmt: skip


def inbound_url(server: str, conn: Conn) -> str:
    return server + endpoint(conn, "mailgun", MAILGUN_KEY).replace("/email/hooks/", "/email/inbound/")


def test_a_signed_urlencoded_reply_is_recorded_once(server: str, conn: Conn, tenant: str) -> None:
    url = inbound_url(server, conn)
    fields = reply(**{"In-Reply-To": "<m1@acme.test>"}) | signed()
    answer = httpx.post(url, data=fields)
    assert (answer.status_code, answer.json()) == (200, {"status": "recorded", "kind": "replied"})
    assert message(conn)["replied_at"] is not None
    assert events(conn) == ["email.message.replied"]
    # the same post again is a replay
    assert httpx.post(url, data=fields).status_code == 409


def test_a_multipart_reply_by_references_with_an_attachment(server: str, conn: Conn, tenant: str) -> None:
    url = inbound_url(server, conn)
    fields = reply(References="<elsewhere@y.test> <m1@acme.test>") | signed()
    answer = httpx.post(
        url, data=fields, files={"attachment-1": ("cv.pdf", b"%PDF-1.4 not a field", "application/pdf")}
    )
    assert answer.status_code == 200, answer.text
    assert message(conn)["replied_at"] is not None


def test_forged_stale_unsigned_and_unmatched_replies(server: str, conn: Conn, tenant: str) -> None:
    url = inbound_url(server, conn)
    to_ours: dict[str, Any] = reply(**{"In-Reply-To": "<m1@acme.test>"})
    forged = httpx.post(url, data=to_ours | signed(key="not-the-signing-key-at-all"))
    assert (forged.status_code, forged.json()["error"]) == (401, "signature does not match")
    stale = httpx.post(url, data=to_ours | signed(at=time.time() - 3600))
    assert stale.status_code == 401 and "tolerance" in stale.json()["error"]
    assert httpx.post(url, data=to_ours).status_code == 401
    assert httpx.post(url, json=to_ours | signed()).status_code == 415
    assert message(conn)["replied_at"] is None and events(conn) == []
    unmatched = httpx.post(url, data=reply(**{"In-Reply-To": "<never@acme.test>"}) | signed())
    assert (unmatched.status_code, unmatched.json()["status"]) == (202, "unmatched")
    # a svix endpoint's token is not an inbound endpoint
    svix = server + endpoint(conn, "svix", "whsec_" + "A" * 32).replace("/email/hooks/", "/email/inbound/")
    assert httpx.post(svix, data=to_ours | signed()).status_code == 404
