"""Shared fixtures: an isolated SQLite file per test, no API key, anyio on asyncio."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmcp.agentframework.llm import ProviderRegistry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
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
    monkeypatch.setenv("QMCP_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/agent.db")
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


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/agent.db"
