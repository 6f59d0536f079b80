"""The version and alias model every target shares (local platform, AWS Lambda, Knative, OpenFaaS).

- A version is immutable: a small integer per function bound to one archive sha256.
- An alias points at one version, or at a primary version plus one canary version
  with a weight in [0, 1] (AWS Lambda's limit of two, so every target can honour it).
- Every alias move is recorded; a rollback restores the state before the last move
  that has not been rolled back yet, so rolling back again goes one further back.
- A qualifier is NAME, NAME:ALIAS or NAME:VERSION, as in Lambda.
Targets store these their own way; the rules live here, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fnpack.errors import UsageError

# A function's name: a lower-case DNS label (a Lambda and Knative name). Here, not in fnpack.spec, so that
# this module imports nothing but the standard library and fnpack.errors (the alias router runs on it in an
# image without pydantic). Used with fullmatch() only: `$` also matches before a final newline.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

DEFAULT_ALIAS = "live"
# Lower-case like function names (a Knative traffic tag is a DNS label); never a version's
# spelling (3 or v3, as the CLI prints versions), so that NAME:3 and NAME:v3 always mean version 3.
# Every name pattern is used with fullmatch(): `$` also matches before a final newline, which let
# "live\n" through.
ALIAS_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# ASCII digits only (str.isdigit() takes "²", which int() refuses), and few enough for SQLite.
VERSION_PATTERN = re.compile(r"[0-9]{1,9}")
# How a version may be written in a qualifier: 3 or v3.
VERSION_SPELLING = re.compile(r"[vV]?([0-9]{1,9})")


class AliasError(UsageError):
    """An alias move that cannot be made: bad weight, canary equal to primary, nothing to roll back."""


@dataclass(frozen=True)
class Qualifier:
    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> Qualifier:
        """NAME, NAME:ALIAS or NAME:VERSION; checked before it names anything on disk or in a URL."""
        name, sep, rest = text.partition(":")
        if len(name) > 40 or not NAME_PATTERN.fullmatch(name):
            raise UsageError(f"{text!r}: {name!r} is not a function name (a lower-case DNS label, at most 40 "
                             "characters)", hint="qualifiers are NAME, NAME:ALIAS or NAME:VERSION, e.g. iris:live")
        if not sep:
            return cls(name)
        if spelled := VERSION_SPELLING.fullmatch(rest):
            if int(spelled.group(1)) < 1:
                raise UsageError(f"{text!r}: versions start at 1")
            return cls(name, version=int(spelled.group(1)))
        if not ALIAS_PATTERN.fullmatch(rest):
            raise UsageError(f"{text!r}: {rest!r} is neither a version number nor an alias name "
                             "(lower-case letters, digits and '-', starting with a letter)")
        return cls(name, alias=rest)

    @classmethod
    def function_name(cls, text: str) -> str:
        """A bare function name (no qualifier), checked as a qualifier's name is."""
        qualifier = cls.parse(text)
        if qualifier.alias or qualifier.version is not None:
            raise UsageError(f"{text!r}: expected a function name, not a qualifier", hint=f"use {qualifier.name!r}")
        return qualifier.name

    @classmethod
    def alias_name(cls, name: str, alias: str) -> str:
        """An alias of function `name`: never all digits, which would read as a version number."""
        qualifier = cls.parse(f"{cls.function_name(name)}:{alias}")
        if qualifier.alias is None:
            raise UsageError(f"{alias!r} is a version number, not an alias name (3 and v3 both name version 3)",
                             hint="alias names are lower-case words such as live or staging")
        return qualifier.alias

    def __str__(self) -> str:
        suffix = self.alias or (str(self.version) if self.version is not None else None)  # 3, never v3: a URL path
        return f"{self.name}:{suffix}" if suffix else self.name


@dataclass(frozen=True)
class Version:
    """An immutable version of a function: its number and the archive it runs."""

    function: str
    number: int
    sha256: str
    created_at: str  # ISO 8601, UTC
    actor: str
    target: str = ""  # what the archive was built for (local, aws-lambda, ...), where the target says


@dataclass(frozen=True)
class AliasState:
    """Where an alias sends traffic: `primary`, and `weight` of it to `canary` when one is set."""

    primary: int
    canary: int | None = None
    weight: float = 0.0

    def __post_init__(self) -> None:
        if self.primary < 1 or (self.canary is not None and self.canary < 1):
            raise AliasError("versions start at 1")
        if not 0.0 <= self.weight <= 1.0:
            raise AliasError(f"canary weight {self.weight} is out of range", hint="a weight is in [0, 1], e.g. 0.1")
        if self.canary is None and self.weight:
            raise AliasError("a canary weight needs a canary version", hint="add --canary VERSION")
        if self.canary == self.primary:
            raise AliasError(f"the canary is the primary version ({self.primary})",
                             hint="a canary splits traffic between two different versions")

    @property
    def versions(self) -> tuple[int, ...]:
        return (self.primary,) if self.canary is None else (self.primary, self.canary)

    def __str__(self) -> str:
        if self.canary is None:
            return f"v{self.primary}"
        return f"v{self.primary} + v{self.canary} at {self.weight:.0%}"


@dataclass(frozen=True)
class AliasMove:
    """One entry of an alias's history. `undoes` is the index of the move a rollback reversed."""

    before: AliasState | None
    after: AliasState
    actor: str
    at: str  # ISO 8601, UTC
    reason: str | None = None
    undoes: int | None = None


def rollback_step(history: list[AliasMove]) -> tuple[int, AliasState]:
    """(index of the move to reverse, the state to restore) for the next rollback."""
    undone = {move.undoes for move in history if move.undoes is not None}
    for index in range(len(history) - 1, -1, -1):
        move = history[index]
        if move.undoes is not None or index in undone:
            continue
        if move.before is None:
            raise AliasError("nothing to roll back to: this is the alias's first state",
                             hint="point it at another version with `fnpack alias set`")
        return index, move.before
    raise AliasError("nothing to roll back: the alias has no moves left to undo")


class WeightedRouter:
    """Smooth weighted round robin between an alias's primary and canary.

    Deterministic: after n picks the canary has had round(n * weight) of them,
    give or take one, at every point, not just on average.
    """

    def __init__(self, state: AliasState) -> None:
        self.state = state
        self._credit = 0.0  # the canary's accumulated share minus what it was given

    def pick(self) -> int:
        if self.state.canary is None or self.state.weight == 0.0:
            return self.state.primary
        self._credit += self.state.weight
        if self._credit >= 0.5:
            self._credit -= 1.0
            return self.state.canary
        return self.state.primary
