"""MetaflowRunner: flow shapes, generated flows, replay determinism, real Metaflow runs.

Fast: each kind's flow-shape declaration; the generated flow's own code driven in-process by a
stand-in for Metaflow's scheduler (every key lands in a declared step; same output as LocalRunner);
replaying finished executions; the spec's helper functions.

Slow (real Metaflow runs, marked `slow`): every kind runs once on every runner in a module fixture
that the conformance, step and replay assertions share; resume; hostile text; the command line.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qmcp.agentframework import service
from qmcp.agentframework.errors import (
    ConflictError,
    QmcpError,
    RunnerError,
    TopologyFailed,
    ValidationError,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    ExecutionStatus,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, MetaflowRunner, RunConfig
from qmcp.agentframework.runners import metaflow_helpers as helpers
from qmcp.agentframework.runners.metaflow_runner import flow_shape, flow_step_name
from qmcp.agentframework.runners.replay import replay
from qmcp.agentframework.store import Store
from qmcp.agentframework.topologies import SubTopology, TopologyRegistry
from qmcp.agentframework.topologies.flow import FlowStep, step_owning

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import metaflow_functions  # noqa: E402, F401  (registers the functions in this process too)

pytestmark = pytest.mark.anyio
slow = pytest.mark.slow

MODELS = {
    "offline": Models.OFFLINE,
    "echo": ModelConfig(provider="function", model="mf_echo"),
    "strict": ModelConfig(provider="function", model="mf_strict"),
    "broken": ModelConfig(provider="function", model="mf_broken"),
}
S, R, C = AgentRole.SPECIALIST, AgentRole.REVIEWER, AgentRole.COORDINATOR
# One topology per kind, built to walk its less common keys too: cross_check revises once
# (`revision-1/…`), chain_of_command escalates twice (`escalation/…`, `escalation-2/…`),
# delegation routes to two specialists and combines. Slots mix the built-in offline model and a
# plugin function model, so every flow exercises both in its task processes.
CASES: dict[str, tuple[TopologyType, dict[str, Any], dict[str, tuple[AgentRole, str]]]] = {
    "pipeline": (
        TopologyType.PIPELINE,
        {},
        {"plan": (AgentRole.PLANNER, "offline"), "do": (AgentRole.EXECUTOR, "echo"),
         "check": (R, "offline")},
    ),
    "ensemble": (
        TopologyType.ENSEMBLE,
        {"aggregation_method": "synthesis"},
        {"ensemble_0": (S, "offline"), "ensemble_1": (S, "echo"), "ensemble_2": (S, "offline"),
         "aggregator": (AgentRole.SYNTHESIZER, "echo")},
    ),
    "cross_check": (
        TopologyType.CROSS_CHECK,
        {"max_revisions": 1},
        {"primary": (AgentRole.EXECUTOR, "offline"), "checker_1": (R, "strict"),
         "checker_2": (R, "strict")},
    ),
    "debate": (
        TopologyType.DEBATE,
        {"max_rounds": 2},
        {"proponent": (S, "offline"), "opponent": (S, "echo"), "mediator": (C, "echo")},
    ),
    "chain_of_command": (
        TopologyType.CHAIN_OF_COMMAND,
        {"escalation_threshold": 0.85},
        {"commander": (AgentRole.PLANNER, "offline"), "lieutenant_1": (C, "echo"),
         "worker_1": (S, "echo"), "worker_2": (S, "offline")},
    ),
    "delegation": (
        TopologyType.DELEGATION,
        {"max_specialists": 2},
        {"coordinator": (C, "offline"), "legal": (S, "echo"), "finance": (S, "offline")},
    ),
}  # fmt: skip
KINDS = [*CASES, "compound"]
# More paths for the in-process flows and the replay test (cheap there).
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    **{f"{name}-offline": (name, {}, {"*": "offline"}) for name in CASES},
    **{f"{name}-echo": (name, {}, {"*": "echo"}) for name in CASES},  # chain: plan repair
    "ensemble-tolerates-a-failure": ("ensemble", {}, {"ensemble_1": "broken"}),
    "ensemble-fails": ("ensemble", {"min_successes": 2}, {"ensemble_0": "broken",
                                                           "ensemble_2": "broken"}),
    "delegation-by-role": ("delegation", {"routing_strategy": "role", "max_specialists": 1}, {}),
    "delegation-to-all": ("delegation", {"routing_strategy": "all", "max_specialists": 1}, {}),
    "cross_check-twice": ("cross_check", {"max_revisions": 2}, {}),
}  # fmt: skip
INPUT = {
    "prompt": "Should we ship on Friday?",
    "task": "Should we ship on Friday?",
    "topic": "Friday ships",
}


def agent(name: str, role: AgentRole, model: ModelConfig, **config: Any) -> AgentType:
    return AgentType(
        name=name,
        description=f"{name} description",
        role=role,
        config=AgentConfig(model_config_obj=model, **config).model_dump(mode="json"),
    )


def build(name: str) -> tuple[Topology, dict[str, Any]]:
    """A case (a kind, `compound`, or a variant) as a topology and its agents."""
    if name == "compound":  # an ensemble nested as the middle stage of a pipeline
        inner_topology, inner_agents = build("ensemble")
        agents = {
            "draft": agent("compound_draft", AgentRole.EXECUTOR, MODELS["echo"]),
            "panel": SubTopology(inner_topology, inner_agents),
            "edit": agent("compound_edit", AgentRole.EXECUTOR, MODELS["offline"]),
        }
        return Topology(name="conf_compound", topology_type=TopologyType.PIPELINE), agents
    base, extra_config, models = VARIANTS.get(name, (name, {}, {}))
    kind, config, slots = CASES[base]
    agents = {
        slot: agent(f"{base}_{slot}", role, MODELS[models.get(slot, models.get("*", model))])
        for slot, (role, model) in slots.items()
    }
    topology = Topology(
        name=f"conf_{name.replace('-', '_')}", topology_type=kind, config=config | extra_config
    )
    return topology, agents


def keys_of(rows: list[Any]) -> list[str]:
    return sorted({row.key for row in rows})


def recorded_outcomes(rows: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """A finished execution's outcome per key, from its rows: the completed answer, else the
    failure (each key of these cases is asked once; failed attempts before a success are the
    engine's retries, inside one invocation)."""
    outcomes: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.status == "completed":
            outcomes[row.key] = [{"ok": row.output}]
        elif row.key not in outcomes or "failed" in outcomes[row.key][0]:
            outcomes[row.key] = [{"failed": row.error}]
    return outcomes


def declared_step(topology: Topology, agents: dict[str, Any], key: str) -> str:
    """The flow step the kind's declaration gives a key (`end` for a key no step owns)."""
    kind = TopologyRegistry.get(topology.topology_type)
    shape = flow_shape(kind, kind.parse_config(topology.config), list(agents))
    owner = step_owning(shape, key)
    return END if owner is None else flow_step_name(shape.index(owner), owner)


END = helpers.END


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the function models log their calls (QMCP_TEST_STATE_DIR)."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("QMCP_TEST_STATE_DIR", str(state))
    return state


@pytest.fixture
def metaflow_env(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a real flow's task processes need: the plugin functions and this checkout."""
    monkeypatch.setenv("QMCP_PLUGINS", "metaflow_functions")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    monkeypatch.chdir(tmp_path)
    return state_dir


# -- flow shapes ----------------------------------------------------------------------------


def test_a_step_owns_keys_segment_by_segment_and_branches_by_its_last_pattern_segment() -> None:
    stage = FlowStep("stage_1", ("stage-1/*",))
    assert stage.match("stage-1/plan") == "plan"
    assert stage.match("stage-1/panel/ensemble_0") == "panel", "a nested topology's calls"
    assert stage.match("stage-10/plan") is None and stage.match("stage-1") is None
    checkers = FlowStep("checkers", ("checker_*",), foreach=True)
    assert checkers.match("checker_2") == "checker_2"
    assert checkers.match("revision-1/checker_2") is None
    subtasks = FlowStep("subtasks", ("worker_*/subtask-*", "escalation-*/subtask-*"))
    assert subtasks.match("worker_1/subtask-3") == subtasks.match("escalation-2/subtask-3")
    assert subtasks.match("escalation/subtask-3") is None
    for bad in ("Stage", "1st", "a-b", "x" * 49, 'a"); import os #'):
        with pytest.raises(ValidationError):
            FlowStep(bad, ("*",))


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_declares_its_flow_and_the_flow_has_those_steps(
    name: str, tmp_path: Path
) -> None:
    topology, agents = build(name)
    kind = TopologyRegistry.get(topology.topology_type)
    assert kind.flow_shape is not None, f"{kind.type.value} declares no flow shape"
    shape = flow_shape(kind, kind.parse_config(topology.config), list(agents))
    source = MetaflowRunner(output_dir=tmp_path)._topology_to_flow(topology, agents)
    defined = [n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
    expected = ["start"]
    for index, step in enumerate(shape):
        name_in_flow = flow_step_name(index, step)
        expected += [name_in_flow, f"{name_in_flow}_join"] if step.foreach else [name_in_flow]
    assert defined == [*expected, "end"]


# -- the generated flow, in-process ---------------------------------------------------------


class FakeFlowSpec:
    """Stands in for Metaflow's FlowSpec: records the transition a step asks for."""

    def next(self, target: Any, foreach: str | None = None) -> None:
        self.transition = (target.__name__, foreach)


def fake_metaflow() -> types.ModuleType:
    module = types.ModuleType("metaflow")
    module.FlowSpec = FakeFlowSpec  # type: ignore[attr-defined]
    module.step = lambda fn: fn  # type: ignore[attr-defined]
    module.Parameter = lambda name, **kw: kw.get("default")  # type: ignore[attr-defined]
    module.JSONType = str  # type: ignore[attr-defined]
    module.current = types.SimpleNamespace(run_id="in-process", is_running_flow=False)  # type: ignore[attr-defined]
    return module


def run_in_process(
    runner: MetaflowRunner,
    topology: Topology,
    agents: dict[str, Any],
    data: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    execution_id: str = "",
) -> tuple[Any, Counter[str]]:
    """Run the generated flow's own code, step by step as Metaflow would schedule it (a foreach
    step once per item, then its join over the branches); the end step's flow and the number of
    tasks each step ran."""
    monkeypatch.setitem(sys.modules, "metaflow", fake_metaflow())
    namespace: dict[str, Any] = {"__name__": "generated_flow"}
    exec(compile(runner._topology_to_flow(topology, agents), "<flow>", "exec"), namespace)
    cls = next(
        v for v in namespace.values() if isinstance(v, type) and FakeFlowSpec in v.__mro__[1:]
    )
    flow = cls()
    flow.input_json, flow.execution_id = data, execution_id
    tasks: Counter[str] = Counter()
    name, inputs = "start", None
    while True:
        step = getattr(cls, name)
        step(flow) if inputs is None else step(flow, inputs)
        tasks[name] += 1
        if name == "end":
            return flow, tasks
        target, foreach = flow.transition
        if foreach is None:
            name, inputs = target, None
            continue
        branches = []
        for item in getattr(flow, foreach):
            branch = copy.copy(flow)
            branch.input = item
            getattr(cls, target)(branch)
            tasks[target] += 1
            branches.append(branch)
        flow, name, inputs = cls(), branches[0].transition[0], branches


def check_steps(
    topology: Topology, agents: dict[str, Any], rows: list[Any], steps: dict[str, str]
) -> None:
    """Every recorded key was answered by a declared step (never `end`), the one that owns it."""
    assert sorted(steps) == keys_of(rows), "a step is recorded for every key"
    for key, step in steps.items():
        assert step != END, f"{key} fell through to the end step"
        assert step == declared_step(topology, agents, key), key


@pytest.mark.parametrize("name", [*KINDS, *VARIANTS])
async def test_generated_flow_in_process_lands_every_key_in_a_declared_step(
    name: str, db_url: str, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology, agents = build(name)
    local = await LocalRunner(db_url=db_url).run(topology, agents, INPUT)
    runner = MetaflowRunner(output_dir=tmp_path, db_url=db_url)
    if local.status == "failed":
        with pytest.raises(TopologyFailed, match="members succeeded"):
            await asyncio.to_thread(run_in_process, runner, topology, agents, INPUT, monkeypatch)
        return
    assert local.status == "completed", local.error
    flow, tasks = await asyncio.to_thread(
        run_in_process, runner, topology, agents, INPUT, monkeypatch
    )
    assert flow.output == local.output
    store = Store(db_url)
    ident = uuid.UUID(flow.state["execution_id"])
    record = await store.get_execution(ident)
    rows = await store.invocations(ident)
    assert record.status == "completed" and record.output == local.output
    assert keys_of(rows) == keys_of(await store.invocations(local.execution_id))
    steps = await store.flow_steps(ident)
    assert steps == flow.state["steps"]
    check_steps(topology, agents, rows, steps)
    for step in set(steps.values()):  # a foreach step ran one task per branch
        kind = TopologyRegistry.get(topology.topology_type)
        shape = flow_shape(kind, kind.parse_config(topology.config), list(agents))
        declared = next(s for i, s in enumerate(shape) if flow_step_name(i, s) == step)
        if declared.foreach:
            branches = {declared.match(k) for k, s in steps.items() if s == step}
            assert tasks[step] == len(branches), step


async def test_a_kind_without_a_flow_shape_runs_in_the_end_step(
    db_url: str, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology, agents = build("cross_check")
    kind = TopologyRegistry.get(topology.topology_type)
    monkeypatch.setitem(
        TopologyRegistry._items, kind.type.value, dataclasses.replace(kind, flow_shape=None)
    )
    runner = MetaflowRunner(output_dir=tmp_path, db_url=db_url)
    flow, tasks = await asyncio.to_thread(
        run_in_process, runner, topology, agents, INPUT, monkeypatch
    )
    local = await LocalRunner(db_url=db_url).run(topology, agents, INPUT)
    assert flow.output == local.output and set(tasks) == {"start", "end"}
    record = await Store(db_url).get_execution(flow.state["execution_id"])
    assert set((await Store(db_url).flow_steps(record.id)).values()) == {END}


async def test_a_resume_without_its_flow_file_runs_a_new_flow_that_reuses_checkpoints(
    db_url: str, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelConfig(provider="function", model="mf_fail_once")
    agents = {s: agent(f"stage_{s}", AgentRole.EXECUTOR, model) for s in ("first", "second")}
    topology = Topology(
        name="regenerated",
        topology_type=TopologyType.PIPELINE,
        config={"retry_failed_stages": False},
    )
    (state_dir / "fail_slot").write_text("second")
    runner = MetaflowRunner(
        output_dir=tmp_path / "flows", db_url=db_url, config=RunConfig(retry_on_failure=False)
    )
    failed = await LocalRunner(db_url=db_url, config=runner.config).run(topology, agents, INPUT)
    assert failed.status == "failed"
    store = Store(db_url)
    execution = await store.get_execution(failed.execution_id)
    info = await runner._flow_file(execution)  # no flow file yet: one is written
    assert Path(info["flow_file"]).is_file() and "run_id" not in info
    await runner._remember(failed.execution_id, {"run_id": "17"})
    execution = await store.get_execution(failed.execution_id)
    assert await runner._flow_file(execution) == {**info, "run_id": "17"}, "current: resumed"
    Path(info["flow_file"]).write_text("# generated by another version\n")
    fresh = await runner._flow_file(execution)
    assert fresh["flow_file"] != info["flow_file"] and "run_id" not in fresh, "stale: a new flow"
    record = await store.get_execution(failed.execution_id)
    assert (record.metaflow_flow_file, record.metaflow_run_id) == (fresh["flow_file"], None)

    (state_dir / "healed").write_text("yes")
    flow, _ = await asyncio.to_thread(
        run_in_process, runner, topology, agents, INPUT, monkeypatch, str(failed.execution_id)
    )
    calls = [
        json.loads(line)["slot"] for line in (state_dir / "calls.log").read_text().splitlines()
    ]
    assert calls == ["first", "second", "second"], "first answered from its checkpoint"
    record = await store.get_execution(failed.execution_id)
    assert record.status == "completed" and record.output == flow.output
    assert record.duration_ms is not None and record.duration_ms >= (execution.duration_ms or 0)


# -- determinism: replaying a finished execution --------------------------------------------


async def check_replay(
    topology: Topology,
    agents: dict[str, Any],
    rows: list[Any],
    status: str,
    output: Any,
    error: Any,
) -> None:
    """The program over the execution's recorded outcomes: its output (or its failure), no new
    invocation, every recorded outcome asked for once, whatever order the outcomes come in."""
    kind = TopologyRegistry.get(topology.topology_type)
    config = kind.parse_config(topology.config)
    outcomes = recorded_outcomes(rows)
    for order in (outcomes, dict(reversed(outcomes.items()))):
        if status == "failed":
            with pytest.raises(QmcpError) as failed:
                await replay(kind, config, agents, INPUT, order)
            assert str(failed.value) == error
            continue
        replayed = await replay(kind, config, agents, INPUT, order)
        assert replayed.pending == [], "the replay asked for a new invocation"
        assert replayed.output == output
        assert replayed.asked == {key: 1 for key in outcomes}


@pytest.mark.parametrize("name", [*KINDS, *VARIANTS])
async def test_replaying_a_finished_execution_gives_its_output_and_asks_for_nothing(
    name: str, db_url: str, state_dir: Path
) -> None:
    topology, agents = build(name)
    store = Store(db_url)
    for runner in (LocalRunner(db_url=db_url), AsyncRunner(db_url=db_url, max_concurrent=4)):
        result = await runner.run(topology, agents, INPUT)
        rows = await store.invocations(result.execution_id)
        assert rows, name
        await check_replay(topology, agents, rows, result.status, result.output, result.error)


# -- the spec's helper functions ------------------------------------------------------------


async def test_the_spec_helpers_aggregate_judge_invoke_and_save(db_url: str) -> None:
    method_outputs = [("a", {"content": "yes"}), ("b", {"content": "yes"}), ("c", "no")]
    assert helpers.aggregate_results(method_outputs, "vote")["content"] == "yes"
    concat = helpers.aggregate_results([{"slot": "x", "content": "1"}, {"content": "2"}], "concat")
    assert "1" in concat["content"] and "2" in concat["content"]
    votes = [{"approved": True, "confidence": 0.9}, {"approved": False, "confidence": 0.2}]
    assert helpers.determine_consensus({"content": "x"}, votes, "unanimous")["approved"] is False
    assert helpers.determine_consensus({"content": "x"}, votes, "weighted")["approved"] is True

    helpers._CURRENT.pop("execution_id", None)  # outside a flow's step: nothing recorded
    answer = await asyncio.to_thread(
        helpers.invoke_agent,
        {
            "name": "solo",
            "role": "executor",
            "config": {"model_config_obj": Models.OFFLINE.model_dump()},
        },
        {"prompt": "hello"},
    )
    assert answer["agent"] == "solo" and answer["content"]

    topology, agents = build("pipeline")
    stored = await Store(db_url).add_topology(topology, {})  # an execution of a stored topology
    prepared = await MetaflowRunner(db_url=db_url).start(stored, agents, INPUT)
    assert prepared.execution.topology_id == stored.id is not None
    ident = str(prepared.execution_id)
    with pytest.raises(RunnerError, match="needs the execution id"):
        helpers.save_execution(None, {"content": "done"})
    with pytest.raises(ConflictError, match="belongs to topology"):
        await asyncio.to_thread(helpers.save_execution, 999_999, {"content": "x"}, ident)
    await asyncio.to_thread(helpers.save_execution, None, {"content": "done"}, ident)
    record = await Store(db_url).get_execution(prepared.execution_id)
    assert record.status == ExecutionStatus.COMPLETED and record.output == {"content": "done"}
    assert record.owner is None and record.duration_ms is not None and record.duration_ms >= 0


def test_a_program_can_be_driven_by_hand_with_ad_hoc_steps(db_url: str, state_dir: Path) -> None:
    """`advance` with key patterns instead of a declared step (what the benchmarks do)."""
    topology, agents = build("cross_check")
    runner = MetaflowRunner(db_url=db_url)
    spec = json.loads(ast.literal_eval(spec_literal(runner, topology, agents)))
    state = helpers.begin(spec, INPUT, "", "by-hand")
    state = helpers.advance(spec, state, ["primary"])
    assert list(state["outcomes"]) == ["primary"] and state["steps"] == {"primary": "adhoc"}
    state = helpers.advance(spec, state, ["*"])
    output = helpers.finish(spec, state)
    local = asyncio.run(LocalRunner(db_url=db_url).run(topology, agents, INPUT))
    assert output == local.output


def spec_literal(runner: MetaflowRunner, topology: Topology, agents: dict[str, Any]) -> str:
    """The SPEC string literal of a generated flow."""
    for node in ast.parse(runner._topology_to_flow(topology, agents)).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SPEC":
            assert isinstance(node.value, ast.Call)
            return ast.unparse(node.value.args[0])
    raise AssertionError("no SPEC in the flow")


def test_resource_names_and_values_are_checked(tmp_path: Path) -> None:
    key = "cpu=1)\n__import__('os').system('touch PWNED')\n@retry(times=1"
    for resources in ({key: 1}, {"cpu": float("nan")}, {"cpu": [1]}, {"cpu": True}):
        with pytest.raises(ValidationError):
            MetaflowRunner(output_dir=tmp_path, environment="kubernetes", resources=resources)
    runner = MetaflowRunner(
        output_dir=tmp_path, environment="kubernetes", resources={"memory": "4G')#"}
    )
    topology, agents = build("pipeline")
    source = runner._topology_to_flow(topology, agents)
    assert "4G')#" not in source
    compile(source, "<flow>", "exec")


# -- real Metaflow runs (slow) --------------------------------------------------------------


HOSTILE = [
    'x"); import os; os.system("echo pwned") #',
    "tri'''ple\"\"\"quotes",
    "back\\slash\\n and \n real newline",
    "ünïcödé ✓ 名前 # not a comment",
    "{__import__('os').getcwd()}",
]
HOSTILE_SLOT = "ensemble_\"'''; import sys #"
HOSTILE_INPUT = {"prompt": HOSTILE[2], "extra": HOSTILE[3]}


def hostile_case() -> tuple[Topology, dict[str, Any]]:
    """An ensemble whose names, descriptions, prompts and one slot are code-like text."""
    model = MODELS["echo"]
    agents = {
        f"ensemble_{i}": AgentType(
            name=text,
            description=text,
            role=AgentRole.SPECIALIST,
            config=AgentConfig(model_config_obj=model, system_prompt=text).model_dump(mode="json"),
        )
        for i, text in enumerate(HOSTILE)
    }
    agents[HOSTILE_SLOT] = agents.pop("ensemble_4")
    topology = Topology(
        name=HOSTILE[0],
        description=HOSTILE[1],
        topology_type=TopologyType.ENSEMBLE,
        config={"aggregation_method": "concat"},
    )
    return topology, agents


def tools_case(root: Path) -> tuple[Topology, dict[str, Any]]:
    """A pipeline whose first stage calls a read-only tool of a real MCP server (the offline
    model picks it), inside the Metaflow step as in-process."""
    server = {
        "name": "t",
        "command": sys.executable,
        "args": [str(ROOT / "tests" / "tool_server.py")],
        "env": {"TOOL_SERVER_LOG": str(root / "tool_calls.jsonl")},
    }
    config = AgentConfig(model_config_obj=Models.OFFLINE, tools=[server]).model_dump(mode="json")
    agents = {
        "research": AgentType(name="mf_researcher", role=AgentRole.EXECUTOR, config=config),
        "write": agent("mf_writer", AgentRole.EXECUTOR, MODELS["echo"]),
    }
    return Topology(name="tools_pipeline", topology_type=TopologyType.PIPELINE), agents


@dataclass
class Flowed:
    """One case run on every runner, with what the assertions read back."""

    topology: Topology
    agents: dict[str, Any]
    local: Any
    concurrent: Any
    flowed: Any
    local_rows: list[Any]
    flow_rows: list[Any]
    record: Any
    tasks: dict[str, int]  # Metaflow tasks per step of the flow's run
    cwd: Path
    steps: dict[str, str]  # the flow step that answered each key (`Store.flow_steps`)


def metaflow_tasks(datastore: Path, flow_file: str, run_id: str) -> dict[str, int]:
    """Tasks per step of a local Metaflow run, from its datastore."""
    source = Path(flow_file).read_text("utf-8")
    cls = next(n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    run = datastore / ".metaflow" / cls / run_id
    return {
        step.name: sum(1 for t in step.iterdir() if t.name.isdigit())
        for step in run.iterdir()
        if step.is_dir() and not step.name.startswith("_")
    }


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Flowed]]:
    """Every kind, and the hostile ensemble, once on LocalRunner, AsyncRunner and MetaflowRunner
    (Metaflow runs two at a time), for the assertions below to share."""
    root = tmp_path_factory.mktemp("metaflow_flows")
    (root / "state").mkdir()
    db_url = f"sqlite+aiosqlite:///{root}/agent.db"
    with pytest.MonkeyPatch.context() as env:
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
            env.delenv(name, raising=False)
        env.setenv("USERNAME", os.environ.get("USERNAME", "qmcp-tests"))
        env.setenv("QMCP_DATABASE_URL", db_url)
        env.setenv("QMCP_TEST_STATE_DIR", str(root / "state"))
        env.setenv("QMCP_PLUGINS", "metaflow_functions")
        env.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
        env.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(root / "metaflow"))
        env.chdir(root)
        yield asyncio.run(run_everywhere(root, db_url))


async def run_everywhere(root: Path, db_url: str) -> dict[str, Flowed]:
    bound = asyncio.Semaphore(2)  # the machine's cores; more only adds contention
    store = Store(db_url)

    async def one(name: str) -> Flowed:
        if name == "tools":
            topology, agents = tools_case(root)
        else:
            topology, agents = hostile_case() if name == "hostile" else build(name)
        data = HOSTILE_INPUT if name == "hostile" else INPUT
        local = await LocalRunner(db_url=db_url).run(topology, agents, data)
        concurrent = await AsyncRunner(db_url=db_url, max_concurrent=4).run(topology, agents, data)
        async with bound:
            flowed = await MetaflowRunner(output_dir=root / "flows", db_url=db_url).run(
                topology, agents, data
            )
        record = await store.get_execution(flowed.execution_id)
        return Flowed(
            topology,
            agents,
            local,
            concurrent,
            flowed,
            await store.invocations(local.execution_id),
            await store.invocations(flowed.execution_id),
            record,
            metaflow_tasks(root / "metaflow", record.metaflow_flow_file, record.metaflow_run_id),
            root,
            await store.flow_steps(flowed.execution_id),
        )

    names = [*KINDS, "hostile", "tools"]
    try:
        done = await asyncio.gather(*(one(name) for name in names))
    finally:
        await store.close()
    return dict(zip(names, done, strict=True))


@slow
def test_hostile_names_and_text_are_data_not_code(flows: dict[str, Flowed], tmp_path: Path) -> None:
    ran = flows["hostile"]
    runner = MetaflowRunner(output_dir=tmp_path)
    source = runner._topology_to_flow(ran.topology, ran.agents)
    for text in HOSTILE:
        assert text not in source
    path = runner.write_flow(ran.topology, ran.agents, tmp_path / "hostile_flow.py")
    check = subprocess.run(
        [sys.executable, str(path), "--quiet", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "USERNAME": "qmcp-tests"},
    )
    assert check.returncode == 0, check.stderr
    assert ran.flowed.status == "completed", ran.flowed.error
    assert ran.flowed.output == ran.local.output
    assert HOSTILE[0] in ran.flowed.output["content"]
    assert HOSTILE_SLOT in ran.flowed.output["content"]
    assert ran.steps[HOSTILE_SLOT] == "s0_members"
    assert ran.tasks["s0_members"] == len(ran.agents), "a branch per member, the hostile one too"
    assert not (ran.cwd / "pwned").exists()


@slow
def test_a_tool_using_agent_gives_the_same_output_and_tool_calls_on_every_runner(
    flows: dict[str, Flowed],
) -> None:
    ran = flows["tools"]
    assert ran.flowed.status == "completed", ran.flowed.error
    assert ran.flowed.output == ran.local.output == ran.concurrent.output
    assert "What the tools said" in ran.flowed.output["stages"][0]["content"]
    db_url = f"sqlite+aiosqlite:///{ran.cwd}/agent.db"

    async def calls(execution_id: Any) -> list[tuple[Any, ...]]:
        rows = (await Store(db_url).tool_calls(execution_id)).values()
        fields = ("key", "call_id", "server", "tool", "arguments", "status", "result", "is_error")
        return [tuple(str(r[f]) for f in fields) for r in rows]

    async def everywhere() -> list[list[tuple[Any, ...]]]:
        runs = (ran.local, ran.concurrent, ran.flowed)
        return [await calls(r.execution_id) for r in runs]

    local, concurrent, flowed = asyncio.run(everywhere())
    assert len(local) == 1 and local == concurrent == flowed
    log = [json.loads(line) for line in (ran.cwd / "tool_calls.jsonl").read_text().splitlines()]
    assert [c["tool"] for c in log] == ["lookup"] * 3, "one call per runner, at the server"


@slow
@pytest.mark.parametrize("name", KINDS)
def test_every_kind_gives_the_same_output_on_every_runner(
    name: str, flows: dict[str, Flowed]
) -> None:
    ran = flows[name]
    assert ran.local.status == "completed", ran.local.error
    assert ran.flowed.status == "completed", ran.flowed.error
    assert ran.flowed.runner_type == "metaflow"
    assert ran.flowed.output == ran.local.output == ran.concurrent.output
    assert keys_of(ran.flow_rows) == keys_of(ran.local_rows)
    assert ran.record.status == "completed"
    assert ran.record.invocation_count == len(ran.flow_rows) and ran.record.input_tokens > 0
    assert ran.record.duration_ms is not None and ran.record.duration_ms > 0


@slow
@pytest.mark.parametrize("name", KINDS)
def test_every_key_lands_in_a_named_step_of_the_metaflow_run(
    name: str, flows: dict[str, Flowed]
) -> None:
    ran = flows[name]
    steps = ran.steps
    check_steps(ran.topology, ran.agents, ran.flow_rows, steps)
    for step in set(steps.values()):
        assert ran.tasks.get(step), f"the Metaflow run has no task of {step}"
        if step + "_join" in ran.tasks:  # a foreach step: one task per branch
            kind = TopologyRegistry.get(ran.topology.topology_type)
            config = kind.parse_config(ran.topology.config)
            shape = flow_shape(kind, config, list(ran.agents))
            declared = next(s for i, s in enumerate(shape) if flow_step_name(i, s) == step)
            branches = {declared.match(k) for k, s in steps.items() if s == step}
            assert ran.tasks[step] == len(branches), step
    if name == "cross_check":
        assert {"revision-1/primary", "revision-1/checker_1"} <= set(steps)
    if name == "chain_of_command":
        assert any(k.startswith("escalation-2/") for k in steps), sorted(steps)


@slow
@pytest.mark.parametrize("name", KINDS)
async def test_replaying_a_metaflow_execution_gives_its_output(
    name: str, flows: dict[str, Flowed]
) -> None:
    ran = flows[name]
    output = ran.flowed.output
    await check_replay(ran.topology, ran.agents, ran.flow_rows, "completed", output, None)


@slow
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
    store = Store(db_url)
    first_segment = (await store.get_execution(failed.execution_id)).duration_ms
    assert first_segment is not None and first_segment > 0
    (metaflow_env / "healed").write_text("yes")
    resumed = await runner.resume(failed.execution_id)
    assert resumed.status == "completed", resumed.error
    calls = [
        json.loads(line)["slot"] for line in (metaflow_env / "calls.log").read_text().splitlines()
    ]
    assert calls == ["first", "second", "second", "third"]
    local = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "go"})
    assert resumed.output == local.output
    rows = await store.invocations(failed.execution_id)
    completed = [r.key for r in rows if r.status == "completed"]
    assert sorted(completed) == sorted(set(completed)), "exactly one completed invocation per key"
    record = await store.get_execution(failed.execution_id)
    assert record.duration_ms is not None and record.duration_ms > first_segment, (
        "the duration sums both run segments"
    )
    assert await store.flow_steps(failed.execution_id) == {
        "stage-0/first": "s0_stage_0",
        "stage-1/second": "s1_stage_1",
        "stage-2/third": "s2_stage_2",
    }


USER_NAMES = ("USERNAME", "USER", "METAFLOW_USER", "SUDO_USER")


def no_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root in a bare container: no variable Metaflow takes a user name from, and no
    namespace this process's Metaflow Client already resolved from one."""
    import metaflow.client.core
    import metaflow.metaflow_config
    from metaflow.util import get_username

    for name in USER_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(metaflow.metaflow_config, "USER", None)  # METAFLOW_USER, read at import
    monkeypatch.setattr(metaflow.client.core, "current_namespace", False)  # resolve it again
    assert get_username() is None


@slow
async def test_runs_with_no_user_name_as_the_readme_promises(
    metaflow_env: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_user_name(monkeypatch)
    agents = {"only": agent("lone", AgentRole.EXECUTOR, Models.OFFLINE)}
    topology = Topology(name="lone", topology_type=TopologyType.PIPELINE)
    runner = MetaflowRunner(output_dir=tmp_path / "flows", db_url=db_url)
    result = await runner.run(topology, agents, {"prompt": "go"})
    assert result.status == "completed", result.error
    local = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "go"})
    assert result.output == local.output
    record = await Store(db_url).get_execution(result.execution_id)
    assert record.metaflow_run_id, "the parent's Metaflow Client found the run"
    assert not any(name in os.environ for name in USER_NAMES), "the fallback name is scoped"


@slow
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


@slow
async def test_generated_flow_runs_from_the_command_line_as_the_spec_says(
    metaflow_env: Path, db_url: str, tmp_path: Path
) -> None:
    qmcp = str(Path(sys.executable).parent / "qmcp")
    env = {**os.environ, "QMCP_DATABASE_URL": db_url, "USERNAME": "qmcp-tests"}
    await service.create_agent("a1", "planner", model="offline", db_url=db_url)
    await service.create_agent("a2", "executor", model="offline", db_url=db_url)
    await service.create_topology(
        "my_debate", "pipeline", {"one": "a1", "two": "a2"}, db_url=db_url
    )

    # The CLI's runner needs no user name (README); a flow file run directly by Metaflow does.
    bare = {k: v for k, v in env.items() if k not in USER_NAMES}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [qmcp, *args], capture_output=True, text=True, env=bare, cwd=tmp_path, timeout=300
        )

    flow_args = ("agents", "topologies", "flow", "my_debate", "--output-dir", "generated_flows")
    generated = await asyncio.to_thread(cli, *flow_args)
    assert generated.returncode == 0, generated.stderr
    flow = tmp_path / "generated_flows" / "my_debate_flow.py"
    # The spec's two ways side by side: the flow file run directly, and the CLI's metaflow runner.
    direct = subprocess.Popen(
        [sys.executable, str(flow), "run", "--input-json", '{"topic": "AI"}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    args = ("agents", "topologies", "run", "my_debate", "--input-json", '{"topic": "AI"}')
    ran = await asyncio.to_thread(cli, *args, "--runner", "metaflow")
    _, stderr = await asyncio.to_thread(direct.communicate, timeout=300)
    assert direct.returncode == 0, stderr[-2000:]
    assert ran.returncode == 0, ran.stderr
    assert "completed my_debate on metaflow" in ran.stdout
    executions = await service.list_executions(db_url=db_url)
    assert len(executions) == 2
    for execution in executions:
        assert execution.runner_type == "metaflow" and execution.status == "completed"
        assert execution.input == {"topic": "AI"}
