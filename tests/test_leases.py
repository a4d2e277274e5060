"""Leases: a run whose owner stopped on another host is interrupted once its lease lapses, and any
process sharing the database resumes it; of two processes taking over one lapsed run, one wins.

"Another host" is a child process in its own UTS namespace (`unshare --uts`) with a hostname of
its own, so this host's host:pid check cannot tell whether it lives: only the lease can.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConflictError, ValidationError
from qmcp.agentframework.models import ExecutionStatus, utcnow
from qmcp.agentframework.runners import LocalRunner
from qmcp.agentframework.store import Store, lease_seconds

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
CHILD = Path(__file__).with_name("lease_child.py")
OTHER_HOST = "qmcp-other-host"
LEASE = 2.0  # seconds: short, so a lapse comes quickly, and long against a loaded box's stalls

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="simulating another host needs unshare --uts as root",
)


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "QMCP_LEASE_SECONDS": str(LEASE), **extra}


def on_another_host(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A child python in a UTS namespace of its own, named OTHER_HOST (its pid is python's)."""
    script = f'hostname {OTHER_HOST} && exec "$0" "$@"'
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", script, sys.executable, str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def here(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == "ready", child.stderr.read() if child.stderr else line


async def first_invocation(store: Store) -> uuid.UUID:
    """The child's execution, once its first invocation is recorded (mid-run for sure)."""
    for _ in range(3000):
        executions = await store.list_executions()
        if executions and await store.invocations(executions[0].id):
            return executions[0].id
        await asyncio.sleep(0.01)
    raise AssertionError("the child recorded no invocation")


@needs_unshare
@pytest.mark.slow
async def test_a_run_killed_on_another_host_resumes_here_once_its_lease_lapses(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QMCP_LEASE_SECONDS", str(LEASE))
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    calls = tmp_path / "calls"
    child = on_another_host(
        ["run", db_url], child_env(LEASE_CHILD_SLEEP="0.4", LEASE_CHILD_CALLS=str(calls))
    )
    ready(child)
    store = Store(db_url)
    ident = await first_invocation(store)
    running = await store.get_execution(ident)
    assert running.owner is not None and running.owner.startswith(f"{OTHER_HOST}:")
    child.send_signal(signal.SIGKILL)
    child.wait(10)

    # The owner is on another host: this host cannot tell it died, and its lease still runs.
    assert await store.mark_interrupted() == 0
    assert (await store.get_execution(ident)).status == ExecutionStatus.RUNNING
    with pytest.raises(ConflictError, match="lease is current"):
        await service.resume_execution(ident, db_url=db_url)

    record = await store.get_execution(ident)
    assert record.lease_expires_at is not None
    lapse = record.lease_expires_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)
    await asyncio.sleep(max(0.0, lapse.total_seconds()) + 0.2)
    assert await store.mark_interrupted() == 1, "a lapsed lease is interrupted, whatever host"
    interrupted = await store.get_execution(ident)
    assert interrupted.status == ExecutionStatus.INTERRUPTED
    assert interrupted.owner is None and interrupted.lease_expires_at is None

    resumed = await service.resume_execution(ident, db_url=db_url)
    assert resumed.status == ExecutionStatus.COMPLETED, resumed.error
    top, agents = lease_child.topology()
    reference = await LocalRunner(db_url=db_url).run(top, agents, {"prompt": "hold the lease"})
    assert resumed.output == reference.output
    rows = await store.invocations(ident)
    completed = Counter(r.key for r in rows if r.status == "completed")
    assert len(completed) == lease_child.STAGES and set(completed.values()) == {1}, completed


@needs_unshare
@pytest.mark.slow
async def test_a_lapsed_run_is_taken_over_directly_without_a_restart(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived process (a server) resumes a run whose lease lapsed while it was up: the
    claim itself sees the lapse, no new process start is needed to mark it."""
    monkeypatch.setenv("QMCP_LEASE_SECONDS", str(LEASE))
    child = on_another_host(["run", db_url], child_env(LEASE_CHILD_SLEEP="0.4"))
    ready(child)
    store = Store(db_url)
    await store.init()
    ident = await first_invocation(store)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    for _ in range(200):
        try:
            resumed = await service.resume_execution(ident, db_url=db_url)
            break
        except ConflictError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the lease never lapsed")
    assert resumed.status == ExecutionStatus.COMPLETED, resumed.error
    final = await store.get_execution(ident)
    assert final.owner is None and final.lease_expires_at is None


@pytest.mark.postgres
async def test_a_long_lived_process_shows_a_run_whose_lease_lapsed_as_interrupted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that opened the database before a run's owner (on another host) stopped lists
    that run as interrupted once its lease lapses, without a restart."""
    monkeypatch.setenv("QMCP_LEASE_SECONDS", "0.6")
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    store = Store(db_url)
    await store.init()  # the server is up: opening the database has already swept once
    top, agents = lease_child.topology()
    prepared = await LocalRunner(db_url=db_url).start(top, agents, {"prompt": "left behind"})
    ident = prepared.execution_id
    await store.update_execution(
        ident, owner=f"{OTHER_HOST}:4242:1", lease_expires_at=utcnow() + timedelta(seconds=0.3)
    )
    assert (await store.get_execution(ident)).status == ExecutionStatus.RUNNING
    await asyncio.sleep(0.5)  # the lease lapses, and a third of a lease has passed
    listed = {e.id: e for e in await store.list_executions()}
    assert listed[ident].status == ExecutionStatus.INTERRUPTED
    assert listed[ident].owner is None and listed[ident].lease_expires_at is None
    viewed = await service.execution_view(ident, db_url=db_url)
    assert viewed["execution"]["status"] == "interrupted"
    resumed = await service.resume_execution(ident, db_url=db_url)
    assert resumed.status == ExecutionStatus.COMPLETED, resumed.error


@pytest.mark.slow
async def test_two_processes_take_over_one_lapsed_run_and_exactly_one_wins(
    db_url: str, tmp_path: Path
) -> None:
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    store = Store(db_url)
    top, agents = lease_child.topology()
    rounds = 3
    for round_ in range(rounds):
        # A run left by a process on another host, its lease current while the contenders start.
        prepared = await LocalRunner(db_url=db_url).start(top, agents, {"prompt": "race"})
        ident = prepared.execution_id
        await store.update_execution(
            ident,
            owner=f"{OTHER_HOST}:4242:1",
            lease_expires_at=utcnow() + timedelta(hours=1),
        )
        go = tmp_path / f"go-{round_}"
        contenders = [here(["claim", db_url, str(ident), str(go)], child_env()) for _ in range(2)]
        for contender in contenders:
            ready(contender)  # each has opened the database: the run is still running there
        assert (await store.get_execution(ident)).status == ExecutionStatus.RUNNING
        await store.update_execution(ident, lease_expires_at=utcnow() - timedelta(seconds=1))
        go.write_text("")
        outcomes = [c.communicate(timeout=60)[0].strip() for c in contenders]
        assert sorted(o.split(" ", 1)[0] for o in outcomes) == ["lost", "won"], outcomes
        lost = next(o for o in outcomes if o.startswith("lost"))
        assert "lease is current" in lost, lost
        record = await store.get_execution(ident)
        assert record.status == ExecutionStatus.RUNNING
        assert record.owner is not None and not record.owner.startswith(OTHER_HOST)


@pytest.mark.slow  # waits for lease renewals (seconds)
async def test_an_owner_renews_its_lease_while_it_runs(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run longer than its lease keeps it: nothing marks it interrupted meanwhile."""
    monkeypatch.setenv("QMCP_LEASE_SECONDS", "0.6")
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    monkeypatch.setenv("LEASE_CHILD_SLEEP", "0.5")
    store = Store(db_url)
    top, agents = lease_child.topology()
    runner = LocalRunner(db_url=db_url)
    prepared = await runner.start(top, agents, {"prompt": "long"})
    run = asyncio.create_task(runner.finish(prepared))
    seen = set()
    while not run.done():
        await asyncio.sleep(0.15)
        assert await store.mark_interrupted() == 0
        seen.add((await store.get_execution(prepared.execution_id)).lease_expires_at)
    result = await run
    assert result.status == ExecutionStatus.COMPLETED, result.error
    assert len(seen - {None}) >= 3, "the lease was renewed as the run went"


def test_a_bad_lease_length_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("soon", "0", "-3", "nan", "inf"):
        monkeypatch.setenv("QMCP_LEASE_SECONDS", bad)
        with pytest.raises(ValidationError, match=r"QMCP_LEASE_SECONDS.*number of seconds"):
            lease_seconds()
    monkeypatch.delenv("QMCP_LEASE_SECONDS")
    assert lease_seconds() == 30


async def test_an_owner_that_lost_its_lease_stops_and_writes_nothing_more(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process took the run over (here: the row names another owner, as its claim
    leaves it): the old owner's next heartbeat finds that, and it stops without recording."""
    monkeypatch.setenv("QMCP_LEASE_SECONDS", "0.6")
    sys.path.insert(0, str(CHILD.parent))
    import lease_child

    monkeypatch.setenv("LEASE_CHILD_SLEEP", "30")
    store = Store(db_url)
    top, agents = lease_child.topology()
    runner = LocalRunner(db_url=db_url)
    prepared = await runner.start(top, agents, {"prompt": "taken"})
    run = asyncio.create_task(runner.finish(prepared))
    await asyncio.sleep(0.1)
    taker = f"{OTHER_HOST}:777:1"
    await store.update_execution(prepared.execution_id, owner=taker)
    result = await asyncio.wait_for(run, 10)
    assert result.status == ExecutionStatus.INTERRUPTED
    assert "another process took the run over" in (result.error or "")
    record = await store.get_execution(prepared.execution_id)
    assert record.status == ExecutionStatus.RUNNING and record.owner == taker
    assert await store.invocations(prepared.execution_id) == []
