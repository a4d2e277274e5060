"""MetaflowRunner: topologies as generated Metaflow flows that run locally or scale out.

A generated flow follows the topology's flow shape, which each kind declares next to where it
builds its invocation keys (`TopologyKind.flow_shape`, `topologies.flow`): one step per declared
step, `foreach` + join where a step's members run in parallel (pipeline: a step per stage;
ensemble members, cross-check checkers, chain-of-command subtasks, delegation specialists: fan
outs; debate: a step per round). Its steps call `metaflow_helpers`, which run the same topology
program as every other runner over the outcomes recorded so far, so one topology gives the same
output everywhere. No user text is ever written into the flow's source: the topology, its agents
and the run config travel as one JSON document, embedded as an ASCII string literal, and step
names come from the declaration, never from slot names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from qmcp.agentframework import telemetry
from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.models import AgentType, ExecutionStatus, Topology, utcnow
from qmcp.agentframework.runners.base import (
    BaseRunner,
    PreparedRun,
    RunConfig,
    RunResult,
    restore,
    runner,
    snapshot_of,
    validate_members,
)
from qmcp.agentframework.runners.engine import EventHandler, InvocationEvent, deliver
from qmcp.agentframework.runners.lease import Lease
from qmcp.agentframework.store import owner_token
from qmcp.agentframework.topologies import TopologyKind, TopologyRegistry
from qmcp.agentframework.topologies.flow import FlowStep, check_shape

log = logging.getLogger("qmcp.run")
Environment = Literal["local", "kubernetes", "batch"]
ENVIRONMENTS = ("local", "kubernetes", "batch")
POLL_SECONDS = 0.25
RESOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
HELPERS = "from qmcp.agentframework.runners import metaflow_helpers as h"
FALLBACK_USER = "qmcp"
FLOW_DIR_VARIABLE = "QMCP_FLOW_DIR"


def default_flow_dir() -> Path:
    """Where flow files go when no `output_dir` is given: `$QMCP_FLOW_DIR`, else `flows` in the
    per-user cache directory (platformdirs), never the working directory."""
    import platformdirs

    configured = os.environ.get(FLOW_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_cache_dir("qmcp", appauthor=False)) / "flows"


def _needs_user() -> bool:
    """Whether Metaflow would find no user name here (root, or USERNAME, USER and METAFLOW_USER
    all unset): then it refuses to run a flow, and its Client refuses to look one up."""
    from metaflow.util import get_username

    return get_username() is None


class _FallbackUser:
    """`USERNAME=qmcp` in this process while runs use Metaflow's Runner and Client, when Metaflow
    finds no user name; restored when the last such run ends (runs may overlap).

    USERNAME rather than METAFLOW_USER: Metaflow reads METAFLOW_USER once, when it is imported,
    and USERNAME each time it asks for the user.
    """

    lock = threading.Lock()
    holders = 0
    saved: str | None = None
    applied = False

    @classmethod
    @contextlib.contextmanager
    def scope(cls) -> Iterator[bool]:
        """Yields whether the fallback name applies (the flow's processes need it too)."""
        with cls.lock:
            if cls.holders == 0 and _needs_user():
                cls.saved, cls.applied = os.environ.get("USERNAME"), True
                os.environ["USERNAME"] = FALLBACK_USER
            cls.holders += 1
            applied = cls.applied
        try:
            yield applied
        finally:
            with cls.lock:
                cls.holders -= 1
                if cls.holders == 0 and cls.applied:
                    if cls.saved is None:
                        os.environ.pop("USERNAME", None)
                    else:
                        os.environ["USERNAME"] = cls.saved
                    cls.saved, cls.applied = None, False


def flow_shape(kind: TopologyKind, config: Any, slots: list[str]) -> list[FlowStep]:
    """The declared steps of a kind's flow; a kind that declares none runs in `end` alone."""
    if kind.flow_shape is None:
        return []
    return check_shape(list(kind.flow_shape(config, slots)))


def flow_step_name(index: int, step: FlowStep) -> str:
    """A declared step's name in the generated flow (`s1_checkers`; its join `s1_checkers_join`).

    The index keeps names apart from Metaflow's own (`start`, `end`, `next`, `input`, …)."""
    return f"s{index}_{step.name}"


def flow_class_name(topology_name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", topology_name)
    return "Qmcp" + "".join(w[:1].upper() + w[1:] for w in words)[:60] + "Flow"


def flow_file_stem(topology_name: str) -> str:
    stem = "_".join(re.findall(r"[A-Za-z0-9]+", topology_name)).lower()[:60]
    return stem or "topology"


def _literal(value: Any) -> str:
    """A Python literal for JSON data: `json.dumps`, then `ascii` — never raw user text."""
    return ascii(json.dumps(value, ensure_ascii=True, sort_keys=True))


def check_resources(resources: Mapping[str, Any]) -> dict[str, int | float | str]:
    """Decorator arguments: lowercase names, and numbers or text (written as literals)."""
    checked: dict[str, int | float | str] = {}
    for name, value in resources.items():
        if not isinstance(name, str) or not RESOURCE_NAME.match(name):
            raise ValidationError(
                f"resource name {str(name)[:60]!r} must be lowercase letters, digits and '_' "
                "(e.g. cpu, memory, gpu)"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | str)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise ValidationError(f"resource {name} must be a finite number or text: {value!r}")
        checked[name] = value
    return checked


class FlowWriter:
    """Builds the flow source for one topology."""

    def __init__(
        self,
        environment: Environment,
        config: RunConfig,
        resources: Mapping[str, Any],
    ) -> None:
        self.environment = environment
        self.config = config
        self.resources = check_resources(resources)

    def decorators(self) -> list[str]:
        if self.environment == "local":
            return []
        args = ", ".join(f"{k}={_value(v)}" for k, v in sorted(self.resources.items()))
        lines = [f"@{self.environment}({args})"]
        if self.config.retry_on_failure and self.config.max_retries:
            lines.append(f"@retry(times={int(self.config.max_retries)})")
        lines.append(f"@timeout(seconds={int(self.config.timeout_seconds)})")
        return lines

    def source(self, topology: Topology, agents: Mapping[str, AgentType]) -> str:
        kind = TopologyRegistry.get(topology.topology_type)
        config = kind.validate(topology.config, agents.keys())
        spec = snapshot_of(topology, agents, config) | {
            "run_config": self.config.model_dump(mode="json")
        }
        shape = flow_shape(kind, config, list(agents))
        imports = "from metaflow import FlowSpec, JSONType, Parameter, current, step"
        if self.environment != "local":
            imports += f", retry, timeout, {self.environment}"
        steps = (
            ", ".join(
                f"{flow_step_name(i, s)}{' (foreach)' * s.foreach}" for i, s in enumerate(shape)
            )
            or "none declared"
        )
        out = [
            '"""A qmcp topology as a Metaflow flow (generated; regenerate instead of editing).',
            "",
            'Run it: python THIS_FILE.py run --input-json \'{"prompt": "..."}\'',
            "The topology, its agents and the run config are the JSON document SPEC.",
            f"Steps of the {kind.type.value} flow shape: {steps}; `end` answers any call",
            "no step owns and records the output.",
            '"""',
            "",
            "import gc",
            "import json",
            "",
            imports,
            "",
            "# A task is a short-lived process: what is built so far stays to its end, so the",
            "# garbage collector need not scan it again while the step imports qmcp and works.",
            "gc.freeze()",
            f"SPEC = json.loads({_literal(spec)})",
            "",
            "",
            f"class {flow_class_name(topology.name)}(FlowSpec):",
            '    input_json = Parameter("input-json", type=JSONType, default="{}",'
            ' help="the run input, a JSON object")',
            '    execution_id = Parameter("execution-id", default="",'
            ' help="record into this qmcp execution (default: create one)")',
            "",
        ]
        begin = "self.state = h.begin(SPEC, self.input_json, self.execution_id, current.run_id)"
        out += self._step("start", [begin], shape, 0, decorated=False)
        for index, declared in enumerate(shape):
            name = flow_step_name(index, declared)
            if declared.foreach:
                work = (
                    f'self.result = h.run_branch(SPEC, self.state, "{declared.name}", self.input)'
                )
                out += self._step(name, [work], shape, None, following=f"{name}_join")
                merge = "self.state = h.merge(SPEC, inputs[0].state, [i.result for i in inputs])"
                out += self._step(f"{name}_join", [merge], shape, index + 1, join=True)
            else:
                work = f'self.state = h.advance(SPEC, self.state, "{declared.name}")'
                out += self._step(name, [work], shape, index + 1)
        out += [
            *(f"    {d}" for d in self.decorators()),
            "    @step",
            "    def end(self):",
            f"        {HELPERS}",
            "",
            "        self.output = h.finish(SPEC, self.state)",
            "",
            "",
            'if __name__ == "__main__":',
            f"    {flow_class_name(topology.name)}()",
            "",
        ]
        return "\n".join(out)

    def _step(
        self,
        name: str,
        body: list[str],
        shape: list[FlowStep],
        then: int | None,
        *,
        following: str | None = None,
        join: bool = False,
        decorated: bool = True,
    ) -> list[str]:
        """One step: `body`, then on to `following`, or to step `then` of the shape (`end` past
        its last), planning that step's branches first when it fans out."""
        lines = [f"    {d}" for d in (self.decorators() if decorated else [])]
        lines.append("    @step")
        lines.append(f"    def {name}(self{', inputs' if join else ''}):")
        lines += [f"        {HELPERS}", ""] + [f"        {line}" for line in body]
        if following is not None:
            lines.append(f"        self.next(self.{following})")
        elif then is not None and then < len(shape) and shape[then].foreach:
            target = shape[then]
            lines.append(f'        self.batch = h.branches(SPEC, self.state, "{target.name}")')
            lines.append(f'        self.next(self.{flow_step_name(then, target)}, foreach="batch")')
        elif then is not None and then < len(shape):
            lines.append(f"        self.next(self.{flow_step_name(then, shape[then])})")
        else:
            lines.append("        self.next(self.end)")
        lines.append("")
        return lines


def _value(value: int | float | str) -> str:
    """A resource value as a Python literal (text through JSON, like SPEC)."""
    return repr(value) if not isinstance(value, str) else f"json.loads({_literal(value)})"


@runner
class MetaflowRunner(BaseRunner):
    """Generated Metaflow flows: local runs, or Kubernetes / AWS Batch with a shared datastore."""

    runner_type = "metaflow"

    def __init__(
        self,
        output_dir: str | os.PathLike[str] | None = None,
        environment: Environment = "local",
        config: RunConfig | None = None,
        db_url: str | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        if environment not in ENVIRONMENTS:
            raise ValidationError(
                f"unknown Metaflow environment {environment!r}; use local, kubernetes or batch"
            )
        super().__init__(config=config, db_url=db_url)
        self.output_dir = Path(output_dir) if output_dir is not None else default_flow_dir()
        self.environment = environment
        self.resources = check_resources(resources or {"cpu": 1, "memory": 4096})

    # -- generation -------------------------------------------------------------------------

    def _topology_to_flow(self, topology: Topology, agents: Mapping[str, AgentType]) -> str:
        """The flow source for a topology (validated; nothing is written)."""
        validate_members(agents)
        return FlowWriter(self.environment, self.config, self.resources).source(topology, agents)

    def write_flow(
        self,
        topology: Topology,
        agents: Mapping[str, AgentType],
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the flow file (default: `<output_dir>/<name>_flow.py`) and return its path."""
        target = (
            Path(path) if path else self.output_dir / f"{flow_file_stem(topology.name)}_flow.py"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self._topology_to_flow(topology, agents), encoding="utf-8")
        return target

    # -- running ----------------------------------------------------------------------------

    def _env(self, fallback_user: bool) -> dict[str, str]:
        env = {"QMCP_DATABASE_URL": self.store.url}
        if fallback_user:  # Metaflow refuses to run as root without a user name
            env["USERNAME"] = FALLBACK_USER
        env.update(telemetry.carrier())  # the steps' spans join the execution's trace
        return env

    async def finish(
        self, prepared: PreparedRun, *, on_event: EventHandler | None = None
    ) -> RunResult:
        """Run the flow, or resume its last Metaflow run, and read the outcome from the database.

        A resume whose flow file is gone or was generated differently (another version or
        runner configuration) runs a new flow over the same execution instead: its completed
        invocations are answered from their checkpoints, not asked again.
        """
        execution = prepared.execution
        # Metaflow's Runner and Client in this process need a user name too, not only the flow's.
        with (
            _FallbackUser.scope() as fallback_user,
            telemetry.execution_span(
                execution.id, execution.topology_name, prepared.kind.type.value, self.runner_type
            ) as span,
        ):
            result = await self._run_flow(prepared, fallback_user, on_event)
            telemetry.ended(span, result.status.value, result.error)
            return result

    async def _run_flow(
        self, prepared: PreparedRun, fallback_user: bool, on_event: EventHandler | None
    ) -> RunResult:
        execution = prepared.execution
        written = await self._flow_file(execution)
        info = dict(written)
        started_at, t0 = utcnow(), time.perf_counter()
        try:
            from metaflow import Runner

            env = self._env(fallback_user)
            flow = Runner(info["flow_file"], show_output=False, pylint=False, env=env)
            if info.get("run_id"):
                running = await flow.async_resume(origin_run_id=info["run_id"])
            else:
                running = await flow.async_run(
                    input_json=prepared.input, execution_id=str(execution.id)
                )
        except Exception as exc:
            self._discard(written)
            error = f"Metaflow could not start the flow: {type(exc).__name__}: {exc}"
            return await self._end(prepared, ExecutionStatus.FAILED, error, started_at, t0)
        progress = _Progress(self.store, execution.id, on_event, prepared)
        reporting = asyncio.create_task(progress.follow())
        # This process owns the execution while the flow runs: it renews the lease, and a cancel
        # asked for from anywhere (or the lease lost) stops the flow.
        waiting = asyncio.ensure_future(running.wait(timeout=self.config.timeout_seconds))
        lease = Lease(
            self.store, execution.id, execution.owner or owner_token(), lambda _: waiting.cancel()
        )
        try:
            async with lease:
                try:
                    await waiting
                except asyncio.CancelledError:
                    if lease.stopped is None:
                        raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            running.command_obj.kill()
            await self._remember(execution.id, {"run_id": _run_id(running)})
            await self._end(prepared, ExecutionStatus.CANCELLED, "cancelled", started_at, t0)
            raise
        finally:
            reporting.cancel()
        if lease.stopped is not None:
            await asyncio.to_thread(running.command_obj.kill)  # it waits for SIGTERM to land
            await self._remember(execution.id, {"run_id": _run_id(running)})
            if lease.stopped == "lost":  # another process took the run: it records from here
                record = await self.store.get_execution(execution.id)
                return self._result(record, started_at, t0).model_copy(
                    update={"status": ExecutionStatus.INTERRUPTED, "error": lease.reason}
                )
            return await self._end(
                prepared, ExecutionStatus.CANCELLED, lease.reason, started_at, t0
            )
        await progress.poll()  # the rows the last steps recorded
        run_id = _run_id(running)
        record = await self.store.get_execution(execution.id)
        if record.status == ExecutionStatus.PENDING:
            # A step paused for a human; the Metaflow run itself succeeded, so there is nothing
            # to resume in it: `resume` runs a new flow that answers from the checkpoints.
            return self._result(record, started_at, t0)
        await self._remember(execution.id, {"run_id": run_id})
        if record.status != ExecutionStatus.COMPLETED and run_id is None:
            # No Metaflow run used the file (the flow failed Metaflow's checks, or the process
            # died before its start step): nothing to resume from it, so it goes.
            self._discard(written)
        if record.status == ExecutionStatus.COMPLETED or (
            record.status == ExecutionStatus.FAILED and record.error
        ):
            return self._result(record, started_at, t0)
        if running.status == "timeout":
            error = (
                f"timed out after {self.config.timeout_seconds} s (RunConfig.timeout_seconds); "
                f"resume it with `qmcp executions resume {execution.id}`"
            )
        else:
            error = _last_error(running.stderr) or f"the Metaflow run ended as {running.status}"
        return await self._end(prepared, ExecutionStatus.FAILED, error, started_at, t0)

    async def _flow_file(self, execution: Any) -> _FlowFile:
        """The execution's flow file and Metaflow run, writing the file when it needs one.

        The file's absolute path is kept on the execution (`metaflow_flow_file`), so a resume
        finds it wherever it was written (an `output_dir`, `--output-dir` or the cache
        directory)."""
        info = {
            k: v
            for k, v in (
                ("flow_file", execution.metaflow_flow_file),
                ("run_id", execution.metaflow_run_id),
            )
            if v
        }
        topology, agents = restore(execution.snapshot)
        source = self._topology_to_flow(topology, agents)
        known = Path(info["flow_file"]) if info.get("flow_file") else None
        if known is not None and known.is_file() and known.read_text("utf-8") == source:
            return _FlowFile(info)
        # A new file per generation: Metaflow caches flows by path.
        stem = f"{flow_file_stem(topology.name)}_flow_{execution.id.hex[:12]}"
        if known is not None:
            stem += f"_{uuid.uuid4().hex[:6]}"
        target = self.output_dir / f"{stem}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
        info = {"flow_file": str(target.resolve())}  # a new flow: no Metaflow run to resume
        await self._remember(execution.id, info, replace=True)
        return _FlowFile(info, written=True)

    @staticmethod
    def _discard(flow_file: _FlowFile) -> None:
        """Remove a flow file this run wrote when no Metaflow run came of it (a resume writes a
        new one); a file an earlier run used stays for its resume."""
        if flow_file.written:
            Path(flow_file["flow_file"]).unlink(missing_ok=True)

    async def _remember(
        self, ident: uuid.UUID, info: dict[str, Any], *, replace: bool = False
    ) -> None:
        """Keep the flow file and the Metaflow run id on the execution, for resume (columns:
        nothing is read first, so a step process writing its own columns is never undone).
        `replace`: a new flow file, so no Metaflow run of it yet."""
        values: dict[str, str | None] = {
            k: str(v) for k, v in info.items() if v and k in ("flow_file", "run_id")
        }
        if replace:
            values = {"run_id": None, "pathspec": None, "step": None, **values}
        if values:
            await self.store.set_metaflow(ident, **values)

    async def _end(
        self,
        prepared: PreparedRun,
        status: ExecutionStatus,
        error: str,
        started_at: Any,
        t0: float,
    ) -> RunResult:
        """Record a run that ended without its flow recording it (it could not start, was
        cancelled, timed out or crashed); the duration adds this segment to the earlier ones."""
        segment_ms = int((time.perf_counter() - t0) * 1000)
        await self.store.finish_execution(
            prepared.execution_id,
            status=status,
            output=None,
            error=error,
            duration_ms=prepared.previous_ms + segment_ms,
            metrics=self.config.metrics_enabled,
        )
        return self._result(await self.store.get_execution(prepared.execution_id), started_at, t0)

    def _result(self, record: Any, started_at: Any, t0: float) -> RunResult:
        return RunResult(
            execution_id=record.id,
            status=record.status,
            output=record.output,
            error=record.error,
            started_at=started_at,
            completed_at=utcnow(),
            duration_ms=int((time.perf_counter() - t0) * 1000),
            runner_type=self.runner_type,
            topology_name=record.topology_name,
            correlation_id=record.correlation_id,
        )


class _Progress:
    """Progress of a flow, from the invocation rows its step processes record: the same
    `InvocationEvent`s a local run emits (`cached` for the checkpoints a resume starts from,
    then `completed` or `failed` per row), read incrementally by row id while the flow runs."""

    def __init__(
        self,
        store: Any,
        ident: uuid.UUID,
        on_event: EventHandler | None,
        prepared: PreparedRun,
    ) -> None:
        self.store = store
        self.ident = ident
        self.on_event = on_event
        kind = TopologyRegistry.get(prepared.kind.type)
        self.total = kind.estimate(prepared.config, list(prepared.agents))
        self.cached = list(prepared.checkpoints)
        self.after = 0
        self.done: set[str] = set()

    async def follow(self) -> None:
        if self.on_event is None:
            return
        while True:
            await self.poll()
            await asyncio.sleep(POLL_SECONDS)

    async def poll(self) -> None:
        if self.on_event is None:
            return
        for key in self.cached:
            self.done.add(key)
            await self._emit("cached", key, key.rsplit("/", 1)[-1], "", 0, None, None)
        self.cached = []
        for row in await self.store.invocations_after(self.ident, self.after):
            self.after = max(self.after, row.id or 0)
            completed = row.status == "completed"
            if completed:
                self.done.add(row.key)
            await self._emit(
                "completed" if completed else "failed",
                row.key,
                row.slot,
                row.agent_name,
                row.attempt,
                row.duration_ms,
                row.error,
            )

    async def _emit(
        self,
        kind: Any,
        key: str,
        slot: str,
        agent: str,
        attempt: int,
        duration_ms: float | None,
        error: str | None,
    ) -> None:
        assert self.on_event is not None
        done = len(self.done)
        event = InvocationEvent(
            kind=kind,
            execution_id=self.ident,
            key=key,
            slot=slot,
            agent=agent,
            attempt=attempt,
            done=done,
            total=max(self.total, done),
            duration_ms=duration_ms,
            error=error,
        )
        await deliver(self.on_event, event)


class _FlowFile(dict[str, Any]):
    """The execution's flow file and Metaflow run id, and whether this run wrote the file."""

    def __init__(self, info: Mapping[str, Any], *, written: bool = False) -> None:
        super().__init__(info)
        self.written = written


def _run_id(running: Any) -> str | None:
    try:
        return str(running.run.id)
    except Exception:  # the run object needs Metaflow's metadata; the id is a convenience
        return None


def _last_error(stderr: str) -> str | None:
    """The most useful line of a failed run's output: the last exception message."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Failed)\b", line) or "Error:" in line:
            return line[:2000]
    return lines[-1][:2000] if lines else None
