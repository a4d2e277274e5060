"""Ensemble aggregation: one implementation for every runner (Metaflow helpers call it too)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.models import AggregationMethod
from qmcp.agentframework.text import confidence_of, main_text, number_of, vote_of

Member = tuple[str, dict[str, Any]]  # (slot, invocation output)


def aggregate(method: AggregationMethod | str, members: list[Member]) -> dict[str, Any]:
    """Combine member outputs without calling a model (synthesis is done by the ensemble).

    Ties are broken by slot order: the earliest member wins.
    """
    method = AggregationMethod(method)
    if not members:
        raise ValidationError("nothing to aggregate: no ensemble member succeeded")
    if method is AggregationMethod.VOTE:
        ballots = [(slot, vote_of(out["content"])) for slot, out in members]
        counts = Counter(b for _, b in ballots)
        top = max(counts.values())
        winner_slot, winner = next((s, b) for s, b in ballots if counts[b] == top)
        content = dict(members)[winner_slot]["content"]
        return {"content": content, "winner": winner, "votes": dict(counts), "best": winner_slot}
    if method is AggregationMethod.AVERAGE:
        values = {slot: number_of(out["content"]) for slot, out in members}
        numeric = {slot: v for slot, v in values.items() if v is not None}
        if not numeric:
            raise ValidationError(
                "average aggregation needs numeric answers (a number, a JSON score/value, or a "
                "'score: x' line) and no member gave one; use vote, concat, best_of or synthesis"
            )
        mean = sum(numeric.values()) / len(numeric)
        return {
            "content": f"{mean:g}",
            "average": mean,
            "values": numeric,
            "ignored": sorted(set(values) - set(numeric)),
        }
    if method is AggregationMethod.CONCAT:
        content = "\n\n".join(
            f"## {slot} ({out.get('agent', slot)})\n{out['content']}" for slot, out in members
        )
        return {"content": content}
    if method is AggregationMethod.BEST_OF:
        scored = [(slot, confidence_of(out["content"]) or 0.0) for slot, out in members]
        best_score = max(score for _, score in scored)
        best_slot = next(slot for slot, score in scored if score == best_score)
        return {
            "content": dict(members)[best_slot]["content"],
            "best": best_slot,
            "confidence": best_score,
            "scores": dict(scored),
        }
    raise ValidationError("synthesis aggregation needs the aggregator agent; use synthesis_prompt")


def synthesis_prompt(request: Any, members: list[Member]) -> str:
    """What the aggregator is asked: the original request and every member's answer."""
    answers = "\n\n".join(
        f"### Answer {i} ({slot}, {out.get('agent', slot)})\n{out['content']}"
        for i, (slot, out) in enumerate(members, start=1)
    )
    return (
        f"Synthesize the {len(members)} answers below into one best answer to the request.\n\n"
        f"Request:\n{main_text(request)}\n\n{answers}"
    )
