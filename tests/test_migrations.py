"""Numbered schema migrations: a 0.1.0 database upgrades in place, reads back and resumes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from qmcp.agentframework import service
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp.agentframework.models import ExecutionStatus
from qmcp.agentframework.runners import LocalRunner
from qmcp.agentframework.store import DatabaseError, Store, migrations

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).parent / "fixtures" / "qmcp-0.1.0.db"
INTERRUPTED_PROMPT = "interrupted run"


def sync_url(path: Path) -> str:
    return f"sqlite:///{path}"


def revision_of(path: Path) -> str | None:
    engine = create_engine(sync_url(path))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def schema(path: Path) -> dict[str, Any]:
    """A database's schema as plain data: tables, columns, keys, indexes, constraints."""
    engine = create_engine(sync_url(path))
    try:
        with engine.connect() as connection:
            found = inspect(connection)
            return {
                table: {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)
                    ],
                    "primary_key": found.get_pk_constraint(table)["constrained_columns"],
                    "foreign_keys": sorted(
                        (
                            tuple(fk["constrained_columns"]),
                            fk["referred_table"],
                            tuple(fk["referred_columns"]),
                            (fk.get("options") or {}).get("ondelete"),
                        )
                        for fk in found.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in found.get_indexes(table)
                    ),
                    "unique": sorted(
                        tuple(u["column_names"]) for u in found.get_unique_constraints(table)
                    ),
                }
                for table in sorted(found.get_table_names())
            }
    finally:
        engine.dispose()


def differences(path: Path) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models (none: equal)."""
    engine = create_engine(sync_url(path))
    ours = {t.name for t in migrations.model_tables()} | {migrations.VERSION_TABLE}
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, _parent: kind != "table" or name in ours,
                },
            )
            return compare_metadata(context, migrations.target_metadata())
    finally:
        engine.dispose()


def alembic(path: Path, command: str, revision: str) -> None:
    """Run an Alembic command on a database file, as Store.init does (one transaction)."""
    engine = create_engine(sync_url(path))
    try:
        with engine.begin() as connection:
            migrations.run_alembic(connection, command, revision)
    finally:
        engine.dispose()


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    copy = tmp_path / "from-0.1.0.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


def test_the_revisions_are_numbered_and_the_head_is_known() -> None:
    script = ScriptDirectory(str(migrations.DIRECTORY))
    order = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert order == list(migrations.REVISIONS)
    assert script.get_current_head() == migrations.HEAD
    assert [f"{i:04d}" for i in range(1, len(order) + 1)] == order
    files = sorted(p.name for p in (migrations.DIRECTORY / "versions").glob("*.py"))
    assert [name[:4] for name in files] == order


async def test_a_0_1_0_database_upgrades_in_place_reads_back_and_resumes(old_db: Path) -> None:
    assert revision_of(old_db) is None, "0.1.0 kept no schema version"
    db_url = f"sqlite+aiosqlite:///{old_db}"
    calls: Counter[str] = Counter()

    def fixture_echo(request: LLMRequest) -> str:  # what the fixture's agents called
        calls[request.slot] += 1
        return f"{request.slot}: {request.prompt.splitlines()[0][:60]}"

    register_function("fixture_echo", fixture_echo)
    try:
        store = Store(db_url)
        executions = await store.list_executions()
        assert revision_of(old_db) == migrations.HEAD
        assert sorted(e.status.value for e in executions) == [
            "completed",
            "completed",
            "interrupted",
        ]
        for execution in executions:
            assert execution.snapshot["topology"]["name"] in ("fx_pipeline", "fx_ensemble")
            if execution.status == ExecutionStatus.COMPLETED:
                assert execution.output and execution.invocation_count == 3
                assert len(await store.invocations(execution.id)) == 3
        assert [a.name for a in await store.list_agents()] == [
            "fx_checker",
            "fx_doer",
            "fx_planner",
            "fx_synth",
        ]
        _, slots = await store.get_topology("fx_pipeline")
        assert list(slots) == ["stage_0", "stage_1", "stage_2"]
        (interrupted,) = [e for e in executions if e.status == ExecutionStatus.INTERRUPTED]
        assert await store.turns(interrupted.id) == {}  # the new table is there, and empty

        resumed = await LocalRunner(db_url=db_url).resume(interrupted.id)
        assert resumed.status == ExecutionStatus.COMPLETED, resumed.error
        assert calls == {"stage_2": 1}, "stages 0 and 1 completed under 0.1.0: not asked again"
        rows = await store.invocations(interrupted.id)
        assert [r.key for r in rows] == ["stage-0/stage_0", "stage-1/stage_1", "stage-2/stage_2"]
        record = await store.get_execution(interrupted.id)
        assert record.invocation_count == 3 and record.owner is None

        calls.clear()
        fresh = await service.run_topology(
            "fx_pipeline", {"prompt": INTERRUPTED_PROMPT}, db_url=db_url
        )
        assert fresh.output == resumed.output, "the resumed run ends as an uninterrupted one"
        assert sum(calls.values()) == 3
        await store.close()
    finally:
        unregister_function("fixture_echo")
    assert differences(old_db) == []


async def test_a_new_database_is_created_at_head_as_the_migrations_build_it(
    tmp_path: Path,
) -> None:
    created = tmp_path / "created.db"
    store = Store(f"sqlite+aiosqlite:///{created}")
    await store.init()
    await store.close()
    migrated = tmp_path / "migrated.db"
    alembic(migrated, "upgrade", "head")
    assert revision_of(created) == revision_of(migrated) == migrations.HEAD
    assert schema(created) == schema(migrated)
    assert differences(created) == [] and differences(migrated) == []


def test_the_baseline_revision_is_the_0_1_0_schema(tmp_path: Path, old_db: Path) -> None:
    baseline = tmp_path / "baseline.db"
    alembic(baseline, "upgrade", migrations.BASELINE)
    made_by_010 = schema(old_db)
    built = schema(baseline)
    assert built.pop(migrations.VERSION_TABLE)
    assert built == made_by_010


def test_migrations_go_down_and_up_again(tmp_path: Path, old_db: Path) -> None:
    asyncio.run(Store(f"sqlite+aiosqlite:///{old_db}").init())
    asyncio.run(Store(f"sqlite+aiosqlite:///{old_db}").close())
    alembic(old_db, "downgrade", migrations.BASELINE)
    assert revision_of(old_db) == migrations.BASELINE
    assert "invocation_turns" not in schema(old_db)
    alembic(old_db, "upgrade", "head")
    assert revision_of(old_db) == migrations.HEAD and differences(old_db) == []


async def test_a_database_from_a_newer_qmcp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    db_url = f"sqlite+aiosqlite:///{path}"
    await Store(db_url).init()
    await Store(db_url).close()
    engine = create_engine(sync_url(path))
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match=r"revision '9999'.*newer qmcp"):
        await Store(db_url).list_executions()
    await Store(db_url).close()


OPEN_AT_HEAD = """
import asyncio, sys, time
from qmcp.agentframework.store import Store
async def main():
    store = Store(sys.argv[1])
    t0 = time.perf_counter()
    await store.init()
    print(round((time.perf_counter() - t0) * 1000, 2), "alembic" in sys.modules)
    await store.close()
asyncio.run(main())
"""


@pytest.mark.slow  # a fresh interpreter: the full suite, not the fast tier
def test_a_database_at_head_opens_without_alembic(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'head.db'}"
    for _ in range(2):  # created, then opened at head
        done = subprocess.run(
            [sys.executable, "-c", OPEN_AT_HEAD, db_url], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "False", "a database at head costs one SELECT, no Alembic"


INIT = """
import asyncio, sys
from qmcp.agentframework.store import Store
asyncio.run(Store(sys.argv[1]).init())
"""


@pytest.mark.slow  # processes: the full suite, not the fast tier
@pytest.mark.parametrize("start", ["empty", "0.1.0"])
def test_processes_starting_together_upgrade_once(start: str, tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    if start == "0.1.0":
        shutil.copyfile(FIXTURE, path)
    db_url = f"sqlite+aiosqlite:///{path}"
    processes = [
        subprocess.Popen([sys.executable, "-c", INIT, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    engine = create_engine(sync_url(path))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (migrations.HEAD,)
        ]
        if start == "0.1.0":
            count = connection.execute(text("SELECT count(*) FROM executions")).scalar()
            assert count == 3
    engine.dispose()
    assert differences(path) == []


async def test_postgresql_is_created_at_head_and_upgrades_from_the_baseline(
    postgres_url: str,
) -> None:
    """On the session's throwaway cluster: two scratch databases, created here and dropped after."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    server = make_url(postgres_url)
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    names = [f"qmcp_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    async with admin.connect() as connection:
        for name in names:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    created, migrated = (server.set(database=name).render_as_string(False) for name in names)
    try:
        store = Store(created)
        await service.create_agent("pg_a", "executor", model="offline", db_url=created)
        await service.create_topology("pg_t", "pipeline", {"a": "pg_a"}, db_url=created)
        result = await service.run_topology("pg_t", {"prompt": "x"}, db_url=created)
        assert result.status == ExecutionStatus.COMPLETED, result.error
        assert (await store.get_execution(result.execution_id)).invocation_count == 1
        await store.close()
        engine = create_async_engine(migrated)
        async with engine.begin() as connection:  # the baseline, then what Store.init adds
            await connection.run_sync(
                lambda c: migrations.run_alembic(c, "upgrade", migrations.BASELINE)
            )
        await engine.dispose()
        await Store(migrated).init()
        await Store(migrated).close()
        for url in (created, migrated):
            engine = create_async_engine(url)
            async with engine.connect() as connection:
                assert await connection.run_sync(migrations.current_revision) == migrations.HEAD
                found = await connection.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(c, opts={"compare_type": True}),
                        migrations.target_metadata(),
                    )
                )
            await engine.dispose()
            assert [d for d in found if "alembic_version" not in str(d)] == []
    finally:
        async with admin.connect() as connection:
            for name in names:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
