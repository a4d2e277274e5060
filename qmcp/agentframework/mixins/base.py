"""The mixin protocol and `MixinRegistry`: name, version, description, config, dependencies."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from qmcp.agentframework.errors import ValidationError, known


class MixinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mixin:
    """A capability that changes an invocation through lifecycle hooks."""

    name: ClassVar[str]
    version: ClassVar[str] = "1.0"
    description: ClassVar[str] = ""
    dependencies: ClassVar[tuple[str, ...]] = ()
    config_model: ClassVar[type[MixinConfig]] = MixinConfig


class MixinRegistry:
    _mixins: ClassVar[dict[str, type[Mixin]]] = {}

    @classmethod
    def register(cls, mixin: type[Mixin]) -> type[Mixin]:
        cls._mixins[mixin.name] = mixin
        return mixin

    @classmethod
    def get(cls, name: str) -> type[Mixin]:
        try:
            return cls._mixins[name]
        except KeyError:
            raise ValidationError(
                f"unknown mixin {name!r}; known: {known(sorted(cls._mixins)) or 'none yet'}"
            ) from None

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "version": m.version,
                "description": m.description,
                "dependencies": list(m.dependencies),
                "config_schema": m.config_model.model_json_schema(),
            }
            for m in sorted(cls._mixins.values(), key=lambda m: m.name)
        ]
