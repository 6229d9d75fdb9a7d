"""Options and plumbing shared by the ``dbos-async`` commands (cli.py and its siblings).

``--database-url`` (or ``$DBOS_DATABASE_URL``), ``--schema`` and ``--json`` are
accepted after a command or before it (``dbos-async --json workflow list``):
the root group keeps the ones given before in its context, and ``setting``
picks the one that applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from dbos_async.client import DBOSClient

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def database_options(fn: F) -> F:
    """Add ``--database-url`` (or ``$DBOS_DATABASE_URL``) and ``--schema`` to a command."""
    fn = click.option(
        "--schema",
        default="dbos_async",
        show_default=True,
        help="Schema of the system tables (as given to DBOS).",
    )(fn)
    return click.option(
        "--database-url",
        envvar="DBOS_DATABASE_URL",
        show_envvar=True,
        metavar="URL",
        help="Postgres URL of the system database.",
    )(fn)


def _json_anywhere(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # ``dbos-async --json workflow list`` as well as ``... workflow list --json``.
    return value or bool((ctx.find_root().obj or {}).get("as_json"))


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_json_anywhere,
    help="Print JSON for scripts (also accepted before the command).",
)


def with_client(
    database_url: str | None, schema: str, action: Callable[[DBOSClient], Awaitable[T]]
) -> T:
    """Open a client on the database, run ``action`` with it, close it."""
    url = require_url(database_url)
    schema = setting("schema", schema)

    async def run() -> T:
        async with DBOSClient(url, schema=schema) as client:
            return await action(client)

    return asyncio.run(run())


def require_url(database_url: str | None) -> str:
    """The database URL that applies (see ``setting``); a usage error when there is none."""
    database_url = setting("database_url", database_url)
    if not database_url:
        raise click.UsageError("no database URL: pass --database-url or set DBOS_DATABASE_URL")
    return database_url


def setting(name: str, value: T) -> T:
    """The command's own option if typed on its command line, else one given before it.

    ``dbos-async --database-url URL workflow list`` and ``dbos-async workflow
    list --database-url URL`` both work; the command's environment default
    does not override a URL typed before the command.
    """
    ctx = click.get_current_context()
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
        return value
    given = (ctx.find_root().obj or {}).get(name)
    return value if given is None else given
