"""The offline model: deterministic, marked, and answering the formats topologies ask for."""

from __future__ import annotations

import json

import pytest

from qmcp.agentframework.llm import LLMRequest, Message
from qmcp.agentframework.llm.offline import (
    JUDGMENT_MARKER,
    MARK,
    ROUTE_MARKER,
    SUBTASKS_MARKER,
    VERDICT_MARKER,
    offline_answer,
)
from qmcp.agentframework.topologies.chain_of_command import PLAN_FORMAT
from qmcp.agentframework.topologies.consensus import VERDICT_FORMAT
from qmcp.agentframework.topologies.debate import JUDGMENT_FORMAT
from qmcp.agentframework.topologies.delegation import ROUTE_FORMAT


def ask(prompt: str, role: str = "executor", name: str = "a") -> str:
    return offline_answer(
        LLMRequest(
            model="offline",
            messages=[Message(role="user", content=prompt)],
            role=role,
            agent_name=name,
        )
    )


def test_markers_match_the_formats_topologies_write() -> None:
    assert f"JSON of the form {PLAN_FORMAT}".startswith(SUBTASKS_MARKER)
    assert f"JSON of the form {ROUTE_FORMAT}".startswith(ROUTE_MARKER)
    assert f"JSON of the form {VERDICT_FORMAT}".startswith(VERDICT_MARKER)
    assert f"JSON of the form {JUDGMENT_FORMAT}".startswith(JUDGMENT_MARKER)


def test_deterministic_marked_and_role_aware() -> None:
    assert ask("hello") == ask("hello")
    assert ask("hello") != ask("hello", name="b")
    assert MARK in ask("hello")
    verdict = json.loads(ask("check this", role="reviewer"))
    assert verdict["approved"] is True and 0 <= verdict["confidence"] <= 1
    assert "confidence:" in ask("x", role="specialist")


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_subtask_plans_respect_the_limit(limit: int) -> None:
    prompt = (
        f"Break the task into at most {limit} subtasks. "
        f"Answer only with JSON of the form {PLAN_FORMAT}\n\nTask:\nbuild a shed"
    )
    plan = json.loads(ask(prompt))
    assert 1 <= len(plan["subtasks"]) <= limit
    assert all("build a shed" in s["description"] for s in plan["subtasks"])


def test_routes_name_listed_specialists() -> None:
    prompt = (
        "Specialists:\n- legal: agent lawyer (specialist)\n- finance: agent cfo (specialist)\n"
        f"Choose at least 1 and at most 1. Answer only with JSON of the form {ROUTE_FORMAT}"
    )
    route = json.loads(ask(prompt))
    assert len(route["route"]) == 1 and route["route"][0] in {"legal", "finance"}
