"""``dbos-async postgres start|stop|status|url``: the embedded Postgres from the shell.

The server that ``DBOS()`` starts when no database URL is given keeps running
after the program exits, on a port stable for its data directory. These
commands start and stop it, say where it is, and print its URL for other
tools: ``export DBOS_DATABASE_URL=$(dbos-async postgres url)``. They use the
binaries of the ``embedded`` extra, as ``DBOS()`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from dbos_async import cli_output
from dbos_async.embedded import MISSING_EXTRA_MESSAGE, LocalCluster
from dbos_async.pg_install import wheel_bin_dir

F = TypeVar("F", bound=Callable[..., Any])

# The exit statuses of `pg_ctl status`, which scripts may already test for.
STOPPED = 3
NOT_CREATED = 4


def _data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=".dbos_async",
        show_default=True,
        help="The data directory given to DBOS (relative to the current directory).",
    )(fn)


def _cluster(data_dir: Path) -> LocalCluster:
    bin_dir = wheel_bin_dir()
    if bin_dir is None:
        raise click.ClickException(MISSING_EXTRA_MESSAGE)
    return LocalCluster(data_dir, bin_dir)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    # The cluster's refusals are expected failures, not "unexpected" ones.
    try:
        yield
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def postgres() -> None:
    """Start, stop and locate the embedded Postgres (it runs until stopped)."""


@postgres.command()
@_data_dir_option
def start(data_dir: Path) -> None:
    """Start the server (or find it running) and print its URL."""
    with _one_line_errors():
        cluster = _cluster(data_dir)
        was_running = cluster.status().running
        url = cluster.start()
    verb = "already running" if was_running else "started"
    # On stderr: stdout is only the URL, for `export DBOS_DATABASE_URL=$(... start)`.
    cli_output.say(
        f"{verb}: the embedded Postgres of {cluster.data_dir}, port {cluster.port}", err=True
    )
    cli_output.say(url)


@postgres.command()
@_data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the server (not running is no error)."""
    with _one_line_errors():
        cluster = _cluster(data_dir)
        stopped = cluster.stop()
    if stopped:
        cli_output.say(f"stopped the embedded Postgres of {cluster.data_dir}")
    else:
        cli_output.say(f"the embedded Postgres of {cluster.data_dir} is not running")


@postgres.command()
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def status(ctx: click.Context, data_dir: Path, as_json: bool) -> None:
    """Whether the server runs, its port, and where its files are.

    Exit status (as pg_ctl status): 0 running, 3 stopped, 4 never created.
    """
    as_json = as_json or bool((ctx.find_root().obj or {}).get("as_json"))
    with _one_line_errors():
        found = _cluster(data_dir).status()
    if as_json:
        cli_output.print_json(
            {
                "running": found.running,
                "port": found.port,
                "data_dir": str(found.data_dir),
                "pgdata": str(found.pgdata),
                "created": found.created,
            }
        )
    else:
        port = "" if found.port is None else str(found.port)
        cli_output.say(f"running: {'yes' if found.running else 'no'}")
        cli_output.say(f"port: {port}")
        cli_output.say(f"data dir: {found.data_dir}")
        cli_output.say(f"pgdata: {found.pgdata}{'' if found.created else ' (not created)'}")
    if not found.running:
        ctx.exit(STOPPED if found.created else NOT_CREATED)


@postgres.command()
@_data_dir_option
def url(data_dir: Path) -> None:
    """Print the server's URL, with its password.

    For `export DBOS_DATABASE_URL=$(dbos-async postgres url)`. A stopped
    server's URL is printed too (its port is stable), with a note on stderr.
    """
    with _one_line_errors():
        cluster = _cluster(data_dir)
        found = cluster.status()
        if not found.created:
            raise click.ClickException(
                f"no embedded Postgres in {found.data_dir}: `dbos-async postgres start` makes one"
            )
        if found.port is None:
            raise click.ClickException(
                f"the embedded Postgres of {found.data_dir} is not running and has no "
                "recorded port: `dbos-async postgres start` starts it"
            )
        text = cluster.url
    if not found.running:
        cli_output.say(
            f"note: the embedded Postgres of {found.data_dir} is not running: "
            "`dbos-async postgres start` starts it",
            err=True,
        )
    cli_output.say(text)


__all__ = ["postgres"]
