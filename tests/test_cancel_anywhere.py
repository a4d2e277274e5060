"""Cancel from anywhere: `qmcp executions cancel ID` and the `executions_cancel` tool stop a run
that another process owns, on this host or another; the owner hears it at its heartbeat (or
sooner, at the next invocation), stops its in-flight call and records `cancelled`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from mcp import Client

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConflictError
from qmcp.agentframework.models import ExecutionStatus, utcnow
from qmcp.agentframework.runners import LocalRunner
from qmcp.agentframework.store import Store
from qmcp_server.server import build_server

sys.path.insert(0, str(Path(__file__).parent))
from test_leases import CHILD, OTHER_HOST, here, needs_unshare, on_another_host, ready

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
QMCP = Path(sys.executable).parent / "qmcp"


async def call_in_flight(store: Store, calls: Path) -> uuid.UUID:
    """The child's execution, once its first model call has started (and not ended)."""
    for _ in range(3000):
        executions = await store.list_executions()
        if executions and calls.exists() and "start s0" in calls.read_text():
            return executions[0].id
        await asyncio.sleep(0.01)
    raise AssertionError("the child's run never called its model")


def cancel_cli(
    ident: uuid.UUID, db_url: str, lease: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "QMCP_DATABASE_URL": db_url, "QMCP_LEASE_SECONDS": lease}
    t0 = time.monotonic()
    done = subprocess.run(
        [str(QMCP), "executions", "cancel", str(ident)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done, time.monotonic() - t0


@needs_unshare
@pytest.mark.slow
async def test_the_cli_cancels_a_run_on_another_host_mid_call(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner hears the cancel at its heartbeat (a third of the lease) while a 30 s model call
    is in flight: the call stops, nothing else is called, the run records `cancelled`."""
    calls = tmp_path / "calls"
    lease = "3"
    child = on_another_host(
        ["run", db_url],
        {
            **os.environ,
            "QMCP_LEASE_SECONDS": lease,
            "LEASE_CHILD_SLEEP": "30",
            "LEASE_CHILD_CALLS": str(calls),
        },
    )
    ready(child)
    store = Store(db_url)
    ident = await call_in_flight(store, calls)
    assert (await store.get_execution(ident)).owner.startswith(f"{OTHER_HOST}:")  # type: ignore[union-attr]
    done, seconds = cancel_cli(ident, db_url, lease)
    assert done.returncode == 0, done.stderr
    assert f"cancelled {ident}" in done.stdout
    out, err = child.communicate(timeout=60)
    assert out.strip().endswith("done cancelled"), err
    assert seconds < 25, "heard at a heartbeat, long before the 30 s call could end"
    record = await store.get_execution(ident)
    assert record.status == ExecutionStatus.CANCELLED and record.error == "cancelled"
    assert record.owner is None and record.cancel_requested_at is None
    assert calls.read_text().split("\n")[:-1] == ["start s0"], "in-flight call stopped, no other"
    assert await store.invocations(ident) == []

    monkeypatch.setenv("LEASE_CHILD_SLEEP", "0.01")
    sys.path.insert(0, str(CHILD.parent))
    import lease_child  # noqa: F401  (registers its model in this process)

    resumed = await service.resume_execution(ident, db_url=db_url)
    assert resumed.status == ExecutionStatus.COMPLETED, resumed.error


@pytest.mark.slow
async def test_a_cancel_is_heard_at_the_next_invocation_before_the_heartbeat(
    db_url: str, tmp_path: Path
) -> None:
    """With a 60 s lease the heartbeat comes every 20 s; the next invocation hears it first."""
    calls = tmp_path / "calls"
    lease = "60"
    child = here(
        ["run", db_url],
        {
            **os.environ,
            "QMCP_LEASE_SECONDS": lease,
            "LEASE_CHILD_SLEEP": "1.5",
            "LEASE_CHILD_CALLS": str(calls),
        },
    )
    ready(child)
    store = Store(db_url)
    ident = await call_in_flight(store, calls)
    done, seconds = cancel_cli(ident, db_url, lease)
    assert done.returncode == 0, done.stderr
    made = calls.read_text().split("\n")[:-1]
    out, err = child.communicate(timeout=60)
    assert out.strip().endswith("done cancelled"), err
    assert seconds < 15, f"heard at the next invocation, not the 20 s heartbeat ({seconds:.1f} s)"
    assert calls.read_text().split("\n")[:-1] == made, "no call once the cancel was recorded"
    starts = [line for line in made if line.startswith("start")]
    assert len(made) == 2 * len(starts) and len(starts) < 4, made  # stopped between calls
    rows = await store.invocations(ident)
    assert [r.status for r in rows] == ["completed"] * len(starts)
    assert (await store.get_execution(ident)).status == ExecutionStatus.CANCELLED


@pytest.mark.slow
async def test_the_mcp_tool_cancels_a_run_of_another_process(db_url: str, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    child = here(
        ["run", db_url],
        {
            **os.environ,
            "QMCP_LEASE_SECONDS": "1.5",
            "LEASE_CHILD_SLEEP": "30",
            "LEASE_CHILD_CALLS": str(calls),
        },
    )
    ready(child)
    ident = await call_in_flight(Store(db_url), calls)
    async with Client(build_server(db_url)) as client:
        result = await client.call_tool("executions_cancel", {"execution_id": str(ident)[:8]})
        assert not result.is_error, result.content
        assert result.structured_content["status"] == "cancelled"  # type: ignore[index]
    out, err = child.communicate(timeout=60)
    assert out.strip().endswith("done cancelled"), err
    assert calls.read_text().split("\n")[:-1] == ["start s0"]


async def test_a_run_whose_owner_stopped_is_cancelled_at_once(db_url: str) -> None:
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    top, agents = lease_child.topology()
    prepared = await LocalRunner(db_url=db_url).start(top, agents, {"prompt": "orphan"})
    ident = prepared.execution_id
    store = Store(db_url)
    await store.update_execution(
        ident,
        owner=f"{OTHER_HOST}:4242:1",
        lease_expires_at=utcnow() - timedelta(seconds=5),
    )
    t0 = time.monotonic()
    assert await service.cancel_execution(ident, db_url=db_url) == ident
    assert time.monotonic() - t0 < 5, "nobody to wait for"
    record = await store.get_execution(ident)
    assert record.status == ExecutionStatus.CANCELLED
    assert "lease had lapsed" in (record.error or "")
    with pytest.raises(ConflictError, match="cancelled, not running; nothing to cancel"):
        await service.cancel_execution(ident, db_url=db_url)


@pytest.mark.slow  # waits for an owner that does not answer
async def test_an_owner_that_does_not_answer_leaves_the_request_standing(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's lease is current but it never answers (here: nobody renews it): the cancel
    says so, and the flag stays for the owner's next heartbeat."""
    monkeypatch.setenv("QMCP_LEASE_SECONDS", "30")
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    top, agents = lease_child.topology()
    prepared = await LocalRunner(db_url=db_url).start(top, agents, {"prompt": "deaf"})
    ident = prepared.execution_id
    store = Store(db_url)
    await store.update_execution(ident, owner=f"{OTHER_HOST}:4242:1")
    with pytest.raises(ConflictError, match=r"has not done so within 0\.5 s\. The request stands"):
        await service.cancel_execution(ident, db_url=db_url, wait_seconds=0.5)
    record = await store.get_execution(ident)
    assert record.status == ExecutionStatus.RUNNING and record.cancel_requested_at is not None
    state = await store.renew_lease(ident, f"{OTHER_HOST}:4242:1")
    assert state.held and state.cancel_requested


async def test_a_flag_stops_every_branch_of_a_concurrent_run(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag, however it was set, reaches the owner's heartbeat; the task group's branches
    in flight stop together and the run records `cancelled`."""
    from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
    from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, ModelConfig, Topology
    from qmcp.agentframework.runners import AsyncRunner

    monkeypatch.setenv("QMCP_LEASE_SECONDS", "0.6")
    started: list[str] = []
    ended: list[str] = []

    async def slow(request: LLMRequest) -> str:
        started.append(request.slot)
        await asyncio.sleep(30)
        ended.append(request.slot)
        return "too late"

    register_function("branchy", slow)
    try:
        config = AgentConfig(
            model_config_obj=ModelConfig(provider="function", model="branchy")
        ).model_dump(mode="json")
        agents = {
            f"ensemble_{i}": AgentType(name=f"b{i}", role=AgentRole.EXECUTOR, config=config)
            for i in range(3)
        }
        topology = Topology(
            name="branches", topology_type="ensemble", config={"aggregation_method": "concat"}
        )
        runner = AsyncRunner(db_url=db_url, max_concurrent=3)
        prepared = await runner.start(topology, agents, {"prompt": "wide"})
        run = asyncio.create_task(runner.finish(prepared))
        while len(started) < 3:
            await asyncio.sleep(0.01)
        await Store(db_url).request_cancel(prepared.execution_id)
        result = await asyncio.wait_for(run, 10)
    finally:
        unregister_function("branchy")
    assert result.status == ExecutionStatus.CANCELLED and result.error == "cancelled"
    assert sorted(started) == ["ensemble_0", "ensemble_1", "ensemble_2"] and ended == []
    record = await Store(db_url).get_execution(prepared.execution_id)
    assert record.status == ExecutionStatus.CANCELLED and record.cancel_requested_at is None
