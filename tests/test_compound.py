"""Compound topologies: a slot filled by another stored topology."""

from __future__ import annotations

from typing import Any

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.errors import NotFoundError, ValidationError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function

pytestmark = pytest.mark.anyio


@pytest.fixture
def seen() -> Any:
    prompts: list[tuple[str, str]] = []

    def answer(request: LLMRequest) -> str:
        prompts.append((request.agent_name, request.prompt))
        if request.agent_name == "flaky" and "FAIL" in request.prompt:
            raise RuntimeError("flaky member down")
        return f"{request.agent_name} says: {request.prompt.splitlines()[0][:60]}"

    register_function("nest", answer)
    yield prompts
    unregister_function("nest")


async def build(db_url: str) -> None:
    for name, role in (
        ("writer", "executor"),
        ("r1", "specialist"),
        ("r2", "specialist"),
        ("synth", "synthesizer"),
        ("editor", "executor"),
        ("flaky", "specialist"),
    ):
        await service.create_agent(name, role, model="function:nest", db_url=db_url)
    await service.create_topology(
        "panel",
        "ensemble",
        {"ensemble_0": "r1", "ensemble_1": "r2", "aggregator": "synth"},
        config={"aggregation_method": "synthesis"},
        db_url=db_url,
    )
    await service.create_topology(
        "article",
        "pipeline",
        {"draft": "writer", "review": "topology:panel", "polish": "editor"},
        db_url=db_url,
    )


@pytest.mark.parametrize("runner", ["local", "async"])
async def test_a_topology_runs_as_a_stage_of_another(runner: str, db_url: str, seen: Any) -> None:
    await build(db_url)
    result = await service.run_topology(
        "article", {"prompt": "write about bees"}, runner_type=runner, db_url=db_url
    )
    assert result.status == "completed", result.error
    stages = result.output["stages"]
    assert [s["stage"] for s in stages] == ["draft", "review", "polish"]
    assert stages[1]["agent"] == "panel"
    assert stages[1]["content"].startswith("synth says:")
    members_saw = [p for name, p in seen if name in ("r1", "r2")]
    assert all(p.startswith("writer says:") for p in members_saw), "the panel reads the draft"
    assert result.output["content"].startswith("editor says: synth says:")
    _, invocations = await service.get_execution(result.execution_id, db_url)
    assert sorted(i.key for i in invocations) == sorted(
        [
            "stage-0/draft",
            "stage-1/review/ensemble_0",
            "stage-1/review/ensemble_1",
            "stage-1/review/aggregator",
            "stage-2/polish",
        ]
    )


async def test_listing_shows_nested_slots(db_url: str, seen: Any) -> None:
    await build(db_url)
    listed = {t.name: slots for t, slots in await service.list_topologies(db_url)}
    assert listed["article"]["review"] == "topology:panel"
    topology, members = await service.get_topology("article", db_url)
    assert service.topology_to_dict(topology, members)["slots"]["review"] == "topology:panel"


async def test_resume_does_not_repeat_nested_calls(db_url: str, seen: Any) -> None:
    from qmcp.agentframework.runners import RunConfig

    await build(db_url)
    broken = {"on": True}

    def editor(request: LLMRequest) -> str:
        seen.append((request.agent_name, request.prompt))
        if broken["on"] and request.agent_name == "editor":
            raise RuntimeError("editor out")
        return f"{request.agent_name} says: ok"

    register_function("nest", editor)
    config = RunConfig(retry_on_failure=False)
    failed = await service.run_topology("article", {"prompt": "bees"}, config=config, db_url=db_url)
    assert failed.status == "failed"
    assert "editor out" in (failed.error or "")
    calls_before = len(seen)
    broken["on"] = False
    resumed = await service.resume_execution(failed.execution_id, db_url=db_url)
    assert resumed.status == "completed", resumed.error
    assert [name for name, _ in seen[calls_before:]] == ["editor"]


async def test_self_reference_unknown_and_invalid_members_are_rejected(
    db_url: str, seen: Any
) -> None:
    await build(db_url)
    before = len(await service.list_topologies(db_url))
    with pytest.raises(ValidationError, match="cannot contain itself"):
        await service.create_topology("loop", "pipeline", {"a": "topology:loop"}, db_url=db_url)
    with pytest.raises(NotFoundError, match="no topology named 'ghost'"):
        await service.create_topology("x", "pipeline", {"a": "topology:ghost"}, db_url=db_url)
    assert len(await service.list_topologies(db_url)) == before


async def test_a_failing_nested_topology_is_a_failed_member(db_url: str, seen: Any) -> None:
    await build(db_url)
    await service.create_topology(
        "fragile",
        "ensemble",
        {"ensemble_0": "flaky", "aggregator": "synth"},
        config={"aggregation_method": "synthesis"},
        db_url=db_url,
    )
    await service.create_topology(
        "outer",
        "ensemble",
        {"ensemble_0": "r1", "ensemble_1": "topology:fragile", "aggregator": "synth"},
        config={"aggregation_method": "synthesis", "min_successes": 1},
        db_url=db_url,
    )
    from qmcp.agentframework.runners import RunConfig

    result = await service.run_topology(
        "outer", {"prompt": "FAIL please"}, config=RunConfig(max_retries=0), db_url=db_url
    )
    assert result.status == "completed", result.error
    assert "ensemble_1" in result.output["failures"]
    assert "flaky member down" in result.output["failures"]["ensemble_1"]
    assert "fragile" in result.output["failures"]["ensemble_1"]
