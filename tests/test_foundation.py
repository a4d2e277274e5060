"""The foundation as the spec writes it: registry, runners, RunConfig, store, CLI commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    ExecutionStatus,
    ModelConfig,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import (
    AsyncRunner,
    BaseRunner,
    LocalRunner,
    RunConfig,
    RunnerRegistry,
    runner,
)
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
QMCP = str(Path(sys.executable).parent / "qmcp")


def agent(name: str, model: str, role: AgentRole = AgentRole.SPECIALIST) -> AgentType:
    config = AgentConfig(model_config_obj=ModelConfig(provider="function", model=model))
    return AgentType(name=name, role=role, config=config.model_dump(mode="json"))


def ensemble(members: int, model: str) -> tuple[Topology, dict[str, AgentType]]:
    agents = {f"ensemble_{i}": agent(f"m{i}", model) for i in range(members)}
    return Topology(
        name="e", topology_type=TopologyType.ENSEMBLE, config={"aggregation_method": "concat"}
    ), agents


def test_runner_registry_and_custom_registration() -> None:
    assert {"local", "async", "metaflow"} <= set(RunnerRegistry.list())
    assert isinstance(RunnerRegistry.create("local", RunConfig()), LocalRunner)

    @runner
    class MyRunner(BaseRunner):
        runner_type = "my_runner"

    try:
        assert RunnerRegistry.get("my_runner") is MyRunner
        assert isinstance(
            RunnerRegistry.create("my_runner", RunConfig(timeout_seconds=5)), MyRunner
        )
    finally:
        RunnerRegistry.unregister("my_runner")
    with pytest.raises(
        Exception, match="unknown runner 'my_runner'; known: async, local, metaflow"
    ):
        RunnerRegistry.get("my_runner")


@pytest.mark.slow  # measures wall-clock latency (seconds of sleeping models)
async def test_async_ensemble_takes_about_one_latency_and_respects_the_bound(db_url: str) -> None:
    in_flight = {"now": 0, "peak": 0}

    async def slow(request: LLMRequest) -> str:
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await asyncio.sleep(0.2)
        in_flight["now"] -= 1
        return request.slot

    register_function("slow", slow)
    try:
        topology, agents = ensemble(8, "slow")
        started = time.perf_counter()
        result = await AsyncRunner(db_url=db_url, max_concurrent=8).run(
            topology, agents, {"prompt": "x"}
        )
        wall = time.perf_counter() - started
        assert result.status == "completed" and wall < 0.2 * 2.5, wall
        assert in_flight["peak"] == 8
        in_flight["peak"] = 0
        result = await AsyncRunner(db_url=db_url, max_concurrent=3).run(
            topology, agents, {"prompt": "x"}
        )
        assert result.status == "completed" and in_flight["peak"] == 3
        local = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "x"})
        assert local.output == result.output
    finally:
        unregister_function("slow")


@pytest.mark.slow  # waits out retry back-off
@pytest.mark.postgres
async def test_retries_are_per_invocation_with_every_attempt_recorded(db_url: str) -> None:
    calls = {"n": 0}

    def flaky(request: LLMRequest) -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError(f"flake {calls['n']}")
        return "finally"

    register_function("flaky", flaky)
    try:
        topology = Topology(
            name="p", topology_type=TopologyType.PIPELINE, config={"max_stage_retries": 10}
        )
        agents = {"only": agent("f", "flaky")}
        result = await LocalRunner(config=RunConfig(max_retries=2), db_url=db_url).run(
            topology, agents, {"prompt": "x"}
        )
        assert result.status == "completed"
        rows = await Store(db_url).invocations(result.execution_id)
        assert [(r.attempt, r.status) for r in rows] == [
            (1, "failed"),
            (2, "failed"),
            (3, "completed"),
        ]
        assert rows[0].error == "RuntimeError: flake 1"
        calls["n"] = 0
        once = await LocalRunner(config=RunConfig(retry_on_failure=False), db_url=db_url).run(
            topology, agents, {"prompt": "x"}
        )
        assert once.status == "failed" and calls["n"] == 1
    finally:
        unregister_function("flaky")


@pytest.mark.postgres
async def test_run_config_fields_are_honoured(db_url: str) -> None:
    register_function("echo", lambda r: f"echo {r.prompt}")
    try:
        topology, agents = ensemble(2, "echo")
        quiet = RunConfig(checkpoint_enabled=False, trace_enabled=False, correlation_id="corr-42")
        result = await LocalRunner(config=quiet, db_url=db_url).run(
            topology, agents, {"prompt": "hi"}
        )
        assert result.correlation_id == "corr-42"
        rows = await Store(db_url).invocations(result.execution_id)
        assert len(rows) == 2 and all(r.input == {} for r in rows), "no trace: no prompts kept"
        traced = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "hi"})
        assert traced.correlation_id and len(traced.correlation_id) == 32
        rows = await Store(db_url).invocations(traced.execution_id)
        assert rows[0].input["messages"] == ["hi"] and rows[0].input["system"]
        no_metrics = await LocalRunner(config=RunConfig(metrics_enabled=False), db_url=db_url).run(
            topology, agents, {"prompt": "hi"}
        )
        record = await Store(db_url).get_execution(no_metrics.execution_id)
        assert record.invocation_count == 0 and record.status == ExecutionStatus.COMPLETED
        with pytest.raises(Exception, match="unknown log level"):
            RunConfig(log_level="LOUD")
    finally:
        unregister_function("echo")


@pytest.mark.postgres
async def test_bad_input_writes_nothing(db_url: str) -> None:
    register_function("echo", lambda r: "x")
    try:
        topology, agents = ensemble(2, "echo")
        run = LocalRunner(db_url=db_url)
        for bad_topology, bad_agents, data, message in [
            (topology, agents, ["not", "a", "dict"], "JSON object"),
            (topology, {**agents, "stranger": agents["ensemble_0"]}, {}, "does not use slot"),
            (
                Topology(
                    name="e", topology_type="ensemble", config={"aggregation_method": "synthesis"}
                ),
                agents,
                {},
                "aggregator",
            ),
            (
                Topology(name="e", topology_type="ensemble", config={"nope": 1}),
                agents,
                {},
                "unknown field",
            ),
        ]:
            with pytest.raises(ValidationError, match=message):
                await run.run(bad_topology, bad_agents, data)  # type: ignore[arg-type]
        await Store(db_url).init()
        assert await Store(db_url).list_executions() == []
    finally:
        unregister_function("echo")


async def test_sqlite_is_configured_for_concurrency_and_safety(db_url: str) -> None:
    from sqlalchemy import text

    store = Store(db_url)
    await store.init()
    async with store.engine.connect() as connection:
        mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
        timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
        keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
    assert (mode, timeout, keys) == ("wal", 30000, 1)


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QMCP_DATABASE_URL": db_url}
    return subprocess.run([QMCP, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_the_spec_cli_commands_work_as_written(db_url: str) -> None:
    assert (
        cli(
            db_url, "agents", "create", "my_planner", "planner", "--description", "Planning agent"
        ).returncode
        == 0
    )
    listed = cli(db_url, "agents", "list")
    assert listed.returncode == 0 and "my_planner" in listed.stdout
    as_json = json.loads(
        cli(db_url, "agents", "list", "--role", "planner", "--format", "json").stdout
    )
    assert [a["name"] for a in as_json] == ["my_planner"] and as_json[0][
        "description"
    ] == "Planning agent"
    shown = json.loads(cli(db_url, "agents", "show", "my_planner").stdout)
    assert (
        shown["role"] == "planner" and shown["config"]["model_config_obj"]["provider"] == "offline"
    )
    for name in ("pro", "con"):
        assert cli(db_url, "agents", "create", name, "specialist").returncode == 0
    assert cli(db_url, "agents", "create", "judge", "coordinator").returncode == 0
    made = cli(
        db_url,
        "agents",
        "topologies",
        "create",
        "my_debate",
        "debate",
        "--slot",
        "proponent=pro",
        "--slot",
        "opponent=con",
        "--slot",
        "mediator=judge",
        "--config-json",
        '{"max_rounds": 2}',
    )
    assert made.returncode == 0, made.stderr
    assert "my_debate" in cli(db_url, "agents", "topologies", "list").stdout
    ran = cli(db_url, "agents", "topologies", "run", "my_debate", "--input-json", '{"topic": "AI"}')
    assert ran.returncode == 0, ran.stderr
    assert "completed my_debate on local" in ran.stdout
    mixins = cli(db_url, "agents", "mixins")
    assert mixins.returncode == 0 and "structured_output" in mixins.stdout


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(db_url: str) -> None:
    cases = [
        (("agents", "create", "x", "wizard"), "unknown role 'wizard'"),
        (("agents", "show", "ghost"), "no agent named 'ghost'"),
        (
            ("agents", "topologies", "run", "ghost", "--input-json", "{}"),
            "no topology named 'ghost'",
        ),
        (("agents", "topologies", "run", "ghost", "--input-json", "{oops"), "not valid JSON"),
        (
            ("agents", "topologies", "create", "t", "debte", "--slot", "a=b"),
            "unknown topology type",
        ),
        (("agents", "create", "../x", "planner"), "invalid agent name"),
        (("executions", "show", "nope"), "not an execution id"),
    ]
    for args, expected in cases:
        result = cli(db_url, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)
    assert json.loads(cli(db_url, "agents", "list", "--format", "json").stdout) == []
    assert json.loads(cli(db_url, "executions", "list", "--format", "json").stdout) == []


def test_help_is_fast_and_lazy() -> None:
    started = time.perf_counter()
    result = subprocess.run([QMCP, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "agents" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, qmcp.agentframework.cli; "
            "print('anthropic' in sys.modules, 'metaflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False False"
    assert time.perf_counter() - started < 30
