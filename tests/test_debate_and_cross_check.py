"""debate and cross_check: who saw what, early stop, revision loop, failures, consensus rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
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
from qmcp.agentframework.topologies import TopologyRegistry
from qmcp.agentframework.topologies.consensus import determine_consensus, parse_verdict

pytestmark = pytest.mark.anyio
RUNNERS = ["local", "async"]


def runner(kind: str, db_url: str, **config: Any) -> Any:
    cfg = RunConfig(**config)
    return (
        LocalRunner(config=cfg, db_url=db_url)
        if kind == "local"
        else AsyncRunner(db_url=db_url, config=cfg)
    )


def agent(name: str, model: str, role: AgentRole = AgentRole.EXECUTOR) -> AgentType:
    config = AgentConfig(model_config_obj=ModelConfig(provider="function", model=model))
    return AgentType(name=name, role=role, config=config.model_dump(mode="json"))


# -- consensus ------------------------------------------------------------------------------


def v(approved: bool, confidence: float = 1.0) -> dict[str, Any]:
    return {"approved": approved, "confidence": confidence, "issues": [] if approved else ["bad"]}


@pytest.mark.parametrize(
    ("method", "votes", "approved"),
    [
        ("unanimous", [v(True), v(True)], True),
        ("unanimous", [v(True), v(False)], False),
        ("unanimous", [], False),
        ("majority", [v(True), v(True), v(False)], True),
        ("majority", [v(True), v(False)], False),  # a tie is not approval
        ("weighted", [v(True, 0.9), v(False, 0.3)], True),
        ("weighted", [v(True, 0.5), v(False, 0.5)], False),  # a tie is not approval
        ("weighted", [v(True, 0.0), v(False, 0.0)], False),  # no weight, no approval
        ("weighted", [v(True, 0.2), v(False, 0.9)], False),
    ],
)
def test_consensus_rules(method: str, votes: list[dict[str, Any]], approved: bool) -> None:
    result = determine_consensus({"content": "x"}, votes, method)
    assert result["approved"] is approved
    assert result["issues"] == ["bad"] * sum(1 for x in votes if not x["approved"])


def test_verdicts_are_parsed_not_guessed() -> None:
    assert (
        parse_verdict('{"approved": false, "confidence": 0.9, "issues": ["typo"]}')["approved"]
        is False
    )
    assert parse_verdict("Not approved: I approve of nothing here.")["approved"] is False
    fenced = parse_verdict('ok\n```json\n{"approved": true, "confidence": 2}\n```')
    assert fenced["approved"] is True and fenced["confidence"] == 1.0
    unreadable = parse_verdict("approved!!")
    assert unreadable["parsed"] is False and "could not be read" in unreadable["issues"][0]
    with pytest.raises(ValidationError, match="unknown consensus method"):
        determine_consensus({}, [], "vibes")


# -- cross_check ----------------------------------------------------------------------------


@pytest.fixture
def checks() -> Any:
    seen: list[tuple[str, str]] = []

    def answer(request: LLMRequest) -> str:
        seen.append((request.slot, request.prompt))
        if request.slot == "primary":
            return "draft v2" if "Revise it" in request.prompt else "draft v1"
        if request.slot == "checker_3":
            raise RuntimeError("checker crashed")
        approve = "draft v2" in request.prompt or request.slot == "checker_1"
        return json.dumps(
            {"approved": approve, "confidence": 0.8, "issues": [] if approve else ["too short"]}
        )

    register_function("cc", answer)
    yield seen
    unregister_function("cc")


def cross_check(config: dict[str, Any], checkers: int = 2) -> tuple[Topology, dict[str, AgentType]]:
    agents = {"primary": agent("writer", "cc")}
    for i in range(1, checkers + 1):
        agents[f"checker_{i}"] = agent(f"checker{i}", "cc", AgentRole.REVIEWER)
    return Topology(name="cc", topology_type=TopologyType.CROSS_CHECK, config=config), agents


@pytest.mark.parametrize("kind", RUNNERS)
async def test_rejection_leads_to_a_revision_with_the_issues(
    kind: str, db_url: str, checks: Any
) -> None:
    topology, agents = cross_check({"consensus_method": "unanimous", "max_revisions": 2})
    result = await runner(kind, db_url).run(topology, agents, {"prompt": "write a haiku"})
    assert result.status == "completed", result.error
    out = result.output
    assert out["approved"] is True and out["revisions"] == 1 and out["content"] == "draft v2"
    revision_prompt = next(p for s, p in checks if s == "primary" and "Revise it" in p)
    assert "too short" in revision_prompt and "write a haiku" in revision_prompt
    checker_prompts = [p for s, p in checks if s.startswith("checker")]
    assert all("write a haiku" in p for p in checker_prompts)
    assert "draft v1" in checker_prompts[0]


async def test_revisions_are_bounded_and_a_failed_checker_rejects(db_url: str, checks: Any) -> None:
    topology, agents = cross_check({"max_revisions": 0, "consensus_method": "majority"}, checkers=3)
    result = await LocalRunner(db_url=db_url, config=RunConfig(max_retries=0)).run(
        topology, agents, {"prompt": "p"}
    )
    out = result.output
    assert result.status == "completed" and out["revisions"] == 0 and out["approved"] is False
    failed = next(x for x in out["validations"] if x["checker"] == "checker_3")
    assert failed["approved"] is False and "checker crashed" in failed["issues"][0]
    assert out["consensus"]["approvals"] == 1 and out["consensus"]["rejections"] == 2


def test_cross_check_config_is_validated_at_creation() -> None:
    kind = TopologyRegistry.get("crosscheck")
    with pytest.raises(ValidationError, match="at least 2 checker"):
        kind.validate({}, ["primary", "checker_1"])
    with pytest.raises(ValidationError, match="num_checkers is 3"):
        kind.validate({"num_checkers": 3}, ["primary", "checker_1", "checker_2"])
    with pytest.raises(ValidationError, match="unknown field"):
        kind.validate({"max_revision": 1}, ["primary", "checker_1", "checker_2"])


# -- debate ---------------------------------------------------------------------------------


@pytest.fixture
def debate_calls() -> Any:
    seen: list[tuple[str, str]] = []
    agreement = {"by_round": [0.3, 0.9, 0.95]}

    def answer(request: LLMRequest) -> str:
        seen.append((request.slot, request.prompt))
        if request.slot == "mediator":
            rounds = sum(1 for s, _ in seen if s == "mediator")
            level = agreement["by_round"][rounds - 1]
            return json.dumps(
                {"converged": level > 0.8, "agreement": level, "verdict": f"verdict {rounds}"}
            )
        return f"{request.slot} argues (turn {len(seen)})"

    register_function("deb", answer)
    yield seen, agreement
    unregister_function("deb")


def debate(
    config: dict[str, Any], slots: tuple[str, ...] = ("proponent", "opponent")
) -> tuple[Topology, dict[str, AgentType]]:
    agents = {s: agent(f"{s}_agent", "deb", AgentRole.SPECIALIST) for s in slots}
    agents["mediator"] = agent("judge", "deb", AgentRole.COORDINATOR)
    return Topology(name="deb", topology_type=TopologyType.DEBATE, config=config), agents


@pytest.mark.parametrize("kind", RUNNERS)
async def test_debate_stops_early_on_convergence_and_each_side_sees_the_transcript(
    kind: str, db_url: str, debate_calls: Any
) -> None:
    seen, _ = debate_calls
    topology, agents = debate({"max_rounds": 3, "convergence_threshold": 0.8})
    result = await runner(kind, db_url).run(topology, agents, {"topic": "tabs or spaces"})
    out = result.output
    assert result.status == "completed", result.error
    assert out["rounds"] == 2 and out["stopped_early"] is True and out["content"] == "verdict 2"
    assert [t["slot"] for t in out["transcript"]] == ["proponent", "opponent"] * 2
    opponent_round_one = next(p for s, p in seen if s == "opponent")
    assert "tabs or spaces" in opponent_round_one and "proponent argues" in opponent_round_one
    mediator_round_two = [p for s, p in seen if s == "mediator"][1]
    assert mediator_round_two.count("argues") == 4


async def test_debate_runs_all_rounds_without_early_termination(
    db_url: str, debate_calls: Any
) -> None:
    topology, agents = debate(
        {"max_rounds": 3, "allow_early_termination": False}, ("debater_1", "debater_2", "debater_3")
    )
    result = await LocalRunner(db_url=db_url).run(topology, agents, {"question": "why?"})
    assert result.output["rounds"] == 3 and result.output["stopped_early"] is False
    assert len(result.output["transcript"]) == 9


async def test_unreadable_mediator_means_no_agreement(db_url: str) -> None:
    register_function("plain", lambda r: "I think both sides have a point.")
    try:
        agents = {s: agent(s, "plain") for s in ("proponent", "opponent", "mediator")}
        topology = Topology(name="d", topology_type=TopologyType.DEBATE, config={"max_rounds": 2})
        result = await LocalRunner(db_url=db_url).run(topology, agents, {"topic": "x"})
        assert result.output["rounds"] == 2
        assert result.output["judgments"][0]["agreement"] == 0.0
        assert result.output["verdict"] == "I think both sides have a point."
    finally:
        unregister_function("plain")


def test_debate_config_and_slots_are_validated() -> None:
    kind = TopologyRegistry.get("debate")
    with pytest.raises(ValidationError, match="mediator"):
        kind.validate({}, ["proponent", "opponent"])
    with pytest.raises(ValidationError, match="opponent"):
        kind.validate({}, ["proponent", "mediator"])
    with pytest.raises(ValidationError, match="at least 2 debater"):
        kind.validate({}, ["debater_1", "mediator"])
    with pytest.raises(ValidationError, match="max_rounds"):
        kind.validate({"max_rounds": 11}, ["proponent", "opponent", "mediator"])


async def test_missing_topic_fails_clearly(db_url: str, debate_calls: Any) -> None:
    topology, agents = debate({})
    result = await LocalRunner(db_url=db_url).run(topology, agents, {"other": 1})
    assert result.status == "failed" and "'topic' or 'question'" in (result.error or "")


@pytest.mark.parametrize("kind", ["debate", "cross_check"])
async def test_offline_models_run_end_to_end(kind: str, db_url: str) -> None:
    config = AgentConfig(model_config_obj=Models.OFFLINE).model_dump(mode="json")
    slots = (
        ("proponent", "opponent", "mediator")
        if kind == "debate"
        else ("primary", "checker_1", "checker_2")
    )
    agents = {
        s: AgentType(name=f"off_{s}", role=AgentRole.SPECIALIST, config=config) for s in slots
    }
    topology = Topology(name=kind, topology_type=kind, config={})
    result = await LocalRunner(db_url=db_url).run(topology, agents, {"topic": "AI", "prompt": "AI"})
    assert result.status == "completed", result.error
    assert result.output["content"].startswith("[offline model]")
