"""Property-based bad input against the MCP tools and the CLI (issue 6, item 5).

Properties, for every drawn case: the answer is a success or a clear error (never a traceback,
never the SDK's bare "Error executing tool X" that means the tool crashed); a failed call writes
nothing (row counts unchanged); the server keeps answering; the CLI exits 0 or 2 (1 only for a
run that failed), with one `error:` line on stderr.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from typer.testing import CliRunner

from qmcp.agentframework.cli import app
from qmcp_server.server import build_server

BIN = Path(sys.executable).parent
TABLES = ("agent_types", "topologies", "executions", "invocations", "approvals")
ROLES = ["planner", "executor", "reviewer", "critic", "synthesizer", "specialist", "observer"]
KINDS = ["pipeline", "ensemble", "debate", "cross_check", "chain_of_command", "delegation"]
MIXINS = ["reasoning", "memory", "structured_output", "human_in_loop"]
STATUSES = ["pending", "running", "completed", "failed", "cancelled", "interrupted"]

# How many cases each property test draws; `tried` counts what really ran (printed with -s).
MCP_EXAMPLES = 300
CLI_EXAMPLES = 300
FUZZ = settings(
    max_examples=MCP_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
TRIED: dict[str, int] = {}


def count(label: str) -> None:
    TRIED[label] = TRIED.get(label, 0) + 1


# -- strategies -----------------------------------------------------------------------------

SQLISH = [
    "'; DROP TABLE executions; --",
    '" OR 1=1 --',
    "Robert'); DROP TABLE agent_types;--",
    "x' UNION SELECT * FROM invocations --",
    "1; DELETE FROM topologies",
]
PATHISH = [
    "../../etc/passwd",
    "/tmp/x",
    "C:\\x",
    "..\\..\\windows\\system32",
    "file:///etc/shadow",
    "~/.ssh/id_rsa",
    "topology:../../etc/passwd",
    "topology:",
]
ODD = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "ünï ✓ 名前",
    "\u202eevil",
    "\ufeffbom",
    "🤖" * 30,
    "{{7*7}}",
    "${HOME}",
    "$(touch /tmp/pwned)",
    "%s%s%n",
    "null",
    "true",
    "[]",
    "{}",
    '{"prompt": ',
    "x" * 101,
    "\n\r\t",
]
KNOWN = ["base", "base2", "base_pipe", "base_ens"]

# No lone surrogates in plain text (valid calls use it); `nasty` text may hold them.
plain_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
# A JSON "\\ud800" escape, or argv bytes decoded with surrogateescape.
surrogate_text = st.builds(
    lambda a, s, b: a + s + b,
    plain_text,
    st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3),
    plain_text,
)
huge_text = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["x", "✓", "'", "\x00", "名"]),
    st.integers(100_000, 2_000_000),
)
# Object keys hold no lone surrogate: the MCP client cannot serialize one in a key.
nasty_key = st.one_of(
    st.sampled_from(SQLISH + PATHISH + ODD + KNOWN),
    plain_text,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
)
nasty = st.one_of(nasty_key, surrogate_text)
int64 = st.integers(-(2**63), 2**63 - 1)
scalars = st.one_of(
    st.none(), st.booleans(), int64, st.floats(allow_nan=False, allow_infinity=False), nasty
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nasty_key, children, max_size=4)
    ),
    max_leaves=12,
)
any_value = st.one_of(nasty, json_values)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


json_texts = st.one_of(
    st.sampled_from(
        [
            deep_json(10_000),
            '{"prompt": ' * 5_000,
            '{"prompt": "x"',
            "{'prompt': 'single quotes'}",
            '{"prompt": NaN}',
            "[1, 2, 3]",
            "null",
            "",
            "\x00",
            '{"a": 1, "a": 2}',
        ]
    ),
    json_values.map(json.dumps),
    st.builds(lambda n: json.dumps({"prompt": "y" * n}), st.integers(100_000, 1_100_000)),
)
run_inputs = st.one_of(
    st.fixed_dictionaries({"prompt": st.one_of(plain_text, st.sampled_from(SQLISH + PATHISH))}),
    st.builds(lambda n: {"prompt": "z" * n}, st.integers(100_000, 1_100_000)),
    json_values,
    json_texts,
)
slot_names = st.one_of(
    st.sampled_from(["a", "b", "ensemble_0", "ensemble_1", "aggregator", "stage_1"]), nasty_key
)
members = st.one_of(st.sampled_from([*KNOWN, "topology:base_pipe", "topology:nope"]), nasty)


def known_id(ids: list[str]) -> st.SearchStrategy[str]:
    """An execution id recorded so far (the list grows; the drawn choice's shape must not)."""
    return st.integers(0, 10_000).map(lambda i: ids[i % len(ids)])


def optional(**fields: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    return fields


TOOLS: dict[str, Callable[[list[str]], st.SearchStrategy[dict[str, Any]]]] = {
    "agents_create": lambda ids: st.fixed_dictionaries(
        {"name": any_value, "role": st.one_of(st.sampled_from(ROLES), any_value)},
        optional=optional(
            model=st.one_of(
                st.sampled_from(["offline", "claude-sonnet-4-5", "function:nope", "CLAUDE_SONNET"]),
                any_value,
            ),
            description=st.one_of(plain_text, huge_text, json_values),
            system_prompt=st.one_of(plain_text, huge_text, json_values),
            temperature=st.one_of(st.floats(-10, 10), json_values),
            max_tokens=st.one_of(int64, json_values),
            capabilities=st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(st.sampled_from(MIXINS), nasty)},
                        optional=optional(config=json_values, enabled=any_value),
                    ),
                    max_size=3,
                ),
                json_values,
            ),
        ),
    ),
    "topologies_create": lambda ids: st.fixed_dictionaries(
        {
            "name": any_value,
            "topology_type": st.one_of(st.sampled_from(KINDS), any_value),
            "slots": st.one_of(st.dictionaries(slot_names, members, max_size=5), json_values),
        },
        optional=optional(
            config=st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional=optional(
                        aggregation_method=st.one_of(
                            st.sampled_from(["vote", "concat", "synthesis", "average"]), nasty
                        ),
                        stages=json_values,
                        max_rounds=json_values,
                    ),
                ),
                json_values,
            ),
            description=st.one_of(plain_text, huge_text),
        ),
    ),
    "topologies_run": lambda ids: st.fixed_dictionaries(
        {"topology": st.one_of(st.sampled_from(KNOWN), any_value), "input": run_inputs},
        optional=optional(
            runner=st.one_of(st.sampled_from(["local", "async"]), nasty),
            max_concurrent=st.one_of(st.integers(-5, 200), json_values),
            timeout_seconds=st.one_of(st.integers(-5, 100_000), json_values),
        ),
    ),
    "executions_get": lambda ids: st.fixed_dictionaries(
        {"execution_id": st.one_of(known_id(ids), st.uuids().map(str), any_value)},
        optional=optional(include_invocations=any_value),
    ),
    "executions_resume": lambda ids: st.fixed_dictionaries(
        {"execution_id": st.one_of(known_id(ids), st.uuids().map(str), any_value)},
        optional=optional(runner=st.one_of(st.sampled_from(["local", "async"]), nasty)),
    ),
    "executions_cancel": lambda ids: st.fixed_dictionaries(
        {"execution_id": st.one_of(known_id(ids), st.uuids().map(str), any_value)}
    ),
    "executions_list": lambda ids: st.fixed_dictionaries(
        {},
        optional=optional(
            limit=st.one_of(st.integers(-10, 2000), json_values),
            status=st.one_of(st.sampled_from(STATUSES), nasty),
            topology=any_value,
        ),
    ),
    "agents_show": lambda ids: st.fixed_dictionaries({"name": any_value}),
    "topologies_show": lambda ids: st.fixed_dictionaries({"name": any_value}),
    "agents_list": lambda ids: st.fixed_dictionaries(
        {}, optional=optional(role=st.one_of(st.sampled_from(ROLES), any_value))
    ),
    "approvals_answer": lambda ids: st.fixed_dictionaries(
        {"approval_id": st.one_of(int64, json_values), "approve": any_value},
        optional=optional(comment=st.one_of(plain_text, huge_text), edited=plain_text),
    ),
    "approvals_list": lambda ids: st.fixed_dictionaries(
        {}, optional=optional(status=st.one_of(st.sampled_from(["pending", "approved"]), nasty))
    ),
    "flows_generate": lambda ids: st.fixed_dictionaries(
        {"topology": st.one_of(st.sampled_from(KNOWN), any_value)},
        optional=optional(environment=st.one_of(st.sampled_from(["local", "kubernetes"]), nasty)),
    ),
}


# Valid calls, which mutations then break one field at a time: random arguments alone are
# nearly always refused by the schema and never reach the library's own checks or a write.
fresh_name = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", fullmatch=True)
prompts = st.one_of(
    plain_text,
    st.sampled_from(SQLISH + PATHISH + ODD),
    st.builds(lambda n: "p" * n, st.integers(100_000, 900_000)),
)
SHAPES = [
    ("pipeline", {"a": "base", "b": "base2"}, {}),
    ("pipeline", {"first": "topology:base_pipe", "second": "base"}, {}),
    (
        "ensemble",
        {"ensemble_0": "base", "ensemble_1": "base2", "aggregator": "base"},
        {"aggregation_method": "concat"},
    ),
    ("debate", {"proponent": "base", "opponent": "base2", "mediator": "base"}, {}),
    ("cross_check", {"primary": "base", "checker_1": "base2", "checker_2": "base"}, {}),
]
VALID: dict[str, Callable[[list[str]], st.SearchStrategy[dict[str, Any]]]] = {
    "agents_create": lambda ids: st.fixed_dictionaries(
        {"name": fresh_name, "role": st.sampled_from(ROLES), "model": st.just("offline")},
        optional=optional(
            description=st.one_of(plain_text, st.sampled_from(SQLISH + PATHISH)),
            system_prompt=st.one_of(plain_text, huge_text),
            temperature=st.floats(0, 1),
            max_tokens=st.integers(1, 128_000),
            capabilities=st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["reasoning", "memory"])}),
                max_size=2,
                unique_by=lambda c: c["name"],
            ),
        ),
    ),
    "topologies_create": lambda ids: st.builds(
        lambda name, shape, description: {
            "name": name,
            "topology_type": shape[0],
            "slots": shape[1],
            "config": shape[2],
            "description": description,
        },
        fresh_name,
        st.sampled_from(SHAPES),
        st.one_of(plain_text, st.sampled_from(SQLISH)),
    ),
    "topologies_run": lambda ids: st.fixed_dictionaries(
        {
            "topology": st.sampled_from(["base_pipe", "base_ens"]),
            "input": st.one_of(
                st.builds(lambda p: {"prompt": p}, prompts),
                st.builds(lambda p: json.dumps({"prompt": p}), prompts),
            ),
        },
        optional=optional(
            runner=st.sampled_from(["local", "async"]), timeout_seconds=st.integers(30, 3600)
        ),
    ),
    "executions_get": lambda ids: st.fixed_dictionaries(
        {"execution_id": known_id(ids), "include_invocations": st.booleans()}
    ),
    "executions_resume": lambda ids: st.fixed_dictionaries({"execution_id": known_id(ids)}),
    "executions_cancel": lambda ids: st.fixed_dictionaries({"execution_id": known_id(ids)}),
    "executions_list": lambda ids: st.fixed_dictionaries(
        {
            "limit": st.integers(1, 1000),
            "status": st.sampled_from(STATUSES),
            "topology": st.sampled_from(KNOWN),
        }
    ),
    "agents_show": lambda ids: st.fixed_dictionaries({"name": st.sampled_from(KNOWN[:2])}),
    "topologies_show": lambda ids: st.fixed_dictionaries({"name": st.sampled_from(KNOWN[2:])}),
    "agents_list": lambda ids: st.fixed_dictionaries({"role": st.sampled_from(ROLES)}),
    "approvals_answer": lambda ids: st.fixed_dictionaries(
        {"approval_id": st.integers(1, 5), "approve": st.booleans()},
        optional=optional(comment=plain_text),
    ),
    "approvals_list": lambda ids: st.fixed_dictionaries(
        {"status": st.sampled_from(["pending", "approved", "rejected"])}
    ),
    "flows_generate": lambda ids: st.fixed_dictionaries(
        {
            "topology": st.sampled_from(KNOWN[2:]),
            "environment": st.sampled_from(["local", "kubernetes", "batch"]),
        }
    ),
}
breaking_values = st.one_of(any_value, huge_text, json_texts, st.builds(list), st.builds(dict))


@st.composite
def mutated(draw: st.DrawFn, tool: str, ids: list[str]) -> dict[str, Any]:
    """A valid call with 0-3 fields replaced by bad values, dropped, or unknown ones added."""
    args = dict(draw(VALID[tool](ids)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["replace", "replace", "drop", "extra"]))
        if how == "extra" or not args:
            args[draw(nasty_key)] = draw(json_values)
        elif how == "drop":
            del args[draw(st.sampled_from(sorted(args)))]
        else:
            args[draw(st.sampled_from(sorted(args)))] = draw(breaking_values)
    return args


# -- helpers --------------------------------------------------------------------------------


def row_counts(db_file: Path) -> dict[str, int]:
    connection = sqlite3.connect(db_file)
    try:
        return {t: connection.execute(f'select count(*) from "{t}"').fetchone()[0] for t in TABLES}
    finally:
        connection.close()


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text[:2000]


def tool_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def expected_growth(tool: str, result: Any) -> dict[str, int]:
    """What a successful call may add: nothing, except a create or a run."""
    if result.is_error:
        return {}
    if tool == "agents_create":
        return {"agent_types": 1}
    if tool == "topologies_create":
        return {"topologies": 1}
    return {}


@dataclass
class McpHarness:
    """One server and client for a whole property test, driven from hypothesis's sync loop."""

    portal: Any
    client: Client
    db_file: Path
    execution_ids: list[str] = field(default_factory=list)

    def call(self, tool: str, args: dict[str, Any]) -> Any:
        return self.portal.call(self.client.call_tool, tool, args)


@pytest.fixture(
    params=[pytest.param({}, id="stateless"), pytest.param({"mode": "legacy"}, id="legacy")]
)
def mcp(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[McpHarness]:
    monkeypatch.chdir(tmp_path)  # flows_generate writes ./generated_flows
    db_file = tmp_path / "fuzz.db"
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        client = Client(build_server(f"sqlite+aiosqlite:///{db_file}"), **request.param)
        with portal.wrap_async_context_manager(client):
            harness = McpHarness(portal, client, db_file)
            for name, role in (("base", "executor"), ("base2", "specialist")):
                ok = harness.call("agents_create", {"name": name, "role": role, "model": "offline"})
                assert not ok.is_error, tool_text(ok)
            for name, kind, slots in (
                ("base_pipe", "pipeline", {"a": "base", "b": "base2"}),
                (
                    "base_ens",
                    "ensemble",
                    {"ensemble_0": "base", "ensemble_1": "base2", "aggregator": "base"},
                ),
            ):
                ok = harness.call(
                    "topologies_create", {"name": name, "topology_type": kind, "slots": slots}
                )
                assert not ok.is_error, tool_text(ok)
            ran = harness.call(
                "topologies_run", {"topology": "base_pipe", "input": {"prompt": "seed"}}
            )
            assert not ran.is_error, tool_text(ran)
            harness.execution_ids.append(ran.structured_content["execution_id"])
            yield harness
            alive = harness.call("executions_list", {"limit": 5})
            assert not alive.is_error, "the server keeps answering after the fuzz"


def check_tool_call(mcp: McpHarness, tool: str, args: dict[str, Any]) -> None:
    before = row_counts(mcp.db_file)
    result = mcp.call(tool, args)
    after = row_counts(mcp.db_file)
    text = tool_text(result)
    assert_no_traceback(text)
    if result.is_error:
        assert text.strip(), (tool, args)
        assert text.strip() != f"Error executing tool {tool}", (
            f"{tool} crashed instead of answering with a clear error: {args!r:.500}"
        )
        assert after == before, f"a failed {tool} call wrote rows: {before} -> {after}"
        count(f"mcp:{tool}:error")
        return
    count(f"mcp:{tool}:ok")
    if tool == "topologies_run":
        outcome = result.structured_content
        assert after["executions"] == before["executions"] + 1
        assert after["invocations"] > before["invocations"]
        assert outcome["status"] == "completed", outcome  # the offline model does not fail
        mcp.execution_ids.append(outcome["execution_id"])
        return
    growth = expected_growth(tool, result)
    assert after == {t: before[t] + growth.get(t, 0) for t in TABLES}, (tool, args)


# -- MCP tools, in process, both protocol eras ----------------------------------------------


@pytest.mark.slow  # hundreds of generated cases: the full suite, not the fast tier
@FUZZ
@given(data=st.data())
def test_mcp_tools_answer_clearly_and_never_half_write(
    mcp: McpHarness, data: st.DataObject
) -> None:
    tool = data.draw(st.sampled_from(sorted(TOOLS)), label="tool")
    ids = mcp.execution_ids
    args = data.draw(st.one_of(mutated(tool, ids), TOOLS[tool](ids)), label="args")
    count("mcp")
    check_tool_call(mcp, tool, args)


@settings(FUZZ, max_examples=40)
@given(
    prompt=st.text(st.characters(categories=("Cs",)), min_size=1, max_size=5).map(
        lambda s: "ok" + s
    ),
)
def test_mcp_lone_surrogates_in_run_input_are_a_clear_error(mcp: McpHarness, prompt: str) -> None:
    """They once crashed check_input (UnicodeEncodeError); now a ValidationError names them."""
    count("mcp:surrogates")
    check_tool_call(mcp, "topologies_run", {"topology": "base_pipe", "input": {"prompt": prompt}})
    check_tool_call(
        mcp, "topologies_run", {"topology": "base_pipe", "input": json.dumps({"prompt": prompt})}
    )


def test_mcp_surrogate_member_name_is_a_clear_error(mcp: McpHarness) -> None:
    """'topology:<lone surrogate>' once reached SQLite (store.get_topology_row) and crashed."""
    check_tool_call(
        mcp,
        "topologies_create",
        {"name": "t_sur", "topology_type": "pipeline", "slots": {"a": "topology:\ud800"}},
    )


def test_mcp_approval_id_beyond_64_bits_is_a_clear_error(mcp: McpHarness) -> None:
    """Such an id once reached SQLite and crashed with OverflowError; the schema bounds it."""
    check_tool_call(mcp, "approvals_answer", {"approval_id": 2**64, "approve": True})


# -- the CLI through typer's CliRunner ------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    argv: list[str]
    runs: bool = False  # a run or resume: exit 1 is allowed when the run itself failed


argv_text = st.one_of(
    st.sampled_from(SQLISH + PATHISH + [s for s in ODD if s] + KNOWN),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=120),
    surrogate_text,
)
option_value = st.one_of(argv_text, int64.map(str), st.floats().map(str))
small_int = st.integers(-5, 100).map(str)
AGENT_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--model": st.one_of(
        st.sampled_from(["offline", "claude-sonnet-4-5", "function:x"]), argv_text
    ),
    "--description": st.one_of(argv_text, st.just("d" * 200_000)),
    "--system-prompt": argv_text,
    "--temperature": option_value,
    "--max-tokens": option_value,
    "--capabilities-json": st.one_of(st.just('[{"name": "memory"}]'), json_texts),
    "--mixin": st.one_of(st.sampled_from(MIXINS), argv_text),
}
RUN_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--runner": st.one_of(st.sampled_from(["local", "async"]), argv_text),
    "--max-concurrent": st.one_of(st.sampled_from(["1", "5"]), small_int, option_value),
    "--timeout": st.one_of(st.sampled_from(["1", "60"]), small_int, option_value),
    "--max-retries": st.one_of(st.sampled_from(["0", "3"]), small_int, option_value),
    "--format": st.one_of(st.sampled_from(["json", "table"]), argv_text),
}


def options(draw: st.DrawFn, choices: dict[str, st.SearchStrategy[str]], most: int) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(choices)), max_size=most))
    return [part for name in names for part in (name, draw(choices[name]))]


@st.composite
def cli_cases(draw: st.DrawFn) -> CliCase:
    """One `qmcp` command line; `--` keeps a drawn value from being read as an option."""
    command = draw(
        st.sampled_from(
            [
                "agents create",
                "agents show",
                "agents list",
                "topologies create",
                "topologies show",
                "topologies run",
                "executions show",
                "executions list",
                "executions resume",
                "executions prune",
                "approvals answer",
                "approvals list",
            ]
        )
    )
    name = draw(st.one_of(st.sampled_from(KNOWN), argv_text))
    if command == "agents create":
        role = draw(st.one_of(st.sampled_from(ROLES), argv_text))
        return CliCase(["agents", "create", *options(draw, AGENT_OPTIONS, 3), "--", name, role])
    if command == "topologies create":
        kind = draw(st.one_of(st.sampled_from(KINDS), argv_text))
        slot_values = st.one_of(
            st.sampled_from(
                ["a=base", "ensemble_0=base", "aggregator=base2", "b=topology:base_pipe"]
            ),
            argv_text,
        )
        extra = [p for s in draw(st.lists(slot_values, max_size=3)) for p in ("--slot", s)]
        extra += options(
            draw,
            {
                "--config-json": json_texts,
                "--description": st.one_of(argv_text, st.just("d" * 200_000)),
            },
            2,
        )
        return CliCase(["agents", "topologies", "create", *extra, "--", name, kind])
    if command == "topologies run":
        argv = ["agents", "topologies", "run", *options(draw, RUN_OPTIONS, 2)]
        return CliCase([*argv, "--input-json", draw(json_texts), "--", name], runs=True)
    if command == "agents show":
        return CliCase(["agents", "show", "--", name])
    if command == "topologies show":
        return CliCase(["agents", "topologies", "show", "--", name])
    if command == "agents list":
        return CliCase(
            ["agents", "list", "--role", draw(st.one_of(st.sampled_from(ROLES), argv_text))]
        )
    if command in ("executions show", "executions resume"):
        ident = draw(st.one_of(st.uuids().map(str), argv_text))
        return CliCase([*command.split(), "--", ident], runs=command.endswith("resume"))
    if command == "executions list":
        listing = {
            "--limit": st.one_of(st.integers(-5, 5000).map(str), argv_text),
            "--status": st.one_of(st.sampled_from(STATUSES), argv_text),
            "--topology": argv_text,
            "--format": st.sampled_from(["json", "table", "xml"]),
        }
        return CliCase(["executions", "list", *options(draw, listing, 3)])
    if command == "executions prune":
        days = draw(
            st.one_of(st.integers(-5, 100_000).map(str), st.sampled_from(["abc", "0.5", "-1"]))
        )
        return CliCase(["executions", "prune", "--older-than-days", days])
    if command == "approvals answer":
        ident = draw(st.one_of(int64.map(str), argv_text))
        decision = draw(st.sampled_from(["--approve", "--reject"]))
        return CliCase(["approvals", "answer", decision, "--", ident])
    status = draw(st.one_of(st.sampled_from(["pending", "approved"]), argv_text))
    return CliCase(["approvals", "list", "--status", status])


def run_cli(runner: CliRunner, argv: list[str], db_file: Path) -> Any:
    return runner.invoke(app, argv, env={"QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}"})


def check_cli_result(
    result: Any, case: CliCase, before: dict[str, int], after: dict[str, int]
) -> None:
    stderr = result.stderr
    assert_no_traceback(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.argv!r:.300} raised {result.exception!r:.300}"
    )
    if result.exit_code == 1:
        assert case.runs, f"exit 1 is for a failed run only: {case.argv!r:.300}\n{stderr}"
        assert after["executions"] >= before["executions"]
        return
    assert result.exit_code in (0, 2), (result.exit_code, case.argv, stderr)
    if result.exit_code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("error: ")]
        usage = [line for line in lines if line.startswith("Error: ")]
        assert (len(ours) == 1 and len(lines) == 1) or usage, (
            f"not one clear line: {stderr!r:.1000}"
        )
        assert after == before, f"a failed command wrote rows: {case.argv!r:.300}"


@pytest.fixture
def cli_db(tmp_path: Path) -> Path:
    db_file = tmp_path / "cli.db"
    runner = CliRunner()
    for argv in (
        ["agents", "create", "base", "executor", "--model", "offline"],
        ["agents", "create", "base2", "specialist", "--model", "offline"],
        [
            "agents",
            "topologies",
            "create",
            "base_pipe",
            "pipeline",
            "--slot",
            "a=base",
            "--slot",
            "b=base2",
        ],
        [
            "agents",
            "topologies",
            "create",
            "base_ens",
            "ensemble",
            "--slot",
            "ensemble_0=base",
            "--slot",
            "ensemble_1=base2",
            "--slot",
            "aggregator=base",
        ],
    ):
        result = run_cli(runner, argv, db_file)
        assert result.exit_code == 0, result.output
    return db_file


@settings(FUZZ, max_examples=CLI_EXAMPLES)
@given(case=cli_cases())
@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_cli_exits_0_or_2_with_one_clear_line(cli_db: Path, case: CliCase) -> None:
    count("cli")
    before = row_counts(cli_db)
    result = run_cli(CliRunner(), case.argv, cli_db)
    check_cli_result(result, case, before, row_counts(cli_db))


def fixed_bug(argv: list[str], ident: str, defect: str) -> Any:
    """A command line that crashed once (`defect` says how, for the reader); it must not again."""
    return pytest.param(argv, id=ident)


SURROGATE = (
    "a lone surrogate (argv bytes decoded with surrogateescape, or a JSON '\\ud800' escape) "
    "reached {where} and raised UnicodeEncodeError: exit 1 with a traceback"
)
FIXED_CLI_BUGS = [
    fixed_bug(
        ["agents", "create", "sur", "executor", "--model", "offline", "--description", "\udcff"],
        "surrogate-description",
        SURROGATE.format(where="SQLite in store.add_agent"),
    ),
    fixed_bug(
        ["agents", "topologies", "run", "base_pipe", "--input-json", '{"prompt": "\\ud800"}'],
        "surrogate-escape-in-input",
        SURROGATE.format(where="encoded.encode() in runners/base.py check_input"),
    ),
    fixed_bug(
        ["executions", "list", "--topology", "\udcff"],
        "surrogate-filter",
        SURROGATE.format(where="SQLite in store.list_executions"),
    ),
    fixed_bug(
        ["agents", "create", "deep", "executor", "--capabilities-json", "[" * 10_000],
        "deep-capabilities-json",
        "cli.agents_create parses --capabilities-json catching ValueError only; deep nesting "
        "raises RecursionError",
    ),
    fixed_bug(
        ["executions", "prune", "--older-than-days", "nan"],
        "prune-nan",
        "service.prune_executions checks `< 0` only; NaN passes and timedelta(days=nan) raises "
        "ValueError",
    ),
    fixed_bug(
        ["executions", "prune", "--older-than-days", "inf"],
        "prune-inf",
        "service.prune_executions: timedelta(days=inf) raises OverflowError",
    ),
    fixed_bug(
        ["executions", "prune", "--older-than-days", "1e300"],
        "prune-huge",
        "service.prune_executions: timedelta(days=1e300) raises OverflowError",
    ),
    fixed_bug(
        ["approvals", "answer", "99999999999999999999", "--approve"],
        "approval-id-overflow",
        "an approval id beyond 64 bits reaches SQLite in store.decide_approval: OverflowError",
    ),
    fixed_bug(
        ["agents", "topologies", "run", "base_pipe", "--timeout", "0"],
        "run-option-pydantic-dump",
        "cli.topologies_run prints `invalid run option: {exc}`: a 4-line pydantic dump with a "
        "URL instead of one line naming the option",
    ),
]


@pytest.mark.parametrize("argv", FIXED_CLI_BUGS)
def test_cli_known_bad_inputs_get_one_clear_line(cli_db: Path, argv: list[str]) -> None:
    before = row_counts(cli_db)
    result = run_cli(CliRunner(), argv, cli_db)
    check_cli_result(result, CliCase(argv, runs=False), before, row_counts(cli_db))
    assert result.exit_code == 2


# -- real processes: argv bytes, stdio JSON-RPC ---------------------------------------------


def qmcp_process(args: list[str | bytes], db_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}"}
    return subprocess.Popen(
        [str(BIN / "qmcp"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_cli_processes_refuse_bad_input_with_exit_2(cli_db: Path) -> None:
    """Real processes (argv is bytes on Linux), all started at once to keep this fast."""
    cases: list[list[str | bytes]] = [
        ["agents", "create", "../../etc/passwd", "executor"],
        ["agents", "create", "x'; DROP TABLE agent_types; --", "executor"],
        ["agents", "create", b"\xff\xfe", "executor"],
        ["agents", "create", "C:\\x", "executor", "--model", "offline"],
        ["agents", "topologies", "run", "base_pipe", "--input-json", deep_json(10_000)],
        ["agents", "topologies", "run", "base_pipe", "--input-json", "{" * 60_000],
        ["agents", "topologies", "run", "/tmp/x", "--input-json", '{"prompt": "x"}'],
        ["executions", "show", "'; DROP TABLE executions; --"],
        [
            "agents",
            "topologies",
            "create",
            "t",
            "pipeline",
            "--slot",
            "a=base",
            "--config-json",
            "[]",
        ],
    ]
    before = row_counts(cli_db)
    processes = [qmcp_process(args, cli_db) for args in cases]
    for args, process in zip(cases, processes, strict=True):
        _, stderr_bytes = process.communicate(timeout=120)
        stderr = stderr_bytes.decode("utf-8", "replace")
        count("cli-process")
        assert process.returncode == 2, (args[:4], stderr)
        assert_no_traceback(stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert row_counts(cli_db) == before


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_cli_process_undecodable_description_bytes(cli_db: Path) -> None:
    """argv bytes decoded with surrogateescape once crashed the description write."""
    process = qmcp_process(
        ["agents", "create", "bytes", "executor", "--model", "offline", "--description", b"\xff"],
        cli_db,
    )
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and b"Traceback" not in stderr, stderr.decode("utf-8", "replace")


@pytest.mark.slow  # a server process
def test_stdio_server_survives_malformed_json_rpc(tmp_path: Path) -> None:
    """Garbage lines, 10 000-deep nesting, a 2 MB string and wrong types; then it still answers."""
    db_file = tmp_path / "stdio.db"
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"},
        },
    }

    def call(ident: int, name: str, arguments: Any) -> bytes:
        return json.dumps(
            {
                "jsonrpc": "2.0",
                "id": ident,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments},
            }
        ).encode()

    hostile = [
        b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {',
        b"\xff\xfe\x00 not json",
        b"[1, 2, 3]",
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"topologies_run",'
        b'"arguments":{"topology":"p","input":' + deep_json(10_000).encode() + b"}}}",
        call(
            4, "agents_create", {"name": "big", "role": "executor", "description": "x" * 2_000_000}
        ),
        call(5, "agents_create", "not an object"),
        call(6, "agents_create", {"name": ["list"], "role": 7}),
        call(7, "agents_create", {"name": "'; DROP TABLE agent_types; --", "role": "executor"}),
        call(8, "topologies_run", {"topology": "../../etc/passwd", "input": "{" * 50_000}),
        call(9, "no_such_tool", {}),
    ]
    errors = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "qmcp-server")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        env={**os.environ, "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}"},
        cwd=tmp_path,
    )
    assert process.stdin is not None and process.stdout is not None
    replies: dict[int, dict[str, Any]] = {}
    try:
        for line in [
            json.dumps(init).encode(),
            b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
            *hostile,
            call(99, "executions_list", {}),
        ]:
            process.stdin.write(line + b"\n")
            process.stdin.flush()
        while 99 not in replies:  # the last request is answered: the server survived the rest
            line = process.stdout.readline()
            assert line, (tmp_path / "stderr.log").read_text(errors="replace")
            message = json.loads(line)
            if "id" in message:
                replies[message["id"]] = message
    finally:
        process.stdin.close()
        process.wait(30)
        errors.close()
    TRIED["stdio"] = TRIED.get("stdio", 0) + len(hostile)
    assert replies[99]["result"]["structuredContent"] == {"executions": []}
    for ident in (4, 6, 7, 8):
        result = replies[ident]["result"]
        assert result["isError"] is True, result
        text = result["content"][0]["text"]
        assert_no_traceback(text)
        assert text.strip() != "Error executing tool"
    assert "error" in replies[5]  # not an arguments object: a JSON-RPC error, not a crash
    assert replies[9]["error"]["code"] == -32602  # an unknown tool: invalid params (the spec's)
    assert row_counts(db_file)["agent_types"] == 0
    assert row_counts(db_file)["executions"] == 0


def test_zz_report_fuzz_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """Print how many cases ran (visible with -s); runs last in this file."""
    with capsys.disabled():
        total = sum(v for k, v in TRIED.items() if k in ("mcp", "cli", "cli-process", "stdio"))
        print(f"\nfuzz cases tried: {total} {dict(sorted(TRIED.items()))}")
