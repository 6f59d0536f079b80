"""The deploy skeleton every target shares: a read-only planner, typed steps in a `Plan`, one executor.

As in Chalice's deployer: `plan` reads the archive and the target's state (through the target's
`Deployer` hooks, the one seam to the remote side) and returns the changes as typed steps; `execute`
runs them; a dry run prints `describe(plan)`, the same shape for every target. The plan carries what the
planner learned (`Plan.remote`, `Plan.context`), so executing it needs nothing else and a plan made by
one object can be executed by another.

The shared routine: an archive a version already runs is that version (`ReuseVersion`); otherwise the
target's steps make one (`Upload`, target `Call`s, `Publish`). Then, unless not promoting, the alias is
kept (`KeepAlias`: already sends everything to that version) or moved (`SetAlias`), by the target's
alias-move protocol (`targets.history`), followed by any target steps for the promoted alias.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from fnpack.errors import ArchiveError, ConflictError, UsageError
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

# --- steps ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One change; `summary` is one human sentence, the other fields what the target will send."""

    summary: str
    action: ClassVar[str] = "step"

    def details(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("summary", "action")}

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.kind, "summary": self.summary, "details": self.details()}

    @property
    def kind(self) -> str:
        return self.action


@dataclass(frozen=True, kw_only=True)
class ReuseVersion(Step):
    """A version already runs this archive: nothing to upload or publish."""

    version: int
    action: ClassVar[str] = "reuse-version"


@dataclass(frozen=True, kw_only=True)
class Call(Step):
    """A target-specific API call; `name` is its verb (create, update-code, s3-upload, ...)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name

    def details(self) -> dict[str, Any]:
        return _plain(dict(self.arguments))


@dataclass(frozen=True, kw_only=True)
class Upload(Call):
    """The archive goes to the target's store (the platform, a bucket); `name` is the verb shown."""

    name: str = "upload"


@dataclass(frozen=True, kw_only=True)
class Publish(Call):
    """Makes the new version from what was uploaded; `number` is the number expected."""

    name: str = "publish"
    number: int | None = None


@dataclass(frozen=True, kw_only=True)
class SetAlias(Step):
    """Move `alias` to the version: `version` None means the one this plan makes."""

    alias: str
    before: AliasState | None = None
    version: int | None = None
    reason: str | None = None
    action: ClassVar[str] = "set-alias"


@dataclass(frozen=True, kw_only=True)
class KeepAlias(Step):
    """The alias already sends all traffic to the version."""

    alias: str
    version: int
    action: ClassVar[str] = "keep-alias"


# --- plans and results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployable:
    """An intact fnpack archive, read before the target is asked anything."""

    path: Path
    manifest: dict[str, Any]
    sha256: str
    unzipped: int

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.manifest.get("spec") or {})


@dataclass(frozen=True)
class RemoteState:
    """What the planner read from the target: whether the function exists, its versions and aliases."""

    exists: bool = False
    versions: tuple[Version, ...] = ()
    aliases: Mapping[str, AliasState] = field(default_factory=dict)
    last_number: int = 0  # the highest number the target ever gave, where it keeps one (deleted versions')

    def with_sha256(self, sha256: str) -> Version | None:
        return next((v for v in self.versions if v.sha256 == sha256), None)

    @property
    def next_number(self) -> int:
        return max([v.number for v in self.versions] + [self.last_number], default=0) + 1


@dataclass(frozen=True)
class Plan:
    """What `execute` will do to deploy `archive` (sha256) as a version of `function` on `target`,
    with what the planner read (`remote`) and what the target's steps need besides (`context`)."""

    target: str
    function: str
    archive: Path
    sha256: str
    steps: tuple[Step, ...]
    remote: RemoteState = field(default_factory=RemoteState)
    context: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "function": self.function, "archive": str(self.archive),
                "sha256": self.sha256, "steps": [step.to_dict() for step in self.steps]}


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


@dataclass
class Progress:
    """What the executor has done so far: the target's steps fill it in."""

    version: Version | None = None
    created: bool = False
    url: str | None = None


# --- the target's side ------------------------------------------------------------------------------


class Deployer(ABC):
    """A target's hooks into the skeleton. Planning hooks only read; `run` and `move_alias` change."""

    target: str = "target"
    build_command: str = "fnpack build"

    def deployable(self, archive: Path) -> Deployable:
        """The archive, checked for this target (another target's or a too-large one is refused here)."""
        return read_deployable(archive, self.build_command)

    @abstractmethod
    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        """(what the target has of this function, the plan's context for the target's own steps)."""

    @abstractmethod
    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        """The steps that make a version of an archive no version runs yet."""

    def housekeeping(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        """Steps made whether or not a version was reused (e.g. tagging the function)."""
        return []

    def check_promotion(self, deployable: Deployable, alias: str, context: Mapping[str, Any]) -> None:
        """Refuse, before anything changes, a promotion this target cannot record."""

    def alias_summary(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any], alias: str,
                      version: str) -> str:
        before = remote.aliases.get(alias)
        return f"move alias {alias}: {before or '(new)'} -> {version}"

    def promotion(self, deployable: Deployable, alias: str, context: Mapping[str, Any]) -> list[Step]:
        """Steps for the promoted alias after it moved (e.g. its Function URL)."""
        return []

    @abstractmethod
    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        """Make one target step's change, recording a version made (or a URL) in `done`."""

    @abstractmethod
    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        """A `ReuseVersion` step: put the version in `done` (gone since the plan: make it again, or refuse)."""

    @abstractmethod
    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        """Where the function's aliases point now (they may have moved since the plan)."""

    @abstractmethod
    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        """Move the alias by the target's protocol (targets.history); the move, None if it was there already."""

    @abstractmethod
    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str: ...


# --- planning, executing, describing ------------------------------------------------------------------


def plan(deployer: Deployer, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
    """What deploying `archive` would change; reads only. `alias` None: do not promote."""
    deployable = deployer.deployable(Path(archive))
    name = deployable.name
    if alias is not None:
        Qualifier.alias_name(name, alias)
    remote, context = deployer.remote_state(deployable)  # from here on, the target is asked
    same = remote.with_sha256(deployable.sha256)
    steps: list[Step] = []
    if same is not None:
        steps.append(ReuseVersion(f"{name} v{same.number} already runs this archive: nothing to upload",
                                  version=same.number))
    else:
        steps += deployer.new_version(deployable, remote, context)
    steps += deployer.housekeeping(deployable, remote, context)
    if alias is not None:
        deployer.check_promotion(deployable, alias, context)
        before = remote.aliases.get(alias)
        if same is not None and before == AliasState(same.number):
            steps.append(KeepAlias(f"alias {alias} already sends all traffic to v{same.number}", alias=alias,
                                   version=same.number))
        else:
            shown = f"v{same.number}" if same else f"v{remote.next_number} (the new version)"
            steps.append(SetAlias(deployer.alias_summary(deployable, remote, context, alias, shown), alias=alias,
                                  before=before, version=same.number if same else None, reason=reason))
        steps += deployer.promotion(deployable, alias, context)
    return Plan(deployer.target, name, deployable.path, deployable.sha256, tuple(steps), remote, context)


def execute(deployer: Deployer, plan: Plan) -> Deployment:
    """Make the plan's changes, in order."""
    done = Progress()
    alias: str | None = None
    move: AliasMove | None = None
    for step in plan.steps:
        if isinstance(step, ReuseVersion):
            deployer.find_version(plan, step.version, done)
        elif isinstance(step, (SetAlias, KeepAlias)):
            if done.version is None:
                raise ConflictError("the plan moves an alias before it has a version", hint="plan again")
            alias = step.alias
            wanted = AliasState(done.version.number)
            if deployer.aliases(plan).get(alias) != wanted:  # it may have moved since the plan
                move = deployer.move_alias(plan, alias, wanted, getattr(step, "reason", None))
        else:
            deployer.run(plan, step, done)
    if done.version is None:
        raise ConflictError(f"the plan for {plan.function} made no version", hint="plan again")
    if done.url is None:
        qualifier = (Qualifier(plan.function, alias=None if alias == "live" else alias) if alias
                     else Qualifier(plan.function, version=done.version.number))
        done.url = deployer.invoke_url(plan, qualifier)
    return Deployment(done.version, done.created, alias, move, done.url)


def describe(plan: Plan) -> list[str]:
    """The plan as lines for a dry run: the same shape for every target."""
    return [f"plan for {plan.function} on {plan.target} (dry run: nothing changed)",
            *(f"  {step.kind:<14}{step.summary}" for step in plan.steps)]


def read_container_deployable(archive: Path, build: str = "fnpack build") -> Deployable:
    """`read_deployable`, refusing an archive built for a target whose archives do not run in containers
    (the knative and openfaas targets run the local platform's archive unchanged)."""
    from fnpack.targets.catalog import target_info

    deployable = read_deployable(archive, build)
    built_for = str(deployable.manifest.get("target") or "local")
    if target_info(built_for).platform != "container":
        raise UsageError(f"{archive.name} is built for {built_for}, whose archives do not run in containers",
                         hint="build it with `fnpack build` (the same archive runs locally, on Knative and on "
                              "OpenFaaS)")
    return deployable


# Archives read by this process, by path and file identity: a deploy reads its archive's spec to pick the
# target, then plans, and hashing a 26 MB archive twice is a tenth of the command. A file written since
# has another inode, size or change time (ctime is set by the kernel on every write), so it is read anew.
_READ: dict[tuple[Any, ...], Deployable] = {}


def read_deployable(archive: Path, build: str = "fnpack build") -> Deployable:
    """An intact fnpack archive naming a valid function; `build` is the command that makes a right one."""
    try:
        info = os.stat(archive)
        key: tuple[Any, ...] | None = (os.path.abspath(archive), info.st_dev, info.st_ino, info.st_size,
                                       info.st_mtime_ns, info.st_ctime_ns)
    except OSError:
        key = None  # open_archive says what is wrong
    if key in _READ:
        return _READ[key]
    found = _read_deployable(archive, build)
    if key is not None:
        _READ[key] = found
    return found


def _read_deployable(archive: Path, build: str) -> Deployable:
    from fnpack.archive import open_archive
    from fnpack.archive.reader import remember_verified, verified_before

    with open_archive(archive) as reader:
        manifest = reader.manifest()
        sha256 = reader.sha256
        problems = reader.verify() if manifest and not verified_before(sha256) else []
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
    remember_verified(sha256)
    unzipped = sum(f.get("size", 0) for f in manifest.get("files", {}).values())
    return Deployable(archive, manifest, sha256, unzipped)


def _plain(value: Any) -> Any:
    if isinstance(value, AliasState):
        return asdict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
