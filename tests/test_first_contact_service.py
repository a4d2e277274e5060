"""First contact (issue 11), the service's part: strict JSON (6), topologies that exist can run
(7), execution ids people can type (9), prune gives space back (11)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qmcp.agentframework import service
from qmcp.agentframework.cli import app
from qmcp.agentframework.errors import ConflictError, NotFoundError, ValidationError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp.agentframework.models import MAX_NESTING, Execution, ExecutionStatus, utcnow
from qmcp.agentframework.runners.base import check_input
from qmcp.agentframework.store import Store

NAN, INF = float("nan"), float("inf")


def db_file(db_url: str) -> Path:
    return Path(db_url.split("///", 1)[1])


def rows(db_url: str, table: str) -> int:
    with sqlite3.connect(db_file(db_url)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def answers() -> Any:
    """A function model `function:fc`: it echoes, and fails on a prompt containing FAIL."""

    def answer(request: LLMRequest) -> str:
        if "FAIL" in request.prompt:
            raise RuntimeError("model down")
        return f"{request.agent_name}: {request.prompt[:40]}"

    register_function("fc", answer)
    yield
    unregister_function("fc")


async def pipeline(db_url: str, name: str = "pipe") -> None:
    await service.create_agent("worker", "executor", model="function:fc", db_url=db_url)
    await service.create_topology(name, "pipeline", {"only": "worker"}, db_url=db_url)


# -- 6. strict JSON and text ----------------------------------------------------------------


@pytest.mark.anyio
async def test_nan_and_infinity_are_refused_everywhere_and_nothing_is_stored(
    db_url: str, answers: Any
) -> None:
    """SQLite stored `NaN` in an execution's input; every way in now refuses it, naming where."""
    await pipeline(db_url)
    cases: list[tuple[Any, str]] = [
        # run input: JSON text (Python's json reads NaN), and an object (the MCP tool's path)
        (
            lambda: service.start_run("pipe", '{"prompt": NaN}', db_url=db_url),
            "input has NaN at prompt",
        ),
        (
            lambda: service.start_run("pipe", '{"a": {"b": [1, -Infinity]}}', db_url=db_url),
            r"input has -Infinity at a\.b\[1\]",
        ),
        (
            lambda: service.run_topology("pipe", {"prompt": "x", "w": [INF]}, db_url=db_url),
            r"input has Infinity at w\[0\]",
        ),
        # run options, agent config, capabilities, topology config
        (
            lambda: service.start_run(
                "pipe", {"prompt": "x"}, config={"timeout_seconds": NAN}, db_url=db_url
            ),
            "run options has NaN at timeout_seconds",
        ),
        (
            lambda: service.create_agent("hot", "executor", temperature=NAN, db_url=db_url),
            "temperature is NaN",
        ),
        (
            lambda: service.create_agent(
                "cap",
                "executor",
                capabilities=[{"name": "memory", "config": {"limit": INF}}],
                db_url=db_url,
            ),
            r"capabilities has Infinity at \[0\]\.config\.limit",
        ),
        (
            lambda: service.create_topology(
                "t2", "pipeline", {"only": "worker"}, config={"x": NAN}, db_url=db_url
            ),
            "config has NaN at x",
        ),
    ]
    for make, message in cases:
        with pytest.raises(ValidationError, match=message) as caught:
            await make()
        assert "JSON has no NaN or Infinity" in str(caught.value)
    assert rows(db_url, "executions") == 0
    assert [a.name for a in await service.list_agents(db_url=db_url)] == ["worker"]
    assert [t.name for t, _ in await service.list_topologies(db_url)] == ["pipe"]


def test_parse_json_and_check_input_refuse_non_finite_numbers_and_name_where() -> None:
    with pytest.raises(ValidationError, match=r"--config-json has Infinity at rounds\[2\]"):
        service.parse_json('{"rounds": [1, 2, Infinity]}', "--config-json")
    with pytest.raises(ValidationError, match=r'input has NaN at \["a key"\]'):
        check_input({"a key": NAN})
    with pytest.raises(ValidationError, match=r"input has a lone surrogate \(\\ud800\) at p"):
        check_input({"p": "\ud800"})
    with pytest.raises(ValidationError, match=r"lone surrogate \(\\udcff\) in a key of x"):
        service.check_text("input", {"x": {"\udcff": 1}})
    with pytest.raises(ValidationError, match="not JSON-serializable"):
        check_input({"p": {1, 2}})
    assert check_input({"p": 1.5, "q": [None, "ok"]}) == {"p": 1.5, "q": [None, "ok"]}


# -- 7. a topology that exists can run ------------------------------------------------------


@pytest.mark.anyio
async def test_nesting_deeper_than_max_nesting_is_refused_at_creation(
    db_url: str, answers: Any
) -> None:
    await pipeline(db_url, "level0")
    for level in range(1, MAX_NESTING + 1):  # level N holds level N-1: N levels of nesting
        await service.create_topology(
            f"level{level}", "pipeline", {"inner": f"topology:level{level - 1}"}, db_url=db_url
        )
    deepest = f"level{MAX_NESTING}"
    result = await service.run_topology(deepest, {"prompt": "deep"}, db_url=db_url)
    assert result.status == "completed", result.error  # the deepest one allowed runs
    too_deep = f"level{MAX_NESTING + 1}"
    with pytest.raises(ValidationError, match=f"topology '{too_deep}' would nest") as caught:
        await service.create_topology(
            too_deep, "pipeline", {"inner": f"topology:{deepest}"}, db_url=db_url
        )
    assert f"at most {MAX_NESTING} levels" in str(caught.value)
    assert f"{too_deep} > {deepest} > " in str(caught.value)
    names = {t.name for t, _ in await service.list_topologies(db_url)}
    assert too_deep not in names and deepest in names


@pytest.mark.anyio
async def test_self_reference_and_a_stored_cycle_are_refused_naming_the_topology(
    db_url: str, answers: Any
) -> None:
    await pipeline(db_url, "a")
    with pytest.raises(ValidationError, match="cannot contain itself"):
        await service.create_topology("me", "pipeline", {"x": "topology:me"}, db_url=db_url)
    await service.create_topology("b", "pipeline", {"x": "topology:a"}, db_url=db_url)
    await Store(db_url).close()
    # A cycle written behind the service's back (an old version, a hand edit): a contains b.
    with sqlite3.connect(db_file(db_url)) as connection:
        ids = dict(connection.execute("SELECT name, id FROM topologies"))
        connection.execute(
            "UPDATE topology_memberships SET agent_type_id = NULL, sub_topology_id = ? "
            "WHERE topology_id = ?",
            (ids["b"], ids["a"]),
        )
    with pytest.raises(
        ValidationError, match=r"topology '(a|b)' contains itself \((a > b > a|b > a > b)\)"
    ):
        await service.create_topology("c", "pipeline", {"x": "topology:b"}, db_url=db_url)
    assert "c" not in {t.name for t, _ in await service.list_topologies(db_url)}


# -- 9. ids people can type -----------------------------------------------------------------


async def add_execution(store: Store, ident: str, status: ExecutionStatus) -> uuid.UUID:
    execution = Execution(
        id=uuid.UUID(ident), topology_name="t", runner_type="local", status=status
    )
    await store.add_execution(execution)
    return execution.id


@pytest.mark.anyio
async def test_execution_ids_take_a_unique_prefix_and_name_ambiguous_matches(
    db_url: str,
) -> None:
    store = Store(db_url)
    one = await add_execution(store, "abcd1234" + "0" * 24, ExecutionStatus.COMPLETED)
    others = [
        await add_execution(store, f"ffff{i:04x}" + "0" * 24, ExecutionStatus.COMPLETED)
        for i in (0, 1, 2, 3, 4, 5, 0x100, 0x101)
    ]
    for prefix in ("abcd", "ABCD12", "abcd1234-0", str(one)[:13], str(one), one.hex):
        execution, invocations = await service.get_execution(prefix, db_url)
        assert execution.id == one and invocations == []
    with pytest.raises(ValidationError, match="'ffff00' is ambiguous") as caught:
        await service.get_execution("ffff00", db_url)  # six match: five are shown
    message = str(caught.value)
    assert all(str(i) in message for i in others[:5]) and str(others[5]) not in message
    assert message.count("ffff") == 6 and "and more" in message  # the prefix and five ids
    with pytest.raises(ValidationError, match="'ffff01' is ambiguous") as caught:
        await service.get_execution("ffff01", db_url)
    assert str(others[6]) in str(caught.value) and str(others[7]) in str(caught.value)
    assert "and more" not in str(caught.value)
    with pytest.raises(NotFoundError, match="no execution matches 'beef'"):
        await service.get_execution("beef", db_url)
    for bad in ("abc", "abcx", "", "-" * 8):
        with pytest.raises(ValidationError, match="at least its first 4 hex characters"):
            await service.get_execution(bad, db_url)
    # cancel and resume resolve the prefix too: their refusals name the whole id
    with pytest.raises(ConflictError, match=f"execution {one} is completed"):
        await service.cancel_execution("abcd12", db_url=db_url)
    with pytest.raises(ConflictError, match=f"execution {one} is completed"):
        await service.claim_run("abcd12", db_url=db_url)
    await store.close()


@pytest.mark.anyio
async def test_a_failed_run_resumes_by_prefix(db_url: str, answers: Any) -> None:
    await pipeline(db_url)
    failed = await service.run_topology("pipe", {"prompt": "FAIL"}, db_url=db_url)
    assert failed.status == "failed"
    with pytest.raises(ValidationError, match="not an execution id"):
        await service.resume_execution("xyz!", db_url=db_url)
    prefix = failed.execution_id.hex[:6]
    started = await service.claim_run(prefix, db_url=db_url)
    assert started.execution_id == failed.execution_id
    result = await service.finish_run(started)
    assert result.execution_id == failed.execution_id and result.status == "failed"


def test_cli_executions_show_takes_a_prefix(db_url: str) -> None:
    async def prepare() -> uuid.UUID:
        store = Store(db_url)
        ident = await add_execution(store, "0123abcd" + "0" * 24, ExecutionStatus.COMPLETED)
        await add_execution(store, "0123ffff" + "0" * 24, ExecutionStatus.FAILED)
        await store.close()
        return ident

    ident = asyncio.run(prepare())
    env = {"QMCP_DATABASE_URL": db_url}
    shown = CliRunner().invoke(app, ["executions", "show", "0123a", "-f", "json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["id"] == str(ident)
    ambiguous = CliRunner().invoke(app, ["executions", "show", "0123"], env=env)
    assert ambiguous.exit_code == 2
    assert "is ambiguous" in ambiguous.stderr and str(ident) in ambiguous.stderr
    missing = CliRunner().invoke(app, ["executions", "show", "9999"], env=env)
    assert missing.exit_code == 2 and "no execution matches '9999'" in missing.stderr


# -- 11. prune gives space back -------------------------------------------------------------


@pytest.mark.anyio
async def test_prune_checkpoints_vacuums_and_reports_rows_and_bytes(db_url: str) -> None:
    store = Store(db_url)
    bulky = {"prompt": "x" * 20_000}
    ids = []
    for _ in range(40):
        execution = Execution(
            topology_name="t", runner_type="local", status=ExecutionStatus.COMPLETED, input=bulky
        )
        await store.add_execution(execution)
        ids.append(execution.id)
    kept = ids.pop()
    for ident in ids:
        await store.update_execution(ident, created_at=utcnow() - timedelta(days=40))
    path = db_file(db_url)
    wal = path.with_name(path.name + "-wal")
    on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    result = await service.prune_executions(30, db_url=db_url)

    assert result == 39 and isinstance(result, int)  # the count, as before
    assert result.rows["executions"] == 39 and result.rows_deleted == 39
    assert result.bytes_before is not None and result.bytes_before >= on_disk
    after = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert result.bytes_after == after
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated
    assert result.bytes_freed is not None and result.bytes_freed > 39 * 15_000  # vacuumed
    assert "deleted 39 execution(s)" in result.summary() and "freed" in result.summary()
    assert f"{result}" == "39"  # what `qmcp executions prune` prints today
    execution, _ = await service.get_execution(kept, db_url)
    assert execution.input == bulky
    again = await service.prune_executions(30, db_url=db_url)
    assert again == 0 and again.bytes_freed is not None
    await store.close()


@pytest.mark.anyio
async def test_prune_counts_the_rows_of_every_table(db_url: str, answers: Any) -> None:
    await pipeline(db_url)
    for _ in range(3):
        result = await service.run_topology("pipe", {"prompt": "hi"}, db_url=db_url)
        assert result.status == "completed"
    pruned = await service.prune_executions(0, db_url=db_url)
    assert pruned == 3 and pruned.rows["invocations"] == 3
    assert pruned.rows_deleted == 6
    assert rows(db_url, "executions") == 0 and rows(db_url, "invocations") == 0


# -- PostgreSQL: the same prefixes, refusals and checks -------------------------------------


@pytest.mark.anyio
async def test_postgresql_prefixes_strict_json_nesting_and_prune(postgres_url: str) -> None:
    """On the session's throwaway cluster: a scratch database, created here and dropped after."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    server = make_url(postgres_url)
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    name = f"qmcp_test_{uuid.uuid4().hex[:12]}"
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(False)
    try:
        store = Store(url)
        one = await add_execution(store, "abcd1234" + "0" * 24, ExecutionStatus.COMPLETED)
        for ident in ("ffff0001", "ffff0002"):
            await add_execution(store, ident + "0" * 24, ExecutionStatus.COMPLETED)
        assert (await service.get_execution("ABCD-12", url))[0].id == one
        with pytest.raises(ValidationError, match="'ffff' is ambiguous: it matches ffff0001"):
            await service.get_execution("ffff", url)
        with pytest.raises(NotFoundError, match="no execution matches 'beef'"):
            await service.get_execution("beef", url)
        with pytest.raises(ValidationError, match="input has NaN at p"):
            await service.start_run("pipe", '{"p": NaN}', db_url=url)
        await service.create_agent("w", "executor", model="offline", db_url=url)
        await service.create_topology("l0", "pipeline", {"a": "w"}, db_url=url)
        for level in range(1, MAX_NESTING + 1):
            await service.create_topology(
                f"l{level}", "pipeline", {"a": f"topology:l{level - 1}"}, db_url=url
            )
        with pytest.raises(ValidationError, match="topology 'l6' would nest 6 levels deep"):
            await service.create_topology("l6", "pipeline", {"a": "topology:l5"}, db_url=url)
        pruned = await service.prune_executions(0, url)
        assert pruned == 3 and pruned.bytes_freed is None
        await store.close()
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
