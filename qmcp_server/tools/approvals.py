"""Human decisions asked for by agents with the human_in_loop mixin: approvals_list,
approvals_answer."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from qmcp_server.schemas import ApprovalInfo, ApprovalList
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CREATE, READ_ONLY, tool


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @tool(mcp, READ_ONLY)
    async def approvals_list(
        status: Literal["pending", "approved", "rejected"] | None = "pending",
    ) -> ApprovalList:
        """Human decisions asked for by agents with the human_in_loop mixin (pending by default)."""
        from qmcp.agentframework import service

        rows = await service.list_approvals(status, db_url=db_url)
        return ApprovalList(approvals=[ApprovalInfo(**service.approval_to_dict(a)) for a in rows])

    @tool(mcp, CREATE)
    async def approvals_answer(
        approval_id: Annotated[int, Field(ge=1, le=2**63 - 1)],  # a 64-bit INTEGER
        approve: bool,
        comment: Annotated[str | None, Field(max_length=10_000)] = None,
        edited: Annotated[
            str | None, Field(description="approve this text instead", max_length=100_000)
        ] = None,
    ) -> ApprovalInfo:
        """Approve or reject a pending approval; then executions_resume goes on with it."""
        from qmcp.agentframework import service

        approval = await service.answer_approval(
            approval_id,
            approve,
            comment=comment,
            edited=edited,
            decided_by="mcp-tool",
            db_url=db_url,
        )
        return ApprovalInfo(**service.approval_to_dict(approval))
