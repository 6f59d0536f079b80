"""The one list of targets: what the spec accepts, what the build makes archives for, what the CLI deploys to.

Each entry names the runtime.toml platform its archives are built for, its size limits, and, once it can be
deployed to, where its `Target` class and settings model live (imported only when that target is used, so
that reading the spec or building never imports boto3 or httpx). Adding a target starts here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fnpack.errors import UsageError

if TYPE_CHECKING:
    from fnpack.targets.base import Target
    from fnpack.targets.layers import Layered

MB = 1024 * 1024


@dataclass(frozen=True)
class TargetInfo:
    name: str
    platform: str  # the runtime.toml section its archives are built for: aws-lambda or container
    max_unzipped: int
    direct_upload: int | None = None  # largest archive sent in the API call itself (bigger: through storage)
    implementation: str | None = None  # "module:Class" of its Target; None: buildable, not yet deployable
    settings: str | None = None  # "module:Class" of its settings model

    @property
    def available(self) -> bool:
        return self.implementation is not None

    def target_class(self) -> type[Target]:
        return _load(self.implementation or "")

    def settings_model(self) -> type[Layered]:
        return _load(self.settings or "")


# AWS documents its limits in MB of 2**20 bytes: 50 MB zipped for a direct upload, 250 MB unzipped.
CATALOG: tuple[TargetInfo, ...] = (
    TargetInfo("local", "container", 1024 * MB, implementation="fnpack.targets.local.target:LocalTarget",
               settings="fnpack.targets.local.settings:LocalSettings"),
    TargetInfo("aws-lambda", "aws-lambda", 250 * MB, direct_upload=50 * MB,
               implementation="fnpack.targets.aws_lambda.target:AwsLambdaTarget",
               settings="fnpack.targets.aws_lambda.settings:LambdaSettings"),
    TargetInfo("knative", "container", 1024 * MB, implementation="fnpack.targets.knative.target:KnativeTarget",
               settings="fnpack.targets.knative.settings:KnativeSettings"),
    TargetInfo("openfaas", "container", 1024 * MB, implementation="fnpack.targets.openfaas.target:OpenFaaSTarget",
               settings="fnpack.targets.openfaas.settings:OpenFaaSSettings"),
)
TARGETS: tuple[str, ...] = tuple(info.name for info in CATALOG)
AVAILABLE: tuple[str, ...] = tuple(info.name for info in CATALOG if info.available)


def target_info(name: str) -> TargetInfo:
    """The entry called `name`; an unknown name is a usage error that lists the known ones."""
    for info in CATALOG:
        if info.name == name:
            return info
    raise UsageError(f"unknown target {name!r}", hint=f"targets are: {', '.join(TARGETS)}")


def deployable(name: str) -> TargetInfo:
    """The entry of a target functions can be deployed to now."""
    info = target_info(name)
    if not info.available:
        raise UsageError(f"the {name} target is not available yet",
                         hint=f"deploy to: {', '.join(AVAILABLE)} (`fnpack build --target {name}` builds for it)")
    return info


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
