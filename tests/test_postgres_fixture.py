"""The PostgreSQL test fixtures: a real cluster on 127.0.0.1, a database per test, and no green
run without PostgreSQL where it is required (CI, scripts/test.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import postgres_required
from pg_cluster import Cluster
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.anyio
TESTS = Path(__file__).parent
ONE_POSTGRES_TEST = (
    "tests/test_store.py::test_finish_execution_writes_the_outcome_and_totals_once[postgres]"
)


@pytest.mark.postgres
async def test_each_backend_gets_its_own_database_and_the_environment_names_it(
    db_url: str, db_backend: str
) -> None:
    assert os.environ["QMCP_DATABASE_URL"] == db_url
    if db_backend == "sqlite":
        assert db_url.startswith("sqlite+aiosqlite:///")
        return
    url = make_url(db_url)
    assert url.drivername == "postgresql+asyncpg" and url.host == "127.0.0.1"
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as connection:
            name = (await connection.execute(text("SELECT current_database()"))).scalar()
            tables = (
                await connection.execute(
                    text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalar()
            listen = (await connection.execute(text("SHOW listen_addresses"))).scalar()
    finally:
        await engine.dispose()
    assert name == url.database and tables == 0, "a new, empty database"
    assert listen == "127.0.0.1"


def test_the_cluster_runs_as_the_postgres_user_in_a_temp_dir(postgres_cluster: Cluster) -> None:
    assert postgres_cluster.data.is_dir()
    if os.geteuid() == 0:  # initdb refuses root
        assert postgres_cluster.user == "postgres"
        assert postgres_cluster.data.stat().st_uid != 0


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"CI": "false"}, False),
        ({"QMCP_TEST_REQUIRE_POSTGRES": "1"}, True),  # what scripts/test.sh exports
    ],
)
def test_where_postgres_is_required(
    env: dict[str, str], required: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CI", "QMCP_TEST_REQUIRE_POSTGRES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert postgres_required() is required


def run_one_postgres_test(**env: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of one PostgreSQL test with the binaries hidden (an empty bin dir)."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "QMCP_TEST_REQUIRE_POSTGRES")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", ONE_POSTGRES_TEST],
        cwd=TESTS.parent,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_missing_postgres_fails_in_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    empty = str(tmp_path)
    in_ci = run_one_postgres_test(QMCP_TEST_PG_BINDIR=empty, CI="true")
    assert in_ci.returncode != 0, in_ci.stdout
    assert "PostgreSQL tests cannot run: PostgreSQL's initdb and pg_ctl were not found" in (
        in_ci.stdout
    )
    assert "1 error" in in_ci.stdout
    elsewhere = run_one_postgres_test(QMCP_TEST_PG_BINDIR=empty)
    assert elsewhere.returncode == 0 and "1 skipped" in elsewhere.stdout, elsewhere.stdout
