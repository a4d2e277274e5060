"""One measured figure (a row of the table and of the result file), and small statistics."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class Row:
    """A figure with its unit, its target (None: informational) and which direction is better."""

    name: str
    value: float
    unit: str
    target: float | None = None
    better: Literal["lower", "higher"] = "lower"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        holds = self.value <= self.target if self.better == "lower" else self.value >= self.target
        return "pass" if holds else "MISS"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = round(self.value, 4)
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
