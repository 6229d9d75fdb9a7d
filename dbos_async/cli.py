"""The ``dbos-async`` command line (also ``python -m dbos_async``).

A thin layer over ``DBOSClient`` and the migration runner: each command opens
a client, makes one or two management calls and prints the result, as an
aligned table (or ``key: value`` lines) for people, or with ``--json`` for
scripts. Every failure is one line on stderr and exit status 1, never a
traceback. ``click`` parses the arguments.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import click

from dbos_async import cli_output, management
from dbos_async.cli_dashboard import dashboard
from dbos_async.cli_evolution import register as register_evolution
from dbos_async.cli_history import register as register_history
from dbos_async.cli_options import (
    database_options,
    json_option,
    require_url,
    setting,
    with_client,
)
from dbos_async.cli_postgres import postgres
from dbos_async.client import DBOSClient
from dbos_async.context import SetWorkflowID
from dbos_async.errors import DBOSError, WorkflowNotFoundError
from dbos_async.models import WorkflowStatus, WorkflowStatusString
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb.migrate import migrate as run_migrations
from dbos_async.systemdb.migrate import migrations, newer_migrations
from dbos_async.systemdb.pool import acquire, create_pool
from dbos_async.validation import check_schema_name

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_STATUSES = [s.value for s in WorkflowStatusString]


# -- options of the commands ------------------------------------------------------------


def _parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Epoch milliseconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time", ctx, param
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# -- commands ----------------------------------------------------------------------------


class _Commands(click.Group):
    """The root group; a reader that stops early (``| head``) is no error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # What it read is what it wanted. Later writes, and the flush at
            # exit, go nowhere instead of failing (click would exit 1).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return None


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="dbos-async", prog_name="dbos-async")
@click.option("--database-url", metavar="URL", help="Postgres URL (also accepted after a command).")
@click.option("--schema", help="Schema of the system tables (also accepted after a command).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (also accepted after a command).")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, schema: str | None, as_json: bool) -> None:
    """Inspect and manage dbos_async workflows in their Postgres database.

    Every command takes --database-url (or $DBOS_DATABASE_URL), --schema and
    (where it prints) --json, before or after the command's name.
    """
    ctx.obj = {"database_url": database_url, "schema": schema, "as_json": as_json}


@cli.command()
@database_options
def migrate(database_url: str | None, schema: str) -> None:
    """Create or upgrade the system tables (safe to run at any time)."""
    url = require_url(database_url)
    schema = setting("schema", schema)
    check_schema_name(schema)

    async def run() -> tuple[list[int], list[int]]:
        pool = await create_pool(url, schema=schema, max_size=1)
        try:
            async with acquire(pool) as conn:
                applied = await run_migrations(conn, schema)
                return applied, await newer_migrations(conn, schema)
        finally:
            await pool.close()

    applied, newer = asyncio.run(run())
    names = {m.version: m.name for m in migrations()}
    if applied:
        cli_output.say(f"applied {len(applied)} migrations to schema {schema}:")
        for version in applied:
            cli_output.say(f"  {names[version]}")
    else:
        cli_output.say(f"schema {schema} is up to date ({len(names)} migrations)")
    if newer:
        # Migrations only add, so this release still works on it; but "up to
        # date" alone would hide that a newer release shares the database.
        cli_output.say(
            f"schema {schema} also has migrations {', '.join(map(str, newer))}, applied by "
            "a newer release of dbos-async"
        )


@cli.group()
def workflow() -> None:
    """List, inspect, cancel, resume, restart and fork workflows."""


@workflow.command("list")
@database_options
@json_option
@click.option(
    "--status",
    "-s",
    multiple=True,
    type=click.Choice(_STATUSES, case_sensitive=False),
    help="Only this status (repeatable).",
)
@click.option("--name", multiple=True, help="Only this workflow name (repeatable).")
@click.option(
    "--exclude-name", multiple=True, help="Not this workflow name, e.g. a cron's (repeatable)."
)
@click.option("--queue", multiple=True, help="Only this queue (repeatable).")
@click.option("--app-version", multiple=True, help="Only this app version (repeatable).")
@click.option("--executor-id", multiple=True, help="Only this executor (repeatable).")
@click.option(
    "--since", callback=_parse_time, metavar="TIME", help="Created at or after (epoch ms or ISO)."
)
@click.option(
    "--until", callback=_parse_time, metavar="TIME", help="Created at or before (epoch ms or ISO)."
)
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
def list_workflows(
    database_url: str | None,
    schema: str,
    as_json: bool,
    status: tuple[str, ...],
    name: tuple[str, ...],
    exclude_name: tuple[str, ...],
    queue: tuple[str, ...],
    app_version: tuple[str, ...],
    executor_id: tuple[str, ...],
    since: int | None,
    until: int | None,
    limit: int,
    offset: int,
    oldest_first: bool,
) -> None:
    """List workflows, newest first; --json adds inputs and outputs."""
    statuses = with_client(
        database_url,
        schema,
        lambda client: client.list_workflows(
            status=[s.upper() for s in status] or None,
            name=list(name) or None,
            exclude_name=list(exclude_name) or None,
            queue_name=list(queue) or None,
            app_version=list(app_version) or None,
            executor_id=list(executor_id) or None,
            start_time=since,
            end_time=until,
            limit=limit,
            offset=offset,
            sort_desc=not oldest_first,
            load_input=as_json,
            load_output=as_json,
        ),
    )
    cli_output.print_statuses(statuses, as_json)


async def _status_of(client: DBOSClient, workflow_id: str) -> WorkflowStatus:
    status = await client.get_workflow_status(workflow_id)
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    return status


@workflow.command("get")
@database_options
@json_option
@click.argument("workflow_id")
def get_workflow(database_url: str | None, schema: str, as_json: bool, workflow_id: str) -> None:
    """Show everything recorded about one workflow."""
    status = with_client(database_url, schema, lambda c: _status_of(c, workflow_id))
    cli_output.print_status(status, as_json)


@workflow.command("steps")
@database_options
@json_option
@click.argument("workflow_id")
def list_steps(database_url: str | None, schema: str, as_json: bool, workflow_id: str) -> None:
    """List the recorded steps of a workflow."""
    steps = with_client(database_url, schema, lambda c: c.list_workflow_steps(workflow_id))
    cli_output.print_steps(steps, as_json)


@workflow.command("cancel")
@database_options
@json_option
@click.argument("workflow_id")
def cancel(database_url: str | None, schema: str, as_json: bool, workflow_id: str) -> None:
    """Cancel a PENDING or ENQUEUED workflow (a finished one is left as it is)."""

    async def run(client: DBOSClient) -> tuple[bool, WorkflowStatus]:
        cancelled = await management.cancel_workflow(client.pool, workflow_id)
        return cancelled, await _status_of(client, workflow_id)

    cancelled, status = with_client(database_url, schema, run)
    if as_json:
        cli_output.print_json(status)
    elif cancelled:
        cli_output.say(f"cancelled {workflow_id}")
    elif status.status is WorkflowStatusString.CANCELLED:
        cli_output.say(f"{workflow_id} was already CANCELLED: left as it is")
    else:
        cli_output.say(f"{workflow_id} is {status.status.value}: left as it is")


@workflow.command("resume")
@database_options
@json_option
@click.argument("workflow_id")
def resume(database_url: str | None, schema: str, as_json: bool, workflow_id: str) -> None:
    """Continue a CANCELLED, failed or stranded workflow from its last completed step.

    Stranded: PENDING, but the runtime that claimed it is gone. An ENQUEUED
    workflow leaves its queue and waits on the internal one, which starts it
    without the queue's limits.
    """

    async def run(
        client: DBOSClient,
    ) -> tuple[WorkflowStatusString | None, WorkflowStatus, int | None]:
        # What the statement itself did, not two reads around it: another
        # runtime may dequeue or finish the workflow in between.
        resumed = await management.resume_workflow(client.pool, workflow_id)
        status = await _status_of(client, workflow_id)
        return resumed, status, await _runners(client, status)

    resumed, status, runners = with_client(database_url, schema, run)
    if as_json:
        cli_output.print_json(status)
    elif resumed is WorkflowStatusString.ENQUEUED:
        cli_output.say(
            f"started {workflow_id} ahead of its queue ({cli_output.waiting(status, runners)})"
        )
    elif resumed is not None:
        cli_output.say(f"resumed {workflow_id} ({cli_output.waiting(status, runners)})")
    elif status.status is WorkflowStatusString.PENDING:
        cli_output.say(f"{workflow_id} is PENDING and its runtime is alive: nothing to resume")
    else:
        cli_output.say(f"{workflow_id} is {status.status.value}: nothing to resume")


@workflow.command("restart")
@database_options
@json_option
@click.argument("workflow_id")
def restart(database_url: str | None, schema: str, as_json: bool, workflow_id: str) -> None:
    """Run a workflow again from scratch, with the same inputs, under a new ID."""

    async def run(client: DBOSClient) -> tuple[WorkflowStatus, int | None]:
        status = await (await client.restart_workflow(workflow_id)).get_status()
        return status, await _runners(client, status)

    status, runners = with_client(database_url, schema, run)
    cli_output.started("restarted", workflow_id, status, as_json, runners)


@workflow.command("fork")
@database_options
@json_option
@click.argument("workflow_id")
@click.option(
    "--step",
    "start_step",
    type=int,
    required=True,
    help="Reuse the recorded steps before this step ID; run it and the rest again.",
)
@click.option("--app-version", help="App version to run the fork (default: the original's).")
@click.option("--new-id", help="ID for the fork (default: a new UUID); makes forking idempotent.")
def fork(
    database_url: str | None,
    schema: str,
    as_json: bool,
    workflow_id: str,
    start_step: int,
    app_version: str | None,
    new_id: str | None,
) -> None:
    """Copy a workflow under a new ID, reusing the outcomes of its first steps."""

    async def run(client: DBOSClient) -> tuple[WorkflowStatus, int | None]:
        await _check_fork(client, workflow_id, start_step, new_id)
        if new_id is None:
            handle = await client.fork_workflow(workflow_id, start_step, app_version)
        else:
            with SetWorkflowID(new_id):
                handle = await client.fork_workflow(workflow_id, start_step, app_version)
        status = await handle.get_status()
        if status.forked_from != workflow_id:  # the ID was taken meanwhile
            raise click.ClickException(_taken(status))
        return status, await _runners(client, status)

    status, runners = with_client(database_url, schema, run)
    cli_output.started("forked", workflow_id, status, as_json, runners)


_RUNNER_WINDOW_MS = 90_000
"""A runtime heartbeats every lease/3 (10 s by default): one silent for 90 s is gone."""


async def _runners(client: DBOSClient, status: WorkflowStatus) -> int | None:
    """How many live runtimes could dequeue an ENQUEUED workflow (None: it is not)."""
    if status.status is not WorkflowStatusString.ENQUEUED or not status.app_version:
        return None
    async with acquire(client.pool) as conn:
        return await executors_table.count_live_executors(
            conn, status.app_version, _RUNNER_WINDOW_MS
        )


async def _check_fork(
    client: DBOSClient, workflow_id: str, start_step: int, new_id: str | None
) -> None:
    """Refuse, before writing anything, a fork that would not fork what was asked.

    The library's fork is idempotent under a taken ID (it returns the existing
    workflow); a person who typed ``--new-id`` must hear that nothing was forked.
    """
    if start_step < 0:
        raise click.BadParameter(
            f"start_step must be at least 0, got {start_step}", param_hint="--step"
        )
    await _status_of(client, workflow_id)  # WorkflowNotFoundError names it
    recorded = [s.step_id for s in await client.list_workflow_steps(workflow_id) if not s.branch]
    count = max(recorded) + 1 if recorded else 0
    if not 0 <= start_step <= count:
        raise click.BadParameter(
            f"{workflow_id} has recorded {count} steps: --step must be between 0 and {count}",
            param_hint="--step",
        )
    if new_id is not None:
        taken = await client.get_workflow_status(new_id)
        if taken is not None:
            raise click.ClickException(_taken(taken))


def _taken(status: WorkflowStatus) -> str:
    origin = f", a fork of {status.forked_from}" if status.forked_from else ""
    return (
        f"{status.workflow_id} already exists ({status.status.value}{origin}): "
        "nothing was forked; choose another --new-id"
    )


@cli.group()
def queue() -> None:
    """Inspect queues."""


@queue.command("list")
@database_options
@json_option
@click.option("--queue", multiple=True, help="Only this queue (repeatable).")
@click.option(
    "--status",
    "-s",
    multiple=True,
    type=click.Choice(_STATUSES, case_sensitive=False),
    help="Only this status (repeatable; default ENQUEUED and PENDING).",
)
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
def list_queued(
    database_url: str | None,
    schema: str,
    as_json: bool,
    queue: tuple[str, ...],
    status: tuple[str, ...],
    limit: int,
) -> None:
    """List the workflows waiting on or running from queues, oldest first."""
    statuses = with_client(
        database_url,
        schema,
        lambda client: client.list_queued_workflows(
            queue_name=list(queue) or None,
            status=[s.upper() for s in status] or None,
            limit=limit,
            load_input=as_json,
            load_output=as_json,
        ),
    )
    cli_output.print_statuses(statuses, as_json)


# -- entry point -------------------------------------------------------------------------


def _fail(message: str) -> None:
    cli_output.say(f"dbos-async: error: {' '.join(message.split())}", err=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; every failure is one line on stderr and exit status 1."""
    try:
        code = cli.main(args=argv, prog_name="dbos-async", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = 0
    except click.UsageError as exc:
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        _fail(exc.format_message() + where)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.Abort:
        _fail("aborted")
    except (DBOSError, ValueError) as exc:
        _fail(str(exc))
    except asyncpg.PostgresError as exc:
        _fail(f"the database refused: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as exc:  # the promise: one line, never a traceback
        _fail(f"unexpected {type(exc).__name__}: {exc}")
    sys.exit(code if isinstance(code, int) else 0)


cli.add_command(postgres)
cli.add_command(dashboard)
register_history(workflow)
register_evolution(cli, workflow)
__all__ = ["cli", "main"]
