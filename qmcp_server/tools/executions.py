"""Executions: executions_list, executions_get, executions_cancel, executions_resume."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import InputRequiredResult
from pydantic import Field

from qmcp_server.runs import launch
from qmcp_server.schemas import CancelOutcome, ExecutionInfo, ExecutionList, RunOutcome, Status
from qmcp_server.state import ServerState
from qmcp_server.tools.common import CANCEL, READ_ONLY, RUN, tool
from qmcp_server.ui import view_tool


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @tool(mcp, READ_ONLY)
    async def executions_list(
        limit: Annotated[int, Field(ge=1, le=1000)] = 20,
        status: Status | None = None,
        topology: Annotated[str | None, Field(max_length=100)] = None,
    ) -> ExecutionList:
        """List recent executions, newest first."""
        from qmcp.agentframework import service

        rows = await service.list_executions(limit, status, topology, db_url)
        return ExecutionList(
            executions=[ExecutionInfo(**service.execution_to_dict(e)) for e in rows]
        )

    @view_tool(mcp, READ_ONLY)  # the MCP App shows the execution live (qmcp_server.ui)
    async def executions_get(
        execution_id: Annotated[str, Field(max_length=64)],
        include_invocations: bool = True,
    ) -> ExecutionInfo:
        """One execution: status, output, error, totals and (by default) every invocation."""
        from qmcp.agentframework import service

        execution, invocations = await service.get_execution(execution_id, db_url)
        data = service.execution_to_dict(execution, invocations if include_invocations else None)
        return ExecutionInfo(**data)

    @tool(mcp, CANCEL)
    async def executions_cancel(
        execution_id: Annotated[str, Field(max_length=64)],
    ) -> CancelOutcome:
        """Cancel a running execution, in this server or any process sharing its database
        (the owner stops at its next heartbeat); it is recorded as cancelled and resumable."""
        from qmcp.agentframework import service

        ident = await service.cancel_execution(execution_id, runs=state.runs, db_url=db_url)
        return CancelOutcome(
            execution_id=str(ident),
            status="cancelled",
            message="cancelled; resume it with executions_resume",
        )

    @tool(mcp, RUN)
    async def executions_resume(
        execution_id: Annotated[str, Field(max_length=64)],
        ctx: Context,
        wait: bool = True,
        runner: Annotated[str | None, Field(description="default: the runner it ran on")] = None,
    ) -> RunOutcome | InputRequiredResult:
        """Finish a failed, cancelled or interrupted execution; finished invocations are reused."""
        from qmcp.agentframework import service

        started = await service.claim_run(execution_id, runner_type=runner, db_url=db_url)
        return await launch(ctx, state.runs, started, wait)
