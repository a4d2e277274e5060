"""Invocations in flight in the run view: a model call that has not answered yet is `running`.

In this process the view reads the running engine (exact, at once); from another process it reads
the `in_flight` column the owner's lease heartbeat writes (or a Metaflow step's own marks: see
`test_metaflow_fleet.py`). Either way the key shows as `running`
with its slot, agent, start and elapsed time, and nothing stays in flight once the run ends.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp.agentframework.models import ExecutionStatus, utcnow
from qmcp.agentframework.runners import LocalRunner
from qmcp.agentframework.runners.engine import live_engine, live_executions
from qmcp.agentframework.store import Store
from qmcp.agentframework.view import build_view

sys.path.insert(0, str(Path(__file__).parent))
from test_leases import CHILD, here, ready

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Gate:
    """A slow model: the slots in `held` wait in their call until released; others answer."""

    def __init__(self, *held: str) -> None:
        self.held = set(held)
        self.entered: dict[str, asyncio.Event] = {s: asyncio.Event() for s in held}
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, request: LLMRequest) -> str:
        if request.slot in self.held:
            self.entered[request.slot].set()
            await self.release.wait()
            if self.fail:
                raise ProviderError("the slow model gave up")
        return f"{request.slot} answered"

    async def all_entered(self) -> None:
        async with asyncio.timeout(30):
            for event in self.entered.values():
                await event.wait()


@pytest.fixture
async def gate() -> AsyncIterator[Callable[..., Gate]]:
    made: list[Gate] = []

    def make(*held: str) -> Gate:
        made.append(Gate(*held))
        register_function("gated", made[-1])
        return made[-1]

    yield make
    for g in made:
        g.release.set()
    unregister_function("gated")


async def topology(db_url: str, name: str, kind: str, slots: list[str]) -> None:
    for slot in slots:
        await service.create_agent(
            f"{name}_{slot}", "executor", model="function:gated", db_url=db_url
        )
    await service.create_topology(
        name, kind, {s: f"{name}_{s}" for s in slots}, config={}, db_url=db_url
    )


def by_key(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in view["invocations"]}


def the_live_run() -> uuid.UUID:
    (ident,) = live_executions()
    return ident


async def test_a_call_in_flight_shows_running_in_process_and_nothing_stays_after(
    db_url: str, gate: Callable[..., Gate]
) -> None:
    g = gate("s1")
    await topology(db_url, "slowpipe", "pipeline", ["s0", "s1", "s2"])
    run = asyncio.create_task(service.run_topology("slowpipe", {"prompt": "p"}, db_url=db_url))
    await g.all_entered()
    ident = the_live_run()
    engine = live_engine(ident)
    assert engine is not None and list(engine.in_flight) == ["stage-1/s1"]

    # The default lease (30 s) has not beaten yet: what the view shows comes from the engine.
    assert (await Store(db_url).get_execution(ident)).in_flight is None
    view = await service.execution_view(ident, db_url)
    entries = by_key(view)
    assert entries["stage-0/s0"]["status"] == "completed"
    running = entries["stage-1/s1"]
    assert running["status"] == "running", "a single-turn call in flight is not `waiting`"
    assert (running["slot"], running["agent"]) == ("s1", "slowpipe_s1")
    assert running["started_at"] == engine.in_flight["stage-1/s1"].isoformat()
    assert running["offset_ms"] is not None and running["offset_ms"] >= 0
    assert running["elapsed_ms"] is not None and running["elapsed_ms"] >= 0
    assert running["attempts"] == [] and running["turns"] is None
    assert entries["stage-2/s2"]["status"] == "waiting"
    assert view["totals"]["running"] == 1
    (stage,) = [m for m in view["topology"]["slots"] if m["slot"] == "s1"]
    assert stage["status"] == "running"
    await asyncio.sleep(0.05)
    later = by_key(await service.execution_view(ident, db_url))["stage-1/s1"]
    assert later["elapsed_ms"] > running["elapsed_ms"], "the time in flight goes on"

    g.release.set()
    result = await run
    assert result.status == ExecutionStatus.COMPLETED, result.error
    assert engine.in_flight == {}
    assert live_executions() == [] and live_engine(ident) is None
    assert (await Store(db_url).get_execution(ident)).in_flight is None
    done = await service.execution_view(ident, db_url)
    assert {e["status"] for e in done["invocations"]} == {"completed"}
    assert done["totals"]["running"] == 0


async def test_concurrent_calls_in_flight_all_show_running(
    db_url: str, gate: Callable[..., Gate]
) -> None:
    members = ["ensemble_a", "ensemble_b", "ensemble_c"]
    g = gate(*members)
    await topology(db_url, "slowens", "ensemble", [*members, "aggregator"])
    run = asyncio.create_task(
        service.run_topology("slowens", {"prompt": "p"}, runner_type="async", db_url=db_url)
    )
    await g.all_entered()
    ident = the_live_run()
    entries = by_key(await service.execution_view(ident, db_url))
    assert {k: (e["status"], e["slot"]) for k, e in entries.items()} == {
        **{m: ("running", m) for m in members},
        "aggregator": ("waiting", "aggregator"),
    }
    g.release.set()
    assert (await run).status == ExecutionStatus.COMPLETED
    assert live_executions() == []


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
async def test_an_invocation_that_ends_badly_leaves_nothing_in_flight(
    ending: str, db_url: str, gate: Callable[..., Gate]
) -> None:
    g = gate("s0")
    await topology(db_url, f"bad_{ending}", "pipeline", ["s0"])
    run = asyncio.create_task(service.run_topology(f"bad_{ending}", {"prompt": "p"}, db_url=db_url))
    await g.all_entered()
    ident = the_live_run()
    engine = live_engine(ident)
    assert engine is not None and list(engine.in_flight) == ["stage-0/s0"]
    if ending == "failed":
        g.fail = True
        g.release.set()
        assert (await run).status == ExecutionStatus.FAILED
    else:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert engine.in_flight == {}
    assert live_executions() == []
    record = await Store(db_url).get_execution(ident)
    assert record.status == ExecutionStatus(ending) and record.in_flight is None
    view = await service.execution_view(ident, db_url)
    assert view["totals"]["running"] == 0
    if ending == "failed":
        assert by_key(view)["stage-0/s0"]["status"] == "failed"


async def test_the_heartbeat_writes_the_calls_in_flight_and_the_end_clears_them(
    db_url: str,
) -> None:
    """The store's side: the renewal's UPDATE carries the map (empty: NULL); a renewal without
    one leaves it; a claim and the finish clear it."""
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    top, agents = lease_child.topology()
    runner = LocalRunner(db_url=db_url)
    prepared = await runner.start(top, agents, {"prompt": "beat"})
    ident, owner = prepared.execution_id, prepared.execution.owner
    assert owner is not None
    store = Store(db_url)
    started = utcnow() - timedelta(seconds=3)
    state = await store.renew_lease(ident, owner, {"stage-0/s0": started})
    assert state.held
    column = (await store.get_execution(ident)).in_flight
    assert column == {"stage-0/s0": started.isoformat()}
    await store.renew_lease(ident, owner)  # an owner that invokes nothing itself: left alone
    assert (await store.get_execution(ident)).in_flight == column
    await store.renew_lease(ident, "someone-else:1:1", {"x": started})  # not its run: no write
    assert (await store.get_execution(ident)).in_flight == column

    view = await service.execution_view(ident, db_url)  # not running here: the column
    entry = by_key(view)["stage-0/s0"]
    assert (entry["status"], entry["slot"], entry["agent"]) == ("running", "s0", "lease_s0")
    assert entry["elapsed_ms"] >= 3000

    await store.renew_lease(ident, owner, {})
    assert (await store.get_execution(ident)).in_flight is None
    await store.renew_lease(ident, owner, {"stage-0/s0": started})
    await store.finish_execution(
        ident, status=ExecutionStatus.FAILED, output=None, error="x", duration_ms=1
    )
    assert (await store.get_execution(ident)).in_flight is None
    await store.update_execution(ident, in_flight={"stage-0/s0": started.isoformat()})
    await store.claim_execution(ident, owner)  # a resume: the stopped owner's calls are gone
    assert (await store.get_execution(ident)).in_flight is None


async def test_processes_that_share_a_run_mark_their_own_calls_without_losing_others(
    db_url: str,
) -> None:
    """A Metaflow flow's steps (foreach branches at once) each add and take out their own keys
    (`Store.mark_in_flight`): changes made together all land, an execution that is no longer
    running is left alone, and its end clears the map."""
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    top, agents = lease_child.topology()
    prepared = await LocalRunner(db_url=db_url).start(top, agents, {"prompt": "share"})
    ident = prepared.execution_id
    started = utcnow() - timedelta(seconds=2)
    keys = [f"member-{i}" for i in range(12)]
    # Twelve stores, as twelve step processes would be: concurrent transactions on PostgreSQL.
    await asyncio.gather(*(Store(db_url).mark_in_flight(ident, k, started) for k in keys))
    store = Store(db_url)
    assert (await store.get_execution(ident)).in_flight == dict.fromkeys(keys, started.isoformat())
    await asyncio.gather(*(Store(db_url).mark_in_flight(ident, k, None) for k in keys[::2]))
    assert sorted((await store.get_execution(ident)).in_flight or {}) == sorted(keys[1::2])
    await store.mark_in_flight(ident, "never-marked", None)  # nothing to take out: no change
    await store.finish_execution(
        ident, status=ExecutionStatus.COMPLETED, output={}, error=None, duration_ms=1
    )
    assert (await store.get_execution(ident)).in_flight is None
    await store.mark_in_flight(ident, "late", started)  # the run has ended: left alone
    assert (await store.get_execution(ident)).in_flight is None


def test_the_view_shows_a_key_in_flight_with_its_slot_and_elapsed_time() -> None:
    snapshot = {
        "topology": {"name": "t", "topology_type": "pipeline", "config": {}},
        "slot_order": ["a", "b"],
        "agents": {"a": {"name": "agent_a"}, "b": {"name": "agent_b"}},
    }
    execution = {"status": "running", "started_at": "2026-01-01T10:00:00"}  # naive (SQLite)
    rows = [
        {
            "key": "stage-0/a",
            "slot": "a",
            "agent_name": "agent_a",
            "status": "completed",
            "attempt": 1,
            "started_at": "2026-01-01T10:00:00.5",
            "completed_at": "2026-01-01T10:00:01",
            "duration_ms": 500.0,
        }
    ]
    in_flight = {"stage-1/b": {"started_at": "2026-01-01T10:00:01+00:00"}}  # aware (engine)
    now = datetime(2026, 1, 1, 10, 0, 13, 500_000, tzinfo=UTC)
    view = build_view(execution, snapshot, rows, (), in_flight, now=now)
    entry = by_key(view)["stage-1/b"]
    assert (entry["status"], entry["slot"], entry["agent"]) == ("running", "b", "agent_b")
    assert entry["offset_ms"] == 1000.0 and entry["elapsed_ms"] == 12500.0
    waiting = build_view(execution, snapshot, rows, (), {}, now=now)
    assert by_key(waiting)["stage-1/b"]["status"] == "waiting"  # the gap this closes


@pytest.mark.slow  # a subprocess: the full suite, not the fast tier
async def test_a_run_in_another_process_shows_its_call_in_flight_through_the_heartbeat(
    db_url: str, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    lease = 0.6  # a heartbeat every 0.2 s
    child = here(
        ["run", db_url],
        {
            **os.environ,
            "QMCP_LEASE_SECONDS": str(lease),
            "LEASE_CHILD_SLEEP": "30",
            "LEASE_CHILD_CALLS": str(calls),
        },
    )
    try:
        ready(child)
        store = Store(db_url)
        entry: dict[str, Any] = {}
        ident = None
        for _ in range(600):  # the call starts, then a heartbeat writes it
            executions = await store.list_executions()
            if executions:
                ident = executions[0].id
                entry = by_key(await service.execution_view(ident, db_url))["stage-0/s0"]
                if entry["status"] == "running":
                    break
            await asyncio.sleep(0.05)
        assert ident is not None and entry["status"] == "running", entry
        assert calls.read_text() == "start s0\n", "the first call is in flight, unanswered"
        assert live_engine(ident) is None, "not a run of this process: read from the column"
        assert (entry["slot"], entry["agent"]) == ("s0", "lease_s0")
        assert entry["started_at"] and entry["elapsed_ms"] is not None
        record = await store.get_execution(ident)
        assert list(record.in_flight or {}) == ["stage-0/s0"]
        assert record.in_flight["stage-0/s0"] == entry["started_at"]  # type: ignore[index]

        await service.cancel_execution(ident, db_url=db_url)
        out, err = await asyncio.to_thread(child.communicate, timeout=60)
        assert out.strip().endswith("done cancelled"), err
        record = await store.get_execution(ident)
        assert record.status == ExecutionStatus.CANCELLED and record.in_flight is None
        view = await service.execution_view(ident, db_url)
        assert view["totals"]["running"] == 0
        await store.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
