"""The run view of agents with tools: a destructive tool call waiting for a human's approval shows
on the invocation it belongs to (and on its slot), with the tool and arguments the approval
records, and as decided once answered and resumed. A real run: a scripted model, the test MCP
server over stdio (tests/tool_server.py), the real store."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tool_functions import scripted

from qmcp.agentframework import service
from qmcp.agentframework.llm import register_function, unregister_function
from qmcp_server.ui.tree import view_tree

pytestmark = pytest.mark.anyio
SERVER = str(Path(__file__).parent / "tool_server.py")


@pytest.fixture
def wrecker() -> Iterator[str]:
    register_function("view_wrecker", scripted([("delete_everything", {"reason": "cleanup"})]))
    yield "function:view_wrecker"
    unregister_function("view_wrecker")


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow  # a tool server process over stdio
async def test_a_tool_call_waiting_for_approval_shows_on_its_invocation(
    db_url: str, tmp_path: Path, wrecker: str
) -> None:
    log = tmp_path / "calls.jsonl"
    server = {
        "name": "t",
        "command": sys.executable,
        "args": [SERVER],
        "env": {"TOOL_SERVER_LOG": str(log)},
    }
    await service.create_agent("wrecker", "executor", model=wrecker, tools=[server], db_url=db_url)
    await service.create_topology("wreck", "pipeline", {"only": "wrecker"}, db_url=db_url)
    first = await service.run_topology("wreck", {"prompt": "go"}, db_url=db_url)
    assert first.status == "pending", first.error
    assert _calls(log) == [], "called before a human approved"

    view = await service.execution_view(first.execution_id, db_url)
    (approval,) = view["approvals"]
    assert approval["status"] == "pending" and approval["key"] == "stage-0/only#tool:c0_0"
    assert approval["invocation_key"] == "stage-0/only"
    assert approval["tool"] == {
        "call_id": "c0_0",
        "name": "t.delete_everything",
        "arguments": {"reason": "cleanup"},
        "rerun": False,
    }
    (entry,) = view["invocations"]
    assert entry["key"] == "stage-0/only" and entry["status"] == "pending"
    assert (entry["slot"], entry["agent"]) == ("only", "wrecker")
    assert entry["approval"] == approval and entry["approvals"] == [approval]
    assert entry["turns"] == 1 and entry["tool_calls"] == 1  # the turn that asked for the call
    (slot,) = view["topology"]["slots"]
    assert slot["approval_pending"] is True and slot["status"] == "pending"
    assert view["topology"]["status"] == "pending" and view["live"] is True
    shown = _text(view)
    assert "tool call: t.delete_everything" in shown and "approval pending" in shown

    await service.answer_approval(approval["id"], True, db_url=db_url)
    done = await service.resume_execution(first.execution_id, db_url=db_url)
    assert done.status == "completed", done.error
    assert [c["tool"] for c in _calls(log)] == ["delete_everything"]

    view = await service.execution_view(first.execution_id, db_url)
    (approval,) = view["approvals"]
    assert approval["status"] == "approved" and approval["tool"]["name"] == "t.delete_everything"
    (entry,) = view["invocations"]
    assert entry["status"] == "completed" and entry["tool_calls"] == 1
    assert entry["approval"] == approval  # the decision stays on the invocation it was about
    (slot,) = view["topology"]["slots"]
    assert slot["approval_pending"] is False and slot["status"] == "completed"
    assert "approval approved" in _text(view)


def _text(view: dict[str, Any]) -> str:
    """The view as `qmcp executions show` prints it."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(view_tree(view))
    return console.export_text()
