"""Patching: ``DBOS.patch``/``DBOS.deprecate_patch`` decide by what is recorded at their position.

The code "release" is a module-level switch read by the workflow functions, so
one process plays every version: v1 has no patch, v2 puts the new step behind
``DBOS.patch``, v3 deprecates the patch, v4 has deleted it. Replays are forks
(copies that keep the recorded steps before a position) or a cancel and resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbos_async import DBOS, SetWorkflowID
from dbos_async.errors import DBOSError, NonDeterministicWorkflowError, NotInWorkflowError
from dbos_async.runtime import resolve_config

release = {"v": 2}
ran: list[str] = []
forks: list[str] = []  # the IDs of the copies replay_as made
delays: dict[str, float] = {}
MARKER = "DBOS.patch-tax"


@pytest.fixture
async def patched(db_url: str) -> AsyncIterator[DBOS]:
    """A launched runtime with patching enabled."""
    release["v"] = 2
    ran.clear()
    delays.clear()
    hold.clear()
    settled_parts.clear()
    async with DBOS(database_url=db_url, app_version="test", enable_patching=True) as runtime:
        yield runtime


@DBOS.step(name="tests.patching.charge")
async def charge(order: str) -> str:
    ran.append(f"charge:{order}")
    return f"charge:{order}"


@DBOS.step(name="tests.patching.tax")
async def tax(order: str) -> str:
    ran.append(f"tax:{order}")
    return f"tax:{order}"


@DBOS.step(name="tests.patching.ship")
async def ship(order: str) -> str:
    ran.append(f"ship:{order}")
    return f"ship:{order}"


@DBOS.workflow(name="tests.patching.checkout")
async def checkout(order: str) -> list[str]:
    out = [await charge(order)]
    v = release["v"]
    if v == 2:
        patched = await DBOS.patch("tax")
        out.append(f"patch={patched}")
        if patched:
            out.append(await tax(order))
    elif v == 3:
        out.append(f"deprecate={await DBOS.deprecate_patch('tax')}")
        out.append(await tax(order))
    elif v == 4:
        out.append(await tax(order))
    out.append(await ship(order))
    return out


async def history(workflow_id: str) -> list[tuple[str, int, str, object]]:
    steps = await DBOS.list_workflow_steps(workflow_id)
    return [(s.branch, s.step_id, s.name.rsplit(".", 1)[-1], s.output) for s in steps]


async def run_as(v: int, order: str) -> list[str]:
    release["v"] = v
    with SetWorkflowID(order):
        return await checkout(order)


async def replay_as(v: int, workflow_id: str, start_step: int) -> Any:
    """Fork ``workflow_id`` at ``start_step`` and run the copy as release ``v``."""
    release["v"] = v
    ran.clear()
    handle = await DBOS.fork_workflow(workflow_id, start_step)
    forks.append(handle.workflow_id)
    return await handle.get_result(timeout=10)


# -- patch ------------------------------------------------------------------------------


async def test_a_new_execution_records_the_marker_and_takes_the_new_path(patched: DBOS) -> None:
    assert await run_as(2, "o1") == ["charge:o1", "patch=True", "tax:o1", "ship:o1"]
    assert await history("o1") == [
        ("", 0, "charge", "charge:o1"),
        ("", 1, "patch-tax", None),
        ("", 2, "tax", "tax:o1"),
        ("", 3, "ship", "ship:o1"),
    ]


async def test_a_history_with_the_marker_replays_the_new_path(patched: DBOS) -> None:
    await run_as(2, "o1")
    assert await replay_as(2, "o1", 4) == ["charge:o1", "patch=True", "tax:o1", "ship:o1"]
    assert ran == []  # every call replayed, the marker included


async def test_a_history_that_predates_the_patch_keeps_the_old_path(patched: DBOS) -> None:
    assert await run_as(1, "o1") == ["charge:o1", "ship:o1"]
    # Position 1 holds ship: the patch says False and leaves it to ship, which replays.
    assert await replay_as(2, "o1", 2) == ["charge:o1", "patch=False", "ship:o1"]
    assert ran == []
    assert [name for _, _, name, _ in await history(forks[-1])] == ["charge", "ship"]


async def test_a_history_that_stops_before_the_patch_takes_the_new_path(patched: DBOS) -> None:
    await run_as(1, "o1")
    # Only charge kept: as if the old release crashed before reaching the patch.
    assert await replay_as(2, "o1", 1) == ["charge:o1", "patch=True", "tax:o1", "ship:o1"]
    assert ran == ["tax:o1", "ship:o1"]
    assert [name for _, _, name, _ in await history(forks[-1])] == [
        "charge",
        "patch-tax",
        "tax",
        "ship",
    ]


# -- deprecate_patch ----------------------------------------------------------------------


async def test_deprecate_patch_consumes_a_recorded_marker(patched: DBOS) -> None:
    await run_as(2, "o1")
    assert await replay_as(3, "o1", 4) == ["charge:o1", "deprecate=True", "tax:o1", "ship:o1"]
    assert ran == []


async def test_deprecate_patch_records_nothing_so_it_can_be_deleted(patched: DBOS) -> None:
    assert await run_as(3, "o3") == ["charge:o3", "deprecate=True", "tax:o3", "ship:o3"]
    assert [name for _, _, name, _ in await history("o3")] == ["charge", "tax", "ship"]
    # Its replay finds tax where the marker would be: False, and tax keeps its position.
    assert await replay_as(3, "o3", 3) == ["charge:o3", "deprecate=False", "tax:o3", "ship:o3"]
    assert ran == []
    # The release that deletes the call replays it too.
    assert await replay_as(4, "o3", 3) == ["charge:o3", "tax:o3", "ship:o3"]
    assert ran == []
    # And a history of the patched release, once deprecated, whose marker is consumed.
    await run_as(2, "o2")
    assert await replay_as(3, "o2", 4) == ["charge:o2", "deprecate=True", "tax:o2", "ship:o2"]
    assert ran == []


async def test_deleting_a_patch_that_was_never_deprecated_is_detected(patched: DBOS) -> None:
    await run_as(2, "o1")
    with pytest.raises(NonDeterministicWorkflowError):
        await replay_as(4, "o1", 4)  # the marker sits where tax now is


# -- errors and configuration ---------------------------------------------------------------


@DBOS.step(name="tests.patching.patch_in_step")
async def patch_in_step() -> str:
    try:
        await DBOS.patch("x")
    except NotInWorkflowError as exc:
        return str(exc)
    return "no error"


@DBOS.workflow(name="tests.patching.misuse")
async def misuse() -> str:
    return await patch_in_step()


@DBOS.workflow(name="tests.patching.plain")
async def plain(name: str) -> bool:
    return await DBOS.patch(name)


async def test_patch_is_only_for_workflow_code(patched: DBOS) -> None:
    with pytest.raises(NotInWorkflowError, match=r"DBOS\.patch is only available in workflow"):
        await DBOS.patch("x")
    with pytest.raises(NotInWorkflowError, match=r"DBOS\.deprecate_patch is only"):
        await DBOS.deprecate_patch("x")
    assert "only available in workflow code" in await misuse()


async def test_a_patch_name_must_be_a_non_empty_string(patched: DBOS) -> None:
    with pytest.raises(ValueError, match="patch name"):
        await plain("")
    with pytest.raises(ValueError, match="patch name"):
        DBOS.patch(1)  # type: ignore[arg-type,unused-coroutine]


async def test_patch_needs_enable_patching(dbos: DBOS) -> None:
    with pytest.raises(DBOSError, match=r"enable_patching=True\)\. Without it the app version"):
        await plain("x")


def test_enable_patching_pins_the_app_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBOS_APP_VERSION", raising=False)

    def version(enable_patching: bool, app_version: str | None = None) -> str | None:
        config = resolve_config(
            None, "app", app_version, None, "dbos_async", 8, ".", 30.0, enable_patching
        )
        assert config.enable_patching is enable_patching
        return config.app_version

    assert version(True) == "PATCHING_ENABLED"
    assert version(False) is None  # the source hash, computed at launch
    assert version(True, "v7") == "v7"
    monkeypatch.setenv("DBOS_APP_VERSION", "v8")
    assert version(True) == "v8"
    assert DBOS(enable_patching=True).app_version == "v8"


async def test_a_patching_runtime_records_the_pinned_version(
    db_url: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBOS_APP_VERSION", raising=False)
    async with DBOS(database_url=db_url, enable_patching=True) as dbos:
        assert dbos.app_version == "PATCHING_ENABLED"
        with SetWorkflowID("pinned"):
            assert await plain("x") is True
    assert (
        await conn.fetchval("SELECT app_version FROM workflow_status WHERE workflow_id = 'pinned'")
        == "PATCHING_ENABLED"
    )


# -- a history recorded with one counter for all tasks (before branch IDs) --------------------


async def test_a_flat_history_is_patched_by_its_own_numbering(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # Two PENDING workflows of the old release: one got past the patch's
    # position (ship at 1), one crashed before it.
    for workflow_id, names in (("flat-old", ["charge", "ship"]), ("flat-early", ["charge"])):
        await conn.execute(
            "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version, "
            "executor_id, created_at, updated_at) "
            "VALUES ($1, 'PENDING', 'tests.patching.checkout', $2, 'test', 'local', 1, 1)",
            workflow_id,
            f'{{"args":["{workflow_id}"],"kwargs":{{}}}}',
        )
        for step_id, step in enumerate(names):
            await conn.execute(
                "INSERT INTO operation_outputs (workflow_id, step_id, function_name, output) "
                "VALUES ($1, $2, $3, $4)",
                workflow_id,
                step_id,
                f"tests.patching.{step}",
                f'"{step}:{workflow_id}"',
            )
    release["v"] = 2
    ran.clear()
    async with DBOS(database_url=db_url, app_version="test", enable_patching=True) as dbos:
        old = await (await dbos.retrieve_workflow("flat-old")).get_result(timeout=10)
        early = await (await dbos.retrieve_workflow("flat-early")).get_result(timeout=10)
        steps = [(s.step_id, s.name) for s in await dbos.list_workflow_steps("flat-early")]
    assert old == ["charge:flat-old", "patch=False", "ship:flat-old"]
    assert early == ["charge:flat-early", "patch=True", "tax:flat-early", "ship:flat-early"]
    assert sorted(ran) == ["ship:flat-early", "tax:flat-early"]
    assert steps == [
        (0, "tests.patching.charge"),
        (1, MARKER),
        (2, "tests.patching.tax"),
        (3, "tests.patching.ship"),
    ]


# -- concurrent patches inside branches --------------------------------------------------------

hold: dict[str, asyncio.Event] = {}
"""Per test: ``gate`` parks the odd branches' old step; ``settled``: the even ones' are recorded."""
settled_parts: list[int] = []


async def _pause(key: str) -> None:
    await asyncio.sleep(delays.get(key, 0.0))


@DBOS.step(name="tests.patching.old_part")
async def old_part(i: int) -> str:
    ran.append(f"old{i}")
    await _pause(f"old{i}")
    if i % 2 and "gate" in hold:
        await hold["gate"].wait()
    return f"old{i}"


@DBOS.step(name="tests.patching.new_part")
async def new_part(i: int) -> str:
    ran.append(f"new{i}")
    await _pause(f"new{i}")
    return f"new{i}"


async def part(i: int, n: int) -> list[str]:
    await _pause(f"before{i}")  # plain code: re-timed between the run and the replay
    out = []
    if release["v"] >= 2 and await DBOS.patch("split"):
        out.append(await new_part(i))
    out.append(await old_part(i))
    settled_parts.append(i)
    if "settled" in hold and len(settled_parts) == n // 2:
        hold["settled"].set()
    return out


@DBOS.workflow(name="tests.patching.fan")
async def fan(n: int, how: str) -> list[list[str]]:
    if how == "gather":
        return list(await asyncio.gather(*(part(i, n) for i in range(n))))
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(part(i, n)) for i in range(n)]
    return [t.result() for t in tasks]


def retime(n: int, first: bool) -> None:
    """One timing, or its reverse: the branches make their calls in opposite orders."""
    delays.clear()
    for i in range(n):
        slow = 0.002 * (i if first else n - i)
        delays.update({f"before{i}": slow, f"new{i}": slow, f"old{i}": slow})


@pytest.mark.parametrize("how", ["gather", "taskgroup"])
async def test_concurrent_patches_decide_each_branch_on_its_own(patched: DBOS, how: str) -> None:
    n = 6
    retime(n, first=True)
    with SetWorkflowID("fan"):
        assert await fan(n, how) == [[f"new{i}", f"old{i}"] for i in range(n)]
    steps = await history("fan")
    assert sorted(steps) == sorted(
        (str(i), step, name, None if name == "patch-split" else f"{name[:3]}{i}")
        for i in range(n)
        for step, name in enumerate(["patch-split", "new_part", "old_part"])
    )
    retime(n, first=False)
    assert await replay_as(2, "fan", 1) == [[f"new{i}", f"old{i}"] for i in range(n)]
    assert ran == []


@pytest.mark.parametrize("how", ["gather", "taskgroup"])
async def test_concurrent_patches_on_a_partly_old_history(patched: DBOS, how: str) -> None:
    n = 6
    # The old release: the even branches record their old step, the odd ones
    # are parked in theirs when the workflow stops (a crash, here a cancel).
    release["v"] = 1
    hold.clear()
    settled_parts.clear()
    hold.update(gate=asyncio.Event(), settled=asyncio.Event())
    retime(n, first=True)
    with SetWorkflowID("mixed"):
        handle = await DBOS.start_workflow(fan, n, how)
    await asyncio.wait_for(hold["settled"].wait(), 10)
    await DBOS.cancel_workflow("mixed")
    # The new release, with the opposite timing.
    hold.clear()
    release["v"] = 2
    retime(n, first=False)
    ran.clear()
    handle = await DBOS.resume_workflow("mixed")
    expected = [[f"old{i}"] if i % 2 == 0 else [f"new{i}", f"old{i}"] for i in range(n)]
    assert await handle.get_result(timeout=10) == expected
    assert sorted(ran) == sorted(f"{kind}{i}" for i in range(1, n, 2) for kind in ("new", "old"))
    steps = await history("mixed")
    for i in range(n):
        names = [name for branch, _, name, _ in sorted(steps) if branch == str(i)]
        assert names == (["old_part"] if i % 2 == 0 else ["patch-split", "new_part", "old_part"])
    # And that mixed history replays as it is, under yet another timing.
    retime(n, first=True)
    assert await replay_as(2, "mixed", 1) == expected
    assert ran == []


@DBOS.workflow(name="tests.patching.side_by_side")
async def side_by_side() -> list[bool]:
    # Two patches made at once in one branch take positions 0 and 1 in call order.
    return list(await asyncio.gather(DBOS.patch("a"), DBOS.patch("b")))


async def test_patches_gathered_in_one_branch_take_positions_in_call_order(
    patched: DBOS,
) -> None:
    with SetWorkflowID("sbs"):
        assert await side_by_side() == [True, True]
    assert [(b, s, name) for b, s, name, _ in await history("sbs")] == [
        ("", 0, "patch-a"),
        ("", 1, "patch-b"),
    ]
    assert await replay_as(2, "sbs", 2) == [True, True]
