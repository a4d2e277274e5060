"""Function models for Metaflow tests: imported by each step process through QMCP_PLUGINS.

Behaviour is driven by files under QMCP_TEST_STATE_DIR so a test can change it between runs and
count calls across processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm import LLMRequest, register_function


def _state_dir() -> Path:
    return Path(os.environ["QMCP_TEST_STATE_DIR"])


def _log(request: LLMRequest) -> None:
    with (_state_dir() / "calls.log").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"slot": request.slot, "agent": request.agent_name}) + "\n")


def echo(request: LLMRequest) -> str:
    """A deterministic answer that shows who answered what; reviewers approve."""
    _log(request)
    if request.role in ("reviewer", "critic"):
        return json.dumps({"approved": True, "confidence": 0.9, "issues": []})
    return f"{request.agent_name}@{request.slot}: {request.prompt[:120]}\nconfidence: 0.8"


def strict(request: LLMRequest) -> str:
    """Like `echo`, but reviewers reject an answer until it is a revision (cross_check's path
    through `revision-1/…`)."""
    if request.role in ("reviewer", "critic") and "not approved" not in request.prompt:
        _log(request)
        return json.dumps({"approved": False, "confidence": 0.9, "issues": ["too short"]})
    return echo(request)


def broken(request: LLMRequest) -> str:
    """Always fails, permanently (never retried)."""
    _log(request)
    raise ProviderError(f"{request.slot} is broken", retryable=False, provider="function")


def fail_once(request: LLMRequest) -> str:
    """Fails for the slot named in `fail_slot` until the file `healed` exists."""
    _log(request)
    state = _state_dir()
    target = (state / "fail_slot").read_text().strip() if (state / "fail_slot").exists() else ""
    if request.slot == target and not (state / "healed").exists():
        raise RuntimeError(f"injected failure in {request.slot}")
    return f"{request.slot} done: {request.prompt[:60]}"


register_function("mf_echo", echo)
register_function("mf_strict", strict)
register_function("mf_broken", broken)
register_function("mf_fail_once", fail_once)
