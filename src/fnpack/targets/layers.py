"""How a target's settings stack, whatever a settings class is built on (no pydantic here).

Sources stack, first wins:

    flags (the command line)  >  FNPACK_* variables  >  the user's context (`fnpack.config`)
        >  the spec's section for the target (in the archive)  >  defaults

Each source is validated on its own (`layer`), so an error names where the bad value came from. The
cloud targets' settings are pydantic models (`targets.settings.TargetSettings`); the local target's are
a plain dataclass (`targets.local.settings`), so that a command talking to the local platform never
builds a pydantic model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from fnpack.errors import UsageError


class Layered:
    """The stacking every settings class shares; a class supplies `field_names`, `env_names`, `_check`
    (one source's values, validated) and `given` (the values set, not defaulted)."""

    target: ClassVar[str] = "target"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """{field: FNPACK_* variable} for the fields a variable can set."""
        raise NotImplementedError

    @classmethod
    def _check(cls, values: dict[str, Any], source: str) -> Self:
        """The settings of `values` (only known names, none None); UsageError (`invalid`) when one is bad."""
        raise NotImplementedError

    def given(self) -> dict[str, Any]:
        """The values set by some source (defaults left out)."""
        raise NotImplementedError

    @classmethod
    def layer(cls, values: Mapping[str, Any], source: str) -> Self:
        """One source's values (None: not set there; names of other targets' fields: ignored), checked."""
        names = cls.field_names()
        return cls._check({k: v for k, v in values.items() if v is not None and k in names}, source)

    @classmethod
    def invalid(cls, source: str, problems: list[tuple[str, str]]) -> UsageError:
        """The error for bad values: (field, message) pairs; a variable's field is named by its variable."""
        env = cls.env_names() if source == "the environment" else {}
        text = "; ".join(f"{env.get(field.split('.')[0], field)}: {message}" for field, message in problems)
        return UsageError(f"invalid {cls.target} settings from {source}: {text}",
                          hint="see `fnpack deploy --help` and `fnpack schema`")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        return cls.layer({field: environ.get(var) or None for field, var in cls.env_names().items()},
                         "the environment")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The spec's own section for this target; none by default."""
        return cls.layer({}, "defaults")

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

    def over(self, lower: Layered) -> Self:
        """These settings, with `lower`'s where these are unset."""
        return type(self)._check({**lower.given(), **self.given()}, "the merged settings")
