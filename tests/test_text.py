"""Text helpers: the fast indented JSON of a flat object is exactly what json.dumps writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmcp.agentframework.text import _indented, render_payload

SCALARS = st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))


@pytest.mark.slow  # generated cases (seconds): the full suite, not the fast tier
@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(), VALUES))
def test_indented_is_json_dumps_with_indent(data: dict[str, Any]) -> None:
    expected = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    assert _indented(data) == expected


def test_a_stage_payload_renders_its_prompt_then_the_context() -> None:
    rendered = render_payload({"prompt": "go", "previous_stage": 0, "original_request": "hi"})
    assert rendered == 'go\n\nContext:\n{\n  "original_request": "hi",\n  "previous_stage": 0\n}'
