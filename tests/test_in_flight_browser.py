"""The page renders an invocation in flight (no row, no turns yet) in headless Chromium: a
`running` row whose time counts up, with a bar on the timeline and details that say it waits for
its answer. Screenshot: tests/artifacts/in-flight-running-1280x800.png."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from test_live_view_browser import http_app, sign_in
from ui_host.chromium import CHROMIUM, Chromium, artifacts_dir
from ui_host.support import Gate, RunInThread, execution_ids, make_debate, serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]
MEDIATOR = 'tr.row[data-key="round-2/mediator"]'


@pytest.fixture
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


def cell(browser: Chromium, column: int) -> str:
    return str(browser.evaluate(f"document.querySelector('{MEDIATOR}').cells[{column}].innerText"))


def seconds(text: str) -> float:
    """What `fmtMs` wrote, in seconds ("850 ms…", "2.4 s…")."""
    match = re.fullmatch(r"([\d.]+) (ms|s)…", text.strip())
    assert match, text
    return float(match[1]) / (1000 if match[2] == "ms" else 1)


def test_a_call_in_flight_renders_as_running_with_its_time_so_far(
    db_url: str, browser: Chromium
) -> None:
    with Gate("in_flight_page", hold=2) as gate:
        asyncio.run(make_debate(db_url, gate.name, max_rounds=3))
        run = RunInThread(db_url, "tea", {"topic": "Is tea better than coffee?"})
        assert gate.waiting.wait(30), "the debate did not reach round 2"
        (ident,) = execution_ids(db_url)
        with serving(http_app(db_url)) as base:
            sign_in(browser, base, f"/executions/{ident}")
            browser.wait(f"document.querySelector('{MEDIATOR}') !== null")
            row = f"document.querySelector('{MEDIATOR}')"
            assert browser.evaluate(f"{row}.dataset.status") == "running"
            assert browser.evaluate(f"{row}.querySelector('.badge').innerText") == "running"
            assert "tea_judge" in cell(browser, 0)
            first = seconds(cell(browser, 3))
            assert browser.evaluate(f"{row}.querySelector('.fill') !== null"), (
                "a bar from its start"
            )
            # the page polls: the time in flight grows without a reload
            browser.wait(
                f"parseFloat({row}.cells[3].innerText) * "
                f"({row}.cells[3].innerText.includes(' ms') ? 0.001 : 1) > {first + 1.5}",
                timeout=20,
            )
            browser.evaluate(f"{row}.click(); true")
            details = "document.querySelector('tr.details[data-details=\"round-2/mediator\"]')"
            browser.wait(f"{details} !== null")
            text = str(browser.evaluate(f"{details}.innerText"))
            assert "in flight for" in text and "no answer yet" in text, text
            assert "recorded when the invocation ends" in text
            assert "tracing off" not in text
            browser.screenshot(artifacts_dir() / "in-flight-running-1280x800.png")
            gate.open()
            assert run.join().status == "completed"
            browser.wait(f"{row}.dataset.status === 'completed'", timeout=20)
            assert not str(browser.evaluate(f"{row}.cells[3].innerText")).endswith("…")
