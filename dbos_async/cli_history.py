"""``dbos-async workflow export|import``: workflow histories to and from a JSON file.

``export ID... [-o FILE]`` writes the histories of workflows (the format is
described in ``history.py``) to standard output or a file; ``import FILE``
(``-``: standard input) records them in a database, all or nothing. cli.py
registers both on its ``workflow`` group with ``register``; the shared options
come from cli_options.py.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dbos_async import cli_output
from dbos_async.cli_options import database_options, json_option, with_client
from dbos_async.history import (
    Unfinished,
    dump_document,
    export_histories,
    import_histories,
    load_histories,
)
from dbos_async.models import WorkflowStatusString
from dbos_async.systemdb.pool import Pool

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _with_pool(database_url: str | None, schema: str, action: Callable[[Pool], Awaitable[T]]) -> T:
    """Open a client on the database, run ``action`` with its pool, close it."""
    return with_client(database_url, schema, lambda client: action(client.pool))


@click.command("export")
@database_options
@click.argument("workflow_ids", nargs=-1, required=True, metavar="WORKFLOW_ID...")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.option(
    "--with-children", is_flag=True, help="Also export the workflows they started, recursively."
)
def export_workflows(
    database_url: str | None,
    schema: str,
    workflow_ids: tuple[str, ...],
    output: Path | None,
    with_children: bool,
) -> None:
    """Write the recorded histories of workflows as JSON.

    To standard output, or -o FILE; for `workflow import`, or for tests.
    """
    document = _with_pool(
        database_url,
        schema,
        lambda pool: export_histories(pool, workflow_ids, with_children=with_children),
    )
    data = dump_document(document)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    cli_output.say(f"exported {len(document['workflows'])} workflows to {output}")


@click.command("import")
@database_options
@json_option
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--unfinished",
    type=click.Choice(["keep", "cancel"]),
    default="keep",
    show_default=True,
    help="PENDING and ENQUEUED workflows: keep them, to run here, or import them CANCELLED.",
)
def import_workflows(
    database_url: str | None, schema: str, as_json: bool, file: str, unfinished: Unfinished
) -> None:
    """Record the workflows of a history file (- for stdin) here.

    All or nothing: an ID already recorded here imports nothing. Workflows imported PENDING or
    ENQUEUED run in this database: cancel them in the old one first.
    """
    if file == "-":
        histories = load_histories(sys.stdin.buffer.read(), name="standard input")
    else:
        histories = load_histories(file)
    imported = _with_pool(
        database_url,
        schema,
        lambda pool: import_histories(pool, histories, unfinished=unfinished),
    )
    if as_json:
        cli_output.print_json({"imported": imported})
        return
    if not imported:
        cli_output.say("no workflows in the file: nothing imported")
    for history in histories:
        status = history.workflow.status
        if unfinished == "cancel" and not status.is_terminal:
            shown = f"{WorkflowStatusString.CANCELLED.value}, was {status.value}"
        else:
            shown = status.value
        cli_output.say(f"imported {history.workflow_id} ({shown})")


def register(workflow: click.Group) -> None:
    """Add ``export`` and ``import`` to the ``workflow`` group."""
    workflow.add_command(export_workflows)
    workflow.add_command(import_workflows)
