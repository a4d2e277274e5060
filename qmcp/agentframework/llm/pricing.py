"""Model prices, in one table, with their source and date; used to estimate invocation cost."""

from __future__ import annotations

from functools import lru_cache

PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/models (model overview pages)"
PRICES_AS_OF = "2026-11-24"

# model id prefix -> (USD per million input tokens, USD per million output tokens)
# Haiku 5.5 is listed "from $0.10 / $0.50"; the lowest tier is used.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-fable-5": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-sonnet-5": (2.0, 10.0),
    "claude-haiku-5-5": (0.10, 0.50),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "offline:": (0.0, 0.0),
    "function:": (0.0, 0.0),
}


@lru_cache(maxsize=256)
def price_of(model_label: str) -> tuple[float, float] | None:
    """The longest matching prefix's prices, or None when the model is not in the table."""
    best = max((p for p in PRICES_PER_MTOK if model_label.startswith(p)), key=len, default=None)
    return None if best is None else PRICES_PER_MTOK[best]


def estimate_cost(model_label: str, input_tokens: int, output_tokens: int) -> float | None:
    """Estimated USD cost, or None when the model's price is not in the table."""
    price = price_of(model_label)
    if price is None:
        return None
    price_in, price_out = price
    return round((input_tokens * price_in + output_tokens * price_out) / 1_000_000, 8)
