"""Timeouts and cancellation: recorded, and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.runners import RunConfig

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[1]
QMCP = str(Path(sys.executable).parent / "qmcp")


def env(db_url: str, tmp_path: Path, sleep: float) -> dict[str, str]:
    return {
        **os.environ,
        "QMCP_DATABASE_URL": db_url,
        "QMCP_PLUGINS": "plugin_functions",
        "PYTHONPATH": str(ROOT / "tests"),
        "QMCP_TEST_SLEEP": str(sleep),
        "QMCP_TEST_AWAKE": str(tmp_path / "awake"),
    }


def default_sigint() -> None:
    """Run in the child before it starts: give it the default SIGINT handler.

    A background job of a non-interactive shell (`nohup ./scripts/test.sh &`) starts with SIGINT
    ignored and its children inherit that (`restore_signals` does not cover SIGINT); Python turns
    SIGINT into KeyboardInterrupt only when it starts with the default handler.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def qmcp(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QMCP, *args], capture_output=True, text=True, env=environ, timeout=120)


def make_topology(environ: dict[str, str]) -> None:
    for name in ("first", "second"):
        assert (
            qmcp(
                environ, "agents", "create", name, "executor", "--model", "function:sleepy"
            ).returncode
            == 0
        )
    made = qmcp(
        environ,
        "agents",
        "topologies",
        "create",
        "slow",
        "pipeline",
        "--slot",
        "a=first",
        "--slot",
        "b=second",
    )
    assert made.returncode == 0, made.stderr


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_ctrl_c_cancels_records_and_resumes(db_url: str, tmp_path: Path) -> None:
    environ = env(db_url, tmp_path, sleep=30)
    make_topology(environ)
    child = subprocess.Popen(
        [QMCP, "agents", "topologies", "run", "slow", "--input-json", '{"prompt": "zzz"}'],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # Ctrl-C must reach it however the suite was started
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = json.loads(qmcp(environ, "executions", "list", "--format", "json").stdout)
        if listed and listed[0]["status"] == "running":
            break
        time.sleep(0.2)
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    ident = listed[0]["id"]
    assert f"qmcp executions resume {ident}" in stderr
    record = json.loads(qmcp(environ, "executions", "show", ident, "--format", "json").stdout)
    assert record["status"] == "cancelled"
    (tmp_path / "awake").write_text("")
    resumed = qmcp(environ, "executions", "resume", ident)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(qmcp(environ, "executions", "show", ident, "--format", "json").stdout)
    assert record["status"] == "completed"
    assert sorted(i["key"] for i in record["invocations"] if i["status"] == "completed") == [
        "stage-0/a",
        "stage-1/b",
    ]


async def test_timeout_stops_the_run_records_it_and_resume_finishes(
    db_url: str, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import plugin_functions  # noqa: F401

    os.environ["QMCP_TEST_SLEEP"] = "5"
    try:
        await service.create_agent("first", "executor", model="function:sleepy", db_url=db_url)
        await service.create_topology("slow", "pipeline", {"a": "first"}, db_url=db_url)
        started = time.perf_counter()
        result = await service.run_topology(
            "slow", {"prompt": "zzz"}, config=RunConfig(timeout_seconds=1), db_url=db_url
        )
        assert time.perf_counter() - started < 4
        assert result.status == "failed"
        assert "timed out after 1 s" in (result.error or "")
        os.environ["QMCP_TEST_SLEEP"] = "0"
        resumed = await service.resume_execution(result.execution_id, db_url=db_url)
        assert resumed.status == "completed", resumed.error
    finally:
        os.environ.pop("QMCP_TEST_SLEEP", None)
