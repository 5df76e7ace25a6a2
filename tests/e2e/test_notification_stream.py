"""`GET /api/notifications/stream` against a real server and PostgreSQL, read as raw SSE."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from conveyor.serve.server import Running
from conveyor.serve.stream import CATCH_UP_LIMIT, CHANNEL

Conn = psycopg.Connection[dict[str, Any]]
SECRET = "s" * 48


@dataclass
class Event:
    id: str | None = None
    event: str = "message"
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SSE:
    """A stream read over a raw socket (no thread): `next()` parses the next event."""

    def __init__(self, url: str, token: str, **headers: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        path = "/api/notifications/stream?" + urlencode({"access_token": token})
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        self.buffer = b""
        self.body = b""  # de-chunked, not yet parsed
        self.ended = False
        head = self._read_until(b"\r\n\r\n", 10)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        self.retry: int | None = None

    def _recv(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise queue.Empty from None
        if not data:
            self.ended = True
        self.buffer += data

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            if self.ended:
                raise ConnectionError("closed")
            self._recv(deadline)
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _dechunk(self, deadline: float) -> None:
        while b"\n\n" not in self.body:
            if b"\r\n" in self.buffer:
                size_line, _, rest = self.buffer.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    self.ended = True
                    return
                if len(rest) >= size + 2:
                    self.body += rest[:size]
                    self.buffer = rest[size + 2 :]
                    continue
            if self.ended:
                return
            self._recv(deadline)

    def next(self, timeout: float = 10, *, comments: bool = False) -> Event | None:
        """The next event (None: the stream ended); queue.Empty when none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk(deadline)
            if b"\n\n" not in self.body:
                return None
            block, _, self.body = self.body.partition(b"\n\n")
            item, data = Event(), []
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    item.event, item.comments = "comment", [*item.comments, value.strip()]
                    item.data = value.strip()
                elif name == "id":
                    item.id = value
                elif name == "event":
                    item.event = value
                elif name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)
            if data:
                item.data = "\n".join(data)
            if item.event == "comment" and not comments:
                continue
            if item.event == "message" and not data:
                continue  # a retry-only block
            return item

    def messages(self, count: int, timeout: float = 10) -> list[Event]:
        out: list[Event] = []
        while len(out) < count:
            item = self.next(timeout)
            assert item is not None, f"the stream ended after {len(out)} of {count} notifications"
            if item.event == "message":
                out.append(item)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def running(db_url: str, conn: Conn) -> Iterator[Running]:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('other', 'Other')")
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=4, token_secret=SECRET)) as running:
        yield running


@pytest.fixture
def server(running: Running) -> str:
    return running.url


def subscribers(running: Running) -> int:
    app: Any = running.server.config.app
    return int(app.state.hub.subscribers(CHANNEL))


def token(user: str = "u-1", tenant: str = "acme", ttl: int = 300) -> str:
    return tokens.sign(SECRET, tenant, user, ttl)


def notify(conn: Conn, user: str, title: str, tenant: str = "acme") -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, json.dumps({"title": title}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


@contextlib.contextmanager
def stream(url: str, tok: str, **headers: str) -> Iterator[SSE]:
    sse = SSE(url, tok, **headers)
    try:
        yield sse
    finally:
        sse.close()


def test_a_new_notification_of_the_user_arrives_with_its_id_and_fields(server: str, conn: Conn) -> None:
    earlier = notify(conn, "u-1", "before the stream")
    with stream(server, token()) as sse:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        ready = sse.next()
        assert ready is not None and ready.event == "ready"
        assert ready.id == str(earlier) and ready.json() == {"last_id": earlier, "unread_count": 1}
        assert sse.retry == 2000
        new = notify(conn, "u-1", "hello")
        [message] = sse.messages(1)
    assert message.id == str(new)
    body = message.json()
    assert body["id"] == new and body["title"] == "hello" and body["unread_count"] == 2
    assert set(body) == {
        "id", "category", "type", "priority", "title", "message", "entity_type", "entity_id", "action_url",
        "action_label", "group_key", "created_at", "read_at", "expires_at", "execution_id", "unread_count",
    }  # fmt: skip


def test_other_users_and_tenants_notifications_never_reach_the_stream(server: str, conn: Conn) -> None:
    with stream(server, token("u-1")) as mine, stream(server, token("u-1", "other")) as theirs:
        mine.next(), theirs.next()  # ready
        notify(conn, "u-2", "for u-2")
        notify(conn, "u-1", "for u-1 of other", tenant="other")
        own = notify(conn, "u-1", "for u-1")
        [message] = mine.messages(1)
        [other_message] = theirs.messages(1)
        assert message.json()["title"] == "for u-1" and message.id == str(own)
        assert other_message.json()["title"] == "for u-1 of other"
        # Nothing more came to either.
        notify(conn, "u-9", "nobody listening")
        notify(conn, "u-2", "again for u-2")
        with pytest.raises(queue.Empty):
            mine.next(0.5)


def test_last_event_id_replays_what_was_missed_exactly_once(server: str, conn: Conn) -> None:
    first = notify(conn, "u-1", "one")
    missed = [notify(conn, "u-1", f"missed {i}") for i in range(5)]
    notify(conn, "u-2", "not mine")
    with stream(server, token(), **{"Last-Event-ID": str(first)}) as sse:
        got = sse.messages(5)
        assert [int(e.id or 0) for e in got] == missed
        live = notify(conn, "u-1", "live")
        [after] = sse.messages(1)
        assert after.id == str(live)
    # The query parameter does the same (a page that reopens a closed EventSource).
    resumed = httpx.get(
        server + "/api/notifications/stream",
        params={"access_token": token(), "last_event_id": "abc"},
    )
    assert resumed.status_code == 400 and "is not a notification id" in resumed.json()["error"]


def test_more_missed_than_the_limit_sends_the_limit_then_truncated(server: str, conn: Conn) -> None:
    conn.execute(
        "select conveyor.notify_user('acme', 'u-1', jsonb_build_object('title', 'n' || i))"
        " from generate_series(1, %s) as i",
        (CATCH_UP_LIMIT + 3,),
    )
    with stream(server, token(), **{"Last-Event-ID": "0"}) as sse:
        got = sse.messages(CATCH_UP_LIMIT)
        truncated = sse.next()
        assert truncated is not None and truncated.event == "truncated"
        newest = conn.execute("select max(notification_id) as m from conveyor.notifications").fetchone()
        assert newest is not None
        data = truncated.json()
        assert data["sent_up_to"] == int(got[-1].id or 0) and data["resumes_after"] == newest["m"]
        assert truncated.id == str(newest["m"]) and data["limit"] == CATCH_UP_LIMIT
        live = notify(conn, "u-1", "after the gap")
        [after] = sse.messages(1)
        assert after.id == str(live)


def test_a_row_committed_after_a_higher_id_was_sent_still_arrives(
    server: str, conn: Conn, db_url: str
) -> None:
    with stream(server, token()) as sse, psycopg.connect(db_url) as slow:
        sse.next()  # ready
        # The slow transaction takes its id first and commits last.
        slow_id = slow.execute(
            "select conveyor.notify_user('acme', 'u-1', '{\"title\": \"slow\"}')"
        ).fetchone()
        fast = notify(conn, "u-1", "fast")
        [first] = sse.messages(1)
        assert first.id == str(fast)
        slow.commit()
        assert slow_id is not None
        [second] = sse.messages(1)
        assert second.id == str(slow_id[0]) and int(second.id) < fast


def test_a_hub_reconnect_catches_up_from_the_table(server: str, conn: Conn) -> None:
    with stream(server, token()) as sse:
        sse.next()  # ready
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'conveyor-serve-hub'"
        )
        # Committed while the hub is down or coming back: its NOTIFY may be lost, the row is not.
        during = notify(conn, "u-1", "while the hub reconnects")
        [message] = sse.messages(1, timeout=15)
        assert message.id == str(during)
        # Exactly once: after the reconnect's catch-up, a further one comes alone.
        after = notify(conn, "u-1", "after")
        [next_message] = sse.messages(1)
        assert next_message.id == str(after)


def test_an_idle_stream_gets_heartbeats(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conveyor.serve.stream.HEARTBEAT_S", 0.2)
    with stream(server, token()) as sse:
        sse.next()  # ready
        ping = sse.next(5, comments=True)
        assert ping is not None and (ping.event, ping.data) == ("comment", "ping")


def test_a_stream_ends_when_its_token_expires(server: str) -> None:
    with stream(server, tokens.sign(SECRET, "acme", "u-1", 2)) as sse:
        sse.next()  # ready
        expired = sse.next(10)
        assert expired is not None and expired.event == "expired"
        assert sse.next(5) is None  # and the stream ended


def test_wrong_tokens_are_refused_before_the_stream(server: str) -> None:
    url = server + "/api/notifications/stream"
    expired = tokens.sign(SECRET, "acme", "u-1", 60, now=time.time() - 120)
    for params, error in (({}, "missing token"), ({"access_token": expired}, "token expired at")):
        response = httpx.get(url, params=params)
        assert response.status_code == 401 and error in response.json()["error"]


def test_a_client_that_goes_away_ends_its_subscription(running: Running) -> None:
    sse = SSE(running.url, token())
    sse.next()  # ready
    assert subscribers(running) == 1
    sse.close()
    deadline = time.monotonic() + 10
    while subscribers(running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscribers(running) == 0


def test_stopping_the_server_ends_open_streams_at_once(db_url: str, conn: Conn) -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        sse = SSE(running.url, token())
        sse.next()  # ready
        started = time.monotonic()
        running.stop()
        took = time.monotonic() - started
        assert sse.next(5) is None  # the stream ended cleanly
        sse.close()
    # Well inside the 10 s grace period a stream would otherwise hold the shutdown for.
    assert took < 3, took


def test_catch_ups_take_at_most_half_the_pool_so_other_routes_still_answer(db_url: str, conn: Conn) -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=4, token_secret=SECRET)
    with serve_in_thread(settings) as running, psycopg.connect(db_url) as locker:
        streams = [SSE(running.url, token(f"u{i}")) for i in range(10)]
        try:
            for sse in streams:
                sse.next()  # ready
            # Every catch-up read now waits on the table's lock, holding its pool connection.
            locker.execute("lock table conveyor.notifications in access exclusive mode")
            for i in range(10):
                conn.execute(
                    "select pg_notify('conveyor_notifications', %s)",
                    (json.dumps({"tenant": "acme", "user": f"u{i}", "id": 10**9 + i}),),
                )
            waiting_sql = (
                "select count(*) as n from pg_stat_activity"
                " where application_name = 'conveyor-serve' and wait_event_type = 'Lock'"
            )
            deadline = time.monotonic() + 10
            while (conn.execute(waiting_sql).fetchone() or {})["n"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # had the bound failed, more would be waiting by now
            assert conn.execute(waiting_sql).fetchone() == {"n": 2}  # half the pool of 4
            me = httpx.get(running.url + "/api/me", params={"access_token": token()}, timeout=5)
            assert me.status_code == 200  # the other half still serves requests
            locker.rollback()
            notify(conn, "u3", "after the storm")
            got = [e for e in streams[3].messages(1)]
            assert got[0].json()["title"] == "after the storm"
        finally:
            for sse in streams:
                sse.close()
