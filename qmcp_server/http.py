"""Streamable HTTP around a built server: loopback by default, DNS-rebinding protection on, a
bearer token beyond it. This module never imports `qmcp_server.server`; it is handed a server.

`QMCP_HTTP_TOKEN` is required whenever the server binds to anything but loopback; when it is set
every request but `/health` must carry `Authorization: Bearer <token>`. Extra Host header values
(a reverse proxy's name) go in `QMCP_HTTP_ALLOWED_HOSTS`, comma-separated.
"""

from __future__ import annotations

import hmac
import os
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


class BearerTokenMiddleware:
    """Refuse HTTP requests without the configured bearer token (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in PUBLIC_PATHS:
            supplied = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(supplied, self.expected):
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
) -> ASGIApp:
    """The ASGI app over `server`: MCP at /mcp, a health route at /health, bearer auth when a
    token is set. Refuses to serve beyond loopback without a token."""
    if host not in LOOPBACK and not token:
        raise ConfigurationError(
            f"refusing to serve HTTP on {host} without a token: set QMCP_HTTP_TOKEN (any long "
            "random string) and send it as 'Authorization: Bearer <token>', or bind to 127.0.0.1"
        )

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "server": "qmcp-server", "version": __version__})

    app = server.streamable_http_app(
        transport_security=security_settings(host, port), host=host, json_response=json_response
    )
    return BearerTokenMiddleware(app, token) if token else app


def serve_http(server: MCPServer, host: str, port: int) -> None:
    """Serve `server` over streamable HTTP until interrupted; the token is QMCP_HTTP_TOKEN."""
    import uvicorn

    try:
        app = build_http_app(server, host, port, token=os.environ.get("QMCP_HTTP_TOKEN") or None)
    except ConfigurationError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    uvicorn.run(app, host=host, port=port, log_level="warning")
