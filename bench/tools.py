"""The cost of a tool call through an agent's loop, against the same call made directly.

    python bench/tools.py [--calls 200]

Both sides call `add` on the same local stdio MCP server (tests/tool_server.py, an instant tool):
- direct: one `mcp.Client` session, `call_tool` in a loop;
- through the loop: one invocation of an agent whose model (a plain function, answering at once)
  asks for one `add` per turn, `--calls` turns, then answers. Each call goes through the toolbox:
  admitted (deny, replay, approvals), recorded as running and as completed (two committed rows),
  its result quoted and bounded, and each model turn recorded (checkpointing on, SQLite).
Per call through the loop = (invocation time with N calls - with 1 call) / (N - 1), so the
session's start (spawn, initialize, tools/list) is left out on both sides; it is measured
separately. Prints a table and writes bench/results/tools.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = str(ROOT / "tests" / "tool_server.py")


async def direct(calls: int) -> tuple[float, float]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    t0 = time.perf_counter()
    async with Client(StdioServerParameters(command=sys.executable, args=[SERVER])) as client:
        started = time.perf_counter() - t0
        await client.call_tool("add", {"a": 0, "b": 0})  # warm
        t1 = time.perf_counter()
        for i in range(calls):
            await client.call_tool("add", {"a": i, "b": 1})
        per_call = (time.perf_counter() - t1) / calls
    return started, per_call


async def through_the_loop(calls: int, db_url: str) -> tuple[float, float]:
    from qmcp.agentframework.llm import LLMRequest, LLMResponse, ToolUseBlock, register_function
    from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, ModelConfig, Topology
    from qmcp.agentframework.runners import LocalRunner
    from qmcp.agentframework.store import Store

    def model(request: LLMRequest) -> LLMResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn < calls:
            block = ToolUseBlock(id=f"c{turn}", name="add", input={"a": turn, "b": 1})
            return LLMResponse(content=[block], model="bench", provider="function")
        return LLMResponse(text="done", model="bench", provider="function")

    register_function("bench_tools", model)
    server = {"name": "t", "command": sys.executable, "args": [SERVER]}
    config = AgentConfig(
        model_config_obj=ModelConfig(provider="function", model="bench_tools"),
        tools=[server],
        max_tool_calls=calls,
    ).model_dump(mode="json")
    agents = {"only": AgentType(name="bencher", role=AgentRole.EXECUTOR, config=config)}
    topology = Topology(name="bench_tools", topology_type="pipeline", config={})
    runner = LocalRunner(db_url=db_url)
    result = await runner.run(topology, agents, {"prompt": "add"})
    assert result.status == "completed", result.error
    rows = await Store(db_url).tool_calls(result.execution_id)
    assert len(rows) == calls
    durations = [r["duration_ms"] for r in rows.values()]
    (invocation,) = await Store(db_url).invocations(result.execution_id)
    first = durations[0]  # includes nothing of the start: the session started before the call
    total_ms = invocation.duration_ms
    return total_ms / 1000, statistics.mean(durations[1:] or [first]) / 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("USERNAME", "qmcp-bench")
    started, direct_call = await direct(args.calls)
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await through_the_loop(5, db_url)  # warm: imports, the database, the first session
        one, _ = await through_the_loop(1, db_url)
        t0 = time.perf_counter()
        total, in_tool = await through_the_loop(args.calls, db_url)
        wall = time.perf_counter() - t0
    per_call_loop = (total - one) / (args.calls - 1)
    rows = {
        "session start (spawn, initialize, tools/list), direct": started * 1000,
        "tool call, direct mcp.Client": direct_call * 1000,
        "tool call, as the toolbox times it (server round trip)": in_tool * 1000,
        "tool call through the agent loop (per call, all included)": per_call_loop * 1000,
        "overhead of the loop per call": (per_call_loop - direct_call) * 1000,
    }
    width = max(map(len, rows))
    print(f"{args.calls} calls of an instant stdio tool; run wall time {wall:.2f} s")
    for name, ms in rows.items():
        print(f"  {name:<{width}}  {ms:8.3f} ms")
    out = ROOT / "bench" / "results" / "tools.json"
    out.write_text(json.dumps({"calls": args.calls, "ms": rows}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
