"""MetaflowRunner: real Metaflow runs of generated flows, conformance with the other runners."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, MetaflowRunner, RunConfig
from qmcp.agentframework.store import Store
from qmcp.agentframework.topologies import SubTopology, TopologyRegistry

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def metaflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("QMCP_TEST_STATE_DIR", str(state))
    monkeypatch.setenv("QMCP_PLUGINS", "metaflow_functions")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(ROOT / "tests"))
    import metaflow_functions  # noqa: F401  (registers the functions in this process too)

    return state


def agent(name: str, role: AgentRole, model: ModelConfig, **config: Any) -> AgentType:
    return AgentType(
        name=name,
        description=f"{name} description",
        role=role,
        config=AgentConfig(model_config_obj=model, **config).model_dump(mode="json"),
    )


def cases(model: ModelConfig) -> dict[str, tuple[Topology, dict[str, AgentType]]]:
    """One topology of every kind this installation has."""
    s, r = AgentRole.SPECIALIST, AgentRole.REVIEWER
    table: dict[str, tuple[TopologyType, dict[str, Any], dict[str, AgentRole]]] = {
        "pipeline": (
            TopologyType.PIPELINE,
            {},
            {"plan": AgentRole.PLANNER, "do": AgentRole.EXECUTOR, "check": r},
        ),
        "ensemble": (
            TopologyType.ENSEMBLE,
            {"aggregation_method": "synthesis"},
            {
                "ensemble_0": s,
                "ensemble_1": s,
                "ensemble_2": s,
                "aggregator": AgentRole.SYNTHESIZER,
            },
        ),
        "cross_check": (
            TopologyType.CROSS_CHECK,
            {},
            {"primary": AgentRole.EXECUTOR, "checker_1": r, "checker_2": r},
        ),
        "debate": (
            TopologyType.DEBATE,
            {"max_rounds": 2},
            {"proponent": s, "opponent": s, "mediator": AgentRole.COORDINATOR},
        ),
        "chain_of_command": (
            TopologyType.CHAIN_OF_COMMAND,
            {},
            {
                "commander": AgentRole.PLANNER,
                "lieutenant_1": AgentRole.COORDINATOR,
                "worker_1": s,
                "worker_2": s,
            },
        ),
        "delegation": (
            TopologyType.DELEGATION,
            {},
            {"coordinator": AgentRole.COORDINATOR, "legal": s, "finance": s},
        ),
    }
    available = {k.type for k in TopologyRegistry.list()}
    out = {}
    for name, (kind, config, slots) in table.items():
        if kind not in available:
            continue
        agents = {slot: agent(f"{name}_{slot}", role, model) for slot, role in slots.items()}
        out[name] = (Topology(name=f"conf_{name}", topology_type=kind, config=config), agents)
    # A compound topology: an ensemble nested as the middle stage of a pipeline.
    inner_topology, inner_agents = out["ensemble"]
    out["compound"] = (
        Topology(name="conf_compound", topology_type=TopologyType.PIPELINE, config={}),
        {
            "draft": agent("compound_draft", AgentRole.EXECUTOR, model),
            "panel": SubTopology(inner_topology, inner_agents),
            "edit": agent("compound_edit", AgentRole.EXECUTOR, model),
        },
    )
    return out


KINDS = [
    "pipeline",
    "ensemble",
    "cross_check",
    "debate",
    "chain_of_command",
    "delegation",
    "compound",
]
INPUT = {
    "prompt": "Should we ship on Friday?",
    "task": "Should we ship on Friday?",
    "topic": "Friday ships",
}


@pytest.mark.parametrize(
    "model",
    [Models.OFFLINE, ModelConfig(provider="function", model="mf_echo")],
    ids=["offline", "function"],
)
@pytest.mark.parametrize("name", KINDS)
async def test_every_kind_gives_the_same_output_on_every_runner(
    model: ModelConfig, name: str, db_url: str, tmp_path: Path
) -> None:
    metaflow = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    kinds = cases(model)
    assert set(kinds) == set(KINDS), "every topology kind has a case"
    for topology, agents in [kinds[name]]:
        local = await LocalRunner(db_url=db_url).run(topology, agents, INPUT)
        concurrent = await AsyncRunner(db_url=db_url, max_concurrent=4).run(topology, agents, INPUT)
        flowed = await metaflow.run(topology, agents, INPUT)
        assert local.status == "completed", (name, local.error)
        assert flowed.status == "completed", (name, flowed.error)
        assert flowed.runner_type == "metaflow"
        assert flowed.output == local.output == concurrent.output, name
        store = Store(db_url)
        record = await store.get_execution(flowed.execution_id)
        local_keys = sorted(i.key for i in await store.invocations(local.execution_id))
        flow_keys = sorted(i.key for i in await store.invocations(flowed.execution_id))
        assert flow_keys == local_keys, name
        assert record.status == "completed" and record.invocation_count == len(flow_keys)
        assert record.input_tokens > 0


async def test_resume_runs_only_what_did_not_finish(
    metaflow_env: Path, db_url: str, tmp_path: Path
) -> None:
    model = ModelConfig(provider="function", model="mf_fail_once")
    agents = {
        slot: agent(f"stage_{slot}", AgentRole.EXECUTOR, model)
        for slot in ("first", "second", "third")
    }
    topology = Topology(
        name="resumable",
        topology_type=TopologyType.PIPELINE,
        config={"retry_failed_stages": False},
    )
    (metaflow_env / "fail_slot").write_text("second")
    runner = MetaflowRunner(
        output_dir=tmp_path / "flows", db_url=db_url, config=RunConfig(retry_on_failure=False)
    )
    failed = await runner.run(topology, agents, {"prompt": "go"})
    assert failed.status == "failed"
    assert "injected failure in second" in (failed.error or "")
    (metaflow_env / "healed").write_text("yes")
    resumed = await runner.resume(failed.execution_id)
    assert resumed.status == "completed", resumed.error
    calls = [
        json.loads(line)["slot"] for line in (metaflow_env / "calls.log").read_text().splitlines()
    ]
    assert calls == ["first", "second", "second", "third"]
    local = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "go"})
    assert resumed.output == local.output
    rows = await Store(db_url).invocations(failed.execution_id)
    completed = [r.key for r in rows if r.status == "completed"]
    assert sorted(completed) == sorted(set(completed)), "exactly one completed invocation per key"


HOSTILE = [
    'x"); import os; os.system("echo pwned") #',
    "tri'''ple\"\"\"quotes",
    "back\\slash\\n and \n real newline",
    "ünïcödé ✓ 名前 # not a comment",
    "{__import__('os').getcwd()}",
]


async def test_hostile_names_and_text_are_data_not_code(db_url: str, tmp_path: Path) -> None:
    model = ModelConfig(provider="function", model="mf_echo")
    agents = {
        f"ensemble_{i}": AgentType(
            name=text,
            description=text,
            role=AgentRole.SPECIALIST,
            config=AgentConfig(model_config_obj=model, system_prompt=text).model_dump(mode="json"),
        )
        for i, text in enumerate(HOSTILE)
    }
    hostile_slot = "ensemble_\"'''; import sys #"
    agents[hostile_slot] = agents.pop("ensemble_4")
    topology = Topology(
        name=HOSTILE[0],
        description=HOSTILE[1],
        topology_type=TopologyType.ENSEMBLE,
        config={"aggregation_method": "concat"},
    )
    runner = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    source = runner._topology_to_flow(topology, agents)
    for text in HOSTILE:
        assert text not in source
    path = runner.write_flow(topology, agents, tmp_path / "hostile_flow.py")
    check = subprocess.run(
        [sys.executable, str(path), "--quiet", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "USERNAME": "qmcp-tests"},
    )
    assert check.returncode == 0, check.stderr
    data = {"prompt": HOSTILE[2], "extra": HOSTILE[3]}
    flowed = await runner.run(topology, agents, data)
    local = await LocalRunner(db_url=db_url).run(topology, agents, data)
    assert flowed.status == "completed", flowed.error
    assert flowed.output == local.output
    assert HOSTILE[0] in flowed.output["content"] and hostile_slot in flowed.output["content"]
    assert not (tmp_path / "pwned").exists()


def test_cluster_environments_add_decorators_and_pass_check(tmp_path: Path) -> None:
    model = Models.OFFLINE
    agents = {
        "ensemble_0": agent("a", AgentRole.SPECIALIST, model),
        "ensemble_1": agent("b", AgentRole.SPECIALIST, model),
    }
    topology = Topology(
        name="scaled", topology_type=TopologyType.ENSEMBLE, config={"aggregation_method": "concat"}
    )
    for environment in ("kubernetes", "batch"):
        runner = MetaflowRunner(
            output_dir=tmp_path,
            environment=environment,
            config=RunConfig(max_retries=2, timeout_seconds=600),
            resources={"cpu": 2, "memory": 8192},
        )
        source = runner._topology_to_flow(topology, agents)
        assert f"@{environment}(cpu=2, memory=8192)" in source
        assert "@retry(times=2)" in source and "@timeout(seconds=600)" in source
        path = runner.write_flow(topology, agents, tmp_path / f"{environment}_flow.py")
        if shutil.which("unshare") is None:
            continue
        # A cluster flow needs a cloud datastore; `check` only validates, and runs with no network.
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode != 0:
            continue
        check = subprocess.run(
            ["unshare", "-n", sys.executable, str(path), "--quiet", "--datastore=s3", "check"],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "USERNAME": "qmcp-tests",
                "METAFLOW_DATASTORE_SYSROOT_S3": "s3://example/metaflow",
            },
        )
        assert check.returncode == 0, check.stderr


def test_generated_flow_runs_from_the_command_line_as_the_spec_says(
    db_url: str, tmp_path: Path
) -> None:
    qmcp = str(Path(sys.executable).parent / "qmcp")
    env = {**os.environ, "QMCP_DATABASE_URL": db_url, "USERNAME": "qmcp-tests"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [qmcp, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )

    assert cli("agents", "create", "a1", "planner", "--model", "offline").returncode == 0
    assert cli("agents", "create", "a2", "executor", "--model", "offline").returncode == 0
    made = cli(
        "agents",
        "topologies",
        "create",
        "my_debate",
        "pipeline",
        "--slot",
        "one=a1",
        "--slot",
        "two=a2",
    )
    assert made.returncode == 0, made.stderr
    generated = cli("agents", "topologies", "flow", "my_debate")
    assert generated.returncode == 0, generated.stderr
    flow = tmp_path / "generated_flows" / "my_debate_flow.py"
    run = subprocess.run(
        [sys.executable, str(flow), "run", "--input-json", '{"topic": "AI"}'],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    listed = cli("executions", "list", "--format", "json")
    executions = json.loads(listed.stdout)
    assert executions[0]["runner_type"] == "metaflow" and executions[0]["status"] == "completed"
    assert executions[0]["input"] == {"topic": "AI"}
    ran = cli(
        "agents",
        "topologies",
        "run",
        "my_debate",
        "--input-json",
        '{"topic": "AI"}',
        "--runner",
        "metaflow",
    )
    assert ran.returncode == 0, ran.stderr
    assert "completed my_debate on metaflow" in ran.stdout
