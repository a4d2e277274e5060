"""`qmcp models`: the providers and model specs, which are configured here, and `models test`
making one tiny call through the real provider (the openai SDK against a local server)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_chat_api import ChatAPIServer, Fault
from typer.testing import CliRunner, Result

from qmcp.agentframework.cli import app
from qmcp.agentframework.llm import ProviderRegistry
from qmcp.agentframework.models import Models

WIDE = {"COLUMNS": "4000"}
KEY = "local-key-SENTINEL-3f9a0c1d77"


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[ChatAPIServer]:
    with ChatAPIServer() as server:
        ProviderRegistry.reset()
        yield server


def closed_port() -> str:
    """A base URL nothing listens on (a port that was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def cli(*argv: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(argv), env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    return result


def listing(*argv: str) -> dict[str, Any]:
    data = json.loads(cli("models", *argv, "--format", "json").stdout)
    data["by_name"] = {p["name"]: p for p in data["providers"]}
    return data


# -- models list ----------------------------------------------------------------------------


def test_models_lists_providers_specs_and_named_models() -> None:
    data = listing()
    assert list(data["by_name"]) == ["anthropic", "openai", "offline", "function", "sampling"]
    assert data["by_name"]["openai"]["specs"] == ["openai:<model>"]
    assert data["by_name"]["offline"]["configured"] is True
    assert data["by_name"]["sampling"]["configured"] is False
    assert {m["name"] for m in data["models"]} == set(Models.all())
    sonnet = next(m for m in data["models"] if m["name"] == "CLAUDE_SONNET_4")
    assert sonnet["label"] == Models.CLAUDE_SONNET_4.model and sonnet["configured"] is False
    # `qmcp models` alone is `qmcp models list`.
    table = cli("models").stdout
    assert "openai:<model>" in table and "CLAUDE_SONNET_4" in table
    assert table == cli("models", "list").stdout


def test_keys_present_mark_providers_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert listing()["by_name"]["openai"]["configured"] is False
    assert "set OPENAI_API_KEY" in listing()["by_name"]["openai"]["status"]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    data = listing()
    assert data["by_name"]["openai"]["configured"] is True
    assert data["by_name"]["anthropic"]["configured"] is True
    assert all(m["configured"] for m in data["models"] if m["provider"] == "anthropic")
    assert KEY not in json.dumps(data), "a key is reported present, never shown"


def test_a_base_url_that_answers_is_configured_without_a_key(
    api: ChatAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
    openai = listing()["by_name"]["openai"]
    assert openai["configured"] is True
    assert openai["endpoint"]["url"] == api.base_url and openai["endpoint"]["reachable"]
    assert "no key" in openai["status"]
    (probe,) = api.requests
    assert probe["method"] == "GET" and probe["path"] == "/v1/models"
    assert "authorization" not in probe["headers"], "the check sends no key"


def test_a_base_url_that_does_not_answer_is_not_configured_and_the_check_is_quick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", closed_port())
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    started = time.perf_counter()
    openai = listing()["by_name"]["openai"]
    assert time.perf_counter() - started < 5
    assert openai["configured"] is False and openai["endpoint"]["reachable"] is False
    assert "does not answer" in openai["status"]


@pytest.mark.slow  # waits for a timeout
def test_a_silent_endpoint_times_out_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: the probe gives up on its own."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://{host}:{port}/v1")
        started = time.perf_counter()
        openai = listing()["by_name"]["openai"]
        assert time.perf_counter() - started < 5
    assert openai["configured"] is False and "no answer within" in openai["endpoint"]["detail"]


# -- models test ----------------------------------------------------------------------------


def test_models_test_makes_one_tiny_call_and_reports_latency(api: ChatAPIServer) -> None:
    api.latency = 0.05
    out = cli("models", "test", "openai:llama3.2", "--base-url", api.base_url).stdout
    assert "openai:llama3.2 answered in" in out and " ms " in out
    (sent,) = api.completions
    assert sent["model"] == "llama3.2" and sent["max_tokens"] <= 32
    result = json.loads(
        cli("models", "test", "openai:llama3.2", "--base-url", api.base_url, "-f", "json").stdout
    )
    assert result["ok"] is True and result["latency_ms"] >= 50
    assert result["answer"].startswith("echo: ") and result["input_tokens"] > 0


def test_models_test_uses_the_named_key_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ChatAPIServer(key=KEY) as api:
        monkeypatch.setenv("VLLM_API_KEY", KEY)
        cli(
            "models",
            "test",
            "openai:m",
            "--base-url",
            api.base_url,
            "--api-key-env",
            "VLLM_API_KEY",
        )
        assert api.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
        failed = cli(
            "models",
            "test",
            "openai:m",
            "--base-url",
            api.base_url,
            "--api-key-env",
            "NOPE_API_KEY",
            code=1,
        )
    assert "NOPE_API_KEY is not set" in failed.stderr
    assert len(api.requests) == 1


def test_a_failed_call_is_one_line_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ChatAPIServer(key=KEY) as api:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
        api.enqueue(Fault.unauthorized(f"Incorrect API key provided: {KEY}"))
        failed = cli("models", "test", "openai:gpt-x", code=1)
        assert len(api.requests) == 1, "a test call is not retried"
        api.enqueue(Fault.rate_limited(0.01))
        as_json = cli("models", "test", "openai:gpt-x", "-f", "json", code=1)
    line = failed.stderr.strip()
    assert "\n" not in line and "Traceback" not in failed.output
    assert line.startswith("error: openai:gpt-x failed after") and "401" in line
    assert KEY not in failed.output
    result = json.loads(as_json.stdout)
    assert result["ok"] is False and "429" in result["error"]


def test_an_endpoint_that_is_down_fails_clearly() -> None:
    failed = cli("models", "test", "openai:m", "--base-url", closed_port(), code=1)
    assert "could not reach http://127.0.0.1:" in failed.stderr


def test_no_key_and_no_endpoint_says_what_to_set() -> None:
    failed = cli("models", "test", "openai:gpt-x", code=1)
    assert "OPENAI_API_KEY" in failed.stderr and "--api-key-env" in failed.stderr


def test_offline_answers_without_a_network() -> None:
    out = cli("models", "test", "offline").stdout
    assert out.startswith("offline answered in")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nonsense"], "unknown model 'nonsense'"),
        (["sampling"], "only inside the MCP server"),
        (["offline", "--base-url", "http://127.0.0.1:1/v1"], "are for openai:<model> models"),
        (["openai:m", "--base-url", "ftp://x"], "invalid endpoint"),
    ],
    ids=["unknown", "sampling", "endpoint-for-offline", "bad-url"],
)
def test_bad_specs_are_usage_errors(argv: list[str], message: str) -> None:
    failed = cli("models", "test", *argv, code=2)
    assert message in failed.stderr


# -- the whole path: an agent created with an endpoint, run from the CLI -----------------------


def test_an_agent_with_its_own_endpoint_runs_from_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ChatAPIServer(key=KEY) as api:
        monkeypatch.setenv("LOCAL_API_KEY", KEY)
        cli(
            "agents", "create", "local", "executor", "--model", "openai:llama3.2",
            "--base-url", api.base_url, "--api-key-env", "LOCAL_API_KEY", "--temperature", "0.2",
        )  # fmt: skip
        cli("agents", "topologies", "create", "solo", "pipeline", "--slot", "stage_0=local")
        out = cli(
            "agents", "topologies", "run", "solo", "--input-json", '{"prompt": "ping"}',
            "-f", "json",
        ).stdout  # fmt: skip
    result = json.loads(out)
    assert result["status"] == "completed", result
    (sent,) = api.completions
    assert sent["temperature"] == 0.2 and sent["messages"][-1]["content"] == "ping"
    assert api.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY not in out
