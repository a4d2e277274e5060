"""Property-based bad input against the MCP tools and the CLI: a clear error, never a traceback,
never a partial write."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from typer.testing import CliRunner

from qmcp.agentframework.cli import app
from qmcp.agentframework.store import Store
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

nasty_text = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "'; DROP TABLE executions; --",
            "../../etc/passwd",
            "/tmp/x",
            "C:\\x",
            "\x00nul",
            "ünï ✓ 名前",
            "{{7*7}}",
            "x" * 5000,
            '{"prompt": ',
            "null",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=20,
)


async def counts(db_url: str) -> tuple[int, ...]:
    from sqlalchemy import func, select

    from qmcp.agentframework.models import AgentType, Execution, Invocation, Topology

    found = []
    async with Store(db_url).session() as s:
        for table in (AgentType, Topology, Execution, Invocation):
            found.append((await s.execute(select(func.count()).select_from(table))).scalar_one())
    return tuple(found)


def assert_clean(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message, message


TOOL_ARGS = {
    "agents_create": st.fixed_dictionaries(
        {"name": json_values, "role": json_values},
        optional={"model": json_values, "capabilities": json_values, "temperature": json_values},
    ),
    "topologies_create": st.fixed_dictionaries(
        {"name": json_values, "topology_type": json_values, "slots": json_values},
        optional={"config": json_values},
    ),
    "topologies_run": st.fixed_dictionaries(
        {"topology": json_values, "input": json_values},
        optional={"runner": json_values, "max_concurrent": json_values, "wait": json_values},
    ),
    "executions_get": st.fixed_dictionaries({"execution_id": json_values}),
    "executions_resume": st.fixed_dictionaries({"execution_id": json_values}),
    "approvals_answer": st.fixed_dictionaries({"approval_id": json_values, "approve": json_values}),
}


def draw_examples(strategy: st.SearchStrategy[dict[str, Any]]) -> list[dict[str, Any]]:
    """Let hypothesis choose the cases (its shrinking-free generation), then replay them async."""
    examples: list[dict[str, Any]] = []

    @FUZZ
    @given(strategy)
    def collect(args: dict[str, Any]) -> None:
        examples.append(args)

    collect()
    return examples


@pytest.mark.parametrize("mode", [{}, {"mode": "legacy"}], ids=["stateless", "legacy"])
async def test_mcp_tools_never_crash_or_half_write(mode: dict[str, Any], db_url: str) -> None:
    tried = 0
    succeeded = dict.fromkeys(TOOL_ARGS, 0)
    async with Client(build_server(db_url), **mode) as client:
        await client.call_tool(
            "agents_create", {"name": "base", "role": "executor", "model": "offline"}
        )
        await client.call_tool(
            "topologies_create",
            {"name": "base_pipe", "topology_type": "pipeline", "slots": {"a": "base"}},
        )
        before = await counts(db_url)
        for tool, strategy in TOOL_ARGS.items():
            for args in draw_examples(strategy):
                tried += 1
                result = await client.call_tool(tool, args)
                text = " ".join(getattr(c, "text", "") for c in result.content)
                assert_clean(text)
                if result.is_error:
                    assert text.strip(), (tool, args)
                else:
                    succeeded[tool] += 1
        after = await counts(db_url)
        # A failed call writes nothing: rows grow exactly by the calls that succeeded.
        assert after[0] == before[0] + succeeded["agents_create"]
        assert after[1] == before[1] + succeeded["topologies_create"]
        assert after[2] == before[2] + succeeded["topologies_run"]
        listed = await client.call_tool("executions_list", {})
        assert not listed.is_error, "the server keeps answering"
    print(f"MCP fuzz cases tried ({mode or 'stateless'}): {tried}")


@FUZZ
@given(payload=json_values)
def test_cli_run_input_fuzz(payload: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    db = tmp_path_factory.mktemp("cli") / "agent.db"
    runner = CliRunner()
    env = {"QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    text = payload if isinstance(payload, str) else json.dumps(payload)
    result = runner.invoke(
        app, ["agents", "topologies", "run", "nope", "--input-json", text], env=env
    )
    assert result.exit_code == 2, result.output
    assert_clean(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


@FUZZ
@given(name=nasty_text, role=nasty_text)
def test_cli_agent_create_fuzz(
    name: str, role: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = tmp_path_factory.mktemp("cli") / "agent.db"
    env = {"QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    result = CliRunner().invoke(app, ["agents", "create", "--", name, role], env=env)
    assert result.exit_code in (0, 2), result.output
    assert_clean(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_deeply_nested_and_huge_inputs_are_refused_cleanly(tmp_path: Any) -> None:
    env = {"QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/agent.db"}
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["agents", "create", "a", "executor", "--model", "offline"], env=env
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app, ["agents", "topologies", "create", "p", "pipeline", "--slot", "s=a"], env=env
        ).exit_code
        == 0
    )
    deep = "[" * 100_000 + "]" * 100_000
    result = runner.invoke(app, ["agents", "topologies", "run", "p", "--input-json", deep], env=env)
    assert result.exit_code == 2 and "JSON" in result.output
    huge = json.dumps({"prompt": "x" * 2_000_000})
    result = runner.invoke(app, ["agents", "topologies", "run", "p", "--input-json", huge], env=env)
    assert result.exit_code == 2 and "limit" in result.output
    assert_clean(result.output)
