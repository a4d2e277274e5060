"""The run view in a browser: `/executions` (recent runs) and `/executions/{id}` (one run, live),
with the JSON they poll at `/api/executions` and `/api/executions/{id}`.

Who may look is decided here, for every route, with the Host header checked as `/mcp` checks it:
- no token (the HTTP transport on loopback without QMCP_HTTP_TOKEN): anyone who can reach the
  port, as for `/mcp`;
- the server's token (QMCP_HTTP_TOKEN): `Authorization: Bearer <token>` (scripts), or a browser
  session: a browser cannot send a bearer header when it opens a page, so an unsigned request
  gets a sign-in form; posting the token there (same origin only) sets an HttpOnly, SameSite=Strict
  cookie for 12 hours that opens the views, never `/mcp`. The token never appears in a URL;
- a one-time link (`qmcp executions view`): `?token=` is exchanged, once, for a session cookie
  and the page reloads without it; the link is useless afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from qmcp_server.ui import content_security_policy, page

COOKIE = "qmcp_view"
SESSION_SECONDS = 12 * 3600
VIEW_PREFIXES = ("/executions", "/api/executions")
_NEXT = re.compile(r"^/executions(/[A-Za-z0-9-]{1,64})?$")
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ViewAuth:
    """Who may read the views: anyone (`token` None), the bearer of `token` and the browsers it
    signed in, or (`one_time`) the first browser to open the link carrying `token`."""

    def __init__(self, token: str | None, *, one_time: bool = False) -> None:
        self.token = token.encode() if token else None
        self.one_time = one_time
        self.sessions: set[str] = set()

    @property
    def open(self) -> bool:
        return self.token is None

    def allows(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        bearer = scheme.lower() == "bearer" and not self.one_time
        if bearer and hmac.compare_digest(credentials.strip().encode(), self.token):
            return True
        return self.valid_session(request.cookies.get(COOKIE, ""))

    def valid_session(self, value: str) -> bool:
        if self.one_time:
            return any(hmac.compare_digest(value, s) for s in self.sessions)
        expiry, _, mac = value.partition(".")
        if not expiry.isdigit() or int(expiry) < time.time():
            return False
        return hmac.compare_digest(mac, self._mac(expiry))

    def _mac(self, expiry: str) -> str:
        assert self.token is not None
        return hmac.new(self.token, f"qmcp-view:{expiry}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        if self.one_time:
            session = secrets.token_urlsafe(32)
            self.sessions.add(session)
            return session
        expiry = str(int(time.time()) + SESSION_SECONDS)
        return f"{expiry}.{self._mac(expiry)}"

    def redeem(self, supplied: str) -> bool:
        """Whether `supplied` is the token; a one-time token is spent by its first use."""
        if self.token is None or not supplied:
            return False
        if not hmac.compare_digest(supplied.encode(), self.token):
            return False
        if self.one_time:
            self.token = secrets.token_bytes(32)  # spent: nothing anyone holds matches it now
        return True


def views_app(
    *,
    auth: ViewAuth,
    host_allowed: Callable[[str], bool],
    db_url: str | None = None,
) -> Starlette:
    """The views as an ASGI app (mount it with `with_views`)."""

    def guard(request: Request) -> Response | None:
        if not host_allowed(request.headers.get("host", "")):
            return JSONResponse(
                {"error": "forbidden", "detail": "this Host is not one this server answers"},
                status_code=421,
                headers=HEADERS,
            )
        if auth.allows(request):
            return None
        wants_html = "text/html" in request.headers.get("accept", "")
        if request.url.path.startswith("/api/") or not wants_html:
            return JSONResponse(
                {
                    "error": "unauthorized",
                    "detail": "send Authorization: Bearer <QMCP_HTTP_TOKEN>, or sign in at "
                    "/executions in a browser",
                },
                status_code=401,
                headers=HEADERS | {"WWW-Authenticate": 'Bearer realm="qmcp-server"'},
            )
        return _sign_in(request, auth)

    def html(boot: dict[str, Any]) -> HTMLResponse:
        return HTMLResponse(
            page(boot), headers=HEADERS | {"Content-Security-Policy": content_security_policy()}
        )

    def exchanged(request: Request) -> Response | None:
        """A one-time link: trade its token for a session, then drop it from the address."""
        supplied = request.query_params.get("token")
        if supplied is None or not auth.one_time:
            return None
        if not auth.redeem(supplied):
            if auth.allows(request):  # a reload of the link in the browser it signed in
                return RedirectResponse(request.url.path, status_code=303, headers=HEADERS)
            return HTMLResponse(
                _message("This link was used already. Run `qmcp executions view ID` again."),
                status_code=401,
                headers=HEADERS | {"Content-Security-Policy": content_security_policy()},
            )
        response = RedirectResponse(request.url.path, status_code=303, headers=HEADERS)
        _set_cookie(response, request, auth.new_session(), max_age=None)
        return response

    async def list_page(request: Request) -> Response:
        return (
            exchanged(request)
            or guard(request)
            or html({"mode": "http", "page": "list", "api": "/api/executions"})
        )

    async def execution_page(request: Request) -> Response:
        ident = request.path_params["execution_id"]
        return (
            exchanged(request)
            or guard(request)
            or html(
                {
                    "mode": "http",
                    "page": "execution",
                    "execution_id": ident,
                    "api": f"/api/executions/{quote(ident, safe='')}",
                }
            )
        )

    async def sign_in(request: Request) -> Response:
        if not host_allowed(request.headers.get("host", "")):
            return JSONResponse({"error": "forbidden"}, status_code=421, headers=HEADERS)
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:  # a form posted from another site
            return JSONResponse({"error": "forbidden", "detail": "cross-origin sign-in"}, 403)
        form = await request.form()
        target = str(form.get("next") or "/executions")
        if not _NEXT.match(target):
            target = "/executions"
        if auth.one_time or not auth.redeem(str(form.get("token") or "")):
            return _sign_in(request, auth, target, failed=True)
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        _set_cookie(response, request, auth.new_session(), max_age=SESSION_SECONDS)
        return response

    async def list_api(request: Request) -> Response:
        from qmcp.agentframework import service

        if (refused := guard(request)) is not None:
            return refused
        rows = await service.list_executions(50, db_url=db_url)
        return JSONResponse([service.execution_to_dict(e) for e in rows], headers=HEADERS)

    async def view_api(request: Request) -> Response:
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import NotFoundError, QmcpError

        if (refused := guard(request)) is not None:
            return refused
        try:
            view = await service.execution_view(request.path_params["execution_id"], db_url)
        except NotFoundError as exc:
            return JSONResponse({"error": "not_found", "detail": str(exc)}, 404, headers=HEADERS)
        except QmcpError as exc:
            return JSONResponse({"error": "invalid", "detail": str(exc)}, 400, headers=HEADERS)
        return JSONResponse(view, headers=HEADERS)

    return Starlette(
        routes=[
            Route("/executions", list_page, methods=["GET"]),
            Route("/executions/sign-in", sign_in, methods=["POST"]),
            Route("/executions/{execution_id}", execution_page, methods=["GET"]),
            Route("/api/executions", list_api, methods=["GET"]),
            Route("/api/executions/{execution_id}", view_api, methods=["GET"]),
        ]
    )


def _set_cookie(response: Response, request: Request, value: str, max_age: int | None) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _message(text: str) -> str:
    return _form_page(f"<p>{_escape(text)}</p>")


def _sign_in(
    request: Request, auth: ViewAuth, target: str | None = None, failed: bool = False
) -> Response:
    if auth.one_time:
        body = _message("Open the link `qmcp executions view ID` printed (it works once).")
        return HTMLResponse(body, status_code=401, headers=HEADERS | _csp())
    target = target or request.url.path
    if not _NEXT.match(target):
        target = "/executions"
    note = "<p><b>That is not the token.</b></p>" if failed else ""
    form = (
        "<h1>qmcp run view</h1><p>This server wants its token (QMCP_HTTP_TOKEN) to show runs. "
        "It is kept in an HttpOnly cookie for 12 hours, for these pages only.</p>"
        f'{note}<form method="post" action="/executions/sign-in">'
        f'<input type="hidden" name="next" value="{_escape(target)}">'
        '<label>Token <input type="password" name="token" id="token" required '
        'autocomplete="current-password"></label> '
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )
    # A form posted under "no-referrer" carries `Origin: null`; the sign-in checks the origin.
    headers = HEADERS | _csp() | {"Referrer-Policy": "same-origin"}
    return HTMLResponse(_form_page(form), status_code=401, headers=headers)


def _csp() -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy()}


def _form_page(body: str) -> str:
    from qmcp_server.ui import _asset

    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>qmcp run view</title><style>{_asset('view.css')}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def with_views(app: ASGIApp, views: ASGIApp) -> ASGIApp:
    """`app` with the view routes in front of it (its own auth stays on everything else)."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if any(path == p or path.startswith(p + "/") for p in VIEW_PREFIXES):
            await views(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def loopback_host(host: str) -> bool:
    name, _, port = host.rpartition(":")
    return name in ("127.0.0.1", "localhost", "[::1]") and port.isdigit()


def serve_view(
    execution_id: str,
    *,
    port: int = 0,
    open_browser: bool = True,
    db_url: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the view of one execution on 127.0.0.1 until interrupted, behind a one-time link
    (other users of this machine can reach the port, not the runs); open it in the browser when
    there is one, and say the link either way."""
    import uvicorn

    token = secrets.token_urlsafe(32)
    app = views_app(auth=ViewAuth(token, one_time=True), host_allowed=loopback_host, db_url=db_url)
    listening = socket.create_server(("127.0.0.1", port))
    bound = listening.getsockname()[1]
    url = f"http://127.0.0.1:{bound}/executions/{quote(execution_id, safe='')}?token={token}"

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            announce(f"run view: {url}  (the link works once; Ctrl-C stops)")
            if open_browser:
                await asyncio.to_thread(_open, url, announce)

    config = uvicorn.Config(app, host="127.0.0.1", port=bound, log_level="warning")
    Announcing(config).run(sockets=[listening])


def _open(url: str, announce: Callable[[str], None]) -> None:
    import webbrowser

    try:
        opened = webbrowser.get().open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        announce("no browser here: open the link above in one")
