"""One settings model per target, read the same way from every source.

A target's settings are a pydantic model (`TargetSettings`); each field may name its FNPACK_* variable
(`env=` in `Field(json_schema_extra=...)`, through `setting()`). Sources stack, first wins:

    flags (the command line)  >  FNPACK_* variables  >  the user's context (`fnpack.config`)
        >  the spec's section for the target (in the archive)  >  defaults

Each source is validated on its own, so an error names where the bad value came from. The spec's
section is the same model (`spec.py` uses it), so a value valid in one source is valid in all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fnpack.errors import UsageError


def setting(default: Any = None, *, env: str | None = None, description: str = "", **kwargs: Any) -> Any:
    """A settings field; `env` names the variable that sets it."""
    extra = {"env": env} if env else None
    return Field(default=default, description=description, json_schema_extra=extra, **kwargs)


class TargetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    target: ClassVar[str] = "target"

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """{field: FNPACK_* variable} for the fields a variable can set."""
        return {name: extra["env"] for name, field in cls.model_fields.items()
                if isinstance(extra := field.json_schema_extra, dict) and extra.get("env")}

    @classmethod
    def layer(cls, values: Mapping[str, Any], source: str) -> Self:
        """One source's values (None: not set there; names of other targets' fields: ignored), checked."""
        given = {k: v for k, v in values.items() if v is not None and k in cls.model_fields}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(_problem(error, cls, source) for error in exc.errors())
            raise UsageError(f"invalid {cls.target} settings from {source}: {problems}",
                             hint="see `fnpack deploy --help` and `fnpack schema`") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        return cls.layer({field: environ.get(var) or None for field, var in cls.env_names().items()},
                         "the environment")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The spec's own section for this target; none by default."""
        return cls()

    @staticmethod
    def section(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
        """The spec's `key:` section as a mapping (a spec read as raw YAML may hold anything there)."""
        found = spec.get(key) or {}
        if not isinstance(found, Mapping):
            raise UsageError(f"`{key}:` in fnpack.yaml is not a mapping of settings",
                             hint=f"see `fnpack schema` for the {key} section")
        return dict(found)

    @classmethod
    def layered(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                context: Mapping[str, Any] | None = None, context_name: str = "") -> Self:
        """Flags over the environment over the user's context (the spec comes later, from the archive: `over`)."""
        stacked = cls.layer(flags, "the command line").over(cls.from_env(environ))
        if context:
            stacked = stacked.over(cls.layer(context, f"context {context_name or '?'}"))
        return stacked

    def over(self, lower: TargetSettings) -> Self:
        """These settings, with `lower`'s where these are unset."""
        merged = {**lower.model_dump(exclude_unset=True), **self.model_dump(exclude_unset=True)}
        return type(self).model_validate(merged)


def _problem(error: Any, model: type[TargetSettings], source: str) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "value"
    field = str(error.get("loc", ("",))[0])
    if source == "the environment" and field in model.env_names():
        where = model.env_names()[field]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"
