"""Plugins: modules named in `QMCP_PLUGINS` (comma-separated) are imported at start-up.

A plugin registers what it brings when imported, e.g. `register_function("mine", fn)` for agents
on the `function:mine` model, or a provider with `ProviderRegistry.register`. The CLI, the MCP
server and every Metaflow step load the same plugins, so a model works the same everywhere.
"""

from __future__ import annotations

import importlib
import os

from qmcp.agentframework.errors import ConfigurationError

_loaded: set[str] = set()


def load_plugins() -> list[str]:
    names = [m.strip() for m in os.environ.get("QMCP_PLUGINS", "").split(",") if m.strip()]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"QMCP_PLUGINS names {name!r}, which cannot be imported ({exc}); fix the module "
                "name or PYTHONPATH, or remove it from QMCP_PLUGINS"
            ) from None
        _loaded.add(name)
    return names
