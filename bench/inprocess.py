"""In-process figures: orchestration overhead, parallel efficiency and persistence throughput.

Model calls go to the `function` provider. Each provider function adds the time spent inside
it to `PROVIDER_SECONDS`, so a run's overhead is its wall time minus that: what qmcp itself adds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rows import Row, fit_line, median

PROVIDER_SECONDS = [0.0]
CALLS: list[tuple[float, float]] = []  # (start, end) of each latency call, for the timeline
INSTANT = "bench_instant"
SLEEPY = "bench_sleepy"
LATENCY_SECONDS = 0.05


def instant(request: Any) -> str:
    """A model that answers at once."""
    t0 = time.perf_counter()
    text = "ok"
    PROVIDER_SECONDS[0] += time.perf_counter() - t0
    return text


async def sleepy(request: Any) -> str:
    """A model with 50 ms of latency, as an async function (it yields the event loop)."""
    t0 = time.perf_counter()
    await asyncio.sleep(LATENCY_SECONDS)
    t1 = time.perf_counter()
    PROVIDER_SECONDS[0] += t1 - t0
    CALLS.append((t0, t1))
    return "ok"


def register() -> None:
    from qmcp.agentframework.llm import register_function

    register_function(INSTANT, instant)
    register_function(SLEEPY, sleepy)


def topology(kind: str, members: int, model: str) -> tuple[Any, dict[str, Any]]:
    """A pipeline of `members` stages or an ensemble of `members` (concat), all on `model`."""
    from qmcp.agentframework.models import (
        AgentConfig,
        AgentRole,
        AgentType,
        ModelConfig,
        Topology,
        TopologyType,
    )

    config = AgentConfig(model_config_obj=ModelConfig(provider="function", model=model))
    data = config.model_dump(mode="json")
    if kind == "pipeline":
        slots = [f"stage_{i}" for i in range(members)]
        top = Topology(name="bench_pipeline", topology_type=TopologyType.PIPELINE, config={})
    else:
        slots = [f"ensemble_{i}" for i in range(members)]
        top = Topology(
            name="bench_ensemble",
            topology_type=TopologyType.ENSEMBLE,
            config={"aggregation_method": "concat"},
        )
    agents = {s: AgentType(name=f"bench_{s}", role=AgentRole.EXECUTOR, config=data) for s in slots}
    return top, agents


@dataclass
class Timing:
    wall: float  # median wall time of a run, seconds
    overhead: float  # median (wall - provider time) of a run, seconds


async def one_run(runner: Any, top: Any, agents: dict[str, Any]) -> tuple[float, float]:
    """(wall, wall - provider time) of one run, in seconds."""
    PROVIDER_SECONDS[0] = 0.0
    t0 = time.perf_counter()
    result = await runner.run(top, agents, {"prompt": "x"})
    wall = time.perf_counter() - t0
    if result.status != "completed":
        raise RuntimeError(f"benchmark run failed: {result.error}")
    return wall, wall - PROVIDER_SECONDS[0]


async def time_sizes(
    runner: Any, kind: str, sizes: list[int], model: str, rounds: int
) -> dict[int, Timing]:
    """Median timings of runs of each size, interleaved round by round after warm-up runs,
    so that a slow spell of the machine falls on every size alike."""
    built = {size: topology(kind, size, model) for size in sizes}
    samples: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    for round_ in range(rounds + 3):
        for size, (top, agents) in built.items():
            sample = await one_run(runner, top, agents)
            if round_ >= 3:
                samples[size].append(sample)
    return {
        size: Timing(median([w for w, _ in got]), median([o for _, o in got]))
        for size, got in samples.items()
    }


@dataclass
class Fit:
    fixed: float  # seconds per run
    marginal: float  # seconds per invocation


def make_runner(name: str, db: str, checkpoint: bool, limit: int = 10) -> Any:
    from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig

    config = RunConfig(checkpoint_enabled=checkpoint)
    if name == "local":
        return LocalRunner(config=config, db_url=db)
    return AsyncRunner(db_url=db, max_concurrent=limit, config=config)


async def overhead(tmp: Path, quick: bool) -> tuple[list[Row], dict[tuple[str, str, bool], Fit]]:
    """Per-invocation overhead of each runner, kind and checkpoint setting.

    Three sizes per configuration (1, n, 10n invocations) give the per-run fixed cost (intercept)
    and the marginal cost per invocation (slope) besides the all-in figure at size n.
    """
    rounds = 20 if quick else 80
    rows: list[Row] = []
    fits: dict[tuple[str, str, bool], Fit] = {}
    for checkpoint in (False, True):
        label = "durable" if checkpoint else "no checkpoint"
        target = 300.0 if checkpoint else 50.0
        for runner_name in ("local", "async"):
            db = f"sqlite+aiosqlite:///{tmp}/overhead_{runner_name}_{label.replace(' ', '_')}.db"
            runner = make_runner(runner_name, db, checkpoint)
            for kind, n in (("pipeline", 3), ("ensemble", 10)):
                timings = await time_sizes(runner, kind, [1, n, 10 * n], INSTANT, rounds)
                fixed, marginal = fit_line([(m, t.overhead) for m, t in timings.items()])
                fits[(runner_name, kind, checkpoint)] = Fit(fixed, marginal)
                at_n = timings[n]
                name = f"overhead {kind}({n}) {runner_name}, {label}"
                rows.append(
                    Row(
                        f"{name}: per invocation, all-in",
                        at_n.overhead / n * 1e6,
                        "µs",
                        target,
                        note=f"(wall - provider) / {n}; run wall {at_n.wall * 1e3:.2f} ms",
                    )
                )
                rows.append(
                    Row(
                        f"{name}: marginal per invocation",
                        marginal * 1e6,
                        "µs",
                        target,
                        note=f"slope over 1/{n}/{10 * n} invocations: "
                        + ", ".join(f"{t.overhead * 1e3:.2f}" for t in timings.values())
                        + " ms",
                    )
                )
                rows.append(Row(f"{name}: fixed per run", fixed * 1e6, "µs", note="intercept"))
    return rows, fits


async def parallel(tmp: Path, quick: bool, fits: dict[tuple[str, str, bool], Fit]) -> list[Row]:
    """Ten 50 ms members under AsyncRunner: wall time as a ratio to the ideal schedule.

    The timeline says where the time beyond the ideal goes: before the first model call starts,
    and after the last one ends (the rest is spent between calls, on the event loop's one thread).
    """
    rows: list[Row] = []
    repeat = 5 if quick else 15
    top, agents = topology("ensemble", 10, SLEEPY)
    fixed = fits[("async", "ensemble", True)].fixed
    for limit, waves in ((10, 1), (4, 3)):
        ideal = waves * LATENCY_SECONDS
        runner = make_runner("async", f"sqlite+aiosqlite:///{tmp}/parallel_{limit}.db", True, limit)
        walls, before, after = [], [], []
        for round_ in range(repeat + 2):
            CALLS.clear()
            t0 = time.perf_counter()
            run_wall, _ = await one_run(runner, top, agents)
            if round_ < 2:
                continue  # warm-up
            walls.append(run_wall)
            before.append(min(s for s, _ in CALLS) - t0)
            after.append(t0 + run_wall - max(e for _, e in CALLS))
        wall = median(walls)
        floor = await asyncio_floor(limit, repeat)
        rows.append(
            Row(
                f"parallel: 10 members x 50 ms, max_concurrent {limit}: wall / ideal",
                wall / ideal,
                "x",
                1.03,
                note=f"wall {wall * 1e3:.1f} ms vs {ideal * 1e3:.0f} ms: first call starts after "
                f"{median(before) * 1e3:.2f} ms, run returns {median(after) * 1e3:.2f} ms after "
                f"the last call ends; bare asyncio {floor / ideal:.3f}x",
            )
        )
        rows.append(
            Row(
                f"parallel: 10 members x 50 ms, max_concurrent {limit}: without fixed cost",
                (wall - fixed) / ideal,
                "x",
                1.03,
                note=f"(wall - {fixed * 1e3:.2f} ms fixed cost per run) / ideal; durable runs",
            )
        )
    return rows


async def asyncio_floor(limit: int, repeat: int) -> float:
    """The same schedule with nothing but asyncio: the timer's own overshoot."""
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        async with gate:
            await asyncio.sleep(LATENCY_SECONDS)

    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(10)))
        walls.append(time.perf_counter() - t0)
    return median(walls)


async def persistence(tmp: Path, quick: bool) -> list[Row]:
    """Invocation rows per second through Store.record_invocations: one commit each, batched."""
    from qmcp.agentframework.models import Execution, InvocationStatus, utcnow
    from qmcp.agentframework.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp}/persistence.db")
    await store.init()
    execution = Execution(topology_name="bench", runner_type="local")
    await store.add_execution(execution)

    def invocation(i: int) -> dict[str, Any]:
        now = utcnow()  # the engine's row, field for field
        return {
            "execution_id": execution.id,
            "key": f"stage-{i}/s-{uuid.uuid4().hex[:6]}",
            "slot": "s",
            "agent_name": "bench_agent",
            "provider": "function",
            "model": f"function:{INSTANT}",
            "input": {"system": "You are an executor.", "messages": ["x"]},
            "attempt": 1,
            "started_at": now,
            "completed_at": now,
            "duration_ms": 0.01,
            "input_tokens": 1,
            "output_tokens": 1,
            "cost_usd": None,
            "status": InvocationStatus.COMPLETED,
            "output": {"content": "ok", "agent": "bench_agent", "slot": "s"},
            "error": None,
        }

    count = 1000 if quick else 5000
    rows: list[Row] = []
    for batch in (1, 10, 100):
        made = [invocation(i) for i in range(count)]
        t0 = time.perf_counter()
        for i in range(0, count, batch):
            await store.record_invocations(made[i : i + batch])
        rate = count / (time.perf_counter() - t0)
        rows.append(
            Row(
                f"persistence: invocation rows/s, {'one row' if batch == 1 else batch} per commit",
                rate,
                "rows/s",
                better="higher",
                note=f"{1e6 / rate:.1f} µs per row"
                + (", each its own transaction, as checkpointing writes" if batch == 1 else ""),
            )
        )
    return rows
