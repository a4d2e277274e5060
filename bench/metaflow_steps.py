"""What a generated Metaflow step costs over a trivial one (issue 16, "Lean steps").

    python bench/metaflow_steps.py [--repeat N] [--output FILE]

Two figures, each against its reference from the same run:

- **Import cost inside a step**: a task process imports Metaflow, then the helpers and whatever
  `begin`/`advance`/`finish` import (the list is read from `python -X importtime` of a real
  step's calls). The figure is the CPU time of those imports with Metaflow already imported (and,
  as in a generated flow's task, frozen out of the garbage collector's scans), set beside the CPU
  time of `import metaflow` itself; median over `--repeat` fresh processes (CPU,
  not wall time, so that a busy machine does not swamp it). The store's own libraries
  (SQLAlchemy and its ORM, SQLModel, pydantic) are measured the same way, as the
  floor of that figure. Target: qmcp's imports cost at most 0.15 s more than `import metaflow`.
- **Flow wall time**: the generated flow of a 3-stage pipeline (offline model, SQLite store,
  local datastore) against a trivial flow of as many steps in a line that only sets an artifact,
  both through `metaflow.Runner`, taking turns; medians. Target: ratio <= 1.3. The per-task
  overhead is (qmcp flow - trivial flow) / tasks.

Model calls are the built-in offline model: no network, no key. Everything lives in a temporary
directory; Metaflow's datastore and metadata are local (never a cloud service).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from external import child_env, metaflow_env, run_flow, trivial_flow, warm_bytecode
from rows import median

ROOT = Path(__file__).resolve().parents[1]
IMPORT_TARGET_S = 0.15  # qmcp's imports in a step, above `import metaflow`
RATIO_TARGET = 1.3  # generated 3-stage pipeline flow / trivial flow of as many steps
HELPERS = "qmcp.agentframework.runners.metaflow_helpers"
# What a task process runs, in the order a flow's tasks do, after Metaflow is imported (and the
# generated flow's file has frozen what Metaflow built out of the garbage collector's scans).
STEP = f"""\
import gc, json, sys
import metaflow
gc.freeze()
import {HELPERS} as h
spec = json.load(open(sys.argv[1]))
state = h.begin(spec, {{"prompt": "x"}}, "", "bench-run")
state = h.advance(spec, state, "stage_0")
h.finish(spec, state)
"""

# What the record store cannot do without, whatever qmcp does: SQLAlchemy and its ORM, SQLModel
# and pydantic. Their cost above `import metaflow` is the floor of the figure.
FLOOR_MODULES = ["sqlalchemy.orm", "sqlmodel", "pydantic"]


def write_pipeline(tmp: Path, db: str) -> tuple[Path, dict[str, Any]]:
    """The generated flow of a 3-stage pipeline on the offline model, and its spec."""
    from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType, Models, Topology
    from qmcp.agentframework.runners import MetaflowRunner, RunConfig
    from qmcp.agentframework.runners.base import snapshot_of
    from qmcp.agentframework.topologies import TopologyRegistry

    config = AgentConfig(model_config_obj=Models.OFFLINE).model_dump(mode="json")
    agents = {
        slot: AgentType(name=f"bench_{slot}", role=AgentRole.EXECUTOR, config=config)
        for slot in ("draft", "review", "edit")
    }
    top = Topology(name="bench_three", topology_type="pipeline", config={})
    path = MetaflowRunner(output_dir=tmp, db_url=db).write_flow(top, agents, tmp / "three.py")
    kind_config = TopologyRegistry.get(top.topology_type).validate(top.config, agents.keys())
    spec = snapshot_of(top, agents, kind_config) | {"run_config": RunConfig().model_dump()}
    return path, json.loads(json.dumps(spec, default=str))


def step_imports(env: dict[str, str], cwd: Path, spec_file: Path) -> list[str]:
    """The modules a step imports after Metaflow, in order: the ones the step program itself
    imports (its own lines and the helpers' function-level imports), read from `-X importtime`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", STEP, str(spec_file)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the step program failed: {done.stderr[-2000:]}")
    names, after = [], False
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \| (\s*)(\S+)", line)
        if not match or match.group(1):  # only the imports the program itself makes
            continue
        if match.group(2) == "metaflow":
            after = True
        elif after:
            names.append(match.group(2))
    return names


def import_seconds(modules: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """CPU seconds of `import metaflow`, then of importing `modules` after it, in a new process.
    CPU time, not wall time: on a shared machine other processes' load would swamp the figure."""
    code = (
        "import gc, sys, time\n"
        "t0 = time.process_time()\n"
        "import metaflow\n"
        "t1 = time.process_time()\n"
        "gc.freeze()\n"  # as the generated flow's file does once Metaflow is imported
        f"for name in {modules!r}: __import__(name)\n"
        "t2 = time.process_time()\n"
        "print(t1 - t0, t2 - t1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {modules} failed: {done.stderr[-2000:]}")
    metaflow_s, after_s = (float(x) for x in done.stdout.split())
    return metaflow_s, after_s


def measure(tmp: Path, repeat: int, flows: bool = True) -> dict[str, Any]:
    db = f"sqlite+aiosqlite:///{tmp}/bench.db"
    env = {**child_env(db), **metaflow_env(tmp)}
    warm_bytecode(tmp)
    ours, spec = write_pipeline(tmp, db)
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    steps = ours.read_text().count("    @step")
    trivial = tmp / f"trivial{steps}.py"
    trivial.write_text(trivial_flow(steps))

    imported = step_imports(env, tmp, spec_file)
    metaflow_s, qmcp_s, floor_s = [], [], []
    for _ in range(repeat):  # fresh processes, taking turns
        mf, after = import_seconds(imported, env, tmp)
        metaflow_s.append(mf)
        qmcp_s.append(after)
        floor_s.append(import_seconds(FLOOR_MODULES, env, tmp)[1])
    found: dict[str, Any] = {
        "steps": re.findall(r"def (\w+)\(self", ours.read_text()),
        "repeat": repeat,
        "import_metaflow_s": median(metaflow_s),
        "import_qmcp_in_step_s": median(qmcp_s),
        "import_above_metaflow_s": median(qmcp_s) - median(metaflow_s),
        "import_target_s": IMPORT_TARGET_S,
        "import_floor_s": median(floor_s),
        "step_imports": imported,
    }
    if not flows:
        return found

    walls: dict[str, list[float]] = {"trivial": [], "qmcp": []}
    tasks: dict[str, int] = {}
    run_flow(trivial, env)  # one untimed run each: Metaflow's first-run work is not a task's
    run_flow(ours, env, input_json=json.dumps({"prompt": "x"}))
    for _ in range(repeat):  # taking turns, so a slow spell of the machine hits both alike
        seconds, tasks["trivial"] = run_flow(trivial, env)
        walls["trivial"].append(seconds)
        seconds, tasks["qmcp"] = run_flow(ours, env, input_json=json.dumps({"prompt": "x"}))
        walls["qmcp"].append(seconds)
    if tasks["trivial"] != tasks["qmcp"]:
        raise RuntimeError(f"the flows ran different numbers of tasks: {tasks}")
    trivial_wall, qmcp_wall = median(walls["trivial"]), median(walls["qmcp"])
    return found | {
        "tasks": tasks["qmcp"],
        "trivial_flow_s": trivial_wall,
        "qmcp_flow_s": qmcp_wall,
        "ratio": qmcp_wall / trivial_wall,
        "ratio_target": RATIO_TARGET,
        "per_task_overhead_s": (qmcp_wall - trivial_wall) / tasks["qmcp"],
        "walls": walls,
    }


def report(found: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "pass" if ok else "MISS"

    above = found["import_above_metaflow_s"]
    print(f"flow steps: {' -> '.join(found['steps'])}")
    print(
        f"import metaflow              {found['import_metaflow_s']:.3f} s\n"
        f"qmcp imports inside a step   {found['import_qmcp_in_step_s']:.3f} s "
        f"({above:+.3f} s against import metaflow; target <= +{IMPORT_TARGET_S} s: "
        f"{verdict(above <= IMPORT_TARGET_S)})\n"
        f"  of which the store's libraries {found['import_floor_s']:.3f} s "
        "(sqlalchemy and its orm, sqlmodel, pydantic after metaflow)"
    )
    if "ratio" not in found:
        return
    print(
        f"trivial {len(found['steps'])}-step flow         {found['trivial_flow_s']:.2f} s\n"
        f"generated 3-stage pipeline   {found['qmcp_flow_s']:.2f} s "
        f"(ratio {found['ratio']:.2f}; target <= {RATIO_TARGET}: "
        f"{verdict(found['ratio'] <= RATIO_TARGET)})\n"
        f"per-task overhead            {found['per_task_overhead_s']:.3f} s "
        f"({found['tasks']} tasks; medians of {found['repeat']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="processes and flow runs (5)")
    parser.add_argument("--imports-only", action="store_true", help="skip the flow runs")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qmcp-bench-mf-") as tmp:
        os.environ.update(metaflow_env(Path(tmp)))  # before anything imports metaflow
        found = measure(Path(tmp), args.repeat, flows=not args.imports_only)
    report(found)
    if args.output:
        args.output.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
