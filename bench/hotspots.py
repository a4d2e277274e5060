"""Workloads to profile, and a reader for py-spy's raw output: where the benchmark's time goes.

    py-spy record --nonblocking -r 1000 -f raw -o /tmp/runs.txt -- \\
        python bench/hotspots.py runs --kind ensemble --members 100 --checkpoint
    python bench/hotspots.py summarize /tmp/runs.txt --under BaseRunner.run

    python bench/hotspots.py stdio --calls 500 --profile /tmp/server.txt   # the stdio server
    python bench/hotspots.py summarize /tmp/server.txt

    python -m pyinstrument bench/hotspots.py task      # one Metaflow task's helper work
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess

SITE = re.compile(r"^.*?/site-packages/")


async def runs(
    kind: str, members: int, runner: str, checkpoint: bool, seconds: float, model: str
) -> None:
    """Run one benchmark topology over and over for `seconds` on a fresh SQLite file."""
    inprocess.register()
    with tempfile.TemporaryDirectory() as tmp:
        bench = inprocess.make_runner(runner, f"sqlite+aiosqlite:///{tmp}/p.db", checkpoint)
        top, agents = inprocess.topology(kind, members, model)
        for _ in range(5):
            await inprocess.one_run(bench, top, agents)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await inprocess.one_run(bench, top, agents)
            count += 1
        per_run = (time.perf_counter() - t0) / count
        print(f"{count} runs, {per_run * 1e3:.3f} ms per run", file=sys.stderr)


def children() -> list[int]:
    """This process's child processes, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


async def stdio(calls: int, floor: bool, profile: Path | None) -> None:
    """`calls` tools/calls on one warm stdio connection: qmcp's `topologies_run` (the offline
    2-stage pipeline of the benchmark) or the one-tool floor's `echo`. With `profile`, py-spy
    attaches to the server after the warm-up calls and writes its raw samples there."""
    import external
    from mcp import Client, StdioServerParameters

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/stdio.db"
        await external.seed(db)
        command = [sys.executable, str(external.FLOOR)]
        tool, arguments = "echo", {"prompt": "x"}
        if not floor:
            command, (tool, arguments) = [str(external.BIN / "qmcp-server")], external.RUN_CALL
        params = StdioServerParameters(
            command=command[0], args=command[1:], env=external.child_env(db), cwd=tmp
        )
        async with Client(params) as client:
            for _ in range(3):
                await external.checked_call(client, tool, arguments)
            spy = None
            if profile:
                (server,) = children()
                found = external.BIN / "py-spy"
                program = str(found) if found.exists() else "py-spy"
                command = [program, "record", "--nonblocking", "-r", "1000", "-f", "raw"]
                command += ["--pid", str(server), "-o", str(profile)]
                spy = subprocess.Popen(command, stdout=subprocess.DEVNULL)
                await asyncio.sleep(0.5)  # py-spy attaches
            t0 = time.perf_counter()
            for _ in range(calls):
                await external.checked_call(client, tool, arguments)
            per_call = (time.perf_counter() - t0) / calls
            if spy:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on interrupt
                spy.wait(30)
        print(f"{calls} calls of {tool}, {per_call * 1e3:.3f} ms per call", file=sys.stderr)


SPEC = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import external
print(json.dumps(external.write_qmcp_flow(Path(sys.argv[2]), sys.argv[3])[1]))
"""


def task() -> None:
    """What the steps of a 1-stage pipeline flow do in their processes, here in one process
    (the spec is made in another, so every import below is one a task process makes)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/task.db"
        here = str(Path(__file__).resolve().parent)
        made = subprocess.run(
            [sys.executable, "-c", SPEC, here, tmp, db], check=True, capture_output=True, text=True
        )
        spec = json.loads(made.stdout)
        os.environ["QMCP_DATABASE_URL"] = db
        t0 = time.perf_counter()
        from qmcp.agentframework.runners import metaflow_helpers as h

        state = h.begin(spec, {"prompt": "x"}, "", "profile-run")
        state = h.advance(spec, state, ["stage-0/*"])
        state = h.advance(spec, state, ["*"])
        h.finish(spec, state)
        print(f"task work in {time.perf_counter() - t0:.3f} s", file=sys.stderr)


def frame(text: str) -> str:
    """`func (path:line)` without the line number or the site-packages prefix."""
    return SITE.sub("", re.sub(r":\d+\)$", ")", text)).replace(str(Path.cwd()) + "/", "")


def summarize(path: Path, under: str | None, top: int) -> None:
    """Inclusive and self share of each function in py-spy's raw (collapsed) stacks."""
    inclusive, own, total = Counter[str](), Counter[str](), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # the rest of a frame name that had a line break in it
        frames = [frame(f) for f in stack.split(";")]
        if under:
            marks = [i for i, f in enumerate(frames) if f.startswith(under + " ")]
            if not marks:
                continue
            frames = frames[marks[0] :]
        samples = int(count)
        total += samples
        for name in set(frames):
            inclusive[name] += samples
        own[frames[-1]] += samples
    print(f"{total} samples" + (f" under {under}" if under else ""))
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title} ---")
        for name, samples in counter.most_common(top):
            print(f"{samples / total * 100:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("runs", help="run a benchmark topology in a loop")
    run.add_argument("--kind", choices=["pipeline", "ensemble"], default="ensemble")
    run.add_argument("--members", type=int, default=10)
    run.add_argument("--runner", choices=["local", "async"], default="local")
    run.add_argument("--checkpoint", action="store_true", help="durable: a commit per invocation")
    run.add_argument("--seconds", type=float, default=10.0)
    run.add_argument(
        "--model",
        choices=[inprocess.INSTANT, inprocess.INSTANT_ASYNC],
        default=inprocess.INSTANT_ASYNC,
        help="the instant model function: async (as the LangGraph comparison) or sync (inline)",
    )
    calls = sub.add_parser("stdio", help="tools/calls over stdio, the server optionally profiled")
    calls.add_argument("--calls", type=int, default=500)
    calls.add_argument("--floor", action="store_true", help="the one-tool floor server instead")
    calls.add_argument("--profile", type=Path, help="run the server under py-spy, raw output here")
    sub.add_parser("task", help="the Metaflow helpers' work for a 1-stage pipeline")
    summary = sub.add_parser("summarize", help="read py-spy raw output")
    summary.add_argument("file", type=Path)
    summary.add_argument("--under", help="only stacks through this function, e.g. BaseRunner.run")
    summary.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.command == "runs":
        asyncio.run(
            runs(args.kind, args.members, args.runner, args.checkpoint, args.seconds, args.model)
        )
    elif args.command == "stdio":
        asyncio.run(stdio(args.calls, args.floor, args.profile))
    elif args.command == "task":
        task()
    else:
        summarize(args.file, args.under, args.top)


if __name__ == "__main__":
    main()
