"""Topologies: topologies_list, topologies_create, topologies_show, topologies_update,
topologies_delete, topologies_run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import InputRequiredResult
from pydantic import Field

from qmcp_server.runs import launch
from qmcp_server.sampling import resumed_execution
from qmcp_server.schemas import Deleted, InlineTopology, RunOutcome, TopologyInfo, TopologyList
from qmcp_server.shortcuts import start_inline, tools_changed
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CREATE, DELETE, READ_ONLY, RUN, UPDATE, tool
from qmcp_server.ui import view_tool

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
RunnerName = Annotated[str, Field(description="local, async or metaflow (see runners_list)")]

# Update: repeating it changes nothing more; delete: gone for good (executions keep their records).


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @tool(mcp, READ_ONLY)
    async def topologies_list() -> TopologyList:
        """List the topologies with their kinds and slots."""
        from qmcp.agentframework import service

        rows = await service.list_topologies(db_url)
        return TopologyList(
            topologies=[TopologyInfo(**service.topology_to_dict(t, s)) for t, s in rows]
        )

    @tool(mcp, CREATE)
    async def topologies_create(
        name: Annotated[str, Field(description="unique; letters, digits, _ - .", max_length=100)],
        topology_type: Annotated[
            str,
            Field(
                description="pipeline, ensemble, debate, cross_check, chain_of_command "
                "or delegation",
                max_length=50,
            ),
        ],
        slots: Annotated[
            dict[str, str],
            Field(
                description="slot name -> agent name (or 'topology:<name>' to nest a stored "
                "topology), in order. pipeline: one slot per stage; ensemble: ensemble_0, … and "
                "aggregator; debate: proponent, opponent, mediator; cross_check: primary, "
                "checker_1, checker_2; chain_of_command: commander, lieutenant_*, worker_*; "
                "delegation: coordinator and specialists",
                max_length=100,
            ),
        ],
        ctx: Context,
        config: Annotated[
            dict[str, Any] | None,
            Field(description="the kind's config, e.g. {'aggregation_method': 'vote'}"),
        ] = None,
        description: Annotated[str, Field(max_length=10_000)] = "",
    ) -> TopologyInfo:
        """Compose agents into a topology. The config and slots are checked now, not at run time."""
        from qmcp.agentframework import service

        topology = await service.create_topology(
            name, topology_type, slots, config=config, description=description, db_url=db_url
        )
        await tools_changed(state, ctx)  # a new run_<name> tool
        return TopologyInfo(**service.topology_to_dict(topology, slots, diagram=True))

    @tool(mcp, READ_ONLY)
    async def topologies_show(name: Annotated[str, Field(max_length=100)]) -> TopologyInfo:
        """Show a topology: its config, which agent fills each slot, and a Mermaid diagram."""
        from qmcp.agentframework import service

        topology, agents = await service.get_topology(name, db_url)
        return TopologyInfo(**service.topology_to_dict(topology, agents, diagram=True))

    @tool(mcp, UPDATE)
    async def topologies_update(
        name: Annotated[str, Field(description="the topology to change", max_length=100)],
        ctx: Context,
        description: Annotated[str | None, Field(max_length=10_000)] = None,
        config: Annotated[
            dict[str, Any] | None,
            Field(description="the kind's whole new config; omitted: unchanged"),
        ] = None,
        slots: Annotated[
            dict[str, str] | None,
            Field(
                description="replaces all slots, in order: slot name -> agent name (or "
                "'topology:<name>'), as in topologies_create; omitted: unchanged",
                max_length=100,
            ),
        ] = None,
    ) -> TopologyInfo:
        """Change a topology's description, config or slots and bump its version; checked as at
        creation (slots, nesting, cycles). Executions keep the version they ran with."""
        from qmcp.agentframework import service

        topology, new_slots = await service.update_topology(
            name, description=description, config=config, slots=slots, db_url=db_url
        )
        await tools_changed(state, ctx)  # run_<name>'s description and input may change
        return TopologyInfo(**service.topology_to_dict(topology, new_slots, diagram=True))

    @tool(mcp, DELETE)
    async def topologies_delete(
        name: Annotated[str, Field(max_length=100)], ctx: Context
    ) -> Deleted:
        """Delete a topology. Refused while another topology nests it (the message names
        them); its executions and their records stay."""
        from qmcp.agentframework import service

        await service.delete_topology(name, db_url)
        await tools_changed(state, ctx)  # run_<name> is gone
        return Deleted(name=name, message=f"deleted topology {name!r}")

    @view_tool(mcp, RUN)  # the MCP App shows the run live (qmcp_server.ui)
    async def topologies_run(
        topology: Annotated[
            str | InlineTopology,
            Field(
                description="the stored topology's name, or an inline topology {topology_type, "
                "slots: {slot: {role, model, system_prompt, …} or an agent's name}, config} "
                "run without storing it (save: true stores it)"
            ),
        ],
        input: Annotated[
            dict[str, Any] | str,
            Field(description='a JSON object such as {"prompt": "..."} (or its JSON text)'),
        ],
        ctx: Context,
        runner: RunnerName = "local",
        wait: Annotated[
            bool,
            Field(
                description="true: report progress and return the result; false: return the "
                "execution id at once (for runs longer than your client's ~60 s tool timeout)"
            ),
        ] = True,
        max_concurrent: Annotated[
            int | None, Field(ge=1, le=100, description="async runner: model calls at once")
        ] = None,
        timeout_seconds: Annotated[
            int | None, Field(ge=1, le=86_400, description="stop the run after this long")
        ] = None,
        log_level: Annotated[
            LogLevel | None,
            Field(
                description="the run's log lines kept (default INFO); sent to you as log "
                "messages at the level you asked for"
            ),
        ] = None,
    ) -> RunOutcome | InputRequiredResult:
        """Run a topology and record the execution; see qmcp://executions/{id} for the record."""
        from qmcp.agentframework import service

        options = {"timeout_seconds": timeout_seconds, "log_level": log_level}
        run_config = {key: value for key, value in options.items() if value} or None
        resumed = resumed_execution(ctx)  # a stateless client answering the run's questions
        if resumed is not None:
            started = await service.claim_run(
                resumed, runner_type=runner, config=run_config, db_url=db_url
            )
            return await launch(ctx, state.runs, started, wait)
        if isinstance(topology, InlineTopology):
            started = await start_inline(
                state, ctx, topology, input, runner, run_config, max_concurrent
            )
            return await launch(ctx, state.runs, started, wait)
        started = await service.start_run(
            topology,
            input,
            runner_type=runner,
            config=run_config,
            max_concurrent=max_concurrent,
            db_url=db_url,
        )
        return await launch(ctx, state.runs, started, wait)
