"""The run view without a browser: the view model of each topology kind (what the page, the MCP
App and the terminal tree all show), the CLI's tree and JSON, `qmcp executions view`'s one-time
link, the HTTP routes' token and Host checks, and the MCP App's wiring (`_meta.ui`, the `ui://`
resource) in both protocol eras. The pages themselves are checked in Chromium
(tests/test_live_view_browser.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from qmcp.agentframework import service
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp_server.http import build_http_app
from qmcp_server.server import build_server
from qmcp_server.ui import APP_MIME_TYPE, VIEW_URI

pytestmark = pytest.mark.anyio

QMCP = str(Path(sys.executable).with_name("qmcp"))
TOKEN = "live-view-test-token-0123456789-abcdefgh"


@pytest.fixture
def answers() -> Iterator[list[str]]:
    """One function model for every kind: checkers give verdicts, a mediator agrees at round 2,
    everyone else says who they are."""
    seen: list[str] = []

    def answer(request: LLMRequest) -> str:
        seen.append(request.slot)
        if request.slot.startswith("checker_"):
            approved = request.slot != "checker_2"
            return json.dumps(
                {"approved": approved, "confidence": 0.9, "issues": [] if approved else ["thin"]}
            )
        if request.slot == "mediator":
            rounds = str(request.messages[-1].content).count("[round ") // 2
            agreement = 0.9 if rounds >= 2 else 0.2
            return json.dumps(
                {"converged": agreement > 0.8, "agreement": agreement, "verdict": "pro wins"}
            )
        return f"{request.agent_name} answers as {request.slot}"

    register_function("view_fn", answer)
    yield seen
    unregister_function("view_fn")


async def topology(db_url: str, name: str, kind: str, slots: list[str], **kw: Any) -> None:
    for slot in slots:
        await service.create_agent(
            f"{name}_{slot}", "specialist", model="function:view_fn", db_url=db_url, **kw
        )
    await service.create_topology(
        name, kind, {s: f"{name}_{s}" for s in slots}, config={}, db_url=db_url
    )


async def test_an_ensemble_shows_its_answers_side_by_side(db_url: str, answers: Any) -> None:
    members = ["ensemble_a", "ensemble_b", "ensemble_c"]
    await topology(db_url, "ens", "ensemble", [*members, "aggregator"])
    result = await service.run_topology("ens", {"prompt": "p"}, db_url=db_url)
    assert result.status == "completed", result.error
    view = await service.execution_view(result.execution_id, db_url)
    (panel,) = view["panels"]
    assert panel["kind"] == "ensemble"
    said = {m["slot"]: m["content"] for m in panel["members"]}
    assert said == {s: f"ens_{s} answers as {s}" for s in members}
    assert view["totals"]["done"] == len(view["invocations"]) == 4  # three members + synthesis
    assert view["execution"]["status"] == "completed" and view["live"] is False


async def test_a_cross_check_shows_each_verdict_and_the_consensus(
    db_url: str, answers: Any
) -> None:
    await topology(db_url, "cc", "cross_check", ["primary", "checker_1", "checker_2", "checker_3"])
    result = await service.run_topology("cc", {"prompt": "p"}, db_url=db_url)
    assert result.status == "completed", result.error
    (panel,) = (await service.execution_view(result.execution_id, db_url))["panels"]
    assert panel["kind"] == "cross_check" and panel["method"] == "majority"
    first = panel["rounds"][0]
    assert first["answer"]["content"] == "cc_primary answers as primary"
    verdicts = {v["checker"]: v["approved"] for v in first["validations"]}
    assert verdicts == {"checker_1": True, "checker_2": False, "checker_3": True}
    assert first["consensus"]["approved"] is True  # two of three


async def test_a_debate_is_a_transcript_by_round_with_its_verdict(
    db_url: str, answers: Any
) -> None:
    await topology(db_url, "deb", "debate", ["proponent", "opponent", "mediator"])
    result = await service.run_topology("deb", {"topic": "t"}, db_url=db_url)
    assert result.status == "completed", result.error
    view = await service.execution_view(result.execution_id, db_url)
    (panel,) = view["panels"]
    assert panel["kind"] == "debate"
    assert [len(r["turns"]) for r in panel["rounds"]] == [2, 2]  # it stopped at round 2
    assert panel["rounds"][1]["judgment"]["agreement"] == 0.9
    assert panel["verdict"]["round"] == 2 and panel["verdict"]["verdict"] == "pro wins"
    assert panel["verdict"]["reached"] is True
    assert [n["slot"] for n in view["topology"]["slots"]] == ["proponent", "opponent", "mediator"]


async def test_an_approval_that_waits_shows_what_it_asks(db_url: str, answers: Any) -> None:
    await service.create_agent(
        "gate_writer",
        "executor",
        model="function:view_fn",
        capabilities=[{"name": "human_in_loop", "config": {"question": "Publish this?"}}],
        db_url=db_url,
    )
    await service.create_agent("gate_editor", "executor", model="function:view_fn", db_url=db_url)
    await service.create_topology(
        "gated", "pipeline", {"write": "gate_writer", "edit": "gate_editor"}, db_url=db_url
    )
    result = await service.run_topology("gated", {"prompt": "news"}, db_url=db_url)
    assert result.status == "pending"
    view = await service.execution_view(result.execution_id, db_url)
    (approval,) = view["approvals"]
    assert approval["status"] == "pending" and "Publish this?" in approval["question"]
    assert approval["proposed"] == "gate_writer answers as write"
    (gated,) = [e for e in view["invocations"] if e["approval"]]
    assert gated["key"] == approval["key"] == "stage-0/write"
    assert gated["approval"] == approval  # the answer waits for a human


async def test_a_nested_topology_is_a_node_of_its_holder(db_url: str, answers: Any) -> None:
    await topology(db_url, "inner", "pipeline", ["draft", "polish"])
    await service.create_agent("outer_lead", "specialist", model="function:view_fn", db_url=db_url)
    await service.create_topology(
        "outer", "pipeline", {"lead": "outer_lead", "team": "topology:inner"}, db_url=db_url
    )
    result = await service.run_topology("outer", {"prompt": "p"}, db_url=db_url)
    assert result.status == "completed", result.error
    view = await service.execution_view(result.execution_id, db_url)
    kinds = {m["slot"]: m["kind"] for m in view["topology"]["slots"]}
    assert kinds == {"lead": "agent", "team": "topology"}
    keys = {e["key"] for e in view["invocations"]}
    assert len(keys) == 3 and any(k.startswith("stage-1/team/") for k in keys), keys


# -- the terminal ---------------------------------------------------------------------------


def cli(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"QMCP_DATABASE_URL": db_url, "COLUMNS": "160"}
    done = subprocess.run([QMCP, *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow  # subprocesses
async def test_executions_show_prints_a_tree_and_json_for_scripts(
    db_url: str, answers: Any
) -> None:
    await topology(db_url, "deb", "debate", ["proponent", "opponent", "mediator"])
    result = await service.run_topology("deb", {"topic": "t"}, db_url=db_url)
    tree = cli(db_url, "executions", "show", str(result.execution_id)[:8]).stdout
    for expected in ("deb", "debate", "round 1", "round 2", "round-2/mediator", "completed"):
        assert expected in tree, (expected, tree)
    assert "pro wins" in tree and "tokens" in tree and "agreement 0.90" in tree
    record = json.loads(
        cli(db_url, "executions", "show", str(result.execution_id), "-f", "json").stdout
    )
    assert record["id"] == str(result.execution_id) and len(record["invocations"]) == 6
    bad = cli(db_url, "executions", "show", str(result.execution_id), "-f", "yaml", check=False)
    assert bad.returncode == 2 and "use tree or json" in bad.stderr


@pytest.mark.slow  # a server process
async def test_executions_view_serves_the_page_behind_a_one_time_link(
    db_url: str, answers: Any
) -> None:
    await topology(db_url, "deb", "debate", ["proponent", "opponent", "mediator"])
    result = await service.run_topology("deb", {"topic": "t"}, db_url=db_url)
    env = os.environ | {"QMCP_DATABASE_URL": db_url, "COLUMNS": "400", "BROWSER": "false"}
    process = subprocess.Popen(
        [QMCP, "executions", "view", str(result.execution_id)[:8], "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/executions/[0-9a-f-]+)\?token=(\S+)", line)
        assert match, line
        page, link = match.group(1), match.group(0)
        with httpx.Client() as browser:
            assert browser.get(page).status_code == 401  # no link, no page
            signed = browser.get(link, follow_redirects=True)
            assert signed.status_code == 200 and "text/html" in signed.headers["content-type"]
            assert str(result.execution_id) in signed.text
            api = browser.get(page.replace("/executions/", "/api/executions/"))
            assert api.json()["execution"]["id"] == str(result.execution_id)
        with httpx.Client() as someone_else:
            assert someone_else.get(link).status_code == 401, "the link works once"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)


# -- next to the HTTP transport --------------------------------------------------------------


async def test_http_views_take_the_servers_token_and_its_host_checks(
    db_url: str, answers: Any
) -> None:
    await topology(db_url, "deb", "debate", ["proponent", "opponent", "mediator"])
    result = await service.run_topology("deb", {"topic": "t"}, db_url=db_url)
    app = build_http_app(build_server(db_url), token=TOKEN, json_response=True, db_url=db_url)
    base = "http://127.0.0.1:8000"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as http:
        html = {"Accept": "text/html"}
        form = await http.get(f"/executions/{result.execution_id}", headers=html)
        assert form.status_code == 401 and "<form" in form.text and TOKEN not in form.text
        wrong = {"Authorization": "Bearer nope"}
        assert (await http.get("/api/executions", headers=wrong)).status_code == 401
        listed = await http.get("/api/executions", headers=bearer)
        assert [e["id"] for e in listed.json()] == [str(result.execution_id)]
        page = await http.get(f"/executions/{result.execution_id}", headers=bearer)
        assert page.status_code == 200
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert "<script src=" not in page.text and "https://" not in page.text  # no network
        rebinding = await http.get("/api/executions", headers=bearer | {"Host": "evil.example"})
        assert rebinding.status_code == 421
        # a browser signs in once; its cookie opens the views, never /mcp
        signed = await http.post(
            "/executions/sign-in",
            data={"token": TOKEN, "next": "/executions"},
            headers={"Origin": base},
        )
        assert signed.status_code == 303
        assert (await http.get("/api/executions")).status_code == 200
        mcp = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert mcp.status_code == 401


# -- inside the MCP client -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stateless", "legacy"])
async def test_the_mcp_app_is_named_by_the_run_tools_and_served_as_ui(
    db_url: str, answers: Any, mode: str
) -> None:
    await topology(db_url, "deb", "debate", ["proponent", "opponent", "mediator"])
    kwargs: dict[str, Any] = {"mode": "legacy"} if mode == "legacy" else {}
    async with Client(build_server(db_url), **kwargs) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for name in ("topologies_run", "executions_get"):
            assert (tools[name].meta or {})["ui"]["resourceUri"] == VIEW_URI
        assert "ui" not in (tools["agents_list"].meta or {})
        (html,) = (await client.read_resource(VIEW_URI)).contents
        assert html.mime_type == APP_MIME_TYPE
        text = html.text  # type: ignore[union-attr]
        assert "<script" in text and "<script src=" not in text and "https://" not in text
        run = await client.call_tool("topologies_run", {"topology": "deb", "input": {"topic": "t"}})
        execution_id = run.structured_content["execution_id"]  # type: ignore[index]
        uri = f"qmcp://executions/{execution_id}/view"
        view = json.loads((await client.read_resource(uri)).contents[0].text)  # type: ignore[union-attr]
        assert view["execution"]["status"] == "completed"
        assert [e["key"] for e in view["invocations"]][:3] == [
            "round-1/proponent",
            "round-1/opponent",
            "round-1/mediator",
        ]
