"""One registry type for everything that is looked up by name: model providers, topology kinds,
mixins, runners and functions.

A registry is filled by plugins (`plugins.py`): the built-in one (`qmcp.agentframework.builtins`)
first, then the `qmcp.plugins` entry points of installed distributions, then the modules named in
`QMCP_PLUGINS`. They are loaded once, on the first look-up, so a program that imports only what it
needs (a Metaflow step, the stdio server answering `tools/list`) pays for nothing else.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from qmcp.agentframework.errors import QmcpError, ValidationError, known

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one sort by name, in registration order: register, get, list, unregister, reset.

    `sort` names the items in messages ("mixin", "runner"); `hint` says where to see them;
    `missing` is the error an unknown name raises; `normalize` maps a given name to its key
    (aliases).
    """

    def __init__(
        self,
        sort: str,
        *,
        hint: str = "",
        missing: type[QmcpError] = ValidationError,
        normalize: Callable[[str], str] | None = None,
    ) -> None:
        self.sort = sort
        self.hint = hint
        self.missing = missing
        self.normalize = normalize
        self._items: dict[str, T] = {}
        self._builtin: dict[str, T] = {}
        self._early: set[str] = set()  # registered by the program before the plugins loaded
        self.version = 0  # changes with every registration: caches of what was looked up key on it

    def _key(self, name: str) -> str:
        return self.normalize(name) if self.normalize is not None else name

    def register(self, name: str, item: T) -> T:
        """Add or replace `name`. Registering loads no plugins (a class decorator may register
        while its module is still being imported); what plugins register while they load is
        what `reset` returns to."""
        from qmcp.agentframework.plugins import loading_builtins, plugins_ready

        key = self._key(name)
        if loading_builtins():
            self._builtin[key] = item
            if key in self._early:  # the program registered its own before plugins loaded
                return self._items[key]
        elif not plugins_ready():
            self._early.add(key)
        self._items[key] = item
        self.version += 1
        return item

    def get(self, name: str) -> T:
        from qmcp.agentframework.plugins import ensure_plugins

        ensure_plugins()
        try:
            key = self._key(name)
            return self._items[key]
        except (KeyError, ValueError, QmcpError):
            hint = f" (see {self.hint})" if self.hint else ""
            raise self.missing(
                f"unknown {self.sort} {name!r}; known: {known(sorted(self.list())) or 'none'}{hint}"
            ) from None

    def find(self, name: str) -> T | None:
        """The item, or None: for callers that have their own answer to a missing name."""
        from qmcp.agentframework.plugins import ensure_plugins

        ensure_plugins()
        try:
            return self._items.get(self._key(name))
        except (ValueError, QmcpError):
            return None

    def list(self) -> builtins.list[str]:
        """The registered names, in registration order."""
        from qmcp.agentframework.plugins import ensure_plugins

        ensure_plugins()
        return list(self._items)

    def items(self) -> builtins.list[T]:
        from qmcp.agentframework.plugins import ensure_plugins

        ensure_plugins()
        return list(self._items.values())

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except QmcpError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def unregister(self, name: str) -> None:
        self._items.pop(self._key(name), None)
        self.version += 1

    def reset(self) -> None:
        """Back to what the plugins registered when they loaded (the built-ins, entry points
        and QMCP_PLUGINS modules): what was registered or unregistered since is undone."""
        self._items = dict(self._builtin)
        self.version += 1
