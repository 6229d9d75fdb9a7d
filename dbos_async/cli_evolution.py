"""Deploying new code from the command line: ``versions``, ``workflow check``, ``workflow adopt``.

``versions [list]`` lists the app versions with their live runtimes and
waiting work, ``versions set-latest V`` picks the latest; ``workflow check
--app MODULE:OBJ`` replays recorded histories (of the database, or of files
written by ``workflow export``) against the app's code, with no effects, and
exits 1 if any does not replay; ``workflow adopt --from-version V`` moves a
version's waiting work to another version, with ``--only-compatible`` only
what the app's code replays. cli.py registers them with ``register``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Any

import click

from dbos_async import cli_output, registry, versions
from dbos_async.checker import CheckResult, check_histories, check_workflows
from dbos_async.cli_options import database_options, json_option, with_client
from dbos_async.client import DBOSClient
from dbos_async.history import load_histories
from dbos_async.models import WorkflowStatusString


def load_app(spec: str) -> Any:
    """Import ``MODULE:OBJ`` (from the current directory too) and return OBJ's runtime config.

    Importing the module registers its workflows and steps: the code to check.

    Raises:
        click.BadParameter: the spec is malformed, the module does not import,
            or OBJ is not a ``DBOS`` instance.
    """
    from dbos_async.dbos import DBOS

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:OBJ", param_hint="--app")
    if os.getcwd() not in sys.path:  # like `python -m`: the project's modules import
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise click.BadParameter(
            f"cannot import {module_name}: {exc!r}", param_hint="--app"
        ) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, DBOS):
        raise click.BadParameter(
            f"{spec} is {type(app).__name__}, not a DBOS instance", param_hint="--app"
        )
    return app._runtime.config


_ONLY_WORKFLOW = "Only this workflow (repeatable)."
_APP_HELP = "The application: the module that registers its workflows, and its DBOS object."


def _print_results(results: list[CheckResult], as_json: bool) -> None:
    if as_json:
        cli_output.print_json(results)
        return
    if not results:
        cli_output.say("no workflows to check")
        return
    for r in results:
        cli_output.say(r.summary())
        if r.stopped:
            cli_output.say(f"  replayed {r.replayed} recorded calls; {r.stopped}")
        for drift in r.drift:
            cli_output.say(f"  output drift: {drift}")
    bad = sum(not r.compatible for r in results)
    cli_output.say(f"{len(results) - bad} compatible, {bad} incompatible")


@click.command("check")
@database_options
@json_option
@click.option("--app", "app_spec", metavar="MODULE:OBJ", required=True, help=_APP_HELP)
@click.option(
    "--status",
    "-s",
    multiple=True,
    type=click.Choice([s.value for s in WorkflowStatusString], case_sensitive=False),
    help="Only this status (repeatable; default PENDING and ENQUEUED).",
)
@click.option("--version", "app_version", multiple=True, help="Only this app version (repeatable).")
@click.option(
    "--workflow-id", "workflow_ids", multiple=True, help="Only this workflow (repeatable)."
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Check the histories of this exported file instead of the database's (repeatable).",
)
def check(
    database_url: str | None,
    schema: str,
    as_json: bool,
    app_spec: str,
    status: tuple[str, ...],
    app_version: tuple[str, ...],
    workflow_ids: tuple[str, ...],
    files: tuple[str, ...],
) -> None:
    """Replay recorded histories against the app's code, with no effects.

    By default the database's PENDING and ENQUEUED workflows; --file checks
    histories written by `workflow export` instead (no database needed).
    Exits 1 if any history does not replay.
    """
    config = load_app(app_spec)
    if files:
        histories = [h for f in files for h in load_histories(f)]
        if workflow_ids:
            histories = [h for h in histories if h.workflow_id in workflow_ids]
        results = asyncio.run(check_histories(histories, config=config))
    else:
        results = with_client(
            database_url,
            schema,
            lambda c: check_workflows(
                c.pool,
                status=[s.upper() for s in status] or None,
                app_version=list(app_version) or None,
                workflow_ids=list(workflow_ids) or None,
                config=config,
            ),
        )
    _print_results(results, as_json)
    if not all(r.compatible for r in results):
        click.get_current_context().exit(1)


@click.command("adopt")
@database_options
@json_option
@click.option("--from-version", required=True, help="Move the waiting work of this app version.")
@click.option("--to-version", help="To this app version (default: the latest).")
@click.option(
    "--workflow-id", "workflow_ids", multiple=True, help="Only this workflow (repeatable)."
)
@click.option(
    "--only-compatible", is_flag=True, help="Only those the app's code replays (needs --app)."
)
@click.option("--app", "app_spec", metavar="MODULE:OBJ", help=_APP_HELP)
def adopt(
    database_url: str | None,
    schema: str,
    as_json: bool,
    from_version: str,
    to_version: str | None,
    workflow_ids: tuple[str, ...],
    only_compatible: bool,
    app_spec: str | None,
) -> None:
    """Move the PENDING and ENQUEUED workflows of one app version to another.

    Runtimes of the new version then run them, replaying their recorded steps
    under their code. --only-compatible (with --app) first checks each against
    the app's code and moves only those that replay, to the app's version.
    """
    if only_compatible and not app_spec:
        raise click.UsageError("--only-compatible needs --app MODULE:OBJ, the code to check")
    config = load_app(app_spec) if only_compatible and app_spec else None
    if config is not None:
        # Checked against this code, so moved to this code's version, and no other.
        checked = config.app_version or registry.compute_app_version()
        if to_version is not None and to_version != checked:
            raise click.UsageError(
                f"--to-version {to_version} is not the checked app's version ({checked}): "
                "--only-compatible moves work only to the version it checked"
            )
        to_version = checked

    async def run(client: DBOSClient) -> tuple[list[tuple[str, str]], list[CheckResult]]:
        chosen = list(workflow_ids) or None
        left: list[CheckResult] = []
        if config is not None:
            results = await check_workflows(
                client.pool, app_version=[from_version], workflow_ids=chosen, config=config
            )
            left = [r for r in results if not r.compatible]
            chosen = [r.workflow_id for r in results if r.compatible]
            if not chosen:
                return [], left
        moved = await versions.adopt_workflows(client.pool, from_version, to_version, chosen)
        return moved, left

    moved, left = with_client(database_url, schema, run)
    if as_json:
        cli_output.print_json(
            {
                "moved": [{"workflow_id": w, "status": s} for w, s in moved],
                "left": [{"workflow_id": r.workflow_id, "problem": r.problem} for r in left],
            }
        )
        return
    if not moved:
        cli_output.say(f"app version {from_version} has no PENDING or ENQUEUED workflow to move")
    else:
        pending = sum(s == "PENDING" for _, s in moved)
        cli_output.say(
            f"moved {len(moved)} workflows of app version {from_version} "
            f"({pending} PENDING, {len(moved) - pending} ENQUEUED)"
        )
    for r in left:
        cli_output.say(f"left {r.workflow_id}: {r.problem}")


@click.group("versions", invoke_without_command=True)
@database_options
@json_option
@click.pass_context
def versions_group(
    ctx: click.Context, database_url: str | None, schema: str, as_json: bool
) -> None:
    """List the app versions and the work waiting on each (the default); choose the latest."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_versions, database_url=database_url, schema=schema, as_json=as_json)


@versions_group.command("list")
@database_options
@json_option
def list_versions(database_url: str | None, schema: str, as_json: bool) -> None:
    """List the app versions, newest first, with live runtimes and waiting work."""
    found = with_client(database_url, schema, lambda c: versions.list_application_versions(c.pool))
    cli_output.print_versions(found, as_json)


@versions_group.command("set-latest")
@database_options
@click.argument("version")
def set_latest(database_url: str | None, schema: str, version: str) -> None:
    """Make VERSION the latest: enqueues that name no version go to it."""
    with_client(
        database_url, schema, lambda c: versions.set_latest_application_version(c.pool, version)
    )
    cli_output.say(f"app version {version} is the latest")


def register(cli: click.Group, workflow: click.Group) -> None:
    """Add ``versions`` to the root group, and ``check`` and ``adopt`` to ``workflow``."""
    cli.add_command(versions_group)
    workflow.add_command(check)
    workflow.add_command(adopt)
