"""Deploying an archive to AWS Lambda: a plan first (each API call with its arguments, nothing changed),
then its execution.

- Archives for another target, runtime or architecture, or over Lambda's 250 MB unzipped limit, are
  refused before any API call (see `aws_settings`).
- Lambda's version numbers are fnpack's: an archive is a version once published, and deploying an
  archive that a published version already runs (same CodeSha256) returns that version. How a published
  version's record is written and read back (`lambda_version`) lives here too.
- Archives over the direct upload limit go through the S3 bucket; promoting moves the alias through the
  target's guarded move (see `aws_history`); a Function URL is made for the alias when asked.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnpack.build.budget import human
from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.targets.aws_lambda.errors import AccessDeniedError, aws_error, error_parts
from fnpack.targets.aws_lambda.history import BUCKET_TAG, HistoryStore
from fnpack.targets.aws_lambda.settings import LambdaSettings, check_archive, check_compatible, direct_upload_max
from fnpack.targets.base import Deployment, Plan, Step, actor, read_deployable
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.targets.aws_lambda.target import AwsLambdaTarget

DESCRIPTION = "deployed by fnpack"  # on $LATEST: how `fnpack ls` tells fnpack's functions from others
DEFAULT_HANDLER = "fnpack_handler.handler"


@dataclass
class _Context:
    """What a deploy plan learned and `execute` needs besides the API arguments."""

    bucket: str | None = None
    existing: dict[int, Version] = field(default_factory=dict)


class LambdaDeployer:
    """The deploys of one AwsLambdaTarget, made with its clients, settings and alias moves."""

    def __init__(self, target: AwsLambdaTarget) -> None:
        self.target = target
        self._contexts: dict[int, _Context] = {}

    def plan(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
        target = self.target
        archive = Path(archive)
        manifest, sha256, unzipped = read_deployable(archive, "fnpack build --target aws-lambda")
        spec = manifest.get("spec") or {}
        settings = target.settings.over(LambdaSettings.from_spec(spec).checked(source=f"{archive}'s fnpack.yaml"))
        if settings.region != target.settings.region:  # the spec names the region: clients are made for it
            target._clients.clear()
        target.settings = settings
        name, runtime, arch = manifest["name"], manifest["runtime"], manifest["arch"]
        Qualifier.parse(name)
        check_archive(archive, manifest, unzipped)
        # Every check above reads only the archive; from here on, AWS is asked.
        current = target._get_function(name)
        if current is not None:
            check_compatible(name, current["Configuration"], runtime, arch)
        existing = {v.number: v for v in target.versions(name)} if current else {}
        tagged = (current or {}).get("Tags", {}).get(BUCKET_TAG)
        bucket = settings.bucket or tagged
        size = archive.stat().st_size
        direct_max = direct_upload_max()
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
            before = target.aliases(name).get(alias) if current else None
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
        plan = Plan(target.name, name, archive, sha256, steps)
        self._contexts[id(plan)] = _Context(bucket=bucket, existing=existing)
        return plan

    def execute(self, plan: Plan) -> Deployment:
        target = self.target
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
                details["Code"] = _code(plan.archive, details["Code"])
                self._with_role("create_function", f"creating function {name}", details)
                self._wait("function_active_v2", name)
            elif step.action == "update-code":
                code = _code(plan.archive, {k: v for k, v in details.items() if k != "FunctionName"})
                target._call("lambda", "update_function_code", f"updating {name}'s code", FunctionName=name, **code)
                self._wait("function_updated_v2", name)
            elif step.action == "update-config":
                self._with_role("update_function_configuration", f"updating {name}'s configuration", details)
                self._wait("function_updated_v2", name)
            elif step.action == "publish":
                answer = target._call("lambda", "publish_version", f"publishing a version of {name}", **details)
                self._wait("published_version_active", name, Qualifier=answer["Version"])
                version = lambda_version(name, answer)
                created = version.number not in context.existing
            elif step.action == "reuse-version":
                version = next((v for v in target.versions(name) if v.number == details["Version"]), None)
                if version is None:
                    raise ConflictError(f"{name} v{details['Version']} was deleted since the plan was made",
                                        hint="deploy again")
            elif step.action == "tag-function":
                target._call("lambda", "tag_resource", f"tagging {name}", **details)
            elif step.action in ("set-alias", "keep-alias"):
                assert version is not None, "a plan publishes or reuses a version before moving an alias"
                alias = details["Name"]
                if target.aliases(name).get(alias) != AliasState(version.number):
                    move = target._move(name, alias, AliasState(version.number), details.get("reason"),
                                        bucket=context.bucket)
            elif step.action == "function-url":
                url = self._ensure_url(name, details["Qualifier"], details["AuthType"])
            else:
                raise UsageError(f"the aws-lambda target has no step {step.action!r}")
        assert version is not None, "a plan always publishes or reuses a version"
        if url is None:
            qualifier = Qualifier(name, alias=alias) if alias else Qualifier(name, version=version.number)
            url = target.invoke_url(qualifier)
        return Deployment(version, created, alias, move, url)

    def _with_role(self, operation: str, what: str, details: dict[str, Any]) -> None:
        """A call that passes the execution role: Lambda's vague refusal of it becomes a named one."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            getattr(self.target._client("lambda"), operation)(**details)
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

    def _wait(self, waiter: str, name: str, **kwargs: Any) -> None:
        """Until Lambda has finished the change (State Active, LastUpdateStatus Successful)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.target._client("lambda").get_waiter(waiter).wait(
                FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600}, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, "lambda", f"waiting for {name}") from None

    def _upload(self, archive: Path, bucket: str, key: str, sha256: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.target._client("s3")
        size = archive.stat().st_size
        extra = {"Metadata": {"sha256": sha256}, "ContentType": "application/zip"}
        try:
            if not self.target.progress:
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

        target = self.target
        lam = target._client("lambda")
        try:
            found = lam.get_function_url_config(FunctionName=name, Qualifier=alias)
        except ClientError as exc:
            if error_parts(exc)[0] != "ResourceNotFoundException":
                raise aws_error(exc, "lambda", f"reading {name}:{alias}'s Function URL") from None
            found = target._call("lambda", "create_function_url_config", f"creating {name}:{alias}'s Function URL",
                                 FunctionName=name, Qualifier=alias, AuthType=auth)
        if found.get("AuthType") != auth:
            found = target._call("lambda", "update_function_url_config", f"updating {name}:{alias}'s Function URL",
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


def _code(archive: Path, code: dict[str, Any]) -> dict[str, Any]:
    if "ZipFile" in code:
        return {"ZipFile": archive.read_bytes()}
    return {"S3Bucket": code["S3Bucket"], "S3Key": code["S3Key"]}


def _config_changes(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The configuration keys whose wanted value differs from the function's (None: keep it)."""
    have = {**current, "Environment": {"Variables": (current.get("Environment") or {}).get("Variables") or {}}}
    return {k: v for k, v in wanted.items() if v is not None and have.get(k) != v}


def _call_text(action: str, details: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in details.items() if v not in (None, {}, []))
    return f"{action} {shown}"


def _next(existing: dict[int, Version]) -> int:
    return max(existing, default=0) + 1


def lambda_version(name: str, config: dict[str, Any]) -> Version:
    """fnpack's view of a published Lambda version (its Description says who published it)."""
    description = str(config.get("Description") or "")
    by = description.partition(" by ")[2]
    return Version(function=name, number=int(config["Version"]),
                   sha256=base64.b64decode(config["CodeSha256"]).hex(), created_at=_utc(config.get("LastModified")),
                   actor=by)


def _utc(text: Any) -> str:
    """Lambda's LastModified (2024-05-01T10:00:00.000+0000, always UTC) as ISO 8601 to the second."""
    text = str(text or "")
    return f"{text[:19]}+00:00" if len(text) >= 19 and text[10] == "T" else text
