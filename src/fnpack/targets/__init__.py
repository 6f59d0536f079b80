"""Targets: where functions are deployed. One module per target behind `targets.base.Target`."""

from __future__ import annotations

from typing import Any

from fnpack.errors import UsageError
from fnpack.targets.base import Deployment, Invocation, Plan, Step, Target

TARGETS = ("local", "aws-lambda", "knative", "openfaas")
AVAILABLE = ("local", "aws-lambda")

__all__ = ["AVAILABLE", "TARGETS", "Deployment", "Invocation", "Plan", "Step", "Target", "get_target"]


def get_target(name: str, **settings: Any) -> Target:
    """The target called `name`, configured with its settings (local: url, state_dir, token, invoke_token;
    aws-lambda: region, role, bucket, memory, timeout, environment, function_url, plus the local ones, ignored)."""
    if name == "local":
        from fnpack.targets.local.target import LocalTarget

        return LocalTarget(**settings)
    if name == "aws-lambda":
        from fnpack.targets.aws_lambda.target import AwsLambdaTarget

        return AwsLambdaTarget(**settings)
    if name in TARGETS:
        raise UsageError(f"the {name} target is not available yet",
                         hint=f"deploy to: {', '.join(AVAILABLE)} (`fnpack build --target {name}` builds for it)")
    raise UsageError(f"unknown target {name!r}", hint=f"targets are: {', '.join(TARGETS)}")
