"""The MCP tools, one module per area; each module registers its tools with one function."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from qmcp_server.state import ServerState
from qmcp_server.tools import agents, approvals, catalog, executions, topologies

AREAS = (agents, catalog, topologies, executions, approvals)


def register(mcp: MCPServer, state: ServerState) -> None:
    for area in AREAS:
        area.register(mcp, state)
