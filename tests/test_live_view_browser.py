"""The run view in headless Chromium (Debian's `chromium`): the browser page next to the HTTP
transport, for a completed and for a running debate, and the MCP App inside a minimal host page
that frames the `ui://` resource and answers the Apps bridge. Screenshots go to tests/artifacts
(or $QMCP_TEST_ARTIFACTS): what a reviewer looks at."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from ui_host.chromium import CHROMIUM, Chromium, artifacts_dir
from ui_host.support import (
    TOKEN,
    Gate,
    RunInThread,
    execution_ids,
    make_debate,
    serving,
    with_host_page,
)

from qmcp.agentframework import service
from qmcp_server.http import build_http_app
from qmcp_server.server import build_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]

KEYS_IN_DOM = "Array.from(document.querySelectorAll('#timeline tr.row')).map(r => r.dataset.key)"
STATUS = (
    "document.querySelector('#exec-status') && "
    "document.querySelector('#exec-status').dataset.status"
)


@pytest.fixture
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


@pytest.fixture
def shots() -> Path:
    return artifacts_dir()


def recorded_keys(db_url: str, execution_id: str) -> list[str]:
    _, rows = asyncio.run(service.get_execution(execution_id, db_url))
    return list(dict.fromkeys(r.key for r in rows))


def http_app(db_url: str, token: str | None = TOKEN) -> object:
    return build_http_app(build_server(db_url), token=token, json_response=True, db_url=db_url)


def sign_in(browser: Chromium, base: str, path: str) -> None:
    """Open `path`; the server asks for its token (a form), the browser posts it once and is
    sent on to the page with a session cookie."""
    browser.navigate(base + path)
    browser.wait("document.querySelector('#token') !== null")
    browser.evaluate(
        f"document.querySelector('#token').value = {json.dumps(TOKEN)};"
        "document.querySelector('form').submit(); true"
    )
    browser.wait("document.body && document.body.dataset.ready === '1'")


def test_browser_view_of_a_completed_debate(db_url: str, browser: Chromium, shots: Path) -> None:
    with Gate("view_done") as gate:
        asyncio.run(make_debate(db_url, gate.name, max_rounds=3))
        result = asyncio.run(
            service.run_topology("tea", {"topic": "Is tea better than coffee?"}, db_url=db_url)
        )
    assert result.status == "completed", result.error
    ident = str(result.execution_id)
    keys = recorded_keys(db_url, ident)
    assert keys == [
        "round-1/proponent",
        "round-1/opponent",
        "round-1/mediator",
        "round-2/proponent",
        "round-2/opponent",
        "round-2/mediator",
    ]
    with serving(http_app(db_url)) as base:
        browser.navigate(f"{base}/executions/{ident}")
        assert browser.wait("document.querySelector('#token') !== null")  # no token: a form
        assert browser.evaluate("document.querySelector('#timeline')") is None
        sign_in(browser, base, f"/executions/{ident}")
        assert browser.evaluate("location.pathname") == f"/executions/{ident}"
        assert browser.wait(STATUS) == "completed"
        assert browser.evaluate(KEYS_IN_DOM) == keys
        text = browser.evaluate("document.body.innerText")
        assert "Tea wins on balance (round 2)." in text  # the verdict
        assert "proponent argues for tea, <b>bold</b> claim & more" in text  # literal, not HTML
        assert browser.evaluate("document.querySelectorAll('.turn b').length") == 0
        rounds = browser.evaluate(
            "Array.from(document.querySelectorAll('[data-panel=debate] [data-round]'))"
            ".map(r => r.dataset.round)"
        )
        assert rounds == ["1", "2"]
        nodes = browser.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#topology .node'))"
            ".map(n => [n.dataset.node, n.dataset.status]))"
        )
        assert nodes == {"proponent": "completed", "opponent": "completed", "mediator": "completed"}
        # input and output of one invocation, on demand
        browser.evaluate("document.querySelector('tr.row[data-key=\"round-1/mediator\"]').click()")
        details = browser.wait(
            "document.querySelector('[data-details=\"round-1/mediator\"]')"
            " && document.querySelector('[data-details=\"round-1/mediator\"]').innerText"
        )
        assert "You mediate a debate on: Is tea better than coffee?" in details
        assert '"agreement": 0.3' in details
        browser.screenshot(shots / "debate-completed-1280x800.png")
        browser.screenshot(shots / "debate-completed-full.png", full_page=True)
        browser.resize(420, 900)
        browser.wait("document.documentElement.clientWidth <= 420")
        width = browser.evaluate("document.documentElement.scrollWidth")
        assert width <= 430, f"the narrow frame scrolls sideways ({width}px)"
        browser.screenshot(shots / "debate-completed-narrow.png", full_page=True)


def test_browser_view_follows_a_running_debate(db_url: str, browser: Chromium, shots: Path) -> None:
    with Gate("view_live", hold=2) as gate:
        asyncio.run(make_debate(db_url, gate.name, max_rounds=3))
        run = RunInThread(db_url, "tea", {"topic": "Is tea better than coffee?"})
        assert gate.waiting.wait(30), "the debate did not reach round 2"
        (ident,) = execution_ids(db_url)
        with serving(http_app(db_url)) as base:
            sign_in(browser, base, f"/executions/{ident}")
            assert browser.wait(STATUS) == "running"
            browser.evaluate("window.__sameDocument = true")
            shown = browser.evaluate(KEYS_IN_DOM)
            done = recorded_keys(db_url, ident)
            assert done == [
                "round-1/proponent",
                "round-1/opponent",
                "round-1/mediator",
                "round-2/proponent",
                "round-2/opponent",
            ]
            assert shown[: len(done)] == done
            statuses = browser.evaluate(
                "Object.fromEntries(Array.from(document.querySelectorAll('#timeline tr.row'))"
                ".map(r => [r.dataset.key, r.dataset.status]))"
            )
            assert statuses["round-2/mediator"] == "running"  # its model call is in flight
            assert statuses["round-3/proponent"] == "waiting"
            assert "live" in browser.evaluate("document.querySelector('.live').innerText")
            renders = int(browser.evaluate("document.body.dataset.renders"))
            browser.screenshot(shots / "debate-running-1280x800.png")
            gate.open()
            result = run.join()
            assert result.status == "completed", result.error
            assert browser.wait(f"({STATUS}) === 'completed'", timeout=20)
            assert browser.evaluate("window.__sameDocument") is True, "the page reloaded"
            assert int(browser.evaluate("document.body.dataset.renders")) > renders
            final = recorded_keys(db_url, ident)
            assert browser.evaluate(KEYS_IN_DOM) == final
            assert "round-2/mediator" in final and "round-3/proponent" not in final  # agreed
            assert (
                browser.evaluate(
                    "document.querySelector('tr.row[data-key=\"round-2/mediator\"]').dataset.status"
                )
                == "completed"
            )
            assert "Tea wins on balance (round 2)." in browser.evaluate("document.body.innerText")
            browser.screenshot(shots / "debate-running-then-completed-1280x800.png")


def host_url(base: str, tool: str, arguments: dict[str, object]) -> str:
    settings = {"token": TOKEN, "tool": tool, "arguments": arguments}
    return f"{base}/host#{quote(json.dumps(settings))}"


def test_mcp_app_shows_a_completed_debate_in_a_host(
    db_url: str, browser: Chromium, shots: Path
) -> None:
    with Gate("app_done") as gate:
        asyncio.run(make_debate(db_url, gate.name, max_rounds=3))
        result = asyncio.run(service.run_topology("tea", {"topic": "Tea?"}, db_url=db_url))
    ident = str(result.execution_id)
    with serving(with_host_page(http_app(db_url))) as base:  # type: ignore[arg-type]
        browser.navigate(host_url(base, "executions_get", {"execution_id": ident}))
        app = browser.frame_context()
        assert browser.wait(STATUS, context=app) == "completed"
        assert browser.evaluate(KEYS_IN_DOM, context=app) == recorded_keys(db_url, ident)
        assert "Tea wins on balance" in browser.evaluate("document.body.innerText", context=app)
        assert browser.evaluate("window.hostError === undefined")
        calls = browser.evaluate("window.hostLog.map(m => m.method)")
        assert calls[:2] == ["ui/initialize", "ui/notifications/initialized"]
        assert "resources/read" in calls  # the view read qmcp://executions/{id}/view
        # the host grows the frame to what the view reports
        browser.wait("parseInt(document.querySelector('#frame').style.height) > 400")
        browser.screenshot(shots / "mcp-app-completed-1280x800.png")


def test_mcp_app_follows_a_running_debate_in_a_host(
    db_url: str, browser: Chromium, shots: Path
) -> None:
    with Gate("app_live", hold=2) as gate, serving(with_host_page(http_app(db_url))) as base:  # type: ignore[arg-type]
        asyncio.run(make_debate(db_url, gate.name, max_rounds=3))
        # the host calls topologies_run (wait=true); the view follows the run before it answers
        run = {"topology": "tea", "input": {"topic": "Tea?"}}
        browser.navigate(host_url(base, "topologies_run", run))
        assert gate.waiting.wait(30), "the run did not start"
        app = browser.frame_context()
        assert browser.wait(f"({STATUS}) === 'running'", context=app)
        browser.wait(
            "document.querySelectorAll('#timeline tr.row[data-status=completed]').length === 5",
            context=app,
        )
        browser.evaluate("window.__sameDocument = true", context=app)
        assert browser.evaluate("window.toolResult === undefined")  # still running
        browser.screenshot(shots / "mcp-app-running-1280x800.png")
        gate.open()
        assert browser.wait(f"({STATUS}) === 'completed'", timeout=30, context=app)
        assert browser.evaluate("window.__sameDocument", context=app) is True
        browser.wait("window.toolResult !== undefined")
        (ident,) = execution_ids(db_url)
        assert browser.evaluate("window.toolResult.structuredContent.execution_id") == ident
        assert browser.evaluate(KEYS_IN_DOM, context=app) == recorded_keys(db_url, ident)
        browser.resize(420, 900)
        browser.screenshot(shots / "mcp-app-completed-narrow.png", full_page=True)
