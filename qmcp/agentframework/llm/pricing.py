"""Model prices, in one table, with their source and date; used to estimate invocation cost.

Prompt caching is priced at the providers' cache rates: for Claude models a cache write costs
1.25 times the input price (the 5-minute cache) and a cache read 0.1 times it; OpenAI caches on
its own and charges cached input at its listed cached-input price, with no charge for writing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

PRICES_SOURCE = (
    "https://platform.claude.com/docs/en/about-claude/models (model overview pages) and "
    "https://platform.claude.com/docs/en/about-claude/pricing (prompt caching multipliers); "
    "https://openai.com/api/pricing/ (OpenAI models, standard tier)"
)
PRICES_AS_OF = "2026-11-24"

CLAUDE_CACHE_WRITE = 1.25  # times the input price (5-minute cache)
CLAUDE_CACHE_READ = 0.10  # times the input price


class Price(NamedTuple):
    """USD per million tokens: input, output, cached input read, cache write."""

    input: float
    output: float
    cache_read: float
    cache_write: float


def _claude(price_in: float, price_out: float) -> Price:
    return Price(price_in, price_out, price_in * CLAUDE_CACHE_READ, price_in * CLAUDE_CACHE_WRITE)


def _openai(price_in: float, price_out: float, cached_in: float) -> Price:
    return Price(price_in, price_out, cached_in, price_in)


# model id prefix -> price. Haiku 5.5 is listed "from $0.10 / $0.50"; the lowest tier is used.
PRICES: dict[str, Price] = {
    "claude-fable-5": _claude(10.0, 50.0),
    "claude-opus-5-5": _claude(4.0, 20.0),
    "claude-opus-5": _claude(5.0, 25.0),
    "claude-sonnet-5": _claude(2.0, 10.0),
    "claude-haiku-5-5": _claude(0.10, 0.50),
    "claude-opus-4-5": _claude(5.0, 25.0),
    "claude-sonnet-4": _claude(3.0, 15.0),
    "claude-haiku-4-5": _claude(1.0, 5.0),
    # OpenAI (standard tier): matched exactly or with a dated snapshot suffix only, so that
    # `openai:gpt-4.1-nano` is not priced as `openai:gpt-4.1`.
    "openai:gpt-4o": _openai(2.50, 10.00, 1.25),
    "openai:gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "openai:gpt-4.1": _openai(2.00, 8.00, 0.50),
    "openai:gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "offline:": Price(0.0, 0.0, 0.0, 0.0),
    "function:": Price(0.0, 0.0, 0.0, 0.0),
}

_EXACT_PREFIXES = ("openai:",)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def _matches(label: str, key: str) -> bool:
    if not label.startswith(key):
        return False
    if key.startswith(_EXACT_PREFIXES):
        rest = label[len(key) :]
        return not rest or bool(_SNAPSHOT.fullmatch(rest))
    return True


@lru_cache(maxsize=256)
def price_of(model_label: str) -> Price | None:
    """The longest matching prefix's prices, or None when the model is not in the table."""
    best = max((k for k in PRICES if _matches(model_label, k)), key=len, default=None)
    return None if best is None else PRICES[best]


def estimate_cost(
    model_label: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """Estimated USD cost, or None when the model's price is not in the table.

    `input_tokens` counts every input token; the cache reads and writes among them are priced at
    the cache rates, the rest at the input price.
    """
    price = price_of(model_label)
    if price is None:
        return None
    uncached = max(0, input_tokens - cache_read_tokens - cache_write_tokens)
    total = (
        uncached * price.input
        + cache_read_tokens * price.cache_read
        + cache_write_tokens * price.cache_write
        + output_tokens * price.output
    )
    return round(total / 1_000_000, 8)
