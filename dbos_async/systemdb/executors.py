"""The ``executors`` and ``instances`` tables: heartbeats, liveness, and claiming orphans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


@dataclass(frozen=True)
class Instance:
    """What a runtime instance records about itself (see 0008_instances.sql)."""

    instance_id: str
    executor_id: str
    app_name: str
    app_version: str
    hostname: str
    pid: int
    lock_key: int
    host_key: str | None
    heartbeat_ms: int  # how often it heartbeats


async def upsert_heartbeat(conn: Connection, me: Instance, sql_now_ms: int | None = None) -> str:
    """Record that this instance (and its executor and version) is alive, by the database's clock.

    Returns the latest application version. One round trip; it also deletes
    the rows of instances gone for a day. ``sql_now_ms``: now, instead of
    the database's clock (a virtual clock's).
    """
    latest: str = await conn.fetchval(
        q(conn, "upsert_heartbeat"),
        me.instance_id,
        me.executor_id,
        me.app_name,
        me.app_version,
        me.hostname,
        me.pid,
        me.lock_key,
        me.host_key,
        me.heartbeat_ms,
        sql_now_ms,
    )
    return latest


async def lock_instance(conn: Connection, me: Instance, sql_now_ms: int | None = None) -> None:
    """Take this instance's advisory lock for the session of ``conn``.

    One round trip, unless an earlier session of this instance (one the
    server still thinks alive) holds it: that session is ended first.

    Raises:
        ConnectionError: the lock stayed held by another session.
    """
    lock = q(conn, "lock_instance")
    if await conn.fetchval(lock, me.instance_id, me.lock_key, sql_now_ms):
        return
    await conn.fetchval(q(conn, "free_instance_lock"), me.lock_key, FREE_LOCK_WAIT_MS)
    if not await conn.fetchval(lock, me.instance_id, me.lock_key, sql_now_ms):
        raise ConnectionError("another session holds this runtime instance's lock")


FREE_LOCK_WAIT_MS = 5000
"""How long to wait for an earlier session holding the instance lock to exit."""


async def forget_instance(conn: Connection, me: Instance) -> None:
    """Delete this instance's row (it shut down). One round trip."""
    await conn.execute(q(conn, "forget_instance"), me.instance_id)


@dataclass(frozen=True)
class Suspect:
    """An instance seen with its lock free."""

    instance_id: str
    locked_at: int | None  # as seen then: a reconnect changes it
    host_key: str | None
    pid: int


async def select_lockless_instances(conn: Connection, me: Instance) -> list[Suspect]:
    """Other instances whose lock nobody holds. One round trip."""
    rows = await conn.fetch(q(conn, "select_lockless_instances"), me.instance_id)
    return [Suspect(r["instance_id"], r["locked_at"], r["host_key"], r["pid"]) for r in rows]


async def claim_orphaned_workflows(
    conn: Connection,
    me: Instance,
    *,
    only_executor: str | None,
    lease_ms: int | None,
    suspects: Sequence[Suspect],
    now_ms: int,
    limit: int,
    names: Sequence[str],
    sql_now_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Claim PENDING workflows of this app version whose claiming instance is gone.

    Only workflows of the functions ``names`` (those registered here).

    ``only_executor``: only that executor's workflows (None: any executor's).
    ``lease_ms``: an instance that has not heartbeat for this long is gone
    (None: never by its heartbeat). ``suspects``: instances seen with their
    lock free a settle period ago, with the locked_at seen then; each whose
    lock is still free, with that locked_at, is gone. See the query.

    Each returned row (``workflow_id``, ``name``, ``inputs``,
    ``recovery_attempts``, ``deadline_epoch_ms``, ``fence``,
    ``branched_steps``) now belongs to this instance under its new fence.
    One round trip.
    """
    rows = await conn.fetch(
        q(conn, "claim_orphaned_workflows"),
        only_executor,
        me.app_version,
        lease_ms,
        now_ms,
        limit,
        me.instance_id,
        [s.instance_id for s in suspects],
        [s.locked_at for s in suspects],
        me.executor_id,
        list(names),
        sql_now_ms,
    )
    return [record_dict(r) for r in rows]


async def count_live_executors(
    conn: Connection, app_version: str, lease_ms: int, sql_now_ms: int | None = None
) -> int:
    """Executors of ``app_version`` that heartbeat within ``lease_ms``. One round trip."""
    return int(
        await conn.fetchval(q(conn, "count_live_executors"), app_version, lease_ms, sql_now_ms)
    )
