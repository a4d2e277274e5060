"""How long an execution's lease lasts: `QMCP_LEASE_SECONDS` (default 30).

A running execution's owner renews its lease every third of this; a lease left to lapse means its
owner stopped, on whatever host it ran, so any process sharing the database may take the run over.
Hosts compare their clocks through the stored expiry: keep them in sync (NTP), well within this.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta

from qmcp.agentframework.errors import ValidationError

LEASE_VARIABLE = "QMCP_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0
MIN_LEASE_SECONDS = 0.3  # shorter would renew faster than a loaded database answers


def lease_seconds() -> float:
    """The lease length this process gives and expects, read at each use (tests shorten it)."""
    text = os.environ.get(LEASE_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_LEASE_SECONDS:
        raise ValidationError(
            f"{LEASE_VARIABLE}={text[:40]!r} is not a lease length; give a number of seconds "
            f"of at least {MIN_LEASE_SECONDS} (default {DEFAULT_LEASE_SECONDS:g})"
        )
    return value


def lease_until(now: datetime) -> datetime:
    """When a lease taken or renewed at `now` lapses."""
    return now + timedelta(seconds=lease_seconds())
