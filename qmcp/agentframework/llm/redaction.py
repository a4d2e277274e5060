"""Key material out of text a provider sent back (a verbose proxy may echo the key it refused).

Every provider passes an error body through `redact` before it becomes a `ProviderError`
message, which is copied into records, results and logs.
"""

from __future__ import annotations

import os
import re

REDACTED = "[redacted]"
# The environment variables whose values are credentials (the Anthropic SDK reads the first two,
# the OpenAI SDK the last).
SECRET_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")
# Anything shaped like an API key: sk-ant-api03-…, sk-proj-…, sk-… (not "task-…" or "risk-…").
KEY_PATTERN = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}")
MIN_SECRET = 8  # a shorter value is not worth masking everywhere it happens to appear


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every known secret (`secrets` and the credential variables' values) and
    anything shaped like an API key replaced by `[redacted]`."""
    known = (*secrets, *(os.environ.get(name) or "" for name in SECRET_VARIABLES))
    for secret in sorted({s for s in known if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return KEY_PATTERN.sub(REDACTED, text)
