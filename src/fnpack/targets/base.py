"""The one small interface every target implements: the local platform now; AWS Lambda, Knative and
OpenFaaS later.

A deploy is two steps: `plan_deploy` reads what is there and says what it will change (a `Plan` of
`Step`s, so `--dry-run` prints the same thing for every target), then `execute` makes those changes.
Everything else reads or moves versions and aliases with the shared model of `fnpack.versions`.
"""

from __future__ import annotations

import getpass
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fnpack.archive import open_archive
from fnpack.errors import ArchiveError, FnpackError, UsageError
from fnpack.versions import AliasMove, AliasState, Qualifier, Version


@dataclass(frozen=True)
class Step:
    """One change a target will make: `action` is a short verb (upload, reuse-version, set-alias,
    keep-alias); `details` are what the target will send; `summary` is one human sentence."""

    action: str
    details: dict[str, Any]
    summary: str = ""


@dataclass(frozen=True)
class Plan:
    """What `execute` will do to deploy `archive` (sha256) as a version of `function` on `target`."""

    target: str
    function: str
    archive: Path
    sha256: str
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "function": self.function, "archive": str(self.archive),
                "sha256": self.sha256, "steps": [asdict(step) for step in self.steps]}


@dataclass(frozen=True)
class Deployment:
    """What a deploy did: the version (`created` False when the archive was already deployed), the alias
    move it made (None when not promoted or already there) and where to invoke it."""

    version: Version
    created: bool
    alias: str | None
    move: AliasMove | None
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": asdict(self.version), "created": self.created, "alias": self.alias,
                "move": asdict(self.move) if self.move else None, "url": self.url}


@dataclass(frozen=True)
class FunctionSummary:
    name: str
    versions: int
    latest: int
    aliases: dict[str, AliasState]


@dataclass(frozen=True)
class Invocation:
    """A function's answer: HTTP-like `status`, the JSON `body`, and the version that answered."""

    status: int
    body: Any
    version: int | None


class InvokeError(FnpackError):
    """A function answered an invocation with a 4xx or 5xx (bad input, or a crash in its code)."""

    exit_code = 1
    kind = "invoke"

    def __init__(self, message: str, hint: str | None = None, status: int = 500, body: Any = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.body = body


class Target(ABC):
    """A place functions are deployed to. Methods raise FnpackError subclasses for user mistakes
    (NotFoundError for an unknown function, ConflictError for a delete an alias blocks, ...)."""

    name: str = "target"

    # --- deploying ---------------------------------------------------------------------------------

    @abstractmethod
    def plan_deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
        """Read the archive and the target's state; change nothing. `alias` None: do not promote."""

    @abstractmethod
    def execute(self, plan: Plan) -> Deployment:
        """Make the plan's changes."""

    def deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Deployment:
        return self.execute(self.plan_deploy(archive, alias, reason))

    # --- reading and moving ------------------------------------------------------------------------

    @abstractmethod
    def functions(self) -> list[FunctionSummary]: ...

    @abstractmethod
    def versions(self, name: str) -> list[Version]: ...

    @abstractmethod
    def aliases(self, name: str) -> dict[str, AliasState]: ...

    @abstractmethod
    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None) -> AliasMove: ...

    @abstractmethod
    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        """Restore the state before the alias's last move not yet rolled back."""

    @abstractmethod
    def history(self, name: str, alias: str) -> list[AliasMove]: ...

    @abstractmethod
    def delete(self, name: str, version: int | None = None) -> list[Version]:
        """Delete one version (refused while an alias uses it) or the whole function."""

    # --- calling -----------------------------------------------------------------------------------

    @abstractmethod
    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        """Send one request (a record or a list of records); a 4xx/5xx answer raises."""

    @abstractmethod
    def invoke_url(self, qualifier: Qualifier) -> str: ...

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """The function's log text in chunks; `follow` keeps streaming until interrupted."""
        raise UsageError(f"the {self.name} target cannot show logs")

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_deployable(archive: Path, build: str = "fnpack build") -> tuple[dict[str, Any], str, int]:
    """(manifest, sha256, unzipped bytes) of an intact fnpack archive, before a target is asked anything.

    `build` is the command that makes a right one, for the hints."""
    with open_archive(archive) as reader:
        manifest = reader.manifest()
        problems = reader.verify() if manifest else []
        sha256 = reader.sha256
    if not manifest or not isinstance(manifest.get("name"), str):
        raise ArchiveError(f"{archive} has no fnpack manifest naming its function",
                           hint=f"deploy archives built by `{build}`")
    try:  # the name becomes a URL path and a registry key; an archive made by hand may name anything
        Qualifier.function_name(manifest["name"])
    except UsageError as exc:
        raise ArchiveError(f"{archive}: its manifest names no valid function: {exc.message}",
                           hint=f"rebuild it with `{build}`") from None
    if problems:
        raise ArchiveError(f"{archive} is not intact: {problems[0]}" +
                           (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                           hint=f"rebuild it with `{build}`")
    unzipped = sum(f.get("size", 0) for f in manifest.get("files", {}).values())
    return manifest, sha256, unzipped


def actor() -> str:
    """Who makes a change, for the alias history: user@host."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def state_from_dict(data: dict[str, Any]) -> AliasState:
    return AliasState(primary=int(data["primary"]), canary=data.get("canary"), weight=float(data.get("weight", 0.0)))


def move_from_dict(data: dict[str, Any]) -> AliasMove:
    before = data.get("before")
    return AliasMove(before=state_from_dict(before) if before else None, after=state_from_dict(data["after"]),
                     actor=data.get("actor", ""), at=data.get("at", ""), reason=data.get("reason"),
                     undoes=data.get("undoes"))


def version_from_dict(data: dict[str, Any]) -> Version:
    return Version(function=data["function"], number=int(data["number"]), sha256=data["sha256"],
                   created_at=data.get("created_at", ""), actor=data.get("actor", ""))
