"""How a run reaches a human: an MCP client that can elicit, or a recorded pending approval.

The MCP server sets `human_channel` for a tool call whose client supports elicitation; anywhere
else (the CLI, a background run, a client on the stateless protocol) a question is recorded as a
pending approval, the run stops as `pending`, and it goes on after someone answers it with
`qmcp approvals answer` or the `approvals_answer` tool and resumes the execution.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from qmcp.agentframework.errors import QmcpError


@dataclass(frozen=True)
class Decision:
    approved: bool
    comment: str | None = None
    edited: str | None = None


class HumanChannel(Protocol):
    async def ask(self, question: str, proposed: str) -> Decision | None:
        """A human's decision, or None when this channel cannot ask now."""
        ...


human_channel: ContextVar[HumanChannel | None] = ContextVar("qmcp_human_channel", default=None)


class AwaitingHuman(QmcpError):
    """The run must wait for a human decision; it stops as `pending` and resumes after it."""

    def __init__(self, approval_id: int, execution_id: str, question: str) -> None:
        super().__init__(
            f"waiting for human approval #{approval_id} ({question}); answer it with "
            f"`qmcp approvals answer {approval_id} --approve` (or --reject) or the "
            f"approvals_answer tool, then resume with `qmcp executions resume {execution_id}`"
        )
        self.approval_id = approval_id
