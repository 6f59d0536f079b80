"""The one small interface every target implements (local, aws-lambda, knative, openfaas).

A deploy is two steps through the shared skeleton of `targets.deploy`: `plan_deploy` reads what is there
and says what it will change (a `Plan` of typed steps, so `--dry-run` prints the same thing for every
target), then `execute` makes those changes. Everything else reads or moves versions and aliases with
the shared model of `fnpack.versions`; alias moves follow the protocol of `targets.history`.
"""

from __future__ import annotations

import getpass
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fnpack.errors import FnpackError, UsageError
from fnpack.targets.history import ANY, Expect
from fnpack.targets.layers import Layered
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.canary.observer import Observer
    from fnpack.targets.deploy import Deployer, Deployment, Plan


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


@dataclass(frozen=True)
class Description:
    """`fnpack describe`: where to call a function, what it has, what runs and what went wrong lately.

    `instances` are the target's running units (the local platform's workers per version, ...);
    `details` what else the target knows (Lambda's state and configuration, ...)."""

    function: str
    target: str
    urls: dict[str, str]
    versions: list[Version]
    aliases: dict[str, AliasState]
    instances: list[dict[str, Any]]
    recent_errors: list[str]
    details: dict[str, Any]


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

    name: ClassVar[str] = "target"
    settings: Layered

    # --- deploying (the shared skeleton of `targets.deploy`, through the target's hooks) ------------

    @abstractmethod
    def deployer(self) -> Deployer:
        """This target's hooks into the deploy skeleton."""

    def plan_deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
        """Read the archive and the target's state; change nothing. `alias` None: do not promote."""
        from fnpack.targets import deploy  # the deploy skeleton: only commands that deploy import it

        return deploy.plan(self.deployer(), archive, alias, reason)

    def execute(self, plan: Plan) -> Deployment:
        """Make the plan's changes."""
        from fnpack.targets import deploy

        return deploy.execute(self.deployer(), plan)

    def deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Deployment:
        return self.execute(self.plan_deploy(archive, alias, reason))

    def export(self, plan: Plan) -> str:
        """The plan as the target's own manifests (Knative's YAML, ...), for GitOps."""
        raise UsageError(f"the {self.name} target has no manifests to export",
                         hint="-o yaml is for targets deployed with manifests (knative); use --json for the plan")

    def preflight(self, spec: dict[str, Any] | None = None) -> None:
        """Every check that can fail without an archive (reachable, token, region, credentials), so that a
        mistake costs a second, not a build. `spec`: the function's fnpack.yaml, when known."""

    # --- reading and moving ------------------------------------------------------------------------

    @abstractmethod
    def functions(self) -> list[FunctionSummary]: ...

    @abstractmethod
    def versions(self, name: str) -> list[Version]: ...

    @abstractmethod
    def aliases(self, name: str) -> dict[str, AliasState]: ...

    @abstractmethod
    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        """Move an alias (by the protocol of `targets.history`); `expect`: refuse unless it is there now."""

    @abstractmethod
    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        """Restore the state before the alias's last move not yet rolled back."""

    @abstractmethod
    def history(self, name: str, alias: str) -> list[AliasMove]: ...

    @abstractmethod
    def delete(self, name: str, version: int | None = None) -> list[Version]:
        """Delete one version (refused while an alias uses it) or the whole function."""

    def describe(self, name: str) -> Description:
        """Every version and alias with its URL, and what the target says about what runs."""
        versions = self.versions(name)
        aliases = self.aliases(name)
        urls = {f"{name}:{alias}": self.invoke_url(Qualifier(name, alias=alias)) for alias in sorted(aliases)}
        urls.update({f"{name}:{v.number}": self.invoke_url(Qualifier(name, version=v.number)) for v in versions})
        instances, errors, details = self.running(name)
        return Description(name, self.name, urls, versions, aliases, instances, errors, details)

    def running(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        """(instances, recent errors, details) for `describe`; a target that can say nothing: empty."""
        return [], [], {}

    # --- calling -----------------------------------------------------------------------------------

    @abstractmethod
    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        """Send one request (a record or a list of records); a 4xx/5xx answer raises."""

    @abstractmethod
    def invoke_url(self, qualifier: Qualifier) -> str: ...

    def observer(self, prometheus: str | None = None) -> Observer:
        """Where canary analysis reads this target's figures (`fnpack.canary.observer`); `prometheus`: the URL
        of a Prometheus server that scrapes the target's metrics, where the target reads them from one."""
        raise UsageError(f"the {self.name} target has no metrics for canary analysis")

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """The function's log text in chunks; `follow` keeps streaming until interrupted."""
        raise UsageError(f"the {self.name} target cannot show logs")

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                   created_at=data.get("created_at", ""), actor=data.get("actor", ""), target=data.get("target", ""))
