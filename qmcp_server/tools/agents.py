"""Agent types: agents_list, agents_create, agents_show."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.schemas import AgentInfo, AgentList, Capability, Role
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CREATE, READ_ONLY, tool


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @tool(mcp, READ_ONLY)
    async def agents_list(
        role: Annotated[Role | None, Field(description="only agents with this role")] = None,
    ) -> AgentList:
        """List the agent types: name, role, model and config."""
        from qmcp.agentframework import service

        agents = await service.list_agents(role, db_url)
        return AgentList(agents=[AgentInfo(**service.agent_to_dict(a)) for a in agents])

    @tool(mcp, CREATE)
    async def agents_create(
        name: Annotated[str, Field(description="unique; letters, digits, _ - .", max_length=100)],
        role: Role,
        description: Annotated[str, Field(max_length=10_000)] = "",
        model: Annotated[
            str | None,
            Field(
                description="'offline' (no key needed), a claude-… model id (server needs "
                "ANTHROPIC_API_KEY), 'sampling' (your own model, wait=true runs only), or a "
                "Models name such as CLAUDE_SONNET; default: the server's default model",
                max_length=200,
            ),
        ] = None,
        system_prompt: Annotated[str | None, Field(max_length=100_000)] = None,
        temperature: Annotated[float | None, Field(ge=0, le=1)] = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=128_000)] = None,
        capabilities: Annotated[
            list[Capability] | None, Field(description="mixins, see mixins_list", max_length=20)
        ] = None,
    ) -> AgentInfo:
        """Create an agent type. Fails if the name exists or the model or a mixin is unknown."""
        from qmcp.agentframework import service

        agent = await service.create_agent(
            name,
            role,
            description=description,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            capabilities=[c.model_dump() for c in capabilities or []],
            db_url=db_url,
        )
        return AgentInfo(**service.agent_to_dict(agent))

    @tool(mcp, READ_ONLY)
    async def agents_show(name: Annotated[str, Field(max_length=100)]) -> AgentInfo:
        """Show one agent type with its full config."""
        from qmcp.agentframework import service

        return AgentInfo(**service.agent_to_dict(await service.get_agent(name, db_url)))
