"""The aws-lambda target: the same archive, deployed to AWS Lambda with boto3.

- This module is the target itself: its AWS clients, and reading, moving, deleting and invoking what is
  deployed. Deploys are planned and executed by `aws_deploy`; settings and the archive checks are in
  `aws_settings`; botocore's errors become FnpackErrors in `aws_errors`.
- Settings: flags (the constructor's arguments) win over FNPACK_LAMBDA_* variables, which win over the
  `aws_lambda:` section of the spec inside the archive; the region falls back to boto3's chain
  (AWS_REGION, the profile). Credentials and an endpoint override (AWS_ENDPOINT_URL,
  AWS_ENDPOINT_URL_LAMBDA, ...) are boto3's own.
- Aliases are Lambda aliases (a canary is RoutingConfig.AdditionalVersionWeights); their history is
  shared through S3 and moves are guarded against concurrent ones: see `aws_history`.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.targets.aws_lambda.deploy import DESCRIPTION, LambdaDeployer, lambda_version
from fnpack.targets.aws_lambda.errors import CREDENTIALS_HINT, REGION_HINT, aws_error, error_parts
from fnpack.targets.aws_lambda.history import BUCKET_TAG, HistoryStore
from fnpack.targets.aws_lambda.settings import LambdaSettings
from fnpack.targets.base import Deployment, FunctionSummary, Invocation, InvokeError, Plan, Target, actor
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version, rollback_step


class AwsLambdaTarget(Target):
    name = "aws-lambda"

    def __init__(self, region: str | None = None, role: str | None = None, bucket: str | None = None,
                 memory: int | None = None, timeout: int | None = None, environment: dict[str, str] | None = None,
                 function_url: str | None = None, progress: bool | None = None, **_other_targets: Any) -> None:
        flags = LambdaSettings(region, role, bucket, memory, timeout, environment or None,
                               function_url.upper() if function_url else None).checked()
        self.settings = flags.over(LambdaSettings.from_env())
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # `invoke --batch` calls from threads; clients are made once
        self._deployer = LambdaDeployer(self)

    # --- AWS clients -------------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make_client(service)
            return self._clients[service]

    def _make_client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(region_name=self.settings.region)
        if not session.region_name:
            raise UsageError("no AWS region is set", hint=REGION_HINT)
        if session.get_credentials() is None:
            raise UsageError("no AWS credentials found", hint=CREDENTIALS_HINT)
        return session.client(service, config=Config(retries={"mode": "standard"}, user_agent_extra="fnpack"))

    @property
    def region(self) -> str:
        return str(self._client("lambda").meta.region_name)

    def _call(self, service: str, operation: str, what: str = "", **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client(service)
        try:
            return getattr(client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, service, what) from None

    def _get_function(self, name: str) -> dict[str, Any] | None:
        """GetFunction's answer (Configuration, Tags), None when there is no such function."""
        from botocore.exceptions import ClientError

        try:
            return self._client("lambda").get_function(FunctionName=name)
        except ClientError as exc:
            if error_parts(exc)[0] == "ResourceNotFoundException":
                return None
            raise aws_error(exc, "lambda", f"reading function {name}") from None

    def _function(self, name: str) -> dict[str, Any]:
        found = self._get_function(name)
        if found is None:
            raise NotFoundError(f"no function {name!r} on AWS Lambda in {self.region}",
                                hint="deploy it with `fnpack deploy --target aws-lambda`, or pass --region")
        return found

    def _paginate(self, operation: str, key: str, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self._client("lambda").get_paginator(operation).paginate(**kwargs)
            return [item for page in pages for item in page.get(key, [])]
        except ClientError as exc:
            if error_parts(exc)[0] == "ResourceNotFoundException" and "FunctionName" in kwargs:
                raise NotFoundError(f"no function {kwargs['FunctionName']!r} on AWS Lambda in {self.region}",
                                    hint="check the name with `fnpack ls --target aws-lambda`, or pass --region") from None
            raise aws_error(exc, "lambda", what) from None
        except BotoCoreError as exc:
            raise aws_error(exc, "lambda", what) from None

    # --- deploying ---------------------------------------------------------------------------------

    def plan_deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
        return self._deployer.plan(archive, alias, reason)

    def execute(self, plan: Plan) -> Deployment:
        return self._deployer.execute(plan)

    # --- reading -----------------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        found = self._paginate("list_functions", "Functions", "listing functions")
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
        found = self._paginate("list_versions_by_function", "Versions", f"listing {name}'s versions",
                               FunctionName=name)
        return sorted((lambda_version(name, v) for v in found if str(v.get("Version", "")).isdigit()),
                      key=lambda v: v.number)

    def aliases(self, name: str) -> dict[str, AliasState]:
        found = self._paginate("list_aliases", "Aliases", f"listing {name}'s aliases", FunctionName=name)
        return {a["Name"]: state for a in found if (state := _alias_state(a)) is not None}

    def history(self, name: str, alias: str) -> list[AliasMove]:
        return self._store(name).read(name, alias)[0]

    def _store(self, name: str, bucket: str | None = None) -> HistoryStore:
        bucket = bucket or self._function(name).get("Tags", {}).get(BUCKET_TAG) or self.settings.bucket
        if not bucket:
            raise UsageError(f"{name} has no alias history bucket: it was deployed without one",
                             hint="deploy it again with --bucket (or FNPACK_LAMBDA_BUCKET), which tags the function "
                                  "with the bucket that holds its shared alias history")
        return HistoryStore(self._client("s3"), bucket)

    # --- moving ------------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None) -> AliasMove:
        return self._move(name, alias, state, reason)

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        store = self._store(name)
        moves, etag = store.read(name, alias)
        index, state = rollback_step(moves)
        return self._move(name, alias, state, reason, undoes=index, store=store, read=(moves, etag))

    def _move(self, name: str, alias: str, state: AliasState, reason: str | None, undoes: int | None = None,
              bucket: str | None = None, store: HistoryStore | None = None,
              read: tuple[list[AliasMove], str | None] | None = None) -> AliasMove:
        """Record the move in the shared history (compare-and-swap), then move the alias (RevisionId)."""
        from botocore.exceptions import BotoCoreError, ClientError

        store = store or self._store(name, bucket)
        numbers = [v.number for v in self.versions(name)]
        for number in state.versions:
            if number not in numbers:
                raise NotFoundError(f"{name} has no version {number}: alias {alias} was not moved",
                                    hint=f"its versions are: {', '.join(f'v{n}' for n in numbers) or 'none'}")
        before, revision, exists = self._alias(name, alias)
        moves, etag = read if read is not None else store.read(name, alias)
        move = AliasMove(before, state, actor(), datetime.now(timezone.utc).isoformat(timespec="seconds"), reason,
                         undoes)
        written = store.write(name, alias, [*moves, move], etag)  # ConflictError: someone else moved it
        weights = {str(state.canary): state.weight} if state.canary is not None else {}
        arguments = {"FunctionName": name, "Name": alias, "FunctionVersion": str(state.primary),
                     "RoutingConfig": {"AdditionalVersionWeights": weights}}
        try:
            if not exists:
                self._client("lambda").create_alias(**arguments)
            else:  # Lambda refuses it when the alias changed since it was read
                self._client("lambda").update_alias(**arguments, **({"RevisionId": revision} if revision else {}))
        except (ClientError, BotoCoreError) as exc:
            try:
                store.write(name, alias, moves, written)  # the move did not happen: take it out again
            except FnpackError:
                pass  # someone wrote since; the entry's `before` is the real state, so it stays harmless
            code = error_parts(exc)[0] if isinstance(exc, ClientError) else ""
            if code in ("PreconditionFailedException", "ResourceConflictException"):
                raise ConflictError(f"{name}:{alias} was moved by someone else since it was read (its RevisionId "
                                    f"changed); it was left as it was", hint=f"see `fnpack alias list {name}` and "
                                                                             "try again") from None
            raise aws_error(exc, "lambda", f"moving {name}:{alias}") from None
        return move

    def _alias(self, name: str, alias: str) -> tuple[AliasState | None, str | None, bool]:
        """(state, RevisionId, exists) of an alias; state None when it points at $LATEST or does not exist."""
        from botocore.exceptions import ClientError

        try:
            found = self._client("lambda").get_alias(FunctionName=name, Name=alias)
        except ClientError as exc:
            if error_parts(exc)[0] == "ResourceNotFoundException":
                return None, None, False
            raise aws_error(exc, "lambda", f"reading alias {name}:{alias}") from None
        return _alias_state(found), found.get("RevisionId"), True

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
            self._call("lambda", "delete_function", f"deleting {name} v{version}", FunctionName=name,
                       Qualifier=str(version))
            return doomed
        bucket = self._function(name).get("Tags", {}).get(BUCKET_TAG)
        self._call("lambda", "delete_function", f"deleting {name}", FunctionName=name)
        if bucket:  # a new function of this name must not inherit moves between versions it does not have
            try:
                HistoryStore(self._client("s3"), bucket).delete_all(name)
            except Exception as exc:  # the function is gone already; say what is left behind
                raise FnpackError(f"{name} was deleted, but its alias history in s3://{bucket}/fnpack/{name}/aliases/ "
                                  f"was not: {exc}", hint="delete it by hand") from None
        return found

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        target = qualifier.alias or (str(qualifier.version) if qualifier.version is not None else DEFAULT_ALIAS)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client("lambda").invoke(FunctionName=qualifier.name, Qualifier=target,
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
        """The alias's Function URL when it has one, else the qualified function ARN (for the Invoke API)."""
        from botocore.exceptions import ClientError

        target = qualifier.alias or (str(qualifier.version) if qualifier.version is not None else DEFAULT_ALIAS)
        if qualifier.version is None:
            try:
                return str(self._client("lambda").get_function_url_config(FunctionName=qualifier.name,
                                                                          Qualifier=target)["FunctionUrl"])
            except ClientError:
                pass  # none configured (or not allowed to read it): the ARN still names the function
        arn = self._function(qualifier.name)["Configuration"]["FunctionArn"]
        return f"{arn}:{target}"


def _alias_state(alias: dict[str, Any]) -> AliasState | None:
    """fnpack's view of a Lambda alias; None for one it cannot express (pointing at $LATEST)."""
    primary = str(alias.get("FunctionVersion", ""))
    if not primary.isdigit():
        return None
    weights = ((alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})
    if not weights:
        return AliasState(int(primary))
    canary, weight = next(iter(weights.items()))
    return AliasState(int(primary), int(canary), float(weight))
