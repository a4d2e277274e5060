"""What this installation offers: mixins_list, runners_list, and flows_generate (a topology as a
Metaflow flow, for the runners that scale out)."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.schemas import FlowInfo, MixinInfo, MixinList, RunnerInfo, RunnerList
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CREATE, READ_ONLY, tool


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @tool(mcp, READ_ONLY)
    async def mixins_list() -> MixinList:
        """List the capability mixins an agent can use, with their config schemas."""
        from qmcp.agentframework import service

        return MixinList(mixins=[MixinInfo(**m) for m in service.list_mixins()])

    @tool(mcp, READ_ONLY)
    async def runners_list() -> RunnerList:
        """List the runners topologies can run on."""
        from qmcp.agentframework import service

        return RunnerList(runners=[RunnerInfo(**r) for r in service.runners_list()])

    @tool(mcp, CREATE)
    async def flows_generate(
        topology: Annotated[str, Field(description="the topology's name", max_length=100)],
        environment: Annotated[
            Literal["local", "kubernetes", "batch"],
            Field(description="kubernetes/batch add @kubernetes/@batch, @retry and @timeout"),
        ] = "local",
    ) -> FlowInfo:
        """Generate a topology's Metaflow flow file (in ./generated_flows) and return its source."""
        from qmcp.agentframework import service

        path, source = await service.generate_flow(topology, environment=environment, db_url=db_url)
        return FlowInfo(
            path=path,
            source=source,
            run_command=f'python {path} run --input-json \'{{"prompt": "..."}}\'',
        )
