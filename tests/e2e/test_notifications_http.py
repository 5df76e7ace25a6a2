"""A user's notifications over HTTP with their token: list, mark, read-all; isolation as 404."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from conveyor.serve import ServeSettings, serve_in_thread, tokens

Conn = psycopg.Connection[dict[str, Any]]
SECRET = "h" * 48


@pytest.fixture
def api(db_url: str, conn: Conn) -> Iterator[httpx.Client]:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('other', 'Other')")
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        yield client


def auth(user: str = "u-1", tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.sign(SECRET, tenant, user, 300)}"}


def notify(conn: Conn, user: str, title: str, tenant: str = "acme") -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, json.dumps({"title": title}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_list_mark_and_read_all(api: httpx.Client, conn: Conn) -> None:
    first, second, third = (notify(conn, "u-1", f"n{i}") for i in range(3))
    notify(conn, "u-2", "not mine")
    listed = api.get("/api/notifications", headers=auth()).json()
    assert [n["id"] for n in listed["notifications"]] == [third, second, first]
    assert listed["unread_count"] == 3 and listed["notifications"][0]["title"] == "n2"
    assert (
        api.get("/api/notifications", params={"limit": 1}, headers=auth()).json()["notifications"][0]["id"]
        == third
    )

    read = api.post(f"/api/notifications/{first}/read", headers=auth())
    assert read.status_code == 200 and read.json()["id"] == first and read.json()["read_at"]
    unread_only = api.get("/api/notifications", params={"unread_only": "true"}, headers=auth()).json()
    assert [n["id"] for n in unread_only["notifications"]] == [third, second] and unread_only[
        "unread_count"
    ] == 2
    assert api.post(f"/api/notifications/{first}/unread", headers=auth()).json()["read_at"] is None
    archived = api.post(f"/api/notifications/{second}/archive", headers=auth()).json()
    assert archived["archived_at"] is not None
    assert api.post("/api/notifications/read-all", headers=auth()).json() == {"marked": 2}
    final = api.get("/api/notifications", headers=auth()).json()
    assert [n["id"] for n in final["notifications"]] == [third, first] and final["unread_count"] == 0
    # u-2's notification is untouched by u-1's read-all.
    assert api.get("/api/notifications", headers=auth("u-2")).json()["unread_count"] == 1


def test_another_users_or_tenants_notification_is_a_404_like_a_missing_one(
    api: httpx.Client, conn: Conn
) -> None:
    theirs = notify(conn, "u-2", "u-2's")
    other_tenant = notify(conn, "u-1", "other tenant's", tenant="other")
    answers = {}
    for name, notification_id in (("user", theirs), ("tenant", other_tenant), ("missing", 999999)):
        response = api.post(f"/api/notifications/{notification_id}/read", headers=auth())
        assert response.status_code == 404
        answers[name] = response.json()["error"].replace(
            f"notification {notification_id} ", "notification N "
        )
    assert answers["user"] == answers["tenant"] == answers["missing"]
    assert answers["user"] == "notification N is not a notification of user 'u-1' in tenant 'acme'"
    assert conn.execute(
        "select count(*) as c from conveyor.notifications where read_at is not null"
    ).fetchone() == {"c": 0}
    assert api.post("/api/notifications/99999999999999999999/read", headers=auth()).status_code == 404
    assert api.post("/api/notifications/abc/read", headers=auth()).status_code == 404


def test_bad_arguments_are_400_with_the_sql_message_and_bad_tokens_401(api: httpx.Client) -> None:
    too_many = api.get("/api/notifications", params={"limit": 501}, headers=auth())
    assert too_many.status_code == 400 and "1 to 500" in too_many.json()["error"]
    assert api.get("/api/notifications", params={"limit": "x"}, headers=auth()).status_code == 400
    assert api.get("/api/notifications", params={"unread_only": "maybe"}, headers=auth()).status_code == 400
    for method, path in (("GET", "/api/notifications"), ("POST", "/api/notifications/read-all")):
        assert api.request(method, path).status_code == 401
    expired = tokens.sign(SECRET, "acme", "u-1", 60, now=0)
    response = api.get("/api/notifications", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and "token expired" in response.json()["error"]


def test_the_demo_page_is_served(api: httpx.Client) -> None:
    page = api.get("/demo/notifications")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "EventSource" in page.text and page.headers["cache-control"] == "no-store"
