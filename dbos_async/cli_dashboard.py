"""``dbos-async dashboard``: the web dashboard on its own, under uvicorn (extra ``dashboard``).

It binds 127.0.0.1 by default and always asks for a login: a fresh token per
run, printed as a login URL (``--insecure-no-auth`` is accepted on a
loopback address only). ``--app MODULE:OBJ`` imports the application, so the
queues and schedules it declares show their limits and next ticks.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket

import click

from dbos_async.cli_options import database_options, require_url, setting

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("dashboard")
@database_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Refuse every action (cancel, resume, fork...).")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A Host header to answer besides the loopback names and --host (repeatable).",
)
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:OBJ",
    help="Import the application, so its queues' limits and schedules show.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="No login at all (only on a loopback --host).",
)
def dashboard(
    database_url: str | None,
    schema: str,
    host: str,
    port: int,
    read_only: bool,
    allowed_hosts: tuple[str, ...],
    app_spec: str | None,
    insecure_no_auth: bool,
) -> None:
    """Serve the web dashboard: workflows, queues, schedules and executors, in a browser."""
    try:
        import uvicorn

        from dbos_async.dashboard import Dashboard
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'dbos-async[dashboard]' ({exc})"
        ) from exc
    url = require_url(database_url)
    schema = setting("schema", schema)
    if insecure_no_auth and not _loopback(host):
        raise click.UsageError(f"--insecure-no-auth is refused on a non-loopback --host ({host})")
    if app_spec:
        from dbos_async.cli_evolution import load_app

        load_app(app_spec)
    token = None if insecure_no_auth else secrets.token_urlsafe(24)
    shown = f"[{host}]" if ":" in host else host
    hosts = [*LOOPBACK, "[::1]", host, shown, *allowed_hosts]
    app = Dashboard(
        url,
        auth=token,
        read_only=read_only,
        allowed_hosts=hosts,
        insecure_no_auth=insecure_no_auth,
        schema=schema,
    )
    # Bound and listening before the URL is printed: a browser (or a script)
    # that opens it at once waits in the backlog instead of being refused.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(128)
    bound = sock.getsockname()[1]
    wildcard = host in ("0.0.0.0", "::")
    if wildcard:
        shown = "127.0.0.1"  # a URL that works here; other names need --allowed-host
    base = f"http://{shown}:{bound}/"
    if token is None:
        click.echo(f"dbos_async dashboard (no login): {base}")
    else:
        click.echo(f"dbos_async dashboard: open {base}login?token={token}")
    if wildcard:
        click.echo(
            "listening on every interface: browsers reaching it by another name or address"
            " need --allowed-host NAME (the Host header is checked)"
        )
    _show_audit_log()
    # Open event streams would otherwise hold Ctrl+C until every browser leaves.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def _show_audit_log() -> None:
    """Print the dashboard's audit lines (one per action) unless logging is configured."""
    audit = logging.getLogger("dbos_async.dashboard")
    if audit.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
