"""Compound topologies: a slot filled by a stored topology instead of an agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 5  # how deep topologies may nest inside one another


@dataclass(frozen=True)
class SubTopology:
    """A slot filled by a stored topology instead of an agent (a compound topology).

    It answers like an agent: its output's `content` is what the outer topology reads. The
    agent-like fields let topologies that describe their members (delegation) describe it too.
    """

    topology: Any  # models.Topology
    agents: Mapping[str, Any]  # slot -> AgentType | SubTopology

    @property
    def name(self) -> str:
        return str(self.topology.name)

    @property
    def description(self) -> str:
        return str(self.topology.description or "")

    @property
    def role(self) -> str:
        return "executor"

    @property
    def config(self) -> dict[str, Any]:
        return {}
