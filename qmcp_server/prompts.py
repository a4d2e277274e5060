"""Prompts: a plain request turned into the tool calls that set up and run agents (run_workflow,
build_topology), one agent designed for a purpose (create_agent), and an execution's record
explained (explain_execution). Their arguments complete (`qmcp_server.completions`)."""

from __future__ import annotations

from typing import Annotated, get_args

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.errors import invalid_params, prompt_errors
from qmcp_server.schemas import Role
from qmcp_server.state import ServerState

STYLES = ("pipeline", "ensemble")
ROLES: tuple[str, ...] = get_args(Role)

# What each prompt argument takes, for `completion/complete` (free text is left out).
PROMPT_ARGUMENTS: dict[str, dict[str, str]] = {
    "run_workflow": {"style": "style", "model": "model", "runner": "runner"},
    "build_topology": {"topology_type": "topology_type", "model": "model", "runner": "runner"},
    "create_agent": {"role": "role", "model": "model"},
    "explain_execution": {"execution_id": "execution"},
}
# The input field each built-in kind reads its request from (DESIGN.md's table).
SLOTS = {
    "pipeline": "one slot per stage, in order (e.g. research, draft, review)",
    "ensemble": "ensemble_0, ensemble_1, … and an optional aggregator",
    "debate": "proponent, opponent and mediator",
    "cross_check": "primary and checker_1, checker_2 (or more)",
    "chain_of_command": "commander, lieutenant_* (optional) and worker_* (at least one)",
    "delegation": "coordinator and specialists named by what they do",
}
ModelArg = Annotated[
    str | None,
    Field(description="the agents' model: offline (no key), a claude-… id, sampling, …"),
]
RunnerArg = Annotated[str, Field(description="local, async or metaflow (see runners_list)")]


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @mcp.prompt(name="run_workflow", title="Set up and run a multi-agent workflow")
    @prompt_errors
    async def run_workflow(
        request: Annotated[str, Field(description="what you want the agents to do")],
        style: Annotated[
            str, Field(description="pipeline (steps in order) or ensemble (parallel views)")
        ] = "pipeline",
        model: ModelArg = None,
        runner: RunnerArg = "local",
    ) -> str:
        """Turn a plain request into tool calls that create agents and a topology, then run it."""
        if style not in STYLES:
            raise invalid_params(f"style must be pipeline or ensemble, not {style!r}")
        if not request.strip():
            raise invalid_params("request is empty; say what you want the agents to do")
        _check_runner(runner)
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
            "1. Reuse a fitting topology, or create agents with agents_create (pick roles; "
            f"{_model_hint(model)}) and compose them with topologies_create (pipeline: one slot "
            "per stage in order; ensemble: slots ensemble_0, ensemble_1, … plus aggregator with "
            "config {'aggregation_method': 'synthesis'}).\n"
            f'2. Call topologies_run with input {{"prompt": <the request>}} and runner {runner!r}; '
            "if it may take longer than a minute, pass wait=false and poll executions_get.\n"
            "3. Report the output's content, and mention the execution id so the record can be "
            "read at qmcp://executions/{id}."
        )

    @mcp.prompt(name="build_topology", title="Compose and run a topology of a given kind")
    @prompt_errors
    async def build_topology(
        goal: Annotated[str, Field(description="what the agents should achieve")],
        topology_type: Annotated[
            str, Field(description="the kind: pipeline, ensemble, debate, cross_check, …")
        ] = "debate",
        model: ModelArg = None,
        runner: RunnerArg = "local",
    ) -> str:
        """Compose a topology of one kind for a goal, in one call (an inline topology) or stored
        for reuse, and run it."""
        if not goal.strip():
            raise invalid_params("goal is empty; say what the agents should achieve")
        _check_runner(runner)
        from qmcp.agentframework import service

        kinds = {k["topology_type"]: k for k in service.topology_kinds()}
        if topology_type not in kinds:
            raise invalid_params(
                f"unknown topology type {topology_type!r}; known: {', '.join(kinds)}"
            )
        field = kinds[topology_type]["input_field"]
        slots = SLOTS.get(topology_type, "see topologies_create")
        return (
            f"Build a {topology_type} of agents ({kinds[topology_type]['summary']}) for this "
            f"goal:\n\n"
            f"{goal}\n\nIts slots: {slots}. Give each slot an agent with a fitting role and a "
            f"system prompt for its part; {_model_hint(model)}.\n"
            f"1. To run it once, call topologies_run with topology set to an inline definition "
            f'{{"topology_type": "{topology_type}", "slots": {{<slot>: {{"role": …, '
            f'"system_prompt": …}}, …}}}}, input {{"{field}": <the goal>}} and runner '
            f'{runner!r}; nothing but the execution is stored. Add "save": true (and names) '
            "to keep the agents and the topology for later runs.\n"
            "2. Report the output's content and the execution id (qmcp://executions/{id})."
        )

    @mcp.prompt(name="create_agent", title="Design one agent for a purpose")
    @prompt_errors
    async def create_agent(
        purpose: Annotated[str, Field(description="what the agent is for")],
        role: Annotated[str, Field(description="planner, executor, reviewer, critic, …")] = (
            "executor"
        ),
        model: ModelArg = None,
    ) -> str:
        """Turn a purpose into an agents_create call with a fitting name and system prompt."""
        if not purpose.strip():
            raise invalid_params("purpose is empty; say what the agent is for")
        if role not in ROLES:
            raise invalid_params(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        return (
            f"Create one agent with agents_create for this purpose:\n\n{purpose}\n\n"
            f"Its role is {role}; {_model_hint(model)}. Pick a short name (letters, digits, "
            "_ - .) that says what it does, and write a system prompt that states its task, "
            "what it must not do, and the shape of its answer. Check agents_list first so the "
            "name is new, then show the created agent."
        )

    @mcp.prompt(name="explain_execution", title="Explain what happened in an execution")
    @prompt_errors
    async def explain_execution(
        execution_id: Annotated[str, Field(description="the execution's id or its start")],
    ) -> str:
        """Read one execution's record and explain it: who said what, what it cost, and, for
        one that did not complete, why and what to do next."""
        from qmcp.agentframework import service

        execution, invocations = await service.get_execution(execution_id, db_url)
        ident = execution.id
        return (
            f"Explain execution {ident} of topology {execution.topology_name!r} "
            f"({execution.status.value}, {len(invocations)} invocations). Read "
            f"qmcp://executions/{ident} (or call executions_get) and say, in order, what each "
            "agent was asked and answered, where time and tokens went, and the final output. "
            "If it did not complete, give the error's cause and the next step (executions_resume "
            "continues it without paying again for finished invocations)."
        )


def _model_hint(model: str | None) -> str:
    """What the prompt says about the model; one that is not a model spec is refused here, not
    after the client's model has been told to use it."""
    if model:
        from qmcp.agentframework.models import Models

        Models.parse(model)
        return f"use model {model!r} for every agent"
    return "model 'offline' needs no key"


def _check_runner(runner: str) -> None:
    from qmcp.agentframework import service

    known = [r["runner_type"] for r in service.runners_list()]
    if runner not in known:
        raise invalid_params(f"unknown runner {runner!r}; known: {', '.join(known)}")
