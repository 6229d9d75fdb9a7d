"""The ``dbos-async`` command line, run as a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, SetWorkflowID
from dbos_async.management import INTERNAL_QUEUE
from dbos_async.systemdb.migrate import migrations

# At the identifier limit, 1,024 bytes in UTF-8 (Ü, ï, ☃ and 🚀 take 2, 2, 3 and 4).
_PREFIX = 'it\'s "q"; DROP TABLE x; -- 100% $1 \\N Ünï ☃ 🚀 '
HOSTILE = _PREFIX + "z" * (1024 - len(_PREFIX.encode()))


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


async def dbos_cli(
    *args: str, url: str | None = None, env_url: str | None = None, tz: str | None = None
) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "DBOS_DATABASE_URL"}
    if env_url is not None:
        env["DBOS_DATABASE_URL"] = env_url
    if tz is not None:
        env["TZ"] = tz
    argv = [*args, "--database-url", url] if url is not None else list(args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dbos_async",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(run: Run, *needles: str) -> None:
    assert run.code == 1, run
    assert run.out == "", run
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbos-async: error: "), run.err
    assert "Traceback" not in run.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


calls: list[str] = []


@DBOS.step()
async def note(what: str) -> str:
    calls.append(what)
    return f"{what}#{len(calls)}"


@DBOS.workflow()
async def two_steps(tag: str) -> list[str]:
    return [await note(f"{tag}-a"), await note(f"{tag}-b")]


@DBOS.workflow()
async def fails() -> None:
    raise RuntimeError("broken on purpose")


@pytest.fixture
async def seeded(dbos: DBOS, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """Two finished workflows, a failed one, one ENQUEUED on a queue; yields the URL."""
    calls.clear()
    # Sleeps keep created_at (milliseconds) distinct: the listings order by it.
    with SetWorkflowID("first"):
        await two_steps("one")
    await anyio.sleep(0.002)
    with SetWorkflowID(HOSTILE):
        await two_steps("two")
    await anyio.sleep(0.002)
    with SetWorkflowID("broken"), pytest.raises(RuntimeError):
        await fails()
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, queue_name, created_at,"
        " updated_at) VALUES ('queued', 'ENQUEUED', 'app.charge', 'payments', 1, 1)"
    )
    yield dbos.database_url


# -- migrate ---------------------------------------------------------------------------


@pytest.fixture
async def empty_url(pg_server_url: str) -> AsyncIterator[str]:
    name = f"cli_empty_{os.getpid()}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield pg_server_url.rsplit("/", 1)[0] + f"/{name}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrate_then_up_to_date(empty_url: str) -> None:
    before = await dbos_cli("workflow", "list", url=empty_url)
    assert_one_line_error(before, "dbos-async migrate")
    first = await dbos_cli("migrate", env_url=empty_url)
    assert first.code == 0, first
    assert [line.strip() for line in first.out.splitlines()[1:]] == [m.name for m in migrations()]
    again = await dbos_cli("migrate", "--schema", "other_schema", url=empty_url)
    assert again.code == 0 and "applied" in again.out
    third = await dbos_cli("migrate", url=empty_url)
    assert third.code == 0 and "up to date" in third.out, third
    assert "newer release" not in third.out
    empty = await dbos_cli("workflow", "list", url=empty_url)
    assert empty.code == 0 and empty.out.strip() == "no workflows"
    # Issue 19 (audit): a schema a newer release migrated further is not just "up to date".
    conn = await asyncpg.connect(empty_url)
    try:
        await conn.execute(
            "INSERT INTO dbos_async.schema_migrations (version, name)"
            " VALUES (9998, '9998_from_the_future.sql'), (9999, '9999_and_more.sql')"
        )
    finally:
        await conn.close()
    newer = await dbos_cli("migrate", url=empty_url)
    assert newer.code == 0, newer
    assert newer.out.splitlines() == [
        f"schema dbos_async is up to date ({len(migrations())} migrations)",
        "schema dbos_async also has migrations 9998, 9999, applied by a newer release of "
        "dbos-async",
    ], newer


# -- workflow list / get / steps ----------------------------------------------------------


async def test_workflow_list_prints_an_aligned_table(seeded: str) -> None:
    run = await dbos_cli("workflow", "list", url=seeded)
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0].split() == [
        "WORKFLOW",
        "ID",
        "STATUS",
        "NAME",
        "QUEUE",
        "EXECUTOR",
        "APP",
        "VERSION",
        "CREATED",
    ]
    version_col = lines[0].index("APP VERSION")
    assert lines[1][version_col:].split()[0] == "test"  # "broken", of the test's runtime
    status_col = lines[0].index("STATUS")
    assert [line[status_col:].split()[0] for line in lines[1:]] == [
        "ERROR",
        "SUCCESS",
        "SUCCESS",
        "ENQUEUED",
    ]  # newest first; the ENQUEUED row was created at epoch 1 ms
    assert lines[2].startswith(HOSTILE + "  ")
    oldest = await dbos_cli("workflow", "list", "--oldest-first", "--limit", "1", url=seeded)
    assert len(oldest.out.splitlines()) == 2 and oldest.out.splitlines()[1].startswith("queued ")


async def test_workflow_list_json_and_filters(seeded: str) -> None:
    run = await dbos_cli("workflow", "list", "--json", "-s", "success", url=seeded)
    assert run.code == 0, run
    listed = run.json()
    assert isinstance(listed, list)
    assert [w["workflow_id"] for w in listed] == [HOSTILE, "first"]
    assert listed[1]["output"] == ["one-a#1", "one-b#2"]
    assert listed[1]["input"] == {"args": ["one"], "kwargs": {}}
    errors = (await dbos_cli("workflow", "list", "--json", "--status", "ERROR", url=seeded)).json()
    assert isinstance(errors, list) and errors[0]["error"]["message"] == "broken on purpose"
    by_queue = await dbos_cli("workflow", "list", "--json", "--queue", "payments", url=seeded)
    assert [w["workflow_id"] for w in by_queue.json()] == ["queued"]  # type: ignore[attr-defined]
    window = await dbos_cli(
        "workflow",
        "list",
        "--json",
        "--since",
        "0",
        "--until",
        "1970-01-01T00:00:00.001",
        url=seeded,
    )
    assert [w["workflow_id"] for w in window.json()] == ["queued"]  # type: ignore[attr-defined]
    none = await dbos_cli("workflow", "list", "--name", "no.such.workflow", url=seeded)
    assert none.code == 0 and none.out.strip() == "no workflows"
    # Issue 19: a name can be left out (a cron's ticks would flood the listing).
    two_steps_name = two_steps.__dbos_entry__.name  # type: ignore[attr-defined]
    rest = await dbos_cli(
        "workflow", "list", "--json", "--exclude-name", two_steps_name, url=seeded
    )
    assert [w["workflow_id"] for w in rest.json()] == ["broken", "queued"]  # type: ignore[attr-defined]


async def test_workflow_get(seeded: str) -> None:
    run = await dbos_cli("workflow", "get", HOSTILE, url=seeded)
    assert run.code == 0, run
    fields = dict(line.split(":", 1) for line in run.out.splitlines())
    assert fields["workflow_id"].strip() == HOSTILE
    assert fields["status"].strip() == "SUCCESS"
    assert json.loads(fields["output"]) == ["two-a#3", "two-b#4"]
    as_json = (await dbos_cli("workflow", "get", "broken", "--json", url=seeded)).json()
    assert isinstance(as_json, dict)
    assert as_json["status"] == "ERROR" and as_json["error"]["type"] == "RuntimeError"


class CardDeclined(Exception):
    """An application's own error type, which the CLI process cannot import."""


@DBOS.workflow()
async def declines() -> None:
    raise CardDeclined("card ending 4242 declined")


async def test_workflow_get_shows_the_original_error_type_and_its_traceback(dbos: DBOS) -> None:
    # Issue 19: the error went by WorkflowError, with no traceback.
    with SetWorkflowID("declined"), pytest.raises(CardDeclined):
        await declines()
    qualified = f"{__name__}.CardDeclined"
    run = await dbos_cli("workflow", "get", "declined", url=dbos.database_url, tz="IST-5:30")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert f"error:              {qualified}: card ending 4242 declined" in lines, run.out
    trace = lines[lines.index("traceback:") + 1 :]
    assert trace[0] == "  Traceback (most recent call last):", trace
    assert any('raise CardDeclined("card ending 4242 declined")' in line for line in trace)
    assert trace[-1] == f"  {qualified}: card ending 4242 declined"
    # Times are ISO 8601 in the local zone (here +05:30), with the epoch ms.
    created = next(line for line in lines if line.startswith("created_at:"))
    assert re.fullmatch(r"created_at:\s+\d{4}-\d\d-\d\dT[\d:.]+\+05:30 \(\d+\)", created)
    as_json = (
        await dbos_cli("workflow", "get", "declined", "--json", url=dbos.database_url)
    ).json()
    assert isinstance(as_json, dict)
    error = as_json["error"]
    assert error["type"] == qualified and error["message"] == "card ending 4242 declined"
    assert "raise CardDeclined" in error["traceback"]


async def test_the_url_may_come_before_the_command_and_wins_over_the_environment(
    seeded: str,
) -> None:
    run = await dbos_cli(
        "--database-url",
        seeded,
        "workflow",
        "get",
        "broken",
        "--json",
        env_url="postgresql://x@nowhere:1/x",
    )
    assert run.code == 0, run
    assert run.json()["status"] == "ERROR"


async def test_workflow_steps(seeded: str) -> None:
    run = await dbos_cli("workflow", "steps", "first", url=seeded)
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0].split()[:3] == ["STEP", "NAME", "OUTCOME"]
    assert lines[1].split()[0] == "0" and '"one-a#1"' in lines[1]
    steps = (await dbos_cli("workflow", "steps", "first", "--json", url=seeded)).json()
    assert [s["output"] for s in steps] == ["one-a#1", "one-b#2"]  # type: ignore[attr-defined, index]
    none = await dbos_cli("workflow", "steps", "queued", url=seeded)
    assert none.code == 0 and none.out.strip() == "no steps recorded"


async def fan(tag: str) -> list[str]:
    return [await note(f"{tag}-1"), await note(f"{tag}-2")]


@DBOS.workflow()
async def branching() -> list[object]:
    head = await note("head")
    return [head, await asyncio.gather(fan("x"), fan("y")), await note("tail")]


async def test_workflow_steps_shows_the_branch_tree(dbos: DBOS) -> None:
    with SetWorkflowID("tree"):
        await branching()
    run = await dbos_cli("workflow", "steps", "tree", url=dbos.database_url)
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0].split()[:4] == ["BRANCH", "STEP", "NAME", "OUTCOME"]
    cells = [line.split()[:3] for line in lines[1:]]
    name = "test_cli.note"
    assert cells == [
        ["-", "0", name],
        ["0", "0", name],
        ["0", "1", name],
        ["1", "0", name],
        ["1", "1", name],
        ["-", "1", name],
    ]
    # Names are indented by the branch's depth.
    assert lines[2].index(name) > lines[1].index(name)
    steps = (await dbos_cli("workflow", "steps", "tree", "--json", url=dbos.database_url)).json()
    assert [s["branch"] for s in steps] == ["", "0", "0", "1", "1", ""]  # type: ignore[attr-defined, index]


flaky_runs: list[int] = []


@DBOS.step(retries_allowed=True, max_attempts=5, interval_seconds=0)
async def flaky() -> str:
    flaky_runs.append(1)
    if len(flaky_runs) < 3:
        raise ConnectionResetError("the payment API hung up")
    return "paid"


@DBOS.workflow()
async def built_ins() -> object:
    paid = await flaky()
    await DBOS.sleep(0.01)
    got = await DBOS.recv("nothing", timeout_seconds=0.01)
    event = await DBOS.get_event("nobody", "nothing", timeout_seconds=0.01)
    return [paid, got, event]


async def test_workflow_steps_names_built_ins_and_shows_times_and_attempts(dbos: DBOS) -> None:
    # Issue 19: a sleep's wake-up was a raw epoch float, a recv deadline read
    # as a DBOS.sleep step, and retries did not show.
    flaky_runs.clear()
    with SetWorkflowID("built-ins"):
        assert await built_ins() == ["paid", None, None]
    run = await dbos_cli("workflow", "steps", "built-ins", url=dbos.database_url, tz="IST-5:30")
    assert run.code == 0, run
    lines = run.out.splitlines()
    headers = ["STEP", "NAME", "OUTCOME", "ATTEMPTS", "CHILD", "WORKFLOW", "STARTED", "MS"]
    assert lines[0].split() == headers
    names = ["DBOS.recv deadline", "DBOS.get_event deadline"]
    for label in names:  # two words: cut the table where its next column starts
        assert sum(label in line for line in lines) == 1, (label, run.out)
    cells = [line.replace(" deadline", "_deadline").split() for line in lines[1:]]
    assert [c[:2] for c in cells] == [
        ["0", f"{__name__}.flaky"],
        ["1", "DBOS.sleep"],
        ["2", "DBOS.recv"],
        ["3", "DBOS.recv_deadline"],
        ["4", "DBOS.get_event"],
        ["5", "DBOS.get_event_deadline"],
    ]
    assert cells[0][2:4] == ['"paid"', "3"]  # three runs of its body, the first two failed
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+05:30"
    for row in (cells[1], cells[3], cells[5]):  # each timer: the time it wakes at, local
        assert row[2] == "until" and re.fullmatch(iso, row[3]), row
    attempts = slice(lines[0].index("ATTEMPTS"), lines[0].index("CHILD WORKFLOW"))
    started = slice(lines[0].index("STARTED"), lines[0].index("MS"))
    assert [line[attempts].strip() for line in lines[1:]] == ["3", "", "", "", "", ""]
    for line in lines[1:]:
        assert re.fullmatch(iso, line[started].strip()), line
    steps = await dbos.list_workflow_steps("built-ins")
    assert [s.attempts for s in steps] == [3, None, None, None, None, None]
    assert [s.name for s in steps][1:] == [
        "DBOS.sleep",
        "DBOS.recv",
        *names[:1],
        "DBOS.get_event",
        *names[1:],
    ]
    as_json = (
        await dbos_cli("workflow", "steps", "built-ins", "--json", url=dbos.database_url)
    ).json()
    assert [s["attempts"] for s in as_json] == [3, None, None, None, None, None]  # type: ignore[attr-defined, index]
    assert isinstance(as_json[1]["output"], float)  # type: ignore[index] # scripts get epoch seconds


# -- workflow cancel / resume / restart / fork ---------------------------------------------


async def test_workflow_cancel_and_resume(seeded: str, conn: asyncpg.Connection) -> None:
    run = await dbos_cli("workflow", "cancel", "queued", url=seeded)
    assert run.code == 0 and run.out.strip() == "cancelled queued", run
    again = await dbos_cli("workflow", "cancel", "queued", url=seeded)
    assert again.out.strip() == "queued was already CANCELLED: left as it is", again
    done = await dbos_cli("workflow", "cancel", "first", url=seeded)
    assert done.code == 0 and done.out.strip() == "first is SUCCESS: left as it is"
    resumed = await dbos_cli("workflow", "resume", "queued", url=seeded)
    assert resumed.code == 0 and resumed.out.startswith("resumed queued"), resumed
    row = await conn.fetchrow(
        "SELECT status, queue_name FROM workflow_status WHERE workflow_id = 'queued'"
    )
    assert tuple(row) == ("ENQUEUED", "payments")  # type: ignore[arg-type] # its own queue again
    nothing = await dbos_cli("workflow", "resume", "first", url=seeded)
    assert nothing.code == 0 and "nothing to resume" in nothing.out
    # Issue 19 (audit): resuming an ENQUEUED workflow moves it ahead of its
    # queue; the CLI said "nothing to resume" while it did.
    ahead = await dbos_cli("workflow", "resume", "queued", url=seeded)
    assert ahead.code == 0 and ahead.out.startswith("started queued ahead of its queue ("), ahead
    row = await conn.fetchrow(
        "SELECT status, queue_name FROM workflow_status WHERE workflow_id = 'queued'"
    )
    assert row["queue_name"] == INTERNAL_QUEUE, row  # type: ignore[index]
    as_json = (await dbos_cli("workflow", "cancel", "broken", "--json", url=seeded)).json()
    assert isinstance(as_json, dict) and as_json["status"] == "ERROR"


@DBOS.workflow()
async def waits_for_go() -> object:
    return await DBOS.recv("go", timeout_seconds=60)


async def test_workflow_resume_of_a_pending_workflow(dbos: DBOS, conn: asyncpg.Connection) -> None:
    # Issue 19: a PENDING workflow whose runtime is gone is resumed, not
    # reported as "nothing to resume"; one whose runtime lives is left alone.
    with SetWorkflowID("live"):
        handle = await dbos.start_workflow(waits_for_go)
    fence = await conn.fetchval("SELECT fence FROM workflow_status WHERE workflow_id = 'live'")
    live = await dbos_cli("workflow", "resume", "live", url=dbos.database_url)
    assert live.code == 0 and live.out.strip() == (
        "live is PENDING and its runtime is alive: nothing to resume"
    ), live
    row = await conn.fetchrow(
        "SELECT status, fence FROM workflow_status WHERE workflow_id = 'live'"
    )
    assert tuple(row) == ("PENDING", fence)  # type: ignore[arg-type]
    # Claimed by a runtime that is gone (its lock free, its heartbeats long
    # missed), of a version no runtime here runs (so nothing adopts it): stranded.
    await conn.execute(
        "INSERT INTO instances (instance_id, executor_id, app_name, app_version, hostname,"
        " pid, lock_key, started_at, heartbeat_at, heartbeat_ms)"
        " VALUES ('a-gone-runtime', 'local', 'app', 'old', 'h', 1, 5150, 0, 0, 10000)"
    )
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_name, app_version,"
        " executor_id, created_at, updated_at, branched_steps, claimed_by)"
        " VALUES ('stranded', 'PENDING', $1, '{\"args\": [], \"kwargs\": {}}', 'app', 'old',"
        " 'local', 0, 0, true, 'a-gone-runtime')",
        waits_for_go.__dbos_entry__.name,  # type: ignore[attr-defined]
    )
    stranded = await dbos_cli("workflow", "resume", "stranded", url=dbos.database_url)
    assert stranded.code == 0 and stranded.out.startswith("resumed stranded ("), stranded
    row = await conn.fetchrow(
        "SELECT status, queue_name, app_version FROM workflow_status WHERE workflow_id = 'stranded'"
    )
    assert tuple(row) == ("ENQUEUED", INTERNAL_QUEUE, "old")  # type: ignore[arg-type]
    await dbos.send("live", "go", topic="go")
    assert await handle.get_result(timeout=10) == "go"


async def test_workflow_restart_and_fork(seeded: str, conn: asyncpg.Connection, dbos: DBOS) -> None:
    run = await dbos_cli("workflow", "restart", "first", "--json", url=seeded)
    assert run.code == 0, run
    restarted = run.json()
    assert isinstance(restarted, dict)
    # Printed right after the enqueue; the test's runtime may already have dequeued it.
    assert restarted["status"] in ("ENQUEUED", "PENDING", "SUCCESS"), restarted
    assert restarted["forked_from"] == "first" and restarted["queue_name"] == INTERNAL_QUEUE
    forked = await dbos_cli(
        "workflow", "fork", HOSTILE, "--step", "1", "--new-id", "f-1", url=seeded
    )
    assert forked.code == 0 and forked.out.startswith(f"forked {HOSTILE} as f-1 ("), forked
    # Issue 19: the ID is taken, so nothing is forked, and the CLI says so.
    for step in ("1", "0"):
        again = await dbos_cli(
            "workflow", "fork", HOSTILE, "--step", step, "--new-id", "f-1", url=seeded
        )
        assert again.code == 1 and "f-1 already exists" in again.err, again
        assert "nothing was forked" in again.err and not again.out, again
    beyond = await dbos_cli("workflow", "fork", HOSTILE, "--step", "99", url=seeded)
    assert beyond.code == 1 and "--step must be between 0 and 2" in beyond.err, beyond
    # The CLI only enqueued it; the test's runtime dequeues the internal queue and runs it:
    # step 0 was copied, step 1 ran again.
    result = await (await dbos.retrieve_workflow("f-1")).get_result(timeout=10)
    assert result[0] == "two-a#3" and result[1].startswith("two-b#")
    copied = await conn.fetch(
        "SELECT output FROM operation_outputs WHERE workflow_id = 'f-1' ORDER BY step_id"
    )
    assert copied[0][0] == '"two-a#3"' and len(copied) == 2
    assert calls.count("two-a") == 1  # the copied step never ran again
    versioned = await dbos_cli(
        "workflow", "fork", "first", "--step", "0", "--app-version", "v2", "--json", url=seeded
    )
    assert versioned.json()["app_version"] == "v2"  # type: ignore[index, call-overload]
    # Issue 19: no runtime of v2 runs, so it does not say "for any runtime".
    stranded = await dbos_cli(
        "workflow", "fork", "first", "--step", "0", "--app-version", "v2", url=seeded
    )
    assert stranded.code == 0, stranded
    assert "no runtime of app version v2 is running, so it waits until one starts" in (
        stranded.out
    ), stranded


# -- queue list ---------------------------------------------------------------------------


async def test_queue_list(seeded: str) -> None:
    run = await dbos_cli("queue", "list", url=seeded)
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["queued", "ENQUEUED"]
    assert "payments" in lines[1]
    as_json = (await dbos_cli("queue", "list", "--json", "--queue", "other", url=seeded)).json()
    assert as_json == []
    done = (await dbos_cli("queue", "list", "--json", "-s", "SUCCESS", url=seeded)).json()
    assert done == []


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["workflow", "get", "nope"],
        ["workflow", "steps", "nope"],
        ["workflow", "cancel", "nope"],
        ["workflow", "resume", "nope"],
        ["workflow", "restart", "nope"],
        ["workflow", "fork", "nope", "--step", "0"],
    ],
)
async def test_unknown_workflow_ids_fail_cleanly(db_url: str, args: list[str]) -> None:
    assert_one_line_error(await dbos_cli(*args, url=db_url), "nope")


async def test_bad_input_is_one_line_and_exit_1(db_url: str) -> None:
    assert_one_line_error(await dbos_cli("workflow", "list"), "DBOS_DATABASE_URL")
    assert_one_line_error(
        await dbos_cli("workflow", "list", url="postgresql://postgres@127.0.0.1:1/x"),
        "Cannot connect",
    )
    assert_one_line_error(await dbos_cli("workflow", "list", url="not a url"), "DSN")
    missing_db = db_url.rsplit("/", 1)[0] + "/no_such_database_here"
    assert_one_line_error(await dbos_cli("workflow", "list", url=missing_db), "does not exist")
    assert_one_line_error(await dbos_cli("workflow", "list", "--bogus", url=db_url), "--bogus")
    assert_one_line_error(await dbos_cli("workflow", "list", "-s", "DONE", url=db_url), "--status")
    assert_one_line_error(
        await dbos_cli("workflow", "list", "--limit", "-1", url=db_url), "--limit"
    )
    assert_one_line_error(await dbos_cli("workflow", "frobnicate", url=db_url), "frobnicate")
    assert_one_line_error(await dbos_cli("workflow", "get", url=db_url), "WORKFLOW_ID")
    assert_one_line_error(
        await dbos_cli("workflow", "fork", "x", "--step", "-1", url=db_url), "start_step"
    )
    assert_one_line_error(await dbos_cli("workflow", "fork", "x", url=db_url), "--step")
    assert_one_line_error(
        await dbos_cli("workflow", "list", "--schema", "Bad; schema", url=db_url), "schema"
    )
    assert_one_line_error(await dbos_cli("workflow", "get", "", url=db_url), "empty")
    assert_one_line_error(await dbos_cli("workflow", "get", "x" * 1025, url=db_url), "1024")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["migrate"],
        ["workflow"],
        ["workflow", "list"],
        ["workflow", "get"],
        ["workflow", "steps"],
        ["workflow", "cancel"],
        ["workflow", "resume"],
        ["workflow", "restart"],
        ["workflow", "fork"],
        ["queue"],
        ["queue", "list"],
        ["workflow", "check"],
        ["workflow", "adopt"],
        ["workflow", "export"],
        ["workflow", "import"],
        ["versions", "list"],
        ["versions", "set-latest"],
        ["postgres"],
        ["postgres", "start"],
        ["postgres", "stop"],
        ["postgres", "status"],
        ["postgres", "url"],
        ["dashboard"],
    ],
)
async def test_help_everywhere(args: list[str]) -> None:
    run = await dbos_cli(*args, "--help")
    assert run.code == 0 and run.err == "", run
    assert run.out.startswith(f"Usage: dbos-async {' '.join(args)}".rstrip()), run.out


# -- terminal escapes in recorded text --------------------------------------------------

ESCAPING = "evil\x1b]0;owned\x07\x1b[2J\r\nID\u202e"


@DBOS.workflow()
async def fails_loudly(note: str) -> None:
    raise RuntimeError(f"boom {note}")


async def test_human_output_never_carries_raw_control_characters(dbos: DBOS) -> None:
    with SetWorkflowID(ESCAPING), pytest.raises(RuntimeError):
        await fails_loudly("\x1b[31mred\x9b")
    url = dbos.database_url
    for argv in (
        ("workflow", "list"),
        ("workflow", "get", ESCAPING),
        ("workflow", "steps", ESCAPING),
        ("workflow", "cancel", ESCAPING),
        ("workflow", "resume", ESCAPING),
        ("workflow", "get", "nope\x1b[2J"),  # an error line naming the ID
    ):
        run = await dbos_cli(*argv, url=url)
        for text in (run.out, run.err):
            controls = [c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)]
            assert not controls, (argv, text)
            assert "\u202e" not in text, (argv, text)
    listed = await dbos_cli("workflow", "list", url=url)
    assert "evil\\x1b]0;owned\\x07" in listed.out  # escaped, still recognisable
    # JSON keeps the exact text, escaped by JSON itself.
    as_json = (await dbos_cli("workflow", "get", ESCAPING, "--json", url=url)).json()
    assert as_json["workflow_id"] == ESCAPING  # type: ignore[index]


async def test_json_before_the_command_and_a_reader_that_stops_early(
    seeded: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Issue 19: --json is accepted before the command too.
    before = await dbos_cli("--json", "workflow", "get", "first", url=seeded)
    assert before.code == 0, before
    assert isinstance(before.json(), dict)
    # `workflow list | head -1`: more than a pipe holds, and the reader stops
    # after one line. That is no error: exit 0, nothing on stderr.
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, created_at, updated_at)"
        " SELECT 'many-' || i, 'SUCCESS', 'cli.many', i, i FROM generate_series(1, 3000) AS i"
    )
    script = (
        f"{shlex.quote(sys.executable)} -m dbos_async workflow list --limit 3000"
        f" --database-url {shlex.quote(seeded)} 2>err.txt | head -1;"
        ' echo "status=${PIPESTATUS[0]}"; cat err.txt'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    out = (await proc.communicate())[0].decode()
    lines = out.splitlines()
    assert lines[0].startswith("WORKFLOW ID") and lines[1] == "status=0", out
    assert lines[2:] == [], out  # nothing on stderr
