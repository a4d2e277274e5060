"""Agent types: agents_list, agents_create, agents_show, agents_update, agents_delete."""

from __future__ import annotations

import os
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.schemas import (
    AgentInfo,
    AgentList,
    Capability,
    Deleted,
    Role,
    ToolServerArg,
)
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CREATE, DELETE, READ_ONLY, UPDATE, tool


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
        tools: Annotated[
            list[ToolServerArg] | None,
            Field(
                description="MCP servers whose tools the agent may call: stdio {name, command, "
                "args, env, cwd} or streamable HTTP {name, url, headers}, each with optional "
                "allow / deny / approve lists of tool names; env and header values may say "
                '"${VAR}" to read the server\'s environment',
                max_length=20,
            ),
        ] = None,
        max_tool_calls: Annotated[
            int | None, Field(ge=0, le=500, description="tool calls per invocation (default 10)")
        ] = None,
        fallback_models: Annotated[
            list[str] | None,
            Field(description="models that answer, in order, when the primary fails for good"),
        ] = None,
        base_url: Annotated[
            str | None,
            Field(description="the model's OpenAI-compatible endpoint (openai:<model>)"),
        ] = None,
        api_key_env: Annotated[
            str | None,
            Field(description="the NAME of the server's variable holding that endpoint's key"),
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
            tools=_servers(state, tools),
            max_tool_calls=max_tool_calls,
            fallback_models=fallback_models,
            base_url=base_url,
            api_key_env=api_key_env,
            db_url=db_url,
        )
        return AgentInfo(**service.agent_to_dict(agent))

    @tool(mcp, READ_ONLY)
    async def agents_show(name: Annotated[str, Field(max_length=100)]) -> AgentInfo:
        """Show one agent type with its full config; for an agent with tool servers, each
        server's tools as discovered now (the servers are started to list them)."""
        from qmcp.agentframework import service

        agent = await service.get_agent(name, db_url)
        discovered = await service.discover_tools(agent)
        return AgentInfo(**service.agent_to_dict(agent), tools=discovered or None)

    @tool(mcp, UPDATE)
    async def agents_update(
        name: Annotated[str, Field(description="the agent to change", max_length=100)],
        description: Annotated[str | None, Field(max_length=10_000)] = None,
        role: Role | None = None,
        model: Annotated[
            str | None,
            Field(description="as in agents_create; omitted: unchanged", max_length=200),
        ] = None,
        system_prompt: Annotated[str | None, Field(max_length=100_000)] = None,
        temperature: Annotated[float | None, Field(ge=0, le=1)] = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=128_000)] = None,
        capabilities: Annotated[
            list[Capability] | None,
            Field(description="replaces the agent's mixins, see mixins_list", max_length=20),
        ] = None,
        tools: Annotated[
            list[ToolServerArg] | None,
            Field(
                description="MCP servers whose tools the agent may call: stdio {name, command, "
                "args, env, cwd} or streamable HTTP {name, url, headers}, each with optional "
                "allow / deny / approve lists of tool names; env and header values may say "
                '"${VAR}" to read the server\'s environment'
                + "; replaces the agent's servers ([] removes them)",
                max_length=20,
            ),
        ] = None,
        max_tool_calls: Annotated[
            int | None, Field(ge=0, le=500, description="tool calls per invocation (default 10)")
        ] = None,
        fallback_models: Annotated[
            list[str] | None,
            Field(description="models that answer, in order, when the primary fails for good"),
        ] = None,
        base_url: Annotated[
            str | None,
            Field(description="the model's OpenAI-compatible endpoint (openai:<model>)"),
        ] = None,
        api_key_env: Annotated[
            str | None,
            Field(description="the NAME of the server's variable holding that endpoint's key"),
        ] = None,
    ) -> AgentInfo:
        """Change an agent type's fields (omitted ones stay) and bump its version. Executions
        keep the version they ran with; runs from now on use the new one."""
        from qmcp.agentframework import service

        agent = await service.update_agent(
            name,
            description=description,
            role=role,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            capabilities=None if capabilities is None else [c.model_dump() for c in capabilities],
            tools=_servers(state, tools),
            max_tool_calls=max_tool_calls,
            fallback_models=fallback_models,
            base_url=base_url,
            api_key_env=api_key_env,
            db_url=db_url,
        )
        return AgentInfo(**service.agent_to_dict(agent))

    @tool(mcp, DELETE)
    async def agents_delete(name: Annotated[str, Field(max_length=100)]) -> Deleted:
        """Delete an agent type. Refused while a topology's slot holds it (the message names
        the topologies); executions keep their records."""
        from qmcp.agentframework import service

        await service.delete_agent(name, db_url)
        return Deleted(name=name, message=f"deleted agent {name!r}")


def _servers(state: ServerState, tools: list[ToolServerArg] | None) -> list[dict[str, Any]] | None:
    """The servers as the service takes them (the fields given, checked there in full). Over
    HTTP, a client may not make this machine start a program (a stdio server's command) unless
    the operator allows it."""
    if tools is None:
        return None
    commands = [t.name for t in tools if t.command is not None]
    if commands and state.remote and os.environ.get("QMCP_ALLOW_REMOTE_TOOL_COMMANDS") != "1":
        from qmcp.agentframework.errors import ValidationError

        raise ValidationError(
            f"tool server {commands[0]!r} has a command, and this server is reached over HTTP: "
            "an agent created here may not start programs on the server's machine. Give a url "
            "(streamable HTTP) server, create the agent with the qmcp CLI on that machine, or "
            "start the server with QMCP_ALLOW_REMOTE_TOOL_COMMANDS=1"
        )
    return [t.model_dump(mode="json", exclude_unset=True) for t in tools]
