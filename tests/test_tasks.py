"""MCP Tasks for long runs (qmcp_server.tasks), in both protocol eras.

2026-07-28 (the `io.modelcontextprotocol/tasks` extension) is driven with the SDK's own client
through its extension API: `TasksClient` below claims `resultType: "task"` and polls `tasks/get`,
answering `inputRequests` with the client's elicitation callback and `tasks/update`. The SDK's
client has no way to send a 2025-11-25 task-augmented `tools/call` (it checks every `tools/call`
answer against `CallToolResult`), so that era is driven with raw JSON-RPC over the HTTP transport,
and with the SDK's client for `tasks/result`, whose elicitation it answers. The server process is
killed (SIGKILL) between `tools/call` and `tasks/get`, started again on the same database, and the
task is read and resumed through the protocol.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import plugin_functions  # noqa: F401  (registers function:sleepy in this process too)
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequest,
    Request,
    RequestParams,
    Result,
)
from pydantic import TypeAdapter
from test_mcp_transports import BIN, ROOT, server_env, start_http

from qmcp.agentframework import service
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
TASKS = "io.modelcontextprotocol/tasks"
RELATED = "io.modelcontextprotocol/related-task"
ANY = TypeAdapter(dict[str, Any])
INPUT_REQUEST: TypeAdapter[InputRequest] = TypeAdapter(InputRequest)


# -- a tasks client on the SDK's extension API (2026-07-28) ------------------------------------


class TaskIdParams(RequestParams):
    task_id: str


class UpdateParams(RequestParams):
    task_id: str
    input_responses: dict[str, Any]


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"  # SEP-2663: Mcp-Name carries the task id over HTTP


class UpdateTask(Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: UpdateParams
    name_param = "taskId"


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param = "taskId"


class TaskResult(Request[TaskIdParams, Literal["tasks/result"]]):
    method: Literal["tasks/result"] = "tasks/result"
    params: TaskIdParams


class TaskList(Request[RequestParams, Literal["tasks/list"]]):
    method: Literal["tasks/list"] = "tasks/list"
    params: RequestParams


class CreatedTask(Result):
    """SEP-2663's `CreateTaskResult`: `Result & Task`, tagged `resultType: "task"`."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None


class TaskEnded(Exception):
    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(f"task {task['taskId']} ended {task['status']}: {task.get('error')}")
        self.task = task


class TasksClient(ClientExtension):
    """Polls a created task to its end; answers its input requests through the client's own
    callbacks (as the SDK answers an InputRequiredResult) and `tasks/update`."""

    identifier = TASKS

    def __init__(self, poll_seconds: float = 0.05) -> None:
        self.poll_seconds = poll_seconds  # the server suggests 2 s; a test does not wait that long
        self.created: list[CreatedTask] = []
        self.polls: list[dict[str, Any]] = []

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self.resolve)]

    async def resolve(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        self.created.append(created)
        session, answered = ctx.session, set[str]()
        while True:
            task = await session.send_request(
                GetTask(params=TaskIdParams(task_id=created.task_id)), ANY
            )
            self.polls.append(task)
            if task["status"] == "completed":
                return CallToolResult.model_validate(task["result"])
            if task["status"] in ("failed", "cancelled"):
                raise TaskEnded(task)
            if task["status"] == "input_required":
                responses = {}
                for key, raw in task["inputRequests"].items():
                    if key not in answered:
                        context = ClientRequestContext(session=session, request_id=key)
                        reply = await session.dispatch_input_request(
                            context, INPUT_REQUEST.validate_python(raw)
                        )
                        responses[key] = reply.model_dump(
                            by_alias=True, mode="json", exclude_none=True
                        )
                        answered.add(key)
                if responses:
                    params = UpdateParams(task_id=created.task_id, input_responses=responses)
                    await session.send_request(UpdateTask(params=params), ANY)
            await anyio.sleep(self.poll_seconds)


# -- fixtures --------------------------------------------------------------------------------


class Gate:
    """A function model that waits until opened, so a test holds a run in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls: list[str] = []

    async def __call__(self, request: LLMRequest) -> str:
        self.calls.append(request.slot)
        self.entered.set()
        await self.opened.wait()
        return f"{request.slot} answered"


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    register_function("task_gate", g)
    yield g
    unregister_function("task_gate")


async def pipeline(db_url: str, second_model: str = "offline", **second: Any) -> None:
    await service.create_agent("t_first", "executor", model="offline", db_url=db_url)
    await service.create_agent("t_second", "executor", model=second_model, db_url=db_url, **second)
    await service.create_topology(
        "t_pipe", "pipeline", {"first": "t_first", "second": "t_second"}, db_url=db_url
    )


async def get_task(client: Client, task_id: str) -> dict[str, Any]:
    return await client.session.send_request(GetTask(params=TaskIdParams(task_id=task_id)), ANY)


# -- 2026-07-28, in process, with the SDK's client --------------------------------------------


@pytest.mark.postgres
async def test_a_run_is_a_task_whose_id_is_the_execution_id(db_url: str) -> None:
    await pipeline(db_url)
    tasks = TasksClient()
    async with Client(build_server(db_url), extensions=[tasks]) as client:
        result = await client.call_tool(
            "topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}}
        )
        assert result.structured_content is not None, result
        outcome = result.structured_content
        (created,) = tasks.created
        assert created.task_id == outcome["execution_id"] and created.poll_interval_ms == 2000
        assert created.ttl_ms is None  # kept until pruned
        assert outcome["status"] == "completed"
        assert outcome["output"]["content"].startswith("[offline model]")
        again = await get_task(client, created.task_id)
        assert again["status"] == "completed" and again["resultType"] == "complete"
        assert again["result"]["structuredContent"] == outcome
        assert again["createdAt"].endswith("Z") and again["lastUpdatedAt"] >= again["createdAt"]
        shortcut = await client.call_tool("run_t_pipe", {"prompt": "hi"})  # qmcp_server.shortcuts
        assert shortcut.structured_content and shortcut.structured_content["status"] == "completed"
        assert tasks.created[1].task_id == shortcut.structured_content["execution_id"]
    execution, invocations = await service.get_execution(created.task_id, db_url)
    assert execution.status == "completed" and len(invocations) == 2


@pytest.mark.postgres
async def test_without_the_extension_or_with_wait_false_nothing_changes(db_url: str) -> None:
    await pipeline(db_url)
    run = {"topology": "t_pipe", "input": {"prompt": "hi"}}
    async with Client(build_server(db_url)) as client:
        plain = await client.call_tool("topologies_run", run)
        assert plain.structured_content and plain.structured_content["status"] == "completed"
    tasks = TasksClient()
    async with Client(build_server(db_url), extensions=[tasks]) as client:
        early = await client.call_tool("topologies_run", {**run, "wait": False})
        assert early.structured_content and early.structured_content["status"] == "running"
        refused = await client.call_tool("topologies_run", {**run, "topology": "nope"})
        assert refused.is_error and "nope" in refused.content[0].text  # type: ignore[union-attr]
    assert tasks.created == [], "wait=false and a refused call make no task"


@pytest.mark.postgres
async def test_an_approval_is_input_required_and_answered_through_tasks_update(
    db_url: str,
) -> None:
    await pipeline(
        db_url, capabilities=[{"name": "human_in_loop", "config": {"question": "Ship it?"}}]
    )
    asked: list[ElicitRequestFormParams] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content={"approve": True, "comment": "fine"})

    tasks = TasksClient()
    async with Client(
        build_server(db_url), extensions=[tasks], elicitation_callback=elicit
    ) as client:
        result = await client.call_tool(
            "topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}}
        )
    assert result.structured_content and result.structured_content["status"] == "completed"
    waiting = [p for p in tasks.polls if p["status"] == "input_required"]
    assert waiting, [p["status"] for p in tasks.polls]
    (key,) = waiting[0]["inputRequests"]
    request = waiting[0]["inputRequests"][key]
    assert key.startswith("approval-") and request["method"] == "elicitation/create"
    assert "Ship it?" in request["params"]["message"]
    assert request["params"]["requestedSchema"]["required"] == ["approve"]
    assert "waiting for approval" in waiting[0]["statusMessage"]
    assert len(asked) == 1 and "Proposed answer" in asked[0].message
    (approval,) = await service.execution_approvals(tasks.created[0].task_id, db_url)
    assert approval.status == "approved" and approval.decided_by == "mcp task"
    assert approval.comment == "fine"


@pytest.mark.postgres
async def test_a_rejected_approval_fails_the_task(db_url: str) -> None:
    await pipeline(
        db_url, capabilities=[{"name": "human_in_loop", "config": {"question": "Ship it?"}}]
    )

    async def decline(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="decline")

    tasks = TasksClient()
    async with Client(build_server(db_url), extensions=[tasks], elicitation_callback=decline) as c:
        with pytest.raises(TaskEnded) as ended:
            await c.call_tool("topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}})
    task = ended.value.task
    assert task["status"] == "failed" and "rejected" in task["error"]["message"]
    assert task["error"]["data"]["status"] == "failed"


@pytest.mark.postgres
async def test_tasks_cancel_records_cancelled(db_url: str, gate: Gate) -> None:
    await pipeline(db_url, "function:task_gate")
    tasks = TasksClient()
    async with Client(build_server(db_url), extensions=[tasks]) as client:
        created = await client.session.call_tool(
            "topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}}, allow_claimed=True
        )
        assert isinstance(created, CreatedTask) and created.status == "working"
        await asyncio.wait_for(gate.entered.wait(), 10)
        working = await get_task(client, created.task_id)
        assert (
            working["status"] == "working"
            and "1 invocation(s) recorded" in working["statusMessage"]
        )
        ack = await client.session.send_request(
            CancelTask(params=TaskIdParams(task_id=created.task_id)), ANY
        )
        assert ack == {"resultType": "complete", "_meta": ack["_meta"]}
        cancelled = await get_task(client, created.task_id)
        assert cancelled["status"] == "cancelled"
        assert await client.session.send_request(  # cancelling an ended task: acknowledged
            CancelTask(params=TaskIdParams(task_id=created.task_id)), ANY
        )
        # A resume call on the task goes on from where it stopped, as the same task.
        gate.opened.set()
        resumed = await client.call_tool("executions_resume", {"execution_id": created.task_id})
    assert resumed.structured_content and resumed.structured_content["status"] == "completed"
    assert [c.task_id for c in tasks.created] == [created.task_id]
    assert gate.calls == ["second", "second"], (
        "the cancelled call is made again, the first stage not"
    )
    assert await completed_keys(db_url, created.task_id) == ["stage-0/first", "stage-1/second"]


@pytest.mark.postgres
async def test_cancelling_a_task_that_waits_for_an_approval(db_url: str) -> None:
    """No process runs a waiting execution: tasks/cancel records it as cancelled, and a resume
    makes it wait for the same approval again (nothing is approved by itself)."""
    await pipeline(
        db_url, capabilities=[{"name": "human_in_loop", "config": {"question": "Ship it?"}}]
    )
    async with Client(build_server(db_url), extensions=[TasksClient()]) as client:
        run = {"topology": "t_pipe", "input": {"prompt": "hi"}}
        created = await client.session.call_tool("topologies_run", run, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        for _ in range(200):
            waiting = await get_task(client, created.task_id)
            if waiting["status"] != "working":
                break
            await anyio.sleep(0.05)
        assert waiting["status"] == "input_required", waiting
        await client.session.send_request(
            CancelTask(params=TaskIdParams(task_id=created.task_id)), ANY
        )
        cancelled = await get_task(client, created.task_id)
        assert cancelled["status"] == "cancelled"
        assert cancelled["statusMessage"] == "cancelled: cancelled through tasks/cancel"
        again = await client.session.call_tool(
            "executions_resume", {"execution_id": created.task_id}, allow_claimed=True
        )
        assert isinstance(again, CreatedTask) and again.task_id == created.task_id
        for _ in range(200):
            resumed = await get_task(client, created.task_id)
            if resumed["status"] != "working":
                break
            await anyio.sleep(0.05)
        assert resumed["status"] == "input_required"
        assert list(resumed["inputRequests"]) == list(waiting["inputRequests"])
    (approval,) = await service.execution_approvals(created.task_id, db_url)
    assert approval.status == "pending"


@pytest.mark.postgres
async def test_an_approval_answered_elsewhere_asks_whether_to_resume(db_url: str) -> None:
    """Answered with approvals_answer (not through the task), the run waits to be resumed: the
    task asks that, and `resume: false` records it as cancelled."""
    await pipeline(
        db_url, capabilities=[{"name": "human_in_loop", "config": {"question": "Ship it?"}}]
    )
    async with Client(build_server(db_url), extensions=[TasksClient()]) as client:
        run = {"topology": "t_pipe", "input": {"prompt": "hi"}}
        created = await client.session.call_tool("topologies_run", run, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        for _ in range(200):
            if (await get_task(client, created.task_id))["status"] != "working":
                break
            await anyio.sleep(0.05)
        (approval,) = await service.execution_approvals(created.task_id, db_url)
        await call_tool(client, "approvals_answer", approval_id=approval.id, approve=True)
        waiting = await get_task(client, created.task_id)
        assert waiting["status"] == "input_required"
        assert "its approvals are answered" in waiting["statusMessage"]
        (key,) = waiting["inputRequests"]
        assert key.startswith("resume-")
        no = {key: {"action": "accept", "content": {"resume": False}}}
        params = UpdateParams(task_id=created.task_id, input_responses=no)
        await client.session.send_request(UpdateTask(params=params), ANY)
        ended = await get_task(client, created.task_id)
    assert ended["status"] == "cancelled" and "chose not to resume" in ended["statusMessage"]


async def call_tool(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error and result.structured_content is not None, result.content
    return result.structured_content


@pytest.mark.postgres
async def test_an_unknown_task_is_invalid_params(db_url: str) -> None:
    async with Client(build_server(db_url), extensions=[TasksClient()]) as client:
        for task_id in (str(uuid.uuid4()), "not-an-id"):
            with pytest.raises(MCPError) as refused:
                await get_task(client, task_id)
            assert refused.value.code == INVALID_PARAMS
            assert "Failed to retrieve task" in refused.value.error.message


# -- 2025-11-25, in process: what the SDK's client can do --------------------------------------


@pytest.mark.postgres
async def test_legacy_capability_and_tool_task_support(db_url: str) -> None:
    await pipeline(db_url)
    async with Client(build_server(db_url), mode="legacy") as client:
        tasks = client.server_capabilities.tasks
        assert tasks is not None and tasks.requests is not None and tasks.requests.tools
        assert tasks.list is not None and tasks.cancel is not None
        listed = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("topologies_run", "executions_resume", "run_t_pipe"):
        assert listed[name].execution and listed[name].execution.task_support == "optional"
    assert listed["agents_list"].execution is None


# -- over HTTP, with raw JSON-RPC, across a SIGKILL ------------------------------------------

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "0"},
}


class Raw:
    """JSON-RPC over the streamable HTTP transport by hand: a 2025-11-25 session (initialize,
    then Mcp-Session-Id) or 2026-07-28 stateless requests (the envelope in `_meta`, headers)."""

    def __init__(self, port: int, era: str) -> None:
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.era = era
        self.http = httpx.Client(timeout=120)
        self.session: str | None = None
        self.ids = 0
        if era == "2025-11-25":
            init = self.send(
                "initialize",
                {
                    "protocolVersion": era,
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test", "version": "0"},
                },
            )
            assert init["result"]["protocolVersion"] == era, init
            self.capabilities = init["result"]["capabilities"]
            self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def headers(self, method: str, params: dict[str, Any]) -> dict[str, str]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        if method != "initialize":
            headers["MCP-Protocol-Version"] = self.era
        if self.era != "2025-11-25":
            headers["Mcp-Method"] = method
            name = params.get("name") or params.get("taskId")
            if name:
                headers["Mcp-Name"] = name
        return headers

    def post(self, body: dict[str, Any]) -> httpx.Response:
        params = body.get("params") or {}
        response = self.http.post(self.url, json=body, headers=self.headers(body["method"], params))
        self.session = response.headers.get("mcp-session-id", self.session)
        return response

    def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One request; its JSON-RPC response (`result` or `error`), from JSON or an SSE stream."""
        self.ids += 1
        if self.era != "2025-11-25":
            params = {**params, "_meta": {**MODERN_META, **params.get("_meta", {})}}
        response = self.post({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        assert response.status_code == 200, response.text
        if response.headers["content-type"].startswith("application/json"):
            messages = [response.json()]
        else:
            messages = [
                json.loads(line[5:])
                for line in response.text.splitlines()
                if line.startswith("data:")
            ]
        (answer,) = [m for m in messages if m.get("id") == self.ids and "method" not in m]
        return answer

    def result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = self.send(method, params)
        assert "result" in answer, answer
        return answer["result"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.result("tasks/get", {"taskId": task_id})

    def until(self, task_id: str, *statuses: str, seconds: float = 60) -> dict[str, Any]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            task = self.task(task_id)
            if task["status"] in statuses:
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} never became {statuses}: {task}")


@pytest.fixture
def sleepy_env(tmp_path: Path) -> dict[str, str]:
    return {
        "QMCP_PLUGINS": "plugin_functions",
        "PYTHONPATH": str(ROOT / "tests"),
        "QMCP_TEST_SLEEP": "120",
        "QMCP_TEST_AWAKE": str(tmp_path / "awake"),
    }


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(10)


def run_args(era: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "topologies_run",
        "arguments": {"topology": "t_pipe", "input": {"prompt": "hi"}},
    }
    if era == "2025-11-25":
        args["task"] = {"ttl": 60_000}
    return args


async def completed_keys(db_url: str, task_id: str) -> list[str]:
    _, invocations = await service.get_execution(task_id, db_url)
    return sorted(i.key for i in invocations if i.status == "completed")


@pytest.mark.slow
@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
async def test_a_task_outlives_a_sigkill_and_resumes_through_the_protocol(
    era: str, db_url: str, tmp_path: Path, sleepy_env: dict[str, str]
) -> None:
    await pipeline(db_url, "function:sleepy")
    process, port = start_http(db_url, tmp_path, **sleepy_env)
    try:
        raw = Raw(port, era)
        created = raw.result("tools/call", run_args(era))
        task = created["task"] if era == "2025-11-25" else created
        if era == "2026-07-28":
            assert created["resultType"] == "task" and created["ttlMs"] is None
        else:
            assert created["task"]["ttl"] is None and created["task"]["pollInterval"] == 2000
            assert (
                "tasks/result"
                in created["_meta"]["io.modelcontextprotocol/model-immediate-response"]
            )
        task_id = task["taskId"]
        assert task["status"] == "working" and uuid.UUID(task_id)
        # The first stage (offline) finishes; the second sleeps: kill the server under it.
        for _ in range(300):
            if "1 invocation(s) recorded" in raw.task(task_id)["statusMessage"]:
                break
            await anyio.sleep(0.05)
        else:
            raise AssertionError(raw.task(task_id))
    finally:
        kill(process)
    (tmp_path / "awake").touch()  # the resumed run's sleepy model answers at once
    process, port = start_http(db_url, tmp_path, **sleepy_env)
    try:
        raw = Raw(port, era)
        stopped = raw.task(task_id)
        assert stopped["status"] == "input_required", stopped
        assert stopped["statusMessage"].startswith("interrupted: the server stopped")
        if era == "2025-11-25":
            listed = raw.result("tasks/list", {})
            assert task_id in [t["taskId"] for t in listed["tasks"]]
            result = raw.result("tasks/result", {"taskId": task_id})  # resumes, then answers
            assert result["_meta"][RELATED] == {"taskId": task_id}
            assert result["structuredContent"]["status"] == "completed"
            assert raw.task(task_id)["status"] == "completed"
        else:
            (key,) = stopped["inputRequests"]
            question = stopped["inputRequests"][key]
            assert key.startswith("resume-") and question["method"] == "elicitation/create"
            assert "Resume it?" in question["params"]["message"]
            reply = {key: {"action": "accept", "content": {"resume": True}}}
            ack = raw.result("tasks/update", {"taskId": task_id, "inputResponses": reply})
            assert set(ack) == {"resultType", "_meta"} and ack["resultType"] == "complete"
            done = raw.until(task_id, "completed", "failed")
            assert done["status"] == "completed", done
            result = done["result"]
        assert result["structuredContent"]["output"]["content"].startswith("second rested: ")
        assert result["structuredContent"]["execution_id"] == task_id
    finally:
        stop(process)
    # Each stage completed once: the first before the kill, reused; the second after it.
    assert await completed_keys(db_url, task_id) == ["stage-0/first", "stage-1/second"]


@pytest.mark.slow
async def test_legacy_cancel_and_task_support_over_http(
    db_url: str, tmp_path: Path, sleepy_env: dict[str, str]
) -> None:
    await pipeline(db_url, "function:sleepy")
    process, port = start_http(db_url, tmp_path, **sleepy_env)
    try:
        raw = Raw(port, "2025-11-25")
        assert raw.capabilities["tasks"] == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
        refused = raw.send("tools/call", {"name": "agents_list", "arguments": {}, "task": {}})
        assert (
            refused["error"]["code"] == -32601 and "topologies_run" in refused["error"]["message"]
        )
        bad = raw.send(
            "tools/call", {**run_args("2025-11-25"), "arguments": {"topology": "nope", "input": {}}}
        )
        assert bad["error"]["code"] == INVALID_PARAMS and "nope" in bad["error"]["message"]
        task_id = raw.result("tools/call", run_args("2025-11-25"))["task"]["taskId"]
        cancelled = raw.result("tasks/cancel", {"taskId": task_id})
        assert cancelled["taskId"] == task_id and cancelled["status"] == "cancelled"
        assert raw.task(task_id)["status"] == "cancelled"
        again = raw.send("tasks/cancel", {"taskId": task_id})
        assert again["error"]["code"] == INVALID_PARAMS
        assert "already in terminal status 'cancelled'" in again["error"]["message"]
        result = raw.result("tasks/result", {"taskId": task_id})
        assert result["structuredContent"]["status"] == "cancelled"
        assert result["_meta"][RELATED] == {"taskId": task_id}
        unknown = raw.send("tasks/get", {"taskId": str(uuid.uuid4())})
        assert unknown["error"]["code"] == INVALID_PARAMS
    finally:
        stop(process)
    execution, _ = await service.get_execution(task_id, db_url)
    assert execution.status == "cancelled"


@pytest.mark.slow
async def test_legacy_approval_is_asked_through_tasks_result(
    db_url: str, tmp_path: Path, sleepy_env: dict[str, str]
) -> None:
    """The raw client starts the task; the SDK's client (2025-11-25 over HTTP) sees
    `input_required` and calls `tasks/result`, on which the server asks for the approval with
    `elicitation/create` tagged with the task, then answers with the run's result."""
    await pipeline(
        db_url, capabilities=[{"name": "human_in_loop", "config": {"question": "Ship it?"}}]
    )
    asked: list[ElicitRequestFormParams] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content={"approve": True})

    process, port = start_http(db_url, tmp_path, **sleepy_env)
    try:
        raw = Raw(port, "2025-11-25")
        task_id = raw.result("tools/call", run_args("2025-11-25"))["task"]["taskId"]
        waiting = raw.until(task_id, "input_required")
        assert "waiting for approval" in waiting["statusMessage"]
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url, mode="legacy", elicitation_callback=elicit) as client:
            ask = TaskResult(params=TaskIdParams(task_id=task_id))
            result = await client.session.send_request(ask, ANY)
            listed = await client.session.send_request(TaskList(params=RequestParams()), ANY)
        assert result["structuredContent"]["status"] == "completed"
        assert result["_meta"][RELATED] == {"taskId": task_id}
        (question,) = asked
        assert "Ship it?" in question.message and question.meta
        assert question.meta[RELATED] == {"taskId": task_id}
        assert [t["status"] for t in listed["tasks"] if t["taskId"] == task_id] == ["completed"]
    finally:
        stop(process)
    (approval,) = await service.execution_approvals(task_id, db_url)
    assert approval.status == "approved"


@pytest.mark.slow
async def test_the_sdk_client_runs_a_task_over_stdio(db_url: str, tmp_path: Path) -> None:
    await pipeline(db_url)
    params = StdioServerParameters(
        command=str(BIN / "qmcp-server"), env=server_env(db_url), cwd=str(tmp_path)
    )
    tasks = TasksClient()
    async with Client(params, extensions=[tasks]) as client:
        result = await client.call_tool(
            "topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}}
        )
    assert result.structured_content and result.structured_content["status"] == "completed"
    assert tasks.created[0].task_id == result.structured_content["execution_id"]
