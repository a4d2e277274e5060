"""OpenTelemetry traces: a span per execution, invocation, model call and tool call, in the GenAI
semantic conventions, nested under the MCP request that started the run.

In this process the spans go to the SDK's in-memory exporter (the global tracer provider, so the
mcp SDK's own request spans land there too). Other processes (a `qmcp serve` subprocess, the
tasks of a Metaflow run) export over OTLP/HTTP, as `OTEL_EXPORTER_OTLP_ENDPOINT` tells them, to a
small OTLP receiver this module serves on 127.0.0.1 and decodes with the OTLP protobuf schema.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from qmcp.agentframework import telemetry
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    Models,
    ToolServer,
    Topology,
)
from qmcp.agentframework.runners import MetaflowRunner
from qmcp.agentframework.store import Store
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOOL_SERVER = str(ROOT / "tests" / "tool_server.py")
MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]


# -- where the spans go -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once per process, as OpenTelemetry allows) with an
    in-memory exporter; qmcp traces with it for this module's tests only."""
    memory = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry.use(provider)
    yield memory
    telemetry.disable()
    memory.shutdown()  # the SDK's request spans in later tests are dropped, not kept


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@dataclass
class Received:
    """A span as an OTLP receiver got it."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    service: str


class _Receiver(ThreadingHTTPServer):
    received: list[Received]


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        assert isinstance(self.server, _Receiver)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.received.append(
                        Received(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                            _attributes(span.attributes),
                            str(resource.get("service.name")),
                        )
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        value: Any = getattr(pair.value, kind) if kind else None
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[pair.key] = value
    return out


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Received]]]:
    """An OTLP/HTTP receiver on 127.0.0.1: its endpoint, and the spans it has received."""
    server = _Receiver(("127.0.0.1", 0), _Collector)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    server.shutdown()
    server.server_close()


# -- helpers ----------------------------------------------------------------------------------


def attr(span: Any, key: str) -> Any:
    """A span's attribute (an SDK span's or a received one's)."""
    return (span.attributes or {})[key]


def hexid(value: int) -> str:
    return f"{value:016x}"


def parent_of(span: ReadableSpan) -> str:
    return hexid(span.parent.span_id) if span.parent is not None else ""


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def only(spans: list[Any], prefix: str) -> Any:
    found = [s for s in spans if s.name.startswith(prefix)]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def make_team(client: Client) -> None:
    """An offline researcher with a real MCP tool server (the offline model calls its tool),
    an offline writer, in a pipeline."""
    tools = [{"name": "t", "command": sys.executable, "args": [TOOL_SERVER], "allow": ["lookup"]}]
    await call(client, "agents_create", name="tr_research", role="executor", model="offline",
               tools=tools)  # fmt: skip
    await call(client, "agents_create", name="tr_write", role="executor", model="offline")
    await call(
        client,
        "topologies_create",
        name="tr_pipe",
        topology_type="pipeline",
        slots={"research": "tr_research", "write": "tr_write"},
    )


# -- in process: the MCP request, the run, its invocations, model and tool calls --------------


@pytest.mark.parametrize("kwargs", MODES)
async def test_a_run_is_traced_under_the_mcp_request(
    kwargs: dict[str, Any], spans: InMemorySpanExporter, db_url: str
) -> None:
    tracer = trace.get_tracer("test-client")
    async with Client(build_server(db_url), **kwargs) as client:
        await make_team(client)
        with tracer.start_as_current_span("client asks") as asking:
            run = await call(client, "topologies_run", topology="tr_pipe",
                             input={"prompt": "What is the weather?"})  # fmt: skip
    assert run["status"] == "completed", run
    finished = list(spans.get_finished_spans())
    by_id = {hexid(s.context.span_id): s for s in finished}

    # The SDK's server span continues the client's trace: under the client's span for the
    # request where the client makes one (legacy sessions), else right under the caller's.
    request = only(finished, "tools/call topologies_run")
    assert request.kind is SpanKind.SERVER
    assert request.context.trace_id == asking.get_span_context().trace_id
    chain = [by_id[parent_of(request)].name]
    if chain[0] != "client asks":
        chain.append(by_id[parent_of(by_id[parent_of(request)])].name)
    assert chain in (["client asks"], ["MCP send tools/call topologies_run", "client asks"])

    execution = only(finished, "invoke_workflow tr_pipe")
    assert parent_of(execution) == hexid(request.context.span_id)
    attrs = execution.attributes or {}
    assert attrs["gen_ai.operation.name"] == "invoke_workflow"
    assert attrs["qmcp.execution.id"] == run["execution_id"]
    assert attrs["qmcp.topology.type"] == "pipeline"
    assert attrs["qmcp.execution.status"] == "completed"

    invocations = named(finished, "invoke_agent ")
    assert sorted(attr(s, "gen_ai.agent.name") for s in invocations) == [
        "tr_research",
        "tr_write",
    ]
    for span in invocations:
        assert parent_of(span) == hexid(execution.context.span_id)
        assert attr(span, "gen_ai.operation.name") == "invoke_agent"

    # Model calls: one `chat` span per call, under its invocation, with the usage recorded.
    async with Store(db_url) as store:
        rows = {r.key: r for r in await store.invocations(uuid.UUID(run["execution_id"]))}
    for span in invocations:
        key = attr(span, "qmcp.invocation.key")
        chats = [s for s in named(finished, "chat ") if parent_of(s) == hexid(span.context.span_id)]
        assert chats, key
        for chat in chats:
            a = chat.attributes or {}
            assert chat.kind is SpanKind.CLIENT
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.provider.name"] == "offline"
            assert a["gen_ai.request.model"] == Models.OFFLINE.model
            assert a["gen_ai.agent.name"] == attr(span, "gen_ai.agent.name")
        assert sum(attr(c, "gen_ai.usage.input_tokens") for c in chats) == (rows[key].input_tokens)
        assert sum(attr(c, "gen_ai.usage.output_tokens") for c in chats) == (
            rows[key].output_tokens
        )

    # The researcher's tool call: an `execute_tool` span, and inside it the SDK's client span
    # for `tools/call` to the tool server.
    research = next(s for s in invocations if attr(s, "gen_ai.agent.name") == "tr_research")
    tool_calls = named(finished, "execute_tool ")
    assert tool_calls, [s.name for s in finished]
    for tool_call in tool_calls:
        assert parent_of(tool_call) == hexid(research.context.span_id)
        assert attr(tool_call, "gen_ai.operation.name") == "execute_tool"
        assert tool_call.status.status_code is not StatusCode.ERROR
        tool_name = attr(tool_call, "gen_ai.tool.name")
        sent = [s for s in finished if parent_of(s) == hexid(tool_call.context.span_id)]
        assert [s.name for s in sent] == [f"MCP send tools/call {tool_name}"]
    assert {s.context.trace_id for s in finished if s.name != "client asks"} >= {
        asking.get_span_context().trace_id
    }


async def test_a_failed_model_call_marks_its_spans(
    spans: InMemorySpanExporter, db_url: str
) -> None:
    """A provider that fails for good: the chat span, the invocation and the execution say so."""
    from qmcp.agentframework.errors import ProviderError
    from qmcp.agentframework.llm import register_function, unregister_function
    from qmcp.agentframework.models import ModelConfig, TopologyType
    from qmcp.agentframework.runners import LocalRunner, RunConfig

    def refuse(_: Any) -> str:
        raise ProviderError("the model is gone", retryable=False, provider="function")

    register_function("tr_refuse", refuse)
    try:
        config = AgentConfig(model_config_obj=ModelConfig(provider="function", model="tr_refuse"))
        agents = {"only": AgentType(name="tr_refuser", role=AgentRole.EXECUTOR,
                                    config=config.model_dump(mode="json"))}  # fmt: skip
        topology = Topology(name="tr_fail", topology_type=TopologyType.PIPELINE)
        result = await LocalRunner(RunConfig(max_retries=0), db_url=db_url).run(
            topology, agents, {"prompt": "hi"}
        )
    finally:
        unregister_function("tr_refuse")
    assert result.status.value == "failed"
    finished = list(spans.get_finished_spans())
    chat = only(finished, "chat tr_refuse")
    assert chat.status.status_code is StatusCode.ERROR
    assert attr(chat, "error.type") == "ProviderError"
    assert only(finished, "invoke_agent tr_refuser").status.status_code is StatusCode.ERROR
    execution = only(finished, "invoke_workflow tr_fail")
    assert execution.status.status_code is StatusCode.ERROR
    assert attr(execution, "qmcp.execution.status") == "failed"


@pytest.mark.slow  # a tool server process
async def test_a_failing_tool_call_marks_its_span(spans: InMemorySpanExporter, db_url: str) -> None:
    """The tool answers with an error result: its `execute_tool` span is failed, the run goes on."""
    from qmcp.agentframework.models import TopologyType
    from qmcp.agentframework.runners import LocalRunner

    broken = ToolServer(name="t", command=sys.executable, args=[TOOL_SERVER], allow=["broken"])
    config = AgentConfig(model_config_obj=Models.OFFLINE, tools=[broken])
    agents = {"only": AgentType(name="tr_breaker", role=AgentRole.EXECUTOR,
                                config=config.model_dump(mode="json"))}  # fmt: skip
    topology = Topology(name="tr_tool_fails", topology_type=TopologyType.PIPELINE)
    result = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "broken"})
    assert result.status.value == "completed", result.error
    finished = list(spans.get_finished_spans())
    tool_call = only(finished, "execute_tool broken")
    assert tool_call.status.status_code is StatusCode.ERROR
    assert attr(tool_call, "error.type") == "tool_error"
    assert parent_of(tool_call) == hexid(only(finished, "invoke_agent tr_breaker").context.span_id)
    assert only(finished, "invoke_workflow tr_tool_fails").status.status_code is StatusCode.UNSET


async def test_a_sampling_pause_is_not_an_error(spans: InMemorySpanExporter, db_url: str) -> None:
    """On the stateless protocol a `sampling` agent's first call pauses the run for the client's
    answer: that `chat` span is not failed, it says it awaits the client; the next round's
    `chat` span is the answer."""
    from mcp_types import CreateMessageResult, TextContent

    async def client_model(context: Any, params: Any) -> CreateMessageResult:
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text="blue"), model="client-llm"
        )

    async with Client(build_server(db_url), sampling_callback=client_model) as client:
        await call(client, "agents_create", name="tr_sampler", role="executor", model="sampling")
        await call(client, "topologies_create", name="tr_sample", topology_type="pipeline",
                   slots={"only": "tr_sampler"})  # fmt: skip
        run = await call(client, "topologies_run", topology="tr_sample", input={"prompt": "hue?"})
    assert run["status"] == "completed" and run["output"]["content"] == "blue", run
    finished = list(spans.get_finished_spans())
    assert [s.name for s in finished if s.status.status_code is StatusCode.ERROR] == []
    paused, answered = named(finished, "chat ")
    assert paused.status.status_code is StatusCode.UNSET
    assert attr(paused, "qmcp.awaits") == "client" and attr(paused, "qmcp.waiting") == "Paused"
    assert "error.type" not in (paused.attributes or {})
    (event,) = paused.events
    assert event.name == "qmcp.awaiting" and (event.attributes or {})["qmcp.awaits"] == "client"
    assert "waiting for the MCP client's model" in str((event.attributes or {})["message"])
    assert attr(answered, "gen_ai.response.model") == "client-llm"
    assert "qmcp.awaits" not in (answered.attributes or {})
    first, second = named(finished, "invoke_workflow tr_sample")
    assert attr(first, "qmcp.execution.status") == "pending"
    assert attr(second, "qmcp.execution.status") == "completed"


# -- off: nothing imported, nothing exported --------------------------------------------------

OFF_PROBE = """
import asyncio, json, sys
from qmcp.agentframework import telemetry
from qmcp.agentframework.models import AgentRole, AgentType, Topology, TopologyType
from qmcp.agentframework.runners import LocalRunner

agents = {"a": AgentType(name="off_a", role=AgentRole.EXECUTOR)}
topology = Topology(name="off", topology_type=TopologyType.PIPELINE)
result = asyncio.run(LocalRunner(db_url=sys.argv[1]).run(topology, agents, {"prompt": "hi"}))
print(json.dumps({
    "status": result.status.value,
    "tracing": telemetry.enabled(),
    "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "exporters": sorted(m for m in sys.modules if m.startswith("opentelemetry.exporter")),
}))
"""


@pytest.mark.slow  # a fresh interpreter
def test_without_an_endpoint_nothing_is_traced_or_imported(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACE"))}
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, db_url],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {"status": "completed", "tracing": False, "sdk": [], "exporters": []}


def test_an_unsupported_protocol_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setattr(telemetry, "_installed_provider", lambda: None)
    for name, value in (("_decided", False), ("_tracer", None), ("_provider", None)):
        monkeypatch.setattr(telemetry, name, value)  # undecided for this test only
    assert telemetry.setup() is False
    err = capsys.readouterr().err
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported" in err
    assert "'http/protobuf' or 'grpc'" in err


# -- across processes: `qmcp serve` over HTTP, and Metaflow steps -----------------------------


def otlp_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "qmcp-under-test",
    }


@pytest.mark.slow  # a server subprocess
async def test_qmcp_serve_exports_over_otlp_in_the_clients_trace(
    spans: InMemorySpanExporter,
    collector: tuple[str, list[Received]],
    db_url: str,
    tmp_path: Path,
) -> None:
    from test_mcp_transports import start_http

    endpoint, received = collector
    env = otlp_env(endpoint) | {"QMCP_ALLOW_REMOTE_TOOL_COMMANDS": "1"}  # a stdio tool server
    process, port = start_http(db_url, tmp_path, **env)
    try:
        tracer = trace.get_tracer("test-client")
        async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
            await make_team(client)
            with tracer.start_as_current_span("client asks") as asking:
                run = await call(client, "topologies_run", topology="tr_pipe",
                                 input={"prompt": "What is the weather?"})  # fmt: skip
    finally:
        process.terminate()  # the server flushes its spans as it exits
        process.wait(30)
    assert run["status"] == "completed", run
    trace_id = f"{asking.get_span_context().trace_id:032x}"
    sent = only(list(spans.get_finished_spans()), "MCP send tools/call topologies_run")
    ours = [s for s in received if s.trace_id == trace_id]
    assert {s.service for s in ours} == {"qmcp-under-test"}
    request = only(ours, "tools/call topologies_run")
    assert request.parent_id == hexid(sent.context.span_id)  # continued from `_meta`
    execution = only(ours, "invoke_workflow tr_pipe")
    assert execution.parent_id == request.span_id
    assert attr(execution, "qmcp.execution.id") == run["execution_id"]
    invocations = [s for s in ours if s.name.startswith("invoke_agent ")]
    assert {attr(s, "gen_ai.agent.name") for s in invocations} == {"tr_research", "tr_write"}
    assert all(s.parent_id == execution.span_id for s in invocations)
    chats = [s for s in ours if s.name.startswith("chat ")]
    assert chats and all(attr(s, "gen_ai.usage.output_tokens") > 0 for s in chats)
    assert [s for s in ours if s.name.startswith("execute_tool ")]


@pytest.mark.slow  # a real Metaflow run
async def test_metaflow_steps_join_the_runs_trace(
    spans: InMemorySpanExporter,
    collector: tuple[str, list[Received]],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = collector
    for name, value in otlp_env(endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("USERNAME", os.environ.get("USERNAME", "qmcp-tests"))
    monkeypatch.setenv("QMCP_DATABASE_URL", db_url)
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path / "metaflow"))
    monkeypatch.chdir(tmp_path)
    from qmcp.agentframework.models import TopologyType

    lookup = ToolServer(name="t", command=sys.executable, args=[TOOL_SERVER], allow=["lookup"])
    research = AgentConfig(model_config_obj=Models.OFFLINE, tools=[lookup])
    agents = {
        "research": AgentType(name="mf_research", role=AgentRole.EXECUTOR,
                              config=research.model_dump(mode="json")),
        "write": AgentType(name="mf_write", role=AgentRole.EXECUTOR),
    }  # fmt: skip
    topology = Topology(name="traced_flow", topology_type=TopologyType.PIPELINE)
    runner = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    result = await runner.run(topology, agents, {"prompt": "What is the weather?"})
    assert result.status.value == "completed", result.error

    execution = only(list(spans.get_finished_spans()), "invoke_workflow traced_flow")
    assert attr(execution, "qmcp.runner.type") == "metaflow"
    trace_id = f"{execution.context.trace_id:032x}"
    assert received, "the flow's steps exported no spans"
    assert {s.trace_id for s in received} == {trace_id}
    steps = [s for s in received if s.name.startswith("metaflow ")]
    assert {attr(s, "metaflow.step_name") for s in steps} >= {"start", "end"}
    assert all(s.parent_id == hexid(execution.context.span_id) for s in steps)
    assert {attr(s, "qmcp.execution.id") for s in steps} == {str(result.execution_id)}
    by_id = {s.span_id: s for s in received}
    invocations = [s for s in received if s.name.startswith("invoke_agent ")]
    assert {attr(s, "gen_ai.agent.name") for s in invocations} == {"mf_research", "mf_write"}
    assert all(by_id[s.parent_id].name.startswith("metaflow ") for s in invocations)
    chats = [s for s in received if s.name.startswith("chat ")]
    assert all(by_id[s.parent_id].name.startswith("invoke_agent ") for s in chats)
    assert all(attr(s, "gen_ai.usage.input_tokens") > 0 for s in chats)
    tool_calls = [s for s in received if s.name.startswith("execute_tool ")]
    assert tool_calls and all(
        by_id[s.parent_id].attributes["gen_ai.agent.name"] == "mf_research" for s in tool_calls
    )
