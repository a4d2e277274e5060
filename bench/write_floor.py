"""What recording a run costs at the least, on the write path the design allows.

    python bench/write_floor.py [--rounds N] [--output FILE]

Issue 10's targets give qmcp a budget per invocation for *everything* it does (0.5x LangGraph's
overhead without checkpoints, 0.1x with), and DESIGN.md says the store is "SQLModel over
SQLAlchemy; one write path per backend". This measures the records alone, to show how much of
the budget the design's write path leaves for the rest.

The writes of one 3-stage pipeline run, on a SQLite file (WAL, synchronous=NORMAL):

- plain (`checkpoint_enabled=False`): insert the execution and commit; then insert its 3
  invocation rows, update the execution (status, output, totals) and commit: 2 transactions;
- durable: insert the execution and commit, commit each invocation row on its own, update the
  execution and commit: 5 transactions.

Each shape is written three ways, the same rows and settings, taking turns run by run with
qmcp's whole run and LangGraph's (as in `bench/run.py`'s `versus` group), in one process:

1. **store**: qmcp's `Store` (`add_execution`, `record_invocations`, `finish_execution`), as a run
   calls it on the event loop;
2. **sqlalchemy**: the same statements as SQLAlchemy Core on one synchronous connection and
   nothing else: the least any write path on SQLAlchemy can cost;
3. **sqlite3**: the same SQL through Python's `sqlite3` module: the least any write path costs.

The budget is the target times LangGraph's whole run, measured alongside. Then the import
floor: CPU time of importing the store's libraries in a fresh process, beside the `qmcp agents
list` target (0.25 s for the whole command) and a Metaflow task's budget (from
bench/results/metaflow_steps.json: a 1.3x flow leaves 0.3 x trivial flow / tasks per task).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import median
from store_bench import invocation  # an invocation row as the engine writes it

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STAGES = 3
SNAPSHOT = {  # about the size of a 3-stage pipeline's snapshot (topology, agents, run config)
    "topology": {"name": "bench", "topology_type": "pipeline", "config": {}},
    "agents": {
        f"stage_{i}": {
            "name": f"agent_{i}",
            "role": "executor",
            "config": {"model_config_obj": {"provider": "function", "model": "bench"}},
        }
        for i in range(STAGES)
    },
    "run_config": {"checkpoint_enabled": True, "max_retries": 3, "timeout_seconds": 300},
}


def execution_row() -> dict[str, Any]:
    from qmcp.agentframework.models import ExecutionStatus

    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4(),
        "topology_name": "bench",
        "runner_type": "local",
        "status": ExecutionStatus.RUNNING,
        "input": {"prompt": "x"},
        "snapshot": SNAPSHOT,
        "owner": "bench:1",
        "created_at": now,
        "started_at": now,
        "input_tokens": 0,
        "output_tokens": 0,
        "invocation_count": 0,
    }


def finish_values() -> dict[str, Any]:
    from qmcp.agentframework.models import ExecutionStatus

    return {
        "status": ExecutionStatus.COMPLETED,
        "output": {"content": "ok"},
        "completed_at": datetime.now(UTC),
        "duration_ms": 1,
        "input_tokens": STAGES,
        "output_tokens": STAGES,
        "invocation_count": STAGES,
        "owner": None,
        "lease_expires_at": None,
    }


# -- the three ways ------------------------------------------------------------------------


class StoreWay:
    """qmcp's store, as a run calls it."""

    def __init__(self, url: str) -> None:
        from qmcp.agentframework.store import Store

        self.store = Store(url)

    async def setup(self) -> None:
        await self.store.init()

    async def run(self, durable: bool) -> None:
        from qmcp.agentframework.models import Execution, ExecutionStatus

        columns = Execution.__table__.columns  # type: ignore[attr-defined]
        # Every column given, as the runner builds it (`model_construct`, no validation):
        execution = Execution.model_construct(**{c.name: None for c in columns} | execution_row())
        await self.store.add_execution(execution)
        rows = [invocation(execution.id, i) for i in range(STAGES)]
        if durable:
            for row in rows:
                await self.store.record_invocations([row])
        await self.store.finish_execution(
            execution.id,
            status=ExecutionStatus.COMPLETED,
            output={"content": "ok"},
            error=None,
            duration_ms=1,
            invocations=() if durable else rows,
        )

    async def close(self) -> None:
        await self.store.close()


class SqlalchemyWay:
    """The same statements as SQLAlchemy Core on one synchronous connection."""

    def __init__(self, path: Path) -> None:
        from sqlalchemy import create_engine, event, insert, update

        from qmcp.agentframework.models import Execution, Invocation

        self.engine = create_engine(f"sqlite:///{path}")
        event.listen(self.engine, "connect", _pragmas)
        executions, invocations = Execution.__table__, Invocation.__table__  # type: ignore[attr-defined]
        self.insert_execution = insert(executions)
        self.insert_invocations = insert(invocations)
        self.finish = update(executions).where(executions.c.id == _bind("ident"))
        self.connection = self.engine.connect()

    async def setup(self) -> None:
        pass

    async def run(self, durable: bool) -> None:
        c = self.connection
        row = execution_row()
        with c.begin():
            c.execute(self.insert_execution, row)
        rows = [invocation(row["id"], i) for i in range(STAGES)]
        if durable:
            for one in rows:
                with c.begin():
                    c.execute(self.insert_invocations, [one])
        with c.begin():
            if not durable:
                c.execute(self.insert_invocations, rows)
            c.execute(self.finish, finish_values() | {"ident": row["id"]})

    async def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


class Sqlite3Way:
    """The same SQL through Python's sqlite3 module, values converted as SQLAlchemy stores
    them (UUIDs as 32 hex digits, enums by name, JSON as text, datetimes as text)."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        _pragmas(self.connection, None)
        columns = list(execution_row())
        self.insert_execution = _insert_sql("executions", columns)
        self.insert_invocation = _insert_sql("invocations", list(invocation(uuid.uuid4(), 0)))
        finish = list(finish_values())
        self.finish = f"UPDATE executions SET {', '.join(f'{k} = ?' for k in finish)} WHERE id = ?"

    async def setup(self) -> None:
        pass

    async def run(self, durable: bool) -> None:
        c = self.connection
        row = execution_row()
        c.execute("BEGIN")
        c.execute(self.insert_execution, _plain(row.values()))
        c.execute("COMMIT")
        rows = [_plain(invocation(row["id"], i).values()) for i in range(STAGES)]
        if durable:
            for one in rows:
                c.execute("BEGIN")
                c.execute(self.insert_invocation, one)
                c.execute("COMMIT")
        c.execute("BEGIN")
        if not durable:
            c.executemany(self.insert_invocation, rows)
        c.execute(self.finish, _plain([*finish_values().values(), row["id"]]))
        c.execute("COMMIT")

    async def close(self) -> None:
        self.connection.close()


def _pragmas(connection: Any, _record: Any) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


def _insert_sql(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _plain(values: Any) -> tuple[Any, ...]:
    import enum

    def one(value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return value.hex
        if isinstance(value, enum.Enum):
            return value.name
        if isinstance(value, dict | list):
            return json.dumps(value)
        if isinstance(value, datetime):
            return value.isoformat(" ")
        return value

    return tuple(one(v) for v in values)


async def measure_writes(tmp: Path, rounds: int) -> dict[str, dict[str, float]]:
    """Median µs per run of each side and shape, every side taking turns run by run (as
    `bench/run.py`'s `versus` group does): qmcp's whole run and LangGraph's (the budget), then
    the three ways of writing a run's records."""
    import inprocess
    import langgraph_graphs as lg

    from qmcp.agentframework.store import Store

    inprocess.register()
    db = f"sqlite+aiosqlite:///{tmp}/qmcp.db"
    settings = await inprocess.qmcp_sqlite_settings(db)
    saver, connection, lg_settings = await lg.durable_saver(
        tmp / "langgraph.db", settings["synchronous"]
    )
    if lg_settings != settings:
        raise RuntimeError(f"unequal SQLite settings: qmcp {settings}, LangGraph {lg_settings}")
    ways: dict[str, Any] = {}
    for name in ("store", "sqlalchemy", "sqlite3"):
        path = tmp / f"{name}.db"
        schema = Store(f"sqlite+aiosqlite:///{path}")
        await schema.init()  # the real schema (migrations) under every way
        await schema.close()
        if name == "store":
            ways[name] = StoreWay(f"sqlite+aiosqlite:///{path}")
        else:
            ways[name] = (SqlalchemyWay if name == "sqlalchemy" else Sqlite3Way)(path)
        await ways[name].setup()
    top, agents = inprocess.topology("pipeline", STAGES, inprocess.INSTANT_ASYNC)
    found: dict[str, dict[str, float]] = {}
    calls = 0
    try:
        for shape in ("plain", "durable"):
            durable = shape == "durable"
            runner = inprocess.make_runner("async", db, durable, 10)
            graph = lg.pipeline(STAGES, inprocess.instant_async, saver if durable else None)
            runs = {
                "qmcp": inprocess.qmcp_run(runner, top, agents),
                "langgraph": inprocess.langgraph_run(graph, durable, 0),
                **{name: _way_run(way, durable) for name, way in ways.items()},
            }
            seconds = await inprocess.interleaved(runs, rounds, warm=15)
            calls += 15 + rounds
            for name, value in seconds.items():
                found.setdefault(name, {})[shape] = value * 1e6
    finally:
        await connection.close()
    for name, way in ways.items():
        await way.close()
        rows = _count(tmp / f"{name}.db")
        if rows != (calls, calls * STAGES):
            raise RuntimeError(f"{name} wrote {rows} rows, expected {calls} and x{STAGES}")
    return found


def _way_run(way: Any, durable: bool) -> Any:
    async def run() -> None:
        await way.run(durable)

    return run


def _count(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as c:
        executions = c.execute("SELECT count(*) FROM executions").fetchone()[0]
        invocations = c.execute("SELECT count(*) FROM invocations").fetchone()[0]
    return executions, invocations


IMPORTS = {
    "sqlalchemy (Core)": "import sqlalchemy",
    "the store's libraries (sqlalchemy, orm, sqlmodel, pydantic)": (
        "import sqlalchemy, sqlalchemy.orm, sqlmodel, pydantic"
    ),
    "the store's libraries and typer (the CLI's least)": (
        "import sqlalchemy, sqlalchemy.orm, sqlmodel, pydantic, typer"
    ),
    "sqlite3": "import sqlite3",
}


def import_seconds(code: str, repeat: int) -> float:
    """Median CPU seconds (user + system) of a fresh `python -c code`, the interpreter's start
    included: CPU time, so that other load on the machine does not swamp the figure."""
    times = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return median(times)


def task_budget() -> float | None:
    """A Metaflow task's budget at a 1.3x flow, from the last `bench/metaflow_steps.py`."""
    steps = RESULTS / "metaflow_steps.json"
    if not steps.exists():
        return None
    data = json.loads(steps.read_text())
    if "trivial_flow_s" not in data:
        return None
    return float((data["ratio_target"] - 1) * data["trivial_flow_s"] / data["tasks"])


TARGETS = {"plain": 0.5, "durable": 0.1}  # issue 10: qmcp / LangGraph per invocation


def report(
    found: dict[str, dict[str, float]], imports: dict[str, float], task: float | None
) -> None:
    print(f"One {STAGES}-stage pipeline run, median µs per run and per invocation:")
    for shape, target in TARGETS.items():
        budget = found["langgraph"][shape] / STAGES * target
        print(f"  {shape}: the target leaves qmcp {budget:.0f} µs/invocation ({target}x LangGraph)")
        for name, figures in found.items():
            per = figures[shape] / STAGES
            print(
                f"    {SIDES[name]:<46} {figures[shape]:7.0f} µs  {per:5.0f} µs/invocation"
                f"  {per / budget:5.0%} of the budget"
            )
    print("Imports in a fresh process (median CPU seconds, interpreter start included):")
    for name, seconds in imports.items():
        print(f"    {seconds:6.3f} s  {name}")
    print("    the `qmcp agents list` target: 0.250 s for the whole command")
    if task:
        print(f"    a Metaflow task's budget at a 1.3x flow: {task:.3f} s above a trivial one")


SIDES = {
    "qmcp": "qmcp, the whole run (AsyncRunner)",
    "langgraph": "LangGraph, the whole run",
    "store": "its records through qmcp's Store",
    "sqlalchemy": "its records as SQLAlchemy Core statements only",
    "sqlite3": "its records as SQL through sqlite3 only",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300, help="timed runs per side and shape")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = asyncio.run(measure_writes(Path(tmp), args.rounds))
    imports = {name: import_seconds(code, 7) for name, code in IMPORTS.items()}
    task = task_budget()
    report(found, imports, task)
    if args.output:
        data = {
            "rounds": args.rounds,
            "run_us": found,
            "targets": TARGETS,
            "imports_s": imports,
            "task_budget_s": task,
        }
        args.output.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
