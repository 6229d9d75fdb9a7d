"""The web dashboard (extra ``dashboard``): ``from dbos_async.dashboard import Dashboard``.

A pure ASGI app (Starlette) to mount in any ASGI server, or to run with
``dbos-async dashboard``. Server-rendered pages, a vendored htmx, SVG charts
drawn on the server; closed by default (see ``security.py``).
"""

try:
    import jinja2  # noqa: F401 - checked here so the error names the extra
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        f"the dashboard needs the `dashboard` extra: pip install 'dbos-async[dashboard]' ({exc})"
    ) from exc

from dbos_async.dashboard.app import Dashboard

__all__ = ["Dashboard"]
