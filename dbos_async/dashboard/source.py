"""What the dashboard reads and steers: a launched ``DBOS``, or a database URL.

With a ``DBOS`` the dashboard shares its runtime's pool and LISTEN connection,
and its actions run where that runtime can (a resumed workflow starts
there). With a URL it opens a ``DBOSClient`` on first use: a small pool and
one LISTEN connection, whatever the number of browsers; actions then only
write rows, and the application's runtimes pick the work up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from dbos_async.clock import REAL, Clock
from dbos_async.errors import DBOSError

if TYPE_CHECKING:
    from dbos_async.client import DBOSClient
    from dbos_async.dbos import DBOS
    from dbos_async.notifications import Listener
    from dbos_async.runtime import Runtime
    from dbos_async.systemdb.pool import Pool, PooledConnection


class Source:
    """A ``DBOS`` or a ``DBOSClient``, behind the handful of things the dashboard uses."""

    def __init__(self, target: DBOS | str, schema: str = "dbos_async") -> None:
        from dbos_async.dbos import DBOS

        if isinstance(target, DBOS):
            self._dbos: DBOS | None = target
            self._url: str | None = None
        elif isinstance(target, str) and target:
            self._dbos, self._url = None, target
        else:
            raise TypeError(
                f"Dashboard needs a DBOS instance or a database URL, got {type(target).__name__}"
            )
        self._schema = schema
        self._client: DBOSClient | None = None
        self._opening = asyncio.Lock()

    @property
    def runtime(self) -> Runtime | None:
        """The application's runtime, when the dashboard runs inside it."""
        return self._dbos._runtime if self._dbos is not None else None

    @property
    def target(self) -> DBOS | DBOSClient:
        """What the management calls go to (open: see ``open``)."""
        if self._dbos is not None:
            return self._dbos
        if self._client is None:
            raise DBOSError("the dashboard's database client is not open")
        return self._client

    @property
    def clock(self) -> Clock:
        """The runtime's clock (a client's is the real one)."""
        runtime = self.runtime
        return runtime.clock if runtime is not None else REAL

    @property
    def pool(self) -> Pool:
        """The system-database pool."""
        runtime = self.runtime
        if runtime is not None:
            return runtime.pool
        return self.target.pool  # type: ignore[union-attr]

    @property
    def listener(self) -> Listener:
        """The LISTEN connection's fan-out (one per process, whatever the browsers)."""
        runtime = self.runtime
        if runtime is not None:
            return runtime.listener
        return self.target.listener  # type: ignore[union-attr]

    def connection(self) -> AbstractAsyncContextManager[PooledConnection]:
        """A pooled system-database connection."""
        from dbos_async.systemdb.pool import acquire

        return acquire(self.pool)

    async def open(self) -> None:
        """Open the client (URL mode) if it is not open yet; a DBOS must be launched already.

        Mounted apps get no lifespan events, so this runs on a page's first request.
        """
        if self._url is None or self._client is not None:
            return
        async with self._opening:
            if self._client is None:
                from dbos_async.client import DBOSClient

                client = DBOSClient(self._url, schema=self._schema)
                await client.__aenter__()
                self._client = client

    async def close(self) -> None:
        """Close the client this source opened (a DBOS is the application's to stop)."""
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    async def session(self) -> AsyncIterator[None]:
        """Open for the duration of an ASGI lifespan (the standalone server)."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    async def call(self, method: str, *args: Any) -> Any:
        """Call a management method of the DBOS or the client by name."""
        return await getattr(self.target, method)(*args)
