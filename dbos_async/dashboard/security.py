"""Who may look and who may act: authentication, the rules for actions, and response headers.

* ``auth`` is a shared token (a ``str``) or a callable ``(request) -> principal
  | None`` (sync or async), which lets an app plug in its own login. A token
  is accepted as ``Authorization: Bearer <token>``, or once through
  ``login?token=<token>``, which sets a signed session cookie (HttpOnly,
  SameSite=Strict) and redirects to the dashboard without the token in the URL.
* An action is a POST that must be authenticated, come from the dashboard's
  own origin (``Sec-Fetch-Site: same-origin``, else a matching ``Origin``) and
  carry htmx's ``HX-Request`` header, which a cross-site form cannot send;
  ``read_only`` refuses all of them. Each is checked before anything runs.
* Every response carries a strict CSP (no inline script or style), nosniff,
  no-store, no framing and no referrer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Auth = str | Callable[[Request], "str | Awaitable[str | None] | None"]

COOKIE = "dbos_dashboard"
SESSION_SECONDS = 12 * 3600
ANONYMOUS = "anonymous"  # the principal under insecure_no_auth

HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'self'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class Guard:
    """Authentication and the action rules of one dashboard."""

    def __init__(self, auth: Auth | None, *, read_only: bool) -> None:
        if auth is not None and not (isinstance(auth, str) or callable(auth)):
            raise TypeError("auth must be a token (str) or a callable(request) -> principal | None")
        if isinstance(auth, str) and len(auth) < 16:
            raise ValueError(
                "an auth token must be at least 16 characters (use secrets.token_urlsafe())"
            )
        self._auth = auth
        self.read_only = read_only
        self.uses_token = isinstance(auth, str)
        self._key = (
            hashlib.sha256(b"dbos_async dashboard session\0" + auth.encode()).digest()
            if isinstance(auth, str)
            else b""
        )
        # Named after the key: browsers share cookies across a host's ports, so
        # two dashboards (8090, 8091) must not overwrite each other's session.
        self.cookie = f"{COOKIE}_{hashlib.sha256(self._key).hexdigest()[:12]}"

    async def principal(self, request: Request) -> str | None:
        """Who makes the request; None: nobody we know."""
        auth = self._auth
        if auth is None:
            return ANONYMOUS
        if isinstance(auth, str):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), auth.encode()
            ):
                return "token"
            return self._session(request.cookies.get(self.cookie))
        found = auth(request)
        if inspect.isawaitable(found):
            found = await found
        return str(found) if found else None

    def login(self, request: Request, token: str, target: str) -> Response:
        """Trade a valid token for a session cookie; 401 otherwise."""
        if not isinstance(self._auth, str) or not hmac.compare_digest(
            token.encode(), self._auth.encode()
        ):
            return PlainTextResponse("Invalid or missing token.", status_code=401)
        response = Response(status_code=303, headers={"location": target})
        response.set_cookie(
            self.cookie,
            self._sign("token", int(time.time()) + SESSION_SECONDS),
            max_age=SESSION_SECONDS,
            path=request.scope.get("root_path") or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def refuse_action(self, request: Request) -> Response | None:
        """403 unless this POST may act (read-only, cross-site, or not from htmx)."""
        if self.read_only:
            return PlainTextResponse("The dashboard is read-only.", status_code=403)
        if request.headers.get("hx-request") != "true":
            return PlainTextResponse("Actions need the HX-Request header.", status_code=403)
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            if site != "same-origin":
                return PlainTextResponse("Cross-site request refused.", status_code=403)
        else:
            origin = request.headers.get("origin")
            expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != expected:
                return PlainTextResponse("Cross-origin request refused.", status_code=403)
        return None

    def _sign(self, principal: str, expires: int) -> str:
        body = base64.urlsafe_b64encode(f"{principal}|{expires}".encode()).decode()
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def _session(self, cookie: str | None) -> str | None:
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.rpartition(".")
        good = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.encode(), good.encode()):
            return None
        try:
            principal, _, expires = base64.urlsafe_b64decode(body).decode().partition("|")
            if int(expires) < time.time():
                return None
        except ValueError:
            return None
        return principal


class SecurityHeaders:
    """ASGI middleware: the headers of ``HEADERS`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the connection on, adding the headers to its response."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        # Static files may be kept, and revalidated (ETag): pages never.
        static = "/static/" in scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in HEADERS.items():
                    if static and name == "cache-control":
                        value = "no-cache"
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, with_headers)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
