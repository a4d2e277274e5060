"""An execution as the run view shows it: the topology as a graph (nested topologies included),
a timeline of invocations, and what each kind means (debate rounds and verdict, cross-check
verdicts and consensus, ensemble answers), with the approvals that wait.

One pure function over the records (`build_view`), so the HTML view, the MCP App and the
terminal tree show the same thing. It reads invocation rows, never the final output alone, so a
running execution shows what has happened so far; keys the topology will call next are listed as
`waiting` while the run goes on. An invocation is `running` while it is in flight (its model call
made, no row yet: `service.execution_view` says which keys are, from the running engine, from
its owner's heartbeat, or from a Metaflow step's own marks) or while a turn of it is recorded
(agents with tools), with when it started and how long it has run so far (`elapsed_ms`); a row
exists once an invocation has finished. An invocation of a `pending` execution that stopped
part-way (a tool call waiting for a human's approval) is `pending`.

Approvals belong to the invocation whose key they carry: a `human_in_loop` gate at the key
itself, a tool call's approval at `<key>#tool:<call id>` (`#tool:<call id>:rerun` for a call that
was in flight when a run stopped); the latter says which tool, with which arguments (`tool`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from qmcp.agentframework.errors import QmcpError
from qmcp.agentframework.topologies import TopologyRegistry
from qmcp.agentframework.topologies.consensus import determine_consensus, parse_verdict
from qmcp.agentframework.topologies.debate import MEDIATOR, debaters, judgment_of
from qmcp.agentframework.topologies.pipeline import stage_order

VIEW_VERSION = 1
MAX_TEXT = 20_000  # characters of one text the view carries (outputs, prompts)
FINISHED = ("completed", "failed", "cancelled")
_SUBTASK = re.compile(r"^subtask-\d+$")
_ROUND = re.compile(r"^round-(\d+)$")
_REVISION = re.compile(r"^revision-(\d+)$")
# A tool call's approval: its key's suffix, and the tool's label in the question it asks
# (`tools.mcp.McpToolbox._admit` words both questions this way).
_TOOL_SUFFIX = re.compile(r"^tool:(?P<call>.+?)(?P<rerun>:rerun)?$")
_TOOL_LABEL = re.compile(r"(?:wants to call|the call) (?P<label>[^\s(]+)\(")


def clip(text: Any, limit: int = MAX_TEXT) -> str:
    """Text for the view, cut at `limit` characters with a note saying how much was left out."""
    value = text if isinstance(text, str) else "" if text is None else str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}\n… ({len(value) - limit} more characters in the record)"


def build_view(
    execution: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    invocations: Sequence[Mapping[str, Any]],
    approvals: Sequence[Mapping[str, Any]] = (),
    in_flight: Mapping[str, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The view model of one execution, as JSON-ready data.

    `execution` and `invocations` are `service.execution_to_dict` / `invocation_to_dict` rows,
    `snapshot` the execution's snapshot (topology and members as they ran), `approvals` its
    approvals (`approval_to_dict`), `in_flight` the keys in progress without a finished row, in
    flight or with recorded turns ({key: {"started_at": iso, "turns": n, "tool_calls": n}}, each
    field optional): `running` while the execution runs, `pending` while it waits (for a human,
    or for the client's model). `now` (default: the current time) is what a running
    invocation's `elapsed_ms` counts to.
    """
    status = str(execution.get("status"))
    live = status not in FINISHED
    by_key = _group(invocations)
    root = _node(snapshot, "")
    shown = [_approval(a) for a in approvals]
    owned = _owned(shown)
    entries = {key: _entry(key, rows, execution) for key, rows in by_key.items()}
    for key, info in (in_flight or {}).items():
        if key not in entries or entries[key]["status"] != "completed":
            entries[key] = _running(key, info, entries.get(key), execution, root, now)
    for key in owned:  # a wait for a human at a key with neither a row nor turns given
        if key not in entries and any(a.get("status") == "pending" for a in owned[key]):
            entries[key] = _running(key, {}, None, execution, root, now)
    for key, entry in entries.items():
        _approvals(entry, owned.get(key, []))
    planned: list[str] = []
    if status == "running":
        for key, slot, agent in _planned(root, entries):
            if key not in entries:
                planned.append(key)
                entries[key] = _blank(key, slot, agent)
    order = {key: i for i, key in enumerate(dict.fromkeys([*by_key, *entries, *planned]))}
    timeline = sorted(entries.values(), key=lambda e: (e["status"] == "waiting", order[e["key"]]))
    _annotate(root, entries)
    estimate = _estimate(root)
    panels: list[dict[str, Any]] = []
    _panels(root, entries, panels, execution)
    output = execution.get("output") or {}
    done = sum(1 for e in timeline if e["status"] == "completed")
    return {
        "version": VIEW_VERSION,
        "execution": {
            "id": execution.get("id"),
            "topology_name": execution.get("topology_name"),
            "topology_type": root["type"],
            "runner_type": execution.get("runner_type"),
            "status": status,
            "created_at": execution.get("created_at"),
            "started_at": execution.get("started_at"),
            "completed_at": execution.get("completed_at"),
            "duration_ms": execution.get("duration_ms"),
            "correlation_id": execution.get("correlation_id"),
            "input": execution.get("input"),
            "content": clip(output.get("content")) if isinstance(output, dict) else None,
            "error": execution.get("error"),
        },
        "totals": {
            "keys": len([e for e in timeline if e["status"] != "waiting"]),
            "done": done,
            "failed": sum(1 for e in timeline if e["status"] == "failed"),
            "running": sum(1 for e in timeline if e["status"] == "running"),
            "planned": max(estimate, done + len(planned)) if live else done,
            "attempts": len(invocations),
            "input_tokens": sum(int(r.get("input_tokens") or 0) for r in invocations),
            "output_tokens": sum(int(r.get("output_tokens") or 0) for r in invocations),
            "cost_usd": _cost(invocations),
            "tool_calls": sum(e["tool_calls"] or 0 for e in timeline),
        },
        "live": live,
        "topology": root,
        "invocations": timeline,
        "panels": panels,
        "approvals": shown,
    }


def _owned(shown: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Approvals (as `_approval` shows them) by the invocation they belong to."""
    owned: dict[str, list[dict[str, Any]]] = {}
    for approval in shown:
        owned.setdefault(approval["invocation_key"], []).append(approval)
    return owned


def _approvals(entry: dict[str, Any], own: list[dict[str, Any]]) -> None:
    """An invocation's approvals, oldest first; `approval` is the one that waits, else the last
    one decided."""
    entry["approvals"] = own
    waiting = [a for a in entry["approvals"] if a["status"] == "pending"]
    decided = entry["approvals"][-1:]
    entry["approval"] = waiting[0] if waiting else decided[0] if decided else None


# -- invocations ----------------------------------------------------------------------------


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row["key"]), []).append(row)
    return grouped


def _entry(key: str, rows: list[Mapping[str, Any]], execution: Mapping[str, Any]) -> dict[str, Any]:
    """One key of the timeline: its last attempt, with every attempt listed."""
    last = rows[-1]
    output = last.get("output") if isinstance(last.get("output"), dict) else None
    tool_calls = output.get("tool_calls") if output else None
    return {
        "key": key,
        "slot": last.get("slot"),
        "agent": last.get("agent_name"),
        "provider": last.get("provider"),
        "model": last.get("model"),
        "status": str(last.get("status")),
        "attempt": last.get("attempt"),
        "attempts": [
            {
                "attempt": r.get("attempt"),
                "status": str(r.get("status")),
                "error": r.get("error"),
                "duration_ms": r.get("duration_ms"),
            }
            for r in rows
        ],
        "started_at": rows[0].get("started_at"),
        "completed_at": last.get("completed_at"),
        "offset_ms": _offset(execution, rows[0].get("started_at")),
        "elapsed_ms": None,
        "duration_ms": sum(float(r.get("duration_ms") or 0) for r in rows),
        "input_tokens": sum(int(r.get("input_tokens") or 0) for r in rows),
        "output_tokens": sum(int(r.get("output_tokens") or 0) for r in rows),
        "cost_usd": _cost(rows),
        "tool_calls": tool_calls if isinstance(tool_calls, int) else None,
        "error": last.get("error"),
        "content": clip(output.get("content")) if output else None,
        "output": _clipped(output) if output else None,
        "input": _clipped(last.get("input") or {}),
        "approval": None,
        "approvals": [],
    }


def _running(
    key: str,
    info: Mapping[str, Any],
    previous: dict[str, Any] | None,
    execution: Mapping[str, Any],
    root: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """A key in flight (or whose conversation has recorded turns) with no finished row yet:
    `running`, with how long it has run so far, or `pending` while its execution waits. A key
    with no row yet takes its slot and agent from the topology."""
    entry = dict(previous or _blank(key, *_slot_of(root, key)))
    started = info.get("started_at") or entry.get("started_at")
    running = execution.get("status") == "running"
    entry.update(
        status="running" if running else "pending",
        tool_calls=info.get("tool_calls"),
        started_at=started,
        offset_ms=_offset(execution, started),
        elapsed_ms=_elapsed(started, now) if running else None,
        turns=info.get("turns"),
    )
    return entry


def _elapsed(started: Any, now: datetime | None) -> float | None:
    """Milliseconds from `started` to `now` (default: the current time), never negative."""
    when = _time(started)
    if when is None:
        return None
    until = _time(now or datetime.now(UTC))
    assert until is not None
    return max(0.0, round((until - when).total_seconds() * 1000, 1))


def _blank(key: str, slot: str, agent: Any) -> dict[str, Any]:
    return {
        "key": key,
        "slot": slot,
        "agent": agent,
        "provider": None,
        "model": None,
        "status": "waiting",
        "attempt": 0,
        "attempts": [],
        "started_at": None,
        "completed_at": None,
        "offset_ms": None,
        "elapsed_ms": None,
        "duration_ms": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": None,
        "tool_calls": None,
        "error": None,
        "content": None,
        "output": None,
        "input": {},
        "approval": None,
        "approvals": [],
    }


def _clipped(value: Any) -> Any:
    """A JSON value with every long string clipped (inputs and outputs on demand)."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, dict):
        return {str(k): _clipped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clipped(v) for v in value[:200]]
    return value


def _cost(rows: Sequence[Mapping[str, Any]]) -> float | None:
    costs = [float(r["cost_usd"]) for r in rows if r.get("cost_usd") is not None]
    return round(sum(costs), 6) if costs else None


def _offset(execution: Mapping[str, Any], started: Any) -> float | None:
    origin = _time(execution.get("started_at") or execution.get("created_at"))
    when = _time(started)
    if origin is None or when is None:
        return None
    return round((when - origin).total_seconds() * 1000, 1)


def _time(value: Any) -> datetime | None:
    """A moment as naive UTC: SQLite gives stored times back naive (UTC), PostgreSQL and the
    running engine aware, and the view compares them with each other."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _approval(approval: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("id", "key", "agent_name", "question", "proposed", "status", "comment", "edited")
    data = {k: approval.get(k) for k in keep}
    data.update(created_at=approval.get("created_at"), decided_by=approval.get("decided_by"))
    key, _, suffix = str(data["key"]).partition("#")
    data["invocation_key"] = key
    data["tool"] = _tool_of(suffix, str(data["question"] or ""), data["proposed"])
    data["proposed"] = clip(data["proposed"])
    return data


def _tool_of(suffix: str, question: str, proposed: Any) -> dict[str, Any] | None:
    """What a tool call's approval records: the call's id, the tool (`server.tool`), its
    arguments (the JSON it proposes) and whether it asks to make again a call that was in flight
    when the run stopped. None for an approval of an answer (`human_in_loop`)."""
    match = _TOOL_SUFFIX.match(suffix)
    if match is None:
        return None
    label = _TOOL_LABEL.search(question)
    try:
        arguments = json.loads(proposed) if isinstance(proposed, str) else proposed
    except ValueError:
        arguments = proposed
    return {
        "call_id": match["call"],
        "name": label["label"] if label else None,
        "arguments": _clipped(arguments),
        "rerun": match["rerun"] is not None,
    }


# -- the topology as a graph ----------------------------------------------------------------


def _node(snapshot: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A topology level: its slots (agents or nested topologies), layers and edges."""
    topology = snapshot.get("topology") or {}
    members = snapshot.get("agents") or {}
    slots = list(snapshot.get("slot_order") or members)
    kind_name = str(topology.get("topology_type"))
    config = dict(topology.get("config") or {})
    try:
        kind = TopologyRegistry.get(kind_name)
        parsed = kind.parse_config(config)
    except QmcpError:  # a kind this installation no longer has: slots, no shape
        kind, parsed = None, None
    entries = []
    for slot in slots:
        member = members.get(slot) or {}
        if "subtopology" in member:
            sub = member["subtopology"]
            entries.append(
                {
                    "slot": slot,
                    "kind": "topology",
                    "topology": _node(sub, ""),  # prefixes are set per instance
                    "name": (sub.get("topology") or {}).get("name"),
                }
            )
        else:
            model = ((member.get("config") or {}).get("model_config_obj")) or {}
            entries.append(
                {
                    "slot": slot,
                    "kind": "agent",
                    "agent": member.get("name"),
                    "role": member.get("role"),
                    "model": _model_label(model),
                    "version": member.get("version"),
                }
            )
    layers, edges = _shape(kind_name, parsed, slots)
    return {
        "name": topology.get("name"),
        "type": kind_name,
        "config": config,
        "version": topology.get("version"),
        "prefix": prefix,
        "slots": entries,
        "layers": layers,
        "edges": edges,
        "instances": [],
        "_parsed": parsed,
        "_kind": kind,
    }


def _model_label(model: Mapping[str, Any]) -> str | None:
    if not model:
        return None
    provider, name = model.get("provider"), model.get("model")
    return f"{provider}:{name}" if provider and name else str(name or provider)


def _shape(
    kind: str, config: Any, slots: list[str]
) -> tuple[list[list[str]], list[dict[str, str]]]:
    """Who talks to whom, in layers from input to output (what `diagram.mermaid` draws)."""
    edges: list[dict[str, str]] = []

    def edge(a: str, b: str, label: str = "") -> None:
        edges.append({"from": a, "to": b, "label": label})

    def starting(prefix: str) -> list[str]:
        return [s for s in slots if s.startswith(prefix)]

    if kind == "pipeline" and config is not None:
        stages = [s for s in stage_order(config, slots) if s in slots]
        chain = ["input", *stages, "output"]
        for a, b in pairwise(chain):
            edge(a, b)
        return [[s] for s in stages], edges
    if kind == "ensemble":
        members = starting("ensemble_")
        target = "aggregator" if "aggregator" in slots else "output"
        method = str(getattr(config, "aggregation_method", "") or "")
        for m in members:
            edge("input", m)
            edge(m, target, method)
        if "aggregator" in slots:
            edge("aggregator", "output")
            return [members, ["aggregator"]], edges
        return [members], edges
    if kind == "debate":
        speakers = debaters(slots)
        for s in speakers:
            edge("input", s)
            edge(s, MEDIATOR, "rounds")
        edge(MEDIATOR, "output", "verdict")
        return [speakers, [MEDIATOR]], edges
    if kind == "cross_check":
        checkers = starting("checker_")
        edge("input", "primary")
        for c in checkers:
            edge("primary", c, "answer")
            edge(c, "primary", "issues")
        edge("primary", "output", "approved")
        return [["primary"], checkers], edges
    if kind == "chain_of_command":
        lieutenants, workers = starting("lieutenant_"), starting("worker_")
        edge("input", "commander")
        for lt in lieutenants:
            edge("commander", lt, "subtasks")
        for i, w in enumerate(workers):
            edge(lieutenants[i % len(lieutenants)] if lieutenants else "commander", w)
        edge("commander", "output", "synthesis")
        return [x for x in (["commander"], lieutenants, workers) if x], edges
    if kind == "delegation":
        specialists = [s for s in slots if s != "coordinator"]
        if "coordinator" in slots:
            edge("input", "coordinator")
            for s in specialists:
                edge("coordinator", s, "route")
            edge("coordinator", "output")
            return [["coordinator"], specialists], edges
        return [specialists], edges
    return [slots], edges


def _slot_of(root: dict[str, Any], key: str) -> tuple[str, str | None]:
    """The slot and agent of an invocation key, found the way `_place` finds them: down the
    nested topologies the key passes through, then the last segment naming a slot."""
    node, local = root, key
    while True:
        nested = _nested_slots(node)
        outer = _outer_key(local, nested)
        if outer is None:
            break
        slot = next(s for s in outer.split("/") if s in nested)
        node, local = nested[slot]["topology"], local[len(outer) + 1 :]
    agents = {m["slot"]: m.get("agent") for m in node["slots"] if m["kind"] == "agent"}
    for segment in reversed(local.split("/")):
        if segment in agents:
            return segment, agents[segment]
    return "", None


def _nested_slots(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["slot"]: m for m in node["slots"] if m["kind"] == "topology"}


def _outer_key(local: str, nested: Mapping[str, Any]) -> str | None:
    """The key of the call that ran a nested topology, if `local` (a key below a level's prefix)
    lies inside one: it ends at the nested slot's segment (plus a chain's `subtask-N` tag)."""
    segments = local.split("/")
    for i, segment in enumerate(segments[:-1]):
        if segment in nested:
            end = i + 1
            if end < len(segments) - 1 and _SUBTASK.match(segments[end]):
                end += 1
            return "/".join(segments[:end])
    return None


def _annotate(root: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Give every slot its keys and status; find the instances of nested topologies."""
    _place(root, [e for e in entries.values()], entries)


def _place(
    node: dict[str, Any], mine: list[dict[str, Any]], entries: dict[str, dict[str, Any]]
) -> None:
    nested = _nested_slots(node)
    direct: list[dict[str, Any]] = []
    inner: dict[str, list[dict[str, Any]]] = {}
    for entry in mine:
        local = entry["key"][len(node["prefix"]) :]
        outer = _outer_key(local, nested)
        if outer is None:
            direct.append(entry)
        else:
            inner.setdefault(outer, []).append(entry)
    node["keys"] = [e["key"] for e in direct]
    for member in node["slots"]:
        if member["kind"] == "agent":
            own = [e for e in direct if e["slot"] == member["slot"]]
            member.update(_summary(own))
            continue
        template = member["topology"]
        member["instances"] = []
        own = []
        for outer, group in inner.items():
            segments = outer.split("/")
            if member["slot"] not in segments:
                continue
            instance = _copy_node(template, node["prefix"] + outer + "/")
            instance["outer_key"] = node["prefix"] + outer
            _place(instance, group, entries)
            member["instances"].append(instance)
            own += group
        member.update(_summary(own))
    node["status"] = _status([e["status"] for e in mine])


def _copy_node(template: dict[str, Any], prefix: str) -> dict[str, Any]:
    copy = dict(template, prefix=prefix, instances=[])
    copy["slots"] = [
        dict(m, topology=_copy_node(m["topology"], "")) if m["kind"] == "topology" else dict(m)
        for m in template["slots"]
    ]
    return copy


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "status": _status([e["status"] for e in entries]),
        "invocations": sum(1 for e in entries if e["status"] != "waiting"),
        "keys": [e["key"] for e in entries],
        "input_tokens": sum(e["input_tokens"] for e in entries),
        "output_tokens": sum(e["output_tokens"] for e in entries),
        "cost_usd": _cost(entries),
        "approval_pending": any(
            (e.get("approval") or {}).get("status") == "pending" for e in entries
        ),
    }


def _status(statuses: list[str]) -> str:
    """One status for a slot or a level: idle (never called), running, failed, pending (stopped
    part-way, waiting for a human or the client), partial (some done, more to come), waiting
    (only planned) or completed."""
    if not statuses:
        return "idle"
    for status in ("running", "failed", "pending"):
        if status in statuses:
            return status
    if "waiting" in statuses:
        return "partial" if "completed" in statuses else "waiting"
    return "completed"


def _planned(
    node: dict[str, Any], entries: dict[str, dict[str, Any]]
) -> list[tuple[str, str, str | None]]:
    """(key, slot, agent) the topology calls next, as far as its kind says in advance."""
    prefix, config = node["prefix"], node["_parsed"]
    slots = [m["slot"] for m in node["slots"]]
    kind = node["type"]
    if config is None:
        return []
    local: list[str] = []
    if kind == "pipeline":
        local = [f"stage-{i}/{s}" for i, s in enumerate(stage_order(config, slots))]
    elif kind == "ensemble":
        local = [s for s in slots if s.startswith("ensemble_")]
        if str(config.aggregation_method) == "synthesis" and "aggregator" in slots:
            local.append("aggregator")
    elif kind == "debate":
        for n in range(1, config.max_rounds + 1):
            local += [f"round-{n}/{s}" for s in [*debaters(slots), MEDIATOR]]
            judged = entries.get(f"{prefix}round-{n}/{MEDIATOR}")
            if judged is not None and judged["status"] == "completed":
                agreement = judgment_of(judged["content"] or "")["agreement"]
                if config.allow_early_termination and agreement >= config.convergence_threshold:
                    break
    elif kind == "cross_check":
        local = ["primary", *(s for s in slots if s.startswith("checker_"))]
    elif kind == "chain_of_command":
        local = ["commander/plan"]
    elif kind == "delegation" and "coordinator" in slots:
        local = ["coordinator/route"]
    members = {m["slot"]: m for m in node["slots"]}
    keys: list[tuple[str, str, str | None]] = []
    for key in local:
        segments = key.split("/")
        slot = segments[-1] if segments[-1] in members else segments[0]
        member = members.get(slot)
        if member is not None and member["kind"] == "topology":
            keys += _planned(_copy_node(member["topology"], f"{prefix}{key}/"), entries)
        else:
            keys.append((prefix + key, slot, member.get("agent") if member else None))
    return keys


def _estimate(node: dict[str, Any]) -> int:
    kind, config = node["_kind"], node["_parsed"]
    if kind is None or config is None:
        return 0
    try:
        return int(kind.estimate(config, [m["slot"] for m in node["slots"]]))
    except Exception:  # a plugin kind's estimate must not break the view
        return 0


# -- what each kind means -------------------------------------------------------------------


def _panels(
    node: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    panels: list[dict[str, Any]],
    execution: Mapping[str, Any],
) -> None:
    by_local = {key[len(node["prefix"]) :]: entries[key] for key in node.get("keys", [])}
    title = node["name"] if not node["prefix"] else f"{node['name']} at {node.get('outer_key')}"
    base = {"prefix": node["prefix"], "topology": node["name"], "title": title}
    config = node["_parsed"]
    if node["type"] == "debate" and config is not None:
        panels.append(base | _debate(config, [m["slot"] for m in node["slots"]], by_local))
    elif node["type"] == "cross_check" and config is not None:
        slots = [m["slot"] for m in node["slots"]]
        panels.append(base | _cross_check(config, slots, by_local))
    elif node["type"] == "ensemble" and config is not None:
        output = execution.get("output") if not node["prefix"] else None
        panels.append(base | _ensemble(config, node["slots"], by_local, output))
    elif node["type"] == "pipeline" and config is not None:
        slots = [m["slot"] for m in node["slots"]]
        members = {m["slot"]: m for m in node["slots"]}
        stages = []
        for i, s in enumerate(stage_order(config, slots)):
            member = members.get(s) or {}
            if member.get("kind") == "topology":  # a nested topology answers as a whole
                said = _said(None) | {"status": member.get("status", "idle")}
                said |= {"key": f"{node['prefix']}stage-{i}/{s}", "agent": member.get("name")}
            else:
                said = _said(by_local.get(f"stage-{i}/{s}"))
            stages.append(
                {"index": i, "slot": s, "nested": member.get("kind") == "topology"} | said
            )
        panels.append(base | {"kind": "pipeline", "stages": stages})
    for member in node["slots"]:
        for instance in member.get("instances", []) if member["kind"] == "topology" else []:
            _panels(instance, entries, panels, execution)
    node.pop("_parsed", None)
    node.pop("_kind", None)
    for member in node["slots"]:
        if member["kind"] == "topology":
            _strip(member["topology"])


def _strip(node: dict[str, Any]) -> None:
    node.pop("_parsed", None)
    node.pop("_kind", None)
    for member in node["slots"]:
        if member["kind"] == "topology":
            _strip(member["topology"])


def _said(entry: dict[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        return {"key": None, "status": "idle", "content": None, "agent": None, "error": None}
    return {
        "key": entry["key"],
        "status": entry["status"],
        "content": entry["content"],
        "agent": entry["agent"],
        "error": entry["error"],
    }


def _debate(config: Any, slots: list[str], by_local: dict[str, dict[str, Any]]) -> dict[str, Any]:
    speakers = debaters(slots)
    numbers = sorted(
        {
            int(m.group(1))
            for k, e in by_local.items()
            if (m := _ROUND.match(k.split("/")[0])) and e["status"] != "waiting"
        }
    )
    rounds: list[dict[str, Any]] = []
    for n in numbers:
        turns = [
            {"slot": s, **_said(by_local.get(f"round-{n}/{s}"))}
            for s in speakers
            if f"round-{n}/{s}" in by_local
        ]
        mediator = by_local.get(f"round-{n}/{MEDIATOR}")
        judgment = None
        if mediator is not None and mediator["status"] == "completed":
            judgment = judgment_of(mediator["content"] or "")
            judgment["verdict"] = clip(judgment["verdict"])
        rounds.append(
            {
                "round": n,
                "turns": turns,
                "mediator": _said(mediator) if mediator else None,
                "judgment": judgment,
            }
        )
    judged = [r for r in rounds if r["judgment"]]
    verdict = None
    if judged:
        last = judged[-1]
        verdict = {"round": last["round"], **last["judgment"]}
        verdict["reached"] = (
            config.allow_early_termination
            and last["judgment"]["agreement"] >= config.convergence_threshold
        ) or last["round"] >= config.max_rounds
    return {
        "kind": "debate",
        "speakers": speakers,
        "max_rounds": config.max_rounds,
        "convergence_threshold": config.convergence_threshold,
        "rounds": rounds,
        "verdict": verdict,
    }


def _cross_check(
    config: Any, slots: list[str], by_local: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    checkers = [s for s in slots if s.startswith("checker_")]
    method = "unanimous" if config.require_unanimous_for_approval else config.consensus_method
    revisions = sorted(
        {0} | {int(m.group(1)) for k in by_local if (m := _REVISION.match(k.split("/")[0]))}
    )
    rounds: list[dict[str, Any]] = []
    for r in revisions:
        prefix = "" if r == 0 else f"revision-{r}/"
        answer = by_local.get(f"{prefix}primary")
        if answer is None and r > 0:
            continue
        validations = []
        for c in checkers:
            entry = by_local.get(f"{prefix}{c}")
            if entry is None or entry["status"] in ("waiting", "running"):
                validations.append({"checker": c, "status": entry["status"] if entry else "idle"})
            elif entry["status"] == "failed":
                validations.append(
                    {
                        "checker": c,
                        "status": "failed",
                        "approved": False,
                        "confidence": 1.0,
                        "issues": [f"the checker failed: {entry['error']}"],
                        "parsed": False,
                        "key": entry["key"],
                    }
                )
            else:
                verdict = parse_verdict(entry["content"] or "")
                verdict.pop("raw", None)
                validations.append(
                    {"checker": c, "status": "completed", "key": entry["key"]} | verdict
                )
        consensus = None
        if validations and all("approved" in v for v in validations) and answer is not None:
            consensus = determine_consensus({"content": answer["content"]}, validations, method)
            consensus.pop("primary", None)
        rounds.append(
            {
                "revision": r,
                "answer": _said(answer),
                "validations": validations,
                "consensus": consensus,
            }
        )
    final = next((r["consensus"] for r in reversed(rounds) if r["consensus"]), None)
    return {
        "kind": "cross_check",
        "method": method,
        "checkers": checkers,
        "rounds": rounds,
        "consensus": final,
        "approved": final["approved"] if final else None,
    }


def _ensemble(
    config: Any,
    members: list[dict[str, Any]],
    by_local: dict[str, dict[str, Any]],
    output: Any,
) -> dict[str, Any]:
    names = [m for m in members if m["slot"].startswith("ensemble_")]
    answers = []
    for member in names:
        slot = member["slot"]
        own = by_local.get(slot)
        if own is None and member["kind"] == "topology":  # a nested topology answers as a whole
            said = _said(None) | {"status": member.get("status", "idle")}
            answers.append({"slot": slot, "nested": True} | said | {"agent": member.get("name")})
            continue
        answers.append({"slot": slot, "nested": False, **_said(own)})
    aggregate: dict[str, Any] = {"method": str(config.aggregation_method)}
    if isinstance(output, dict):
        for field in ("winner", "votes", "best", "successes", "failures"):
            if field in output:
                aggregate[field] = output[field]
        aggregate["content"] = clip(output.get("content"))
    aggregator = by_local.get("aggregator")
    if aggregator is not None:
        aggregate["aggregator"] = _said(aggregator)
        aggregate.setdefault("content", aggregator["content"])
    return {"kind": "ensemble", "members": answers, "aggregate": aggregate}
