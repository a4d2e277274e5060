"""The run view in a terminal: `service.execution_view` as a Rich tree (`qmcp executions show`).

The same structure as the page: the topology with each slot's status, what each kind means
(debate rounds and verdict, cross-check verdicts and consensus, ensemble answers), the
approvals that wait, and every invocation with its tokens and cost. Every text is literal
(no Rich markup read from model output).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from rich.tree import Tree

EXCERPT = 240
COLOURS = {
    "completed": "green",
    "approved": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "red",
    "running": "cyan",
    "pending": "yellow",
    "partial": "yellow",
    "interrupted": "yellow",
    "waiting": "dim",
    "idle": "dim",
}


def _status(status: str) -> tuple[str, str]:
    return (status, f"bold {COLOURS.get(status, 'white')}")


def _line(*parts: str | tuple[str, str] | None) -> Text:
    return Text.assemble(*(p for p in parts if p is not None))


def excerpt(text: Any, limit: int = EXCERPT) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def cost(value: Any) -> str:
    return "cost unknown" if value is None else f"${float(value):.4f}"


def view_tree(view: dict[str, Any]) -> Tree:
    ex, totals = view["execution"], view["totals"]
    duration = f" · {ex['duration_ms']} ms" if ex.get("duration_ms") is not None else ""
    tree = Tree(
        _line(
            ("execution ", "bold"),
            str(ex["id"]),
            f" · {ex['topology_name']} ({ex['topology_type']} on {ex['runner_type']}) · ",
            _status(str(ex["status"])),
            duration,
        )
    )
    tree.add(
        _line(
            f"{totals['done']}/{totals['planned']} invocations done",
            f", {totals['failed']} failed" if totals["failed"] else "",
            f" · {totals['input_tokens']} in / {totals['output_tokens']} out tokens",
            f" · {cost(totals['cost_usd'])}",
            f" · {totals['tool_calls']} tool calls" if totals["tool_calls"] else "",
        )
    )
    if ex.get("error"):
        tree.add(_line(("error: ", "bold red"), str(ex["error"])))
    _topology(
        tree.add(_line(("topology ", "bold"), str(view["topology"]["name"]))), view["topology"]
    )
    for panel in view["panels"]:
        kind = panel["kind"]
        if kind == "debate":
            _debate(tree, panel)
        elif kind == "cross_check":
            _cross_check(tree, panel)
        elif kind == "ensemble":
            _ensemble(tree, panel)
    if view["approvals"]:
        branch = tree.add(_line(("approvals", "bold")))
        for a in view["approvals"]:
            node = branch.add(
                _line(
                    f"#{a['id']} ", _status(str(a["status"])), f" {a['agent_name']} at {a['key']}"
                )
            )
            node.add(_line(("asks: ", "bold"), str(a["question"])))
            if a.get("tool"):
                again = " (make again a call in flight when the run stopped)" * a["tool"]["rerun"]
                node.add(_line(("tool call: ", "bold"), str(a["tool"]["name"]), again))
            node.add(_line(("proposed: ", "bold"), excerpt(a.get("edited") or a["proposed"])))
            if a["status"] == "pending":
                node.add(_line(f"answer: qmcp approvals answer {a['id']} --approve (or --reject)"))
    _invocations(tree.add(_line(("invocations", "bold"))), view["invocations"])
    if ex.get("content"):
        tree.add(_line(("output: ", "bold"), excerpt(ex["content"], 600)))
    return tree


def _topology(branch: Tree, node: dict[str, Any]) -> None:
    for member in node["slots"]:
        status = str(member.get("status", "idle"))
        calls = member.get("invocations") or 0
        usage = ""
        if calls:
            tokens = member.get("input_tokens", 0) + member.get("output_tokens", 0)
            usage = f" · {calls} call(s), {tokens} tokens, {cost(member.get('cost_usd'))}"
        if member["kind"] == "topology":
            instances = member.get("instances") or []
            sub = branch.add(
                _line(
                    (member["slot"], "bold"),
                    f": topology {member['name']} · ",
                    _status(status),
                    usage,
                )
            )
            shown = instances[-1] if instances else member["topology"]
            at = f"{shown.get('prefix') or '-'} ({shown['type']})"
            _topology(sub.add(_line(("runs as ", "dim"), at)), shown)
        else:
            model = f" ({member['model']})" if member.get("model") else ""
            branch.add(
                _line(
                    (member["slot"], "bold"),
                    f": {member.get('agent')}{model} · ",
                    _status(status),
                    usage,
                )
            )


def _debate(tree: Tree, panel: dict[str, Any]) -> None:
    branch = tree.add(_line(("debate ", "bold"), str(panel["title"])))
    for r in panel["rounds"]:
        node = branch.add(_line(("round ", "bold"), str(r["round"])))
        for turn in r["turns"]:
            who = f"{turn['slot']} ({turn['agent']})" if turn.get("agent") else turn["slot"]
            node.add(_line((who, "bold"), ": ", excerpt(turn["content"] or turn["error"] or "…")))
        if r.get("judgment"):
            j = r["judgment"]
            node.add(
                _line(
                    ("mediator", "bold"),
                    f": agreement {j['agreement']:.2f}",
                    f", leaning {j['winner']}" if j.get("winner") else "",
                    " — ",
                    excerpt(j["verdict"]),
                )
            )
        elif r.get("mediator"):
            node.add(_line(("mediator", "bold"), ": ", _status(str(r["mediator"]["status"]))))
    verdict = panel.get("verdict")
    if verdict:
        label = "verdict" if verdict["reached"] else "verdict so far"
        branch.add(
            _line(
                (label, "bold green" if verdict["reached"] else "bold"),
                f" (round {verdict['round']}, agreement {verdict['agreement']:.2f}",
                f", winner {verdict['winner']}" if verdict.get("winner") else "",
                "): ",
                excerpt(verdict["verdict"], 600),
            )
        )


def _cross_check(tree: Tree, panel: dict[str, Any]) -> None:
    branch = tree.add(_line(("cross-check ", "bold"), f"{panel['title']} ({panel['method']})"))
    for r in panel["rounds"]:
        title = f"revision {r['revision']}" if r["revision"] else "answer"
        node = branch.add(_line((title, "bold"), ": ", excerpt(r["answer"]["content"] or "…")))
        for v in r["validations"]:
            if "approved" not in v:
                node.add(_line((v["checker"], "bold"), ": ", _status(str(v["status"]))))
                continue
            verdict = "approved" if v["approved"] else "rejected"
            issues = "; ".join(v.get("issues") or [])
            node.add(
                _line(
                    (v["checker"], "bold"),
                    ": ",
                    _status(verdict),
                    f" ({v['confidence']:.2f})",
                    f" — {excerpt(issues)}" if issues else "",
                )
            )
        if r.get("consensus"):
            c = r["consensus"]
            node.add(
                _line(
                    ("consensus", "bold"),
                    ": ",
                    _status("approved" if c["approved"] else "rejected"),
                    f" {c['approvals']} for, {c['rejections']} against",
                )
            )


def _ensemble(tree: Tree, panel: dict[str, Any]) -> None:
    aggregate = panel["aggregate"]
    branch = tree.add(_line(("ensemble ", "bold"), f"{panel['title']} ({aggregate['method']})"))
    for m in panel["members"]:
        who = f"{m['slot']} ({m['agent']})" if m.get("agent") else m["slot"]
        branch.add(
            _line(
                (who, "bold"),
                ": ",
                _status(str(m["status"])),
                " ",
                excerpt(m["content"] or m["error"] or ""),
            )
        )
    content = aggregate.get("content") or (aggregate.get("aggregator") or {}).get("content")
    if content:
        winner = f" (winner {aggregate['winner']})" if aggregate.get("winner") else ""
        branch.add(_line(("aggregate", "bold"), winner, ": ", excerpt(content, 600)))


def _invocations(branch: Tree, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        parts: list[str | tuple[str, str] | None] = [(r["key"], "bold"), " ", _status(r["status"])]
        if r["status"] != "waiting":
            parts.append(f" · try {r['attempt']}")
            if r.get("model"):
                parts.append(f" · {r['model']}")
            if r.get("duration_ms") is not None:
                parts.append(f" · {round(float(r['duration_ms']))} ms")
            parts.append(
                f" · {r['input_tokens']}/{r['output_tokens']} tokens · {cost(r['cost_usd'])}"
            )
            if r.get("tool_calls") is not None:
                parts.append(f" · {r['tool_calls']} tool calls")
        if r.get("approval"):
            parts.append(f" · approval {r['approval']['status']}")
        node = branch.add(_line(*parts))
        if r.get("error"):
            node.add(_line(("error: ", "red"), excerpt(r["error"])))
