"""Benchmarks: what qmcp adds on top of model calls, side by side with LangGraph, on this machine.

    pip install -e '.[bench]'
    python bench/run.py [--quick] [--only GROUP ...] [--output FILE]

Prints the measurements, then the targets (each with qmcp's figure, the reference's figure from
the same run, their ratio and pass/MISS), compares every row with the last full run
(bench/results/latest.json) and writes the new results there; a --quick or --only run writes
quick.json instead and leaves the full-run baseline alone. Model calls are a plain Python
function (instant, or an async 50 ms sleep) that qmcp's `function` provider and LangGraph's nodes
both call, so every figure is the orchestration layer's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import external
import inprocess
from rows import Row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BUSY = 0.1  # other processes' CPU time above this share of the run's wall time: a busy machine
DECIMALS = {"s": 3, "ms": 2, "x": 3}
GROUPS = ("versus", "parallel", "overhead", "persistence", "mcp", "cli", "metaflow")


METHODS = {
    "versus": "overhead per invocation = median over many runs of (wall time of one run - time "
    "spent inside the model function) / model invocations, qmcp's and LangGraph's runs taking "
    "turns after 5 warm-up runs each. qmcp: AsyncRunner(max_concurrent=10).run with "
    "RunConfig(checkpoint_enabled=False | True), a pipeline of 3 stages or an ensemble of 10 "
    "(concat). LangGraph: a compiled StateGraph's ainvoke, 3 nodes in a line or 10 parallel "
    "nodes and a join (max_concurrency=10). Both call the same instant async function. Target: "
    "qmcp / LangGraph <= 0.5 plain, <= 0.1 durable (same SQLite synchronous on both).",
    "parallel": "wall / ideal, ideal = ceil(members / max_concurrent) x 50 ms; median of 15 runs "
    "(5 with --quick) after 2 warm-up runs, qmcp and LangGraph taking turns; the model function "
    "is an async 50 ms sleep. qmcp: ensemble (concat) on AsyncRunner(max_concurrent); LangGraph: "
    "parallel nodes and a join, max_concurrency. Target on qmcp's ratio, <= 1.03; LangGraph's for "
    "reference.",
    "mcp": "round trip = median seconds of one tools/call on a warm stdio connection, the same "
    "mcp.Client for both servers, qmcp's and the floor's calls alternating. Target: qmcp's "
    "topologies_run <= 2x the one-tool floor (bench/floor_server.py).",
    "cli": "median wall time of whole `qmcp ...` processes, compiled bytecode already cached.",
}


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle, not waiting, not stolen)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and the child processes it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def langgraph_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langgraph")
    except PackageNotFoundError:
        return None


def compare(row: Row, before: dict[str, Any] | None) -> str:
    """The change of the judged figure since the previous run, coloured by better or worse."""
    if not before:
        return "new" if before is None else ""
    key = "ratio" if row.on_ratio else "value"
    if not before.get(key):
        return "new"
    change = (row.judged - before[key]) / abs(before[key]) * 100
    improved = change < 0 if row.better == "lower" else change > 0
    colour = "" if abs(change) < 5 else ("green" if improved else "red")
    text = f"{change:+.0f}%"
    return f"[{colour}]{text}[/]" if colour else text


def figure(value: float, unit: str) -> str:
    return f"{value:,.{DECIMALS.get(unit, 0)}f} {unit}"


def report(rows: list[Row], previous: dict[str, Any] | None, title: str, groups: set[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    before = {r["name"]: r for r in (previous or {}).get("rows", [])}
    console = Console(width=220)

    def vs_last(row: Row) -> str:
        return compare(row, before.get(row.name) if previous else {})

    details = Table(title=f"{title}: measurements", show_lines=False)
    for header, justify in (
        ("measurement", "left"),
        ("qmcp", "right"),
        ("vs last", "right"),
        ("note", "left"),
    ):
        details.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if row.target is None:
            details.add_row(row.name, figure(row.value, row.unit), vs_last(row), row.note)
    if details.row_count:
        console.print(details)

    targets = Table(title=f"{title}: targets", show_lines=True)
    for header, justify in (
        ("measurement", "left"),
        ("qmcp", "right"),
        ("reference", "right"),
        ("ratio", "right"),
        ("target", "right"),
        ("", "center"),
        ("vs last", "right"),
        ("how", "left"),
    ):
        targets.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if row.target is None:
            continue
        sign = "≤" if row.better == "lower" else "≥"
        target = f"{sign} {row.target:g}x" if row.on_ratio else f"{sign} {row.target:g} {row.unit}"
        reference = ratio = ""
        if row.reference is not None:
            reference = f"{figure(row.reference, row.unit)}\n({row.versus})"
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        verdict = {"pass": "[green]pass[/]", "MISS": "[bold red]MISS[/]"}[row.verdict]
        targets.add_row(
            row.name,
            figure(row.value, row.unit),
            reference,
            ratio if row.on_ratio else f"[dim]{ratio}[/]",
            target,
            verdict,
            vs_last(row),
            row.note,
        )
    if targets.row_count:
        console.print(targets)
    for group, text in METHODS.items():
        if group in groups:
            console.print(f"[bold]{group}[/]: {text}", highlight=False)
    judged = [r for r in rows if r.target is not None]
    missed = [r.name for r in judged if r.verdict == "MISS"]
    print(f"{len(judged) - len(missed)} of {len(judged)} targets pass; {len(missed)} MISS")
    for name in missed:
        print(f"  MISS: {name}")


async def measure(tmp: Path, quick: bool, groups: set[str]) -> list[Row]:
    inprocess.register()
    rows: list[Row] = []
    if groups & {"mcp", "cli", "metaflow"}:
        seconds = external.warm_bytecode(tmp)
        print(f"  bytecode cache for child processes warm in {seconds:.1f} s", file=sys.stderr)
    for group in GROUPS:
        if group not in groups:
            continue
        t0 = time.perf_counter()
        if group == "versus":
            found = await inprocess.versus(tmp, quick)
        elif group == "parallel":
            found = await inprocess.parallel(tmp, quick)
        elif group == "overhead":
            found = await inprocess.overhead(tmp, quick)
        elif group == "persistence":
            found = await inprocess.persistence(tmp, quick)
        elif group == "mcp":
            found = await external.mcp(tmp, quick)
        elif group == "cli":
            found = external.cli(tmp, quick)
        else:
            found = external.metaflow(tmp, quick)
        print(f"  {group}: {len(found)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows += found
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="measure only these groups")
    parser.add_argument("--output", type=Path, help="result file (default: results/latest.json)")
    args = parser.parse_args()
    if set(args.only or GROUPS) & {"versus", "parallel"} and langgraph_version() is None:
        parser.exit(2, "LangGraph is not installed: pip install -e '.[bench]' (or --only others)\n")
    partial = args.quick or bool(args.only)  # never replaces the full-run baseline by default
    output = args.output or RESULTS / ("quick.json" if partial else "latest.json")
    baseline = RESULTS / "latest.json"
    previous = json.loads(baseline.read_text()) if baseline.exists() else None

    # Quiet logs (the MCP SDK would configure a rich INFO handler), and no model keys.
    logging.basicConfig(level=logging.WARNING)
    for name in [k for k in os.environ if k.startswith("ANTHROPIC_")]:
        del os.environ[name]
    started = time.perf_counter()
    load = os.getloadavg()
    busy_before, own_before = busy_seconds(), own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="qmcp-bench-") as directory:
        tmp = Path(directory)
        os.environ.update(external.metaflow_env(tmp))  # before anything imports metaflow
        os.environ["QMCP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp}/default.db"
        rows = asyncio.run(measure(tmp, args.quick, set(args.only or GROUPS)))
    seconds = time.perf_counter() - started
    others = busy_seconds() - busy_before - own_cpu_seconds() + own_before
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    title = f"qmcp benchmarks ({'quick' if args.quick else 'full'}, {seconds:.0f} s)"
    if previous:
        title += f" — vs {baseline.relative_to(ROOT)} of {previous.get('when', '?')}"
    groups = set(args.only or GROUPS)
    report(rows, previous, title, groups)
    result = {
        "when": when,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "load_average_before": [round(x, 2) for x in load],
        "other_processes_cpu_seconds": round(others, 1),
        "langgraph": langgraph_version(),
        "groups": [g for g in GROUPS if g in groups],
        "methods": {g: t for g, t in METHODS.items() if g in groups},
        "quick": args.quick,
        "seconds": round(seconds, 1),
        "rows": [r.as_dict() for r in rows],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    if output == baseline and previous:
        (RESULTS / "previous.json").write_text(baseline.read_text())
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {output} in {seconds:.0f} s; other processes used {others:.1f} CPU-seconds")
    if others > BUSY * seconds:
        print(
            "warning: other processes kept the machine busy during the run, so the timings are "
            "inflated; run again when it is idle"
        )


if __name__ == "__main__":
    main()
