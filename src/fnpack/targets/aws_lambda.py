"""The aws-lambda target: the same archive, deployed to AWS Lambda with boto3.

- Settings: flags (the constructor's arguments) win over FNPACK_LAMBDA_* variables, which win over the
  `aws_lambda:` section of the spec inside the archive; memory and timeout default to `resources:`;
  the region falls back to boto3's chain (AWS_REGION, the profile). Credentials and an endpoint override
  (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_LAMBDA, ...) are boto3's own.
- A deploy is planned first (each API call with its arguments, nothing changed) and executed after.
  Archives for another target, runtime or architecture, or over Lambda's 250 MB unzipped limit, are
  refused before any API call.
- Lambda's version numbers are fnpack's: an archive is a version once published, and deploying an
  archive that a published version already runs (same CodeSha256) returns that version.
- Aliases are Lambda aliases (a canary is RoutingConfig.AdditionalVersionWeights); their history is
  shared through S3 and moves are guarded against concurrent ones: see `aws_history`.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnpack.archive import open_archive
from fnpack.build.budget import human
from fnpack.build.profile import LAMBDA_DIRECT_UPLOAD, LAMBDA_UNZIPPED
from fnpack.errors import ArchiveError, BudgetError, ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.spec import BUCKET_PATTERN, REGION_PATTERN, ROLE_ARN_PATTERN, RUNTIMES
from fnpack.targets.aws_history import (BUCKET_TAG, REGION_HINT, CREDENTIALS_HINT, AccessDeniedError, HistoryStore,
                                        aws_error, error_parts)
from fnpack.targets.base import Deployment, FunctionSummary, Invocation, InvokeError, Plan, Step, Target, actor
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version, rollback_step

DESCRIPTION = "deployed by fnpack"  # on $LATEST: how `fnpack ls` tells fnpack's functions from others
DEFAULT_HANDLER = "fnpack_handler.handler"
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
                values[key] = _integer(values[key], _ENV[key])
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
        if self.region is not None and not REGION_PATTERN.match(self.region):
            problems.append(f"region {self.region!r} is not an AWS region name (e.g. eu-west-1)")
        if self.role is not None and not ROLE_ARN_PATTERN.match(self.role):
            problems.append(f"role {self.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if self.bucket is not None and not BUCKET_PATTERN.match(self.bucket):
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


@dataclass
class _Context:
    """What a deploy plan learned and `execute` needs besides the API arguments."""

    bucket: str | None = None
    existing: dict[int, Version] = field(default_factory=dict)


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
        self._contexts: dict[int, _Context] = {}

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
        archive = Path(archive)
        manifest, sha256, unzipped = _read_archive(archive)
        spec = manifest.get("spec") or {}
        settings = self.settings.over(LambdaSettings.from_spec(spec).checked(source=f"{archive}'s fnpack.yaml"))
        if settings.region != self.settings.region:  # the spec names the region: clients are made for it
            self._clients.clear()
        self.settings = settings
        name, runtime, arch = manifest["name"], manifest["runtime"], manifest["arch"]
        Qualifier.parse(name)
        _check_archive(archive, manifest, unzipped)
        # Every check above reads only the archive; from here on, AWS is asked.
        current = self._get_function(name)
        if current is not None:
            _check_compatible(name, current["Configuration"], runtime, arch)
        existing = {v.number: v for v in self.versions(name)} if current else {}
        tagged = (current or {}).get("Tags", {}).get(BUCKET_TAG)
        bucket = settings.bucket or tagged
        size = archive.stat().st_size
        direct_max = _direct_upload_max()
        code_sha = base64.b64encode(bytes.fromhex(sha256)).decode()
        same = next((v for v in existing.values() if v.sha256 == sha256), None)
        steps: list[Step] = []
        if same is not None:
            steps.append(Step("reuse-version", {"FunctionName": name, "Version": same.number, "CodeSha256": code_sha},
                              f"{name} v{same.number} already runs this archive (CodeSha256 {code_sha}): "
                              "nothing to upload or publish"))
        else:
            if size > direct_max:
                if not bucket:
                    raise UsageError(f"{archive.name} is {human(size)}, over the {human(direct_max)} that Lambda "
                                     "takes directly: it must go through an S3 bucket, and none is set",
                                     hint="pass --bucket, set FNPACK_LAMBDA_BUCKET, or aws_lambda.bucket in fnpack.yaml")
                key = f"fnpack/{name}/archives/{sha256}.zip"
                code: dict[str, Any] = {"S3Bucket": bucket, "S3Key": key}
                steps.append(Step("s3-upload", {"Bucket": bucket, "Key": key, "Filename": str(archive), "size": size},
                                  f"s3:PutObject s3://{bucket}/{key} ({human(size)}, over the "
                                  f"{human(direct_max)} direct upload limit)"))
            else:
                code = {"ZipFile": f"{archive.name} ({human(size)})"}
            config = {"MemorySize": settings.memory or 512, "Timeout": settings.timeout or 30,
                      "Environment": {"Variables": dict(settings.environment or {})},
                      "Handler": (manifest.get("handlers") or {}).get("lambda", DEFAULT_HANDLER)}
            if current is None:
                if not settings.role:
                    raise UsageError(f"creating the function {name} needs an execution role",
                                     hint="pass --role ARN, set FNPACK_LAMBDA_ROLE, or aws_lambda.role in fnpack.yaml")
                tags = {BUCKET_TAG: bucket} if bucket else {}
                details = {"FunctionName": name, "Runtime": runtime, "Role": settings.role,
                           "Architectures": [arch], **config, "Code": code, "Description": DESCRIPTION,
                           "Tags": tags, "Publish": False}
                if not settings.environment:
                    del details["Environment"]
                steps.append(Step("create", details, _call_text("lambda:CreateFunction", details)))
            else:
                steps.append(Step("update-code", {"FunctionName": name, **code},
                                  _call_text("lambda:UpdateFunctionCode", {"FunctionName": name, **code})))
                changed = _config_changes(current["Configuration"], {**config, "Role": settings.role})
                if changed:
                    details = {"FunctionName": name, **changed}
                    steps.append(Step("update-config", details,
                                      _call_text("lambda:UpdateFunctionConfiguration", details)))
            publish = {"FunctionName": name, "CodeSha256": code_sha,
                       "Description": f"fnpack sha256={sha256} by {actor()}"[:256]}
            steps.append(Step("publish", publish,
                              f"lambda:PublishVersion FunctionName={name} CodeSha256={code_sha} "
                              f"(waits for LastUpdateStatus Successful first) -> v{_next(existing)}"))
        if current is not None and settings.bucket and tagged != settings.bucket:
            details = {"Resource": current["Configuration"]["FunctionArn"], "Tags": {BUCKET_TAG: settings.bucket}}
            steps.append(Step("tag-function", details, _call_text("lambda:TagResource", details)))
        if alias is not None:
            Qualifier.parse(f"{name}:{alias}")
            if not bucket:
                raise UsageError(f"moving alias {alias} records the move in the shared alias history, which lives "
                                 "in an S3 bucket, and none is set",
                                 hint="pass --bucket, set FNPACK_LAMBDA_BUCKET or aws_lambda.bucket in fnpack.yaml; "
                                      "or deploy with --no-promote")
            before = self.aliases(name).get(alias) if current else None
            number = same.number if same else None
            history = HistoryStore(None, bucket).uri(name, alias)
            if number is not None and before == AliasState(number):
                steps.append(Step("keep-alias", {"FunctionName": name, "Name": alias, "FunctionVersion": str(number)},
                                  f"alias {alias} already sends all traffic to v{number}"))
            else:
                version = str(number) if number else f"{_next(existing)} (the new version)"
                operation = "UpdateAlias" if before else "CreateAlias"
                steps.append(Step("set-alias", {"FunctionName": name, "Name": alias, "FunctionVersion": version,
                                                "RoutingConfig": {"AdditionalVersionWeights": {}},
                                                "before": str(before) if before else None, "history": history,
                                                "reason": reason},
                                  f"lambda:{operation} {name}:{alias} {before or '(new)'} -> v{version} "
                                  f"(RevisionId-guarded; move recorded in {history})"))
            if settings.function_url:
                details = {"FunctionName": name, "Qualifier": alias, "AuthType": settings.function_url}
                extra = " + lambda:AddPermission (public invoke)" if settings.function_url == "NONE" else ""
                steps.append(Step("function-url", details, _call_text("lambda:CreateFunctionUrlConfig", details) + extra))
        plan = Plan(self.name, name, archive, sha256, steps)
        self._contexts[id(plan)] = _Context(bucket=bucket, existing=existing)
        return plan

    def execute(self, plan: Plan) -> Deployment:
        context = self._contexts.pop(id(plan), _Context())
        name = plan.function
        version: Version | None = None
        created = False
        alias: str | None = None
        move: AliasMove | None = None
        url: str | None = None
        for step in plan.steps:
            details = dict(step.details)
            if step.action == "s3-upload":
                self._upload(Path(details["Filename"]), details["Bucket"], details["Key"], plan.sha256)
            elif step.action == "create":
                details["Code"] = self._code(plan.archive, details["Code"])
                self._with_role("create_function", f"creating function {name}", details)
                self._wait("function_active_v2", name)
            elif step.action == "update-code":
                code = self._code(plan.archive, {k: v for k, v in details.items() if k != "FunctionName"})
                self._call("lambda", "update_function_code", f"updating {name}'s code", FunctionName=name, **code)
                self._wait("function_updated_v2", name)
            elif step.action == "update-config":
                self._with_role("update_function_configuration", f"updating {name}'s configuration", details)
                self._wait("function_updated_v2", name)
            elif step.action == "publish":
                answer = self._call("lambda", "publish_version", f"publishing a version of {name}", **details)
                self._wait("published_version_active", name, Qualifier=answer["Version"])
                version = _version(name, answer)
                created = version.number not in context.existing
            elif step.action == "reuse-version":
                version = next((v for v in self.versions(name) if v.number == details["Version"]), None)
                if version is None:
                    raise ConflictError(f"{name} v{details['Version']} was deleted since the plan was made",
                                        hint="deploy again")
            elif step.action == "tag-function":
                self._call("lambda", "tag_resource", f"tagging {name}", **details)
            elif step.action in ("set-alias", "keep-alias"):
                assert version is not None, "a plan publishes or reuses a version before moving an alias"
                alias = details["Name"]
                if self.aliases(name).get(alias) != AliasState(version.number):
                    move = self._move(name, alias, AliasState(version.number), details.get("reason"),
                                      bucket=context.bucket)
            elif step.action == "function-url":
                url = self._ensure_url(name, details["Qualifier"], details["AuthType"])
            else:
                raise UsageError(f"the aws-lambda target has no step {step.action!r}")
        assert version is not None, "a plan always publishes or reuses a version"
        if url is None:
            qualifier = Qualifier(name, alias=alias) if alias else Qualifier(name, version=version.number)
            url = self.invoke_url(qualifier)
        return Deployment(version, created, alias, move, url)

    def _with_role(self, operation: str, what: str, details: dict[str, Any]) -> None:
        """A call that passes the execution role: Lambda's vague refusal of it becomes a named one."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            getattr(self._client("lambda"), operation)(**details)
        except ClientError as exc:
            code, message, _ = error_parts(exc)
            if details.get("Role") and code == "InvalidParameterValueException" and "role" in message.lower():
                raise UsageError(f"the execution role {details['Role']} cannot be assumed by Lambda ({message}): it "
                                 "does not exist, or its trust policy does not let lambda.amazonaws.com assume it",
                                 hint="create the role (the README shows its trust policy) or pass another with "
                                      "--role; a role created seconds ago may need a moment") from None
            raise aws_error(exc, "lambda", what) from None
        except BotoCoreError as exc:
            raise aws_error(exc, "lambda", what) from None

    def _code(self, archive: Path, code: dict[str, Any]) -> dict[str, Any]:
        if "ZipFile" in code:
            return {"ZipFile": archive.read_bytes()}
        return {"S3Bucket": code["S3Bucket"], "S3Key": code["S3Key"]}

    def _wait(self, waiter: str, name: str, **kwargs: Any) -> None:
        """Until Lambda has finished the change (State Active, LastUpdateStatus Successful)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client("lambda").get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1,
                                                                                            "MaxAttempts": 600},
                                                           **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, "lambda", f"waiting for {name}") from None

    def _upload(self, archive: Path, bucket: str, key: str, sha256: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client("s3")
        size = archive.stat().st_size
        extra = {"Metadata": {"sha256": sha256}, "ContentType": "application/zip"}
        try:
            if not self.progress:
                s3.upload_file(str(archive), bucket, key, ExtraArgs=extra)
                return
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            with Progress(TextColumn(f"uploading to s3://{bucket}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("upload", total=size)
                s3.upload_file(str(archive), bucket, key, ExtraArgs=extra,
                               Callback=lambda sent: bar.advance(task, sent))
        except S3UploadFailedError as exc:
            text = str(exc)
            if "AccessDenied" in text or "not authorized" in text:
                raise AccessDeniedError(f"access denied: these AWS credentials may not s3:PutObject to "
                                        f"s3://{bucket}/{key}", hint="grant s3:PutObject on the bucket",
                                        permission="s3:PutObject") from None
            if "NoSuchBucket" in text:
                raise NotFoundError(f"the S3 bucket {bucket} does not exist",
                                    hint="create it (aws s3 mb s3://BUCKET) or pass another with --bucket") from None
            raise FnpackError(f"uploading {archive.name} to s3://{bucket}/{key} failed: {text}") from None
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, "s3", f"uploading to s3://{bucket}/{key}") from None

    def _ensure_url(self, name: str, alias: str, auth: str) -> str:
        """The alias's Function URL, created (or its auth type changed) when needed."""
        from botocore.exceptions import ClientError

        lam = self._client("lambda")
        try:
            found = lam.get_function_url_config(FunctionName=name, Qualifier=alias)
        except ClientError as exc:
            if error_parts(exc)[0] != "ResourceNotFoundException":
                raise aws_error(exc, "lambda", f"reading {name}:{alias}'s Function URL") from None
            found = self._call("lambda", "create_function_url_config", f"creating {name}:{alias}'s Function URL",
                               FunctionName=name, Qualifier=alias, AuthType=auth)
        if found.get("AuthType") != auth:
            found = self._call("lambda", "update_function_url_config", f"updating {name}:{alias}'s Function URL",
                               FunctionName=name, Qualifier=alias, AuthType=auth)
        if auth == "NONE":  # a public URL also needs a resource policy that lets anyone call it
            for sid, extra in ((f"fnpack-url-{alias}", {"Action": "lambda:InvokeFunctionUrl",
                                                        "FunctionUrlAuthType": "NONE"}),
                               (f"fnpack-url-invoke-{alias}", {"Action": "lambda:InvokeFunction",
                                                               "InvokedViaFunctionUrl": True})):
                try:
                    lam.add_permission(FunctionName=name, Qualifier=alias, StatementId=sid, Principal="*", **extra)
                except ClientError as exc:
                    if error_parts(exc)[0] != "ResourceConflictException":  # already granted
                        raise aws_error(exc, "lambda", f"allowing public calls of {name}:{alias}") from None
        return str(found["FunctionUrl"])

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
        return sorted((_version(name, v) for v in found if str(v.get("Version", "")).isdigit()),
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


# --- archive checks (no API calls) -----------------------------------------------------------------


def _read_archive(archive: Path) -> tuple[dict[str, Any], str, int]:
    """(manifest, sha256, unzipped bytes) of an intact fnpack archive."""
    with open_archive(archive) as reader:
        manifest = reader.manifest()
        problems = reader.verify() if manifest else []
        sha256 = reader.sha256
        unzipped = sum(f.get("size", 0) for f in (manifest or {}).get("files", {}).values())
    if not manifest or not isinstance(manifest.get("name"), str):
        raise ArchiveError(f"{archive} has no fnpack manifest naming its function",
                           hint="deploy archives built by `fnpack build --target aws-lambda`")
    if problems:
        raise ArchiveError(f"{archive} is not intact: {problems[0]}", hint="rebuild it with `fnpack build`")
    return manifest, sha256, unzipped


def _check_archive(archive: Path, manifest: dict[str, Any], unzipped: int) -> None:
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


def _check_compatible(name: str, config: dict[str, Any], runtime: str, arch: str) -> None:
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


def _direct_upload_max() -> int:
    text = os.environ.get(DIRECT_UPLOAD_ENV)
    return LAMBDA_DIRECT_UPLOAD if not text else _integer(text, DIRECT_UPLOAD_ENV)


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a whole number") from None


def _config_changes(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The configuration keys whose wanted value differs from the function's (None: keep it)."""
    have = {**current, "Environment": {"Variables": (current.get("Environment") or {}).get("Variables") or {}}}
    return {k: v for k, v in wanted.items() if v is not None and have.get(k) != v}


def _call_text(action: str, details: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in details.items() if v not in (None, {}, []))
    return f"{action} {shown}"


def _version(name: str, config: dict[str, Any]) -> Version:
    description = str(config.get("Description") or "")
    by = description.partition(" by ")[2]
    return Version(function=name, number=int(config["Version"]),
                   sha256=base64.b64decode(config["CodeSha256"]).hex(), created_at=_utc(config.get("LastModified")),
                   actor=by)


def _utc(text: Any) -> str:
    """Lambda's LastModified (2024-05-01T10:00:00.000+0000, always UTC) as ISO 8601 to the second."""
    text = str(text or "")
    return f"{text[:19]}+00:00" if len(text) >= 19 and text[10] == "T" else text


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


def _next(existing: dict[int, Version]) -> int:
    return max(existing, default=0) + 1
