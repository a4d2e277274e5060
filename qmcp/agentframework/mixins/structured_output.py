"""structured_output: the answer must be JSON satisfying a JSON Schema; one repair retry."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator

from qmcp.agentframework.llm import LLMRequest
from qmcp.agentframework.mixins.base import Mixin, MixinConfig, MixinContext, OutputRejected
from qmcp.agentframework.text import parse_json_object


class StructuredOutputConfig(MixinConfig):
    json_schema: dict[str, Any] = Field(
        alias="schema", description="the JSON Schema the answer must satisfy"
    )
    max_repairs: int = Field(default=1, ge=0, le=3)

    model_config = {"extra": "forbid", "populate_by_name": True}

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


def _parse(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except ValueError:
        return parse_json_object(text)


class StructuredOutput(Mixin):
    name = "structured_output"
    description = "The answer must be JSON satisfying a JSON Schema; one repair retry if not."
    config_model = StructuredOutputConfig

    @property
    def max_repairs(self) -> int:
        return self.config.max_repairs  # type: ignore[attr-defined,no-any-return]

    async def prepare(self, request: LLMRequest, ctx: MixinContext) -> LLMRequest:
        schema = json.dumps(self.config.json_schema)  # type: ignore[attr-defined]
        instruction = f"Answer only with JSON that satisfies this JSON Schema:\n{schema}"
        system = f"{request.system}\n\n{instruction}" if request.system else instruction
        return request.model_copy(update={"system": system})

    async def finish(self, output: dict[str, Any], ctx: MixinContext) -> None:
        import jsonschema

        data = _parse(output["content"])
        if data is None:
            raise OutputRejected(
                "structured_output: the answer is not JSON",
                "Your answer was not JSON. Answer again with only the JSON value.",
            )
        validator = jsonschema.Draft202012Validator(self.config.json_schema)  # type: ignore[attr-defined]
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            problems = "; ".join(
                f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors[:5]
            )
            raise OutputRejected(
                f"structured_output: the answer does not satisfy the schema: {problems}",
                f"Your answer did not satisfy the schema: {problems}. "
                "Answer again with only the corrected JSON.",
            )
        output["data"] = data
        output["content"] = json.dumps(data, ensure_ascii=False)
