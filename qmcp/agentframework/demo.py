"""`qmcp demo`: the main job end to end on the embedded default (SQLite + offline model)."""

from __future__ import annotations

import json
import sys
from contextlib import suppress
from typing import Any

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConflictError
from qmcp.agentframework.store import Store

DEMO_AGENTS = [
    ("demo_planner", "planner", "Breaks a request into steps"),
    ("demo_executor", "executor", "Carries out the plan"),
    ("demo_reviewer", "reviewer", "Checks the result"),
    ("demo_researcher_1", "specialist", "Researches one angle"),
    ("demo_researcher_2", "specialist", "Researches another angle"),
    ("demo_researcher_3", "specialist", "Researches a third angle"),
    ("demo_synthesizer", "synthesizer", "Combines the research"),
]
DEMO_TOPOLOGIES: list[tuple[str, str, dict[str, str], dict[str, Any], str]] = [
    (
        "demo_pipeline",
        "pipeline",
        {"plan": "demo_planner", "execute": "demo_executor", "review": "demo_reviewer"},
        {},
        "plan, execute, review",
    ),
    (
        "demo_ensemble",
        "ensemble",
        {
            "ensemble_0": "demo_researcher_1",
            "ensemble_1": "demo_researcher_2",
            "ensemble_2": "demo_researcher_3",
            "aggregator": "demo_synthesizer",
        },
        {"aggregation_method": "synthesis"},
        "three researchers in parallel, then a synthesis",
    ),
]
DEMO_INPUT = {"prompt": "How should a small team adopt multi-agent LLM workflows?"}
# An agent that acts: it uses this project's own MCP server as its tools (two read-only ones),
# started over stdio by the run and stopped when the run ends.
DEMO_TOOL_AGENT = ("demo_scout", "specialist", "Looks up which runners qmcp has, with a tool")
DEMO_TOOL_TOPOLOGY: tuple[str, str, dict[str, str], dict[str, Any], str] = (
    "demo_tools",
    "pipeline",
    {"scout": "demo_scout", "write": "demo_executor"},
    {},
    "a scout that calls an MCP tool, then a writer",
)


def demo_tool_servers() -> list[dict[str, Any]]:
    return [
        {
            "name": "qmcp",
            "command": sys.executable,
            "args": ["-m", "qmcp_server"],
            "allow": ["runners_list", "mixins_list"],
        }
    ]


async def ensure_demo_objects(db_url: str | None = None) -> None:
    """Create the demo agents and topologies on the offline model, once."""
    for name, role, description in DEMO_AGENTS:
        with suppress(ConflictError):
            await service.create_agent(
                name, role, description=description, model="offline", db_url=db_url
            )
    with suppress(ConflictError):
        name, role, description = DEMO_TOOL_AGENT
        await service.create_agent(
            name,
            role,
            description=description,
            model="offline",
            tools=demo_tool_servers(),
            db_url=db_url,
        )
    for name, kind, slots, config, description in [*DEMO_TOPOLOGIES, DEMO_TOOL_TOPOLOGY]:
        with suppress(ConflictError):
            await service.create_topology(
                name, kind, slots, config=config, description=description, db_url=db_url
            )


async def run_demo(json_output: bool = False, db_url: str | None = None) -> list[dict[str, Any]]:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    await ensure_demo_objects(db_url)
    results = []
    runs = (("demo_pipeline", "local"), ("demo_ensemble", "async"), ("demo_tools", "local"))
    for name, runner_type in runs:
        result = await service.run_topology(
            name, DEMO_INPUT, runner_type=runner_type, db_url=db_url
        )
        execution, invocations = await service.get_execution(result.execution_id, db_url)
        record = service.execution_to_dict(execution)
        results.append(record)
        if json_output:
            continue
        console.rule(f"{name} on {runner_type}: {result.status} in {result.duration_ms} ms")
        for invocation in invocations:
            tool_calls = (invocation.output or {}).get("tool_calls")
            console.print(
                f"  [dim]{invocation.key:<14}[/] {invocation.agent_name:<18} "
                f"{invocation.status.value:<9} {invocation.duration_ms:7.1f} ms "
                f"in {invocation.input_tokens} / out {invocation.output_tokens} tokens"
                + (f", {tool_calls} tool call(s)" if tool_calls else "")
            )
        console.print(
            (result.output or {}).get("content", result.error or ""), markup=False, emoji=False
        )
    if json_output:
        sys.stdout.write(json.dumps(results, indent=2, default=str) + "\n")
    else:
        console.rule()
        console.print(
            f"recorded in {Store(db_url).url}; see `qmcp executions list` and "
            "`qmcp executions show ID`",
            markup=False,
            emoji=False,
        )
    return results
