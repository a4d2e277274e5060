"""The built-in plugin: the providers, mixins, topology kinds and runners qmcp ships.

It registers through the same registries and the same loader (`plugins.py`) as a third-party
plugin does, and is declared as the `builtin` entry point of the `qmcp.plugins` group.
"""

from __future__ import annotations

from qmcp.agentframework.llm import (
    AnthropicProvider,
    FunctionProvider,
    OfflineProvider,
    ProviderRegistry,
)
from qmcp.agentframework.mixins import (
    HumanInLoop,
    Memory,
    MixinRegistry,
    Reasoning,
    StructuredOutput,
)


def register() -> None:
    ProviderRegistry.register("anthropic", AnthropicProvider)
    ProviderRegistry.register("offline", OfflineProvider)
    ProviderRegistry.register("function", FunctionProvider)
    for mixin in (Reasoning, StructuredOutput, Memory, HumanInLoop):
        MixinRegistry.add(mixin)


register()
