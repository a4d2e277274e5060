"""The run view page (headless Chromium) of a run whose destructive tool call waits for a human:
the slot's node, the invocation's row and its details, and the approvals panel name the tool
call and its arguments. A real run, as in tests/test_view_tools.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_live_view_browser import http_app, sign_in
from tool_functions import scripted
from ui_host.chromium import CHROMIUM, Chromium, artifacts_dir
from ui_host.support import serving

from qmcp.agentframework import service
from qmcp.agentframework.llm import register_function, unregister_function

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]
SERVER = str(Path(__file__).parent / "tool_server.py")


@pytest.fixture
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


async def _waiting_run(db_url: str, log: Path) -> str:
    server = {"name": "t", "command": sys.executable, "args": [SERVER]}
    server["env"] = {"TOOL_SERVER_LOG": str(log)}
    model = "function:page_wrecker"
    await service.create_agent("wrecker", "executor", model=model, tools=[server], db_url=db_url)
    await service.create_topology("wreck", "pipeline", {"only": "wrecker"}, db_url=db_url)
    result = await service.run_topology("wreck", {"prompt": "go"}, db_url=db_url)
    assert result.status == "pending", result.error
    return str(result.execution_id)


def test_the_page_shows_a_tool_call_waiting_for_approval(
    db_url: str, browser: Chromium, tmp_path: Path
) -> None:
    register_function("page_wrecker", scripted([("delete_everything", {"reason": "cleanup"})]))
    try:
        ident = asyncio.run(_waiting_run(db_url, tmp_path / "calls.jsonl"))
    finally:
        unregister_function("page_wrecker")
    with serving(http_app(db_url)) as base:
        sign_in(browser, base, f"/executions/{ident}")
        assert browser.wait("document.body.dataset.status") == "pending"
        node = "document.querySelector('#topology .node[data-node=only]')"
        assert browser.evaluate(f"{node}.dataset.status") == "pending"
        assert browser.evaluate(f"{node}.querySelector('.badge[data-status=approval]') !== null")
        row = "document.querySelector('tr.row[data-key=\"stage-0/only\"]')"
        assert browser.evaluate(f"{row}.dataset.status") == "pending"
        assert "approval pending" in browser.evaluate(f"{row}.innerText")
        panel = browser.evaluate("document.querySelector('#approvals').innerText")
        assert "tool call t.delete_everything" in panel and "stage-0/only" in panel
        assert '"reason": "cleanup"' in panel
        browser.evaluate(f"{row}.click()")
        details = browser.wait(
            "document.querySelector('[data-details=\"stage-0/only\"]')"
            " && document.querySelector('[data-details=\"stage-0/only\"]').innerText"
        )
        assert "tool call t.delete_everything" in details and '"reason": "cleanup"' in details
        assert "1 turn(s) recorded so far" in details
        browser.screenshot(artifacts_dir() / "tool-approval-pending-1280x800.png")
