"""The version registry: which application versions exist, which is the latest, and stranded work.

``app_version`` is, by default, a hash of the workflows' source: recovery,
adoption and dequeues only take work of their own version, so that nothing
replays under code it was not recorded with. The price is that a deploy
strands the old version's PENDING and ENQUEUED workflows once its last
runtime stops. This module makes that visible and fixable:

* every runtime registers its version with each heartbeat; the latest
  version is the newest that a live runtime runs, a version is the newest
  from its first registration, and ``set_latest_application_version`` makes
  another the newest;
* enqueues that name no version (the client, enqueue by name) go to the
  latest version, and only its runtimes fire schedule ticks;
* each runtime counts the stranded workflows at launch and every few lease
  periods, and warns with the commands that resolve it;
* ``adopt_workflows`` moves a version's waiting work to another version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbos_async import registry
from dbos_async.clock import REAL, Clock
from dbos_async.logs import get_logger
from dbos_async.models import AppVersion
from dbos_async.systemdb import versions as versions_table
from dbos_async.systemdb.pool import Pool, acquire
from dbos_async.validation import check_identifier

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

STRANDING_CHECK_HEARTBEATS = 9
"""A runtime counts stranded work every this many heartbeats (three lease periods)."""


async def list_application_versions(pool: Pool, clock: Clock = REAL) -> list[AppVersion]:
    """Every version registered or named by waiting work, newest first. One round trip."""
    async with acquire(pool) as conn:
        rows = await versions_table.list_application_versions(conn, clock.sql_now_ms())
    return [AppVersion(**row) for row in rows]


async def set_latest_application_version(pool: Pool, version: str, clock: Clock = REAL) -> None:
    """Make ``version`` the latest: version-less enqueues go to it from now on.

    Raises:
        ValueError: no runtime of ``version`` ever ran against this database.
    """
    check_identifier(version, "app_version")
    async with acquire(pool) as conn:
        if await versions_table.set_latest_version(conn, version, clock.sql_now_ms()):
            logger.info("app version %s is the latest now", version, extra={"action": "versions"})
            return
        known = await versions_table.select_known_versions(conn)
    raise ValueError(
        f"no runtime of app version {version!r} ever ran against this database; "
        f"known versions: {', '.join(known) or 'none'}"
    )


async def adopt_workflows(
    pool: Pool,
    from_version: str,
    to_version: str | None = None,
    workflow_ids: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Move the PENDING and ENQUEUED workflows of ``from_version`` to ``to_version``.

    ``to_version`` defaults to the latest version; ``workflow_ids`` limits the
    move to those workflows. Runtimes of the new version dequeue the ENQUEUED
    ones and take over the PENDING ones whose runtime is gone (a live runtime
    keeps running its own). They replay the recorded steps under the new
    code: check first that it replays them (``workflow check``). Returns the
    moved workflows' (ID, status) pairs.

    Raises:
        ValueError: a version is unknown, or both are the same.
    """
    check_identifier(from_version, "from_version")
    versions = await list_application_versions(pool)
    if to_version is None:
        latest = [v.version for v in versions if v.is_latest]
        if not latest:
            raise ValueError("no app version is registered yet: pass the version to adopt into")
        to_version = latest[0]
    check_identifier(to_version, "to_version")
    if to_version == from_version:
        raise ValueError(f"the workflows of {from_version!r} are already of that version")
    if to_version not in {v.version for v in versions}:
        raise ValueError(f"no runtime of app version {to_version!r} ever ran against this database")
    async with acquire(pool) as conn:
        moved = await versions_table.adopt_workflows(
            conn, from_version, to_version, workflow_ids, REAL.now_ms()
        )
    logger.info(
        "moved %d workflows of app version %s to %s",
        len(moved),
        from_version,
        to_version,
        extra={"action": "adopt_version"},
    )
    return moved


def warn_stranded(versions: Sequence[AppVersion], own_version: str) -> int:
    """Log a WARNING for each version with stranded work; returns the stranded workflows."""
    total = 0
    for v in versions:
        if not v.stranded:
            continue
        total += v.stranded
        logger.warning(
            "%d workflows of app version %s (%d PENDING, %d ENQUEUED) wait, and no runtime "
            "of that version runs: start one, or move those this version's code replays to "
            "it with `dbos-async workflow adopt --from-version %s --to-version %s "
            "--only-compatible --app MODULE:OBJ` (`dbos-async workflow check --app "
            "MODULE:OBJ --version %s` shows where the others diverge)",
            v.stranded,
            v.version,
            v.pending,
            v.enqueued,
            v.version,
            own_version,
            v.version,
            extra={"action": "stranded", "app_version": v.version, "count": v.stranded},
        )
    return total


async def check_stranded(runtime: Runtime) -> None:
    """Count the stranded workflows, warn about each stranded version, keep the count.

    Never raises: a failed count is logged and left for the next one.
    """
    try:
        versions = await list_application_versions(runtime.pool, runtime.clock)
        async with acquire(runtime.pool) as conn:
            unrunnable = await versions_table.count_unrunnable(
                conn, runtime.app_version, [e.name for e in registry.workflows()]
            )
    except Exception as exc:
        logger.warning("could not count stranded workflows: %r", exc, extra={"action": "stranded"})
        return
    runtime.stranded_workflows = warn_stranded(versions, runtime.app_version)
    runtime.unrunnable_workflows = sum(n for _, n in unrunnable)
    if unrunnable:
        # Never claimed here, never failed: say so, or they wait without a word.
        logger.warning(
            "%d workflows of this app version (%s) name functions this process does not "
            "register (%s): they wait for a runtime that does; a function renamed or removed "
            "under a pinned version strands them",
            runtime.unrunnable_workflows,
            runtime.app_version,
            ", ".join(f"{name}: {n}" for name, n in unrunnable),
            extra={"action": "unrunnable", "count": runtime.unrunnable_workflows},
        )
