"""The local target's settings: where the platform is and how to prove who may change it.

A plain frozen dataclass, not a pydantic model as the cloud targets' are: every command that talks to the
local platform reads these, and validating four strings is not worth building a model for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from fnpack.targets.layers import Layered

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_STATE_DIR = ".fnpack"


def _setting(default: Any, env: str, description: str) -> Any:
    return field(default=default, metadata={"env": env, "description": description})


@dataclass(frozen=True)
class LocalSettings(Layered):
    target: ClassVar[str] = "local"

    url: str = _setting(DEFAULT_URL, "FNPACK_URL", "The platform's address.")
    state_dir: Path = _setting(Path(DEFAULT_STATE_DIR), "FNPACK_STATE_DIR",
                               "The platform's state folder, whose `token` file authorises changes.")
    token: str | None = _setting(None, "FNPACK_TOKEN", "The control token (default: STATE_DIR/token).")
    invoke_token: str | None = _setting(None, "FNPACK_INVOKE_TOKEN",
                                        "Bearer token for invocations, when the platform requires one.")
    _given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if not f.metadata.get("internal"))

    @classmethod
    def env_names(cls) -> dict[str, str]:
        return {f.name: f.metadata["env"] for f in fields(cls) if "env" in f.metadata}

    @classmethod
    def describe(cls, name: str) -> tuple[Any, str, str]:
        """(default, variable, description) of a field, for the CLI's help."""
        found = next(f for f in fields(cls) if f.name == name)
        return found.default, found.metadata["env"], found.metadata["description"]

    @classmethod
    def _check(cls, values: dict[str, Any], source: str) -> Self:
        checked: dict[str, Any] = {}
        problems = []
        for name, value in values.items():
            if name == "state_dir":
                if isinstance(value, (str, Path)):
                    checked[name] = Path(value)
                else:
                    problems.append((name, "Input is not a valid path"))
            elif not isinstance(value, str):
                problems.append((name, "Input should be a valid string"))
            elif name == "url" and not value.startswith(("http://", "https://")):
                problems.append((name, f"{value!r} is not an http:// or https:// URL (e.g. {DEFAULT_URL})"))
            else:
                checked[name] = value.rstrip("/") if name == "url" else value.strip()
        if problems:
            raise cls.invalid(source, problems)
        return cls(**checked, _given=frozenset(checked))

    def given(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._given}
