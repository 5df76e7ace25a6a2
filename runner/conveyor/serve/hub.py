"""One LISTEN connection per server process, fanning each NOTIFY out to in-process subscribers.

A stream (notifications, the console's live pages) subscribes to a channel and gets the
channel's notifications from a bounded queue; no stream holds a database connection of
its own. The hub is a wake-up, not a store: a subscriber that falls more than `queue_size`
notifications behind is dropped (its stream ends and its client reconnects, catching up
from the tables), and after the hub's connection drops and comes back every subscriber
gets `Reconnected`, since notifications sent meanwhile are lost.

A channel may have a key function (`keys`): a subscription with a key then gets only the
notifications whose payload has that key, found by one dictionary look-up per notification
instead of one queue put per subscriber (the notification stream keys by (tenant, user), so
a thousand streams cost one look-up per NOTIFY, not a thousand wake-ups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("conveyor.serve.hub")

APPLICATION_NAME = "conveyor-serve-hub"


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


@dataclass(frozen=True)
class Reconnected:
    """The hub's connection came back: notifications sent while it was down are lost."""

    channel: str


Message = Notification | Reconnected


class SubscriptionClosed(Exception):
    """The subscription ended: dropped as too slow, closed, or the hub stopped."""


_CLOSED = object()


KeyOf = Callable[[str], Hashable | None]


class Subscription:
    def __init__(self, hub: ListenHub, channel: str, queue_size: int, key: Hashable | None = None) -> None:
        self.hub = hub
        self.channel = channel
        self.key = key
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self.closed_because: str | None = None

    def offer(self, message: Message) -> bool:
        """Queue a message; False (and the subscription ends) when the queue is full."""
        try:
            self._queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.end(f"dropped: more than {self._queue.maxsize} notifications waited unread")
            return False

    def end(self, reason: str) -> None:
        if self.closed_because is not None:
            return
        self.closed_because = reason
        # What waited is discarded: the end is the one thing left to read.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)
        self.hub.unsubscribe(self)

    async def get(self) -> Message:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later get ends too
            raise SubscriptionClosed(self.closed_because)
        assert isinstance(item, Notification | Reconnected)
        return item

    def get_nowait(self) -> Message | None:
        """The next message if one waits, else None (a stream reads a burst in one go)."""
        if self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise SubscriptionClosed(self.closed_because)
        assert isinstance(item, Notification | Reconnected)
        return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.end("closed")


class ListenHub:
    """LISTENs on a fixed set of channels on one connection; reconnects when it drops."""

    def __init__(
        self,
        database_url: str,
        channels: tuple[str, ...],
        *,
        queue_size: int = 256,
        check_interval_s: float = 10.0,
        max_backoff_s: float = 5.0,
        keys: Mapping[str, KeyOf] | None = None,
    ) -> None:
        self.database_url = database_url
        self.channels = channels
        self.queue_size = queue_size
        self.check_interval_s = check_interval_s
        self.max_backoff_s = max_backoff_s
        self._subscribers: dict[str, set[Subscription]] = {channel: set() for channel in channels}
        self._keys: dict[str, KeyOf] = dict(keys or {})
        unknown = set(self._keys) - set(channels)
        if unknown:
            raise ValueError(f"keys given for channels the hub does not listen on: {sorted(unknown)}")
        self._keyed: dict[str, dict[Hashable, set[Subscription]]] = {channel: {} for channel in self._keys}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.connections_made = 0

    def subscribe(self, channel: str, key: Hashable | None = None) -> Subscription:
        """A subscription to every notification of `channel`, or only to those with `key`."""
        if channel not in self._subscribers:
            raise ValueError(
                f"the hub does not listen on channel {channel!r} (it listens on {list(self.channels)})"
            )
        subscription = Subscription(self, channel, self.queue_size, key)
        if key is None:
            self._subscribers[channel].add(subscription)
        elif channel not in self._keyed:
            raise ValueError(f"channel {channel!r} has no key function: subscribe to all of it")
        else:
            self._keyed[channel].setdefault(key, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.key is None:
            self._subscribers[subscription.channel].discard(subscription)
            return
        keyed = self._keyed[subscription.channel]
        same_key = keyed.get(subscription.key)
        if same_key is not None:
            same_key.discard(subscription)
            if not same_key:
                del keyed[subscription.key]

    def _all(self, channel: str) -> list[Subscription]:
        everyone = list(self._subscribers[channel])
        for same_key in self._keyed.get(channel, {}).values():
            everyone.extend(same_key)
        return everyone

    def subscribers(self, channel: str) -> int:
        return len(self._all(channel))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="conveyor-listen-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for channel in self.channels:
            for subscription in self._all(channel):
                subscription.end("the server is shutting down")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            made = self.connections_made
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("listen connection lost; reconnecting", extra={"error": first_line})
            self.connected.clear()
            self.backend_pid = None
            if self.connections_made > made:
                backoff = 0.05  # it had connected: try again at once, slower only while it fails
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.database_url,
            autocommit=True,
            application_name=APPLICATION_NAME,
            # A connection that died silently (a host gone) is noticed by the check below
            # or by TCP keepalives, whichever comes first.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        async with conn:
            for channel in self.channels:
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
            self.backend_pid = conn.info.backend_pid
            reconnected = self.connections_made > 0
            self.connections_made += 1
            self.connected.set()
            if reconnected:
                self._broadcast_reconnected()
            while True:
                async for notify in conn.notifies(timeout=self.check_interval_s):
                    self._deliver(Notification(notify.channel, notify.payload))
                await conn.execute("select 1")

    def _deliver(self, message: Notification) -> None:
        for subscription in list(self._subscribers.get(message.channel, ())):
            subscription.offer(message)
        keyed = self._keyed.get(message.channel)
        if keyed:
            key = self._keys[message.channel](message.payload)
            for subscription in list(keyed.get(key, ())) if key is not None else ():
                subscription.offer(message)

    def _broadcast_reconnected(self) -> None:
        for channel in self.channels:
            for subscription in self._all(channel):
                subscription.offer(Reconnected(channel))
