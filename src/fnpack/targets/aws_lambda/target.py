"""The aws-lambda target: the same archive, deployed to AWS Lambda with boto3.

- This module reads, moves, deletes and invokes what is deployed; deploys go through the shared skeleton
  with the hooks of `deploy`; every AWS call goes through `api`; settings are `settings.LambdaSettings`
  (flags > FNPACK_LAMBDA_* > the spec in the archive; the region falls back to boto3's chain).
- Aliases are Lambda aliases (`aliases.LambdaRouter`); their history is shared through S3
  (`history.S3History`); moves follow the protocol of `targets.history`.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.targets.aws_lambda.aliases import LambdaRouter
from fnpack.targets.aws_lambda.api import DESCRIPTION, LambdaApi, lambda_qualifier
from fnpack.targets.aws_lambda.errors import aws_error, error_parts
from fnpack.targets.aws_lambda.history import BUCKET_TAG, S3History
from fnpack.targets.aws_lambda.settings import LambdaSettings
from fnpack.targets.base import FunctionSummary, Invocation, InvokeError, Target, actor
from fnpack.targets.deploy import Deployer
from fnpack.targets.history import ANY, Expect, move_alias, rollback_alias
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.canary.observer import Observer


class AwsLambdaTarget(Target):
    name = "aws-lambda"

    def __init__(self, settings: LambdaSettings | None = None, progress: bool | None = None) -> None:
        self.settings = settings or LambdaSettings.layered({})
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.api = LambdaApi(self.settings.region, self.settings.profile)

    def deployer(self) -> Deployer:
        from fnpack.targets.aws_lambda.deploy import LambdaDeployer

        return LambdaDeployer(self.api, self.settings, self.progress)

    @property
    def region(self) -> str:
        return self.api.region

    def preflight(self, spec: dict[str, Any] | None = None) -> None:
        """A region and credentials (no API call: they may not read anything yet)."""
        settings = self.settings.over(LambdaSettings.from_spec(spec)) if spec else self.settings
        self.api.in_region(settings.region).client("lambda")

    # --- reading -----------------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        found = self.api.paginate("list_functions", "Functions", "listing functions")
        summaries = []
        for config in sorted(found, key=lambda c: c["FunctionName"]):
            if not str(config.get("Description", "")).startswith(DESCRIPTION):
                continue
            name = config["FunctionName"]
            versions = self.versions(name)
            summaries.append(FunctionSummary(name, len(versions), max((v.number for v in versions), default=0),
                                             self.aliases(name)))
        return summaries

    def versions(self, name: str) -> list[Version]:
        return self.api.versions(name)

    def aliases(self, name: str) -> dict[str, AliasState]:
        return self.api.aliases(name)

    def history(self, name: str, alias: str) -> list[AliasMove]:
        moves = self._store(name).read(name, alias)[0]
        if not moves:  # never set: the same answer as a rollback of it
            raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"`fnpack alias list {name}` lists them")
        return moves

    def _store(self, name: str) -> S3History:
        bucket = self.api.function(name).get("Tags", {}).get(BUCKET_TAG) or self.settings.bucket
        if not bucket:
            raise UsageError(f"{name} has no alias history bucket: it was deployed without one",
                             hint="deploy it again with --bucket (or FNPACK_LAMBDA_BUCKET), which tags the function "
                                  "with the bucket that holds its shared alias history")
        return S3History(self.api.client("s3"), bucket)

    # --- moving ------------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        store = self._store(name)
        return move_alias(store, LambdaRouter(self.api), name, alias, state, versions=self._numbers(name),
                          actor=actor(), reason=reason, expect=expect)

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        store = self._store(name)
        return rollback_alias(store, LambdaRouter(self.api), name, alias, versions=self._numbers(name),
                              actor=actor(), reason=reason)

    def _numbers(self, name: str) -> list[int]:
        return [v.number for v in self.versions(name)]

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        found = self.versions(name)
        if version is not None:
            doomed = [v for v in found if v.number == version]
            if not doomed:
                raise NotFoundError(f"{name} has no version {version}",
                                    hint=f"its versions are: {', '.join(f'v{v.number}' for v in found) or 'none'}")
            users = sorted(a for a, s in self.aliases(name).items() if version in s.versions)
            if users:
                raise ConflictError(f"{name} v{version} is in use by alias {', '.join(users)}",
                                    hint=f"move the alias first (fnpack alias set {name} {users[0]} VERSION)")
            self.api.call("lambda", "delete_function", f"deleting {name} v{version}", FunctionName=name,
                          Qualifier=str(version))
            return doomed
        bucket = self.api.function(name).get("Tags", {}).get(BUCKET_TAG)
        self.api.call("lambda", "delete_function", f"deleting {name}", FunctionName=name)
        if bucket:  # a new function of this name must not inherit moves between versions it does not have
            try:
                S3History(self.api.client("s3"), bucket).delete_all(name)
            except Exception as exc:  # the function is gone already; say what is left behind
                raise FnpackError(f"{name} was deleted, but its alias history in s3://{bucket}/fnpack/{name}/aliases/ "
                                  f"was not: {exc}", hint="delete it by hand") from None
        return found

    def running(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        """Lambda runs instances per request and keeps no error list of its own: the function's state and
        configuration, and where its logs are (CloudWatch)."""
        config = self.api.function(name)["Configuration"]
        details = {key: config.get(key) for key in ("State", "LastUpdateStatus", "Runtime", "MemorySize", "Timeout",
                                                     "Architectures", "LastModified") if config.get(key) is not None}
        errors = [f"{config['LastUpdateStatus']}: {config.get('LastUpdateStatusReason') or 'no reason given'}"] \
            if config.get("LastUpdateStatus") == "Failed" else []
        details["logs"] = f"CloudWatch Logs group /aws/lambda/{name} in {self.region}"
        return [], errors, details

    def observer(self, prometheus: str | None = None) -> Observer:
        """CloudWatch's AWS/Lambda metrics, which Lambda writes per alias and executed version itself (a
        Prometheus URL, which FNPACK_PROMETHEUS_URL may set for the other targets, is not used)."""
        from fnpack.targets.aws_lambda.observer import CloudWatchObserver

        return CloudWatchObserver(self.api)

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        from botocore.exceptions import BotoCoreError, ClientError

        target = lambda_qualifier(qualifier)
        try:
            answer = self.api.client("lambda").invoke(FunctionName=qualifier.name, Qualifier=target,
                                                      Payload=json.dumps(payload).encode())
        except ClientError as exc:
            if error_parts(exc)[0] == "ResourceNotFoundException":
                raise NotFoundError(f"{qualifier.name}:{target}: no such function, version or alias on AWS Lambda in "
                                    f"{self.region}", hint=f"see `fnpack versions {qualifier.name} --target "
                                                           "aws-lambda` and `fnpack alias list`") from None
            raise aws_error(exc, "lambda", f"invoking {qualifier.name}:{target}") from None
        except BotoCoreError as exc:
            raise aws_error(exc, "lambda", f"invoking {qualifier.name}:{target}") from None
        text = answer["Payload"].read().decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        executed = str(answer.get("ExecutedVersion") or "")
        number = int(executed) if executed.isdigit() else None
        if answer.get("FunctionError"):
            if isinstance(body, dict) and "errorMessage" in body:
                detail = f"{body.get('errorType') or 'Error'}: {body['errorMessage']}"
            else:
                detail = str(body)[:500]
            raise InvokeError(f"{qualifier.name}:{target} raised an error ({answer['FunctionError']}): {detail}",
                              hint="`fnpack run --as lambda ARCHIVE --data ...` reproduces it locally", status=500,
                              body=body)
        return Invocation(int(answer.get("StatusCode", 200)), body, number)

    def invoke_url(self, qualifier: Qualifier) -> str:
        return self.api.invoke_url(qualifier)
