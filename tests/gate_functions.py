"""Function models for protocol tests (in-process, or in a server through QMCP_PLUGINS):

- `function:gated` answers once the file named by QMCP_TEST_GATE exists, so a test can act
  (subscribe, cancel) while a run is in flight and then let it finish;
- `function:broken` always fails, with an error the provider chain does not retry.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm import LLMRequest, register_function

GATE_SECONDS = 120.0


async def gated(request: LLMRequest) -> str:
    gate = Path(os.environ["QMCP_TEST_GATE"])
    deadline = asyncio.get_running_loop().time() + GATE_SECONDS
    while not gate.exists():
        if asyncio.get_running_loop().time() > deadline:
            raise ProviderError(f"the test never opened the gate {gate}")
        await asyncio.sleep(0.01)
    return f"{request.slot} passed the gate: {request.prompt[:40]}"


async def broken(request: LLMRequest) -> str:
    raise ProviderError(f"{request.slot} is broken on purpose")


def register() -> None:
    """(Again:) a test elsewhere in the session may have reset the function registry."""
    register_function("gated", gated)
    register_function("broken", broken)


register()  # on import, for a server that loads this module through QMCP_PLUGINS
