"""What generated Metaflow steps call: the same library code the other runners use.

Each step process imports this module, so it stays lean: the library is imported inside
functions, and a step does its work in one `asyncio.run`. The flow's state travels as the `state`
artifact: the execution id, the input and every recorded outcome by invocation key.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from qmcp.agentframework.plugins import load_plugins

State = dict[str, Any]
_CURRENT: dict[str, Any] = {}

load_plugins()


def _restore(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from qmcp.agentframework.runners.base import restore

    return restore(spec)


def _runner(spec: dict[str, Any]) -> Any:
    from qmcp.agentframework.runners.base import RunConfig
    from qmcp.agentframework.runners.metaflow_runner import MetaflowRunner

    return MetaflowRunner(config=RunConfig.model_validate(spec.get("run_config") or {}))


# -- the spec's helper functions ------------------------------------------------------------


def invoke_agent(agent_config: dict[str, Any], input_data: dict[str, Any]) -> dict[str, Any]:
    """Invoke one agent synchronously (for a hand-written Metaflow step).

    `agent_config` is an agent as data: {"name", "role", "config", "description"?, "slot"?}.
    Inside a generated flow the call is recorded under the flow's execution.
    """
    from qmcp.agentframework.models import AgentType
    from qmcp.agentframework.runners.base import RunConfig
    from qmcp.agentframework.runners.engine import Engine
    from qmcp.agentframework.store import Store

    slot = str(agent_config.get("slot") or agent_config.get("name") or "agent")
    agent = AgentType(
        name=str(agent_config.get("name", slot)),
        description=str(agent_config.get("description", "")),
        role=agent_config.get("role", "executor"),
        config=dict(agent_config.get("config") or {}),
    )
    execution_id = _CURRENT.get("execution_id")
    config = RunConfig(checkpoint_enabled=execution_id is not None)

    async def call() -> dict[str, Any]:
        engine = Engine(
            execution_id=execution_id or uuid.uuid4(),
            agents={slot: agent},
            config=config,
            store=Store(),
            checkpoints={},
            concurrency=None,
            on_event=None,
            total=1,
        )
        return await engine.invoke(slot, input_data, key=f"{slot}/{uuid.uuid4().hex[:8]}")

    return asyncio.run(call())


def aggregate_results(results: list[Any], method: str) -> dict[str, Any]:
    """Aggregate ensemble outputs: vote, average, concat or best_of.

    `results` holds (name, output) pairs or outputs with `slot`/`agent` fields. Synthesis needs
    an aggregator agent, so it happens in the generated flow's join, not here.
    """
    from qmcp.agentframework.topologies.aggregation import aggregate

    members = []
    for index, item in enumerate(results):
        if isinstance(item, tuple | list) and len(item) == 2:
            name, output = item
        else:
            output = dict(item)
            name = output.get("slot") or output.get("agent") or f"member_{index}"
        if isinstance(output, str):
            output = {"content": output}
        members.append((str(name), dict(output)))
    return aggregate(method, members)


def determine_consensus(
    primary: dict[str, Any], validations: list[dict[str, Any]], method: str
) -> dict[str, Any]:
    """Consensus of cross-check validations: unanimous, majority or weighted."""
    from qmcp.agentframework.topologies.consensus import determine_consensus as consensus

    return consensus(primary, validations, method)


def save_execution(
    topology_id: int | None, output_data: dict[str, Any], execution_id: str | None = None
) -> None:
    """Record a flow's output as its execution's completed result (with token totals)."""
    ident = execution_id or _CURRENT.get("execution_id")
    if ident is None:
        raise RuntimeError("save_execution needs the execution id: call it inside a generated flow")
    asyncio.run(_save(uuid.UUID(str(ident)), topology_id, output_data))


async def _save(ident: uuid.UUID, topology_id: int | None, output: dict[str, Any]) -> None:
    from qmcp.agentframework.models import ExecutionStatus, utcnow
    from qmcp.agentframework.store import Store

    store = Store()
    execution = await store.get_execution(ident)
    if topology_id is not None and execution.topology_id not in (None, topology_id):
        raise RuntimeError(
            f"execution {ident} belongs to topology {execution.topology_id}, not {topology_id}"
        )
    completed = utcnow()
    started = execution.started_at
    duration = None
    if started is not None:
        duration = int(
            (completed.replace(tzinfo=None) - started.replace(tzinfo=None)).total_seconds() * 1000
        )
    totals = await store.totals(ident)
    await store.update_execution(
        ident,
        status=ExecutionStatus.COMPLETED,
        output=output,
        error=None,
        completed_at=completed,
        duration_ms=duration,
        owner=None,
        **totals,
    )


# -- the generated flow's steps ---------------------------------------------------------------


def begin(spec: dict[str, Any], input_json: Any, execution_id: str, run_id: str) -> State:
    """Start step: use the execution the runner created, or create one (a standalone run)."""
    data = input_json if isinstance(input_json, dict) else {}

    async def start() -> str:
        from qmcp.agentframework.store import Store

        store = Store()
        if execution_id:
            ident = uuid.UUID(execution_id)
            execution = await store.get_execution(ident)
        else:
            topology, agents = _restore(spec)
            prepared = await _runner(spec).start(topology, agents, data)
            execution = prepared.execution
            ident = execution.id
        snapshot = dict(execution.snapshot)
        snapshot["metaflow"] = {**snapshot.get("metaflow", {}), "run_id": run_id}
        await store.update_execution(ident, snapshot=snapshot)
        return str(ident)

    ident = asyncio.run(start())
    _CURRENT["execution_id"] = ident
    return {"execution_id": ident, "input": data, "outcomes": {}}


def advance(spec: dict[str, Any], state: State, patterns: list[str]) -> State:
    """Inline step: answer the program's pending calls that this step owns, until none are left."""
    _CURRENT["execution_id"] = state["execution_id"]
    return asyncio.run(_advance(spec, state, patterns))


async def _advance(spec: dict[str, Any], state: State, patterns: list[str]) -> State:
    from qmcp.agentframework.runners.replay import owned

    state = {**state, "outcomes": {k: list(v) for k, v in state["outcomes"].items()}}
    while True:
        pending = await _discover(spec, state)
        mine = owned(pending, patterns) if pending else []
        if not mine:
            return state
        for call in mine:
            outcome = await _invoke(spec, state, call.as_dict())
            state["outcomes"].setdefault(call.key, []).append(outcome)


def plan_batch(spec: dict[str, Any], state: State, patterns: list[str]) -> list[Any]:
    """Fan-out step: the pending calls this step owns, as the `foreach` list ([None] if none)."""
    from qmcp.agentframework.runners.replay import owned

    _CURRENT["execution_id"] = state["execution_id"]
    pending = asyncio.run(_discover(spec, state))
    batch: list[Any] = [c.as_dict() for c in owned(pending or [], patterns)]
    return batch or [None]


def invoke_pending(spec: dict[str, Any], state: State, call: dict[str, Any] | None) -> Any:
    """A `foreach` branch: answer one pending call."""
    if call is None:
        return None
    _CURRENT["execution_id"] = state["execution_id"]
    return {"key": call["key"], "outcome": asyncio.run(_invoke(spec, state, call))}


def merge(state: State, results: list[Any]) -> State:
    """Join step: add the branches' outcomes to the state."""
    outcomes = {k: list(v) for k, v in state["outcomes"].items()}
    for result in results:
        if result is not None:
            outcomes.setdefault(result["key"], []).append(result["outcome"])
    return {**state, "outcomes": outcomes}


def finish(spec: dict[str, Any], state: State) -> dict[str, Any]:
    """End step: the program's output from the recorded outcomes, saved to the execution."""
    _CURRENT["execution_id"] = state["execution_id"]
    output = asyncio.run(_output(spec, state))
    topology_id = spec["topology"].get("id")
    save_execution(topology_id, output, state["execution_id"])
    return output


async def _output(spec: dict[str, Any], state: State) -> dict[str, Any]:
    from qmcp.agentframework.runners.replay import Pending, ReplayContext
    from qmcp.agentframework.topologies import TopologyRegistry

    topology, agents = _restore(spec)
    kind = TopologyRegistry.get(topology.topology_type)
    config = kind.parse_config(topology.config)
    try:
        return await kind.run(ReplayContext(agents, state["outcomes"]), config, state["input"])
    except Pending as signal:
        keys = ", ".join(c.key for c in signal.calls)
        raise RuntimeError(f"the flow ended with calls still pending: {keys}") from None


async def _discover(spec: dict[str, Any], state: State) -> list[Any]:
    """Run the program over the recorded outcomes; the calls it waits for ([] when finished).

    A topology-level failure is recorded on the execution and raised, so the Metaflow task
    fails and `resume` starts again from here.
    """
    from qmcp.agentframework.errors import QmcpError
    from qmcp.agentframework.runners.replay import Pending, ReplayContext
    from qmcp.agentframework.topologies import TopologyRegistry

    topology, agents = _restore(spec)
    kind = TopologyRegistry.get(topology.topology_type)
    config = kind.parse_config(topology.config)
    try:
        await kind.run(ReplayContext(agents, state["outcomes"]), config, state["input"])
    except Pending as signal:
        return list(signal.calls)
    except QmcpError as exc:
        await _fail(uuid.UUID(state["execution_id"]), str(exc))
        raise TopologyRunFailed(str(exc)) from None
    return []


class TopologyRunFailed(RuntimeError):
    """The topology failed under its own failure policy; the flow stops here."""


async def _fail(ident: uuid.UUID, error: str) -> None:
    from qmcp.agentframework.models import ExecutionStatus, utcnow
    from qmcp.agentframework.store import Store

    store = Store()
    totals = await store.totals(ident)
    await store.update_execution(
        ident,
        status=ExecutionStatus.FAILED,
        error=error,
        completed_at=utcnow(),
        owner=None,
        **totals,
    )


async def _invoke(spec: dict[str, Any], state: State, call: dict[str, Any]) -> dict[str, Any]:
    """Answer one call through the engine (retries, mixins, recording) → an outcome."""
    from qmcp.agentframework.errors import InvocationFailed
    from qmcp.agentframework.runners.base import RunConfig
    from qmcp.agentframework.runners.engine import Engine
    from qmcp.agentframework.runners.replay import resolve_agent
    from qmcp.agentframework.store import Store

    _, agents = _restore(spec)
    ident = uuid.UUID(state["execution_id"])
    store = Store()
    # A task that died after some calls finished (then resumed) must not pay for them again.
    checkpoints = await store.checkpoints(ident)
    engine = Engine(
        execution_id=ident,
        agents=agents,
        config=RunConfig.model_validate(spec.get("run_config") or {}),
        store=store,
        checkpoints={k: v for k, v in checkpoints.items() if k == call["key"]},
        concurrency=None,
        on_event=None,
        total=1,
    )
    member = resolve_agent(agents, call.get("path") or [], call["slot"])
    try:
        result = await engine.invoke_agent(member, call["slot"], call["payload"], call["key"])
    except InvocationFailed as exc:
        return {"failed": exc.reason}
    return {"ok": result}
