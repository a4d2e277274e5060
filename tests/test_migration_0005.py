"""Revision 0005 adds `executions.in_flight` (the calls in flight at the owner's last heartbeat):
the committed 0.1.0 database upgrades to it, its rows have none, and it goes down and up again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from qmcp.agentframework import service
from qmcp.agentframework.models import ExecutionStatus, utcnow
from qmcp.agentframework.store import Store, migrations

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).parent / "fixtures" / "qmcp-0.1.0.db"


def columns(path: Path) -> dict[str, bool]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return {c["name"]: c["nullable"] for c in inspect(connection).get_columns("executions")}
    finally:
        engine.dispose()


def alembic(path: Path, command: str, revision: str) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            migrations.run_alembic(connection, command, revision)
    finally:
        engine.dispose()


async def test_the_0_1_0_database_upgrades_to_in_flight_and_back(tmp_path: Path) -> None:
    path = tmp_path / "from-0.1.0.db"
    shutil.copyfile(FIXTURE, path)
    assert "in_flight" not in columns(path)
    db_url = f"sqlite+aiosqlite:///{path}"
    store = Store(db_url)
    executions = await store.list_executions()  # Store.init upgrades it to the head
    assert migrations.HEAD == "0005" and columns(path)["in_flight"] is True
    assert len(executions) == 3 and all(e.in_flight is None for e in executions)

    # The column works on the upgraded database: a heartbeat writes it, the view reads it.
    (old,) = [e for e in executions if e.status == ExecutionStatus.INTERRUPTED]
    await store.update_execution(old.id, status=ExecutionStatus.RUNNING, owner="elsewhere:1:1")
    started = utcnow()
    await store.renew_lease(old.id, "elsewhere:1:1", {"stage-2/stage_2": started})
    assert (await store.get_execution(old.id)).in_flight == {"stage-2/stage_2": started.isoformat()}
    view = await service.execution_view(old.id, db_url)
    (entry,) = [e for e in view["invocations"] if e["key"] == "stage-2/stage_2"]
    assert (entry["status"], entry["slot"]) == ("running", "stage_2")
    await store.close()

    alembic(path, "downgrade", "0004")
    assert "in_flight" not in columns(path)
    alembic(path, "upgrade", "head")
    assert columns(path)["in_flight"] is True
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM executions")).scalar() == 3
        found = connection.execute(text("SELECT in_flight FROM executions")).scalars().all()
        assert found == [None, None, None], "a downgrade drops what was in flight"
    engine.dispose()
