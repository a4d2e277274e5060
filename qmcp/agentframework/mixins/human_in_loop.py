"""human_in_loop: a human approves (or rejects, or edits) an agent's answer before it is used.

The answer is recorded first, so waiting for a human never pays for the model call twice. The
decision comes from the connected MCP client through elicitation when it can ask, otherwise from a
pending approval answered later. It never approves by itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from qmcp.agentframework.errors import QmcpError
from qmcp.agentframework.human import AwaitingHuman, human_channel
from qmcp.agentframework.mixins.base import Mixin, MixinConfig, MixinContext
from qmcp.agentframework.models import Approval


class HumanInLoopConfig(MixinConfig):
    question: str = Field(
        default="Approve this answer?", max_length=1000, description="what the human is asked"
    )


class HumanRejected(QmcpError):
    """A human rejected the answer; the invocation fails with their comment."""


class HumanInLoop(Mixin):
    name = "human_in_loop"
    description = (
        "A human approves, edits or rejects the answer: via MCP elicitation when the client can "
        "ask, else a pending approval answered with `qmcp approvals answer`."
    )
    config_model = HumanInLoopConfig
    # The reference design's dependency: decisions on answers and on tool calls share a channel.
    dependencies = ("tool_use",)

    async def gate(self, output: dict[str, Any], ctx: MixinContext) -> None:
        """Apply the human decision to a recorded answer, asking for one if there is none."""
        question = f"{ctx.agent.name} ({ctx.key}): {self.config.question}"  # type: ignore[attr-defined]
        approval = await ctx.store.approval_for(ctx.execution_id, ctx.key)
        if approval is None:
            channel = human_channel.get()
            decision = await channel.ask(question, output["content"]) if channel else None
            approval = await ctx.store.add_approval(
                Approval(
                    execution_id=ctx.execution_id,
                    key=ctx.key,
                    agent_name=ctx.agent.name,
                    question=question,
                    proposed=output["content"],
                )
            )
            if decision is not None:
                approval = await ctx.store.decide_approval(
                    approval.id,  # type: ignore[arg-type]
                    decision.approved,
                    comment=decision.comment,
                    edited=decision.edited,
                    decided_by="elicitation",
                )
        if approval.status == "pending":
            raise AwaitingHuman(approval.id, str(ctx.execution_id), question)  # type: ignore[arg-type]
        if approval.status == "rejected":
            reason = f": {approval.comment}" if approval.comment else ""
            raise HumanRejected(f"a human rejected the answer of {ctx.key!r}{reason}")
        if approval.edited:
            output["content"] = approval.edited
        output["approval"] = {
            "id": approval.id,
            "by": approval.decided_by,
            "comment": approval.comment,
        }
