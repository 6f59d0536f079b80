"""What an aws-lambda deploy is configured with, and the checks it passes before any API call.

- Settings: flags (the target's constructor arguments) win over FNPACK_LAMBDA_* variables, which win over
  the `aws_lambda:` section of the spec inside the archive; memory and timeout default to `resources:`.
  `LambdaSettings` is one such layer; `over` stacks them.
- Checks (on an archive `base.read_deployable` found intact): built for aws-lambda, on a runtime and architecture Lambda runs,
  and within Lambda's 250 MB unzipped limit; an existing function must match its runtime and architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fnpack.build.budget import human
from fnpack.build.profile import LAMBDA_DIRECT_UPLOAD, LAMBDA_UNZIPPED
from fnpack.errors import ArchiveError, BudgetError, ConflictError, UsageError
from fnpack.spec import BUCKET_PATTERN, REGION_PATTERN, ROLE_ARN_PATTERN, RUNTIMES

AUTH_TYPES = ("NONE", "AWS_IAM")
_ENV = {"region": "FNPACK_LAMBDA_REGION", "role": "FNPACK_LAMBDA_ROLE", "bucket": "FNPACK_LAMBDA_BUCKET",
        "memory": "FNPACK_LAMBDA_MEMORY", "timeout": "FNPACK_LAMBDA_TIMEOUT",
        "function_url": "FNPACK_LAMBDA_FUNCTION_URL"}
DIRECT_UPLOAD_ENV = "FNPACK_LAMBDA_DIRECT_UPLOAD_MAX"  # bytes; tests lower it to exercise the S3 path


@dataclass(frozen=True)
class LambdaSettings:
    """One layer of settings; None means "not set here"."""

    region: str | None = None
    role: str | None = None
    bucket: str | None = None
    memory: int | None = None
    timeout: int | None = None
    environment: dict[str, str] | None = None
    function_url: str | None = None

    def over(self, lower: LambdaSettings) -> LambdaSettings:
        """These settings, with `lower`'s where these are unset."""
        return LambdaSettings(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                 else getattr(lower, f.name) for f in fields(self)})

    @classmethod
    def from_env(cls) -> LambdaSettings:
        values: dict[str, Any] = {key: os.environ.get(var) or None for key, var in _ENV.items()}
        for key in ("memory", "timeout"):
            if values[key] is not None:
                values[key] = integer(values[key], _ENV[key])
        return cls(**values).checked(source="the environment")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LambdaSettings:
        section = spec.get("aws_lambda") or {}
        resources = spec.get("resources") or {}
        timeout = section.get("timeout") or resources.get("timeout")
        return cls(region=section.get("region"), role=section.get("role"), bucket=section.get("bucket"),
                   memory=section.get("memory") or resources.get("memory"),
                   timeout=None if timeout is None else max(1, round(float(timeout))),
                   environment=section.get("environment") or None, function_url=section.get("function_url"))

    def checked(self, source: str = "the command line") -> LambdaSettings:
        """Refuse malformed values with what was expected; returns self."""
        problems = []
        if self.region is not None and not REGION_PATTERN.fullmatch(self.region):
            problems.append(f"region {self.region!r} is not an AWS region name (e.g. eu-west-1)")
        if self.role is not None and not ROLE_ARN_PATTERN.fullmatch(self.role):
            problems.append(f"role {self.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if self.bucket is not None and not BUCKET_PATTERN.fullmatch(self.bucket):
            problems.append(f"bucket {self.bucket!r} is not an S3 bucket name")
        if self.memory is not None and not 128 <= self.memory <= 10240:
            problems.append(f"memory {self.memory} is out of Lambda's range of 128 to 10240 MB")
        if self.timeout is not None and not 1 <= self.timeout <= 900:
            problems.append(f"timeout {self.timeout} is out of Lambda's range of 1 to 900 seconds")
        if self.function_url is not None and self.function_url not in AUTH_TYPES:
            problems.append(f"function URL auth type {self.function_url!r} is neither NONE nor AWS_IAM")
        if problems:
            raise UsageError(f"invalid aws-lambda settings from {source}: " + "; ".join(problems),
                             hint="see `fnpack deploy --help` and the aws_lambda section of `fnpack schema`")
        return self


# --- archive checks (no API calls) -----------------------------------------------------------------


def check_archive(archive: Path, manifest: dict[str, Any], unzipped: int) -> None:
    rebuild = "rebuild it with `fnpack build --target aws-lambda`"
    if manifest.get("target") != "aws-lambda":
        raise ArchiveError(f"{archive.name} was built for the {manifest.get('target')!r} target, not aws-lambda: its "
                           "packages may not load on Lambda", hint=rebuild)
    if manifest.get("runtime") not in RUNTIMES:
        raise ArchiveError(f"{archive.name} is for runtime {manifest.get('runtime')!r}; Lambda runs fnpack archives "
                           f"on {', '.join(RUNTIMES)}", hint=rebuild)
    if manifest.get("arch") not in ("x86_64", "arm64"):
        raise ArchiveError(f"{archive.name} is for architecture {manifest.get('arch')!r}; Lambda runs x86_64 and "
                           "arm64", hint=rebuild)
    if unzipped > LAMBDA_UNZIPPED:
        raise BudgetError(f"{archive.name} unpacks to {human(unzipped)}, over AWS Lambda's hard limit of "
                          f"{human(LAMBDA_UNZIPPED)} unzipped", hint="`fnpack inspect` shows what is large; slim "
                                                                    "the requirements or the model")


def check_compatible(name: str, config: dict[str, Any], runtime: str, arch: str) -> None:
    """An existing function must be a zip function of the archive's runtime and architecture."""
    problems = []
    if config.get("PackageType", "Zip") != "Zip":
        problems.append(f"it is a {config.get('PackageType')} function, fnpack deploys zip archives")
    if config.get("Runtime") != runtime:
        problems.append(f"its runtime is {config.get('Runtime')}, the archive's is {runtime}")
    existing_arch = (config.get("Architectures") or ["x86_64"])[0]
    if existing_arch != arch:
        problems.append(f"its architecture is {existing_arch}, the archive's is {arch}")
    if problems:
        raise ConflictError(f"the function {name} exists on AWS Lambda with other settings: " + "; ".join(problems),
                            hint="build for the function's runtime and arch (runtime:, arch: in fnpack.yaml), or "
                                 f"delete it first (fnpack delete {name} --target aws-lambda)")


# --- small helpers ----------------------------------------------------------------------------------


def direct_upload_max() -> int:
    """The largest archive sent in the API call itself; larger ones go through S3."""
    text = os.environ.get(DIRECT_UPLOAD_ENV)
    return LAMBDA_DIRECT_UPLOAD if not text else integer(text, DIRECT_UPLOAD_ENV)


def integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a whole number") from None
