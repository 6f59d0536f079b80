"""The AWS clients of the aws-lambda target, and the calls every part of it makes through them.

Credentials and endpoint overrides (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_LAMBDA, ...) are boto3's own; the
region is the settings' (flag, FNPACK_LAMBDA_REGION, the spec), else boto3's chain. Clients are made
once per (service, region) and shared across threads (`invoke --batch` calls from several).
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

from fnpack.errors import NotFoundError, UsageError
from fnpack.targets.aws_lambda.errors import CREDENTIALS_HINT, REGION_HINT, aws_error, error_parts
from fnpack.versions import DEFAULT_ALIAS, AliasState, Qualifier, Version

DESCRIPTION = "deployed by fnpack"  # on $LATEST: how `fnpack ls` tells fnpack's functions from others


class LambdaApi:
    """Lambda and S3 in one region (None: boto3's default)."""

    def __init__(self, region: str | None = None, profile: str | None = None) -> None:
        # AWS_REGION before AWS_DEFAULT_REGION, as the AWS CLI v2 and the SDKs read them (boto3 reads only the second)
        self.wanted_region = region or os.environ.get("AWS_REGION") or None
        self.profile = profile
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def in_region(self, region: str | None) -> LambdaApi:
        """The same API in another region (a spec may name one); self when it is this one."""
        return self if region is None or region == self.wanted_region else LambdaApi(region, self.profile)

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make(service)
            return self._clients[service]

    @property
    def clients_made(self) -> bool:
        return bool(self._clients)

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(region_name=self.wanted_region, profile_name=self.profile)
        except ProfileNotFound as exc:
            raise UsageError(f"no AWS profile {self.profile!r}: {exc}", hint=CREDENTIALS_HINT) from None
        if not session.region_name:
            raise UsageError("no AWS region is set", hint=REGION_HINT)
        if session.get_credentials() is None:
            raise UsageError("no AWS credentials found", hint=CREDENTIALS_HINT)
        return session.client(service, config=Config(retries={"mode": "standard"}, user_agent_extra="fnpack"))

    @property
    def region(self) -> str:
        return str(self.client("lambda").meta.region_name)

    def call(self, service: str, operation: str, what: str = "", **kwargs: Any) -> Any:
        """One API call; botocore's errors become FnpackErrors saying what failed and how to fix it."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(service)
        try:
            return getattr(client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, service, what) from None

    def get_function(self, name: str) -> dict[str, Any] | None:
        """GetFunction's answer (Configuration, Tags), None when there is no such function."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client("lambda").get_function(FunctionName=name)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and error_parts(exc)[0] == "ResourceNotFoundException":
                return None
            raise aws_error(exc, "lambda", f"reading function {name}") from None

    def function(self, name: str) -> dict[str, Any]:
        found = self.get_function(name)
        if found is None:
            raise NotFoundError(f"no function {name!r} on AWS Lambda in {self.region}",
                                hint="deploy it with `fnpack deploy --target aws-lambda`, or pass --region")
        return found

    def paginate(self, operation: str, key: str, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client("lambda").get_paginator(operation).paginate(**kwargs)
            return [item for page in pages for item in page.get(key, [])]
        except ClientError as exc:
            if error_parts(exc)[0] == "ResourceNotFoundException" and "FunctionName" in kwargs:
                raise NotFoundError(f"no function {kwargs['FunctionName']!r} on AWS Lambda in {self.region}",
                                    hint="check the name with `fnpack ls --target aws-lambda`, or pass --region") from None
            raise aws_error(exc, "lambda", what) from None
        except BotoCoreError as exc:
            raise aws_error(exc, "lambda", what) from None

    def versions(self, name: str) -> list[Version]:
        found = self.paginate("list_versions_by_function", "Versions", f"listing {name}'s versions", FunctionName=name)
        return sorted((lambda_version(name, v) for v in found if str(v.get("Version", "")).isdigit()),
                      key=lambda v: v.number)

    def aliases(self, name: str) -> dict[str, AliasState]:
        found = self.paginate("list_aliases", "Aliases", f"listing {name}'s aliases", FunctionName=name)
        return {a["Name"]: state for a in found if (state := alias_state(a)) is not None}

    def invoke_url(self, qualifier: Qualifier) -> str:
        """The alias's Function URL when it has one, else the qualified function ARN (for the Invoke API)."""
        from botocore.exceptions import ClientError

        target = lambda_qualifier(qualifier)
        if qualifier.version is None:
            try:
                return str(self.client("lambda").get_function_url_config(FunctionName=qualifier.name,
                                                                         Qualifier=target)["FunctionUrl"])
            except ClientError:
                pass  # none configured (or not allowed to read it): the ARN still names the function
        arn = self.function(qualifier.name)["Configuration"]["FunctionArn"]
        return f"{arn}:{target}"


def lambda_qualifier(qualifier: Qualifier) -> str:
    """What Lambda calls the qualifier: the alias, the version number, or `live` for a bare name."""
    return qualifier.alias or (str(qualifier.version) if qualifier.version is not None else DEFAULT_ALIAS)

def alias_state(alias: dict[str, Any]) -> AliasState | None:
    """fnpack's view of a Lambda alias; None for one it cannot express (pointing at $LATEST)."""
    primary = str(alias.get("FunctionVersion", ""))
    if not primary.isdigit():
        return None
    weights = ((alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})
    if not weights:
        return AliasState(int(primary))
    canary, weight = next(iter(weights.items()))
    return AliasState(int(primary), int(canary), float(weight))


def lambda_version(name: str, config: dict[str, Any]) -> Version:
    """fnpack's view of a published Lambda version (its Description says who published it)."""
    description = str(config.get("Description") or "")
    by = description.partition(" by ")[2]
    return Version(function=name, number=int(config["Version"]),
                   sha256=base64.b64decode(config["CodeSha256"]).hex(), created_at=_utc(config.get("LastModified")),
                   actor=by, target="aws-lambda")


def _utc(text: Any) -> str:
    """Lambda's LastModified (2024-05-01T10:00:00.000+0000, always UTC) as ISO 8601 to the second."""
    text = str(text or "")
    return f"{text[:19]}+00:00" if len(text) >= 19 and text[10] == "T" else text
