"""The built-in plugin: the providers, mixins, topology kinds and runners qmcp ships.

It registers through the same registries and the same loader (`plugins.py`) as a third-party
plugin does, and is declared as the `builtin` entry point of the `qmcp.plugins` group.
"""

from __future__ import annotations

from qmcp.agentframework.llm import (
    AnthropicProvider,
    FunctionProvider,
    OfflineProvider,
    OpenAIProvider,
    ProviderRegistry,
)
from qmcp.agentframework.mixins import (
    HumanInLoop,
    Memory,
    MixinRegistry,
    Reasoning,
    StructuredOutput,
    ToolUse,
)
from qmcp.agentframework.runners import (
    AsyncRunner,
    LocalRunner,
    MetaflowRunner,
    RunnerRegistry,
)
from qmcp.agentframework.topologies import BUILTIN_KINDS, TopologyRegistry


def register() -> None:
    ProviderRegistry.register("anthropic", AnthropicProvider)
    ProviderRegistry.register("offline", OfflineProvider)
    ProviderRegistry.register("function", FunctionProvider)
    ProviderRegistry.register("openai", OpenAIProvider)
    for mixin in (ToolUse, Reasoning, StructuredOutput, Memory, HumanInLoop):
        MixinRegistry.add(mixin)
    for kind in BUILTIN_KINDS:
        TopologyRegistry.add(kind)
    # The runners' `@runner` registered them when their modules were imported; registering
    # them here again makes them part of what `RunnerRegistry.reset` returns to.
    for runner_cls in (LocalRunner, AsyncRunner, MetaflowRunner):
        RunnerRegistry.add(runner_cls)


register()
