"""The `sampling` provider: the connected MCP client's own model answers, via MCP sampling.

Possible inside a tool call (`topologies_run` or `executions_resume` with wait=true) whose client
declared the sampling capability, in both protocol eras:
- 2025-11-25 and earlier (Claude Desktop, the Inspector): the server asks mid-call
  (`sampling/createMessage`) and the run goes on with the answer.
- 2026-07-28 (stateless): a server cannot ask mid-call. A question not answered yet pauses the run
  (`AwaitingSamples`): the execution stops as `pending` once the branches beside it have asked
  theirs, and the call answers with an `InputRequiredResult` carrying every question of the round
  and a `request_state` naming the execution. The client answers and calls again; that call resumes
  the execution, the answered questions complete their invocations (recorded, so checkpoints that
  are never asked again) and the next round's questions go out, until the run ends.
Sampling with tools (an agent with tool servers) needs a client that declared `sampling.tools`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    ProviderCapabilities,
    TextBlock,
    ToolUseBlock,
    count_tokens,
)
from qmcp.agentframework.llm.awaiting import AwaitingSamples
from qmcp_server.errors import invalid_params

if TYPE_CHECKING:
    from mcp.server.request_state import RequestStateSecurity
    from mcp_types import CreateMessageRequest, CreateMessageRequestParams, InputRequiredResult

    from qmcp.agentframework.service import RunResult

# The MCP request context of the tool call driving the current run, if any.
current_context: ContextVar[Any] = ContextVar("qmcp_mcp_context", default=None)

STATE_VERSION = 1
# Keys that seal the `request_state` of input-required rounds (see `request_state_security`).
KEYS_VARIABLE = "QMCP_REQUEST_STATE_KEYS"
MIN_KEY_LENGTH = 32
INVOCATION_META = "qmcp_invocation"  # names the invocation a question is for (in `metadata`)


def stateless(ctx: Any) -> bool:
    """Does this call's client speak the protocol where a server cannot ask mid-call (the
    SDK's modern, stateless versions, as `notify` and `tasks` decide the era)?"""
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _client_sampling(ctx: Any) -> Any:
    capabilities = ctx.client_capabilities
    return None if capabilities is None else capabilities.sampling


class SamplingProvider:
    name = "sampling"

    def capabilities(self, model: str) -> ProviderCapabilities:
        """Tools when the calling client declared `sampling.tools`; it pauses the run on the
        stateless protocol."""
        ctx = current_context.get()
        sampling = _client_sampling(ctx) if ctx is not None else None
        tools = sampling is not None and sampling.tools is not None
        return ProviderCapabilities(temperature=True, tools=tools, pauses=True)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        ctx = current_context.get()
        if ctx is None:
            raise ConfigurationError(
                "the sampling model is answered by the MCP client that called topologies_run "
                "with wait=true; this run has no such client (a CLI run, or wait=false). Use "
                "another model for this agent, or run it from an MCP client with wait=true",
                provider=self.name,
            )
        if _client_sampling(ctx) is None:
            raise ConfigurationError(
                "the connected MCP client does not support sampling (it declared no sampling "
                "capability); give the agent another model, or use a client that supports it",
                provider=self.name,
            )
        params = sampling_params(request)
        if not stateless(ctx):
            return response_of(await self._ask_now(ctx, params), request)
        round_ = current_round.get()
        if round_ is None:  # a stateless call that did not open a round: a defect, said plainly
            raise ConfigurationError(
                "this stateless MCP call cannot ask the client's model", provider=self.name
            )
        return response_of(round_.answer(question_key(request), params), request)

    async def _ask_now(self, ctx: Any, params: CreateMessageRequestParams) -> Any:
        """Ask the client mid-call (2025-11-25 and earlier)."""
        try:
            return await ctx.session.create_message(
                messages=params.messages,
                max_tokens=params.max_tokens,
                system_prompt=params.system_prompt,
                temperature=params.temperature,
                metadata=params.metadata,
                tools=params.tools,
                tool_choice=params.tool_choice,
            )
        except Exception as exc:  # the client's error, as the client worded it
            raise ProviderError(f"MCP sampling failed: {exc}", provider=self.name) from None


def question_key(request: LLMRequest) -> str:
    """The name of a question: its invocation's key, and for the later turns of a conversation
    (tool use, a repair) how many messages it carries, so each turn is its own question."""
    key = request.key or request.slot or request.agent_name
    return key if len(request.messages) == 1 else f"{key}#{len(request.messages)}"


def sampling_params(request: LLMRequest) -> CreateMessageRequestParams:
    """An agent's request as MCP sampling parameters (tools as sampling tools)."""
    from mcp_types import CreateMessageRequestParams, Tool, ToolChoice

    tools = [
        Tool(name=t.name, description=t.description or None, input_schema=t.input_schema)
        for t in request.tools
    ]
    return CreateMessageRequestParams(
        messages=[_sampling_message(m) for m in request.messages],
        max_tokens=request.max_tokens,
        system_prompt=request.system,
        temperature=request.temperature,
        tools=tools or None,
        tool_choice=ToolChoice(mode=request.tool_choice) if tools else None,
        metadata={INVOCATION_META: request.key} if request.key else None,
    )


def _sampling_message(message: Message) -> Any:
    from mcp_types import SamplingMessage, TextContent, ToolResultContent, ToolUseContent

    if isinstance(message.content, str):
        return SamplingMessage(
            role=message.role, content=TextContent(type="text", text=message.text)
        )
    blocks: list[Any] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            blocks.append(TextContent(type="text", text=block.text))
        elif isinstance(block, ToolUseBlock):
            blocks.append(
                ToolUseContent(type="tool_use", id=block.id, name=block.name, input=block.input)
            )
        else:
            blocks.append(
                ToolResultContent(
                    type="tool_result",
                    tool_use_id=block.tool_use_id,
                    content=[TextContent(type="text", text=block.content)],
                    is_error=block.is_error or None,
                )
            )
    return SamplingMessage(role=message.role, content=blocks)


def response_of(result: Any, request: LLMRequest) -> LLMResponse:
    """The client's answer as the agent's next turn: text, and tool use when it was offered."""
    content = result.content if isinstance(result.content, list) else [result.content]
    blocks: list[Any] = []
    for item in content:
        kind = getattr(item, "type", None)
        if kind == "text":
            blocks.append(TextBlock(text=item.text))
        elif kind == "tool_use" and request.tools:
            blocks.append(ToolUseBlock(id=item.id, name=item.name, input=dict(item.input)))
        else:
            raise ProviderError(
                f"MCP sampling returned {kind or 'no'} content, not text"
                + (" or tool use" if request.tools else ""),
                provider="sampling",
            )
    if not blocks:
        raise ProviderError("MCP sampling returned no content", provider="sampling")
    response = LLMResponse(
        content=blocks,
        model=result.model or "client",
        provider="sampling",
        input_tokens=count_tokens(" ".join(m.text for m in request.messages)),
        stop_reason=result.stop_reason,
    )
    response.output_tokens = count_tokens(response.text)
    return response


def _digest(params: CreateMessageRequestParams) -> str:
    wire = params.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(wire, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class SampleRound:
    """One call of a run on the stateless protocol: the answers it brought (each counted only
    for the question exactly as it was asked) and the questions it asks next."""

    answers: dict[str, Any] = field(default_factory=dict)
    asked_before: dict[str, str] = field(default_factory=dict)
    pending: dict[str, CreateMessageRequest] = field(default_factory=dict)
    asked: dict[str, str] = field(default_factory=dict)

    def answer(self, key: str, params: CreateMessageRequestParams) -> Any:
        """The client's answer to this question, or a pause that asks it."""
        from mcp_types import CreateMessageRequest

        digest = _digest(params)
        answer = self.answers.get(key)
        if answer is not None and self.asked_before.get(key) == digest:
            return answer
        self.pending[key] = CreateMessageRequest(params=params)
        self.asked[key] = digest
        raise AwaitingSamples([key])

    def input_required(self, result: RunResult) -> InputRequiredResult | None:
        """The questions of a run that stopped to wait for them, with the state of the next
        round; None when the run ended (completed, failed) or waits for something else."""
        from mcp_types import InputRequiredResult

        if str(result.status) != "pending" or not self.pending:
            return None
        state = {"v": STATE_VERSION, "execution_id": str(result.execution_id), "asked": self.asked}
        return InputRequiredResult(
            input_requests=dict(self.pending), request_state=json.dumps(state)
        )


def request_state_security() -> RequestStateSecurity | None:
    """How the `request_state` of stateless rounds is sealed. By default (None) with a key of
    this process, the SDK's: a round is answered by the process that asked it. With
    `QMCP_REQUEST_STATE_KEYS` (comma-separated secrets of at least 32 characters; the first
    seals, every one unseals, so a key can be rotated), server processes that share a database
    answer each other's rounds: several behind a load balancer, or one restarted mid-run."""
    text = os.environ.get(KEYS_VARIABLE, "").strip()
    if not text:
        return None
    from mcp.server.request_state import RequestStateSecurity

    keys = [key.strip() for key in text.split(",") if key.strip()]
    short = [i for i, key in enumerate(keys, 1) if len(key) < MIN_KEY_LENGTH]
    if not keys or short:
        which = f"key {short[0]} of {len(keys)} is" if short else "no key is given; it is"
        raise ConfigurationError(
            f"{KEYS_VARIABLE}: {which} shorter than {MIN_KEY_LENGTH} characters; give "
            "comma-separated secrets, the same in every server process (make one with "
            'python -c "import secrets; print(secrets.token_urlsafe(32))"), or unset it to '
            "seal with a key of this process"
        )
    return RequestStateSecurity(keys=keys)


current_round: ContextVar[SampleRound | None] = ContextVar("qmcp_sample_round", default=None)


def _state(ctx: Any) -> dict[str, Any] | None:
    """The state this call carries from the round before (sealed by the SDK), if any."""
    if not stateless(ctx) or ctx.request_state is None:
        return None
    try:
        state = json.loads(ctx.request_state)
        if state.get("v") != STATE_VERSION or not isinstance(state.get("asked"), dict):
            raise ValueError
        str(state["execution_id"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise invalid_params(
            "request_state is not one this server gave; call the tool again without it"
        ) from None
    return state


def resumed_execution(ctx: Any) -> str | None:
    """The execution an answering call continues (the next round of a stateless run), if any."""
    state = _state(ctx)
    return None if state is None else str(state["execution_id"])


@contextmanager
def sampling_round(ctx: Any) -> Iterator[SampleRound | None]:
    """Open this call's round for the run it drives (None for a client that can be asked
    mid-call): the answers it brought become available to the `sampling` provider."""
    if not stateless(ctx):
        yield None
        return
    state = _state(ctx) or {"asked": {}}
    round_ = SampleRound(answers=dict(ctx.input_responses or {}), asked_before=state["asked"])
    token = current_round.set(round_)
    try:
        yield round_
    finally:
        current_round.reset(token)


class ElicitationChannel:
    """Ask the MCP client's user through elicitation (where the protocol and client allow it)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def ask(self, question: str, proposed: str) -> Any:
        from pydantic import BaseModel, Field

        from qmcp.agentframework.human import Decision

        class ApprovalForm(BaseModel):
            approve: bool = Field(description="use this answer")
            comment: str = Field(default="", description="why (optional)")

        try:
            result = await self.ctx.elicit(
                f"{question}\n\nProposed answer:\n{proposed}", ApprovalForm
            )
        except Exception:  # the client could not ask: fall back to a recorded pending approval
            return None
        if result.action != "accept":
            return Decision(approved=False, comment=f"the user chose {result.action}")
        return Decision(approved=result.data.approve, comment=result.data.comment or None)


def elicitation_channel(ctx: Any) -> ElicitationChannel | None:
    """A channel when this call's client can be asked mid-call, else None."""
    if stateless(ctx):
        return None
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.elicitation is None:
        return None
    return ElicitationChannel(ctx)
