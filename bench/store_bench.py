"""The store's own costs, for comparing two versions of qmcp on the same machine in one sitting.

    python bench/store_bench.py                          # the qmcp the venv imports
    PYTHONPATH=/path/to/other/checkout python bench/store_bench.py   # another version

Prints one JSON object:
- `init_fresh_ms`: `Store(url).init()` on a new SQLite file (schema created), median of 15;
- `record_one_us` / `record_ten_us`: µs per invocation row through `Store.record_invocations`,
  one row per commit (as checkpointing writes) and ten per commit (`*_cpu_us`: the process's
  CPU time, every thread, per row: less sensitive to other load on the machine);
- `add_execution_us`, `finish_us`: one execution row written, and one finished (status, output,
  totals from its rows);
- `durable_run_us`: a durable (`checkpoint_enabled=True`) 3-stage pipeline on LocalRunner with an
  instant model function, per run, median of 300 after warm-up (and CPU time per run);
- `lag_ms_max`: the event loop's worst lag (a 1 ms ticker) while another process holds SQLite's
  write lock for 1 s and this one records invocation rows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def invocation(execution_id: uuid.UUID, i: int) -> dict[str, Any]:
    from qmcp.agentframework.models import InvocationStatus, utcnow

    now = utcnow()
    return {
        "execution_id": execution_id,
        "key": f"stage-{i}/s-{uuid.uuid4().hex[:6]}",
        "slot": "s",
        "agent_name": "bench_agent",
        "provider": "function",
        "model": "function:bench",
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


async def init_fresh(tmp: Path) -> float:
    from qmcp.agentframework.store import Store

    times = []
    for i in range(16):
        store = Store(f"sqlite+aiosqlite:///{tmp}/fresh-{i}.db")
        t0 = time.perf_counter()
        await store.init()
        times.append(time.perf_counter() - t0)
        if hasattr(store, "close"):
            await store.close()
    return statistics.median(times[1:]) * 1000


async def records(tmp: Path) -> dict[str, float]:
    from qmcp.agentframework.models import Execution, ExecutionStatus
    from qmcp.agentframework.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp}/records.db")
    await store.init()
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    executions = [Execution(topology_name="bench", runner_type="local") for _ in range(300)]
    t0 = time.perf_counter()
    for execution in executions:
        await store.add_execution(execution)
    out["add_execution_us"] = (time.perf_counter() - t0) / len(executions) * 1e6
    execution = executions[0]
    for batch, name in ((1, "record_one_us"), (10, "record_ten_us")):
        count = 3000
        made = [invocation(execution.id, i) for i in range(count)]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, count, batch):
            await store.record_invocations(made[i : i + batch])
        out[name] = (time.perf_counter() - t0) / count * 1e6
        out[name.replace("_us", "_cpu_us")] = (time.process_time() - c0) / count * 1e6
    for e in executions[1:]:
        await store.record_invocations([invocation(e.id, i) for i in range(3)])
    t0 = time.perf_counter()
    for e in executions[1:]:
        if hasattr(store, "finish_execution"):
            await store.finish_execution(
                e.id,
                status=ExecutionStatus.COMPLETED,
                output={"content": "ok"},
                error=None,
                duration_ms=1,
            )
        else:
            from qmcp.agentframework.models import utcnow

            totals = await store.totals(e.id)
            await store.update_execution(
                e.id,
                status=ExecutionStatus.COMPLETED,
                output={"content": "ok"},
                error=None,
                completed_at=utcnow(),
                duration_ms=1,
                owner=None,
                **totals,
            )
    out["finish_us"] = (time.perf_counter() - t0) / (len(executions) - 1) * 1e6
    if hasattr(store, "close"):
        await store.close()
    return out


async def durable_run(tmp: Path) -> float:
    from qmcp.agentframework.llm import register_function
    from qmcp.agentframework.models import (
        AgentConfig,
        AgentRole,
        AgentType,
        ModelConfig,
        Topology,
        TopologyType,
    )
    from qmcp.agentframework.runners import LocalRunner, RunConfig

    register_function("bench_store_instant", lambda request: "ok")
    config = AgentConfig(
        model_config_obj=ModelConfig(provider="function", model="bench_store_instant")
    ).model_dump(mode="json")
    agents = {
        f"stage_{i}": AgentType(name=f"b{i}", role=AgentRole.EXECUTOR, config=config)
        for i in range(3)
    }
    top = Topology(name="bench_pipeline", topology_type=TopologyType.PIPELINE, config={})
    runner = LocalRunner(
        RunConfig(checkpoint_enabled=True, log_level="WARNING"),
        db_url=f"sqlite+aiosqlite:///{tmp}/runs.db",
    )
    times = []
    for i in range(330):
        if i == 30:
            c0 = time.process_time()
        t0 = time.perf_counter()
        result = await runner.run(top, agents, {"prompt": "x"})
        if i >= 30:
            times.append(time.perf_counter() - t0)
        assert result.status == "completed", result.error
    cpu = (time.process_time() - c0) / 300 * 1e6
    if hasattr(runner.store, "close"):
        await runner.store.close()
    return statistics.median(times) * 1e6, cpu


HOLD = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


async def lag(tmp: Path) -> dict[str, float]:
    from qmcp.agentframework.models import Execution
    from qmcp.agentframework.store import Store

    path = tmp / "lag.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.init()
    execution = Execution(topology_name="bench", runner_type="local")
    await store.add_execution(execution)
    worst = [0.0]
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            worst[0] = max(worst[0], time.perf_counter() - t0 - 0.001)

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "1.0"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    written = 0
    while time.perf_counter() - t0 < 1.5:
        await store.record_invocations([invocation(execution.id, written)])
        written += 1
    stop.set()
    await tick
    holder.wait(10)
    if hasattr(store, "close"):
        await store.close()
    return {"lag_ms_max": worst[0] * 1000, "lag_rows_written": written}


async def main() -> None:
    import qmcp.agentframework.store as store_module

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        result: dict[str, Any] = {"store": store_module.__file__}
        result["init_fresh_ms"] = await init_fresh(tmp)
        result.update(await records(tmp))
        try:
            result["durable_run_us"], result["durable_run_cpu_us"] = await durable_run(tmp)
        except Exception as exc:  # another version's runner may not run here
            result["durable_run_us"] = f"failed: {type(exc).__name__}: {exc}"
        result.update(await lag(tmp))
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    asyncio.run(main())
