"""Adaptive rate limits: a wide fan-out against an endpoint that admits only so many requests.

    python bench/rate_limits.py [--members 200] [--admits 8] [--latency 0.05] [--runs 5]

A local Messages API (tests/fake_messages_api.py, spoken to by the real Anthropic SDK) answers
`--admits` requests at once, each after `--latency` seconds, and 429 (with Retry-After: when the
first admitted request will end) beyond, as a provider's concurrency limit does. An ensemble of
`--members` Claude agents runs on the AsyncRunner with max_concurrent 50, the run's defaults
otherwise (SQLite, checkpointing on; one database for every run, created by a warm-up run that
is not kept); the API runs in a process of its own. The endpoint's
limiter starts unbounded, learns from the 429s (multiplicative decrease, additive increase) and
holds new calls back for Retry-After.

Ideal wall time = members / admits * latency (the endpoint busy all the time, nothing else).
Prints, per run: wall time and its ratio to ideal, keys that failed for good (the target is
none), attempts refused with 429 (recorded as failed attempts, then retried), the limiter's
final limit; a first run warms up and is not kept. Writes bench/results/rate_limits.json.
Target (issue 13): zero failed invocations and wall time ≤ 1.25x ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qmcp.agentframework.llm import ProviderRegistry, limiter_for, reset_limiters  # noqa: E402
from qmcp.agentframework.models import (  # noqa: E402
    AgentConfig,
    AgentRole,
    AgentType,
    EnsembleConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner  # noqa: E402
from qmcp.agentframework.store import Store  # noqa: E402


def members(n: int) -> dict[str, AgentType]:
    config = AgentConfig(model_config_obj=Models.CLAUDE_SONNET_4, system_prompt="Answer briefly.")
    data = config.model_dump(mode="json")
    return {
        f"ensemble_{i}": AgentType(name=f"member-{i}", role=AgentRole.SPECIALIST, config=data)
        for i in range(n)
    }


# The API in a process of its own, so that its threads do not share this process's GIL.
SERVE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from fake_messages_api import MessagesAPIServer
with MessagesAPIServer() as api:
    api.max_concurrent, api.latency = int(sys.argv[2]), float(sys.argv[3])
    print(api.base_url, flush=True)
    sys.stdin.read()
"""


async def one_run(base_url: str, db_url: str, n: int) -> dict[str, float | int]:
    reset_limiters()
    topology = Topology(
        name="wide",
        topology_type=TopologyType.ENSEMBLE,
        config=EnsembleConfig(aggregation_method="concat", failure_threshold=0.0).model_dump(),
    )
    runner = AsyncRunner(db_url=db_url, max_concurrent=50)
    agents = members(n)  # the agent types exist before the run: building them is not timed
    started, cpu = time.perf_counter(), time.process_time()
    result = await runner.run(topology, agents, {"prompt": "count to three"})
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu  # this process: the runs, the SDK and the fake API
    store = Store(db_url)
    rows = await store.invocations(result.execution_id)
    await store.close()
    completed = {r.key for r in rows if r.status == "completed"}
    limiter = limiter_for("anthropic", base_url)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "status_completed": int(result.status == "completed"),
        "keys_failed": n - len(completed),
        "attempts_refused": sum(1 for r in rows if r.status == "failed"),
        "limiter_limit": limiter.limit or 0,
    }


async def bare_sdk(base_url: str, n: int, admits: int) -> float:
    """Wall time of `n` calls through the Anthropic SDK alone, `admits` at a time: what a client
    that knew the endpoint's limit would take (no retries, no records, no topology)."""
    from anthropic import AsyncAnthropic

    client = AsyncAnthropic(base_url=base_url, api_key="sk-ant-bench-floor", max_retries=0)
    gate = asyncio.Semaphore(admits)

    async def call() -> None:
        async with gate:
            await client.messages.create(
                model=Models.CLAUDE_SONNET_4.model,
                max_tokens=64,
                messages=[{"role": "user", "content": "count to three"}],
            )

    started = time.perf_counter()
    await asyncio.gather(*(call() for _ in range(n)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--admits", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ideal = args.members / args.admits * args.latency
    results = []
    serve = [sys.executable, "-c", SERVE, str(ROOT / "tests"), str(args.admits), str(args.latency)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        subprocess.Popen(serve, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as api,
    ):
        assert api.stdout is not None and api.stdin is not None
        base_url = api.stdout.readline().strip()
        os.environ["ANTHROPIC_BASE_URL"] = base_url
        os.environ["ANTHROPIC_API_KEY"] = "sk-ant-bench-ratelimit"
        ProviderRegistry.reset()
        # One record store for every run, as a user's runs share theirs: the warm-up run creates
        # it (schema and migrations, ~0.1 s, a cost paid once per database, not per run).
        db_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        for i in range(args.runs + 1):  # the first warms up (imports, the SDK's client): not kept
            run = await one_run(base_url, db_url, args.members)
            if i == 0:
                continue
            run["ratio_to_ideal"] = run["wall_s"] / ideal
            results.append(run)
            print(
                f"run {i}: {run['wall_s']:.3f} s = {run['ratio_to_ideal']:.3f}x ideal "
                f"({ideal:.3f} s), CPU {run['cpu_s']:.2f} s; keys failed {run['keys_failed']}, "
                f"429s {run['attempts_refused']}, limiter at {run['limiter_limit']}"
            )
        floor = [await bare_sdk(base_url, args.members, args.admits) / ideal for _ in range(3)]
        api.stdin.close()
    median = statistics.median(r["ratio_to_ideal"] for r in results)
    print(
        f"floor: the bare SDK under a semaphore of {args.admits} (knowing the limit, no records): "
        f"{statistics.median(floor):.3f}x ideal"
    )
    failed = max(r["keys_failed"] for r in results)
    verdict = "pass" if median <= 1.25 and failed == 0 else "miss"
    print(f"median {median:.3f}x ideal, keys failed at most {failed}: {verdict}")
    print("target: ≤ 1.25x ideal, no key failed")
    out = ROOT / "bench" / "results" / "rate_limits.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "ideal_s": ideal,
                "runs": results,
                "median_ratio": median,
                "floor_ratios": floor,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
