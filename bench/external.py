"""Figures that involve other processes: the MCP server, the CLI and Metaflow tasks.

Every server and flow runs against a SQLite file in the benchmark's temporary directory, with the
offline model (no network, no key). Metaflow runs on its local datastore and metadata only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rows import Row, median

BIN = Path(sys.executable).parent


CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
PYCACHE = CACHE_HOME / "qmcp-bench" / "pycache"
DROPPED = ("ANTHROPIC_", "PYTHONDONTWRITEBYTECODE")


def child_env(db: str, **extra: str) -> dict[str, str]:
    """The environment of a server, CLI or task process: our database, no model keys, quiet logs.

    Children keep compiled bytecode in a cache of their own, as an installed package has it,
    so a process start is not measured with the library being compiled from source.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    return {
        **env,
        "QMCP_DATABASE_URL": db,
        "QMCP_LOG_LEVEL": "WARNING",
        "PYTHONPYCACHEPREFIX": str(PYCACHE),
        **extra,
    }


WARM = (
    "import qmcp_server.server, qmcp_server.http, qmcp.agentframework.cli, "
    "qmcp.agentframework.service, qmcp.agentframework.runners.metaflow_helpers, "
    "metaflow, metaflow.runtime, metaflow.cli, uvicorn, mcp, httpx"
)


def warm_bytecode(tmp: Path) -> float:
    """Compile what the child processes import into the bytecode cache, once, untimed."""
    return wall([sys.executable, "-c", WARM], child_env(f"sqlite+aiosqlite:///{tmp}/w.db"), tmp)


def wall(command: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


# -- MCP ---------------------------------------------------------------------------------------


async def seed(db: str) -> None:
    """Two offline agents and a 2-stage pipeline: a run with no model latency and no key."""
    from qmcp.agentframework import service

    await service.create_agent("b_plan", "planner", model="offline", db_url=db)
    await service.create_agent("b_do", "executor", model="offline", db_url=db)
    await service.create_topology("b_pipe", "pipeline", {"a": "b_plan", "b": "b_do"}, db_url=db)


RUN_ARGS = {"topology": "b_pipe", "input": {"prompt": "hi"}}
RUN_CALL = ("topologies_run", RUN_ARGS)


async def checked_call(client: Any, tool: str, arguments: dict[str, Any]) -> float:
    """Seconds for one tools/call, which must succeed with status "completed"."""
    t0 = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    seconds = time.perf_counter() - t0
    if result.is_error or result.structured_content["status"] != "completed":
        raise RuntimeError(f"{tool} failed: {result.content}")
    return seconds


async def round_trip(client: Any, calls: int) -> float:
    """Median seconds of a `topologies_run` tools/call, after two warm-up calls."""
    for _ in range(2):
        await checked_call(client, "topologies_run", RUN_ARGS)
    return median([await checked_call(client, "topologies_run", RUN_ARGS) for _ in range(calls)])


async def round_trips_side_by_side(qmcp: Any, floor: Any, calls: int) -> tuple[float, float]:
    """Median seconds of qmcp's `topologies_run` and of the floor server's `echo`, each on its
    own warm stdio connection, the calls alternating so both see the same machine."""
    ours, theirs = [], []
    for i in range(calls + 3):
        first = await checked_call(qmcp, "topologies_run", RUN_ARGS)
        second = await checked_call(floor, "echo", {"prompt": "hi"})
        if i >= 3:  # warm-up
            ours.append(first)
            theirs.append(second)
    return median(ours), median(theirs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(db: str, tmp: Path) -> Iterator[tuple[int, float]]:
    """`qmcp serve --transport http` on a free loopback port; yields (port, seconds to /health)."""
    import httpx

    port = free_port()
    log = tmp / f"http-{port}.log"  # a file, not a pipe nobody reads: it never fills and blocks
    t0 = time.perf_counter()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(BIN / "qmcp"), "serve", "--transport", "http", "--port", str(port)],
            env=child_env(db),
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"HTTP server exited: {log.read_text()[-2000:]}")
            if time.perf_counter() - t0 > 30:
                raise RuntimeError("HTTP server did not answer /health within 30 s")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        yield port, time.perf_counter() - t0
    finally:
        process.terminate()
        process.wait(10)


FLOOR = Path(__file__).resolve().parent / "floor_server.py"


async def cold_start(params: Any, repeat: int) -> float:
    """Median seconds from spawning a stdio server to its answer to the first tools/list."""
    from mcp import Client

    starts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with Client(params) as client:
            tools = await client.list_tools()
            starts.append(time.perf_counter() - t0)
        if not tools.tools:
            raise RuntimeError("the stdio server listed no tools")
    return median(starts)


async def mcp(tmp: Path, quick: bool) -> list[Row]:
    from mcp import Client, StdioServerParameters

    from qmcp.agentframework import service
    from qmcp.agentframework.runners import LocalRunner
    from qmcp_server.server import build_server

    db = f"sqlite+aiosqlite:///{tmp}/mcp.db"
    await seed(db)
    env = child_env(db)
    params = StdioServerParameters(command=str(BIN / "qmcp-server"), env=env, cwd=str(tmp))
    floor = StdioServerParameters(command=sys.executable, args=[str(FLOOR)], env=env, cwd=str(tmp))
    repeat = 3 if quick else 5
    start = await cold_start(params, repeat)
    floor_start = await cold_start(floor, repeat)
    python_start = median([wall([sys.executable, "-c", "pass"], env, tmp) for _ in range(5)])
    rows = [
        Row(
            "MCP stdio cold start: spawn to first tools/list",
            start,
            "s",
            1.5,
            note=f"median of {repeat}; the one-tool floor server takes {floor_start:.3f} s, "
            f"a bare `python -c pass` {python_start:.3f} s",
        )
    ]
    calls = 15 if quick else 50
    topology, agents = await service.get_topology("b_pipe", db)
    runner = LocalRunner(db_url=db)
    direct = []
    for _ in range(calls + 2):
        t0 = time.perf_counter()
        await runner.run(topology, agents, RUN_ARGS["input"])
        direct.append(time.perf_counter() - t0)
    rows.append(
        Row(
            "MCP baseline: the same run in-process, no MCP (LocalRunner.run)",
            median(direct[2:]) * 1e3,
            "ms",
            note="offline 2-stage pipeline, durable",
        )
    )
    async with Client(build_server(db)) as client:
        rows.append(
            Row(
                "MCP topologies_run round trip, in-memory Client",
                await round_trip(client, calls) * 1e3,
                "ms",
                note=f"median of {calls}",
            )
        )
    async with Client(params) as ours, Client(floor) as theirs:
        mine, one_tool = await round_trips_side_by_side(ours, theirs, calls)
    rows.append(
        Row(
            "MCP stdio topologies_run round trip",
            mine * 1e3,
            "ms",
            2.0,
            reference=one_tool * 1e3,
            versus="one-tool floor",
            on_ratio=True,
            note=f"median of {calls} calls on a warm connection, alternating with the floor "
            "server's calls; the same mcp.Client; qmcp: an offline 2-stage pipeline, durable; "
            "floor: bench/floor_server.py, an MCPServer whose one tool returns its argument",
        )
    )
    with http_server(db, tmp) as (port, ready):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            rows.append(
                Row(
                    "MCP topologies_run round trip, streamable HTTP",
                    await round_trip(client, calls) * 1e3,
                    "ms",
                    note=f"median of {calls}; server answered /health {ready:.2f} s after spawn",
                )
            )
    return rows


# -- CLI ---------------------------------------------------------------------------------------


def cli(tmp: Path, quick: bool) -> list[Row]:
    db = f"sqlite+aiosqlite:///{tmp}/cli.db"
    env = child_env(db)
    repeat = 3 if quick else 7
    wall([str(BIN / "qmcp"), "agents", "list"], env, tmp)  # creates the tables once
    rows = []
    python_start = median([wall([sys.executable, "-c", "pass"], env, tmp) for _ in range(repeat)])
    for label, args, target in (
        ("CLI `qmcp --help`", ["--help"], 0.3),
        ("CLI `qmcp agents list`", ["agents", "list"], 0.25),
    ):
        seconds = median([wall([str(BIN / "qmcp"), *args], env, tmp) for _ in range(repeat)])
        rows.append(
            Row(
                label,
                seconds,
                "s",
                target,
                note=f"median of {repeat} processes, warm bytecode cache, a SQLite database with "
                f"its tables and no agents; a bare `python -c pass` takes {python_start:.3f} s",
            )
        )
    return rows


# -- Metaflow ----------------------------------------------------------------------------------


def trivial_flow(steps: int) -> str:
    """A flow of `steps` steps in a line that do nothing and import nothing but Metaflow."""
    names = ["start", *(f"step_{i}" for i in range(1, steps - 1)), "end"]
    lines = ["from metaflow import FlowSpec, step", "", "", f"class Trivial{steps}Flow(FlowSpec):"]
    for name, following in zip(names, [*names[1:], None], strict=True):
        lines += ["    @step", f"    def {name}(self):", "        self.x = 1"]
        lines += [f"        self.next(self.{following})", ""] if following else [""]
    lines += ['if __name__ == "__main__":', f"    Trivial{steps}Flow()", ""]
    return "\n".join(lines)


def metaflow_env(tmp: Path) -> dict[str, str]:
    """Local datastore and metadata under the temporary directory; never a cloud service."""
    return {
        "USERNAME": "bench",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp / "metaflow"),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
    }


def write_qmcp_flow(tmp: Path, db: str) -> tuple[Path, dict[str, Any]]:
    """The generated flow of a 1-stage pipeline on the offline model, and its spec."""
    from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, Models, Topology
    from qmcp.agentframework.runners import MetaflowRunner, RunConfig
    from qmcp.agentframework.runners.base import snapshot_of
    from qmcp.agentframework.topologies import TopologyRegistry

    config = AgentConfig(model_config_obj=Models.OFFLINE).model_dump(mode="json")
    agents = {"only": AgentType(name="bench_only", role=AgentRole.EXECUTOR, config=config)}
    top = Topology(name="bench_stage", topology_type="pipeline", config={})
    path = MetaflowRunner(output_dir=tmp, db_url=db).write_flow(top, agents, tmp / "qmcp_flow.py")
    kind_config = TopologyRegistry.get(top.topology_type).validate(top.config, agents.keys())
    spec = snapshot_of(top, agents, kind_config) | {"run_config": RunConfig().model_dump()}
    return path, json.loads(json.dumps(spec, default=str))


def run_flow(path: Path, env: dict[str, str], **params: Any) -> tuple[float, int]:
    """Seconds for a Metaflow run through `metaflow.Runner`, and how many tasks it ran."""
    from metaflow import Runner

    t0 = time.perf_counter()
    with Runner(str(path), show_output=False, pylint=False, env=env).run(**params) as done:
        seconds = time.perf_counter() - t0
        if done.status != "successful":
            raise RuntimeError(f"{path.name} ended {done.status}: {done.stderr[-2000:]}")
        tasks = sum(1 for step in done.run for _ in step)
    return seconds, tasks


def metaflow(tmp: Path, quick: bool) -> list[Row]:
    """Per-task cost the qmcp helpers add over trivial Metaflow steps, and what a task imports.

    The baseline is a trivial flow with as many steps as the generated one, so the difference is
    the helpers' work (imports, database, the topology program) and not one more Metaflow task.
    """
    db = f"sqlite+aiosqlite:///{tmp}/metaflow.db"
    env = {**child_env(db), **metaflow_env(tmp)}
    ours, spec = write_qmcp_flow(tmp, db)
    steps = ours.read_text().count("    @step")
    flows = {}
    for count in sorted({3, steps}):
        flows[count] = tmp / f"trivial{count}_flow.py"
        flows[count].write_text(trivial_flow(count))
    repeat = 1 if quick else 3
    walls: dict[str, list[float]] = {}
    tasks: dict[str, int] = {}
    for _ in range(repeat):  # interleaved, so a slow spell of the machine hits every flow alike
        for name, path, params in [
            *((f"trivial{count}", path, {}) for count, path in flows.items()),
            ("qmcp", ours, {"input_json": json.dumps({"prompt": "x"})}),
        ]:
            seconds, tasks[name] = run_flow(path, env, **params)
            walls.setdefault(name, []).append(seconds)
    timed = {name: median(values) for name, values in walls.items()}
    mine, same = timed["qmcp"], timed[f"trivial{steps}"]
    if tasks[f"trivial{steps}"] != tasks["qmcp"]:
        raise RuntimeError(f"the trivial flow ran {tasks[f'trivial{steps}']} tasks, ours {tasks}")
    rows = [
        Row(
            f"Metaflow: trivial {count}-step flow via metaflow.Runner",
            timed[f"trivial{count}"],
            "s",
            note=f"{timed[f'trivial{count}'] / count:.3f} s per task; median of {repeat}",
        )
        for count in flows
    ]
    if len(flows) > 1:
        low, high = min(flows), max(flows)
        marginal = (timed[f"trivial{high}"] - timed[f"trivial{low}"]) / (high - low)
        rows.append(
            Row(
                "Metaflow: its own cost per extra task",
                marginal,
                "s",
                note=f"trivial {high}-step minus {low}-step flow",
            )
        )
    rows += [
        Row(
            f"Metaflow: qmcp 1-stage pipeline flow ({tasks['qmcp']} tasks) via metaflow.Runner",
            mine,
            "s",
            note=" → ".join(re.findall(r"def (\w+)\(self", ours.read_text()))
            + f"; median of {repeat}",
        ),
        Row(
            "Metaflow: per-task cost the qmcp helpers add",
            (mine - same) / tasks["qmcp"],
            "s",
            note=f"(qmcp flow - trivial {steps}-step flow) / {tasks['qmcp']} tasks",
        ),
    ]
    return rows + helper_imports(tmp, env, spec)


HELPERS = "qmcp.agentframework.runners.metaflow_helpers"
STEPS = f"""\
import json, sys
import {HELPERS} as h
spec = json.load(open(sys.argv[1]))
state = h.begin(spec, {{"prompt": "x"}}, "", "bench-run")
state = h.advance(spec, state, ["stage-0/*"])
state = h.advance(spec, state, ["*"])
h.finish(spec, state)
"""


@dataclass
class Imports:
    """What `python -X importtime` reports for a program, startup imports left out."""

    total_us: int  # sum of the cumulative times of the imports the program itself makes
    by_package: dict[str, int]  # self time per top-level package


def import_profile(code: list[str], env: dict[str, str], cwd: Path) -> Imports:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *code],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    total, packages, startup = 0, Counter[str](), True
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not match:
            continue
        if match.group(4) == "site":  # the last of the interpreter's own startup imports
            startup = False
            continue
        if startup:
            continue
        if not match.group(3):  # indentation 0: imported by the program itself
            total += int(match.group(2))
        packages[match.group(4).split(".")[0]] += int(match.group(1))
    return Imports(total, dict(packages))


def helper_imports(tmp: Path, env: dict[str, str], spec: dict[str, Any]) -> list[Row]:
    """What a task process imports: the helpers module, and all that its functions import."""
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    module = import_profile(["-c", f"import {HELPERS}"], env, tmp)
    steps = import_profile(["-c", STEPS, str(spec_file)], env, tmp)
    metaflow_only = import_profile(["-c", "import metaflow"], env, tmp)
    heaviest = sorted(steps.by_package.items(), key=lambda item: -item[1])[:6]
    return [
        Row(
            "Metaflow task imports: metaflow_helpers module",
            module.total_us / 1e3,
            "ms",
            note="python -X importtime: the import's cumulative time",
        ),
        Row(
            "Metaflow task imports: helpers + what begin/advance/finish import",
            steps.total_us / 1e3,
            "ms",
            note="by package (self ms): "
            + ", ".join(f"{name} {us / 1e3:.0f}" for name, us in heaviest)
            + f"; `import metaflow` alone {metaflow_only.total_us / 1e3:.0f} ms",
        ),
    ]
