"""The `sampling` provider: the connected MCP client's own model answers, via MCP sampling.

Only possible inside a tool call whose client negotiated a protocol that lets a server send
requests mid-call (2025-11-25 and earlier, as Claude Desktop and the Inspector do) and that
declared the sampling capability. Everywhere else it fails with a message saying why.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm import LLMRequest, LLMResponse, ProviderCapabilities, count_tokens

# The MCP request context of the tool call driving the current run, if any.
current_context: ContextVar[Any] = ContextVar("qmcp_mcp_context", default=None)

STATELESS_PROTOCOL = "2026-07-28"


class SamplingProvider:
    name = "sampling"
    CAPABILITIES = ProviderCapabilities(temperature=True)

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.CAPABILITIES

    async def complete(self, request: LLMRequest) -> LLMResponse:
        from mcp_types import SamplingMessage, TextContent

        ctx = current_context.get()
        if ctx is None:
            raise ConfigurationError(
                "the sampling model is answered by the MCP client that called topologies_run "
                "with wait=true; this run has no such client (a CLI run, or wait=false). Use "
                "another model for this agent, or run it from an MCP client with wait=true",
                provider=self.name,
            )
        version = ctx.protocol_version or ""
        if version >= STATELESS_PROTOCOL:
            raise ConfigurationError(
                f"the client negotiated MCP protocol {version}, in which a server cannot ask the "
                "client's model mid-call; connect with protocol 2025-11-25 (Claude Desktop, the "
                "MCP Inspector, or Client(..., mode='legacy')) or give the agent another model",
                provider=self.name,
            )
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            raise ConfigurationError(
                "the connected MCP client does not support sampling (it declared no sampling "
                "capability); give the agent another model, or use a client that supports it",
                provider=self.name,
            )
        messages = [
            SamplingMessage(role=m.role, content=TextContent(type="text", text=m.text))  # type: ignore[arg-type]
            for m in request.messages
        ]
        try:
            result = await ctx.session.create_message(
                messages=messages,
                max_tokens=request.max_tokens,
                system_prompt=request.system,
                temperature=request.temperature,
            )
        except Exception as exc:  # the client's error, as the client worded it
            raise ProviderError(f"MCP sampling failed: {exc}", provider=self.name) from None
        content = result.content
        text = getattr(content, "text", None)
        if text is None:
            raise ProviderError(
                f"MCP sampling returned {getattr(content, 'type', 'no')} content, not text",
                provider=self.name,
            )
        return LLMResponse(
            text=text,
            model=result.model or "client",
            provider=self.name,
            input_tokens=count_tokens(" ".join(m.text for m in request.messages)),
            output_tokens=count_tokens(text),
            stop_reason=result.stop_reason,
        )


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
    if (ctx.protocol_version or "") >= STATELESS_PROTOCOL:
        return None
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.elicitation is None:
        return None
    return ElicitationChannel(ctx)
