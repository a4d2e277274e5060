"""Shared fixtures: an isolated database per test, no API key, anyio on asyncio.

The database is a SQLite file in the test's tmp dir. A test or module marked
`@pytest.mark.postgres` runs twice, `[sqlite]` and `[postgres]`: the second on a database of its
own on a throwaway PostgreSQL cluster that the session starts on 127.0.0.1 (tests/pg_cluster.py).
Where PostgreSQL is required (CI, scripts/test.sh) and its binaries or asyncpg are missing, those
tests fail instead of skipping, so a green run never hides a missing install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_cluster import Cluster, find_bindir

from qmcp.agentframework.llm import ProviderRegistry


def postgres_required() -> bool:
    """CI (which sets CI) and scripts/test.sh must run the PostgreSQL tests, never skip them."""
    return any(
        os.environ.get(name, "").lower() not in ("", "0", "false")
        for name in ("CI", "QMCP_TEST_REQUIRE_POSTGRES")
    )


# The `[postgres]` variants need the session's cluster (seconds to start) and a database per
# test: the full suite runs them, the fast tier (`-m "not slow"`) keeps their `[sqlite]` twins.
BACKEND_PARAMS = (pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.slow))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("postgres"):
        metafunc.parametrize("db_backend", BACKEND_PARAMS, indirect=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)  # PostgreSQL only (postgres_url): as `[postgres]`


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend: sqlite, or the parameter a `postgres`-marked test runs with."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway cluster for the session, started on first use, stopped at the end."""
    bindir = find_bindir()
    missing = None
    if bindir is None:
        missing = (
            "PostgreSQL's initdb and pg_ctl were not found: install Debian's postgresql "
            "(scripts/test.sh does) or set QMCP_TEST_PG_BINDIR"
        )
    else:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            missing = "asyncpg is not installed: pip install -e '.[dev]'"
    if missing is not None:
        if postgres_required():
            pytest.fail(f"PostgreSQL tests cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    assert bindir is not None
    cluster = Cluster.start(bindir)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> Iterator[str]:
    """A new empty database on the session's cluster, dropped after the test."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture
def db_url(tmp_path: Path, db_backend: str, request: pytest.FixtureRequest) -> str:
    """The test's database: a SQLite file in its tmp dir, or a PostgreSQL database of its own."""
    if db_backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite+aiosqlite:///{tmp_path}/agent.db"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[None]:
    """Each test gets its own database and no real credentials or endpoints."""
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "QMCP_DEFAULT_MODEL",
        "QMCP_KEY_VARIABLES",
        "QMCP_ALLOW_REMOTE_TOOL_COMMANDS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QMCP_DATABASE_URL", db_url)
    # A user name for Metaflow, which refuses to run as root without one, so that tests running a
    # flow file directly need no exported USERNAME; the runner's own fallback for a missing name
    # is tested with all of them unset (test_metaflow_runner.py).
    monkeypatch.setenv("USERNAME", os.environ.get("USERNAME", "qmcp-tests"))
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path / "metaflow"))
    # Flow files (the default is the user cache directory) stay inside the test's tmp dir.
    monkeypatch.setenv("QMCP_FLOW_DIR", str(tmp_path / "flows"))
    ProviderRegistry.reset()
    yield
    ProviderRegistry.reset()
