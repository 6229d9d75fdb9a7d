"""One LISTEN connection per runtime, fanning Postgres notifications out to in-process waiters.

Every change another process may wait for is announced with
``pg_notify(current_schema(), '<kind>:<key>')`` in the statement that makes it,
so it is delivered on commit. The payload names what changed, never user data
(NOTIFY payloads are capped at 8,000 bytes). The kinds:

====  =============  ==========================================================
kind  key            announced when
====  =============  ==========================================================
w     workflow ID    its status changed (finished, cancelled, resumed)
m     workflow ID    a message was sent to it
e     workflow ID    it set an event
s     workflow ID    it wrote to or closed a stream
q     queue name     work was enqueued on the queue, or a slot was freed
====  =============  ==========================================================

A waiter opens a ``watch(kind, key)`` *before* it reads the database, then
re-reads after every wake-up. Wake-ups are hints: a watch also fires when the
listener reconnects (notifications sent during the gap are lost) and on a slow
safety-net timer, so a lost notification can delay a waiter, never strand it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import anyio
from anyio.abc import TaskStatus

from dbos_async.clock import REAL, Clock, Wake
from dbos_async.logs import get_logger
from dbos_async.systemdb.pool import SystemConnection, connect
from dbos_async.systemdb.queries import statements

logger = get_logger(__name__)

SAFETY_POLL_SECONDS = 30.0
"""Longest a watch sleeps without a notification before its owner re-reads anyway."""

_HEALTH_CHECK_SECONDS = 10.0  # a half-open TCP connection delivers nothing and says nothing
# At most a second apart: the connection holds the runtime instance's lock, and
# a sibling takes the instance for gone once the lock has stayed free for
# recovery.LOCK_SETTLE_SECONDS (well above this, and a connect's round trips).
_RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)


class Watch:
    """Interest in one ``(kind, key)``; ``wait()`` returns when it may have changed."""

    __slots__ = ("_fired",)

    def __init__(self) -> None:
        self._fired = asyncio.Event()

    def fire(self) -> None:
        """Wake the waiter (a notification arrived, or notifications may have been lost)."""
        self._fired.set()

    async def wait(
        self, at_most: float | None = None, clock: Clock = REAL, poll: float = SAFETY_POLL_SECONDS
    ) -> bool:
        """Sleep until fired, ``at_most`` seconds pass, or the safety-net interval ``poll`` ends.

        Both are measured on ``clock``: ``at_most`` is the waiter's own
        deadline, ``poll`` the runtime's upkeep. The caller re-reads the
        database afterwards whichever happened; returns whether it was fired.
        """
        if clock.virtual:
            now = clock.time()
            with clock.scope(now + poll, Wake.UPKEEP):
                if at_most is None:
                    await self._fired.wait()
                else:
                    with clock.scope(now + at_most, Wake.WORK):
                        await self._fired.wait()
        else:
            limit = poll if at_most is None else min(at_most, poll)
            with anyio.move_on_after(max(0.0, limit)):
                await self._fired.wait()
        fired = self._fired.is_set()
        self._fired.clear()
        return fired


class Listener:
    """The runtime's notification listener; see the module docstring."""

    def __init__(
        self,
        database_url: str,
        channel: str,
        name: str = "dbos_async listener",
        on_connect: Callable[[SystemConnection], Awaitable[None]] | None = None,
    ) -> None:
        """Listen on ``channel``, the system schema's name.

        ``on_connect`` runs on each new connection before it LISTENs (the
        runtime takes its instance lock there: the lock lives exactly as long
        as the connection).
        """
        self._url = database_url
        self._on_connect = on_connect
        self._channel = channel
        self._name = name  # its application_name, for operators (and tests) to find it
        self._watches: dict[tuple[str, str | None], set[Watch]] = {}
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._on_reconnect: list[Callable[[], None]] = []
        self._lost = asyncio.Event()
        self._scope = anyio.CancelScope()
        self.reconnects = 0
        self._conn: SystemConnection | None = None
        self._querying = asyncio.Lock()  # one statement at a time on the connection

    def watch(self, kind: str, key: str | None) -> contextlib.AbstractContextManager[Watch]:
        """Register a watch on ``kind:key`` (``key=None``: every key of ``kind``)."""
        return self.watch_many((kind, key))

    @contextlib.contextmanager
    def watch_many(self, *topics: tuple[str, str | None]) -> Iterator[Watch]:
        """One watch fired by any of several ``(kind, key)`` topics."""
        w = Watch()
        for topic in topics:
            self._watches.setdefault(topic, set()).add(w)
        try:
            yield w
        finally:
            for topic in topics:
                bucket = self._watches.get(topic)
                if bucket is not None:
                    bucket.discard(w)
                    if not bucket:
                        del self._watches[topic]

    def on(self, kind: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(key)`` for every ``kind`` notification (the runtime's own reactions)."""
        self._handlers[kind] = handler

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` after each reconnect: notifications sent meanwhile were lost."""
        self._on_reconnect.append(handler)

    def fire(self, kind: str, key: str) -> None:
        """Wake the watches of ``kind:key`` and of every ``kind`` key, as a notification would."""
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(key)
        for bucket_key in ((kind, key), (kind, None)):
            for w in self._watches.get(bucket_key, ()):
                w.fire()

    def fire_all(self) -> None:
        """Wake every watch: notifications may have been missed."""
        for bucket in self._watches.values():
            for w in bucket:
                w.fire()

    def stop(self) -> None:
        """Make ``run`` return and close the connection."""
        self._scope.cancel()

    def terminate(self) -> None:
        """Cut the connection at once and stop (a simulated crash): nothing more is said."""
        if self._conn is not None:
            self._conn.terminate()
        self._scope.cancel()

    async def sync(self) -> None:
        """Return once the notifications committed before this call have been delivered.

        The server sends a session its pending notifications before it
        answers a statement, and asyncpg schedules their callbacks as it
        reads them: one round trip on the listening connection flushes them.
        """
        conn = self._conn
        if conn is None:
            return
        async with self._querying:
            with contextlib.suppress(Exception):  # a lost connection: its reconnect fires all
                await conn.fetchval(statements(self._channel)["check_alive"])

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN until ``stop()``; ``task_status.started()`` once the first LISTEN is live.

        The first connection failure is raised (the runtime cannot start without
        it); later ones are retried with backoff, waking every watch afterwards.
        """
        with self._scope:
            await self._listen(task_status)

    async def _listen(self, task_status: TaskStatus[None]) -> None:
        attempt = 0
        started = False
        while True:
            conn: SystemConnection | None = None
            try:
                conn = await connect(self._url, schema=self._channel, application_name=self._name)
                if self._on_connect is not None:
                    await self._on_connect(conn)
                self._lost.clear()
                conn.add_termination_listener(lambda _c: self._lost.set())
                await conn.add_listener(self._channel, self._on_notify)
                self._conn = conn
                attempt = 0
                if started:
                    self.reconnects += 1
                    logger.info("listener reconnected", extra={"action": "listen"})
                    self.fire_all()
                    for handler in self._on_reconnect:
                        handler()
                else:
                    started = True
                    task_status.started()
                await self._supervise(conn)
            except Exception as exc:
                # Once live, whatever stops the connection (a lost server, one that
                # refuses connections for a while) is retried: the runtime goes on.
                if not started:
                    raise
                delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
                attempt += 1
                logger.warning(
                    "listener lost its connection (%r); reconnecting in %ss",
                    exc,
                    delay,
                    extra={"action": "listen"},
                )
                # Waiters re-read now rather than sleep through the outage blind.
                self.fire_all()
                await anyio.sleep(delay)
            finally:
                self._conn = None
                if conn is not None:
                    with anyio.CancelScope(shield=True):
                        await _close_quietly(conn)

    async def _supervise(self, conn: SystemConnection) -> None:
        """Return (by raising) when the connection is lost; probe it now and then."""
        while True:
            with anyio.move_on_after(_HEALTH_CHECK_SECONDS):
                await self._lost.wait()
                raise ConnectionError("the listener's connection was closed")
            with anyio.fail_after(_HEALTH_CHECK_SECONDS):
                async with self._querying:
                    await conn.fetchval(statements(self._channel)["check_alive"])

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, sep, key = str(payload).partition(":")
        if sep:
            self.fire(kind, key)


async def _close_quietly(conn: SystemConnection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:
        conn.terminate()
