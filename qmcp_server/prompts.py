"""Prompts: run_workflow, a plain request turned into the tool calls that set up and run agents."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.errors import invalid_params, prompt_errors
from qmcp_server.state import ServerState

STYLES = ("pipeline", "ensemble")


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @mcp.prompt(name="run_workflow", title="Set up and run a multi-agent workflow")
    @prompt_errors
    async def run_workflow(
        request: Annotated[str, Field(description="what you want the agents to do")],
        style: Annotated[
            str, Field(description="pipeline (steps in order) or ensemble (parallel views)")
        ] = "pipeline",
    ) -> str:
        """Turn a plain request into tool calls that create agents and a topology, then run it."""
        if style not in STYLES:
            raise invalid_params(f"style must be pipeline or ensemble, not {style!r}")
        if not request.strip():
            raise invalid_params("request is empty; say what you want the agents to do")
        from qmcp.agentframework import service

        agents = await service.list_agents(db_url=db_url)
        topologies = await service.list_topologies(db_url)
        known_agents = ", ".join(f"{a.name} ({a.role})" for a in agents) or "none yet"
        known_topologies = ", ".join(t.name for t, _ in topologies) or "none yet"
        kinds = "".join(
            f"- {k['topology_type']}: {k['summary']}\n" for k in service.topology_kinds()
        )
        return (
            f"Use the qmcp tools to handle this request with a {style} of agents:\n\n{request}\n\n"
            f"Existing agents: {known_agents}. Existing topologies: {known_topologies}.\n"
            f"Topology kinds:\n{kinds}"
            "1. Reuse a fitting topology, or create agents with agents_create (pick roles; model "
            "'offline' needs no key) and compose them with topologies_create (pipeline: one slot "
            "per stage in order; ensemble: slots ensemble_0, ensemble_1, … plus aggregator with "
            "config {'aggregation_method': 'synthesis'}).\n"
            '2. Call topologies_run with input {"prompt": <the request>}; if it may take longer '
            "than a minute, pass wait=false and poll executions_get.\n"
            "3. Report the output's content, and mention the execution id so the record can be "
            "read at qmcp://executions/{id}."
        )
