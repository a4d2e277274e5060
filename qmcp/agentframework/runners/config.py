"""`RunConfig`: how a topology run behaves (timeout, retries, budget, checkpointing, logging,
metrics)."""

from __future__ import annotations

from pydantic import field_validator
from sqlmodel import Field, SQLModel

from qmcp.agentframework.errors import QmcpError

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class RunConfig(SQLModel):
    """Configuration for a topology run."""

    correlation_id: str | None = Field(default=None, max_length=200)
    timeout_seconds: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    checkpoint_enabled: bool = True
    retry_on_failure: bool = True
    max_retries: int = Field(default=3, ge=0, le=20)
    log_level: str = "INFO"
    trace_enabled: bool = True
    metrics_enabled: bool = True
    # The budget: the run stops before an invocation once the execution has spent this much
    # (earlier segments of a resumed execution count). Invocations whose model has no known
    # price count 0 toward max_cost_usd; max_total_tokens counts input (cached included) plus
    # output tokens.
    max_cost_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    max_total_tokens: int | None = Field(default=None, gt=0)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}; known: {', '.join(_LOG_LEVELS)}")
        return level


class BudgetExceeded(QmcpError):
    """The run's budget (`max_cost_usd`, `max_total_tokens`) is spent: the whole run stops (a
    topology's failure policy does not absorb it), and the execution resumes with a larger one."""
