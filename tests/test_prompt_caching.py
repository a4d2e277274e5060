"""Anthropic prompt caching through the real SDK against the local Messages API.

The fake API models the cache as the real one does (`fake_messages_api.py`): a request reads the
longest prefix an earlier request wrote, ending at a block boundary within 20 blocks before one of
its breakpoints, and writes the prefix up to its last breakpoint, if that is at least 1024 tokens.
A 3-round debate with Claude agents shows where the provider marks its requests (the system
prompt, the transcript that each round repeats and extends), what the invocations record (cache
reads and writes among their input tokens) and what they cost (the cache rates).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import MessagesAPIServer

from qmcp.agentframework.llm import ProviderRegistry, estimate_cost
from qmcp.agentframework.llm.anthropic_provider import mark_cache_breakpoints
from qmcp.agentframework.llm.pricing import price_of
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import LocalRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio

MODEL = Models.CLAUDE_SONNET_4
ROLE_TEXT = "You argue carefully, cite evidence and answer the other side point by point. " * 12


def speech(body: dict[str, Any]) -> str:
    """A debater's answer of a few paragraphs (about 450 tokens); the mediator's JSON."""
    last = body["messages"][-1]["content"]
    prompt = last if isinstance(last, str) else "".join(b["text"] for b in last)
    if "Judge the debate so far" in prompt:
        return json.dumps({"converged": False, "agreement": 0.3, "verdict": "undecided"})
    turn = len(prompt)
    return "\n\n".join(
        f"Point {i} (reply to a prompt of {turn} chars): " + "the evidence supports this. " * 20
        for i in range(1, 4)
    )


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer(speech) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-caching")
        ProviderRegistry.reset()
        yield server


def claude(name: str, role: AgentRole) -> AgentType:
    config = AgentConfig(model_config_obj=MODEL, system_prompt=f"You are {name}. {ROLE_TEXT}")
    return AgentType(name=name, role=role, config=config.model_dump(mode="json"))


async def run_debate(db_url: str, rounds: int = 3) -> tuple[Any, list[Any]]:
    topology = Topology(
        name="caching-debate",
        topology_type=TopologyType.DEBATE,
        config={"max_rounds": rounds, "allow_early_termination": False},
    )
    agents = {
        "proponent": claude("pro", AgentRole.PLANNER),
        "opponent": claude("con", AgentRole.CRITIC),
        "mediator": claude("med", AgentRole.REVIEWER),
    }
    runner = LocalRunner(config=RunConfig(), db_url=db_url)
    result = await runner.run(topology, agents, {"topic": "Should code review be mandatory?"})
    store = Store(db_url)
    try:
        rows = await store.invocations(result.execution_id)
    finally:
        await store.close()
    return result, rows


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where a request is marked: 'system', or 'message' with the marked block's text end."""
    marks = []
    system = body.get("system")
    if isinstance(system, list) and any("cache_control" in b for b in system):
        marks.append("system")
    for message in body["messages"]:
        content = message["content"]
        for block in content if isinstance(content, list) else []:
            if "cache_control" in block:
                assert block["cache_control"] == {"type": "ephemeral"}
                marks.append("message:" + block["text"][-40:])
    return marks


def test_a_short_request_is_left_as_it_was() -> None:
    kwargs = {"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}
    before = json.loads(json.dumps(kwargs))
    mark_cache_breakpoints(kwargs)
    assert kwargs == before


def test_a_growing_conversation_is_marked_at_its_end() -> None:
    """A tool-using conversation: the next turn extends the whole of it."""
    long_result = "row of data. " * 400
    kwargs = {
        "model": "m",
        "system": "short",
        "messages": [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "q", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": long_result}],
            },
        ],
    }
    mark_cache_breakpoints(kwargs)
    last = kwargs["messages"][-1]["content"][-1]
    assert last["cache_control"] == {"type": "ephemeral"}
    assert kwargs["system"] == "short"  # a short system prompt alone is not worth a mark


async def test_a_long_system_prompt_is_read_from_the_cache_by_the_next_call(
    api: MessagesAPIServer,
) -> None:
    """Two calls of one agent through the real SDK: the first writes its system prompt to the
    cache, the second reads it; input tokens count both, as the engine prices them."""
    from qmcp.agentframework.llm import AnthropicProvider, LLMRequest, Message

    system = "Follow the house style guide. " * 200  # about 1500 tokens
    provider = AnthropicProvider()
    responses = []
    for prompt in ("first question", "second question"):
        request = LLMRequest(
            model=MODEL.model, system=system, messages=[Message(role="user", content=prompt)]
        )
        responses.append(await provider.complete(request))
    sent = api.requests[0]["body"]
    assert sent["system"] == [
        {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["messages"] == [{"role": "user", "content": "first question"}]
    first, second = responses
    assert first.cache_write_tokens > 1000 and first.cache_read_tokens == 0
    assert second.cache_read_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
    assert second.input_tokens == second.cache_read_tokens + len("second question") // 4


async def test_debate_requests_are_marked_and_priced_at_the_cache_rates(
    api: MessagesAPIServer, db_url: str
) -> None:
    result, rows = await run_debate(db_url)
    assert result.status == "completed", result.error
    bodies = [r["body"] for r in api.requests]
    assert len(bodies) == 9
    # Every request marks its system prompt (about 190 tokens, so only together with a long
    # enough prefix) or its transcript; from round 2 on, the transcript is marked before the
    # call's own instruction, which stays outside the cached prefix.
    for body in bodies[3:]:
        marks = breakpoints(body)
        assert marks, body
        marked = [m for m in marks if m.startswith("message:")]
        assert marked, marks
        last_block = body["messages"][-1]["content"][-1]
        assert "cache_control" not in last_block
        assert last_block["text"].startswith(("You are ", "Judge the debate"))
    # Paragraph blocks read as the prompt did.
    first = bodies[3]["messages"][0]["content"]
    text = "".join(b["text"] for b in first)
    assert text.startswith("Debate topic: Should code review be mandatory?\n\nTranscript so far:")
    reads = sum((r.output or {}).get("usage", {}).get("cache_read_tokens", 0) for r in rows)
    writes = sum((r.output or {}).get("usage", {}).get("cache_write_tokens", 0) for r in rows)
    assert reads > 0 and writes > 0
    price = price_of(MODEL.model)
    assert price is not None
    for row in rows:
        usage = (row.output or {}).get("usage", {})
        read, write = usage.get("cache_read_tokens", 0), usage.get("cache_write_tokens", 0)
        uncached = row.input_tokens - read - write
        expected = (
            uncached * price.input
            + read * price.input * 0.10
            + write * price.input * 1.25
            + row.output_tokens * price.output
        ) / 1_000_000
        assert row.cost_usd == pytest.approx(expected, rel=1e-6)
        assert row.cost_usd == estimate_cost(
            row.model, row.input_tokens, row.output_tokens, read, write
        )


async def test_caching_saving_on_a_three_round_debate(api: MessagesAPIServer, db_url: str) -> None:
    """The saving, measured with the fake API's usage figures (printed for the notes)."""
    result, rows = await run_debate(db_url)
    assert result.status == "completed", result.error
    total = sum(r.input_tokens for r in rows)
    reads = sum((r.output or {}).get("usage", {}).get("cache_read_tokens", 0) for r in rows)
    writes = sum((r.output or {}).get("usage", {}).get("cache_write_tokens", 0) for r in rows)
    billed = (total - reads - writes) + 0.10 * reads + 1.25 * writes  # in input-token prices
    cost = sum(r.cost_usd for r in rows)
    uncached_cost = sum(estimate_cost(r.model, r.input_tokens, r.output_tokens) for r in rows)
    saving = 1 - billed / total
    print(
        f"\n3-round debate: {total} input tokens, {reads} read from cache, {writes} written; "
        f"billed as {billed:.0f} input tokens ({saving:.1%} less); cost ${cost:.6f} against "
        f"${uncached_cost:.6f} uncached ({1 - cost / uncached_cost:.1%} less)"
    )
    assert billed < total and cost < uncached_cost
