"""Runner base classes: `RunConfig`, `RunResult`, `BaseRunner`, `RunnerRegistry` and `@runner`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from sqlmodel import SQLModel

from qmcp.agentframework import telemetry
from qmcp.agentframework.errors import (
    NotFoundError,
    QmcpError,
    ValidationError,
    describe_validation_error,
)
from qmcp.agentframework.human import AwaitingHuman
from qmcp.agentframework.models import (
    AgentType,
    Execution,
    ExecutionStatus,
    Topology,
    utcnow,
)
from qmcp.agentframework.registry import Registry
from qmcp.agentframework.runners.config import RunConfig
from qmcp.agentframework.runners.engine import (
    AgentSetup,
    Engine,
    EventHandler,
    agent_setup,
    register_live,
    run_log,
)
from qmcp.agentframework.runners.lease import Lease, Stop
from qmcp.agentframework.store import Store, owner_token, parse_execution_id
from qmcp.agentframework.store.leases import lease_until
from qmcp.agentframework.text import describe_bad_json
from qmcp.agentframework.topologies import MAX_NESTING, SubTopology, TopologyKind, TopologyRegistry

log = logging.getLogger("qmcp.run")

MAX_INPUT_BYTES = 1_000_000


class RunResult(SQLModel):
    """Result from a topology run."""

    execution_id: uuid.UUID
    status: ExecutionStatus
    output: dict[str, Any] | None
    error: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: int | None
    runner_type: str
    topology_name: str
    correlation_id: str | None


def check_input(input_data: Any) -> dict[str, Any]:
    """The run input must be a JSON object of bounded size: strict JSON (no NaN or Infinity)
    and valid UTF-8 (no lone surrogate); a refusal names where the offending value is."""
    if not isinstance(input_data, Mapping):
        raise ValidationError(
            'input must be a JSON object such as {"prompt": "…"}, '
            f"not {type(input_data).__name__}"
        )
    try:
        encoded = json.dumps(input_data, ensure_ascii=False, allow_nan=False)
        size = len(encoded.encode())
    except RecursionError:
        raise ValidationError("input is nested too deeply") from None
    except (TypeError, ValueError) as exc:  # NaN, a lone surrogate, a set, a cycle
        problem = describe_bad_json("input", input_data)
        raise ValidationError(problem or f"input is not JSON-serializable: {exc}") from None
    if size > MAX_INPUT_BYTES:
        raise ValidationError(f"input is {size} bytes; the limit is {MAX_INPUT_BYTES} bytes")
    return json.loads(encoded)


def snapshot_of(topology: Topology, agents: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Everything a resume needs, as JSON: the topology, its config and every slot's member,
    with the versions they had (an update bumps them; the record says which ones ran)."""

    def member(value: Any) -> dict[str, Any]:
        if isinstance(value, SubTopology):
            kind = TopologyRegistry.get(value.topology.topology_type)
            sub_config = kind.parse_config(value.topology.config)
            return {"subtopology": snapshot_of(value.topology, value.agents, sub_config)}
        return {
            "id": value.id,
            "name": value.name,
            "description": value.description,
            "role": str(value.role),
            "config": value.config,
            "version": value.version,
        }

    return {
        "topology": {
            "id": topology.id,
            "name": topology.name,
            "description": topology.description,
            "topology_type": str(topology.topology_type),
            "config": config.model_dump(mode="json"),
            "version": topology.version,
        },
        "slot_order": list(agents),
        "agents": {slot: member(value) for slot, value in agents.items()},
    }


def restore(snapshot: dict[str, Any]) -> tuple[Topology, dict[str, AgentType]]:
    """Rebuild a snapshot's topology and agents, slots in their original order.

    Slot order is meaning (pipeline stages), and JSON object order does not survive every
    store or serializer, so the order travels as its own list.
    """
    topology = Topology(**snapshot["topology"])
    order = snapshot.get("slot_order") or list(snapshot["agents"])
    agents: dict[str, Any] = {}
    for slot in order:
        data = snapshot["agents"][slot]
        if "subtopology" in data:
            agents[slot] = SubTopology(*restore(data["subtopology"]))
        else:
            agents[slot] = AgentType(**data)
    return topology, agents


@dataclass(frozen=True)
class PreparedRun:
    """An execution that is recorded and ready to run (new, or claimed for resume)."""

    execution: Execution
    kind: TopologyKind
    config: Any
    agents: dict[str, AgentType]
    input: dict[str, Any]
    checkpoints: dict[str, dict[str, Any]]
    previous_ms: int
    setups: dict[int, AgentSetup] = field(default_factory=dict)
    turns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    tool_calls: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def execution_id(self) -> uuid.UUID:
        return self.execution.id


class BaseRunner:
    """Runs topologies, records every execution and invocation, resumes from checkpoints.

    Subclasses choose scheduling: `concurrency` None awaits invocations one at a time, an int
    bounds how many run at once.
    """

    runner_type: ClassVar[str] = "base"
    concurrency: int | None = None

    def __init__(self, config: RunConfig | None = None, db_url: str | None = None) -> None:
        self.config = config or RunConfig()
        self.db_url = db_url
        self.store = Store(db_url)

    # -- public API -------------------------------------------------------------------------

    async def run(
        self,
        topology: Topology,
        agents: Mapping[str, AgentType],
        input_data: Mapping[str, Any],
        *,
        on_event: EventHandler | None = None,
    ) -> RunResult:
        """Validate, record a new execution, run the topology and record the outcome."""
        prepared = await self.start(topology, agents, input_data)
        return await self.finish(prepared, on_event=on_event)

    async def start(
        self,
        topology: Topology,
        agents: Mapping[str, AgentType],
        input_data: Mapping[str, Any],
    ) -> PreparedRun:
        """Validate everything and write the execution row; nothing is written on bad input.

        `run` is `start` then `finish`; callers that must return an execution id at once (the
        MCP server's `wait=false`) call them apart.
        """
        kind = TopologyRegistry.get(topology.topology_type)
        config = kind.validate(topology.config, agents.keys())
        setups = validate_members(agents)
        data = check_input(input_data)
        await self.store.init()
        now = utcnow()
        # Every column given and every value built here, so the row needs no validation:
        # `model_construct` skips SQLModel's ORM constructor (most of a small run's fixed cost).
        execution = Execution.model_construct(
            id=uuid.uuid4(),
            topology_name=topology.name,
            topology_id=topology.id,
            runner_type=self.runner_type,
            status=ExecutionStatus.RUNNING,
            input=data,
            output=None,
            error=None,
            correlation_id=self.config.correlation_id or uuid.uuid4().hex,
            snapshot=snapshot_of(topology, agents, config)
            | {"run_config": self.config.model_dump(mode="json"), "concurrency": self.concurrency},
            owner=owner_token(),
            created_at=now,
            started_at=now,
            completed_at=None,
            duration_ms=None,
            input_tokens=0,
            output_tokens=0,
            cost_usd=None,
            invocation_count=0,
            lease_expires_at=lease_until(now),
            cancel_requested_at=None,
            metaflow_flow_file=None,
            metaflow_run_id=None,
            metaflow_pathspec=None,
            metaflow_step=None,
            in_flight=None,
        )
        await self.store.add_execution(execution)
        return PreparedRun(execution, kind, config, dict(agents), data, {}, 0, setups)

    async def claim(self, execution_id: uuid.UUID | str) -> PreparedRun:
        """Take a resumable execution for this process and load its checkpoints."""
        ident = parse_execution_id(execution_id)
        await self.store.init()
        execution = await self.store.claim_execution(ident, owner_token())
        topology, agents = restore(execution.snapshot)
        kind = TopologyRegistry.get(topology.topology_type)
        config = kind.parse_config(topology.config)
        checkpoints = await self.store.checkpoints(ident)
        turns = await self.store.turns(ident)
        attempts = await self.store.attempts(ident)
        # Tool calls matter only inside an unfinished conversation (one with recorded turns).
        tool_calls = await self.store.tool_calls(ident) if turns else {}
        return PreparedRun(
            execution,
            kind,
            config,
            agents,
            execution.input,
            checkpoints,
            execution.duration_ms or 0,
            turns=turns,
            attempts=attempts,
            tool_calls=tool_calls,
        )

    async def resume(
        self, execution_id: uuid.UUID | str, *, on_event: EventHandler | None = None
    ) -> RunResult:
        """Finish a failed, cancelled or interrupted execution; completed invocations are reused."""
        return await self.finish(await self.claim(execution_id), on_event=on_event)

    async def finish(
        self, prepared: PreparedRun, *, on_event: EventHandler | None = None
    ) -> RunResult:
        """Run a started or claimed execution to its end and record the outcome."""
        execution = prepared.execution
        with telemetry.execution_span(
            execution.id, execution.topology_name, prepared.kind.type.value, self.runner_type
        ) as span:
            result = await self._execute(
                execution,
                prepared.kind,
                prepared.config,
                prepared.agents,
                prepared.input,
                prepared.checkpoints,
                on_event,
                prepared.previous_ms,
                prepared.setups,
                prepared.turns,
                prepared.attempts,
                prepared.tool_calls,
            )
            telemetry.ended(span, result.status.value, result.error)
            return result

    # -- the run ----------------------------------------------------------------------------

    async def _execute(
        self,
        execution: Execution,
        kind: TopologyKind,
        config: Any,
        agents: dict[str, AgentType],
        data: dict[str, Any],
        checkpoints: dict[str, dict[str, Any]],
        on_event: EventHandler | None,
        previous_ms: int,
        setups: dict[int, AgentSetup] | None = None,
        turns: dict[str, list[dict[str, Any]]] | None = None,
        attempts: dict[str, int] | None = None,
        tool_calls: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> RunResult:
        cfg = self.config
        engine = Engine(
            execution_id=execution.id,
            agents=agents,
            config=cfg,
            store=self.store,
            checkpoints=checkpoints,
            concurrency=self.concurrency,
            on_event=on_event,
            total=kind.estimate(config, list(agents)),
            setups=setups,
            turns=turns,
            attempts=attempts,
            tool_calls=tool_calls,
        )
        register_live(engine)  # the view reads its calls in flight; `engine.close()` unregisters
        started_at = utcnow()
        t0 = time.perf_counter()
        run_log(
            cfg,
            logging.INFO,
            "execution %s: %s %r on %s",
            execution.id,
            kind.type.value,
            execution.topology_name,
            self.runner_type,
        )
        import anyio  # here: a Metaflow step, which runs no `_execute`, does not load it

        status, output, error = ExecutionStatus.FAILED, None, None
        stop = anyio.CancelScope()  # a cancel asked for elsewhere, or the lease lost, ends it

        def stopped(_why: Stop) -> None:
            stop.cancel()

        lease = Lease(
            self.store, execution.id, execution.owner or owner_token(), stopped, engine.in_flight
        )
        engine.boundary = lease.check
        try:
            with anyio.move_on_after(cfg.timeout_seconds) as scope:
                async with lease:
                    with stop:
                        output = await kind.run(engine, config, data)
                        status = ExecutionStatus.COMPLETED
            if lease.stopped == "lost":
                return await self._lost(execution, engine, lease, started_at)
            if stop.cancelled_caught:
                status, error = ExecutionStatus.CANCELLED, lease.reason
            elif scope.cancelled_caught:
                error = (
                    f"timed out after {cfg.timeout_seconds} s (RunConfig.timeout_seconds); "
                    f"resume it with `qmcp executions resume {execution.id}`"
                )
        except (asyncio.CancelledError, KeyboardInterrupt):
            status, error = ExecutionStatus.CANCELLED, "cancelled"
            with anyio.CancelScope(shield=True):
                await _shielded(
                    self._finish(execution, engine, status, None, error, t0, previous_ms)
                )
            raise
        except AwaitingHuman as exc:
            status, error = ExecutionStatus.PENDING, str(exc)
        except QmcpError as exc:
            error = str(exc)
        except Exception as exc:  # a crash inside a run is a failed execution, never a dead caller
            log.exception("execution %s crashed", execution.id)
            error = f"{type(exc).__name__}: {exc}"
        completed_at = await _shielded(
            self._finish(execution, engine, status, output, error, t0, previous_ms)
        )
        duration_ms = int((time.perf_counter() - t0) * 1000)
        run_log(
            cfg,
            logging.INFO if status is ExecutionStatus.COMPLETED else logging.WARNING,
            "execution %s %s in %d ms%s",
            execution.id,
            status.value,
            duration_ms,
            f": {error}" if error else "",
        )
        return RunResult(
            execution_id=execution.id,
            status=status,
            output=output,
            error=error,
            started_at=started_at,
            completed_at=completed_at,
            duration_ms=duration_ms,
            runner_type=self.runner_type,
            topology_name=execution.topology_name,
            correlation_id=execution.correlation_id,
        )

    async def _lost(
        self, execution: Execution, engine: Engine, lease: Lease, started_at: datetime
    ) -> RunResult:
        """This process lost the run to another (its lease lapsed and was taken): the other
        process records the run from here on, so this one writes nothing more and stops."""
        try:
            await engine.settle()
        finally:
            await engine.close()
        return RunResult(
            execution_id=execution.id,
            status=ExecutionStatus.INTERRUPTED,
            output=None,
            error=lease.reason,
            started_at=started_at,
            completed_at=None,
            duration_ms=None,
            runner_type=self.runner_type,
            topology_name=execution.topology_name,
            correlation_id=execution.correlation_id,
        )

    async def _finish(
        self,
        execution: Execution,
        engine: Engine,
        status: ExecutionStatus,
        output: dict[str, Any] | None,
        error: str | None,
        t0: float,
        previous_ms: int,
    ) -> datetime:
        """Record the outcome, with the rows a run without checkpointing kept, in one store
        transaction. The duration is the execution's whole run time: the earlier segments'
        (`previous_ms`, before a resume) plus this one's."""
        try:
            await engine.settle()
            rows, turns = engine.take_pending()
            metrics = self.config.metrics_enabled
            completed_at = await self.store.finish_execution(
                execution.id,
                status=status,
                output=output,
                error=error,
                duration_ms=previous_ms + int((time.perf_counter() - t0) * 1000),
                metrics=metrics,
                invocations=rows,
                turns=turns,
            )
        finally:
            await engine.close()  # recorded (or failed to be): its tool servers stop with it
        if (
            metrics
            and logging.getLevelName(self.config.log_level) <= logging.INFO
            and log.isEnabledFor(logging.INFO)
        ):  # read the totals back only for a line that will be logged
            totals = await self.store.totals(execution.id)
            run_log(
                self.config,
                logging.INFO,
                "execution %s metrics: %d invocations, %d input + %d output tokens, cost %s",
                execution.id,
                totals["invocation_count"],
                totals["input_tokens"],
                totals["output_tokens"],
                "unknown" if totals["cost_usd"] is None else f"${totals['cost_usd']:.6f}",
            )
        return completed_at


async def _shielded(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile (recording how a run
    ended must not be cut short by a cancel); the cancel is re-raised once it is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def validate_members(
    agents: Mapping[str, Any], depth: int = 0, setups: dict[int, AgentSetup] | None = None
) -> dict[int, AgentSetup]:
    """Every agent's config and mixins, and every nested topology, down to MAX_NESTING.

    Returns what each agent resolved to, so the run does not resolve it again.
    """
    setups = {} if setups is None else setups
    for slot, member in agents.items():
        if isinstance(member, SubTopology):
            if depth + 1 > MAX_NESTING:
                raise ValidationError(f"topologies nest deeper than {MAX_NESTING} levels")
            TopologyRegistry.get(member.topology.topology_type).validate(
                member.topology.config, member.agents.keys()
            )
            validate_members(member.agents, depth + 1, setups)
        else:
            setups[id(member)] = validate_agent_config(slot, member)
    return setups


def validate_agent_config(slot: str, agent: AgentType) -> AgentSetup:
    from pydantic import ValidationError as PydanticValidationError

    try:
        return agent_setup(agent)
    except PydanticValidationError as exc:
        raise ValidationError(
            f"agent {agent.name!r} in slot {slot!r} has an invalid config: "
            f"{describe_validation_error(exc)}"
        ) from None
    except ValidationError as exc:
        raise ValidationError(f"agent {agent.name!r} in slot {slot!r}: {exc}") from None


R = TypeVar("R", bound=type[BaseRunner])
T = TypeVar("T")


class _Runners(Registry[type[BaseRunner]]):
    """Runner classes by `runner_type`."""

    def __init__(self) -> None:
        super().__init__("runner", hint="`qmcp agents runners`", missing=NotFoundError)

    def add(self, runner_cls: R) -> R:
        name = getattr(runner_cls, "runner_type", None)
        if not name or name == "base":
            raise ValidationError(f"{runner_cls.__name__} must set a runner_type")
        self.register(name, runner_cls)
        return runner_cls

    def create(
        self, runner_type: str, config: RunConfig | None = None, **kwargs: Any
    ) -> BaseRunner:
        return self.get(runner_type)(config=config, **kwargs)


RunnerRegistry = _Runners()


def runner(cls: R) -> R:
    """Class decorator: register a `BaseRunner` subclass under its `runner_type`."""
    return RunnerRegistry.add(cls)
