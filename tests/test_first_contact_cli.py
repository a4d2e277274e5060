"""First contact with the CLI (issue 11): user text shows literally, and the database lives in the
per-user data directory whatever the working directory."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qmcp.agentframework.cli import app
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function

ROOT = Path(__file__).resolve().parent.parent

# Pieces that Rich would read as markup, emoji codes or escapes if user text reached it raw.
MARKUP_PIECES = [
    "[",
    "]",
    "[/]",
    "[bold]",
    "[/bold]",
    "[red on blue]",
    "[/var/log]",
    "[offline model]",
    "[link=https://x.test]",
    "[@click=quit]",
    ":smile:",
    ":thumbs_up:",
    "\\",
    "\\[",
    "x",
    " ",
    "é",
    "=",
    '"',
]
markup_text = (
    st.lists(st.sampled_from(MARKUP_PIECES), min_size=1, max_size=8)
    .map("".join)
    .filter(lambda text: text.strip() == text and text != "")
)
WIDE = {"COLUMNS": "4000"}  # so that no table cell is wrapped or cut
counter = itertools.count()


@pytest.fixture
def echo_model() -> Any:
    """`function:literal` answers with the text the test put in `said["text"]`."""
    said = {"text": ""}

    def answer(request: LLMRequest) -> str:
        return said["text"]

    register_function("literal", answer)
    yield said
    unregister_function("literal")


def cli(*argv: str) -> Any:
    result = CliRunner().invoke(app, list(argv), env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.slow  # generated cases, ten CLI commands each: the full suite, not the fast tier
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=markup_text)
def test_user_text_shows_verbatim_in_every_view(echo_model: Any, text: str) -> None:
    n = next(counter)
    echo_model["text"] = text
    agent, gated, topology, gate = f"a{n}", f"g{n}", f"t{n}", f"h{n}"
    hil = json.dumps([{"name": "human_in_loop", "config": {"question": text}}])

    created = cli(
        "agents", "create", agent, "executor", "--description", text, "--model", "function:literal"
    )
    assert created.exit_code == 0, created.output
    assert f"created agent {agent} " in created.stdout
    gated_made = cli(
        "agents",
        "create",
        gated,
        "executor",
        "--model",
        "function:literal",
        "--capabilities-json",
        hil,
    )
    assert gated_made.exit_code == 0, gated_made.output

    listed = cli("agents", "list")
    assert listed.exit_code == 0, listed.output
    assert text in listed.stdout, "agents list"
    shown = cli("agents", "show", agent)
    assert json.loads(shown.stdout)["description"] == text, "agents show"

    made = cli(
        "agents",
        "topologies",
        "create",
        topology,
        "pipeline",
        "--slot",
        f"only={agent}",
        "--description",
        text,
    )
    assert made.exit_code == 0, made.output
    cli("agents", "topologies", "create", gate, "pipeline", "--slot", f"only={gated}")
    assert text in cli("agents", "topologies", "list").stdout, "topologies list"
    topo = json.loads(cli("agents", "topologies", "show", topology).stdout)
    assert topo["description"] == text, "topologies show"

    ran = cli("agents", "topologies", "run", topology, "--input-json", json.dumps({"prompt": text}))
    assert ran.exit_code == 0, ran.output
    assert text in ran.stdout.splitlines(), "run output, on a line of its own"
    ran_json = json.loads(
        cli(
            "agents",
            "topologies",
            "run",
            topology,
            "-f",
            "json",
            "--input-json",
            json.dumps({"prompt": text}),
        ).stdout
    )
    assert ran_json["output"]["content"] == text

    executions = cli("executions", "list", "--topology", topology)
    assert ran_json["execution_id"] in executions.stdout, "executions list"
    record = json.loads(
        cli("executions", "show", ran_json["execution_id"], "--format", "json").stdout
    )
    assert record["output"]["content"] == text, "executions show --format json"
    tree = cli("executions", "show", ran_json["execution_id"])
    assert tree.exit_code == 0, tree.output
    assert f"output: {text}" in tree.stdout.splitlines()[-1], "executions show (the tree)"

    pending = cli("agents", "topologies", "run", gate, "-f", "json")
    assert pending.exit_code == 1
    waiting = json.loads(pending.stdout)["execution_id"]
    approvals = cli("approvals", "list")
    rows = [line for line in approvals.stdout.splitlines() if waiting in line]
    assert rows and all(text in row for row in rows), "approvals list: question and proposed"
    assert approvals.stdout.count(text) >= 2 * len(rows)


def test_error_lines_show_user_text_and_end_with_a_newline() -> None:
    for argv in (
        ["agents", "show", "[bold]missing"],
        ["agents", "create", "x", "[/var/log]"],
        ["agents", "topologies", "create", "t", "pipeline", "--slot", "[bold]x"],
        ["executions", "list", "--status", "[red]x"],
    ):
        result = cli(*argv)
        assert result.exit_code == 2, (argv, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.endswith("\n"), argv
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert argv[-1] in result.stderr, "the user's text, verbatim"


def test_offline_marker_survives_in_the_approvals_table(tmp_path: Path) -> None:
    hil = json.dumps([{"name": "human_in_loop", "config": {"question": "Ship it?"}}])
    cli("agents", "create", "w", "executor", "--model", "offline", "--capabilities-json", hil)
    cli("agents", "topologies", "create", "p", "pipeline", "--slot", "only=w")
    assert (
        cli("agents", "topologies", "run", "p", "--input-json", '{"prompt": "go"}').exit_code == 1
    )
    assert "[offline model]" in cli("approvals", "list").stdout


# -- the database in the per-user data directory ---------------------------------------------


def user_env(home: Path) -> dict[str, str]:
    """This environment with no QMCP_DATABASE_URL (conftest sets one) and HOME in `home`."""
    env = {k: v for k, v in os.environ.items() if k != "QMCP_DATABASE_URL"}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"))
    return env


def qmcp(env: dict[str, str], *argv: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qmcp.agentframework.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_database_defaults_to_the_user_data_directory_from_any_cwd(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    made = qmcp(env, "agents", "create", "solo", "executor", "--model", "offline")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "data" / "qmcp" / "qmcp.db").is_file()
    assert not Path("/agent.db").exists() and not Path("/qmcp.db").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = qmcp(env, "agents", "list", "-f", "json", cwd=str(elsewhere))
    assert [a["name"] for a in json.loads(listed.stdout)] == ["solo"], "same database anywhere"
    assert list(elsewhere.iterdir()) == []

    explicit = qmcp(
        {**env, "QMCP_DATABASE_URL": "sqlite+aiosqlite:///./agent.db"},
        "agents",
        "list",
        "-f",
        "json",
        cwd=str(elsewhere),
    )
    assert json.loads(explicit.stdout) == [], "an explicit URL wins"
    assert (elsewhere / "agent.db").is_file()


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_started_in_root_keeps_its_database_in_the_data_directory(
    tmp_path: Path,
) -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "qmcp_server"], env=user_env(tmp_path), cwd="/"
    )
    async with Client(params, mode="legacy") as client:
        made = await client.call_tool(
            "agents_create", {"name": "s", "role": "executor", "model": "offline"}
        )
        assert not made.is_error, made.content
    assert (tmp_path / "data" / "qmcp" / "qmcp.db").is_file()


@pytest.mark.slow
def test_info_names_database_data_directory_version_and_providers(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    env.pop("ANTHROPIC_API_KEY", None)
    data = json.loads(qmcp(env, "info", "--format", "json").stdout)
    data_dir = tmp_path / "data" / "qmcp"
    assert data["database_url"] == f"sqlite+aiosqlite:///{data_dir / 'qmcp.db'}"
    assert data["data_directory"] == str(data_dir)
    assert data["version"]
    assert set(data["providers"]) >= {"anthropic", "offline", "function", "sampling"}
    assert data["providers"]["anthropic"].startswith("not configured")

    secret = "sk-ant-do-not-print-me"
    keyed = qmcp(
        {**env, "ANTHROPIC_API_KEY": secret, "QMCP_DATABASE_URL": "sqlite:///x.db"}, "info"
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "sqlite:///x.db" in keyed.stdout and str(data_dir) in keyed.stdout
    assert "anthropic" in keyed.stdout and "configured (ANTHROPIC_API_KEY is set)" in keyed.stdout
    assert secret not in keyed.stdout + keyed.stderr


# -- small things a newcomer trips on (point 12) ----------------------------------------------


def test_demo_labels_its_token_numbers() -> None:
    shown = cli("demo")
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.stdout.splitlines() if "tokens" in line]
    assert lines and all(re.search(r"in \d+ / out \d+ tokens", line) for line in lines), lines


@pytest.mark.slow
def test_complete_local_execution_example_prints_the_error_of_a_failed_run(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "complete_local_execution.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Status: failed" in done.stdout
    (error,) = [line for line in done.stdout.splitlines() if line.startswith("Error: ")]
    assert "ANTHROPIC_API_KEY" in error, "the cause and the fix"


@pytest.mark.slow
def test_readme_cli_section_works_when_pasted_in_order(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "PATH" in section and "pip install" in section, "how to put qmcp on PATH"
    env = user_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed research on async" in done.stdout
    assert (tmp_path / "data" / "qmcp" / "qmcp.db").is_file()


def test_failure_and_retry_lines_show_model_errors_verbatim() -> None:
    text = "[bold]disk [/var/log] full[/] :smile:"

    def broken(request: LLMRequest) -> str:
        raise RuntimeError(text)

    register_function("broken", broken)
    try:
        cli("agents", "create", "fragile", "executor", "--model", "function:broken")
        cli("agents", "topologies", "create", "shaky", "pipeline", "--slot", "only=fragile")
        ran = cli("agents", "topologies", "run", "shaky", "--max-retries", "1")
    finally:
        unregister_function("broken")
    assert ran.exit_code == 1, ran.output
    assert any(line.startswith("retrying ") and text in line for line in ran.stderr.splitlines())
    (error,) = [line for line in ran.stdout.splitlines() if line.startswith("error: ")]
    assert text in error and ran.stdout.endswith("\n")


def test_prune_reports_rows_and_bytes_freed() -> None:
    cli("agents", "create", "once", "executor", "--model", "offline")
    cli("agents", "topologies", "create", "old", "pipeline", "--slot", "only=once")
    assert (
        cli("agents", "topologies", "run", "old", "--input-json", '{"prompt": "x"}').exit_code == 0
    )
    pruned = cli("executions", "prune", "--older-than-days", "0")
    assert pruned.exit_code == 0, pruned.output
    line = pruned.stdout.strip()
    assert line.startswith("deleted 1 execution(s), ") and "row(s)" in line and "freed " in line
