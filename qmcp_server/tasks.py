"""MCP Tasks for long runs: `topologies_run`, `executions_resume` and the `run_<name>` tools
answer with a task handle that the client polls, in both protocol eras. A task id is an
execution id, and a task's state is read from the execution's record each time it is asked for,
so tasks survive a restart of the server: there is no task table and no task kept in memory.

- 2026-07-28: the `io.modelcontextprotocol/tasks` extension (SEP-2663). A client that declares
  the extension on its `tools/call` gets a `CreateTaskResult` (`resultType: "task"`) unless it
  passes `wait=false`; then `tasks/get` (the result, error or `inputRequests` inlined),
  `tasks/update` (answers to `inputRequests`) and `tasks/cancel`.
- 2025-11-25: the spec's experimental tasks. A `tools/call` with a `task` field gets a
  `CreateTaskResult`; then `tasks/get`, `tasks/result` (blocks until the run ends, asking the
  client's user meanwhile through `elicitation/create` tagged with the related task),
  `tasks/list` and `tasks/cancel`; capability `tasks.requests.tools.call`.

A task follows its execution: running is `working`; waiting for a human's approval is
`input_required` (the approval is the input asked for); interrupted (the server stopped under
the run) is `input_required` too, the input being whether to resume it; completed, failed and
cancelled are themselves. Answering the approval, or saying yes to resuming, resumes the run
in this server, reusing every finished invocation. On 2025-11-25, `tasks/result` on an
interrupted task resumes it (the requestor asked for the result, which needs the run to go on).
Runs are the server's background runs (`qmcp_server.runs`): this module only starts, reads,
answers and cancels them.

Task ids are random UUIDs (122 bits), not bound to a session or a token: every client of this
server can read every execution anyway (`executions_get`), so a task adds no exposure. Tasks live
as long as their executions (`ttl` null: until `qmcp executions prune`); a requested ttl is not
honoured.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pydantic_core
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CallToolResult,
    CancelTaskRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    RequestParams,
    TextContent,
    Tool,
    ToolExecution,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from qmcp_server.errors import invalid_params
from qmcp_server.runs import as_task
from qmcp_server.schemas import RunOutcome
from qmcp_server.shortcuts import PREFIX as RUN_TOOL_PREFIX

if TYPE_CHECKING:
    from qmcp.agentframework.models import Approval, Execution, Invocation
    from qmcp_server.state import ServerState

log = logging.getLogger("qmcp.server")

EXTENSION_ID = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
IMMEDIATE_RESPONSE = "io.modelcontextprotocol/model-immediate-response"
LEGACY = frozenset({"2025-11-25"})  # tasks appeared in 2025-11-25 and left the core in 2026-07-28
MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
TASK_TOOLS = frozenset({"topologies_run", "executions_resume"})  # and every `run_<name>`
POLL_INTERVAL_MS = 2000
RESULT_CHECK_SECONDS = 0.5  # how often a blocked tasks/result re-reads a run it does not own
LIST_PAGE = 50
LIST_MAX = 1000  # tasks/list pages through the newest 1000 executions

TaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]
TERMINAL = ("completed", "failed", "cancelled")

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "title": "Approve", "description": "use this answer"},
        "comment": {"type": "string", "title": "Comment", "description": "why (optional)"},
    },
    "required": ["approve"],
}
RESUME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "resume": {
            "type": "boolean",
            "title": "Resume",
            "description": "go on from where it stopped (no: record it as cancelled)",
        }
    },
    "required": ["resume"],
}


@dataclass(frozen=True)
class InputRequest:
    """A question a task waits on: an approval (`approval_id`), or whether to resume it."""

    key: str  # unique over the task's life: "approval-<id>", "resume-<digest of the stop>"
    message: str
    schema: dict[str, Any]
    approval_id: int | None = None

    def elicitation(self, task_id: str | None = None) -> ElicitRequest:
        meta: Any = {RELATED_TASK: {"taskId": task_id}} if task_id else None
        return ElicitRequest(
            params=ElicitRequestFormParams(
                message=self.message, requested_schema=self.schema, _meta=meta
            )
        )


@dataclass(frozen=True)
class TaskState:
    """A task as its execution's record shows it now."""

    execution: Execution
    status: TaskStatus
    message: str
    updated: datetime
    inputs: tuple[InputRequest, ...] = ()

    @property
    def task_id(self) -> str:
        return str(self.execution.id)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def approvals_pending(self) -> bool:
        return any(i.approval_id is not None for i in self.inputs)

    def task(self, modern: bool) -> dict[str, Any]:
        """The `Task` object: 2026-07-28 spells ttl and poll interval `ttlMs`/`pollIntervalMs`."""
        return {
            "taskId": self.task_id,
            "status": self.status,
            "statusMessage": self.message,
            "createdAt": _iso(self.execution.created_at),
            "lastUpdatedAt": _iso(self.updated),
            "ttlMs" if modern else "ttl": None,
            "pollIntervalMs" if modern else "pollInterval": POLL_INTERVAL_MS,
        }

    def detailed(self) -> dict[str, Any]:
        """The 2026-07-28 `DetailedTask`: the result, the error or the input requests inlined."""
        data = self.task(modern=True)
        if self.status == "completed":
            data["result"] = call_result(self.execution)
        elif self.status == "failed":
            data["error"] = {
                "code": INTERNAL_ERROR,
                "message": self.execution.error or "the run failed",
                "data": outcome_of(self.execution).model_dump(mode="json"),
            }
        elif self.status == "input_required":
            data["inputRequests"] = {
                i.key: i.elicitation().model_dump(by_alias=True, mode="json", exclude_none=True)
                for i in self.inputs
            }
        return data


def outcome_of(execution: Execution) -> RunOutcome:
    """What `topologies_run` (wait=true) answers for this execution as it stands."""
    return RunOutcome(
        execution_id=str(execution.id),
        status=execution.status.value,  # type: ignore[arg-type]
        topology_name=execution.topology_name,
        runner_type=execution.runner_type,
        output=execution.output,
        error=execution.error,
        duration_ms=execution.duration_ms,
        correlation_id=execution.correlation_id,
        resource_uri=f"qmcp://executions/{execution.id}",
    )


def call_result(execution: Execution) -> dict[str, Any]:
    """The `CallToolResult` the tool call would have answered had it waited (the SDK's form:
    the outcome as indented JSON text and as structured content)."""
    outcome = outcome_of(execution)
    result = CallToolResult(
        content=[TextContent(type="text", text=pydantic_core.to_json(outcome, indent=2).decode())],
        structured_content=outcome.model_dump(mode="json"),
    )
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _latest(*moments: datetime | None) -> datetime:
    known = [m if m.tzinfo else m.replace(tzinfo=UTC) for m in moments if m is not None]
    return max(known)


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def describe(
    execution: Execution, invocations: Sequence[Invocation], approvals: Sequence[Approval]
) -> TaskState:
    """Map an execution (with its invocations and approvals) to its task."""
    from qmcp.agentframework.models import ExecutionStatus

    status = execution.status
    done = sum(1 for i in invocations if str(i.status) == "completed")
    updated = _latest(
        execution.created_at,
        execution.started_at,
        execution.completed_at,
        *(i.completed_at or i.started_at for i in invocations),
        *(a.decided_at or a.created_at for a in approvals),
    )
    recorded = f"{done} invocation(s) recorded"
    if status == ExecutionStatus.RUNNING:
        message = f"running on the {execution.runner_type} runner: {recorded}"
        return TaskState(execution, "working", message, updated)
    if status == ExecutionStatus.COMPLETED:
        return TaskState(execution, "completed", f"completed: {recorded}", updated)
    if status == ExecutionStatus.FAILED:
        return TaskState(execution, "failed", f"failed: {execution.error}", updated)
    if status == ExecutionStatus.CANCELLED:
        return TaskState(execution, "cancelled", f"cancelled: {execution.error}", updated)
    waiting = [a for a in approvals if a.status == "pending"]
    if status == ExecutionStatus.PENDING and waiting:
        inputs = tuple(
            InputRequest(
                key=f"approval-{a.id}",
                message=f"{a.question}\n\nProposed answer:\n{a.proposed}",
                schema=APPROVAL_SCHEMA,
                approval_id=a.id,
            )
            for a in waiting
        )
        first = waiting[0]
        message = f"waiting for approval #{first.id} ({first.agent_name}): {first.question}"
        return TaskState(execution, "input_required", message, updated, inputs)
    # Interrupted, or every approval answered: the run waits for someone to resume it. The key
    # names this stop (the process that died, or the decisions made), so a later stop gets a new
    # key, as the extension requires.
    if status == ExecutionStatus.INTERRUPTED:
        why = "the server stopped while it ran"
        key = f"resume-{_digest('interrupted', execution.owner, done)}"
    else:
        why = "its approvals are answered"
        key = f"resume-{_digest('decided', [a.id for a in approvals])}"
    question = (
        f"The run of {execution.topology_name!r} is {status.value}: {why}. Resume it? "
        f"{recorded} and will not be repeated."
    )
    message = (
        f"{status.value}: {why}; {recorded}. Resume it: tasks/update answering {key!r} "
        "(2026-07-28), tasks/result (2025-11-25), or executions_resume"
    )
    return TaskState(
        execution, "input_required", message, updated, (InputRequest(key, question, RESUME_SCHEMA),)
    )


def _task_uuid(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise invalid_params(
            f"Failed to retrieve task: no task {task_id!r}; a task id is a whole execution id "
            "(see executions_list)"
        ) from None


class Tasks:
    """Reads, answers, resumes and cancels tasks of one server (its database and its runs)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def load(self, task_id: str) -> TaskState:
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import NotFoundError

        ident = _task_uuid(task_id)
        try:
            execution, invocations = await service.get_execution(ident, self.state.db_url)
        except NotFoundError:
            raise invalid_params(
                f"Failed to retrieve task: no task {task_id}; task ids are execution ids "
                "(see executions_list)"
            ) from None
        approvals = await service.execution_approvals(ident, self.state.db_url)
        return describe(execution, invocations, approvals)

    async def resume(self, ident: uuid.UUID) -> None:
        """Take the execution for this server and run it on in the background."""
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import ConflictError

        try:
            started = await service.claim_run(ident, db_url=self.state.db_url)
        except ConflictError:  # someone resumed it first: nothing to do
            log.debug("task %s: already resumed elsewhere", ident)
            return
        self.state.runs.start(started)

    async def answer(
        self, task: TaskState, request: InputRequest, response: Mapping[str, Any]
    ) -> bool:
        """Apply one answer (an elicitation result); True when it asks for the run to go on."""
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import ConflictError

        action = response.get("action")
        content = response.get("content") or {}
        accepted = action == "accept" and isinstance(content, Mapping)
        if request.approval_id is None:
            if accepted and content.get("resume") is True:
                return True
            with suppress(ConflictError):  # resumed or cancelled meanwhile
                await service.cancel_waiting(
                    task.execution.id,
                    "cancelled: the user chose not to resume it",
                    self.state.db_url,
                )
            return False
        approved = accepted and content.get("approve") is True
        comment = content.get("comment") if accepted else f"the user chose {action}"
        with suppress(ConflictError):  # answered meanwhile (approvals_answer, another client)
            await service.answer_approval(
                request.approval_id,
                approved,
                comment=str(comment) if comment else None,
                decided_by="mcp task",
                db_url=self.state.db_url,
            )
        return False

    async def settle(self, task_id: str, resume: bool) -> None:
        """After answers: resume the run when asked to, or when no approval waits any more."""
        task = await self.load(task_id)
        if task.status == "input_required" and (resume or not task.approvals_pending):
            await self.resume(task.execution.id)

    async def cancel(self, task: TaskState) -> None:
        """Stop the run (ours) or record the waiting one as cancelled; refuse what we cannot."""
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import ConflictError

        db_url = self.state.db_url
        try:
            if task.status == "working":
                await service.cancel_execution(
                    task.execution.id, runs=self.state.runs, db_url=db_url
                )
            else:
                await service.cancel_waiting(
                    task.execution.id, "cancelled through tasks/cancel", db_url
                )
        except ConflictError as exc:
            raise invalid_params(f"Cannot cancel task: {exc}") from None

    async def wait_for_change(self, task: TaskState) -> None:
        if self.state.runs.running(task.execution.id):
            await self.state.runs.wait(task.execution.id, POLL_INTERVAL_MS / 1000)
        else:
            await asyncio.sleep(RESULT_CHECK_SECONDS)


class TasksExtension(Extension):
    """`io.modelcontextprotocol/tasks` on 2026-07-28, and the 2025-11-25 tasks methods (which
    the SDK leaves to the server: they are outside its per-version method tables)."""

    identifier = EXTENSION_ID

    def __init__(self, state: ServerState) -> None:
        self.tasks = Tasks(state)

    def methods(self) -> Sequence[MethodBinding]:
        both = LEGACY | MODERN
        return (
            MethodBinding("tasks/get", GetTaskRequestParams, self.get, both),
            MethodBinding("tasks/cancel", CancelTaskRequestParams, self.cancel, both),
            MethodBinding("tasks/update", UpdateTaskParams, self.update, MODERN),
            MethodBinding("tasks/result", GetTaskPayloadRequestParams, self.result, LEGACY),
            MethodBinding("tasks/list", PaginatedRequestParams, self.list, LEGACY),
        )

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        """2026-07-28: a run for a client that declared the extension becomes a task (unless it
        asked for wait=false, this server's older convention)."""
        if (
            ctx.protocol_version not in MODERN
            or not runs_as_task(params.name)
            or (params.arguments or {}).get("wait") is False
            or not _declared(ctx)
        ):
            return await call_next(ctx)
        token = as_task.set(True)
        try:
            result = await call_next(ctx)
        finally:
            as_task.reset(token)
        ident = _started(result)
        if ident is None:  # refused before anything ran: the tool's error, as is
            return result
        task = await self.tasks.load(ident)
        return {"resultType": "task", **task.task(modern=True)}

    async def get(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams
    ) -> dict[str, Any]:
        task = await self.tasks.load(params.task_id)
        return task.detailed() if ctx.protocol_version in MODERN else task.task(modern=False)

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> dict[str, Any]:
        modern = ctx.protocol_version in MODERN
        task = await self.tasks.load(params.task_id)
        if task.terminal:
            if modern:  # cancelling is cooperative there: acknowledged, nothing to stop
                return {}
            raise invalid_params(f"Cannot cancel task: already in terminal status {task.status!r}")
        await self.tasks.cancel(task)
        return {} if modern else (await self.tasks.load(params.task_id)).task(modern=False)

    async def update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams
    ) -> dict[str, Any]:
        """Answers to `inputRequests`; keys not outstanding are ignored, as SEP-2663 asks."""
        task = await self.tasks.load(params.task_id)
        resume = False
        answered = False
        for request in task.inputs:
            response = params.input_responses.get(request.key)
            if response is not None:
                answered = True
                resume |= await self.tasks.answer(task, request, response)
        if answered:
            await self.tasks.settle(params.task_id, resume)
        return {}

    async def result(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> dict[str, Any]:
        """2025-11-25: block until the run ends, asking the client's user what it waits on
        (when the client can be asked) and resuming it when it can go on."""
        can_ask = _can_elicit(ctx)
        while True:
            task = await self.tasks.load(params.task_id)
            if task.terminal:
                result = call_result(task.execution)
                result["_meta"] = {RELATED_TASK: {"taskId": task.task_id}}
                return result
            if task.status == "working":
                await self.tasks.wait_for_change(task)
            elif not task.approvals_pending:
                await self.tasks.resume(task.execution.id)
            elif can_ask:
                can_ask = await self._ask(ctx, task)
            else:  # answered elsewhere (approvals_answer), then resumed by the loop
                await self.tasks.wait_for_change(task)

    async def _ask(self, ctx: ServerRequestContext[Any, Any], task: TaskState) -> bool:
        """Put the task's questions to the client's user; False when the client cannot answer."""
        for request in task.inputs:
            try:
                answer = await ctx.session.send_request(
                    request.elicitation(task.task_id),
                    ElicitResult,
                    metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
                )
            except Exception as exc:  # the client could not ask: wait for an answer elsewhere
                log.info("task %s: elicitation failed (%s); waiting", task.task_id, exc)
                return False
            await self.tasks.answer(task, request, answer.model_dump(mode="json"))
        await self.tasks.settle(task.task_id, resume=False)
        return True

    async def list(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams
    ) -> dict[str, Any]:
        """2025-11-25: every execution is a task; newest first, LIST_PAGE at a time."""
        from qmcp.agentframework import service

        offset = _offset(params.cursor)
        state = self.tasks.state
        rows = await service.list_executions(min(offset + LIST_PAGE, LIST_MAX), db_url=state.db_url)
        page = rows[offset : offset + LIST_PAGE]
        tasks = [(await self.tasks.load(str(e.id))).task(modern=False) for e in page]
        end = offset + len(page)
        more = len(page) == LIST_PAGE and end < LIST_MAX
        return {"tasks": tasks, **({"nextCursor": str(end)} if more else {})}


class UpdateTaskParams(RequestParams):
    """`tasks/update` (SEP-2663): answers to a task's outstanding `inputRequests`, by key."""

    task_id: str
    input_responses: dict[str, dict[str, Any]]


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if cursor.isdigit() and int(cursor) < LIST_MAX:
        return int(cursor)
    raise invalid_params(f"invalid cursor {cursor[:40]!r}: pass back a nextCursor of tasks/list")


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(
        capabilities and capabilities.extensions and EXTENSION_ID in capabilities.extensions
    )


def _can_elicit(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.elicitation is not None)


def _started(result: HandlerResult) -> str | None:
    """The execution id a task-mode run answered with, or None when the call was refused."""
    if isinstance(result, CallToolResult):
        if result.is_error or not result.structured_content:
            return None
        ident = result.structured_content.get("execution_id")
    elif isinstance(result, Mapping):
        if result.get("isError") or not isinstance(result.get("structuredContent"), Mapping):
            return None
        ident = result["structuredContent"].get("execution_id")
    else:
        return None
    return ident if isinstance(ident, str) else None


def _error_text(result: Mapping[str, Any]) -> str:
    texts = [c.get("text", "") for c in result.get("content") or [] if isinstance(c, Mapping)]
    return " ".join(t for t in texts if t) or "the tool refused the call"


def legacy_middleware(tasks: Tasks) -> Any:
    """2025-11-25 at the wire: `capabilities.tasks` in the `initialize` result, and a `tools/call`
    carrying `task` answered with a `CreateTaskResult`. Done here, above the SDK's per-version
    result check, which knows `tools/call` only as answering a `CallToolResult`."""

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") in LEGACY:
                result.setdefault("capabilities", {})["tasks"] = {
                    "list": {},
                    "cancel": {},
                    "requests": {"tools": {"call": {}}},
                }
            return result
        params = ctx.params
        if (
            ctx.method != "tools/call"
            or ctx.protocol_version not in LEGACY
            or not isinstance(params, Mapping)
            or params.get("task") is None
        ):
            return await call_next(ctx)
        name = params.get("name")
        if not isinstance(name, str) or not runs_as_task(name):
            raise MCPError(
                code=METHOD_NOT_FOUND,
                message=f"tool {name!r} does not run as a task (execution.taskSupport is "
                f"absent); call it without 'task'. Tools that do: {', '.join(sorted(TASK_TOOLS))} "
                f"and {RUN_TOOL_PREFIX}<topology>",
            )
        token = as_task.set(True)
        try:
            result = await call_next(ctx)
        finally:
            as_task.reset(token)
        ident = _started(result)
        if ident is None:
            raise invalid_params(_error_text(result if isinstance(result, Mapping) else {}))
        task = await tasks.load(ident)
        immediate = (
            f"Started execution {ident} as a task; poll tasks/get and read the outcome with "
            "tasks/result (or executions_get)."
        )
        return {"task": task.task(modern=False), "_meta": {IMMEDIATE_RESPONSE: immediate}}

    return middleware


def runs_as_task(tool: str) -> bool:
    """Whether a tool starts a run, and so may answer with a task: `topologies_run`,
    `executions_resume` and the `run_<name>` tools (`qmcp_server.shortcuts`)."""
    return tool in TASK_TOOLS or tool.startswith(RUN_TOOL_PREFIX)


def with_task_support(tools: list[Tool]) -> list[Tool]:
    """Mark the tools that run as tasks (`execution.taskSupport: optional`, read on 2025-11-25;
    the 2026-07-28 wire has no such field and drops it)."""
    optional = ToolExecution(task_support="optional")
    return [
        t.model_copy(update={"execution": optional}) if runs_as_task(t.name) else t for t in tools
    ]


def extension(state: ServerState) -> TasksExtension:
    return TasksExtension(state)


def register(mcp: MCPServer, extension: TasksExtension) -> None:
    """Add the 2025-11-25 half, which lives at the wire (see `legacy_middleware`)."""
    mcp.middleware.append(legacy_middleware(extension.tasks))
