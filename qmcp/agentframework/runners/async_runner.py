"""AsyncRunner: parallel branches run concurrently, at most `max_concurrent` model calls at once."""

from __future__ import annotations

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.runners.base import BaseRunner, RunConfig, runner


@runner
class AsyncRunner(BaseRunner):
    """Concurrent branches, at most `max_concurrent` model calls at once."""

    runner_type = "async"

    def __init__(
        self,
        db_url: str | None = None,
        max_concurrent: int = 5,
        config: RunConfig | None = None,
    ) -> None:
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValidationError(
                f"max_concurrent must be a positive integer, not {max_concurrent!r}"
            )
        super().__init__(config=config, db_url=db_url)
        self.max_concurrent = max_concurrent
        self.concurrency = max_concurrent
