"""First contact with generated Metaflow flows (issue 11, point 12): flow files go to the per-user
cache directory unless an output directory is given, never into the working directory; a run that
fails before its flow starts leaves no flow file behind; a resume still finds its flow file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qmcp.agentframework import service
from qmcp.agentframework.cli import app
from qmcp.agentframework.runners import MetaflowRunner
from qmcp.agentframework.store import Store

WIDE = {"COLUMNS": "4000"}  # so that no path is wrapped


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty working directory, a cache directory of its own, and a stored pipeline."""
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("QMCP_FLOW_DIR", raising=False)

    async def store() -> None:
        await service.create_agent("a1", "planner", model="offline")
        await service.create_agent("a2", "executor", model="offline")
        await service.create_topology("my_pipeline", "pipeline", {"one": "a1", "two": "a2"})

    asyncio.run(store())
    return {"cwd": cwd, "flows": cache / "qmcp" / "flows"}


def cli(*argv: str) -> Any:
    # `run --output-dir` sets QMCP_FLOW_DIR in its process; naming it here restores it after.
    env = {**WIDE, "QMCP_FLOW_DIR": os.environ.get("QMCP_FLOW_DIR")}
    return CliRunner().invoke(app, list(argv), env=env)


def flow_files(*directories: Path) -> list[Path]:
    return sorted(p for d in directories if d.exists() for p in d.rglob("*.py"))


def test_flow_without_output_dir_writes_to_the_cache_and_says_where(
    places: dict[str, Path],
) -> None:
    result = cli("agents", "topologies", "flow", "my_pipeline")
    assert result.exit_code == 0, result.output
    written = places["flows"] / "my_pipeline_flow.py"
    assert written.is_file() and "class QmcpMyPipelineFlow" in written.read_text("utf-8")
    assert f"wrote {written}" in result.output
    assert list(places["cwd"].iterdir()) == [], "nothing in the working directory"


def test_flow_with_output_dir_writes_there(places: dict[str, Path]) -> None:
    result = cli("agents", "topologies", "flow", "my_pipeline", "--output-dir", "generated_flows")
    assert result.exit_code == 0, result.output
    written = Path("generated_flows") / "my_pipeline_flow.py"
    assert (places["cwd"] / written).is_file()
    assert f"wrote {written}" in result.output
    assert flow_files(places["flows"]) == [], "nothing in the cache"


def test_flow_dir_variable_is_the_default(
    places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QMCP_FLOW_DIR", str(tmp_path / "configured"))
    result = cli("agents", "topologies", "flow", "my_pipeline")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "configured" / "my_pipeline_flow.py").is_file()
    assert MetaflowRunner().output_dir == tmp_path / "configured"
    assert list(places["cwd"].iterdir()) == [] and flow_files(places["flows"]) == []


def test_the_runner_defaults_to_the_cache_and_an_explicit_output_dir_wins(
    places: dict[str, Path],
) -> None:
    assert MetaflowRunner().output_dir == places["flows"]
    # The spec's example passes output_dir explicitly; it still wins.
    assert MetaflowRunner(output_dir="./generated_flows").output_dir == Path("generated_flows")
    assert list(places["cwd"].iterdir()) == [], "constructing a runner writes nothing"


class _NoStart:
    """Metaflow's Runner failing as the flow starts (e.g. it refuses the flow)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def async_run(self, **kwargs: Any) -> Any:
        raise RuntimeError("the flow failed Metaflow's checks")


@pytest.mark.parametrize("output_dir", [None, "flows"])
def test_a_run_that_cannot_start_leaves_no_flow_file(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, output_dir: str | None
) -> None:
    import metaflow

    monkeypatch.setattr(metaflow, "Runner", _NoStart)
    extra = ["--output-dir", output_dir] if output_dir else []
    result = cli("agents", "topologies", "run", "my_pipeline", "--runner", "metaflow", *extra)
    assert result.exit_code == 1, result.output
    assert "Metaflow could not start the flow" in result.output
    assert flow_files(places["flows"], places["cwd"]) == []
    if output_dir is None:
        assert list(places["cwd"].iterdir()) == []


class _Ran:
    """A Metaflow run that ended failed; `run_id` None when no Metaflow run came of it."""

    run_id: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.status, self.stderr = "failed", "MetaflowException: the flow's graph is invalid\n"
        self.flow_file = args[0]

    async def async_run(self, **kwargs: Any) -> Any:
        return self

    async def wait(self, timeout: Any = None) -> Any:
        return self

    @property
    def run(self) -> Any:
        if self.run_id is None:
            raise RuntimeError("no such run")
        return type("Run", (), {"id": self.run_id})()


def test_a_run_refused_before_its_first_step_leaves_no_flow_file(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import metaflow

    monkeypatch.setattr(metaflow, "Runner", _Ran)
    result = cli("agents", "topologies", "run", "my_pipeline", "--runner", "metaflow")
    assert result.exit_code == 1, result.output
    assert "the flow's graph is invalid" in result.output
    assert flow_files(places["flows"], places["cwd"]) == []


def test_a_failed_metaflow_run_keeps_its_flow_file_and_a_resume_finds_it(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import metaflow

    class Started(_Ran):
        run_id = "5"

    monkeypatch.setattr(metaflow, "Runner", Started)
    result = cli(
        "agents", "topologies", "run", "my_pipeline", "--runner", "metaflow", "--output-dir", "out"
    )
    assert result.exit_code == 1, result.output
    [kept] = flow_files(places["cwd"] / "out")
    assert flow_files(places["flows"]) == []

    async def resume() -> dict[str, Any]:
        [execution] = await service.list_executions()
        record = await Store().get_execution(execution.id)
        assert (record.metaflow_flow_file, record.metaflow_run_id) == (str(kept.resolve()), "5")
        # A resume's runner has the default directory; the execution says where its file is.
        return dict(await MetaflowRunner()._flow_file(record))

    assert asyncio.run(resume()) == {"flow_file": str(kept.resolve()), "run_id": "5"}


def test_output_dir_is_for_the_metaflow_runner_only(places: dict[str, Path]) -> None:
    result = cli("agents", "topologies", "run", "my_pipeline", "--output-dir", "flows")
    assert result.exit_code == 2
    assert "--output-dir applies to the metaflow runner only" in result.output
    assert list(places["cwd"].iterdir()) == []


@pytest.mark.slow
def test_a_real_metaflow_run_from_the_cli_writes_nothing_in_the_working_directory(
    places: dict[str, Path], tmp_path: Path
) -> None:
    qmcp = str(Path(sys.executable).parent / "qmcp")
    env = {**os.environ, **WIDE}
    args = ["agents", "topologies", "run", "my_pipeline", "--runner", "metaflow"]
    ran = subprocess.run(
        [qmcp, *args, "--input-json", '{"topic": "AI"}'],
        capture_output=True,
        text=True,
        env=env,
        cwd=places["cwd"],
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "completed my_pipeline on metaflow" in ran.stdout
    assert list(places["cwd"].iterdir()) == []
    [flow] = flow_files(places["flows"])
    assert flow.name.startswith("my_pipeline_flow_")
