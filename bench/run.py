"""Benchmarks: what qmcp adds on top of model calls, measured on this machine.

    python bench/run.py [--quick]

Prints a table with each figure, its target and whether it holds, writes
bench/results/latest.json, and compares with the previous result file when there is one.
Model calls are the `function` provider (instant, or an async sleep for latency), so every
figure is the orchestration layer's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
Row = dict[str, Any]


def row(name: str, value: float, unit: str, target: float | None = None, note: str = "") -> Row:
    return {"name": name, "value": round(value, 3), "unit": unit, "target": target, "note": note}


# -- overhead per invocation -----------------------------------------------------------------


def instant(request: Any) -> str:
    return "ok"


async def sleepy(request: Any) -> str:
    await asyncio.sleep(0.05)
    return "ok"


def topology(kind: str, members: int, model: str) -> tuple[Any, dict[str, Any]]:
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


def runs_of(runner: Any, top: Any, agents: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
    return lambda: runner.run(top, agents, {"prompt": "x"})


async def time_runs(make: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median wall time of `repeat` runs, after two warm-up runs."""
    for _ in range(2):
        await make()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await make()
        times.append(time.perf_counter() - started)
        assert result.status == "completed", result.error
    return statistics.median(times)


async def overhead(tmp: Path, quick: bool) -> list[Row]:
    from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig

    repeat = 15 if quick else 60
    rows = []
    for checkpoint in (False, True):
        for runner_name in ("local", "async"):
            db = f"sqlite+aiosqlite:///{tmp}/overhead_{runner_name}_{checkpoint}.db"
            config = RunConfig(checkpoint_enabled=checkpoint)
            runner = (
                LocalRunner(config=config, db_url=db)
                if runner_name == "local"
                else AsyncRunner(db_url=db, max_concurrent=10, config=config)
            )
            for kind, members in (("pipeline", 3), ("ensemble", 10)):
                top, agents = topology(kind, members, "bench_instant")
                wall = await time_runs(runs_of(runner, top, agents), repeat)
                # The marginal cost: a run of 10x the members, minus this one, per extra member.
                big_top, big_agents = topology(kind, members * 10, "bench_instant")
                big = await time_runs(runs_of(runner, big_top, big_agents), max(8, repeat // 3))
                marginal = (big - wall) / (members * 9) * 1e6
                target = 300.0 if checkpoint else 50.0
                label = "durable" if checkpoint else "no checkpoint"
                rows.append(
                    row(
                        f"overhead/invocation {kind}({members}) {runner_name}, {label}",
                        marginal,
                        "µs",
                        target,
                        f"whole run {wall * 1000:.2f} ms = {wall / members * 1e6:.0f} µs per "
                        "invocation with the run's fixed cost",
                    )
                )
    return rows


async def parallel(tmp: Path, quick: bool) -> list[Row]:
    from qmcp.agentframework.runners import AsyncRunner

    rows = []
    for limit, ideal in ((10, 0.05), (4, 0.15)):
        runner = AsyncRunner(db_url=f"sqlite+aiosqlite:///{tmp}/parallel.db", max_concurrent=limit)
        top, agents = topology("ensemble", 10, "bench_sleepy")
        wall = await time_runs(runs_of(runner, top, agents), 5 if quick else 15)
        rows.append(
            row(
                f"parallel efficiency: 10 members of 50 ms, max_concurrent {limit}",
                (wall / ideal - 1) * 100,
                "% over ideal",
                3.0,
                f"wall {wall * 1000:.1f} ms, ideal {ideal * 1000:.0f} ms",
            )
        )
    return rows


async def persistence(tmp: Path, quick: bool) -> list[Row]:
    import uuid

    from qmcp.agentframework.models import Execution, InvocationStatus, utcnow
    from qmcp.agentframework.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp}/persist.db")
    execution = Execution(topology_name="bench", runner_type="local")
    await store.add_execution(execution)
    now = utcnow()

    def make(i: int) -> dict[str, Any]:
        return {
            "execution_id": execution.id,
            "key": f"k{i}-{uuid.uuid4().hex[:6]}",
            "slot": "s",
            "agent_name": "a",
            "provider": "function",
            "model": "function:x",
            "input": {"prompt": "hello"},
            "output": {"content": "world"},
            "error": None,
            "attempt": 1,
            "status": InvocationStatus.COMPLETED,
            "input_tokens": 3,
            "output_tokens": 2,
            "cost_usd": 0.0,
            "duration_ms": 0.1,
            "started_at": now,
            "completed_at": now,
        }

    count = 500 if quick else 3000
    started = time.perf_counter()
    for i in range(count):
        await store.record_invocations([make(i)])
    single = count / (time.perf_counter() - started)
    batch = [make(i) for i in range(count)]
    started = time.perf_counter()
    for i in range(0, count, 100):
        await store.record_invocations(batch[i : i + 100])
    batched = count / (time.perf_counter() - started)
    return [
        row("invocations recorded per second, one commit each", single, "rows/s"),
        row("invocations recorded per second, batches of 100", batched, "rows/s"),
    ]


# -- MCP and CLI -----------------------------------------------------------------------------


def env(db: str) -> dict[str, str]:
    return {**os.environ, "QMCP_DATABASE_URL": db, "QMCP_LOG_LEVEL": "WARNING"}


async def mcp(tmp: Path, quick: bool) -> list[Row]:
    from mcp import Client, StdioServerParameters

    from qmcp.agentframework import service
    from qmcp_server.server import build_server

    db = f"sqlite+aiosqlite:///{tmp}/mcp.db"
    await service.create_agent("b_plan", "planner", model="offline", db_url=db)
    await service.create_agent("b_do", "executor", model="offline", db_url=db)
    await service.create_topology("b_pipe", "pipeline", {"a": "b_plan", "b": "b_do"}, db_url=db)
    rows = []
    cold = []
    for _ in range(3 if quick else 5):
        started = time.perf_counter()
        params = StdioServerParameters(command=str(BIN / "qmcp-server"), env=env(db), cwd=str(tmp))
        async with Client(params, mode="legacy") as client:
            await client.list_tools()
            cold.append(time.perf_counter() - started)
    rows.append(row("stdio cold start to first tools/list", statistics.median(cold), "s", 1.5))
    args = {"topology": "b_pipe", "input": {"prompt": "hi"}}
    calls = 10 if quick else 20

    async def round_trips(client: Client) -> float:
        for _ in range(2):
            await client.call_tool("topologies_run", args)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            result = await client.call_tool("topologies_run", args)
            times.append(time.perf_counter() - started)
            assert not result.is_error
        return statistics.median(times)

    async with Client(build_server(db), mode="legacy") as client:
        rows.append(
            row("topologies_run round trip, in memory", await round_trips(client) * 1000, "ms")
        )
    params = StdioServerParameters(command=str(BIN / "qmcp-server"), env=env(db), cwd=str(tmp))
    async with Client(params, mode="legacy") as client:
        rows.append(row("topologies_run round trip, stdio", await round_trips(client) * 1000, "ms"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "qmcp"), "serve", "--transport", "http", "--port", str(port)],
        env=env(db),
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
            rows.append(
                row("topologies_run round trip, HTTP", await round_trips(client) * 1000, "ms")
            )
    finally:
        server.terminate()
        server.wait(10)
    return rows


def cli(tmp: Path, quick: bool) -> list[Row]:
    db = f"sqlite+aiosqlite:///{tmp}/cli.db"
    rows = []
    for label, args, target in (
        ("qmcp --help", ["--help"], 0.3),
        ("qmcp agents list", ["agents", "list"], None),
    ):
        times = []
        for _ in range(3 if quick else 7):
            started = time.perf_counter()
            subprocess.run([str(BIN / "qmcp"), *args], env=env(db), capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        rows.append(row(label, statistics.median(times), "s", target))
    return rows


def metaflow(tmp: Path, quick: bool) -> list[Row]:
    """Per-task cost the qmcp helpers add over a trivial Metaflow step."""
    trivial = tmp / "trivial_flow.py"
    trivial.write_text(
        "from metaflow import FlowSpec, step\n\n"
        "class TrivialFlow(FlowSpec):\n"
        "    @step\n    def start(self):\n        self.next(self.a)\n"
        "    @step\n    def a(self):\n        self.x = 1\n        self.next(self.end)\n"
        "    @step\n    def end(self):\n        pass\n\n"
        'if __name__ == "__main__":\n    TrivialFlow()\n'
    )
    db = f"sqlite+aiosqlite:///{tmp}/metaflow.db"
    generated = subprocess.run(
        [sys.executable, "-c", GENERATE, str(tmp / "qmcp_flow.py")],
        env=env(db),
        check=True,
        capture_output=True,
        text=True,
    )
    del generated
    environment = {
        **env(db),
        "USERNAME": "bench",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp / "mf"),
    }

    def run(path: Path, *extra: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(path), "--quiet", "run", *extra],
            env=environment,
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started

    repeat = 1 if quick else 2
    base = min(run(trivial) for _ in range(repeat))  # 3 tasks
    ours = min(run(tmp / "qmcp_flow.py", "--input-json", '{"prompt": "x"}') for _ in range(repeat))
    per_task = (ours - base * 4 / 3) / 4  # the qmcp flow has 4 tasks: start, stage, finish, end
    return [
        row("metaflow: trivial 3-task flow", base, "s", note=f"{base / 3:.2f} s per task"),
        row("metaflow: qmcp 1-stage pipeline flow (4 tasks)", ours, "s"),
        row(
            "metaflow: per-task cost the qmcp helpers add",
            per_task,
            "s",
            note="mostly importing the library (SQLModel, SQLAlchemy) in each task process",
        ),
    ]


GENERATE = """
import sys
from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, Models, Topology
from qmcp.agentframework.runners import MetaflowRunner
config = AgentConfig(model_config_obj=Models.OFFLINE).model_dump(mode="json")
agents = {"only": AgentType(name="bench_only", role=AgentRole.EXECUTOR, config=config)}
topology = Topology(name="bench", topology_type="pipeline", config={})
MetaflowRunner().write_flow(topology, agents, sys.argv[1])
"""


# -- report ----------------------------------------------------------------------------------


def verdict(r: Row) -> str:
    if r["target"] is None:
        return ""
    return "pass" if r["value"] <= r["target"] else "MISS"


def report(rows: list[Row], previous: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    before = {r["name"]: r["value"] for r in (previous or {}).get("rows", [])}
    table = Table("measurement", "value", "target", "", "vs last", "note", title="qmcp benchmarks")
    for r in rows:
        old = before.get(r["name"])
        change = f"{(r['value'] - old) / old * 100:+.0f}%" if old else ""
        target = "" if r["target"] is None else f"≤ {r['target']:g}"
        table.add_row(
            r["name"], f"{r['value']:,.2f} {r['unit']}", target, verdict(r), change, r["note"]
        )
    Console(width=200).print(table)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-metaflow", action="store_true", help="leave out the Metaflow rows")
    args = parser.parse_args()
    import logging

    from qmcp.agentframework.llm import register_function

    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("qmcp").setLevel(logging.WARNING)
    register_function("bench_instant", instant)
    register_function("bench_sleepy", sleepy)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qmcp-bench-") as directory:
        tmp = Path(directory)
        rows += await overhead(tmp, args.quick)
        rows += await parallel(tmp, args.quick)
        rows += await persistence(tmp, args.quick)
        rows += await mcp(tmp, args.quick)
        rows += cli(tmp, args.quick)
        if not args.skip_metaflow:
            rows += metaflow(tmp, args.quick)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
    report(rows, previous)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
                "seconds": round(time.perf_counter() - started, 1),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
