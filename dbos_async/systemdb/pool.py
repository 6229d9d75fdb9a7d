"""The asyncpg pool of the system database, and the one place driver errors are translated."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import anyio
import asyncpg

from dbos_async.errors import DatabaseUnavailableError, QueueDeduplicatedError

logger = logging.getLogger(__name__)

T = TypeVar("T")

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    PooledConnection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PooledConnection
else:
    Pool = asyncpg.Pool
    PooledConnection = asyncpg.pool.PoolConnectionProxy
    Connection = asyncpg.Connection

# Errors that mean "the server or the connection is gone", not "the statement is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # The protocol lost track of its state, e.g. after the server killed an idle
    # connection: the connection is unusable.
    asyncpg.InternalClientError,
    TimeoutError,
)

# Errors while a connection opens: whatever the server says then, it cannot be used.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

# Errors worth running the same transaction again for.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


class SystemConnection(asyncpg.Connection):
    """A connection opened by dbos_async: it knows the system schema its statements name."""

    dbos_schema: str = ""


def schema_of(conn: Connection) -> str:
    """The system schema of a connection opened by ``create_pool`` or ``connect``.

    Raises:
        asyncpg.InterfaceError: ``conn`` is a pool's proxy whose connection is gone
            (the server closed it): a lost connection, as the statement would have said.
        TypeError: ``conn`` was opened some other way, so which schema it serves is unknown.
    """
    # A pool hands out proxies, which forward attribute reads to the connection.
    schema = getattr(conn, "dbos_schema", "")
    if isinstance(schema, str) and schema:
        return schema
    if isinstance(conn, asyncpg.pool.PoolConnectionProxy):
        conn.is_closed()  # a detached proxy raises InterfaceError for every method
    raise TypeError("the connection was not opened by dbos_async.systemdb.pool")


async def connect(url: str, *, schema: str, **server_settings: str) -> SystemConnection:
    """One connection outside any pool, for the system tables of ``schema``."""
    conn = await asyncpg.connect(
        url, connection_class=SystemConnection, server_settings=server_settings or None
    )
    conn.dbos_schema = schema
    return conn


async def _keep_session(_conn: Connection) -> None:
    # asyncpg's default release runs a reset query: one extra round trip per
    # checkpoint. System connections never change session state, so skip it.
    # (That query also caught broken connections: see acquire() for that.)
    return None


COMMAND_TIMEOUT_SECONDS = 60.0
"""Longest any system statement may take before its connection counts as lost.

Every system statement is an indexed read or write of a few rows; one that
takes a minute is talking to a server that stopped answering. (Migrations,
which may build indexes, pass their own timeout.)
"""


async def create_pool(
    url: str,
    *,
    schema: str,
    max_size: int,
    search_path: str | None = None,
    command_timeout: float | None = COMMAND_TIMEOUT_SECONDS,
) -> Pool:
    """Open a pool whose connections resolve unqualified names in ``schema``.

    ``command_timeout`` bounds every statement (None: no bound, for the
    application's own transactions).

    Raises:
        DatabaseUnavailableError: the server cannot be reached.
    """
    settings = {"search_path": search_path or schema, "application_name": "dbos_async"}

    async def init(conn: Connection) -> None:
        conn.dbos_schema = schema  # type: ignore[union-attr]

    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_size,
            server_settings=settings,
            connection_class=SystemConnection,
            init=init,
            reset=_keep_session if search_path is None else None,
            command_timeout=command_timeout,
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailableError(f"Cannot connect to the database: {exc}") from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseUnavailableError(f"The database does not exist: {exc}") from exc
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise DatabaseUnavailableError(f"Cannot log in to the database: {exc}") from exc
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def acquire(pool: Pool) -> AsyncIterator[PooledConnection]:
    """A pooled connection; a broken one is closed, not handed back for reuse.

    Raises:
        DatabaseUnavailableError: the connection was lost (the next acquire gets a new one).
    """
    conn = await acquire_connection(pool)
    try:
        async with translated():
            try:
                yield conn
            except CONNECTION_ERRORS:
                terminate(conn)
                raise
    finally:
        await pool.release(conn)


async def acquire_connection(pool: Pool) -> PooledConnection:
    """A connection from the pool, for callers that release it themselves.

    Raises:
        DatabaseUnavailableError: no connection could be opened.
    """
    key = id(pool)
    _acquiring[key] = _acquiring.get(key, 0) + 1
    try:
        return await pool.acquire()
    except _CONNECT_ERRORS as exc:
        # A database that refuses connections, is gone or rejects us: unreachable.
        raise DatabaseUnavailableError(f"Cannot connect to the database: {exc}") from exc
    finally:
        left = _acquiring[key] - 1
        if left:
            _acquiring[key] = left
        else:
            del _acquiring[key]


# Acquisitions under way, by id(pool): a connection being opened is in use
# before the pool counts it (Runtime.busy). asyncpg pools take no attributes.
_acquiring: dict[int, int] = {}


def in_use(pool: Pool) -> int:
    """Connections of ``pool`` handed out or being acquired now."""
    return pool.get_size() - pool.get_idle_size() + _acquiring.get(id(pool), 0)


def terminate(conn: PooledConnection) -> None:
    """Close a broken pooled connection so the pool never hands it out again.

    When the server closed it, asyncpg has already detached it from its proxy
    (and ``terminate`` would raise): then there is nothing left to do.
    """
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn lost-connection errors into DatabaseUnavailableError; let the rest through."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailableError(f"Lost the database connection: {exc}") from exc


DEDUP_INDEX = "workflow_status_dedup_idx"
"""The partial unique index that holds one live deduplication ID per queue."""


def is_deduplication_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a violation of the deduplication index.

    Recognised by the violated index's name (``constraint_name``), never by
    the message text.
    """
    return (
        isinstance(exc, asyncpg.UniqueViolationError)
        and getattr(exc, "constraint_name", None) == DEDUP_INDEX
    )


@contextlib.contextmanager
def deduplication_checked(queue_name: str, deduplication_id: str | None) -> Iterator[None]:
    """Turn a violation of the deduplication index into QueueDeduplicatedError.

    Any other unique violation passes through unchanged.
    """
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if is_deduplication_violation(exc) and deduplication_id is not None:
            raise QueueDeduplicatedError(queue_name, deduplication_id) from exc
        raise


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached."""
    return isinstance(exc, (*CONNECTION_ERRORS, DatabaseUnavailableError))


# What user code (a step's body) raises when a database connection is gone.
# Narrower than CONNECTION_ERRORS, which classify our own statements: any
# network call raises OSError or TimeoutError (a step's HTTP request that
# timed out is the step's outcome), and the subclasses of asyncpg's
# InterfaceError and InternalClientError are misuse, bad query input or a
# stale statement cache, not a lost connection.
_EXACTLY = (asyncpg.InterfaceError, asyncpg.InternalClientError)
_BODY_CONNECTION_ERRORS = tuple(
    e for e in CONNECTION_ERRORS if e not in (OSError, TimeoutError, *_EXACTLY)
)


def is_lost_connection(exc: BaseException) -> bool:
    """Whether ``exc``, raised by user code, means a database connection was lost."""
    return (
        isinstance(exc, (DatabaseUnavailableError, *_BODY_CONNECTION_ERRORS))
        or type(exc) in _EXACTLY
    )


def record_dict(record: Any) -> dict[str, Any]:
    """An asyncpg record as a plain dict."""
    return dict(record.items())


RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds between the tries of a statement that lost its connection (about 4 s in all)."""


async def run_idempotent(pool: Pool, statement: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``statement`` on a pooled connection, again after a lost connection.

    Only for statements that are safe to repeat: a lost connection may have
    lost the commit acknowledgement of a statement that did commit.

    Raises:
        DatabaseUnavailableError: the connection was lost on every try.
    """
    for delay in (*RETRY_DELAYS, None):
        try:
            async with acquire(pool) as conn:
                return await statement(conn)
        except DatabaseUnavailableError:
            if delay is None:
                raise
            logger.warning("lost the database connection; retrying in %ss", delay)
            await anyio.sleep(delay)
    raise AssertionError("unreachable")
