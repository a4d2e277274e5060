"""Plugins fill the registries: providers, topology kinds, mixins, runners, functions.

Three sources, in this order, through one path:
1. the built-in plugin, `qmcp.agentframework.builtins` (also declared as the `builtin` entry point);
2. the `qmcp.plugins` entry points of installed distributions: an entry point names a module
   (imported for what it registers) or a callable (called with no arguments);
3. the modules named in `QMCP_PLUGINS` (comma-separated), e.g. `register_function("mine", fn)`
   for agents on the `function:mine` model, or `ProviderRegistry.register("mine", factory)`.

Registries load plugins on their first use; the CLI, the MCP server and every Metaflow step call
`load_plugins()` at start-up as well, so `QMCP_PLUGINS` set for them is honoured and a model works
the same everywhere.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import EntryPoint

from qmcp.agentframework.errors import ConfigurationError

BUILTIN = "qmcp.agentframework.builtins"
GROUP = "qmcp.plugins"

_loaded: set[str] = set()
_state = {"ready": False, "loading": False}


def loading_builtins() -> bool:
    """True while plugins load: what is registered now is what `Registry.reset` returns to."""
    return _state["loading"]


def plugins_ready() -> bool:
    return _state["ready"]


def ensure_plugins() -> None:
    """Load the plugins once (the registries' look-ups call this: one check when loaded)."""
    if not _state["ready"]:
        load_plugins()


def load_plugins() -> list[str]:
    """Load every plugin not loaded yet; the names of the `QMCP_PLUGINS` modules."""
    names = [m.strip() for m in os.environ.get("QMCP_PLUGINS", "").split(",") if m.strip()]
    if _state["ready"] and all(name in _loaded for name in names):
        return names
    if _state["loading"]:
        return names  # a plugin registering while plugins load
    _state["loading"] = True
    try:
        if not _state["ready"]:
            _import(BUILTIN, "the built-in plugin")
            for entry_point in _entry_points():
                _load_entry_point(entry_point)
        for name in names:
            if name not in _loaded:
                _import(name, "QMCP_PLUGINS")
    finally:
        _state["loading"] = False
    _state["ready"] = True
    return names


def _entry_points() -> list[EntryPoint]:
    from importlib.metadata import entry_points

    return [e for e in entry_points(group=GROUP) if e.value.split(":")[0] != BUILTIN]


def _load_entry_point(entry_point: EntryPoint) -> None:
    if entry_point.value in _loaded:
        return
    try:
        loaded = entry_point.load()
        if callable(loaded):
            loaded()
    except Exception as exc:
        raise ConfigurationError(
            f"the {GROUP} entry point {entry_point.name!r} ({entry_point.value}) failed to load: "
            f"{type(exc).__name__}: {exc}; fix or uninstall the distribution that declares it"
        ) from None
    _loaded.add(entry_point.value)


def _import(name: str, source: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{source} names {name!r}, which cannot be imported ({exc}); fix the module "
            "name or PYTHONPATH, or remove it from QMCP_PLUGINS"
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"{source} names {name!r}, which failed while loading: {type(exc).__name__}: "
            f"{exc}; fix the module or remove it from QMCP_PLUGINS"
        ) from None
    _loaded.add(name)
