"""The anthropic provider through the real SDK against a local Messages API: success and faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_messages_api import Fault, MessagesAPIServer

from qmcp.agentframework.llm import ProviderRegistry
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    EnsembleConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "sk-ant-test-SENTINEL-0f3b9d"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
        ProviderRegistry.reset()
        yield server


def claude(name: str, role: AgentRole = AgentRole.EXECUTOR, **config: Any) -> AgentType:
    return AgentType(
        name=name,
        role=role,
        config=AgentConfig(model_config_obj=Models.CLAUDE_SONNET_4, **config).model_dump(
            mode="json"
        ),
    )


def one_stage(**config: Any) -> tuple[Topology, dict[str, AgentType]]:
    topology = Topology(
        name="solo", topology_type=TopologyType.PIPELINE, config={"max_stage_retries": 10}
    )
    return topology, {"only": claude("solo_agent", system_prompt="Be brief.", **config)}


async def run(db_url: str, *, retries: int = 3, **config: Any) -> Any:
    topology, agents = one_stage(**config)
    runner = LocalRunner(config=RunConfig(max_retries=retries), db_url=db_url)
    return await runner.run(topology, agents, {"prompt": "hello there"})


async def test_success_sends_a_real_messages_request_and_records_usage(
    api: MessagesAPIServer, db_url: str
) -> None:
    result = await run(db_url)
    assert result.status == "completed", result.error
    assert result.output["content"] == "echo: hello there"
    (request,) = api.requests
    sent_key = request["headers"].get("x-api-key") or request["headers"]["authorization"]
    assert sent_key.endswith(SENTINEL)
    assert request["body"]["system"].startswith("Be brief.")
    assert request["body"]["messages"] == [{"role": "user", "content": "hello there"}]
    assert request["body"]["model"] == Models.CLAUDE_SONNET_4.model
    (row,) = await Store(db_url).invocations(result.execution_id)
    assert row.provider == "anthropic" and row.input_tokens > 0 and row.output_tokens > 0
    assert row.cost_usd is not None and row.cost_usd > 0
    execution = await Store(db_url).get_execution(result.execution_id)
    assert execution.cost_usd == row.cost_usd


@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limited(0.05), Fault.overloaded(), Fault.server_error(), Fault.dropped()],
    ids=["429-retry-after", "529-overloaded", "500", "dropped-connection"],
)
async def test_transient_faults_are_retried_by_the_sdk(
    api: MessagesAPIServer, db_url: str, fault: Fault
) -> None:
    api.enqueue(fault)
    result = await run(db_url, retries=2)
    assert result.status == "completed", result.error
    assert len(api.requests) == 2


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.server_error(), "500 api_error: Internal server error"),
        (Fault.overloaded(), "529 overloaded_error"),
        (Fault.rate_limited(0.01), "429 rate_limit_error"),
        (Fault.dropped(), "could not reach the Anthropic API"),
    ],
    ids=["500", "529", "429", "dropped"],
)
async def test_exhausted_retries_fail_with_the_providers_reason(
    api: MessagesAPIServer, db_url: str, fault: Fault, reason: str
) -> None:
    api.enqueue(fault, fault)
    result = await run(db_url, retries=1)
    assert result.status == "failed"
    assert reason in (result.error or "")
    assert len(api.requests) == 2, "RunConfig.max_retries=1 means one retry"


async def test_retry_on_failure_false_means_one_request(
    api: MessagesAPIServer, db_url: str
) -> None:
    api.enqueue(Fault.server_error())
    topology, agents = one_stage()
    runner = LocalRunner(config=RunConfig(retry_on_failure=False), db_url=db_url)
    result = await runner.run(topology, agents, {"prompt": "x"})
    assert result.status == "failed" and len(api.requests) == 1


@pytest.mark.slow  # waits for a timeout
async def test_slow_response_beyond_the_timeout_fails(api: MessagesAPIServer, db_url: str) -> None:
    api.enqueue(Fault.slow(3))
    result = await run(db_url, retries=0, timeout_seconds=0.5)
    assert result.status == "failed"
    assert "did not answer within 0.5 s" in (result.error or "")


async def test_auth_error_is_not_retried(api: MessagesAPIServer, db_url: str) -> None:
    api.enqueue(Fault.unauthorized())
    result = await run(db_url, retries=3)
    assert result.status == "failed"
    assert "401 authentication_error" in (result.error or "")
    assert len(api.requests) == 1


async def test_ensemble_with_min_successes_survives_a_failing_member(
    api: MessagesAPIServer, db_url: str
) -> None:
    api.fault_for = lambda body: (
        Fault.server_error() if "member two" in body.get("system", "") else None
    )
    agents = {
        "ensemble_0": claude("one", AgentRole.SPECIALIST, system_prompt="member one"),
        "ensemble_1": claude("two", AgentRole.SPECIALIST, system_prompt="member two"),
        "ensemble_2": claude("three", AgentRole.SPECIALIST, system_prompt="member three"),
    }
    topology = Topology(
        name="tolerant",
        topology_type=TopologyType.ENSEMBLE,
        config=EnsembleConfig(aggregation_method="concat", min_successes=2).model_dump(),
    )
    result = await AsyncRunner(db_url=db_url, config=RunConfig(max_retries=1)).run(
        topology, agents, {"prompt": "q"}
    )
    assert result.status == "completed", result.error
    assert set(result.output["members"]) == {"ensemble_0", "ensemble_2"}
    assert "500 api_error" in result.output["failures"]["ensemble_1"]


async def test_no_key_fails_the_invocation_naming_the_key_and_the_offline_model(
    db_url: str,
) -> None:
    result = await run(db_url)
    assert result.status == "failed"
    assert "ANTHROPIC_API_KEY" in (result.error or "") and "offline" in (result.error or "")
    execution = await Store(db_url).get_execution(result.execution_id)
    assert execution.status == "failed"


async def test_the_key_never_reaches_a_record(api: MessagesAPIServer, db_url: str) -> None:
    api.enqueue(Fault.unauthorized())
    await run(db_url)
    await run(db_url)
    store = Store(db_url)
    for execution in await store.list_executions():
        dump = json.dumps(execution.model_dump(mode="json"))
        dump += json.dumps(
            [r.model_dump(mode="json") for r in await store.invocations(execution.id)]
        )
        assert SENTINEL not in dump


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_spec_complete_local_execution_example_runs_as_written(
    api: MessagesAPIServer, tmp_path: Path
) -> None:
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.base_url, "ANTHROPIC_API_KEY": "dummy-key"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "complete_local_execution.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Status: completed" in done.stdout
    assert "echo: Synthesize the 2 answers" in done.stdout
    assert (tmp_path / "demo.db").exists()
    no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    failed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "complete_local_execution.py")],
        cwd=tmp_path,
        env=no_key,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 0, failed.stderr
    assert "Status: failed" in failed.stdout
