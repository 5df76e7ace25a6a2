"""The LISTEN hub against a real PostgreSQL: one connection fans out, reconnects, drops the slow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from conveyor.serve.hub import APPLICATION_NAME, ListenHub, Notification, Reconnected, SubscriptionClosed

CHANNEL = "conveyor_notifications"


def run(
    db_url: str,
    scenario: Callable[[ListenHub, psycopg.AsyncConnection[Any]], Awaitable[None]],
    **hub_options: Any,
) -> None:
    """Run scenario(hub, conn) with a started hub and a connection to send NOTIFYs from."""

    async def main() -> None:
        hub = ListenHub(db_url, (CHANNEL, "conveyor_executions"), **hub_options)
        await hub.start()
        try:
            await asyncio.wait_for(hub.connected.wait(), 10)
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await scenario(hub, conn)
        finally:
            await hub.stop()

    asyncio.run(main())


async def notify(conn: psycopg.AsyncConnection[Any], payload: str, channel: str = CHANNEL) -> None:
    await conn.execute("select pg_notify(%s, %s)", (channel, payload))


def test_one_notify_reaches_200_subscribers_over_one_connection(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        subscriptions = [hub.subscribe(CHANNEL) for _ in range(200)]
        other = hub.subscribe("conveyor_executions")
        await notify(conn, '{"id": 1}')
        received = await asyncio.wait_for(asyncio.gather(*(s.get() for s in subscriptions)), 5)
        assert received == [Notification(CHANNEL, '{"id": 1}')] * 200
        # Another channel's subscriber got nothing; the hub holds one connection for all.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.get(), 0.2)
        cursor = await conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s", (APPLICATION_NAME,)
        )
        assert await cursor.fetchone() == (1,)

    run(db_url, scenario)


def test_a_dropped_connection_reconnects_and_tells_subscribers(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        subscription = hub.subscribe(CHANNEL)
        first_pid = hub.backend_pid
        await conn.execute("select pg_terminate_backend(%s)", (first_pid,))
        assert await asyncio.wait_for(subscription.get(), 10) == Reconnected(CHANNEL)
        assert hub.backend_pid not in (None, first_pid) and hub.connections_made == 2
        await notify(conn, "after")
        assert await asyncio.wait_for(subscription.get(), 5) == Notification(CHANNEL, "after")

    run(db_url, scenario)


def test_the_hub_keeps_trying_while_the_database_refuses_it(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        subscription = hub.subscribe(CHANNEL)
        dbname = conn.info.dbname
        # The database can only be closed to connections from another one.
        admin_url = make_conninfo(db_url, dbname="postgres")
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(f'alter database "{dbname}" with allow_connections false')
            try:
                await admin.execute("select pg_terminate_backend(%s)", (hub.backend_pid,))
                await asyncio.sleep(1.0)  # several refused attempts
                assert not hub.connected.is_set()
            finally:
                await admin.execute(f'alter database "{dbname}" with allow_connections true')
        assert await asyncio.wait_for(subscription.get(), 10) == Reconnected(CHANNEL)

    run(db_url, scenario, max_backoff_s=0.2)


def test_a_slow_subscriber_is_dropped_and_the_others_keep_everything(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        slow = hub.subscribe(CHANNEL)
        fast = hub.subscribe(CHANNEL)
        got: list[str] = []

        async def consume() -> None:
            while len(got) < 30:
                message = await fast.get()
                assert isinstance(message, Notification)
                got.append(message.payload)

        consumer = asyncio.create_task(consume())
        for i in range(30):
            await notify(conn, str(i))
        await asyncio.wait_for(consumer, 10)
        assert got == [str(i) for i in range(30)]
        # The slow one was cut off at its bound, and nothing it had queued is kept.
        with pytest.raises(SubscriptionClosed, match="more than 8 notifications waited unread"):
            await slow.get()
        assert hub.subscribers(CHANNEL) == 1

    run(db_url, scenario, queue_size=8)


def test_subscribing_to_a_channel_the_hub_does_not_listen_on_is_refused(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        with pytest.raises(ValueError, match="does not listen on channel 'nope'"):
            hub.subscribe("nope")

    run(db_url, scenario)


def test_stopping_the_hub_ends_every_subscription(db_url: str) -> None:
    async def main() -> None:
        hub = ListenHub(db_url, (CHANNEL,))
        await hub.start()
        subscription = hub.subscribe(CHANNEL)
        async with hub.subscribe(CHANNEL) as closed_early:
            pass
        await hub.stop()
        with pytest.raises(SubscriptionClosed, match="shutting down"):
            await subscription.get()
        assert [m async for m in closed_early] == []

    asyncio.run(main())


def _key(payload: str) -> tuple[str, str] | None:
    tenant, _, user = payload.partition("/")
    return (tenant, user) if user else None


def test_a_keyed_subscription_gets_only_its_keys_notifications(db_url: str) -> None:
    async def scenario(hub: ListenHub, conn: psycopg.AsyncConnection[Any]) -> None:
        mine = [hub.subscribe(CHANNEL, key=("acme", "u1")) for _ in range(2)]
        theirs = hub.subscribe(CHANNEL, key=("acme", "u2"))
        everything = hub.subscribe(CHANNEL)
        assert hub.subscribers(CHANNEL) == 4
        for payload in ("acme/u2", "malformed", "globex/u1", "acme/u1"):
            await notify(conn, payload)
        assert [await asyncio.wait_for(s.get(), 5) for s in mine] == [Notification(CHANNEL, "acme/u1")] * 2
        assert await asyncio.wait_for(theirs.get(), 5) == Notification(CHANNEL, "acme/u2")
        assert [(await asyncio.wait_for(everything.get(), 5)).payload for _ in range(4)] == [  # type: ignore[union-attr]
            "acme/u2",
            "malformed",
            "globex/u1",
            "acme/u1",
        ]
        for subscription in (*mine, theirs):
            assert subscription.get_nowait() is None  # nothing else came
        # A reconnect reaches keyed subscribers too; ending one unregisters its key.
        await conn.execute("select pg_terminate_backend(%s)", (hub.backend_pid,))
        assert await asyncio.wait_for(theirs.get(), 10) == Reconnected(CHANNEL)
        theirs.end("closed")
        assert hub.subscribers(CHANNEL) == 3
        with pytest.raises(ValueError, match="has no key function"):
            hub.subscribe("conveyor_executions", key="x")

    run(db_url, scenario, keys={CHANNEL: _key})


def test_keys_for_a_channel_the_hub_does_not_listen_on_are_refused(db_url: str) -> None:
    with pytest.raises(ValueError, match="does not listen on"):
        ListenHub(db_url, (CHANNEL,), keys={"nope": _key})
