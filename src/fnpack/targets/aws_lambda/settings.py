"""The aws-lambda target's settings: one model for the spec's `aws_lambda:` section, the flags and the
FNPACK_LAMBDA_* variables (see `targets.settings` for the order). Memory and timeout default to the
spec's `resources:`. The whole spec is copied into the archive's manifest: no secrets in `environment`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from fnpack.targets.settings import TargetSettings, setting

# Used with fullmatch() only: `$` also matches before a final newline. re.ASCII: `\d` and `\w` take any script.
ROLE_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d", re.ASCII)
ENV_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Lambda sets these itself and refuses them in a function's environment.
LAMBDA_RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV", "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"})
AUTH_TYPES = ("NONE", "AWS_IAM")


class LambdaSettings(TargetSettings):
    """The aws-lambda target's settings. Flags and FNPACK_LAMBDA_* variables override each key; memory and
    timeout default to `resources`. The whole spec is copied into the archive's manifest, so keep secrets
    out of `environment` (use Lambda's own secret handling)."""

    target: ClassVar[str] = "aws-lambda"

    region: str | None = setting(env="FNPACK_LAMBDA_REGION",
                                 description="AWS region, e.g. eu-west-1 (default: AWS_REGION).")
    profile: str | None = setting(env="FNPACK_LAMBDA_PROFILE",
                                  description="AWS profile whose credentials to use (default: AWS_PROFILE, boto3's chain).")
    role: str | None = setting(env="FNPACK_LAMBDA_ROLE",
                               description="Execution role ARN; needed to create the function.")
    bucket: str | None = setting(env="FNPACK_LAMBDA_BUCKET",
                                 description="S3 bucket for archives over 50 MB and the shared alias history.")
    memory: int | None = setting(env="FNPACK_LAMBDA_MEMORY", ge=128, le=10240,
                                 description="Memory in MB (default: resources).")
    timeout: int | None = setting(env="FNPACK_LAMBDA_TIMEOUT", ge=1, le=900,
                                  description="Timeout in seconds (default: resources).")
    arch: Literal["x86_64", "arm64"] | None = setting(description="Must equal `arch`, if given.")
    environment: dict[str, str] = Field(default_factory=dict, description="Environment variables of the function.")
    function_url: Literal["NONE", "AWS_IAM"] | None = setting(
        env="FNPACK_LAMBDA_FUNCTION_URL", description="Give each deployed alias a Function URL with this auth type.")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LambdaSettings:
        section = cls.section(spec, "aws_lambda")
        resources = cls.section(spec, "resources")
        memory = section.get("memory") or resources.get("memory")
        timeout = section.get("timeout") or resources.get("timeout")
        section.update(memory=memory, timeout=None if timeout is None else max(1, round(float(timeout))))
        return cls.layer(section, "the archive's fnpack.yaml")

    @field_validator("region")
    @classmethod
    def _region(cls, region: str | None) -> str | None:
        if region is not None and not REGION_PATTERN.fullmatch(region):
            raise ValueError(f"{region!r} is not an AWS region name (e.g. 'eu-west-1')")
        return region

    @field_validator("role")
    @classmethod
    def _role_arn(cls, role: str | None) -> str | None:
        if role is not None and not ROLE_ARN_PATTERN.fullmatch(role):
            raise ValueError(f"{role!r} is not an IAM role ARN (e.g. 'arn:aws:iam::123456789012:role/fnpack-lambda')")
        return role

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, bucket: str | None) -> str | None:
        if bucket is not None and (not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket):
            raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
        return bucket

    @field_validator("environment")
    @classmethod
    def _env_names(cls, environment: dict[str, str]) -> dict[str, str]:
        for key in environment:
            if not ENV_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
            if key in LAMBDA_RESERVED_ENV:
                raise ValueError(f"{key!r} is reserved by AWS Lambda; pick another name")
        return environment

    @field_validator("function_url", mode="before")
    @classmethod
    def _auth_type(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
