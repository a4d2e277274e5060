"""A qmcp process for the lease and cancel tests: a slow run, or a take-over attempt.

    python lease_child.py run DB_URL             a slow 4-stage pipeline; prints "ready", then
                                                 "done STATUS" when the run ends
    python lease_child.py claim DB_URL ID GO     waits for the file GO, then tries to take the
                                                 execution ID over: prints "won" or "lost ..."

`LEASE_CHILD_CALLS` names a file each model call appends "start KEY" and "end KEY" to, and
`LEASE_CHILD_SLEEP` how long a call takes (seconds). Run it under `unshare --uts` with its own
hostname to stand for another host.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConflictError
from qmcp.agentframework.llm import LLMRequest, register_function
from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, ModelConfig, Topology
from qmcp.agentframework.runners import LocalRunner

MODEL = ModelConfig(provider="function", model="leasy")
STAGES = 4


async def answer(request: LLMRequest) -> str:
    calls = os.environ.get("LEASE_CHILD_CALLS")
    if calls:
        with open(calls, "a") as out:
            out.write(f"start {request.slot}\n")
    await asyncio.sleep(float(os.environ.get("LEASE_CHILD_SLEEP", "0.05")))
    if calls:
        with open(calls, "a") as out:
            out.write(f"end {request.slot}\n")
    return f"{request.slot} answered: {request.prompt.splitlines()[0][:40]}"


register_function("leasy", answer)


def topology() -> tuple[Topology, dict[str, AgentType]]:
    config = AgentConfig(model_config_obj=MODEL).model_dump(mode="json")
    agents = {
        f"s{i}": AgentType(name=f"lease_s{i}", role=AgentRole.EXECUTOR, config=config)
        for i in range(STAGES)
    }
    return Topology(name="leased", topology_type="pipeline"), agents


async def run(db_url: str) -> None:
    runner = LocalRunner(db_url=db_url)
    await runner.store.init()
    print("ready", flush=True)
    top, agents = topology()
    result = await runner.run(top, agents, {"prompt": "hold the lease"})
    print(f"done {result.status.value}", flush=True)


async def claim(db_url: str, ident: str, go: str) -> None:
    from qmcp.agentframework.store import Store

    await Store(db_url).init()
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.005)  # a busy wait: both contenders leave it within milliseconds
    try:
        await service.claim_run(ident, db_url=db_url)
    except ConflictError as exc:
        print(f"lost {exc}", flush=True)
    else:
        print("won", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        asyncio.run(run(sys.argv[2]))
    else:
        asyncio.run(claim(*sys.argv[2:5]))
