"""cross_check: a primary answers, checkers validate independently, the primary revises.

Each checker sees the request and the primary's answer and returns approval JSON; a checker that
fails counts as a rejection. On rejection the primary revises with every issue raised, up to
`max_revisions` times; the final answer is the last one, approved or not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from qmcp.agentframework.errors import InvocationFailed, ValidationError
from qmcp.agentframework.models import TopologyType
from qmcp.agentframework.models.topology_configs import TopologyConfigBase
from qmcp.agentframework.text import main_text
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    reject_unexpected,
    require_slots,
)
from qmcp.agentframework.topologies.consensus import (
    VERDICT_FORMAT,
    determine_consensus,
    parse_verdict,
)
from qmcp.agentframework.topologies.flow import FlowStep

PRIMARY = "primary"
CHECKER_PREFIX = "checker_"


class CrossCheckConfig(TopologyConfigBase):
    """How checkers' verdicts combine, and how often the primary may revise."""

    num_checkers: int | None = Field(
        default=None, ge=2, le=10, description="must equal the number of checker_* slots if set"
    )
    consensus_method: Literal["majority", "unanimous", "weighted"] = "majority"
    require_unanimous_for_approval: bool = Field(
        default=False, description="approve only when every checker approves"
    )
    max_revisions: int = Field(default=1, ge=0, le=5)


def check_slots(config: CrossCheckConfig, slots: list[str]) -> None:
    checkers = [s for s in slots if s.startswith(CHECKER_PREFIX)]
    require_slots("cross_check", slots, [PRIMARY])
    if len(checkers) < 2:
        raise ValidationError(
            f"cross_check needs at least 2 checker_* slots (given: {', '.join(checkers) or 'none'})"
        )
    if config.num_checkers is not None and config.num_checkers != len(checkers):
        raise ValidationError(
            f"num_checkers is {config.num_checkers} but {len(checkers)} checker_* slots are given"
        )
    reject_unexpected(
        "cross_check",
        [s for s in slots if s != PRIMARY and s not in checkers],
        "primary, checker_*",
    )


def check_prompt(request: str, answer: str) -> str:
    return (
        f"Check this answer to the request. Answer only with JSON of the form {VERDICT_FORMAT}.\n\n"
        f"Request:\n{request}\n\nAnswer:\n{answer}"
    )


def revise_prompt(request: str, answer: str, issues: list[str]) -> str:
    listed = "\n".join(f"- {issue}" for issue in issues) or "- (no issue given)"
    return (
        f"Your answer was not approved. Revise it to address the issues.\n\nRequest:\n{request}"
        f"\n\nYour answer:\n{answer}\n\nIssues:\n{listed}"
    )


def flow_shape(config: CrossCheckConfig, slots: list[str]) -> list[FlowStep]:
    """The primary, its checkers in parallel, then per revision: the primary, its checkers.

    Keys as `run` builds them: `primary`, `checker_*`, `revision-{r}/primary`,
    `revision-{r}/checker_*`. A revision that is not needed leaves its steps with nothing to do.
    """
    shape = [
        FlowStep("primary", (PRIMARY,)),
        FlowStep("checkers", (f"{CHECKER_PREFIX}*",), foreach=True),
    ]
    for r in range(1, config.max_revisions + 1):
        shape.append(FlowStep(f"revision_{r}", (f"revision-{r}/{PRIMARY}",)))
        shape.append(
            FlowStep(f"revision_{r}_checkers", (f"revision-{r}/{CHECKER_PREFIX}*",), foreach=True)
        )
    return shape


async def run(ctx: RunContext, config: CrossCheckConfig, input: dict[str, Any]) -> Output:
    checkers = ctx.slots(CHECKER_PREFIX)
    request = main_text(input)
    method = "unanimous" if config.require_unanimous_for_approval else config.consensus_method
    answer = await ctx.invoke(PRIMARY, input, key=PRIMARY)
    rounds: list[dict[str, Any]] = []
    for revision in range(config.max_revisions + 1):
        prefix = "" if revision == 0 else f"revision-{revision}/"
        prompt = {"prompt": check_prompt(request, answer["content"])}
        outcomes = await ctx.gather(ctx.try_invoke(c, prompt, key=f"{prefix}{c}") for c in checkers)
        validations = []
        for checker, outcome in zip(checkers, outcomes, strict=True):
            if isinstance(outcome, InvocationFailed):
                verdict = {
                    "approved": False,
                    "confidence": 1.0,
                    "issues": [f"the checker failed: {outcome.reason}"],
                    "parsed": False,
                }
            else:
                verdict = parse_verdict(outcome["content"])
            validations.append({"checker": checker, **verdict})
        consensus = determine_consensus(answer, validations, method)
        rounds.append(
            {"answer": answer["content"], "validations": validations, "consensus": consensus}
        )
        if consensus["approved"] or revision == config.max_revisions:
            break
        answer = await ctx.invoke(
            PRIMARY,
            {"prompt": revise_prompt(request, answer["content"], consensus["issues"])},
            key=f"revision-{revision + 1}/{PRIMARY}",
        )
    last = rounds[-1]
    return {
        "content": answer["content"],
        "primary": answer["content"],
        "validations": last["validations"],
        "consensus": last["consensus"],
        "approved": last["consensus"]["approved"],
        "revisions": len(rounds) - 1,
        "rounds": rounds,
    }


KIND = TopologyKind(
    type=TopologyType.CROSS_CHECK,
    config_model=CrossCheckConfig,
    run=run,
    check_slots=check_slots,
    estimate=lambda config, slots: len(slots),
    summary="primary answers, checker_* validate, the primary revises until approved",
    flow_shape=flow_shape,
)
