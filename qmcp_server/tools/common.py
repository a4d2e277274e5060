"""What the tool modules share: annotations, and registration with the errors mapped once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from qmcp_server.annotations import CANCEL, CREATE, DELETE, READ_ONLY, RUN, UPDATE
from qmcp_server.errors import tool_errors

__all__ = ["CANCEL", "CREATE", "DELETE", "READ_ONLY", "RUN", "UPDATE", "tool"]


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def tool(mcp: MCPServer, annotations: ToolAnnotations) -> Callable[[F], F]:
    """Register the function as a tool of `mcp`; the library's errors become tool errors."""

    def register(fn: F) -> F:
        mcp.tool(annotations=annotations)(tool_errors(fn))
        return fn

    return register
