"""chain_of_command: decomposition, assignment, parallel workers, escalation, repair, bounds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from agent_team import Team

from qmcp.agentframework import service
from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.llm import unregister_function
from qmcp.agentframework.models import (
    AgentConfig,
    AgentType,
    ExecutionStatus,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.store import Store
from qmcp.agentframework.topologies import TopologyRegistry
from qmcp.agentframework.topologies.chain_of_command import ChainOfCommandConfig, parse_plan

pytestmark = pytest.mark.anyio


@pytest.fixture
def team() -> Iterator[Team]:
    made = Team()
    yield made
    for name in made.registered:
        unregister_function(name)


@pytest.fixture(params=["local", "async"])
def runner(request: pytest.FixtureRequest, db_url: str) -> LocalRunner | AsyncRunner:
    config = RunConfig(max_retries=0)
    if request.param == "local":
        return LocalRunner(config=config, db_url=db_url)
    return AsyncRunner(db_url=db_url, max_concurrent=4, config=config)


def plan_json(*titles: str) -> str:
    subtasks = [{"title": t, "description": f"do {t} well"} for t in titles]
    return json.dumps({"subtasks": subtasks})


def commander(plan: str | list[str], escalation: str = "commander fixed it\nconfidence: 0.9"):
    """Plans (then repairs, in order), handles escalations, and synthesises what it is shown."""
    plans = [plan] if isinstance(plan, str) else list(plan)

    def answer(prompt: str) -> str:
        if prompt.startswith("Your team has worked"):
            return "FINAL\n" + prompt
        if prompt.startswith("Escalation:"):
            return escalation
        return plans.pop(0)

    return answer


def worker(prompt: str) -> str:
    title = prompt.split("Subtask ", 1)[1].split("\n", 1)[0]
    return f"result of {title}\nconfidence: 0.9"


def topology(**config: Any) -> Topology:
    return Topology(name="chain", topology_type=TopologyType.CHAIN_OF_COMMAND, config=config)


async def keys_of(runner: LocalRunner | AsyncRunner, execution_id: uuid.UUID) -> set[str]:
    return {row.key for row in await runner.store.invocations(execution_id)}


async def test_commander_decomposes_lieutenants_brief_workers_and_results_flow_up(
    runner: LocalRunner | AsyncRunner, team: Team
) -> None:
    agents = {
        "commander": team.agent("boss", commander(plan_json("alpha", "beta", "gamma"))),
        "lieutenant_1": team.agent("lt1", lambda p: "BRIEF-1 " + p.splitlines()[-1]),
        "lieutenant_2": team.agent("lt2", lambda p: "BRIEF-2 " + p.splitlines()[-1]),
        "worker_1": team.agent("w1", worker),
        "worker_2": team.agent("w2", worker),
    }
    result = await runner.run(topology(), agents, {"task": "Ship the release", "deadline": "fri"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    out = result.output
    assert out is not None

    (plan_prompt,) = [p for p in team.prompts("boss") if p.startswith("You command")]
    assert "Ship the release" in plan_prompt and '"deadline": "fri"' in plan_prompt
    assert (
        "at most 5 subtasks" in plan_prompt and "2 worker(s) led by 2 lieutenant(s)" in plan_prompt
    )
    assert [s["title"] for s in out["strategy"]] == ["alpha", "beta", "gamma"]
    assert out["fallback"] is False
    assert [(a["lieutenant"], a["worker"]) for a in out["assignments"]] == [
        ("lieutenant_1", "worker_1"),
        ("lieutenant_2", "worker_2"),
        ("lieutenant_1", "worker_1"),
    ]
    # Lieutenants see their subtasks (round-robin) and the task; workers see their briefing.
    assert [p.splitlines()[-1] for p in team.prompts("lt1")] == ["do alpha well", "do gamma well"]
    assert [p.splitlines()[-1] for p in team.prompts("lt2")] == ["do beta well"]
    assert all("Ship the release" in p for p in team.prompts("lt1") + team.prompts("lt2"))
    w1 = team.prompts("w1")
    assert len(w1) == 2 and "BRIEF-1 do alpha well" in w1[0] and "BRIEF-1 do gamma well" in w1[1]
    assert "BRIEF-2 do beta well" in team.prompts("w2")[0]
    # The commander synthesises from every worker's result.
    synthesis = out["content"]
    assert synthesis.startswith("FINAL")
    for n, title in enumerate(["alpha", "beta", "gamma"], start=1):
        assert f"result of {n} of 3: {title}" in synthesis
    assert out["results"]["worker"]["subtask-1"]["slot"] == "worker_2"
    assert out["results"]["lieutenant"]["subtask-2"]["content"] == "BRIEF-1 do gamma well"
    assert out["escalations"] == [] and {s["status"] for s in out["subtasks"]} == {"completed"}
    assert await keys_of(runner, result.execution_id) == {
        "commander/plan",
        "lieutenant_1/subtask-0",
        "lieutenant_2/subtask-1",
        "lieutenant_1/subtask-2",
        "worker_1/subtask-0",
        "worker_2/subtask-1",
        "worker_1/subtask-2",
        "commander/synthesis",
    }


@pytest.mark.parametrize("kind", ["local", "async"])
async def test_workers_run_in_parallel_only_on_the_async_runner(
    kind: str, db_url: str, team: Team
) -> None:
    team.delay = 0.05
    agents = {
        "commander": team.agent("boss", commander(plan_json("a", "b", "c"))),
        **{f"worker_{i}": team.agent(f"w{i}", worker) for i in (1, 2, 3)},
    }
    runner = (
        LocalRunner(db_url=db_url) if kind == "local" else AsyncRunner(db_url, max_concurrent=3)
    )
    result = await runner.run(topology(), agents, {"prompt": "three things"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    assert team.peak == (1 if kind == "local" else 3)
    assert [a["worker"] for a in result.output["assignments"]] == [
        "worker_1",
        "worker_2",
        "worker_3",
    ]


async def test_failed_worker_escalates_to_its_lieutenant(
    runner: LocalRunner | AsyncRunner, team: Team
) -> None:
    def flaky(prompt: str) -> str:
        if "beta" in prompt:
            raise RuntimeError("worker crashed on beta")
        return worker(prompt)

    def lieutenant(prompt: str) -> str:
        if prompt.startswith("Escalation:"):
            return "lieutenant handled beta\nconfidence: 0.8"
        return prompt.splitlines()[-1]

    agents = {
        "commander": team.agent("boss", commander(plan_json("alpha", "beta"))),
        "lieutenant_1": team.agent("lt", lieutenant),
        "worker_1": team.agent("w1", flaky),
    }
    result = await runner.run(topology(), agents, {"task": "two parts"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    out = result.output
    (escalation,) = out["escalations"]
    assert escalation["subtask"] == 1 and escalation["from"] == "worker_1"
    assert escalation["to"] == "lieutenant_1" and escalation["key"] == "escalation/subtask-1"
    assert escalation["resolved"] is True and "worker crashed on beta" in escalation["reason"]
    (seen,) = [p for p in team.prompts("lt") if p.startswith("Escalation:")]
    assert "worker crashed on beta" in seen and "do beta well" in seen
    assert out["results"]["worker"]["subtask-1"]["error"].endswith("worker crashed on beta")
    assert out["subtasks"][1]["status"] == "resolved" and out["subtasks"][1]["by"] == "lieutenant_1"
    assert "lieutenant handled beta" in out["content"]
    assert "escalation/subtask-1" in await keys_of(runner, result.execution_id)


async def test_low_confidence_escalates_to_the_commander_without_lieutenants(
    runner: LocalRunner | AsyncRunner, team: Team
) -> None:
    agents = {
        "commander": team.agent("boss", commander(plan_json("only"))),
        "worker_1": team.agent("w1", "a guess\nconfidence: 0.3"),
    }
    result = await runner.run(topology(), agents, {"task": "hard question"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    (escalation,) = result.output["escalations"]
    assert escalation["to"] == "commander" and "0.30 is below" in escalation["reason"]
    (seen,) = [p for p in team.prompts("boss") if p.startswith("Escalation:")]
    assert "a guess" in seen
    assert result.output["subtasks"][0]["content"] == "commander fixed it\nconfidence: 0.9"


async def test_escalation_threshold_decides_what_escalates(db_url: str, team: Team) -> None:
    agents = {
        "commander": team.agent("boss", commander(plan_json("only"))),
        "worker_1": team.agent("w1", "a guess\nconfidence: 0.3"),
    }
    result = await LocalRunner(db_url=db_url).run(
        topology(escalation_threshold=0.25), agents, {"task": "hard question"}
    )
    assert result.output["escalations"] == []
    assert result.output["subtasks"][0] | {"content": None} == {
        "subtask": 0,
        "title": "only",
        "status": "completed",
        "by": "worker_1",
        "content": None,
        "confidence": 0.3,
        "note": None,
    }
    assert not [p for p in team.prompts("boss") if p.startswith("Escalation:")]


@pytest.mark.parametrize(
    ("depth", "handlers"),
    [
        (1, []),
        (2, ["lieutenant_1"]),
        (3, ["lieutenant_1", "commander"]),
        (5, ["lieutenant_1", "commander", "commander", "commander"]),
    ],
)
async def test_max_delegation_depth_bounds_escalation_levels(
    depth: int, handlers: list[str], db_url: str, team: Team
) -> None:
    low = "unsure\nconfidence: 0.1"
    agents = {
        "commander": team.agent("boss", commander(plan_json("only"), escalation=low)),
        "lieutenant_1": team.agent("lt", lambda p: low if p.startswith("Escalation") else "go"),
        "worker_1": team.agent("w1", low),
    }
    result = await LocalRunner(db_url=db_url).run(
        topology(max_delegation_depth=depth), agents, {"task": "impossible"}
    )
    assert result.status is ExecutionStatus.COMPLETED, result.error
    escalations = result.output["escalations"]
    assert [e["to"] for e in escalations if e["to"]] == handlers
    assert [e["key"] for e in escalations if e["key"]] == [
        "escalation/subtask-0" if n == 1 else f"escalation-{n}/subtask-0"
        for n in range(1, len(handlers) + 1)
    ]
    last = escalations[-1]
    assert last["to"] is None and last["note"] == f"not handled: max_delegation_depth {depth}"
    final = result.output["subtasks"][0]
    assert final["status"] == "unresolved" and final["by"] == (handlers or ["worker_1"])[-1]
    assert "unresolved escalation" in result.output["content"]


async def test_unparsable_plan_gets_one_repair_retry(
    runner: LocalRunner | AsyncRunner, team: Team
) -> None:
    boss = commander(["Sure! First we plan, then we build.", plan_json("plan", "build")])
    agents = {"commander": team.agent("boss", boss), "worker_1": team.agent("w1", worker)}
    result = await runner.run(topology(), agents, {"task": "a house"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    repair = team.prompts("boss")[1]
    assert repair.startswith("Your plan could not be used: the answer contains no JSON object")
    assert "First we plan, then we build." in repair and '{"subtasks"' in repair
    assert [s["title"] for s in result.output["strategy"]] == ["plan", "build"]
    assert result.output["fallback"] is False
    assert result.output["results"]["commander"]["plan_repair"] == plan_json("plan", "build")
    assert "commander/plan-repair" in await keys_of(runner, result.execution_id)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"steps": []}', 'no "subtasks" list'),
        ('{"subtasks": []}', '"subtasks" is empty'),
        ('{"subtasks": [{"description": "x"}]}', "subtask 0 has no title"),
        ('{"subtasks": [42]}', "subtask 0 is not an object"),
    ],
)
def test_plan_validation_names_the_problem(bad: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_plan(bad, 5)


async def test_plan_still_invalid_after_repair_falls_back_to_the_whole_task(
    runner: LocalRunner | AsyncRunner, team: Team
) -> None:
    boss = commander(["no json here", '{"subtasks": "later"}'])
    agents = {"commander": team.agent("boss", boss), "worker_1": team.agent("w1", worker)}
    result = await runner.run(topology(), agents, {"task": "Paint the fence"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    out = result.output
    assert out["fallback"] is True
    assert out["fallback_reason"] == (
        "plan unusable (the answer contains no JSON object); repair unusable (the JSON object "
        'has no "subtasks" list)'
    )
    assert out["strategy"] == [{"title": "Whole task", "description": "Paint the fence"}]
    (seen,) = team.prompts("w1")
    assert "Instructions:\nPaint the fence" in seen
    assert "result of 1 of 1: Whole task" in out["content"]


async def test_max_subtasks_bounds_the_fan_out(db_url: str, team: Team) -> None:
    agents = {
        "commander": team.agent("boss", commander(plan_json(*"abcdefg"))),
        "worker_1": team.agent("w1", worker),
    }
    result = await LocalRunner(db_url=db_url).run(
        topology(max_subtasks=2), agents, {"task": "many"}
    )
    assert "at most 2 subtasks" in team.prompts("boss")[0]
    assert [s["title"] for s in result.output["strategy"]] == ["a", "b"]
    assert result.output["plan_notes"] == [
        "the plan had 7 subtasks; kept the first 2 (max_subtasks)"
    ]
    assert len(team.prompts("w1")) == 2


async def test_no_subtask_result_fails_the_run(db_url: str, team: Team) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("out of order")

    agents = {
        "commander": team.agent("boss", commander(plan_json("a"))),
        "worker_1": team.agent("w1", broken),
    }
    result = await LocalRunner(config=RunConfig(max_retries=0), db_url=db_url).run(
        topology(max_delegation_depth=1), agents, {"task": "x"}
    )
    assert result.status is ExecutionStatus.FAILED
    assert "no subtask produced a result" in result.error and "out of order" in result.error
    assert not [p for p in team.prompts("boss") if p.startswith("Your team")]


async def test_input_without_task_is_a_clear_error(db_url: str, team: Team) -> None:
    agents = {"commander": team.agent("boss", "x"), "worker_1": team.agent("w1", "y")}
    result = await LocalRunner(db_url=db_url).run(topology(), agents, {"topic": "rivers"})
    assert result.status is ExecutionStatus.FAILED
    assert "'task' (or 'prompt')" in result.error and "topic" in result.error
    assert team.calls == []


async def test_resume_reuses_finished_subtasks(db_url: str, team: Team) -> None:
    failing = {"synthesis": True}

    def boss(prompt: str) -> str:
        if prompt.startswith("Your team") and failing["synthesis"]:
            raise RuntimeError("commander unavailable")
        return commander(plan_json("a", "b"))(prompt)

    agents = {"commander": team.agent("boss", boss), "worker_1": team.agent("w1", worker)}
    runner = LocalRunner(config=RunConfig(max_retries=0), db_url=db_url)
    first = await runner.run(topology(), agents, {"task": "t"})
    assert first.status is ExecutionStatus.FAILED and "commander unavailable" in first.error
    failing["synthesis"] = False
    calls_before = len(team.calls)
    resumed = await runner.resume(first.execution_id)
    assert resumed.status is ExecutionStatus.COMPLETED, resumed.error
    assert [who for who, _ in team.calls[calls_before:]] == ["boss"]
    assert "result of 2 of 2: b" in resumed.output["content"]


@pytest.mark.parametrize(
    ("config", "slots", "message"),
    [
        ({"escalation_treshold": 0.4}, None, "escalation_treshold: unknown field"),
        ({"escalation_threshold": 1.5}, None, "escalation_threshold: Input should be less"),
        ({"max_delegation_depth": 0}, None, "max_delegation_depth: Input should be greater"),
        ({"max_delegation_depth": 6}, None, "max_delegation_depth: Input should be less"),
        ({"max_subtasks": 21}, None, "max_subtasks: Input should be less"),
        ({}, ["lieutenant_1", "worker_1"], "missing slot(s) commander"),
        ({}, ["commander", "lieutenant_1"], "missing slot(s) worker_1"),
        ({}, ["commander", "worker_1", "sergeant"], "does not use slot(s) sergeant"),
    ],
)
def test_invalid_configs_and_slots_are_rejected_at_creation(
    config: dict[str, Any], slots: list[str] | None, message: str
) -> None:
    kind = TopologyRegistry.get("chain")
    with pytest.raises(ValidationError) as caught:
        kind.validate(config, slots or ["commander", "worker_1"])
    assert message in str(caught.value)


async def test_create_topology_validates_before_storing(db_url: str) -> None:
    await service.create_agent("boss", role="planner", db_url=db_url)
    with pytest.raises(ValidationError, match="max_subtasks"):
        await service.create_topology(
            "c",
            "chain_of_command",
            {"commander": "boss", "worker_1": "boss"},
            config={"max_subtasks": 0},
            db_url=db_url,
        )
    assert await Store(db_url).list_topologies() == []
    created = await service.create_topology(
        "c", "chain", {"commander": "boss", "worker_1": "boss"}, db_url=db_url
    )
    assert created.config == ChainOfCommandConfig().model_dump()


@pytest.mark.parametrize("kind", ["local", "async"])
async def test_offline_models_complete_end_to_end(kind: str, db_url: str) -> None:
    def offline(name: str, role: str) -> AgentType:
        config = AgentConfig(model_config_obj=Models.OFFLINE).model_dump()
        return AgentType(name=name, role=role, config=config)

    agents = {
        "commander": offline("general", "planner"),
        "lieutenant_1": offline("captain", "coordinator"),
        "worker_1": offline("private_1", "executor"),
        "worker_2": offline("private_2", "executor"),
    }
    runner = LocalRunner(db_url=db_url) if kind == "local" else AsyncRunner(db_url=db_url)
    result = await runner.run(topology(), agents, {"task": "Plan a picnic"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    out = result.output
    # Today's offline commander answers in prose, so the plan falls back to the whole task; an
    # offline model that follows the JSON format gets its plan used. Either way the run is whole.
    assert out["content"].startswith("[offline model]")
    keys = await keys_of(runner, result.execution_id)
    assert {"commander/plan", "lieutenant_1/subtask-0", "worker_1/subtask-0"} <= keys
    assert "commander/synthesis" in keys
    try:
        planned, _ = parse_plan(out["results"]["commander"]["plan"], 5)
    except ValueError:
        assert out["fallback"] is True and len(out["strategy"]) == 1
        assert "commander/plan-repair" in keys
    else:
        assert out["fallback"] is False and "commander/plan-repair" not in keys
        assert [s["title"] for s in out["strategy"]] == [p.title for p in planned]
