"""The run view: one page (HTML, CSS and JavaScript, inlined, no network at run time) that shows
an execution live, served three ways:

- as an MCP App (`io.modelcontextprotocol/ui`): `topologies_run` and `executions_get` name the
  `ui://` resource in `_meta.ui.resourceUri`; the host renders it in a sandboxed frame and the
  page reads `qmcp://executions/{id}/view` (or calls `executions_get`) through the host;
- next to the HTTP transport at `/executions` and `/executions/{id}` (`qmcp_server.ui.web`);
- by `qmcp executions view ID`, on 127.0.0.1 with a one-time link (`qmcp_server.ui.web`).

What the page shows is `service.execution_view`, the same data `qmcp executions show` prints.
Nothing here is imported when the server starts but this module: the page is read on first use.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, Apps
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resources import FunctionResource
from mcp_types import ToolAnnotations

from qmcp import __version__
from qmcp_server.errors import tool_errors

VIEW_URI = "ui://qmcp/execution-view.html"
TOOL_META: dict[str, Any] = {"ui": {"resourceUri": VIEW_URI}}
VIEW_RESOURCE = "qmcp://executions/{execution_id}/view"

__all__ = [
    "APP_MIME_TYPE",
    "EXTENSION_ID",
    "TOOL_META",
    "VIEW_RESOURCE",
    "VIEW_URI",
    "apps_extension",
    "content_security_policy",
    "page",
    "view_tool",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@cache
def _asset(name: str) -> str:
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def _script_json(data: dict[str, Any]) -> str:
    """JSON that cannot end its <script> element (or open a comment) whatever its strings hold."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(boot: dict[str, Any]) -> str:
    """The view's HTML with its styles, script and `boot` settings inlined.

    `boot`: {"mode": "app"} inside an MCP client; {"mode": "http", "page": "execution",
    "execution_id", "api"} or {"mode": "http", "page": "list", "api"} in a browser.
    """
    return (
        _asset("view.html")
        .replace("/*STYLE*/", _asset("view.css"))
        .replace("/*SCRIPT*/", _asset("view.js"))
        .replace("/*BOOT*/", _script_json({"version": __version__, **boot}))
    )


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """The policy the browser pages are served with: only their own inline script and style
    (by hash), requests to their own origin, no frames, no forms but the sign-in one."""
    return (
        f"default-src 'none'; script-src {_sha256(_asset('view.js'))}; "
        f"style-src {_sha256(_asset('view.css'))}; connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _app_html() -> str:
    return page({"mode": "app"})


def apps_extension() -> Apps:
    """The MCP Apps extension of the server: the `ui://` run view, read on first use."""
    apps = Apps()
    apps.add_resource(
        FunctionResource(
            uri=VIEW_URI,
            name="execution_view",
            title="Run view",
            description="A live view of an execution: topology graph, invocation timeline, "
            "debate rounds, cross-check verdicts, ensemble answers and approvals.",
            mime_type=APP_MIME_TYPE,
            meta={"ui": {"prefersBorder": True}},
            fn=_app_html,
        )
    )
    return apps


def view_tool(mcp: MCPServer, annotations: ToolAnnotations) -> Callable[[F], F]:
    """Register the function as a tool whose result the run view shows (`_meta.ui`); errors map
    as for every tool (`qmcp_server.tools.common.tool`). Clients without Apps ignore the meta."""

    def register(fn: F) -> F:
        mcp.tool(annotations=annotations, meta=TOOL_META)(tool_errors(fn))
        return fn

    return register
