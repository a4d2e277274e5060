"""Streamable HTTP around a built server: loopback by default, DNS-rebinding protection on, a
bearer token beyond it. This module never imports `qmcp_server.server`; it is handed a server.

`QMCP_HTTP_TOKEN` is required whenever the server binds to anything but loopback, and there it must
be at least 32 characters; when it is set every request but `/health` must carry
`Authorization: Bearer <token>` (the scheme in any case, as RFC 7235 has it). Extra Host header
values (a reverse proxy's name) go in `QMCP_HTTP_ALLOWED_HOSTS`, comma-separated.

The run view is served next to `/mcp` at `/executions` and `/executions/{id}`
(`qmcp_server.ui.web`), behind the same Host checks and the same token; a browser signs in once
with the token (a form, then an HttpOnly cookie for those pages only), since it cannot send a
bearer header itself.
"""

from __future__ import annotations

import errno
import hmac
import os
import socket
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from qmcp import __version__
from qmcp.agentframework.errors import ConfigurationError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PUBLIC_PATHS = ("/health",)
MIN_TOKEN_LENGTH = 32
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def bearer_credentials(header: bytes) -> bytes | None:
    """The credentials of an `Authorization: Bearer <token>` header, or None for another scheme.

    The scheme is case-insensitive (RFC 7235 section 2.1); spaces around the token are dropped.
    """
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip()


class BearerTokenMiddleware:
    """Refuse HTTP requests without the configured bearer token (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in PUBLIC_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            supplied = bearer_credentials(header)
            if supplied is None or not hmac.compare_digest(supplied, self.expected):
                response = JSONResponse(
                    {
                        "error": "unauthorized",
                        "detail": "send Authorization: Bearer <QMCP_HTTP_TOKEN>",
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="qmcp-server"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def security_settings(host: str, port: int) -> TransportSecuritySettings:
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if host not in LOOPBACK and host not in ("0.0.0.0", "::"):
        hosts.append(f"{host}:{port}")
        origins += [f"http://{host}:{port}", f"https://{host}:{port}"]
    for extra in filter(
        None, (h.strip() for h in os.environ.get("QMCP_HTTP_ALLOWED_HOSTS", "").split(","))
    ):
        hosts.append(extra)
        origins += [f"http://{extra}", f"https://{extra}"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_http_app(
    server: MCPServer,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    token: str | None = None,
    json_response: bool = False,
    db_url: str | None = None,
) -> ASGIApp:
    """The ASGI app over `server`: MCP at /mcp, a health route at /health, the run view at
    /executions, bearer auth when a token is set. Refuses to serve beyond loopback without a
    token of 32 characters or more. `db_url` is the database the view reads (None: the
    default, as `build_server`'s)."""
    if host not in LOOPBACK and not token:
        raise ConfigurationError(
            f"refusing to serve HTTP on {host} without a token: set QMCP_HTTP_TOKEN to the "
            f"output of `{MAKE_TOKEN}` and send it as 'Authorization: Bearer <token>', or bind "
            "to 127.0.0.1"
        )
    if host not in LOOPBACK and token and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"refusing to serve HTTP on {host} with a {len(token)}-character QMCP_HTTP_TOKEN: "
            f"beyond loopback it must be at least {MIN_TOKEN_LENGTH} characters; make one with "
            f"`{MAKE_TOKEN}`"
        )

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "server": "qmcp-server", "version": __version__})

    from qmcp_server.ui.web import ViewAuth, views_app, with_views

    settings = security_settings(host, port)
    app = server.streamable_http_app(
        transport_security=settings, host=host, json_response=json_response
    )
    views = views_app(
        auth=ViewAuth(token), host_allowed=lambda h: host_allowed(settings, h), db_url=db_url
    )
    return with_views(BearerTokenMiddleware(app, token) if token else app, views)


def host_allowed(settings: TransportSecuritySettings, host: str) -> bool:
    """Whether a Host header is one `settings` admit, as the MCP transport decides it (an exact
    value, or `name:*` for any port)."""
    if not settings.enable_dns_rebinding_protection:
        return True
    for allowed in settings.allowed_hosts:
        if host == allowed or (allowed.endswith(":*") and host.startswith(allowed[:-1])):
            return True
    return False


def listening_url(host: str, port: int) -> str:
    """The MCP endpoint's URL for a server bound to `host`:`port` (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}/mcp" if ":" in host else f"http://{host}:{port}/mcp"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port`, or exit 2 with one line saying why not and the fix.

    Its protocol is IPPROTO_TCP, not 0 as `socket.create_server` leaves it: asyncio turns
    Nagle's algorithm off (TCP_NODELAY) only on connections of a socket that says TCP, and with
    it on, a response whose body goes out after its headers waited for the client's delayed ACK
    (~40 ms a request).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":  # as socket.create_server does: a restart reuses the port at once
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen()
        return listening
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            fix = "another process has it; pick another with --port (0 picks a free one)"
        elif exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges; pick another with --port"
        else:
            fix = "give --host an address of this machine (127.0.0.1 for this machine only)"
        cause = os.strerror(exc.errno) if exc.errno else str(exc)
        sys.stderr.write(f"error: cannot listen on {host}:{port}: {cause}; {fix}\n")
        raise SystemExit(2) from None


def serve_http(server: MCPServer, host: str, port: int) -> None:
    """Serve `server` over streamable HTTP until interrupted; the token is QMCP_HTTP_TOKEN.

    Once the server is up, one line on stderr says where (the bound port, so `--port 0` works).
    """
    import uvicorn

    try:
        # A token read from a file or a .env line may carry a newline; a bearer token never does.
        token = os.environ.get("QMCP_HTTP_TOKEN", "").strip() or None
        app = build_http_app(server, host, port, token=token)
    except ConfigurationError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    listening = bind(host, port)
    url = listening_url(host, listening.getsockname()[1])

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                sys.stderr.write(f"qmcp-server listening on {url}\n")
                sys.stderr.flush()

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    Announcing(config).run(sockets=[listening])
