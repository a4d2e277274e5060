"""Processes killed with SIGKILL mid-run: the execution shows as interrupted and resumes cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.models import ExecutionStatus
from qmcp.agentframework.runners import LocalRunner
from qmcp.agentframework.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres]
CHILD = Path(__file__).with_name("crash_child.py")
KILLS = int(os.environ.get("QMCP_CRASH_KILLS", "30"))


def spawn(db_url: str, runner: str, kind: str, sleep: float = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), db_url, runner, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRASH_CHILD_SLEEP": str(sleep)},
    )


async def test_sigkill_at_random_points_then_resume(db_url: str, db_backend: str) -> None:
    sys.path.insert(0, str(CHILD.parent))
    kills = KILLS if db_backend == "sqlite" else KILLS // 3  # PostgreSQL's share of the time
    import crash_child

    rng = random.Random(20261124)
    store = Store(db_url)
    await store.init()
    references = {}
    for kind in ("pipeline", "ensemble"):
        top, agents = crash_child.topology(kind)
        reference = await LocalRunner(db_url=db_url).run(
            top, agents, {"prompt": "survive the crash"}
        )
        references[kind] = reference.output
    counted: Counter[str] = Counter()
    for iteration in range(kills):
        runner = ("local", "async")[iteration % 2]
        kind = ("pipeline", "ensemble")[(iteration // 2) % 2]
        before = {e.id for e in await store.list_executions(limit=1000)}
        child = spawn(db_url, runner, kind)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", (
            child.stderr.read() if child.stderr else ""
        )
        await asyncio.sleep(rng.uniform(0, 0.12))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        new = [e for e in await store.list_executions(limit=1000) if e.id not in before]
        if not new:
            counted["killed before the execution row"] += 1
            continue
        (execution,) = new
        await store.mark_interrupted()  # what the next start of any qmcp process does
        execution = await store.get_execution(execution.id)
        assert execution.status in (ExecutionStatus.INTERRUPTED, ExecutionStatus.COMPLETED), (
            execution.status
        )
        counted[str(execution.status)] += 1
        if execution.status == ExecutionStatus.INTERRUPTED:
            assert "resume" in (execution.error or "")
            resumed = await service.resume_execution(execution.id, db_url=db_url)
            assert resumed.status == ExecutionStatus.COMPLETED, resumed.error
        final = await store.get_execution(execution.id)
        assert final.output == references[kind]
        rows = await store.invocations(execution.id)
        completed = Counter(r.key for r in rows if r.status == "completed")
        expected = 6 + (kind == "ensemble")
        assert len(completed) == expected and set(completed.values()) == {1}, completed
    assert counted["interrupted"] >= kills // 3, counted
    print(f"kills: {kills}, outcomes: {dict(counted)}")


async def test_interrupted_is_detected_by_the_next_process(db_url: str, tmp_path: Path) -> None:
    child = spawn(db_url, "local", "pipeline", sleep=0.3)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    store = Store(db_url)
    for _ in range(500):  # kill once the first stage is recorded: mid-run for sure
        executions = await store.list_executions()
        if executions and await store.invocations(executions[0].id):
            break
        await asyncio.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    qmcp = Path(sys.executable).parent / "qmcp"
    env = {**os.environ, "QMCP_DATABASE_URL": db_url}
    listed = subprocess.run(
        [str(qmcp), "executions", "list", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["status"] == "interrupted"
    assert record["error"].startswith("the process running this execution stopped")
