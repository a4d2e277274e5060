"""In-process figures: qmcp against LangGraph, orchestration overhead, parallel efficiency and
persistence throughput.

Model calls go to the `function` provider (qmcp) or straight to the same function from a node
(LangGraph). Each model function adds the time spent inside it to `PROVIDER_SECONDS`, so a run's
overhead is its wall time minus that: what the orchestration layer itself adds.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rows import Row, fit_line, median

PROVIDER_SECONDS = [0.0]
CALLS: list[tuple[float, float]] = []  # (start, end) of each latency call, for the timeline
INSTANT = "bench_instant"
INSTANT_ASYNC = "bench_instant_async"
SLEEPY = "bench_sleepy"
LATENCY_SECONDS = 0.05


def instant(request: Any) -> str:
    """A model that answers at once, as a plain function (qmcp answers it inline)."""
    t0 = time.perf_counter()
    text = "ok"
    PROVIDER_SECONDS[0] += time.perf_counter() - t0
    return text


async def instant_async(request: Any) -> str:
    """A model that answers at once, as an async function (as a real provider's call is)."""
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
    register_function(INSTANT_ASYNC, instant_async)
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


def make_runner(name: str, db: str, checkpoint: bool, limit: int = 10) -> Any:
    from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig

    config = RunConfig(checkpoint_enabled=checkpoint)
    if name == "local":
        return LocalRunner(config=config, db_url=db)
    return AsyncRunner(db_url=db, max_concurrent=limit, config=config)


async def overhead(tmp: Path, quick: bool) -> list[Row]:
    """Per-invocation overhead of each runner, kind and checkpoint setting.

    Three sizes per configuration (1, n, 10n invocations) give the per-run fixed cost (intercept)
    and the marginal cost per invocation (slope) besides the all-in figure at size n.
    """
    rounds = 20 if quick else 80
    rows: list[Row] = []
    for checkpoint in (False, True):
        label = "durable" if checkpoint else "no checkpoint"
        for runner_name in ("local", "async"):
            db = f"sqlite+aiosqlite:///{tmp}/overhead_{runner_name}_{label.replace(' ', '_')}.db"
            runner = make_runner(runner_name, db, checkpoint)
            for kind, n in (("pipeline", 3), ("ensemble", 10)):
                timings = await time_sizes(runner, kind, [1, n, 10 * n], INSTANT, rounds)
                fixed, marginal = fit_line([(m, t.overhead) for m, t in timings.items()])
                at_n = timings[n]
                name = f"overhead {kind}({n}) {runner_name}, {label}"
                rows.append(
                    Row(
                        f"{name}: per invocation, all-in",
                        at_n.overhead / n * 1e6,
                        "µs",
                        note=f"(wall - provider) / {n}; run wall {at_n.wall * 1e3:.2f} ms",
                    )
                )
                rows.append(
                    Row(
                        f"{name}: marginal per invocation",
                        marginal * 1e6,
                        "µs",
                        note=f"slope over 1/{n}/{10 * n} invocations: "
                        + ", ".join(f"{t.overhead * 1e3:.2f}" for t in timings.values())
                        + " ms",
                    )
                )
                rows.append(Row(f"{name}: fixed per run", fixed * 1e6, "µs", note="intercept"))
    return rows


async def parallel(tmp: Path, quick: bool) -> list[Row]:
    """Fan-outs of 50 ms model calls under a concurrency limit: wall time over the ideal
    schedule, ceil(members / limit) x 50 ms, for qmcp and for LangGraph in the same run.

    qmcp: an ensemble (`concat`) on AsyncRunner(max_concurrent=limit). LangGraph: `members`
    parallel nodes and a join, `max_concurrency=limit` in the run's config. Both with and without
    checkpointing (LangGraph: AsyncSqliteSaver, durability "sync", same `synchronous`). The note
    gives qmcp's timeline (when the first model call starts, how long the run takes to return
    after the last one ends) and the ratio bare asyncio reaches on the same schedule.
    """
    import langgraph_graphs as lg

    repeat = 5 if quick else 15
    db = f"sqlite+aiosqlite:///{tmp}/parallel.db"
    settings = await qmcp_sqlite_settings(db)
    saver, connection, lg_settings = await lg.durable_saver(
        tmp / "parallel_langgraph.db", settings["synchronous"]
    )
    rows: list[Row] = []
    try:
        for members, limit in ((10, 10), (100, 20)):
            ideal = math.ceil(members / limit) * LATENCY_SECONDS
            top, agents = topology("ensemble", members, SLEEPY)
            runs: dict[str, Run] = {}
            timeline: dict[str, list[tuple[float, float, float]]] = {}
            for durable in (True, False):
                label = "durable" if durable else "plain"
                runner = make_runner("async", db, durable, limit)
                runs[f"qmcp {label}"] = qmcp_run(runner, top, agents)
                graph = lg.fan_out(members, sleepy, saver if durable else None)
                runs[f"langgraph {label}"] = langgraph_run(graph, durable, members, limit)
            walls: dict[str, list[float]] = {name: [] for name in runs}
            for round_ in range(repeat + 2):
                for name in rotate(list(runs), round_):
                    CALLS.clear()
                    t0 = time.perf_counter()
                    await runs[name]()
                    wall = time.perf_counter() - t0
                    if round_ < 2:
                        continue  # warm-up
                    walls[name].append(wall)
                    if name.startswith("qmcp"):
                        first, last = min(s for s, _ in CALLS), max(e for _, e in CALLS)
                        # how far the wave's calls start behind the first: the per-call work
                        # done one call at a time on the event loop's thread
                        spread = sorted(s for s, _ in CALLS)[limit - 1] - first
                        timeline.setdefault(name, []).append((first - t0, spread, t0 + wall - last))
            floor = await asyncio_floor(members, limit, repeat)
            wall = {name: median(values) for name, values in walls.items()}
            for label in ("durable", "plain"):
                mine = wall[f"qmcp {label}"]
                marks = timeline[f"qmcp {label}"]
                setting = (
                    f"checkpointing on both (synchronous={settings['synchronous']}, LangGraph "
                    "durability 'sync')"
                    if label == "durable"
                    else "no checkpointing on either"
                )
                rows.append(
                    Row(
                        f"fan-out {members} x 50 ms, max_concurrent {limit}, {label}: wall / ideal",
                        mine / ideal,
                        "x",
                        1.03,
                        reference=wall[f"langgraph {label}"] / ideal,
                        versus="LangGraph",
                        note=f"qmcp {mine * 1e3:.1f} ms, LangGraph "
                        f"{wall[f'langgraph {label}'] * 1e3:.1f} ms, ideal {ideal * 1e3:.0f} ms; "
                        f"median of {repeat}, interleaved; {setting}; qmcp's first call starts "
                        f"{median([m[0] for m in marks]) * 1e3:.2f} ms in, the first wave's "
                        f"{limit}th call {median([m[1] for m in marks]) * 1e3:.2f} ms after it, "
                        f"the run returns {median([m[2] for m in marks]) * 1e3:.2f} ms after the "
                        f"last call ends; bare asyncio {floor / ideal:.3f}x",
                    )
                )
    finally:
        await connection.close()
    if lg_settings["synchronous"] != settings["synchronous"]:
        raise RuntimeError(f"unequal SQLite settings: qmcp {settings}, LangGraph {lg_settings}")
    return rows


async def asyncio_floor(members: int, limit: int, repeat: int) -> float:
    """The same schedule with nothing but asyncio: the timer's own overshoot."""
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        async with gate:
            await asyncio.sleep(LATENCY_SECONDS)

    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(members)))
        walls.append(time.perf_counter() - t0)
    return median(walls)


# -- qmcp against LangGraph --------------------------------------------------------------------

Run = Callable[[], Awaitable[None]]


def qmcp_run(runner: Any, top: Any, agents: dict[str, Any]) -> Run:
    async def run() -> None:
        result = await runner.run(top, agents, {"prompt": "x"})
        if result.status != "completed":
            raise RuntimeError(f"qmcp benchmark run failed: {result.error}")

    return run


def langgraph_run(
    graph: Any, durable: bool, outputs: int, limit: int | None = None, durability: str = "sync"
) -> Run:
    """A LangGraph run that checks its result: `outputs` member texts (0 for a pipeline)."""
    import langgraph_graphs as lg

    async def run() -> None:
        state = await lg.invoke(graph, durable, durability, limit)
        if not state["text"] or len(state["outputs"]) != outputs:
            raise RuntimeError(f"LangGraph benchmark run gave {state!r}")

    return run


def rotate(names: list[str], round_: int) -> list[str]:
    """The order of one round: each side goes first in turn."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


async def overhead_of(run: Run) -> float:
    """Seconds of one run spent outside the model function."""
    PROVIDER_SECONDS[0] = 0.0
    t0 = time.perf_counter()
    await run()
    return time.perf_counter() - t0 - PROVIDER_SECONDS[0]


async def interleaved(runs: dict[str, Run], rounds: int, warm: int = 5) -> dict[str, float]:
    """The median overhead of each side's runs; the sides take turns run by run, so a slow
    spell of the machine falls on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warm + rounds):
        for name in rotate(list(runs), round_):
            seconds = await overhead_of(runs[name])
            if round_ >= warm:
                samples[name].append(seconds)
    return {name: median(values) for name, values in samples.items()}


async def qmcp_sqlite_settings(db: str) -> dict[str, str]:
    """`synchronous` and `journal_mode` as qmcp's store sets them on its writing connection."""
    from langgraph_graphs import SYNCHRONOUS

    from qmcp.agentframework.store import Store
    from qmcp.agentframework.store.database import database_for

    store = Store(db)
    await store.init()
    # The store's writer engine (private): a new connection of it gets the store's PRAGMAs.
    raw = database_for(store.url)._sqlite_writer().engine.raw_connection()
    try:
        synchronous = raw.execute("PRAGMA synchronous").fetchone()[0]
        journal = raw.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        raw.close()
    return {"synchronous": SYNCHRONOUS.get(synchronous, str(synchronous)), "journal_mode": journal}


def per_invocation(seconds: dict[str, float], invocations: int) -> dict[str, float]:
    return {name: value / invocations * 1e6 for name, value in seconds.items()}


SHAPES = (("3-node pipeline", "pipeline", 3), ("10-member fan-out", "ensemble", 10))


async def versus(tmp: Path, quick: bool) -> list[Row]:
    """Overhead per model invocation, qmcp against LangGraph, plain and durable.

    qmcp: AsyncRunner(max_concurrent=10), a pipeline of 3 stages or an ensemble of 10 (`concat`).
    LangGraph: a StateGraph of 3 nodes in a line, or 10 parallel nodes and a join
    (`max_concurrency=10`). Every model call is the same instant async function. Figures are
    median (wall - time inside the model function) / invocations over many runs, the sides
    interleaved run by run. Durable: qmcp `checkpoint_enabled=True`; LangGraph AsyncSqliteSaver
    with durability "sync" (each step persisted before the next starts: the guarantee qmcp gives
    by committing each invocation before the run moves on) and `synchronous` set to the value
    qmcp's store uses, read back from both connections.
    """
    import langgraph_graphs as lg

    rounds = 60 if quick else 300
    db = f"sqlite+aiosqlite:///{tmp}/versus.db"
    settings = await qmcp_sqlite_settings(db)
    saver, connection, lg_settings = await lg.durable_saver(
        tmp / "versus_langgraph.db", settings["synchronous"]
    )
    if lg_settings != settings:
        raise RuntimeError(f"unequal SQLite settings: qmcp {settings}, LangGraph {lg_settings}")
    sqlite = (
        f"SQLite journal_mode={settings['journal_mode']}, synchronous={settings['synchronous']}"
    )
    plain = make_runner("async", db, False, 10)
    durable = make_runner("async", db, True, 10)
    method = f"median of {rounds} runs per side, interleaved"
    rows: list[Row] = []
    try:
        for shape, kind, n in SHAPES:
            top, agents = topology(kind, n, INSTANT_ASYNC)
            inline_top, inline_agents = topology(kind, n, INSTANT)
            limit = 10 if kind == "ensemble" else None
            outputs = n if kind == "ensemble" else 0

            def graph(checkpointer: Any = None, send: bool = False, kind: str = kind, n: int = n):
                if kind == "pipeline":
                    return lg.pipeline(n, instant_async, checkpointer)
                return lg.fan_out(n, instant_async, checkpointer, send)

            runs = {
                "qmcp": qmcp_run(plain, top, agents),
                "langgraph": langgraph_run(graph(), False, outputs, limit),
                "qmcp inline": qmcp_run(plain, inline_top, inline_agents),
            }
            if kind == "ensemble":
                runs["langgraph send"] = langgraph_run(graph(send=True), False, outputs, limit)
            got = {
                name: seconds / n * 1e6
                for name, seconds in (await interleaved(runs, rounds)).items()
            }
            extra = (
                f"; qmcp with a plain (sync) function, answered inline: {got['qmcp inline']:.0f} µs"
            )
            if "langgraph send" in got:
                extra += f"; LangGraph with Send to one node: {got['langgraph send']:.0f} µs"
            rows.append(
                Row(
                    f"plain overhead per invocation, {shape}",
                    got["qmcp"],
                    "µs",
                    0.5,
                    reference=got["langgraph"],
                    versus="LangGraph",
                    on_ratio=True,
                    note=f"no checkpointing on either; {method}{extra}",
                )
            )
            runs = {
                "qmcp": qmcp_run(durable, top, agents),
                "langgraph": langgraph_run(graph(saver), True, outputs, limit),
                "langgraph async": langgraph_run(graph(saver), True, outputs, limit, "async"),
            }
            got = {
                name: seconds / n * 1e6
                for name, seconds in (await interleaved(runs, rounds)).items()
            }
            rows.append(
                Row(
                    f"durable overhead per invocation, {shape}",
                    got["qmcp"],
                    "µs",
                    0.1,
                    reference=got["langgraph"],
                    versus="LangGraph",
                    on_ratio=True,
                    note=f"{sqlite} on both (read back from each connection); qmcp "
                    "checkpoint_enabled=True, LangGraph AsyncSqliteSaver durability 'sync'; "
                    f"{method}; LangGraph with its default durability 'async': "
                    f"{got['langgraph async']:.0f} µs "
                    f"(ratio {got['qmcp'] / got['langgraph async']:.2f})",
                )
            )
    finally:
        await connection.close()
    return rows


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
