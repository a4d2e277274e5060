"""Model providers behind one async protocol, and the registry that finds them."""

from qmcp.agentframework.llm.anthropic_provider import AnthropicProvider
from qmcp.agentframework.llm.base import (
    Block,
    LLMRequest,
    LLMResponse,
    Message,
    Provider,
    ProviderCapabilities,
    ProviderRegistry,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    count_tokens,
)
from qmcp.agentframework.llm.fallback import Candidate, FallbackProvider
from qmcp.agentframework.llm.function import (
    FunctionProvider,
    register_function,
    unregister_function,
)
from qmcp.agentframework.llm.limits import (
    AdaptiveLimiter,
    RateLimited,
    limiter_for,
    reset_limiters,
)
from qmcp.agentframework.llm.offline import OfflineProvider
from qmcp.agentframework.llm.openai_provider import OpenAIProvider
from qmcp.agentframework.llm.pricing import PRICES_AS_OF, PRICES_SOURCE, estimate_cost
from qmcp.agentframework.llm.redaction import redact
from qmcp.agentframework.llm.wrappers import (
    AdaptiveLimitedProvider,
    Attempt,
    LimitedProvider,
    RecordingProvider,
    RetryingProvider,
    RetryPolicy,
    TimeoutProvider,
    WrapperProvider,
)

__all__ = [
    "PRICES_AS_OF",
    "PRICES_SOURCE",
    "AdaptiveLimitedProvider",
    "AdaptiveLimiter",
    "AnthropicProvider",
    "Attempt",
    "Block",
    "Candidate",
    "FallbackProvider",
    "FunctionProvider",
    "LLMRequest",
    "LLMResponse",
    "LimitedProvider",
    "Message",
    "OfflineProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderCapabilities",
    "ProviderRegistry",
    "RateLimited",
    "RecordingProvider",
    "RetryPolicy",
    "RetryingProvider",
    "TextBlock",
    "TimeoutProvider",
    "ToolResultBlock",
    "ToolSpec",
    "ToolUseBlock",
    "WrapperProvider",
    "count_tokens",
    "estimate_cost",
    "limiter_for",
    "redact",
    "register_function",
    "reset_limiters",
    "unregister_function",
]
