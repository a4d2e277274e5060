"""Metaflow runs in a fleet: a human_in_loop agent in a step leaves the execution `pending` (the
step does not fail), and a flow started by the MCP server reports progress per invocation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from qmcp.agentframework import service
from qmcp.agentframework.models import ExecutionStatus
from qmcp.agentframework.runners import MetaflowRunner
from qmcp.agentframework.store import Store
from qmcp_server.server import build_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import metaflow_functions  # noqa: E402, F401  (registers the functions in this process too)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def flow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a real flow's task processes need: the plugin functions, this checkout, a state
    directory the function models log their calls to."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("QMCP_TEST_STATE_DIR", str(state))
    monkeypatch.setenv("QMCP_PLUGINS", "metaflow_functions")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    monkeypatch.chdir(tmp_path)
    return state


def tasks_of_last_run(datastore: Path) -> dict[str, int]:
    """Tasks per step of the one local Metaflow run in `datastore`."""
    (flow,) = [d for d in (datastore / ".metaflow").iterdir() if d.name.endswith("Flow")]
    (run,) = [d for d in flow.iterdir() if d.name.isdigit()]
    return {
        step.name: sum(1 for t in step.iterdir() if t.name.isdigit())
        for step in run.iterdir()
        if step.is_dir() and not step.name.startswith("_")
    }


async def test_a_human_in_loop_step_leaves_the_execution_pending_then_resumes(
    flow_env: Path, db_url: str, tmp_path: Path
) -> None:
    await service.create_agent(
        "mf_writer",
        "executor",
        model="function:mf_echo",
        capabilities=[{"name": "human_in_loop", "config": {"question": "Publish this?"}}],
        db_url=db_url,
    )
    await service.create_agent("mf_editor", "executor", model="function:mf_echo", db_url=db_url)
    await service.create_topology(
        "mf_gated", "pipeline", {"write": "mf_writer", "edit": "mf_editor"}, db_url=db_url
    )
    topology, agents = await service.get_topology("mf_gated", db_url)
    runner = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    first = await runner.run(topology, agents, {"prompt": "news"})
    assert first.status == ExecutionStatus.PENDING, first.error
    assert "qmcp approvals answer" in (first.error or "")
    record = await Store(db_url).get_execution(first.execution_id)
    assert record.status == ExecutionStatus.PENDING and record.owner is None
    assert record.metaflow_flow_file and record.metaflow_run_id is None, "nothing to resume in it"
    assert record.metaflow_step == "s0_stage_0"
    tasks = tasks_of_last_run(tmp_path / "metaflow")
    assert tasks.get("end") == 1, f"the run went on to its end, no step failed: {tasks}"

    (approval,) = await service.list_approvals("pending", db_url=db_url)
    await service.answer_approval(approval.id, True, edited="the edited draft", db_url=db_url)
    done = await runner.resume(first.execution_id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.output is not None
    assert done.output["stages"][0]["content"] == "the edited draft"
    calls = [json.loads(line)["slot"] for line in (flow_env / "calls.log").read_text().splitlines()]
    assert calls == ["write", "edit"], "the writer's model was called once"
    store = Store(db_url)
    assert await store.flow_steps(first.execution_id) == {
        "stage-0/write": "s0_stage_0",
        "stage-1/edit": "s1_stage_1",
    }
    final = await store.get_execution(first.execution_id)
    assert final.metaflow_run_id and final.metaflow_pathspec == (
        f"QmcpMfGatedFlow/{final.metaflow_run_id}"
    )


async def test_a_flow_run_by_the_mcp_server_reports_progress_per_invocation(
    flow_env: Path, db_url: str
) -> None:
    for name in ("mf_plan", "mf_do", "mf_check"):
        await service.create_agent(name, "executor", model="function:mf_echo", db_url=db_url)
    await service.create_topology(
        "mf_progress",
        "pipeline",
        {"plan": "mf_plan", "do": "mf_do", "check": "mf_check"},
        db_url=db_url,
    )
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(build_server(db_url)) as client:
        result = await client.call_tool(
            "topologies_run",
            {"topology": "mf_progress", "input": {"prompt": "go"}, "runner": "metaflow"},
            progress_callback=on_progress,
        )
    outcome: Any = result.structured_content
    assert outcome is not None and outcome["status"] == "completed", outcome
    assert [p[0] for p in progress] == [1, 2, 3], progress
    assert all(p[1] == 3 for p in progress)
    assert [p[2] for p in progress] == [
        "completed stage-0/plan (mf_plan)",
        "completed stage-1/do (mf_do)",
        "completed stage-2/check (mf_check)",
    ]


SLOW_PLUGIN = """
import asyncio, os
from pathlib import Path
from qmcp.agentframework.llm import register_function

async def slow(request):
    calls = Path(os.environ["QMCP_TEST_STATE_DIR"]) / "slow.log"
    with calls.open("a") as out:
        out.write(f"start {request.slot}\\n")
    await asyncio.sleep(120)
    with calls.open("a") as out:
        out.write(f"end {request.slot}\\n")
    return "too late"

register_function("fleet_slow", slow)
"""


async def test_a_cancel_from_another_process_stops_a_flow_mid_step(
    flow_env: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launching process owns the flow's execution: a cancel asked for through the database
    reaches it at its heartbeat, and it kills the flow while a step's model call is in flight.
    Meanwhile the run view shows that call `running`, from the step's process."""
    import asyncio

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fleet_slow_models.py").write_text(SLOW_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), os.environ["PYTHONPATH"]]))
    monkeypatch.setenv("QMCP_PLUGINS", "metaflow_functions,fleet_slow_models")
    monkeypatch.setenv("QMCP_LEASE_SECONDS", "3")
    sys.path.insert(0, str(plugins))
    await service.create_agent("mf_slow", "executor", model="function:fleet_slow", db_url=db_url)
    await service.create_agent("mf_after", "executor", model="function:mf_echo", db_url=db_url)
    await service.create_topology(
        "mf_cancelled", "pipeline", {"slow": "mf_slow", "after": "mf_after"}, db_url=db_url
    )
    topology, agents = await service.get_topology("mf_cancelled", db_url)
    runner = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    prepared = await runner.start(topology, agents, {"prompt": "stop me"})
    run = asyncio.create_task(runner.finish(prepared))
    calls = flow_env / "slow.log"
    for _ in range(12000):
        if calls.exists() and "start slow" in calls.read_text():
            break
        assert not run.done(), run.result()
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the flow's step never called its model")
    # The call in flight is in the step's process, not this one: the view reads the key the
    # step put in the execution's `in_flight` map when its model call started.
    view = await service.execution_view(prepared.execution_id, db_url)
    entry = {e["key"]: e for e in view["invocations"]}["stage-0/slow"]
    assert (entry["status"], entry["agent"]) == ("running", "mf_slow"), entry
    assert entry["started_at"] and entry["elapsed_ms"] >= 0
    # As another process would: the flag in the database, not this process's task.
    assert await Store(db_url).request_cancel(prepared.execution_id) == ExecutionStatus.RUNNING
    result = await asyncio.wait_for(run, 60)
    assert result.status == ExecutionStatus.CANCELLED and result.error == "cancelled"
    await asyncio.sleep(1)
    assert calls.read_text().splitlines() == ["start slow"], "the step was killed mid-call"
    assert not (flow_env / "calls.log").exists(), "the next stage never ran"
    record = await Store(db_url).get_execution(prepared.execution_id)
    assert record.status == ExecutionStatus.CANCELLED and record.owner is None
    assert record.in_flight is None, "the end cleared the step's call"
