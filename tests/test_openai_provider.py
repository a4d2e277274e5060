"""The openai provider through the real `openai` SDK against a local Chat Completions server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_chat_api import ChatAPIServer, Fault, Reply

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm import (
    LLMRequest,
    Message,
    OpenAIProvider,
    ProviderRegistry,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    EnsembleConfig,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
# Not shaped like an OpenAI key (sk-…): only the provider's own redaction can keep it out.
SENTINEL = "local-key-SENTINEL-7c2e91aa40"
MODEL = "llama3.2"


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatAPIServer]:
    """A server that wants the sentinel key, configured as the SDK's default endpoint."""
    with ChatAPIServer(key=SENTINEL) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
        ProviderRegistry.reset()
        yield server


def gpt(name: str, role: AgentRole = AgentRole.EXECUTOR, **config: Any) -> AgentType:
    endpoint: dict[str, Any] = {
        k: config.pop(k) for k in ("base_url", "api_key_env") if k in config
    }
    model = ModelConfig(**Models.parse(f"openai:{MODEL}").model_dump() | endpoint)
    return AgentType(
        name=name,
        role=role,
        config=AgentConfig(model_config_obj=model, **config).model_dump(mode="json"),
    )


async def run(db_url: str, *, retries: int = 3, **config: Any) -> Any:
    topology = Topology(
        name="solo", topology_type=TopologyType.PIPELINE, config={"max_stage_retries": 10}
    )
    agents = {"only": gpt("solo_agent", system_prompt="Be brief.", **config)}
    runner = LocalRunner(config=RunConfig(max_retries=retries), db_url=db_url)
    return await runner.run(topology, agents, {"prompt": "hello there"})


def request(**fields: Any) -> LLMRequest:
    return LLMRequest(
        model=MODEL, messages=[Message(role="user", content="hi")], timeout_seconds=10, **fields
    )


# -- answers ------------------------------------------------------------------------------


async def test_text_answer_sends_a_chat_completion_and_records_usage(
    api: ChatAPIServer, db_url: str
) -> None:
    result = await run(db_url)
    assert result.status == "completed", result.error
    assert result.output["content"] == "echo: hello there"
    (sent,) = api.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {SENTINEL}"
    body = sent["body"]
    assert body["model"] == MODEL
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith("Be brief.")
    assert body["messages"][1:] == [{"role": "user", "content": "hello there"}]
    # A compatible server (not OpenAI's own) gets the limit as `max_tokens`.
    assert body["max_tokens"] == 4096 and "max_completion_tokens" not in body
    assert "temperature" not in body and "tools" not in body
    assert "x-stainless-retry-count" not in sent["headers"] or (
        sent["headers"]["x-stainless-retry-count"] == "0"
    )
    store = Store(db_url)
    (row,) = await store.invocations(result.execution_id)
    assert row.provider == "openai" and row.model == f"openai:{MODEL}"
    assert row.input_tokens > 0 and row.output_tokens > 0
    assert row.cost_usd is None, "an unknown model's cost is unknown, not 0"
    execution = await store.get_execution(result.execution_id)
    assert execution.input_tokens == row.input_tokens
    assert execution.cost_usd is None


async def test_temperature_is_sent_when_the_agent_sets_it(api: ChatAPIServer, db_url: str) -> None:
    result = await run(db_url, temperature=0.3)
    assert result.status == "completed", result.error
    assert api.completions[0]["temperature"] == 0.3
    assert OpenAIProvider().capabilities(MODEL).temperature


async def test_the_response_model_and_stop_reason_come_back(api: ChatAPIServer) -> None:
    api.model_suffix = ":latest"
    response = await OpenAIProvider().complete(request(max_tokens=7))
    assert response.model == f"{MODEL}:latest" and response.provider == "openai"
    assert response.stop_reason == "stop"
    assert api.completions[0]["max_tokens"] == 7


async def test_openais_own_endpoint_gets_max_completion_tokens(
    api: ChatAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's reasoning models refuse `max_tokens`, so requests to OpenAI's own host use the
    new name. The local server stands in for that host here (no request leaves the machine)."""
    from qmcp.agentframework.llm import openai_provider

    monkeypatch.setattr(openai_provider, "OPENAI_HOSTS", ("127.0.0.1",))
    await OpenAIProvider().complete(request())
    body = api.completions[0]
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body


# -- tool calls -----------------------------------------------------------------------------


def tool_specs() -> list[ToolSpec]:
    return [
        ToolSpec(
            name="add",
            description="Add two numbers.",
            input_schema={
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        ),
        ToolSpec(name="fail", input_schema={"type": "object"}),
    ]


def run_tool(call: ToolUseBlock) -> ToolResultBlock:
    """`add` answers; `fail` reports an error result."""
    if call.name == "add":
        return ToolResultBlock(tool_use_id=call.id, content=str(call.input["a"] + call.input["b"]))
    return ToolResultBlock(tool_use_id=call.id, content="disk on fire", is_error=True)


async def test_tool_calls_round_trip(api: ChatAPIServer) -> None:
    """The model asks for two tools; their results go back with the assistant turn, in the
    form OpenAI checks (every tool_call answered by a `tool` message with its id)."""
    api.script(
        Reply(text="Let me compute.", tool_calls=[("add", {"a": 2, "b": 3}), ("fail", {})]),
        "The sum is 5.",
    )
    provider = OpenAIProvider()
    asked = request(system="Use tools.", tools=tool_specs())
    first_answer = await provider.complete(asked)
    assert [c.name for c in first_answer.tool_calls] == ["add", "fail"]
    assert first_answer.stop_reason == "tool_calls"
    results = Message(role="user", content=[run_tool(c) for c in first_answer.tool_calls])
    follow_up = asked.model_copy(
        update={"messages": [*asked.messages, first_answer.message(), results]}
    )
    final = await provider.complete(follow_up)
    assert final.text == "The sum is 5." and not final.tool_calls
    first, second = api.completions
    assert first["tools"][0] == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": tool_specs()[0].input_schema,
        },
    }
    assert first["tools"][1] == {
        "type": "function",
        "function": {"name": "fail", "parameters": {"type": "object"}},
    }
    assert "tool_choice" not in first
    system, user, assistant, add_result, fail_result = second["messages"]
    assert system == {"role": "system", "content": "Use tools."}
    assert user == {"role": "user", "content": "hi"}
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me compute."
    add_call, fail_call = assistant["tool_calls"]
    assert add_call["type"] == "function" and add_call["function"]["name"] == "add"
    assert add_call["id"] == first_answer.tool_calls[0].id
    assert json.loads(add_call["function"]["arguments"]) == {"a": 2, "b": 3}
    assert add_result == {"role": "tool", "tool_call_id": add_call["id"], "content": "5"}
    assert fail_result["tool_call_id"] == fail_call["id"]
    assert fail_result["content"].startswith("error: ") and "disk on fire" in fail_result["content"]


async def test_a_tool_use_answer_is_parsed_into_blocks(api: ChatAPIServer) -> None:
    api.script(Reply(tool_calls=[("add", {"a": 1, "b": 2})]))
    response = await OpenAIProvider().complete(request(tools=tool_specs()))
    (call,) = response.tool_calls
    assert call.name == "add" and call.input == {"a": 1, "b": 2} and call.id.startswith("call_")
    assert response.text == "" and response.stop_reason == "tool_calls"


async def test_tool_choice_none_is_sent_as_none(api: ChatAPIServer) -> None:
    await OpenAIProvider().complete(request(tools=tool_specs(), tool_choice="none"))
    assert api.completions[0]["tool_choice"] == "none"


async def test_tool_arguments_that_are_not_json_fail_for_good_naming_the_tool(
    api: ChatAPIServer,
) -> None:
    api.script(Reply(tool_calls=[("add", '{"a": 1, "b":')]))
    with pytest.raises(ProviderError) as failed:
        await OpenAIProvider().complete(request(tools=tool_specs()))
    assert not failed.value.retryable
    assert "'add'" in str(failed.value) and "not a JSON object" in str(failed.value)


async def test_tool_arguments_that_are_json_but_not_an_object_fail_too(
    api: ChatAPIServer,
) -> None:
    api.script(Reply(tool_calls=[("add", "[1, 2]")]))
    with pytest.raises(ProviderError, match="'add'"):
        await OpenAIProvider().complete(request(tools=tool_specs()))


async def test_a_previous_conversation_maps_each_block(api: ChatAPIServer) -> None:
    """Recorded turns (as a resume replays them) reach the API in Chat Completions' form."""
    messages = [
        Message(role="user", content=[TextBlock(text="a"), TextBlock(text="b")]),
        Message(role="assistant", content=[ToolUseBlock(id="c1", name="add", input={"a": 1})]),
        Message(
            role="user",
            content=[ToolResultBlock(tool_use_id="c1", content="1"), TextBlock(text="go on")],
        ),
    ]
    await OpenAIProvider().complete(LLMRequest(model=MODEL, messages=messages, tools=tool_specs()))
    assert api.completions[0]["messages"] == [
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "user", "content": "go on"},
    ]


# -- faults: one retry policy, the engine's ---------------------------------------------------


@pytest.mark.parametrize("milliseconds", [False, True], ids=["retry-after", "retry-after-ms"])
async def test_429_carries_the_servers_retry_after(api: ChatAPIServer, milliseconds: bool) -> None:
    api.enqueue(Fault.rate_limited(0.25, milliseconds=milliseconds))
    with pytest.raises(ProviderError) as failed:
        await OpenAIProvider().complete(request())
    assert failed.value.retryable and failed.value.retry_after == pytest.approx(0.25)
    assert "429 rate_limit_exceeded" in str(failed.value)
    assert len(api.requests) == 1, "the SDK itself must not retry"


@pytest.mark.slow  # waits out Retry-After and back-off
async def test_429_is_retried_by_the_engine_after_retry_after(
    api: ChatAPIServer, db_url: str
) -> None:
    api.enqueue(Fault.rate_limited(0.4))
    started = time.perf_counter()
    result = await run(db_url, retries=2)
    assert result.status == "completed", result.error
    assert len(api.requests) == 2
    assert time.perf_counter() - started >= 0.4
    rows = await Store(db_url).invocations(result.execution_id)
    assert [r.status for r in rows] == ["failed", "completed"]


@pytest.mark.slow  # waits out retry back-off
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.server_error(), "answered 500"),
        (Fault.dropped(), "could not reach http://127.0.0.1:"),
    ],
    ids=["500", "dropped-connection"],
)
async def test_transient_faults_are_retried_then_reported(
    api: ChatAPIServer, db_url: str, fault: Fault, reason: str
) -> None:
    api.enqueue(fault)
    result = await run(db_url, retries=1)
    assert result.status == "completed", result.error
    assert len(api.requests) == 2
    api.requests.clear()
    api.enqueue(fault, fault)
    result = await run(db_url, retries=1)
    assert result.status == "failed"
    assert reason in (result.error or "")
    assert len(api.requests) == 2, "RunConfig.max_retries=1 means one retry"


async def test_401_is_permanent_and_not_retried(api: ChatAPIServer, db_url: str) -> None:
    api.enqueue(Fault.unauthorized())
    result = await run(db_url, retries=3)
    assert result.status == "failed"
    assert "401 invalid_api_key" in (result.error or "")
    assert len(api.requests) == 1


async def test_an_unknown_model_is_permanent(api: ChatAPIServer) -> None:
    api.enqueue(Fault.not_found(MODEL))
    with pytest.raises(ProviderError, match=r"404 .*not found") as failed:
        await OpenAIProvider().complete(request())
    assert not failed.value.retryable


@pytest.mark.slow  # waits for a timeout
async def test_a_slow_answer_times_out_in_the_sdk(api: ChatAPIServer, db_url: str) -> None:
    api.enqueue(Fault.slow(3))
    result = await run(db_url, retries=0, timeout_seconds=0.5)
    assert result.status == "failed"
    assert "did not answer within 0.5 s" in (result.error or "")


# -- keys and endpoints ---------------------------------------------------------------------


async def test_no_key_and_no_endpoint_is_a_configuration_error(db_url: str) -> None:
    with pytest.raises(ConfigurationError) as failed:
        await OpenAIProvider().complete(request())
    message = str(failed.value)
    assert "OPENAI_API_KEY" in message and "--api-key-env" in message
    assert "--base-url" in message
    result = await run(db_url)
    assert result.status == "failed" and "OPENAI_API_KEY" in (result.error or "")
    assert len(await Store(db_url).invocations(result.execution_id)) == 1, "not retried"


async def test_a_named_key_variable_that_is_not_set_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)  # not a stand-in for the named variable
    with pytest.raises(ConfigurationError, match="VLLM_API_KEY is not set"):
        await OpenAIProvider().complete(
            request(base_url="http://127.0.0.1:9/v1", api_key_env="VLLM_API_KEY")
        )


async def test_a_local_endpoint_needs_no_key() -> None:
    with ChatAPIServer() as ollama:
        response = await OpenAIProvider().complete(request(base_url=ollama.base_url))
    assert response.text == "echo: hi"
    assert ollama.requests[0]["headers"]["authorization"].startswith("Bearer ")


async def test_openai_base_url_is_the_default_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ChatAPIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        await OpenAIProvider().complete(request())
    assert len(server.requests) == 1


async def test_two_agents_on_two_endpoints_in_one_run(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """An ensemble whose members reach two servers, each with the key its variable holds; the
    default endpoint (OPENAI_BASE_URL) and key are not used."""
    with (
        ChatAPIServer(key="ollama-key-0000000001") as first,
        ChatAPIServer(key="vllm-key-00000000002") as second,
        ChatAPIServer() as default,
    ):
        monkeypatch.setenv("OPENAI_BASE_URL", default.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
        monkeypatch.setenv("FIRST_API_KEY", "ollama-key-0000000001")
        monkeypatch.setenv("SECOND_API_KEY", "vllm-key-00000000002")
        agents = {
            "ensemble_0": gpt(
                "one", AgentRole.SPECIALIST, base_url=first.base_url, api_key_env="FIRST_API_KEY"
            ),
            "ensemble_1": gpt(
                "two", AgentRole.SPECIALIST, base_url=second.base_url, api_key_env="SECOND_API_KEY"
            ),
        }
        topology = Topology(
            name="two_endpoints",
            topology_type=TopologyType.ENSEMBLE,
            config=EnsembleConfig(aggregation_method="concat").model_dump(),
        )
        result = await AsyncRunner(db_url=db_url, config=RunConfig(max_retries=0)).run(
            topology, agents, {"prompt": "q"}
        )
    assert result.status == "completed", result.error
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert not default.requests
    assert first.requests[0]["headers"]["authorization"] == "Bearer ollama-key-0000000001"
    assert second.requests[0]["headers"]["authorization"] == "Bearer vllm-key-00000000002"
    rows = await Store(db_url).invocations(result.execution_id)
    assert {r.model for r in rows} == {f"openai:{MODEL}"}
    assert all(r.input_tokens > 0 and r.cost_usd is None for r in rows)


async def test_the_key_never_reaches_a_record_a_log_or_an_error(
    api: ChatAPIServer, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that echoes the refused key in its error body, a 401, a dropped connection and a
    success: the key is in no record, no log line (any logger, DEBUG) and no error text."""
    caplog.set_level(logging.DEBUG)
    api.enqueue(Fault.unauthorized(f"Incorrect API key provided: {SENTINEL}"))
    failed = await run(db_url)
    assert failed.status == "failed" and "401" in (failed.error or "")
    api.enqueue(Fault.dropped())
    await run(db_url, retries=0)
    await run(db_url)
    with pytest.raises(ProviderError) as raised:
        api.enqueue(Fault.unauthorized(f"bad key {SENTINEL}"))
        await OpenAIProvider().complete(request())
    assert "[redacted]" in str(raised.value)
    store = Store(db_url)
    dump = str(raised.value)
    for execution in await store.list_executions():
        dump += json.dumps(execution.model_dump(mode="json"))
        dump += json.dumps(
            [r.model_dump(mode="json") for r in await store.invocations(execution.id)]
        )
        dump += execution.error or ""
    assert "401" in dump
    assert SENTINEL not in dump
    assert caplog.records, "the SDK logs at DEBUG: the check must see something"
    assert SENTINEL not in caplog.text
    assert all(SENTINEL not in str(r.args) for r in caplog.records)
