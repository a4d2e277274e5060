"""Verdicts and consensus for cross-checks: parsed, never guessed from substrings.

Tie rules, defined once:
- unanimous: approved only if there is at least one validation and every one approves.
- majority: approved only if strictly more than half approve (a tie is not approval).
- weighted: each validation weighs its confidence; approved only if the approving weight is
  strictly more than half of the total (a tie, or a total of zero, is not approval).
"""

from __future__ import annotations

from typing import Any

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.models import ConsensusMethod
from qmcp.agentframework.text import parse_json_object

VERDICT_FORMAT = '{"approved": true|false, "confidence": 0.0-1.0, "issues": ["…"]}'


def parse_verdict(text: str) -> dict[str, Any]:
    """A checker's approval JSON. An answer that is not one is a rejection that says so."""
    data = parse_json_object(text)
    if data is None or not isinstance(data.get("approved"), bool):
        return {
            "approved": False,
            "confidence": 1.0,
            "issues": [f"the verdict could not be read as {VERDICT_FORMAT}"],
            "parsed": False,
            "raw": text[:2000],
        }
    confidence = data.get("confidence", 1.0)
    if not isinstance(confidence, int | float) or isinstance(confidence, bool):
        confidence = 1.0
    issues = data.get("issues") or []
    if not isinstance(issues, list):
        issues = [issues]
    return {
        "approved": data["approved"],
        "confidence": min(1.0, max(0.0, float(confidence))),
        "issues": [str(i) for i in issues],
        "parsed": True,
    }


def determine_consensus(
    primary: dict[str, Any], validations: list[dict[str, Any]], method: str
) -> dict[str, Any]:
    """Consensus of validations (each {approved, confidence, issues}) on the primary's answer."""
    try:
        chosen = ConsensusMethod(method)
    except ValueError:
        known = ", ".join(m.value for m in ConsensusMethod)
        raise ValidationError(f"unknown consensus method {method!r}; known: {known}") from None
    approving = [v for v in validations if v.get("approved") is True]
    total = len(validations)
    if chosen is ConsensusMethod.UNANIMOUS:
        approved = total > 0 and len(approving) == total
        score = len(approving) / total if total else 0.0
    elif chosen is ConsensusMethod.MAJORITY:
        approved = len(approving) * 2 > total
        score = len(approving) / total if total else 0.0
    else:
        weight = sum(float(v.get("confidence", 0.0)) for v in validations)
        approving_weight = sum(float(v.get("confidence", 0.0)) for v in approving)
        score = approving_weight / weight if weight else 0.0
        approved = weight > 0 and approving_weight * 2 > weight
    issues = [issue for v in validations if not v.get("approved") for issue in v.get("issues", [])]
    return {
        "approved": approved,
        "method": chosen.value,
        "approvals": len(approving),
        "rejections": total - len(approving),
        "score": round(score, 4),
        "issues": issues,
        "primary": primary.get("content") if isinstance(primary, dict) else primary,
    }
