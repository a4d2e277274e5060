"""`max_concurrent` holds on every input-required round of a stateless (2026-07-28) sampling run,
not only on the call that started it: each round claims the execution again, and the claim takes
the concurrency the run started with from the execution's snapshot.

A cross-check whose primary is the client's model (`sampling`) and whose checkers are an async
function model that counts how many of its calls are in flight at once: round 1 asks the client
for the primary's answer; round 2 brings it, and the checkers run then, inside the resumed run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from test_sampling_stateless import ClientModel, call, drive_rounds

from qmcp.agentframework import service
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
CHECKERS = 4


class Peak:
    """An async model that notes the most calls of it in flight at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls = 0

    async def __call__(self, request: LLMRequest) -> str:
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.now -= 1
        return json.dumps({"approved": True, "confidence": 0.9, "issues": []})


@pytest.fixture
def peak() -> Iterator[Peak]:
    checker = Peak()
    register_function("peak_checker", checker)
    yield checker
    unregister_function("peak_checker")


@pytest.mark.parametrize("limit", [1, 2])
async def test_later_rounds_keep_the_runs_max_concurrent(
    db_url: str, peak: Peak, limit: int
) -> None:
    async with Client(build_server(db_url), sampling_callback=ClientModel()) as client:
        await call(client, "agents_create", name="author", role="reviewer", model="sampling")
        slots = {"primary": "author"}
        for i in range(1, CHECKERS + 1):
            name = f"peak_{i}"
            await call(
                client, "agents_create", name=name, role="reviewer", model="function:peak_checker"
            )
            slots[f"checker_{i}"] = name
        await call(client, "topologies_create", name="cc", topology_type="cross_check", slots=slots)
        args = {
            "topology": "cc",
            "input": {"prompt": "2+2?"},
            "runner": "async",
            "max_concurrent": limit,
        }
        rounds, result, _ = await drive_rounds(client, ClientModel(), db_url, args)
    assert len(rounds) == 1, "the primary's question is the only round"
    assert result.structured_content["status"] == "completed", result.structured_content
    assert peak.calls == CHECKERS, "every checker ran in the round that resumed the run"
    assert peak.peak == limit, f"{peak.peak} checker calls at once with max_concurrent={limit}"


async def test_a_resume_keeps_the_concurrency_the_run_started_with(db_url: str) -> None:
    """`claim_run` (every resume) takes the started run's `max_concurrent` unless told
    otherwise; a run on the local runner has none, and moved to the async runner gets its
    default."""

    def fail(request: LLMRequest) -> str:
        raise RuntimeError("down")

    register_function("always_fails", fail)
    no_retries = {"max_retries": 0}
    try:
        await service.create_agent("flaky", "executor", model="function:always_fails")
        await service.create_topology("flaky_solo", "pipeline", {"only": "flaky"})

        async def failed(runner: str, **kw: Any) -> str:
            started = await service.start_run(
                "flaky_solo", {"prompt": "x"}, runner_type=runner, config=no_retries, **kw
            )
            assert (await service.finish_run(started)).status == "failed"
            return str(started.execution_id)

        claimed = await service.claim_run(await failed("async", max_concurrent=3))
        assert claimed.runner.concurrency == 3
        told = await service.claim_run(await failed("async", max_concurrent=3), max_concurrent=7)
        assert told.runner.concurrency == 7
        moved = await service.claim_run(await failed("local"), runner_type="async")
        assert moved.runner.concurrency == 5  # the async runner's default
        assert (await service.claim_run(await failed("local"))).runner.concurrency is None
    finally:
        unregister_function("always_fails")
