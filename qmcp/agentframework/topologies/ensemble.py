"""ensemble: `ensemble_*` members answer the same input in parallel; their answers are aggregated.

Members that fail are tolerated up to `min_successes` / `failure_threshold`; synthesis asks the
`aggregator` slot to combine the answers, the other methods combine them without a model.
"""

from __future__ import annotations

import math
from typing import Any

from qmcp.agentframework.errors import InvocationFailed, TopologyFailed, ValidationError
from qmcp.agentframework.models import AggregationMethod, EnsembleConfig, TopologyType
from qmcp.agentframework.topologies.aggregation import aggregate, synthesis_prompt
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    reject_unexpected,
    require_slots,
)
from qmcp.agentframework.topologies.flow import FlowStep

PREFIX = "ensemble_"
AGGREGATOR = "aggregator"


def check_slots(config: EnsembleConfig, slots: list[str]) -> None:
    members = [s for s in slots if s.startswith(PREFIX)]
    if not members:
        require_slots("ensemble", slots, ["ensemble_0"])
    synthesis = config.aggregation_method == AggregationMethod.SYNTHESIS
    if synthesis:
        require_slots("ensemble (synthesis)", slots, [AGGREGATOR])
    allowed = set(members) | ({AGGREGATOR} if synthesis else set())
    reject_unexpected(
        "ensemble",
        [s for s in slots if s not in allowed],
        "ensemble_* members" + (" and aggregator" if synthesis else ""),
    )
    if config.min_successes is not None and config.min_successes > len(members):
        raise ValidationError(
            f"min_successes is {config.min_successes} but the ensemble has only "
            f"{len(members)} member(s); lower it or add ensemble_* members"
        )


def required_successes(config: EnsembleConfig, members: int) -> int:
    if config.min_successes is not None:
        return config.min_successes
    return max(1, members - math.floor(members * config.failure_threshold + 1e-9))


def flow_shape(config: EnsembleConfig, slots: list[str]) -> list[FlowStep]:
    """Members in parallel (key: the member's slot), then, for synthesis, the aggregator."""
    shape = [FlowStep("members", (f"{PREFIX}*",), foreach=True)]
    if config.aggregation_method == AggregationMethod.SYNTHESIS:
        shape.append(FlowStep("aggregate", (AGGREGATOR,)))
    return shape


async def run(ctx: RunContext, config: EnsembleConfig, input: dict[str, Any]) -> Output:
    members = ctx.slots(PREFIX)
    outcomes = await ctx.gather(ctx.try_invoke(slot, input, key=slot) for slot in members)
    succeeded = [(s, o) for s, o in zip(members, outcomes, strict=True) if isinstance(o, dict)]
    failed = {
        s: o.reason
        for s, o in zip(members, outcomes, strict=True)
        if isinstance(o, InvocationFailed)
    }
    needed = required_successes(config, len(members))
    if len(succeeded) < needed:
        raise TopologyFailed(
            f"ensemble: {len(succeeded)} of {len(members)} members succeeded, {needed} needed; "
            + "; ".join(f"{slot}: {reason}" for slot, reason in failed.items()),
        )
    if config.aggregation_method == AggregationMethod.SYNTHESIS:
        synthesized = await ctx.invoke(
            AGGREGATOR, {"prompt": synthesis_prompt(input, succeeded)}, key=AGGREGATOR
        )
        result: Output = {"content": synthesized["content"], "aggregator": synthesized.get("agent")}
    else:
        result = aggregate(config.aggregation_method, succeeded)
    result.update(
        {
            "method": AggregationMethod(config.aggregation_method).value,
            "members": {slot: out["content"] for slot, out in succeeded},
            "failures": failed,
            "successes": len(succeeded),
        }
    )
    return result


KIND = TopologyKind(
    type=TopologyType.ENSEMBLE,
    config_model=EnsembleConfig,
    run=run,
    check_slots=check_slots,
    estimate=lambda config, slots: len(slots),
    summary="ensemble_* members in parallel, then vote/average/concat/best_of/synthesis",
    flow_shape=flow_shape,
)
