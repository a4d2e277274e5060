"""The MCP server: tools, resources and prompts, each a thin call into the qmcp library."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from qmcp import __version__
from qmcp.agentframework.errors import NotFoundError, QmcpError, ValidationError
from qmcp.agentframework.human import human_channel
from qmcp.agentframework.llm import ProviderRegistry
from qmcp.agentframework.plugins import load_plugins
from qmcp_server.runs import BackgroundRuns
from qmcp_server.sampling import SamplingProvider, current_context, elicitation_channel
from qmcp_server.schemas import (
    AgentInfo,
    AgentList,
    ApprovalInfo,
    ApprovalList,
    CancelOutcome,
    Capability,
    ExecutionInfo,
    ExecutionList,
    FlowInfo,
    MixinInfo,
    MixinList,
    Role,
    RunnerInfo,
    RunnerList,
    RunOutcome,
    Status,
    TopologyInfo,
    TopologyList,
)

if TYPE_CHECKING:
    from qmcp.agentframework.runners import RunResult

log = logging.getLogger("qmcp.server")


class _Lazy:
    """A module imported on first use: the library (SQLModel, SQLAlchemy) is not needed to
    answer `initialize` or `tools/list`, so the server starts without it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


service = _Lazy("qmcp.agentframework.service")
store = _Lazy("qmcp.agentframework.store")
diagram = _Lazy("qmcp.agentframework.diagram")
runners = _Lazy("qmcp.agentframework.runners")
mixins = _Lazy("qmcp.agentframework.mixins")

INSTRUCTIONS = """\
qmcp-server runs multi-agent LLM workflows. Typical flow: mixins_list and agents_list to see what
exists; agents_create for each agent (role + model: 'offline' needs no key, claude-… ids need
ANTHROPIC_API_KEY on the server, 'sampling' asks your own model); topologies_create to put agents
in slots (see topologies_create for each kind's slots); topologies_run with
an input object such as {"prompt": "..."}; read qmcp://executions/{id} for the full record. Long
runs: topologies_run with wait=false returns an execution id at once; poll executions_get."""

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
RUN = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)
CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True)

RunnerName = Annotated[str, Field(description="local, async or metaflow (see runners_list)")]


def _tool_error(exc: QmcpError) -> ToolError:
    return ToolError(str(exc))


def _outcome(result: RunResult) -> RunOutcome:
    return RunOutcome(
        execution_id=str(result.execution_id),
        status=result.status.value,  # type: ignore[arg-type]
        topology_name=result.topology_name,
        runner_type=result.runner_type,
        output=result.output,
        error=result.error,
        duration_ms=result.duration_ms,
        correlation_id=result.correlation_id,
        resource_uri=f"qmcp://executions/{result.execution_id}",
    )


def _parse_input(value: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(value, str):
        return service.parse_json_object(value, "input")
    return value


def _log_level() -> Any:
    level = os.environ.get("QMCP_LOG_LEVEL", "INFO").upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def build_server(db_url: str | None = None) -> MCPServer:
    """A server over the database at `db_url` (default: QMCP_DATABASE_URL or ./agent.db)."""
    runs = BackgroundRuns()
    ProviderRegistry.register("sampling", SamplingProvider)
    load_plugins()

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await runs.shutdown()

    mcp: MCPServer = MCPServer(
        name="qmcp-server",
        title="qmcp: multi-agent LLM topologies",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level=_log_level(),
    )

    # -- agents -----------------------------------------------------------------------------

    @mcp.tool(annotations=READ_ONLY)
    async def agents_list(
        role: Annotated[Role | None, Field(description="only agents with this role")] = None,
    ) -> AgentList:
        """List the agent types: name, role, model and config."""
        agents = await service.list_agents(role, db_url)
        return AgentList(agents=[AgentInfo(**service.agent_to_dict(a)) for a in agents])

    @mcp.tool(annotations=CREATE)
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
        try:
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
        except QmcpError as exc:
            raise _tool_error(exc) from None
        return AgentInfo(**service.agent_to_dict(agent))

    @mcp.tool(annotations=READ_ONLY)
    async def agents_show(name: Annotated[str, Field(max_length=100)]) -> AgentInfo:
        """Show one agent type with its full config."""
        try:
            return AgentInfo(**service.agent_to_dict(await service.get_agent(name, db_url)))
        except QmcpError as exc:
            raise _tool_error(exc) from None

    @mcp.tool(annotations=READ_ONLY)
    async def mixins_list() -> MixinList:
        """List the capability mixins an agent can use, with their config schemas."""
        return MixinList(mixins=[MixinInfo(**m) for m in mixins.MixinRegistry.describe()])

    # -- topologies -------------------------------------------------------------------------

    @mcp.tool(annotations=READ_ONLY)
    async def topologies_list() -> TopologyList:
        """List the topologies with their kinds and slots."""
        rows = await service.list_topologies(db_url)
        return TopologyList(
            topologies=[TopologyInfo(**service.topology_to_dict(t, s)) for t, s in rows]
        )

    @mcp.tool(annotations=CREATE)
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
        config: Annotated[
            dict[str, Any] | None,
            Field(description="the kind's config, e.g. {'aggregation_method': 'vote'}"),
        ] = None,
        description: Annotated[str, Field(max_length=10_000)] = "",
    ) -> TopologyInfo:
        """Compose agents into a topology. The config and slots are checked now, not at run time."""
        try:
            topology = await service.create_topology(
                name, topology_type, slots, config=config, description=description, db_url=db_url
            )
        except QmcpError as exc:
            raise _tool_error(exc) from None
        info = service.topology_to_dict(topology, slots)
        return TopologyInfo(
            **info, mermaid=diagram.mermaid(info["topology_type"], info["config"], slots)
        )

    @mcp.tool(annotations=READ_ONLY)
    async def topologies_show(name: Annotated[str, Field(max_length=100)]) -> TopologyInfo:
        """Show a topology: its config, which agent fills each slot, and a Mermaid diagram."""
        try:
            topology, agents = await service.get_topology(name, db_url)
        except QmcpError as exc:
            raise _tool_error(exc) from None
        info = service.topology_to_dict(topology, agents)
        return TopologyInfo(
            **info, mermaid=diagram.mermaid(info["topology_type"], info["config"], info["slots"])
        )

    @mcp.tool(annotations=RUN)
    async def topologies_run(
        topology: Annotated[str, Field(description="the topology's name", max_length=100)],
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
    ) -> RunOutcome:
        """Run a topology and record the execution; see qmcp://executions/{id} for the record."""
        try:
            data = _parse_input(input)
            overrides = {"timeout_seconds": timeout_seconds} if timeout_seconds else {}
            run_runner = service.make_runner(
                runner,
                config=runners.RunConfig.model_validate(overrides),
                max_concurrent=max_concurrent,
                db_url=db_url,
            )
            topology_obj, agents = await service.get_topology(topology, db_url)
            prepared = await run_runner.start(topology_obj, agents, data)
        except QmcpError as exc:
            raise _tool_error(exc) from None
        return await _launch(ctx, run_runner, prepared, wait)

    async def _launch(ctx: Context, run_runner: Any, prepared: Any, wait: bool) -> RunOutcome:
        """Run to the end with progress (wait), or carry on in the server and answer at once."""
        if wait:
            return _outcome(await _finish_with_progress(ctx, run_runner, prepared))
        runs.start(run_runner, prepared)
        execution = prepared.execution
        return RunOutcome(
            execution_id=str(execution.id),
            status="running",
            topology_name=execution.topology_name,
            runner_type=run_runner.runner_type,
            correlation_id=execution.correlation_id,
            resource_uri=f"qmcp://executions/{execution.id}",
        )

    async def _finish_with_progress(ctx: Context, run_runner: Any, prepared: Any) -> RunResult:
        async def on_event(event: Any) -> None:
            if event.kind in ("completed", "cached", "failed", "retrying"):
                message = f"{event.kind} {event.key} ({event.agent})"
                try:
                    await ctx.report_progress(event.done, event.total, message)
                except Exception:  # a client that went away must not fail the run
                    log.debug("progress report dropped", exc_info=True)

        token = current_context.set(ctx)
        human = human_channel.set(elicitation_channel(ctx))
        try:
            return await run_runner.finish(prepared, on_event=on_event)  # type: ignore[no-any-return]
        finally:
            human_channel.reset(human)
            current_context.reset(token)

    # -- executions -------------------------------------------------------------------------

    @mcp.tool(annotations=READ_ONLY)
    async def executions_list(
        limit: Annotated[int, Field(ge=1, le=1000)] = 20,
        status: Status | None = None,
        topology: Annotated[str | None, Field(max_length=100)] = None,
    ) -> ExecutionList:
        """List recent executions, newest first."""
        rows = await service.list_executions(limit, status, topology, db_url)
        return ExecutionList(
            executions=[ExecutionInfo(**service.execution_to_dict(e)) for e in rows]
        )

    @mcp.tool(annotations=READ_ONLY)
    async def executions_get(
        execution_id: Annotated[str, Field(max_length=64)],
        include_invocations: bool = True,
    ) -> ExecutionInfo:
        """One execution: status, output, error, totals and (by default) every invocation."""
        try:
            execution, invocations = await service.get_execution(execution_id, db_url)
        except QmcpError as exc:
            raise _tool_error(exc) from None
        data = service.execution_to_dict(execution, invocations if include_invocations else None)
        return ExecutionInfo(**data)

    @mcp.tool(annotations=CANCEL)
    async def executions_cancel(
        execution_id: Annotated[str, Field(max_length=64)],
    ) -> CancelOutcome:
        """Cancel a running execution of this server; it is recorded as cancelled and resumable."""
        try:
            ident = store.parse_execution_id(execution_id)
            if await runs.cancel(ident):
                return CancelOutcome(
                    execution_id=str(ident),
                    status="cancelled",
                    message="cancelled; resume it with executions_resume",
                )
            execution = await store.Store(db_url).get_execution(ident)
        except QmcpError as exc:
            raise _tool_error(exc) from None
        if execution.status == "running":
            raise ToolError(
                f"execution {ident} is running in another process ({execution.owner}); "
                "cancel it there (Ctrl-C for the CLI)"
            )
        raise ToolError(
            f"execution {ident} is {execution.status.value}, not running; nothing to cancel"
        )

    @mcp.tool(annotations=RUN)
    async def executions_resume(
        execution_id: Annotated[str, Field(max_length=64)],
        ctx: Context,
        wait: bool = True,
        runner: Annotated[str | None, Field(description="default: the runner it ran on")] = None,
    ) -> RunOutcome:
        """Finish a failed, cancelled or interrupted execution; finished invocations are reused."""
        try:
            execution = await store.Store(db_url).get_execution(execution_id)
            run_runner = service.make_runner(runner or execution.runner_type, db_url=db_url)
            prepared = await run_runner.claim(execution.id)
        except QmcpError as exc:
            raise _tool_error(exc) from None
        return await _launch(ctx, run_runner, prepared, wait)

    @mcp.tool(annotations=CREATE)
    async def flows_generate(
        topology: Annotated[str, Field(description="the topology's name", max_length=100)],
        environment: Annotated[
            Literal["local", "kubernetes", "batch"],
            Field(description="kubernetes/batch add @kubernetes/@batch, @retry and @timeout"),
        ] = "local",
    ) -> FlowInfo:
        """Generate a topology's Metaflow flow file (in ./generated_flows) and return its source."""
        try:
            path, source = await service.generate_flow(
                topology, environment=environment, db_url=db_url
            )
        except QmcpError as exc:
            raise _tool_error(exc) from None
        return FlowInfo(
            path=path,
            source=source,
            run_command=f'python {path} run --input-json \'{{"prompt": "..."}}\'',
        )

    @mcp.tool(annotations=READ_ONLY)
    async def approvals_list(
        status: Literal["pending", "approved", "rejected"] | None = "pending",
    ) -> ApprovalList:
        """Human decisions asked for by agents with the human_in_loop mixin (pending by default)."""
        rows = await service.list_approvals(status, db_url=db_url)
        return ApprovalList(approvals=[ApprovalInfo(**service.approval_to_dict(a)) for a in rows])

    @mcp.tool(annotations=CREATE)
    async def approvals_answer(
        approval_id: int,
        approve: bool,
        comment: Annotated[str | None, Field(max_length=10_000)] = None,
        edited: Annotated[
            str | None, Field(description="approve this text instead", max_length=100_000)
        ] = None,
    ) -> ApprovalInfo:
        """Approve or reject a pending approval; then executions_resume goes on with it."""
        try:
            approval = await service.answer_approval(
                approval_id,
                approve,
                comment=comment,
                edited=edited,
                decided_by="mcp-tool",
                db_url=db_url,
            )
        except QmcpError as exc:
            raise _tool_error(exc) from None
        return ApprovalInfo(**service.approval_to_dict(approval))

    @mcp.tool(annotations=READ_ONLY)
    async def runners_list() -> RunnerList:
        """List the runners topologies can run on."""
        return RunnerList(runners=[RunnerInfo(**r) for r in service.runners_list()])

    # -- resources --------------------------------------------------------------------------

    def _json(data: Any) -> str:
        return json.dumps(data, indent=2, ensure_ascii=False, default=str)

    @mcp.resource("qmcp://executions", name="executions", mime_type="application/json")
    async def executions_resource() -> str:
        """The 50 most recent executions."""
        rows = await service.list_executions(50, db_url=db_url)
        return _json([service.execution_to_dict(e) for e in rows])

    @mcp.resource(
        "qmcp://executions/{execution_id}", name="execution", mime_type="application/json"
    )
    async def execution_resource(execution_id: str) -> str:
        """An execution's full record with every invocation."""
        try:
            execution, invocations = await service.get_execution(execution_id, db_url)
        except (NotFoundError, ValidationError) as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return _json(service.execution_to_dict(execution, invocations))

    @mcp.resource("qmcp://topologies/{name}", name="topology", mime_type="application/json")
    async def topology_resource(name: str) -> str:
        """A topology's config, slots and a Mermaid diagram."""
        try:
            topology, agents = await service.get_topology(name, db_url)
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        info = service.topology_to_dict(topology, agents)
        info["mermaid"] = diagram.mermaid(info["topology_type"], info["config"], info["slots"])
        return _json(info)

    @mcp.resource("qmcp://agents/{name}", name="agent", mime_type="application/json")
    async def agent_resource(name: str) -> str:
        """An agent type with its full config."""
        try:
            return _json(service.agent_to_dict(await service.get_agent(name, db_url)))
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from None

    # -- prompts ----------------------------------------------------------------------------

    @mcp.prompt(name="run_workflow", title="Set up and run a multi-agent workflow")
    async def run_workflow(
        request: Annotated[str, Field(description="what you want the agents to do")],
        style: Annotated[
            str, Field(description="pipeline (steps in order) or ensemble (parallel views)")
        ] = "pipeline",
    ) -> str:
        """Turn a plain request into tool calls that create agents and a topology, then run it."""
        agents = await service.list_agents(db_url=db_url)
        topologies = await service.list_topologies(db_url)
        known_agents = ", ".join(f"{a.name} ({a.role})" for a in agents) or "none yet"
        known_topologies = ", ".join(t.name for t, _ in topologies) or "none yet"
        return (
            f"Use the qmcp tools to handle this request with a {style} of agents:\n\n{request}\n\n"
            f"Existing agents: {known_agents}. Existing topologies: {known_topologies}.\n"
            "1. Reuse a fitting topology, or create agents with agents_create (pick roles; model "
            "'offline' needs no key) and compose them with topologies_create (pipeline: one slot "
            "per stage in order; ensemble: slots ensemble_0, ensemble_1, … plus aggregator with "
            "config {'aggregation_method': 'synthesis'}).\n"
            '2. Call topologies_run with input {"prompt": <the request>}; if it may take longer '
            "than a minute, pass wait=false and poll executions_get.\n"
            "3. Report the output's content, and mention the execution id so the record can be "
            "read at qmcp://executions/{id}."
        )

    return mcp


def configure_logging() -> None:
    """Plain log lines on stderr: under stdio, stdout carries only JSON-RPC.

    Configured before the SDK's own (rich) handler would be, which costs milliseconds a line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=_log_level(), handlers=[handler])
    logging.getLogger("qmcp").setLevel(_log_level())


def run(transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    configure_logging()
    if transport == "stdio":
        try:
            server = build_server()
        except QmcpError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise SystemExit(2) from None
        server.run()
        return
    from qmcp_server.http import serve_http

    serve_http(host, port)
