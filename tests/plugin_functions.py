"""A QMCP_PLUGINS module for subprocess tests: registers `function:sleepy`.

`sleepy` sleeps QMCP_TEST_SLEEP seconds (default 0) before answering, unless the file named by
QMCP_TEST_AWAKE exists.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from qmcp.agentframework.llm import LLMRequest, register_function


async def sleepy(request: LLMRequest) -> str:
    awake = os.environ.get("QMCP_TEST_AWAKE")
    if not (awake and Path(awake).exists()):
        await asyncio.sleep(float(os.environ.get("QMCP_TEST_SLEEP", "0")))
    return f"{request.slot} rested: {request.prompt[:40]}"


register_function("sleepy", sleepy)
