"""Benchmarks: what qmcp adds on top of model calls, measured on this machine.

    python bench/run.py [--quick] [--only GROUP ...] [--output FILE]

Prints a table with each figure, its target and whether it holds, compares every row with the
last full run (bench/results/latest.json) and writes the new results there; a --quick or --only
run writes quick.json instead and leaves the full-run baseline alone. Model calls are the
`function` provider (instant, or an async 50 ms sleep), so every figure is the orchestration
layer's own cost.
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
GROUPS = ("overhead", "parallel", "persistence", "mcp", "cli", "metaflow")


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle, not waiting, not stolen)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and the child processes it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def compare(row: Row, before: dict[str, Any] | None) -> str:
    """The change since the previous run, coloured by whether it is better or worse."""
    if not before or not before.get("value"):
        return "new" if before is None else ""
    change = (row.value - before["value"]) / abs(before["value"]) * 100
    improved = change < 0 if row.better == "lower" else change > 0
    colour = "" if abs(change) < 5 else ("green" if improved else "red")
    text = f"{change:+.0f}%"
    return f"[{colour}]{text}[/]" if colour else text


def report(rows: list[Row], previous: dict[str, Any] | None, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    before = {r["name"]: r for r in (previous or {}).get("rows", [])}
    table = Table(title=title, show_lines=False)
    for header, justify in (
        ("measurement", "left"),
        ("value", "right"),
        ("target", "right"),
        ("", "center"),
        ("vs last", "right"),
        ("note", "left"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        target = ""
        if row.target is not None:
            target = f"{'≤' if row.better == 'lower' else '≥'} {row.target:g} {row.unit}"
        verdict = {"pass": "[green]pass[/]", "MISS": "[bold red]MISS[/]"}.get(row.verdict, "")
        table.add_row(
            row.name,
            f"{row.value:,.{DECIMALS.get(row.unit, 0)}f} {row.unit}",
            target,
            verdict,
            compare(row, before.get(row.name) if previous else {}),
            row.note,
        )
    Console(width=220).print(table)
    missed = [r.name for r in rows if r.verdict == "MISS"]
    print(f"{len(rows) - len(missed)} rows pass or are informational; {len(missed)} miss a target")


async def measure(tmp: Path, quick: bool, groups: set[str]) -> list[Row]:
    inprocess.register()
    rows: list[Row] = []
    fits: dict[Any, Any] = {}
    if groups & {"mcp", "cli", "metaflow"}:
        seconds = external.warm_bytecode(tmp)
        print(f"  bytecode cache for child processes warm in {seconds:.1f} s", file=sys.stderr)
    for group in GROUPS:
        if group not in groups:
            continue
        t0 = time.perf_counter()
        if group == "overhead":
            found, fits = await inprocess.overhead(tmp, quick)
        elif group == "parallel":
            if not fits:  # the fixed cost the ratio leaves out comes from the overhead runs
                _, fits = await inprocess.overhead(tmp, True)
            found = await inprocess.parallel(tmp, quick, fits)
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
    report(rows, previous, title)
    result = {
        "when": when,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "load_average_before": [round(x, 2) for x in load],
        "other_processes_cpu_seconds": round(others, 1),
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
