"""The cloud targets' settings: one pydantic model per target, stacked from its sources by `layers.Layered`.

Each field may name its FNPACK_* variable (`env=` in `Field(json_schema_extra=...)`, through `setting()`).
The spec's section for a target is the same model (`spec.py` uses it), so a value valid in one source is
valid in all.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fnpack.targets.layers import Layered


def setting(default: Any = None, *, env: str | None = None, description: str = "", **kwargs: Any) -> Any:
    """A settings field; `env` names the variable that sets it."""
    extra = {"env": env} if env else None
    return Field(default=default, description=description, json_schema_extra=extra, **kwargs)


class TargetSettings(Layered, BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    target: ClassVar[str] = "target"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        return {name: extra["env"] for name, field in cls.model_fields.items()
                if isinstance(extra := field.json_schema_extra, dict) and extra.get("env")}

    @classmethod
    def _check(cls, values: dict[str, Any], source: str) -> Self:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise cls.invalid(source, [_problem(error) for error in exc.errors()]) from None

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _problem(error: Any) -> tuple[str, str]:
    where = ".".join(str(part) for part in error.get("loc", ())) or "value"
    return where, str(error.get("msg", "invalid")).removeprefix("Value error, ")
