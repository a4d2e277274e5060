"""Resources: the executions, one execution's full record, a topology with its diagram, an agent.

`qmcp://executions` and `qmcp://executions/{id}` change on their own as runs go: a client
subscribes to them (`resources/subscribe`, or a `subscriptions/listen` stream on 2026-07-28) and
hears of each change (`qmcp_server.notify`); the templates' arguments complete
(`qmcp_server.completions`)."""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import MCPServer

from qmcp_server.errors import resource_errors
from qmcp_server.state import ServerState
from qmcp_server.ui import VIEW_RESOURCE

JSON = "application/json"


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @mcp.resource("qmcp://executions", name="executions", mime_type=JSON)
    @resource_errors
    async def executions_resource() -> str:
        """The 50 most recent executions."""
        from qmcp.agentframework import service

        rows = await service.list_executions(50, db_url=db_url)
        return _json([service.execution_to_dict(e) for e in rows])

    @mcp.resource("qmcp://executions/{execution_id}", name="execution", mime_type=JSON)
    @resource_errors
    async def execution_resource(execution_id: str) -> str:
        """An execution's full record with every invocation."""
        from qmcp.agentframework import service

        execution, invocations = await service.get_execution(execution_id, db_url)
        return _json(service.execution_to_dict(execution, invocations))

    @mcp.resource(VIEW_RESOURCE, name="execution_view", mime_type=JSON)
    @resource_errors
    async def execution_view_resource(execution_id: str) -> str:
        """An execution as the run view shows it: topology graph, invocation timeline, debate
        rounds, cross-check verdicts, ensemble answers, approvals (what the MCP App reads)."""
        from qmcp.agentframework import service

        return _json(await service.execution_view(execution_id, db_url))

    @mcp.resource("qmcp://topologies/{name}", name="topology", mime_type=JSON)
    @resource_errors
    async def topology_resource(name: str) -> str:
        """A topology's config, slots and a Mermaid diagram."""
        from qmcp.agentframework import service

        topology, agents = await service.get_topology(name, db_url)
        return _json(service.topology_to_dict(topology, agents, diagram=True))

    @mcp.resource("qmcp://agents/{name}", name="agent", mime_type=JSON)
    @resource_errors
    async def agent_resource(name: str) -> str:
        """An agent type with its full config."""
        from qmcp.agentframework import service

        return _json(service.agent_to_dict(await service.get_agent(name, db_url)))
