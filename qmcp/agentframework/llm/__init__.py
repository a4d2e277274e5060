"""Model providers behind one async protocol, and the registry that finds them."""

from qmcp.agentframework.llm.anthropic_provider import AnthropicProvider
from qmcp.agentframework.llm.base import (
    LLMRequest,
    LLMResponse,
    Message,
    Provider,
    ProviderRegistry,
    count_tokens,
)
from qmcp.agentframework.llm.function import (
    FunctionProvider,
    register_function,
    unregister_function,
)
from qmcp.agentframework.llm.offline import OfflineProvider
from qmcp.agentframework.llm.pricing import PRICES_AS_OF, PRICES_SOURCE, estimate_cost

ProviderRegistry.register("anthropic", AnthropicProvider)
ProviderRegistry.register("offline", OfflineProvider)
ProviderRegistry.register("function", FunctionProvider)

__all__ = [
    "PRICES_AS_OF",
    "PRICES_SOURCE",
    "AnthropicProvider",
    "FunctionProvider",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "OfflineProvider",
    "Provider",
    "ProviderRegistry",
    "count_tokens",
    "estimate_cost",
    "register_function",
    "unregister_function",
]
