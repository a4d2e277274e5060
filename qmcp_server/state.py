"""What every tool, resource and prompt of one server shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from qmcp_server.notify import Notifier
from qmcp_server.runs import BackgroundRuns


@dataclass(frozen=True)
class ServerState:
    """The database this server serves (None: QMCP_DATABASE_URL or the default) and the runs it
    carries on after their tool call answered."""

    db_url: str | None = None
    runs: BackgroundRuns = field(default_factory=BackgroundRuns)
    remote: bool = False  # clients reach it over HTTP (see `build_server`)

    @property
    def notifier(self) -> Notifier:
        """Who hears of changes (subscriptions, list changes, a run's log lines)."""
        return self.runs.notifier
