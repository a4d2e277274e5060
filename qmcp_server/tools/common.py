"""What the tool modules share: annotations, and registration with the errors mapped once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from qmcp_server.errors import tool_errors

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
RUN = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)
# Update: the same values again change nothing more; delete: gone (executions keep their records).
UPDATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)
CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def tool(mcp: MCPServer, annotations: ToolAnnotations) -> Callable[[F], F]:
    """Register the function as a tool of `mcp`; the library's errors become tool errors."""

    def register(fn: F) -> F:
        mcp.tool(annotations=annotations)(tool_errors(fn))
        return fn

    return register
