"""Budgets: a run stops before an invocation its budget (`RunConfig.max_cost_usd`,
`max_total_tokens`) no longer covers, and resumes with a larger one without paying twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import MessagesAPIServer
from typer.testing import CliRunner

from qmcp.agentframework import service
from qmcp.agentframework.cli import app
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    ProviderRegistry,
    register_function,
    unregister_function,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
STAGES = 4
PIPELINE = Topology(name="p", topology_type=TopologyType.PIPELINE, config={})


@pytest.fixture
def metered() -> Iterator[list[str]]:
    """`function:metered` answers with 100 input and 50 output tokens; the list is who asked."""
    asked: list[str] = []

    def answer(request: LLMRequest) -> LLMResponse:
        asked.append(request.slot)
        return LLMResponse(
            text=f"{request.slot} done",
            model="metered",
            provider="function",
            input_tokens=100,
            output_tokens=50,
        )

    register_function("metered", answer)
    yield asked
    unregister_function("metered")


def stages(model: ModelConfig) -> dict[str, AgentType]:
    config = AgentConfig(model_config_obj=model).model_dump(mode="json")
    return {
        f"stage_{i}": AgentType(name=f"a{i}", role=AgentRole.EXECUTOR, config=config)
        for i in range(STAGES)
    }


METERED = ModelConfig(provider="function", model="metered")


async def test_a_token_budget_stops_a_pipeline_midway_and_a_larger_one_finishes_it(
    db_url: str, metered: list[str]
) -> None:
    agents = stages(METERED)
    runner = LocalRunner(db_url=db_url, config=RunConfig(max_total_tokens=300))
    result = await runner.run(PIPELINE, agents, {"prompt": "go"})
    assert result.status == "failed"
    error = result.error or ""
    assert error.startswith("budget exceeded: 300 tokens used of max_total_tokens 300")
    assert "stage-2/stage_2" in error and f"executions resume {result.execution_id}" in error
    assert metered == ["stage_0", "stage_1"], "stopped before the third stage was asked"
    store = Store(db_url)
    rows = await store.invocations(result.execution_id)
    assert [(r.key, r.status) for r in rows] == [
        ("stage-0/stage_0", "completed"),
        ("stage-1/stage_1", "completed"),
        ("stage-2/stage_2", "failed"),
    ]
    assert (rows[-1].error or "").startswith("budget exceeded: ")

    # The same budget again: still spent, nothing is asked.
    again = await LocalRunner(db_url=db_url, config=RunConfig(max_total_tokens=300)).resume(
        result.execution_id
    )
    assert again.status == "failed" and (again.error or "").startswith("budget exceeded")
    assert len(metered) == 2

    done = await LocalRunner(db_url=db_url, config=RunConfig(max_total_tokens=1000)).resume(
        result.execution_id
    )
    assert done.status == "completed", done.error
    assert metered == ["stage_0", "stage_1", "stage_2", "stage_3"], "nothing paid twice"
    execution = await store.get_execution(result.execution_id)
    assert (execution.input_tokens, execution.output_tokens) == (400, 200)


async def test_a_cost_budget_through_the_real_sdk(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MessagesAPIServer() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-budget")
        ProviderRegistry.reset()
        agents = stages(Models.CLAUDE_SONNET_4)
        probe = await LocalRunner(db_url=db_url).run(PIPELINE, dict(agents), {"prompt": "go"})
        assert probe.status == "completed", probe.error
        costs = [r.cost_usd or 0.0 for r in await Store(db_url).invocations(probe.execution_id)]
        assert all(c > 0 for c in costs)
        asked = len(api.requests)

        budget = costs[0] + costs[1] / 2  # covers the first stage and part of the second
        runner = AsyncRunner(db_url=db_url, config=RunConfig(max_cost_usd=budget))
        result = await runner.run(PIPELINE, dict(agents), {"prompt": "go"})
        assert result.status == "failed"
        assert (result.error or "").startswith("budget exceeded: $")
        assert f"of max_cost_usd ${budget:g}" in (result.error or "")
        assert len(api.requests) == asked + 2, "two stages asked, the third stopped"

        done = await AsyncRunner(db_url=db_url, config=RunConfig(max_cost_usd=1.0)).resume(
            result.execution_id
        )
        assert done.status == "completed", done.error
        assert len(api.requests) == asked + STAGES, "the first two stages are not asked again"
        execution = await Store(db_url).get_execution(result.execution_id)
        assert execution.cost_usd == pytest.approx(sum(costs), rel=0.01)


async def test_the_budget_stops_a_fan_out_as_a_whole(db_url: str, metered: list[str]) -> None:
    members = {
        f"ensemble_{i}": AgentType(
            name=f"m{i}",
            role=AgentRole.SPECIALIST,
            config=AgentConfig(model_config_obj=METERED).model_dump(mode="json"),
        )
        for i in range(6)
    }
    topology = Topology(
        name="e",
        topology_type=TopologyType.ENSEMBLE,
        # A tolerant ensemble: a member's failure would be absorbed, a spent budget is not.
        config={"aggregation_method": "concat", "failure_threshold": 1.0, "min_successes": 1},
    )
    result = await LocalRunner(db_url=db_url, config=RunConfig(max_total_tokens=450)).run(
        topology, members, {"prompt": "go"}
    )
    assert result.status == "failed"
    assert (result.error or "").startswith("budget exceeded")
    assert len(metered) == 3


async def test_a_resume_that_names_no_budget_keeps_the_one_the_run_started_with(
    db_url: str, metered: list[str]
) -> None:
    """The service's resume (CLI, MCP tools, a stateless client's next sampling round) goes on
    with the options the run started with, changing only those it is given."""
    agents = stages(METERED)
    config = RunConfig(max_total_tokens=300, max_retries=1)
    result = await LocalRunner(db_url=db_url, config=config).run(PIPELINE, agents, {"prompt": "go"})
    assert result.status == "failed" and metered == ["stage_0", "stage_1"]

    again = await service.resume_execution(result.execution_id, db_url=db_url)
    assert again.status == "failed", "no budget named: the old one still holds"
    assert (again.error or "").startswith("budget exceeded: 300 tokens used")
    assert len(metered) == 2

    # Other options given (as topologies_run passes timeout_seconds): the budget stays.
    started = await service.claim_run(
        result.execution_id, config={"timeout_seconds": 60}, db_url=db_url
    )
    kept = started.runner.config
    assert (kept.max_total_tokens, kept.max_retries, kept.timeout_seconds) == (300, 1, 60)
    assert (await service.finish_run(started)).status == "failed"
    assert len(metered) == 2

    done = await service.resume_execution(
        result.execution_id, config=RunConfig(max_total_tokens=1000), db_url=db_url
    )
    assert done.status == "completed", done.error
    assert metered == [f"stage_{i}" for i in range(STAGES)], "nothing paid twice"


def test_the_cli_takes_a_budget_for_a_run_and_for_its_resume(metered: list[str]) -> None:
    async def setup() -> None:
        for i in range(STAGES):
            await service.create_agent(f"s{i}", "executor", model="function:metered")
        await service.create_topology(
            "budgeted", "pipeline", {f"stage_{i}": f"s{i}" for i in range(STAGES)}
        )

    asyncio.run(setup())
    cli = CliRunner()
    ran = cli.invoke(
        app,
        [
            "agents",
            "topologies",
            "run",
            "budgeted",
            "--max-total-tokens",
            "150",
            "--format",
            "json",
        ],
    )
    assert ran.exit_code == 1, ran.output
    outcome: dict[str, Any] = json.loads(ran.stdout)
    assert outcome["error"].startswith("budget exceeded: 150 tokens used")
    assert metered == ["stage_0"]

    refused = cli.invoke(
        app, ["executions", "resume", outcome["execution_id"], "--max-cost-usd", "-1"]
    )
    assert refused.exit_code != 0 and "max_cost_usd" in refused.output

    resumed = cli.invoke(
        app,
        [
            "executions",
            "resume",
            outcome["execution_id"],
            "--max-total-tokens",
            "10000",
            "--format",
            "json",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["status"] == "completed"
    assert metered == [f"stage_{i}" for i in range(STAGES)]
