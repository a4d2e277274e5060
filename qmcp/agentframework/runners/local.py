"""LocalRunner: in-process, one invocation at a time. Best for development and testing."""

from __future__ import annotations

from qmcp.agentframework.runners.base import BaseRunner, RunConfig, runner


@runner
class LocalRunner(BaseRunner):
    """In-process, one invocation at a time: best for development and testing."""

    runner_type = "local"
    concurrency = None

    def __init__(self, config: RunConfig | None = None, db_url: str | None = None) -> None:
        super().__init__(config=config, db_url=db_url)
