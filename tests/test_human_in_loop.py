"""human_in_loop: a human decides; the model is never paid twice while waiting; no auto-approval."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp_types import ElicitResult

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConflictError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp_server.server import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def calls() -> Any:
    seen: list[str] = []

    def answer(request: LLMRequest) -> str:
        seen.append(request.slot)
        return f"draft by {request.agent_name}"

    register_function("hil", answer)
    yield seen
    unregister_function("hil")


async def build(db_url: str) -> None:
    await service.create_agent(
        "writer",
        "executor",
        model="function:hil",
        capabilities=[{"name": "human_in_loop", "config": {"question": "Publish this?"}}],
        db_url=db_url,
    )
    await service.create_agent("editor", "executor", model="function:hil", db_url=db_url)
    await service.create_topology(
        "gated", "pipeline", {"write": "writer", "edit": "editor"}, db_url=db_url
    )


async def test_waits_then_approval_with_edit_goes_on_without_paying_twice(
    db_url: str, calls: Any
) -> None:
    await build(db_url)
    first = await service.run_topology("gated", {"prompt": "news"}, db_url=db_url)
    assert first.status == "pending"
    assert "qmcp approvals answer" in (first.error or "")
    (approval,) = await service.list_approvals("pending", db_url=db_url)
    assert approval.proposed == "draft by writer" and "Publish this?" in approval.question
    again = await service.resume_execution(first.execution_id, db_url=db_url)
    assert again.status == "pending", "no decision yet: it must keep waiting, never auto-approve"
    await service.answer_approval(approval.id, True, edited="the edited draft", db_url=db_url)
    with pytest.raises(ConflictError):
        await service.answer_approval(approval.id, False, db_url=db_url)
    done = await service.resume_execution(first.execution_id, db_url=db_url)
    assert done.status == "completed", done.error
    assert done.output["stages"][0]["content"] == "the edited draft"
    assert calls == ["write", "edit"], "the writer's model was called once"


async def test_rejection_fails_the_invocation_with_the_comment(db_url: str, calls: Any) -> None:
    await build(db_url)
    first = await service.run_topology("gated", {"prompt": "news"}, db_url=db_url)
    (approval,) = await service.list_approvals("pending", db_url=db_url)
    await service.answer_approval(approval.id, False, comment="off-topic", db_url=db_url)
    done = await service.resume_execution(first.execution_id, db_url=db_url)
    assert done.status == "failed"
    assert "rejected" in (done.error or "") and "off-topic" in (done.error or "")


async def test_mcp_client_answers_through_elicitation(db_url: str, calls: Any) -> None:
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True, "comment": "fine"})

    async with Client(build_server(db_url), mode="legacy", elicitation_callback=elicit) as client:
        await build(db_url)
        result = await client.call_tool(
            "topologies_run", {"topology": "gated", "input": {"prompt": "n"}}
        )
    outcome = result.structured_content
    assert outcome is not None and outcome["status"] == "completed", outcome
    assert "Publish this?" in asked[0] and "draft by writer" in asked[0]
    (approval,) = await service.list_approvals("approved", db_url=db_url)
    assert approval.decided_by == "elicitation" and approval.comment == "fine"


async def test_stateless_client_gets_a_pending_approval_and_answers_with_tools(
    db_url: str, calls: Any
) -> None:
    async with Client(build_server(db_url)) as client:
        await build(db_url)
        run = (
            await client.call_tool(
                "topologies_run", {"topology": "gated", "input": {"prompt": "n"}}
            )
        ).structured_content
        assert run is not None and run["status"] == "pending"
        pending = (await client.call_tool("approvals_list", {})).structured_content
        assert pending is not None
        (approval,) = pending["approvals"]
        answered = await client.call_tool(
            "approvals_answer", {"approval_id": approval["id"], "approve": True}
        )
        assert not answered.is_error
        resumed = (
            await client.call_tool("executions_resume", {"execution_id": run["execution_id"]})
        ).structured_content
        assert resumed is not None and resumed["status"] == "completed"
