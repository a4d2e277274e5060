"""MetaflowRunner: topologies as generated Metaflow flows that run locally or scale out.

A generated flow follows the topology's shape (pipeline: one step per stage; ensemble and the
fan-outs of cross-check, chain of command and delegation: `foreach` + join; debate: one step per
round) and its steps call `metaflow_helpers`, which run the same topology program as every other
runner over the outcomes recorded so far, so one topology gives the same output everywhere.
No user text is ever written into the flow's source: the topology, its agents and the run config
travel as one JSON document, embedded as an ASCII string literal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.models import AgentType, ExecutionStatus, Topology, TopologyType, utcnow
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
from qmcp.agentframework.runners.engine import EventHandler, InvocationEvent
from qmcp.agentframework.topologies import TopologyRegistry

log = logging.getLogger("qmcp.run")
Environment = Literal["local", "kubernetes", "batch"]
ENVIRONMENTS = ("local", "kubernetes", "batch")
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Segment:
    """A part of a flow: `inline` answers its calls in one step; `fanout` is foreach + join."""

    mode: Literal["inline", "fanout"]
    name: str
    patterns: list[str]


def flow_shape(topology_type: TopologyType, config: Any, slots: list[str]) -> list[Segment]:
    """The steps a topology kind becomes, ending with `finish`, which answers anything left."""
    shape: list[Segment]
    if topology_type is TopologyType.PIPELINE:
        stages = list(config.stages or slots)
        shape = [Segment("inline", f"stage_{i}", [f"stage-{i}/*"]) for i in range(len(stages))]
    elif topology_type is TopologyType.ENSEMBLE:
        shape = [Segment("fanout", "members", ["ensemble_*"])]
    elif topology_type is TopologyType.CROSS_CHECK:
        shape = [
            Segment("inline", "primary", ["primary"]),
            Segment("fanout", "checkers", ["checker_*"]),
        ]
    elif topology_type is TopologyType.DEBATE:
        rounds = int(getattr(config, "max_rounds", 1))
        shape = [Segment("inline", f"round_{r}", [f"round-{r}/*"]) for r in range(1, rounds + 1)]
    elif topology_type is TopologyType.CHAIN_OF_COMMAND:
        shape = [
            Segment("inline", "plan", ["commander/plan*"]),
            Segment("fanout", "lieutenants", ["lieutenant_*"]),
            Segment("fanout", "workers", ["worker_*"]),
        ]
    elif topology_type is TopologyType.DELEGATION:
        shape = [
            Segment("inline", "route", ["coordinator/route"]),
            Segment("fanout", "specialists", ["specialist/*"]),
        ]
    else:
        shape = []
    return [*shape, Segment("inline", "finish", ["*"])]


def flow_class_name(topology_name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", topology_name)
    return "Qmcp" + "".join(w[:1].upper() + w[1:] for w in words)[:60] + "Flow"


def flow_file_stem(topology_name: str) -> str:
    stem = "_".join(re.findall(r"[A-Za-z0-9]+", topology_name)).lower()[:60]
    return stem or "topology"


def _literal(value: Any) -> str:
    """A Python literal for JSON data: `json.dumps`, then `ascii` — never raw user text."""
    return ascii(json.dumps(value, ensure_ascii=True, sort_keys=True))


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
        self.resources = dict(resources)

    def decorators(self) -> list[str]:
        if self.environment == "local":
            return []
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.resources.items()))
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
        shape = flow_shape(kind.type, config, list(agents))
        imports = "from metaflow import FlowSpec, JSONType, Parameter, current, step"
        if self.environment != "local":
            imports += f", retry, timeout, {self.environment}"
        out = [
            '"""A qmcp topology as a Metaflow flow (generated; regenerate instead of editing).',
            "",
            'Run it: python THIS_FILE.py run --input-json \'{"prompt": "..."}\'',
            "The topology, its agents and the run config are the JSON document SPEC.",
            '"""',
            "",
            "import json",
            "",
            imports,
            "",
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
        names = [f"s{i}_{segment.name}" for i, segment in enumerate(shape)]
        out += self._step(
            "start",
            [
                "from qmcp.agentframework.runners import metaflow_helpers as h",
                "self.state = h.begin(SPEC, self.input_json, self.execution_id, current.run_id)",
            ],
            names[0],
            decorated=False,
        )
        for index, segment in enumerate(shape):
            name = names[index]
            following = names[index + 1] if index + 1 < len(shape) else "end"
            patterns = f"json.loads({_literal(segment.patterns)})"
            head = "from qmcp.agentframework.runners import metaflow_helpers as h"
            if segment.mode == "inline":
                out += self._step(
                    name,
                    [head, f"self.state = h.advance(SPEC, self.state, {patterns})"],
                    following,
                )
            else:
                out += self._step(
                    name,
                    [head, f"self.batch = h.plan_batch(SPEC, self.state, {patterns})"],
                    f"{name}_invoke",
                    foreach="batch",
                )
                out += self._step(
                    f"{name}_invoke",
                    [head, "self.result = h.invoke_pending(SPEC, self.state, self.input)"],
                    f"{name}_join",
                )
                out += self._step(
                    f"{name}_join",
                    [
                        head,
                        "self.state = h.merge(inputs[0].state, [i.result for i in inputs])",
                    ],
                    following,
                    join=True,
                )
        out += [
            "    @step",
            "    def end(self):",
            "        from qmcp.agentframework.runners import metaflow_helpers as h",
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
        following: str,
        *,
        foreach: str | None = None,
        join: bool = False,
        decorated: bool = True,
    ) -> list[str]:
        lines = [f"    {d}" for d in (self.decorators() if decorated else [])]
        lines.append("    @step")
        lines.append(f"    def {name}(self{', inputs' if join else ''}):")
        lines += (
            [f"        {line}" for line in body[:1]] + [""] + [f"        {b}" for b in body[1:]]
        )
        target = f"self.{following}"
        lines.append(
            f'        self.next({target}, foreach="{foreach}")'
            if foreach
            else f"        self.next({target})"
        )
        lines.append("")
        return lines


@runner
class MetaflowRunner(BaseRunner):
    """Generated Metaflow flows: local runs, or Kubernetes / AWS Batch with a shared datastore."""

    runner_type = "metaflow"

    def __init__(
        self,
        output_dir: str | os.PathLike[str] = "./generated_flows",
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
        self.output_dir = Path(output_dir)
        self.environment = environment
        self.resources = dict(resources or {"cpu": 1, "memory": 4096})

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

    def _env(self) -> dict[str, str]:
        env = {"QMCP_DATABASE_URL": self.store.url}
        if not (os.environ.get("USERNAME") or os.environ.get("METAFLOW_USER")):
            env["USERNAME"] = "qmcp"  # Metaflow refuses to run as root without a user name
        return env

    async def finish(
        self, prepared: PreparedRun, *, on_event: EventHandler | None = None
    ) -> RunResult:
        """Run the flow (or resume its last Metaflow run) and read the outcome from the database."""
        execution = prepared.execution
        info = dict(execution.snapshot.get("metaflow") or {})
        if "flow_file" not in info:
            topology, agents = restore(execution.snapshot)
            # A unique file per generation: Metaflow caches flows by path.
            stem = f"{flow_file_stem(topology.name)}_flow_{execution.id.hex[:12]}.py"
            info["flow_file"] = str(
                self.write_flow(topology, agents, self.output_dir / stem).resolve()
            )
            await self._remember(execution.id, info)
        started_at, t0 = utcnow(), time.perf_counter()
        from metaflow import Runner

        flow = Runner(info["flow_file"], show_output=False, pylint=False, env=self._env())
        try:
            if info.get("run_id"):
                running = await flow.async_resume(origin_run_id=info["run_id"])
            else:
                running = await flow.async_run(
                    input_json=prepared.input, execution_id=str(execution.id)
                )
        except Exception as exc:
            error = f"Metaflow could not start the flow: {type(exc).__name__}: {exc}"
            return await self._record_failure(execution.id, error, started_at, t0)
        progress = asyncio.create_task(self._report(execution.id, on_event, prepared))
        try:
            await running.wait(timeout=self.config.timeout_seconds)
        except (asyncio.CancelledError, KeyboardInterrupt):
            running.command_obj.kill()
            await self._remember(
                execution.id, {**info, "run_id": _run_id(running) or info.get("run_id")}
            )
            await self.store.update_execution(
                execution.id,
                status=ExecutionStatus.CANCELLED,
                error="cancelled",
                completed_at=utcnow(),
                owner=None,
            )
            raise
        finally:
            progress.cancel()
        run_id = _run_id(running)
        if run_id:
            await self._remember(execution.id, {**info, "run_id": run_id})
        record = await self.store.get_execution(execution.id)
        if record.status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED) and (
            record.status == ExecutionStatus.COMPLETED or record.error
        ):
            return self._result(record, started_at, t0)
        if running.status == "timeout":
            error = (
                f"timed out after {self.config.timeout_seconds} s (RunConfig.timeout_seconds); "
                f"resume it with `qmcp executions resume {execution.id}`"
            )
        else:
            error = _last_error(running.stderr) or f"the Metaflow run ended as {running.status}"
        return await self._record_failure(execution.id, error, started_at, t0)

    async def _remember(self, ident: uuid.UUID, info: dict[str, Any]) -> None:
        """Keep the flow file and the Metaflow run id on the execution, for resume."""
        record = await self.store.get_execution(ident)
        merged = {**record.snapshot.get("metaflow", {}), **{k: v for k, v in info.items() if v}}
        await self.store.update_execution(ident, snapshot={**record.snapshot, "metaflow": merged})

    async def _record_failure(
        self, ident: uuid.UUID, error: str, started_at: Any, t0: float
    ) -> RunResult:
        totals = await self.store.totals(ident)
        await self.store.update_execution(
            ident,
            status=ExecutionStatus.FAILED,
            error=error,
            completed_at=utcnow(),
            owner=None,
            **totals,
        )
        return self._result(await self.store.get_execution(ident), started_at, t0)

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

    async def _report(
        self, ident: uuid.UUID, on_event: EventHandler | None, prepared: PreparedRun
    ) -> None:
        """Turn invocation rows the flow's tasks record into progress events."""
        if on_event is None:
            return
        kind = TopologyRegistry.get(prepared.kind.type)
        total = kind.estimate(prepared.config, list(prepared.agents))
        seen: set[int] = set()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            for row in await self.store.invocations(ident):
                if row.id in seen or row.id is None:
                    continue
                seen.add(row.id)
                done = sum(1 for _ in seen)
                event = InvocationEvent(
                    kind="completed" if row.status == "completed" else "failed",
                    execution_id=ident,
                    key=row.key,
                    slot=row.slot,
                    agent=row.agent_name,
                    attempt=row.attempt,
                    done=done,
                    total=max(total, done),
                    duration_ms=row.duration_ms,
                    error=row.error,
                )
                result = on_event(event)
                if asyncio.iscoroutine(result):
                    await result


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
