"""Capability mixins: named, versioned changes to how an agent is invoked."""

from qmcp.agentframework.mixins.base import Mixin, MixinRegistry

__all__ = ["Mixin", "MixinRegistry"]
