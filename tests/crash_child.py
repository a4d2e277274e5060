"""A process the crash tests kill with SIGKILL at a random point of a run.

Usage: python crash_child.py DB_URL RUNNER KIND; prints "ready" once imports are done.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from qmcp.agentframework.llm import LLMRequest, register_function
from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, ModelConfig, Topology
from qmcp.agentframework.runners import AsyncRunner, LocalRunner

MODEL = ModelConfig(provider="function", model="crashy")


SLOW = float(os.environ.get("CRASH_CHILD_SLEEP", "0"))


async def answer(request: LLMRequest) -> str:
    # Six or seven invocations of 5-35 ms: a run takes ~130 ms, longer than the test's kill window
    # (0-120 ms), so most kills land mid-run however fast the machine or the library is.
    await asyncio.sleep(SLOW or random.uniform(0.005, 0.035))
    return f"{request.slot} answered: {request.prompt.splitlines()[0][:40]}"


register_function("crashy", answer)


def topology(kind: str) -> tuple[Topology, dict[str, AgentType]]:
    config = AgentConfig(model_config_obj=MODEL).model_dump(mode="json")
    if kind == "pipeline":
        slots = [f"s{i}" for i in range(6)]
        chosen: dict = {}
    else:
        slots = [f"ensemble_{i}" for i in range(6)] + ["aggregator"]
        chosen = {"aggregation_method": "synthesis"}
    agents = {
        s: AgentType(name=f"{kind}_{s}", role=AgentRole.EXECUTOR, config=config) for s in slots
    }
    return Topology(name=f"crash_{kind}", topology_type=kind, config=chosen), agents


async def main(db_url: str, runner_type: str, kind: str) -> None:
    runner = (
        LocalRunner(db_url=db_url)
        if runner_type == "local"
        else AsyncRunner(db_url=db_url, max_concurrent=6)
    )
    await runner.store.init()
    print("ready", flush=True)
    top, agents = topology(kind)
    await runner.run(top, agents, {"prompt": "survive the crash"})
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
