"""Mermaid diagrams of topologies: who talks to whom, for humans reading a topology resource."""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import pairwise

from qmcp.agentframework.models import TopologyType


def _node(slot: str) -> str:
    return "n_" + re.sub(r"\W", "_", slot)


def _label(slot: str, agent: str) -> str:
    text = f"{slot}: {agent}".replace('"', "'")
    return f'{_node(slot)}["{text}"]'


def mermaid(topology_type: str, config: Mapping[str, object], slots: Mapping[str, str]) -> str:
    """A `flowchart` for the topology; slots map to agent names."""
    kind = TopologyType.parse(topology_type)
    lines = ["flowchart LR", '  input(["input"])', '  output(["output"])']
    lines += [f"  {_label(slot, agent)}" for slot, agent in slots.items()]
    names = list(slots)

    def edge(a: str, b: str, label: str = "") -> None:
        arrow = f"-->|{label}|" if label else "-->"
        lines.append(f"  {a} {arrow} {b}")

    def by_prefix(prefix: str) -> list[str]:
        return [s for s in names if s.startswith(prefix)]

    if kind is TopologyType.PIPELINE:
        stages = list(config.get("stages") or names)  # type: ignore[call-overload]
        chain = ["input", *(_node(s) for s in stages), "output"]
        for a, b in pairwise(chain):
            edge(a, b)
    elif kind is TopologyType.ENSEMBLE:
        target = _node("aggregator") if "aggregator" in slots else "output"
        for member in by_prefix("ensemble_"):
            edge("input", _node(member))
            edge(_node(member), target, str(config.get("aggregation_method", "")))
        if "aggregator" in slots:
            edge(_node("aggregator"), "output")
    elif kind is TopologyType.CROSS_CHECK:
        edge("input", _node("primary"))
        for checker in by_prefix("checker_"):
            edge(_node("primary"), _node(checker), "answer")
            edge(_node(checker), _node("primary"), "issues")
        edge(_node("primary"), "output", "approved")
    elif kind is TopologyType.DEBATE:
        debaters = [s for s in names if s != "mediator"]
        for debater in debaters:
            edge("input", _node(debater))
            edge(_node(debater), _node("mediator"), "rounds")
        edge(_node("mediator"), "output", "verdict")
    elif kind is TopologyType.CHAIN_OF_COMMAND:
        edge("input", _node("commander"))
        lieutenants, workers = by_prefix("lieutenant_"), by_prefix("worker_")
        for lieutenant in lieutenants:
            edge(_node("commander"), _node(lieutenant), "subtasks")
        for i, worker in enumerate(workers):
            boss = lieutenants[i % len(lieutenants)] if lieutenants else "commander"
            edge(_node(boss), _node(worker))
        edge(_node("commander"), "output", "synthesis")
    else:  # delegation
        edge("input", _node("coordinator"))
        for specialist in names:
            if specialist != "coordinator":
                edge(_node("coordinator"), _node(specialist), "route")
        edge(_node("coordinator"), "output")
    return "\n".join(lines)
