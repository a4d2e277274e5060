"""A process the tool crash test kills (SIGKILL) while a tool call is in flight.

Usage: python tool_crash_child.py DB_URL TOPOLOGY; prints the execution id, then runs.
"""

from __future__ import annotations

import asyncio
import sys

from tool_functions import register_crash_model

from qmcp.agentframework import service


async def main(db_url: str, topology: str) -> None:
    register_crash_model()
    started = await service.start_run(topology, {"prompt": "go"}, db_url=db_url)
    print(started.execution_id, flush=True)
    await service.finish_run(started)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
