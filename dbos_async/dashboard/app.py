"""``Dashboard``: the ASGI app (Starlette), its routes, and what every handler shares."""

from __future__ import annotations

import contextlib
import functools
import logging
import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from dbos_async.dashboard.security import LOOPBACK_HOSTS, Auth, Guard, SecurityHeaders
from dbos_async.dashboard.source import Source

if TYPE_CHECKING:
    from dbos_async.dbos import DBOS

logger = logging.getLogger("dbos_async.dashboard")

HERE = Path(__file__).parent

Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """The web dashboard, a pure ASGI app: ``app.mount("/dbos", Dashboard(dbos, auth=token))``.

    Args:
        dbos_or_database_url: A launched ``DBOS`` (the dashboard uses its
            pool and LISTEN connection), or the system database's URL (it opens
            a small client of its own on first use).
        auth: A token (``str``, at least 16 characters: ``Authorization: Bearer``
            or the ``login?token=`` link), or a callable ``(request) -> principal
            | None``, sync or async, for the app's own login.
        read_only: Refuse every action (cancel, resume, restart, fork).
        allowed_hosts: Host headers it answers (DNS-rebinding defence);
            default: loopback names only. ``["*"]`` answers any.
        insecure_no_auth: Serve without ``auth``; anyone who reaches it may act.
        schema: The system schema (URL mode).

    Raises:
        ValueError: no ``auth`` and no ``insecure_no_auth=True``.
    """

    def __init__(
        self,
        dbos_or_database_url: DBOS | str,
        *,
        auth: Auth | None = None,
        read_only: bool = False,
        allowed_hosts: Sequence[str] | None = None,
        insecure_no_auth: bool = False,
        schema: str = "dbos_async",
    ) -> None:
        if auth is None and not insecure_no_auth:
            raise ValueError(
                "Dashboard refuses to serve without auth: pass auth=<token> (or a callable),"
                " or insecure_no_auth=True to let anyone who reaches it see and act"
            )
        self.source = Source(dbos_or_database_url, schema)
        self.guard = Guard(auth, read_only=read_only)
        self.templates = _templates()
        hosts = list(allowed_hosts) if allowed_hosts is not None else list(LOOPBACK_HOSTS)
        from dbos_async.dashboard import actions, live, views

        routes: list[Route | Mount] = [
            Route("/", views.workflows, name="workflows"),
            Route("/overview", views.overview, name="overview"),
            Route("/queues", views.queues, name="queues"),
            Route("/schedules", views.schedules, name="schedules"),
            Route("/executors", views.executors, name="executors"),
            Route("/live/workflows/{workflow_id:path}", views.workflow_live, name="workflow_live"),
            Route(
                "/workflows/{workflow_id:path}/{action:str}",
                actions.act,
                methods=["POST"],
                name="action",
            ),
            Route("/workflows/{workflow_id:path}", views.workflow, name="workflow"),
            Route("/events", live.events, name="events"),
            Route("/login", views.login, name="login"),
            # The directory ships with the package: not stat'ed on the event loop.
            Mount(
                "/static", StaticFiles(directory=HERE / "static", check_dir=False), name="static"
            ),
        ]
        self._app = Starlette(
            routes=routes,
            middleware=[
                Middleware(SecurityHeaders),
                Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            ],
            lifespan=self._lifespan,
        )
        self._app.state.dashboard = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] in ("http", "websocket"):
            # Mounted in a host app, the scope carries the host's router: url_for
            # must look our route names up in ours, under the mount's prefix.
            scope = {
                **scope,
                "router": self._app.router,
                "app_root_path": scope.get("root_path", ""),
            }
        await self._app(scope, receive, send)

    async def aclose(self) -> None:
        """Close the database client the dashboard opened (URL mode)."""
        await self.source.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        # Served on its own (not mounted): open now, close at the end.
        await self.source.open()
        try:
            yield
        finally:
            await self.source.close()

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        """A page (or a fragment) from ``templates/``, autoescaped."""
        return self.templates.TemplateResponse(
            request,
            template,
            {"read_only": self.guard.read_only, "now_ms": self.source.clock.now_ms(), **context},
            status_code=status_code,
        )


def dashboard_of(request: Request) -> Dashboard:
    """The dashboard serving this request."""
    found: Dashboard = request.app.state.dashboard
    return found


def page(handler: Callable[[Request, Dashboard, str], Awaitable[Response]]) -> Handler:
    """A handler that needs an authenticated principal and an open source."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        dash = dashboard_of(request)
        principal = await dash.guard.principal(request)
        if principal is None:
            return dash.render(
                request, "unauthorized.html", status_code=401, uses_token=dash.guard.uses_token
            )
        await dash.source.open()
        return await handler(request, dash, principal)

    return run


def _read_templates() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in (HERE / "templates").glob("*.html")}


# Read once, at import: a render never touches the disk on the event loop.
_TEMPLATES = _read_templates()
mimetypes.init()  # what StaticFiles' first response would otherwise read on the loop


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.filters["when"] = format_when
    env.filters["age"] = _age
    env.filters["duration"] = _duration
    env.filters["urlid"] = lambda value: quote(str(value), safe="")
    return Jinja2Templates(env=env)


def format_when(ms: int | float | None) -> str:
    """An epoch-ms time as the pages show it (UTC)."""
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: int | float | None) -> str:
    if ms is None:
        return "—"
    seconds = ms / 1000
    if seconds < 1:
        return f"{ms:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _age(ms: int | None, now_ms: int) -> str:
    return "—" if ms is None else _duration(max(0, now_ms - ms)) + " ago"
