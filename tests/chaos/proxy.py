"""A TCP proxy in front of Postgres that misbehaves on request.

It understands just enough of the wire protocol (v3) to frame messages, to
know which SQL a reply answers, and to recognise a ``CommandComplete``. The
controls:

- ``cut()`` closes every connection, as a dying network path or a restarted
  load balancer would;
- ``blackhole()`` / ``restore()`` stop forwarding bytes both ways without
  closing anything, then let them through again (a partition: TCP delivers
  what was held back once it heals);
- ``drop_next_reply(...)`` / ``drop_next_commit_reply(...)`` swallow the end
  of the server's reply to a matching statement (its ``CommandComplete``, or
  the ``PortalSuspended`` of a ``fetchval``/``fetchrow``, which ask for one
  row) and close that client connection instead: the server did the work (it
  flushes its replies only at ``ReadyForQuery``, after the commit), the client
  can never learn it.

The proxy answers an SSL or GSS encryption request itself with ``N``, so every
stream stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Reply:
    """A ``CommandComplete`` the server sent, with what it answers."""

    tag: str  # e.g. "COMMIT", "INSERT 0 1"; SUSPENDED for a PortalSuspended
    sql: str  # the statement it completes
    transaction: tuple[str, ...]  # every statement run since the session was last idle
    binds: tuple[bytes, ...]  # the raw Bind messages (parameters) of those statements
    rows: tuple[bytes, ...]  # the raw DataRow messages the server sent for them


SUSPENDED = "SUSPENDED"


Match = Callable[[Reply], bool]


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    statements: dict[str, str] = field(default_factory=dict)  # prepared name -> SQL
    last_sql: str = ""
    transaction: list[str] = field(default_factory=list)
    binds: list[bytes] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            writer.transport.abort()


@dataclass(eq=False)
class _Drop:
    match: Match
    done: asyncio.Future[Reply]


class PostgresProxy:
    """Forwards 127.0.0.1:<port> to a Postgres server; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._drops: list[_Drop] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections closed by cut()
        self.dropped: list[Reply] = []
        self.held: list[bytes] = []  # what the blackhole holds back right now, either way

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.restore()
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        for drop in self._drops:
            drop.done.cancel()

    def url(self, server_url: str) -> str:
        """``server_url`` rewritten to go through the proxy, in plain text."""
        base, _, query = server_url.partition("?")
        scheme, _, rest = base.partition("://")
        auth, _, hostpath = rest.rpartition("@")
        _, _, path = hostpath.partition("/")
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        params = [p for p in query.split("&") if p and not p.startswith(("ssl=", "sslmode="))]
        return f"{scheme}://{netloc}/{path}?" + "&".join([*params, "sslmode=disable"])

    @property
    def open_connections(self) -> int:
        return sum(not link.closed for link in self._links)

    # -- controls --------------------------------------------------------------------

    def cut(self) -> int:
        """Close every open connection; returns how many."""
        links = [link for link in self._links if not link.closed]
        for link in links:
            link.close()
        self.cuts += len(links)
        return len(links)

    def blackhole(self) -> None:
        """Hold every byte, both ways, until ``restore()``; nothing is closed."""
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    def drop_next_reply(self, match: Match) -> asyncio.Future[Reply]:
        """Swallow the next ``CommandComplete`` that ``match`` accepts and close its connection.

        Returns a future resolved with the dropped reply.
        """
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._drops.append(_Drop(match, done))
        return done

    def drop_next_commit_reply(self, containing: str | None = None) -> asyncio.Future[Reply]:
        """Drop the next ``COMMIT`` reply of a transaction whose SQL mentions ``containing``."""
        return self.drop_next_reply(
            lambda r: (
                r.tag == "COMMIT"
                and (containing is None or any(containing in sql for sql in r.transaction))
            )
        )

    # -- forwarding ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        for pump in (self._from_client(link, reader), self._from_server(link, up_reader)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, link: _Link, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not self._flowing.is_set():
            self.held.append(data)
            try:
                await self._flowing.wait()
            finally:
                self.held.remove(data)
        if link.closed or not data:
            return
        writer.write(data)
        await writer.drain()

    async def _from_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            if not await self._startup(link, reader):
                return
            buffer = b""
            while chunk := await reader.read(_CHUNK):
                buffer += chunk
                end = 0
                for kind, body, stop in _messages(buffer):
                    self._note_client_message(link, kind, body)
                    end = stop
                await self._send(link, link.server, buffer[:end])
                buffer = buffer[end:]
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()

    async def _startup(self, link: _Link, reader: asyncio.StreamReader) -> bool:
        """Forward the untyped startup message; answer encryption requests with 'N'."""
        while True:
            head = await reader.readexactly(4)
            (length,) = struct.unpack("!i", head)
            body = await reader.readexactly(length - 4)
            code: int = struct.unpack("!i", body[:4])[0]
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                await self._send(link, link.client, b"N")
                continue
            await self._send(link, link.server, head + body)
            return code != _CANCEL_REQUEST

    def _note_client_message(self, link: _Link, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            link.last_sql = body.split(b"\0", 1)[0].decode(errors="replace")
            link.transaction.append(link.last_sql)
        elif kind == b"P":
            name, sql = body.split(b"\0", 2)[:2]
            link.statements[name.decode()] = sql.decode(errors="replace")
        elif kind == b"B":
            statement = body.split(b"\0", 2)[1].decode()
            link.last_sql = link.statements.get(statement, "")
            link.transaction.append(link.last_sql)
            link.binds.append(body)

    async def _from_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            buffer = b""
            while chunk := await reader.read(_CHUNK):
                buffer += chunk
                end = 0
                for kind, body, stop in _messages(buffer):
                    if kind == b"D":
                        link.rows.append(body)
                    elif kind in (b"C", b"s") and self._dropped(link, kind, body):
                        # What came before goes through; this reply never does.
                        await self._send(link, link.client, buffer[: stop - 5 - len(body)])
                        return
                    elif kind == b"Z" and body[:1] == b"I":
                        link.transaction.clear()
                        link.binds.clear()
                        link.rows.clear()
                    end = stop
                await self._send(link, link.client, buffer[:end])
                buffer = buffer[end:]
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()

    def _dropped(self, link: _Link, kind: bytes, body: bytes) -> bool:
        reply = Reply(
            SUSPENDED if kind == b"s" else body.rstrip(b"\0").decode(errors="replace"),
            link.last_sql,
            tuple(link.transaction),
            tuple(link.binds),
            tuple(link.rows),
        )
        for drop in self._drops:
            if not drop.done.done() and drop.match(reply):
                self._drops.remove(drop)
                self.dropped.append(reply)
                drop.done.set_result(reply)
                return True
        return False


def _messages(buffer: bytes) -> list[tuple[bytes, bytes, int]]:
    """The complete typed messages at the start of ``buffer``: (type, body, end offset)."""
    found = []
    at = 0
    while len(buffer) - at >= 5:
        (length,) = struct.unpack_from("!i", buffer, at + 1)
        stop = at + 1 + length
        if stop > len(buffer):
            break
        found.append((buffer[at : at + 1], buffer[at + 5 : stop], stop))
        at = stop
    return found


@contextlib.asynccontextmanager
async def running_proxy(host: str, port: int) -> AsyncIterator[PostgresProxy]:
    proxy = PostgresProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
