"""One measured figure (a row of the table and of the result file), and small statistics."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class Row:
    """A figure with its unit, its target (None: informational) and which direction is better.

    `reference` is the same figure for what qmcp is compared with in the same run (LangGraph, or
    the one-tool MCP server), in the same unit. With `on_ratio` the target is on
    value / reference (a ratio, "x"); otherwise on the value, and the reference is for context.
    """

    name: str
    value: float
    unit: str
    target: float | None = None
    better: Literal["lower", "higher"] = "lower"
    note: str = ""
    reference: float | None = None
    versus: str = ""  # what the reference is: "LangGraph", "one-tool server"
    on_ratio: bool = False

    @property
    def ratio(self) -> float | None:
        return self.value / self.reference if self.reference else None

    @property
    def judged(self) -> float:
        """The figure the target applies to."""
        if self.on_ratio:
            assert self.ratio is not None, self.name
            return self.ratio
        return self.value

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        figure = self.judged
        holds = figure <= self.target if self.better == "lower" else figure >= self.target
        return "pass" if holds else "MISS"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = round(self.value, 4)
        if self.reference is not None:
            data["reference"] = round(self.reference, 4)
            data["ratio"] = round(self.value / self.reference, 4)
        data["verdict"] = self.verdict
        return data


def median(values: list[float]) -> float:
    return statistics.median(values)


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x: fixed cost and marginal cost per unit."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return mean_y - slope * mean_x, slope
