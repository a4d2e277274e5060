"""What generated Metaflow steps call: the same library code the other runners use.

A generated flow (`metaflow_runner.FlowWriter`) is these calls, one per step; `SPEC` is the flow's
JSON document (topology, agents, run config) and `name` a step of the kind's flow shape:

    start               state = begin(SPEC, input_json, execution_id, run_id)
    s<i>_<name>         state = advance(SPEC, state, name)             (an inline step)
    before a foreach    batch = branches(SPEC, state, name)
    s<i>_<name>         result = run_branch(SPEC, state, name, input)  (one task per branch)
    s<i>_<name>_join    state = merge(SPEC, inputs[0].state, [i.result for i in inputs])
    end                 output = finish(SPEC, state)

Every step replays the topology program over the outcomes recorded so far (`replay.replay`) and
answers, through the engine (mixins, retries, recording), the pending calls its step owns, until
the program waits for none of them; `finish` answers whatever no step owns, then records the
output. The `state` artifact carries the execution id, the input, every outcome by invocation key,
which flow step answered each key, and the clock of the current run segment.

Each step process imports this module, so it stays lean: the library is imported inside
functions, and a step does its work in one `asyncio.run`. A task process is short-lived: the
generated flow freezes what Metaflow built out of the cyclic garbage collector before a step
imports the library (`gc.freeze()` at the top of the flow's file), and, imported in a task, this
module freezes what the library built and, at exit, what is still alive: neither the step's
collections nor the one Python runs at exit walk the objects SQLAlchemy and pydantic built (at
exit alone, about 0.15 s of CPU per task). Nothing is left unwritten by it: every step closes its
database (its writes committed) before it returns.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from qmcp.agentframework import telemetry
from qmcp.agentframework.errors import ConflictError, RunnerError, TopologyFailed
from qmcp.agentframework.plugins import load_plugins

if TYPE_CHECKING:
    from qmcp.agentframework.runners.engine import InvocationEvent
    from qmcp.agentframework.runners.replay import Outcome, PendingCall, Replayed
    from qmcp.agentframework.store import Store
    from qmcp.agentframework.topologies.flow import FlowStep

State = dict[str, Any]
T = TypeVar("T")
END = "end"  # the flow step that answers calls no declared step owns
_CURRENT: dict[str, Any] = {}

load_plugins()


class TopologyRunFailed(TopologyFailed):
    """The topology failed under its own failure policy (recorded); the flow stops here."""


class _Paused(Exception):
    """A call waits for a human: the execution is recorded `pending`, and the flow's remaining
    steps pass its state on without work (`state["paused"]`), so no step fails or retries."""


# -- the spec's helper functions ------------------------------------------------------------


def invoke_agent(agent_config: dict[str, Any], input_data: dict[str, Any]) -> dict[str, Any]:
    """Invoke one agent synchronously, for a hand-written Metaflow step.

    `agent_config` is an agent as data: {"name", "role", "config", "description"?, "slot"?}.
    Inside a generated flow's step process the call is recorded under the flow's execution;
    elsewhere it is not recorded.
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

    async def call() -> dict[str, Any]:
        async with Store() as store:
            engine = Engine(
                execution_id=uuid.UUID(execution_id) if execution_id else uuid.uuid4(),
                agents={slot: agent},
                # Outside a flow there is no execution to record under: rows stay unwritten.
                config=RunConfig(checkpoint_enabled=execution_id is not None),
                store=store,
                checkpoints={},
                concurrency=None,
                on_event=None,
                total=1,
            )
            try:
                return await engine.invoke(slot, input_data, key=f"{slot}/{uuid.uuid4().hex[:8]}")
            finally:
                await engine.close()

    return asyncio.run(call())


def aggregate_results(results: list[Any], method: str) -> dict[str, Any]:
    """Aggregate ensemble outputs: vote, average, concat or best_of (`topologies.aggregation`).

    `results` holds (name, output) pairs or outputs with `slot`/`agent` fields. Synthesis needs
    an aggregator agent: a generated flow runs it as the ensemble's `aggregate` step.
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
    """Consensus of cross-check validations: unanimous, majority or weighted (as cross_check)."""
    from qmcp.agentframework.topologies.consensus import determine_consensus as consensus

    return consensus(primary, validations, method)


def save_execution(
    topology_id: int | None, output_data: dict[str, Any], execution_id: str | None = None
) -> None:
    """Record a hand-written flow's output as its execution's completed result.

    The execution is `execution_id`, or the one a generated step in this process works on. Its
    duration is the wall time since it started (a hand-written flow runs as one segment).
    """
    ident = execution_id or _CURRENT.get("execution_id")
    if ident is None:
        raise RunnerError(
            "save_execution needs the execution id: pass execution_id, or call it in a step of "
            "a generated flow"
        )

    async def save() -> None:
        from qmcp.agentframework.models import ExecutionStatus, utcnow
        from qmcp.agentframework.store import Store

        async with Store() as store:
            execution = await store.get_execution(uuid.UUID(str(ident)))
            if topology_id is not None and execution.topology_id not in (None, topology_id):
                raise ConflictError(
                    f"execution {ident} belongs to topology {execution.topology_id}, "
                    f"not {topology_id}"
                )
            started = (execution.started_at or execution.created_at).replace(tzinfo=None)
            elapsed = (utcnow().replace(tzinfo=None) - started).total_seconds()
            await store.finish_execution(
                execution.id,
                status=ExecutionStatus.COMPLETED,
                output=output_data,
                error=None,
                duration_ms=max(0, int(elapsed * 1000)),
            )

    asyncio.run(save())


# -- the generated flow's steps ---------------------------------------------------------------


def begin(spec: dict[str, Any], input_json: Any, execution_id: str, run_id: str) -> State:
    """Start step: use the execution the runner created, or create one (a standalone run)."""
    data = input_json if isinstance(input_json, dict) else {}

    async def start() -> State:
        from qmcp.agentframework.runners.base import restore
        from qmcp.agentframework.store import Store

        async with Store() as store:
            if execution_id:
                execution = await store.get_execution(uuid.UUID(execution_id))
            else:
                topology, agents = restore(spec)
                execution = (await _runner(spec).start(topology, agents, data)).execution
            current = getattr(sys.modules.get("metaflow"), "current", None)
            flow = getattr(current, "flow_name", None) if current is not None else None
            await store.set_metaflow(
                execution.id, run_id=run_id, pathspec=f"{flow}/{run_id}" if flow else None
            )
        clock = {"run": run_id, "since": time.time(), "before_ms": execution.duration_ms or 0}
        return {
            "execution_id": str(execution.id),
            "input": data,
            "outcomes": {},
            "steps": {},
            "clock": clock,
        }

    with _traced_step(execution_id):
        state = asyncio.run(start())
    _CURRENT["execution_id"] = state["execution_id"]
    return state


def advance(spec: dict[str, Any], state: State, step: str | list[str]) -> State:
    """An inline step: answer the calls it owns, in order, until the program waits for none.

    `step` names a step of the kind's flow shape, or is a list of key patterns (a step made up
    on the spot, for driving a program by hand).
    """

    if state.get("paused"):
        return state

    async def work_step(work: _Work) -> State:
        await work.segment()
        name, flow_step = work.step(step)
        await work.answer_all(name, flow_step)
        return work.state

    return _run(spec, state, work_step)


def branches(spec: dict[str, Any], state: State, step: str) -> list[str | None]:
    """Before a foreach step: its branches with calls pending, its `foreach` list ([None] if none;
    Metaflow cannot fan out over nothing)."""
    from qmcp.agentframework.runners.replay import branches as branches_of

    if state.get("paused"):
        return [None]

    async def plan(work: _Work) -> list[str | None]:
        _, flow_step = work.step(step)
        return list(branches_of((await work.discover()).pending, flow_step)) or [None]

    return _run(spec, state, plan)


def run_branch(
    spec: dict[str, Any], state: State, step: str, branch: str | None
) -> dict[str, Any] | None:
    """One task of a foreach step: answer the branch's calls, in order, until it has none left.

    Returns what it answered, for the join: {"step", "answered": [[key, outcome], ...]}.
    """
    if branch is None or state.get("paused"):
        return None

    async def work_branch(work: _Work) -> dict[str, Any]:
        await work.segment()
        name, flow_step = work.step(step)
        answered = await work.answer_all(name, flow_step, branch)
        result = {"step": name, "answered": [[key, outcome] for key, outcome in answered]}
        if work.state.get("paused"):
            result["paused"] = work.state["paused"]
        return result

    return _run(spec, state, work_branch)


def merge(spec: dict[str, Any], state: State, results: list[dict[str, Any] | None]) -> State:
    """A foreach step's join: the branches' outcomes added to the state, in branch order."""
    merged = _copy(state)
    for result in results:
        if result is None:
            continue
        for key, outcome in result["answered"]:
            merged["outcomes"].setdefault(key, []).append(outcome)
            merged["steps"][key] = result["step"]
        if result.get("paused"):
            merged["paused"] = result["paused"]
    if _metaflow_run_id() in (None, merged["clock"].get("run")):
        return merged

    async def new_segment(work: _Work) -> State:
        await work.segment()
        return work.state

    return _run(spec, merged, new_segment)


def finish(spec: dict[str, Any], state: State) -> dict[str, Any] | None:
    """End step: answer any call no declared step owns, then record the program's output
    (None: the execution waits for a human, recorded as `pending`)."""
    if state.get("paused"):
        return None

    async def end(work: _Work) -> dict[str, Any] | None:
        from qmcp.agentframework.models import ExecutionStatus

        await work.segment()
        await work.answer_all(END, None)
        if work.state.get("paused"):
            return None
        replayed = await work.discover()
        if replayed.output is None:
            keys = ", ".join(c.key for c in replayed.pending)
            raise RunnerError(f"the flow ended with calls still pending: {keys}")
        await work.record_steps()
        await work.store.finish_execution(
            work.ident,
            status=ExecutionStatus.COMPLETED,
            output=replayed.output,
            error=None,
            duration_ms=work.duration_ms(),
            metrics=work.run_config.metrics_enabled,
        )
        return replayed.output

    return _run(spec, state, end)


# -- one step's work --------------------------------------------------------------------------


class _Work:
    """A step's view of the run: the topology program over `state`, and the engine it calls."""

    def __init__(self, spec: dict[str, Any], state: State, store: Store) -> None:
        from qmcp.agentframework.runners.base import RunConfig, restore
        from qmcp.agentframework.topologies import TopologyRegistry

        topology, self.agents = restore(spec)
        self.kind = TopologyRegistry.get(topology.topology_type)
        self.config = self.kind.parse_config(topology.config)
        self.run_config = RunConfig.model_validate(spec.get("run_config") or {})
        self.state = _copy(state)
        self.ident = uuid.UUID(state["execution_id"])
        self.store = store
        self._engine: Any = None
        self._marked: set[str] = set()  # this step's keys in the execution's `in_flight`
        _CURRENT["execution_id"] = state["execution_id"]

    def step(self, step: str | list[str]) -> tuple[str, FlowStep]:
        """The flow step's name in the generated flow, and its declaration."""
        from qmcp.agentframework.runners.metaflow_runner import flow_shape, flow_step_name
        from qmcp.agentframework.topologies.flow import FlowStep

        if not isinstance(step, str):
            return "adhoc", FlowStep("adhoc", tuple(step))
        for index, declared in enumerate(flow_shape(self.kind, self.config, list(self.agents))):
            if declared.name == step:
                return flow_step_name(index, declared), declared
        raise RunnerError(f"{self.kind.type.value} flows have no step {step!r}")

    async def discover(self) -> Replayed:
        """The program over the outcomes so far. A topology failure is recorded on the execution
        and raised, so the Metaflow task fails and `resume` starts again from here."""
        from qmcp.agentframework.errors import QmcpError
        from qmcp.agentframework.models import ExecutionStatus
        from qmcp.agentframework.runners.replay import replay

        try:
            return await replay(
                self.kind, self.config, self.agents, self.state["input"], self.state["outcomes"]
            )
        except QmcpError as exc:
            await self.record_steps()
            await self.store.finish_execution(
                self.ident,
                status=ExecutionStatus.FAILED,
                output=None,
                error=str(exc),
                duration_ms=self.duration_ms(),
                metrics=self.run_config.metrics_enabled,
            )
            raise TopologyRunFailed(str(exc)) from None

    async def answer_all(
        self, name: str, step: FlowStep | None, branch: str | None = None
    ) -> list[tuple[str, Outcome]]:
        """Answer the pending calls `step` owns (in `branch`; every call if `step` is None), in
        the order the program asks, until it asks for none of them."""
        from qmcp.agentframework.runners.replay import owned

        answered: list[tuple[str, Outcome]] = []
        try:
            while True:
                pending = (await self.discover()).pending
                mine = pending if step is None else owned(pending, step, branch)
                if not mine:
                    break
                if self._engine is None:  # the step's first call: where the run is now
                    await self.store.set_metaflow(self.ident, step=name)
                (await self.engine()).flow_step = name
                for call in mine:
                    outcome = await self.invoke(call)
                    self.state["outcomes"].setdefault(call.key, []).append(outcome)
                    self.state["steps"][call.key] = name
                    answered.append((call.key, outcome))
            if self._engine is not None:
                await self._engine.flush()  # rows a run without checkpointing batches
        except _Paused:
            pass  # recorded as pending (`pause`): the steps after this one pass it on
        finally:
            if self._engine is not None:  # the step's tool servers stop when the step does
                await self._engine.close()
        return answered

    async def invoke(self, call: PendingCall) -> Outcome:
        """Answer one call through the engine (checkpoint, mixins, retries, recording)."""
        from qmcp.agentframework.errors import InvocationFailed
        from qmcp.agentframework.human import AwaitingHuman
        from qmcp.agentframework.runners.replay import resolve_agent

        engine = await self.engine()
        member = resolve_agent(self.agents, call.path, call.slot)
        try:
            output = await engine.invoke_agent(
                member, call.slot, call.payload, call.key, call.retries
            )
        except InvocationFailed as exc:
            return {"failed": exc.reason}
        except AwaitingHuman as exc:
            await self.pause(str(exc))
            raise _Paused from None
        return {"ok": output}

    async def pause(self, message: str) -> None:
        """A call waits for a human decision: record the execution `pending` (its rows first)
        and forget the Metaflow run, which ends without failing; `resume` runs a new one."""
        from qmcp.agentframework.models import ExecutionStatus

        if self._engine is not None:
            await self._engine.flush()
        await self.record_steps()
        await self.store.finish_execution(
            self.ident,
            status=ExecutionStatus.PENDING,
            output=None,
            error=message,
            duration_ms=self.duration_ms(),
            metrics=self.run_config.metrics_enabled,
        )
        await self.store.set_metaflow(self.ident, run_id=None, pathspec=None)
        self.state["paused"] = message

    async def engine(self) -> Any:
        if self._engine is None:
            from qmcp.agentframework.runners.engine import Engine

            # A task that died after some calls finished (then resumed) does not pay again.
            turns = await self.store.turns(self.ident)
            self._engine = Engine(
                execution_id=self.ident,
                agents=self.agents,
                config=self.run_config,
                store=self.store,
                checkpoints=await self.store.checkpoints(self.ident),
                concurrency=None,
                on_event=self.track,
                total=1,
                turns=turns,
                attempts=await self.store.attempts(self.ident),
                tool_calls=await self.store.tool_calls(self.ident) if turns else None,
            )
        return self._engine

    async def track(self, event: InvocationEvent) -> None:
        """Keep this step's calls in the execution's `in_flight` map while their model calls
        go on, for the run view in other processes: the step's engine is in this task's
        process, and the run's owner (the process that started the flow) runs none of them.
        A key goes in when its call starts and out when it ends; a call that stops otherwise
        (a wait for a human, a cancel) is cleared with the map when the execution is recorded
        as stopped."""
        key = event.key
        if event.kind == "started" and key not in self._marked:
            self._marked.add(key)  # the engine put it in its own map before it said "started"
            await self.store.mark_in_flight(self.ident, key, self._engine.in_flight[key])
        elif event.kind in ("completed", "failed") and key in self._marked:
            self._marked.discard(key)
            await self.store.mark_in_flight(self.ident, key, None)

    async def segment(self) -> None:
        """A resumed Metaflow run is a new run segment: its clock starts when its first step
        does, after the segments before it (the duration recorded when the last one ended)."""
        run = _metaflow_run_id()
        clock = self.state.get("clock") or {}
        if run is None or run == clock.get("run"):
            return
        execution = await self.store.get_execution(self.ident)
        self.state["clock"] = {
            "run": run,
            "since": time.time(),
            "before_ms": execution.duration_ms or 0,
        }

    def duration_ms(self) -> int:
        """The summed wall time of the execution's run segments, this one up to now."""
        clock = self.state.get("clock") or {}
        since = float(clock.get("since") or time.time())
        return int(clock.get("before_ms") or 0) + max(0, int((time.time() - since) * 1000))

    async def record_steps(self) -> None:
        """Which flow step answered each key: each row names its step as it is recorded; a key
        answered from an earlier checkpoint gets this run's step on its rows here."""
        await self.store.record_flow_steps(self.ident, self.state["steps"])


def _run(spec: dict[str, Any], state: State, work: Callable[[_Work], Awaitable[T]]) -> T:
    """One step's work in one event loop, with the database closed at its end."""

    async def main() -> T:
        from qmcp.agentframework.store import Store

        async with Store() as store:
            return await work(_Work(spec, state, store))

    with _traced_step(state.get("execution_id")):
        return asyncio.run(main())


@contextmanager
def _traced_step(execution_id: str | None) -> Iterator[None]:
    """A step's span, in the execution's trace (the runner passes it in `TRACEPARENT`); the
    step's spans are exported before its process ends."""
    current: Any = getattr(sys.modules.get("metaflow"), "current", None)
    in_flow = bool(getattr(current, "is_running_flow", False))
    step = str(current.step_name) if in_flow else "step"
    attributes = {"qmcp.execution.id": execution_id or ""}
    if in_flow:
        attributes |= {
            "metaflow.flow_name": str(current.flow_name),
            "metaflow.run_id": str(current.run_id),
            "metaflow.step_name": step,
            "metaflow.task_id": str(current.task_id),
        }
    try:
        with telemetry.continued(f"metaflow {step}", attributes):
            yield
    finally:
        telemetry.flush()


def _copy(state: State) -> State:
    return {
        **state,
        "outcomes": {k: list(v) for k, v in state["outcomes"].items()},
        "steps": dict(state.get("steps") or {}),
        "clock": dict(state.get("clock") or {}),
    }


def _metaflow_run_id() -> str | None:
    """The Metaflow run this process is a task of, if any."""
    metaflow = sys.modules.get("metaflow")
    current = getattr(metaflow, "current", None)
    if current is None or not getattr(current, "is_running_flow", False):
        return None
    return str(current.run_id)


def _runner(spec: dict[str, Any]) -> Any:
    from qmcp.agentframework.runners.base import RunConfig
    from qmcp.agentframework.runners.metaflow_runner import MetaflowRunner

    return MetaflowRunner(config=RunConfig.model_validate(spec.get("run_config") or {}))


def _freeze_in_task() -> None:
    """In a Metaflow task's process: what the library built at import lives to the process's end,
    so it leaves the collector's scans now; and whatever is alive at exit leaves them then (this
    handler runs before those registered earlier, Metaflow's and logging's, which still run)."""
    if _metaflow_run_id() is not None:
        gc.freeze()
        atexit.register(gc.freeze)


_freeze_in_task()
