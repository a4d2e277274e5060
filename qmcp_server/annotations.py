"""The tool annotations the server's tools declare: what a client may assume of a call.

Outside the `tools` package, so that `qmcp_server.shortcuts` (which the tools import) uses the
same values as the tools themselves.
"""

from __future__ import annotations

from mcp_types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
RUN = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)
# Update: the same values again change nothing more; delete: gone (executions keep their records).
UPDATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)
CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True)
