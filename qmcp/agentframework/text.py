"""Turning payloads into prompts and model answers into values: one set of rules for all kinds."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# The keys a payload's main text may live under, in the order they are looked for.
TEXT_KEYS = ("prompt", "content", "task", "topic", "question", "input", "text")

_CONFIDENCE_LINE = re.compile(r"^\s*confidence\s*[:=]\s*([01](?:\.\d+)?)\s*$", re.I | re.M)
_SCORE_LINE = re.compile(
    r"^\s*(?:score|answer|value|rating)\s*[:=]\s*(-?\d+(?:\.\d+)?)\s*$", re.I | re.M
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def main_text(payload: Any) -> str:
    """The text a payload is about: its first text key, else the whole payload as JSON."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        for key in TEXT_KEYS:
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return value
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)


def render_payload(payload: Any) -> str:
    """The user message for a payload: its main text, then any other fields as JSON context."""
    if isinstance(payload, str):
        return payload
    if not isinstance(payload, dict):
        return json.dumps(payload, ensure_ascii=False, default=str)
    for key in TEXT_KEYS:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            rest = {k: v for k, v in payload.items() if k != key}
            if not rest:
                return value
            return f"{value}\n\nContext:\n{_indented(rest)}"
    return _indented(payload)


_SCALARS = (str, int, float, bool, type(None))
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _indented(data: dict[str, Any]) -> str:
    """`json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True, default=str)`.

    With `indent`, the json module encodes in Python, not C; a flat object of scalars (what a
    pipeline stage passes on) is built here from C-encoded parts instead, with the same text.
    """
    if (
        data
        and all(type(k) is str for k in data)
        and all(type(v) in _SCALARS for v in data.values())
    ):
        lines = ",\n".join(f"  {_encode(k)}: {_encode(data[k])}" for k in sorted(data))
        return "{\n" + lines + "\n}"
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True, default=str)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a model answer: the whole text, a fenced block, or the outermost {…}."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def confidence_of(text: str) -> float | None:
    """A stated confidence in [0, 1]: a JSON `confidence` field or a `confidence: x` line."""
    data = parse_json_object(text)
    if data is not None and isinstance(data.get("confidence"), int | float):
        value = float(data["confidence"])
        return value if 0.0 <= value <= 1.0 else None
    match = _CONFIDENCE_LINE.search(text)
    return float(match.group(1)) if match else None


def number_of(text: str) -> float | None:
    """A numeric answer: the whole text, a JSON score/value/answer/rating, or a `score: x` line."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    data = parse_json_object(text)
    if data is not None:
        for key in ("score", "value", "answer", "rating"):
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    match = _SCORE_LINE.search(text)
    return float(match.group(1)) if match else None


def vote_of(text: str) -> str:
    """The ballot an answer casts: a JSON `vote`/`answer`, else its first non-empty line."""
    data = parse_json_object(text)
    if data is not None:
        for key in ("vote", "answer", "choice"):
            if key in data and isinstance(data[key], str | int | float | bool):
                return str(data[key]).strip().lower()
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split()).lower().rstrip(".")
    return ""


def lone_surrogate(text: str) -> int | None:
    """The code point of the first lone surrogate in `text` (UTF-8 cannot encode it), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return ord(text[exc.start])
    return None


def describe_bad_json(what: str, value: Any) -> str | None:
    """What JSON and UTF-8 cannot carry in `value` (a lone surrogate; NaN, Infinity), and
    where, as a message about `what`; None if there is none.

    The service's `check_text` and the runners' `check_input` refuse such input with it; the
    store is where it would otherwise go wrong (SQLite keeps NaN, PostgreSQL refuses it).
    Run only when something is wrong, as it keeps the path to every value it visits.
    """
    pending: list[tuple[Any, tuple[Any, Any] | None, bool]] = [(value, None, False)]
    seen: set[int] = set()
    while pending:
        item, path, is_key = pending.pop()
        problem = fix = None
        if isinstance(item, str) and (code := lone_surrogate(item)) is not None:
            problem, fix = f"a lone surrogate (\\u{code:04x})", "send valid UTF-8 text"
        elif isinstance(item, float) and not math.isfinite(item):
            problem = "NaN" if item != item else ("Infinity" if item > 0 else "-Infinity")
            fix = "JSON has no NaN or Infinity, send a finite number or null"
        if problem is not None:
            where = _json_path(path)
            if is_key:
                return f"{what} has {problem} in a key{f' of {where}' if where else ''}; {fix}"
            if where:
                return f"{what} has {problem} at {where}; {fix}"
            return f"{what} {'is' if isinstance(item, float) else 'contains'} {problem}; {fix}"
        if isinstance(item, Mapping | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, Mapping):
                for key, child in item.items():
                    pending.append((key, path, True))
                    pending.append((child, (path, key), False))
            else:
                pending.extend((child, (path, i), False) for i, child in enumerate(item))
    return None


def _json_path(path: tuple[Any, Any] | None) -> str:
    """`a.b[2]` for the linked path (((None, "a"), "b"), 2)."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and key.isidentifier():
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key, default=repr)}]")
    return "".join(reversed(parts)).lstrip(".")
