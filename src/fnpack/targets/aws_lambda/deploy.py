"""Deploying an archive to AWS Lambda through the shared skeleton: the planning hooks (each API call with
its arguments, nothing changed) and the steps' execution.

- Archives for another target, runtime or architecture, or over Lambda's 250 MB unzipped limit, are
  refused before any API call (`checks`). The archive's spec adds its `aws_lambda:` settings under the
  flags and variables; a region named there gets clients of its own (the target's stay as they were).
- Lambda's version numbers are fnpack's: an archive is a version once published, and deploying an
  archive that a published version already runs (same CodeSha256) returns that version.
- Archives over the direct upload limit go through the S3 bucket; promoting moves the alias by the
  alias-move protocol (`targets.history`, with the S3 history and the RevisionId-guarded alias); a
  Function URL is made for the alias when asked.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fnpack.build.budget import human
from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.targets.aws_lambda.aliases import LambdaRouter
from fnpack.targets.aws_lambda.api import DESCRIPTION, LambdaApi, lambda_version
from fnpack.targets.aws_lambda.checks import check_archive, check_compatible, direct_upload_max
from fnpack.targets.aws_lambda.errors import AccessDeniedError, aws_error, error_parts
from fnpack.targets.aws_lambda.history import BUCKET_TAG, S3History
from fnpack.targets.aws_lambda.settings import LambdaSettings
from fnpack.targets.base import actor
from fnpack.targets.deploy import (Call, Deployable, Deployer, Plan, Progress, Publish, RemoteState, Step, Upload,
                                   read_deployable)
from fnpack.targets.history import move_alias
from fnpack.versions import AliasMove, AliasState, Qualifier

DEFAULT_HANDLER = "fnpack_handler.handler"


class LambdaDeployer(Deployer):
    """Deploys with one region's clients and the target's settings; the plan's context holds the settings
    the archive's spec adds, the API of their region, the current function and the history bucket."""

    target = "aws-lambda"
    build_command = "fnpack build --target aws-lambda"

    def __init__(self, api: LambdaApi, settings: LambdaSettings, progress: bool) -> None:
        self.api = api
        self.settings = settings
        self.progress = progress

    # --- planning (reads only) ------------------------------------------------------------------------

    def deployable(self, archive: Path) -> Deployable:
        deployable = read_deployable(archive, self.build_command)
        LambdaSettings.from_spec(deployable.spec)  # a bad aws_lambda: section fails before any API call
        check_archive(deployable.path, deployable.manifest, deployable.unzipped)
        return deployable

    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        settings = self.settings.over(LambdaSettings.from_spec(deployable.spec))
        api = self.api.in_region(settings.region)
        name = deployable.name
        current = api.get_function(name)
        if current is not None:
            check_compatible(name, current["Configuration"], deployable.manifest["runtime"],
                             deployable.manifest["arch"])
        remote = RemoteState()
        if current is not None:
            remote = RemoteState(True, tuple(api.versions(name)), api.aliases(name))
        tagged = (current or {}).get("Tags", {}).get(BUCKET_TAG)
        context = {"settings": settings, "api": api, "current": current, "tagged": tagged,
                   "bucket": settings.bucket or tagged}
        return remote, context

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        settings: LambdaSettings = context["settings"]
        bucket, current = context["bucket"], context["current"]
        name, archive, size = deployable.name, deployable.path, deployable.size
        direct_max = direct_upload_max()
        code_sha = _code_sha(deployable.sha256)
        steps: list[Step] = []
        if size > direct_max:
            if not bucket:
                raise UsageError(f"{archive.name} is {human(size)}, over the {human(direct_max)} that Lambda "
                                 "takes directly: it must go through an S3 bucket, and none is set",
                                 hint="pass --bucket, set FNPACK_LAMBDA_BUCKET, or aws_lambda.bucket in fnpack.yaml")
            key = f"fnpack/{name}/archives/{deployable.sha256}.zip"
            code: dict[str, Any] = {"S3Bucket": bucket, "S3Key": key}
            steps.append(Upload(f"s3:PutObject s3://{bucket}/{key} ({human(size)}, over the "
                                f"{human(direct_max)} direct upload limit)", name="s3-upload",
                                arguments={"Bucket": bucket, "Key": key, "Filename": str(archive), "size": size}))
        else:
            code = {"ZipFile": f"{archive.name} ({human(size)})"}
        config = {"MemorySize": settings.memory or 512, "Timeout": settings.timeout or 30,
                  "Environment": {"Variables": dict(settings.environment or {})},
                  "Handler": (deployable.manifest.get("handlers") or {}).get("lambda", DEFAULT_HANDLER)}
        if current is None:
            if not settings.role:
                raise UsageError(f"creating the function {name} needs an execution role",
                                 hint="pass --role ARN, set FNPACK_LAMBDA_ROLE, or aws_lambda.role in fnpack.yaml")
            details = {"FunctionName": name, "Runtime": deployable.manifest["runtime"], "Role": settings.role,
                       "Architectures": [deployable.manifest["arch"]], **config, "Code": code,
                       "Description": DESCRIPTION, "Tags": {BUCKET_TAG: bucket} if bucket else {}, "Publish": False}
            if not settings.environment:
                del details["Environment"]
            steps.append(_call("create", "lambda:CreateFunction", details))
        else:
            steps.append(_call("update-code", "lambda:UpdateFunctionCode", {"FunctionName": name, **code}))
            changed = _config_changes(current["Configuration"], {**config, "Role": settings.role})
            if changed:
                steps.append(_call("update-config", "lambda:UpdateFunctionConfiguration",
                                   {"FunctionName": name, **changed}))
        publish = {"FunctionName": name, "CodeSha256": code_sha,
                   "Description": f"fnpack sha256={deployable.sha256} by {actor()}"[:256]}
        steps.append(Publish(f"lambda:PublishVersion FunctionName={name} CodeSha256={code_sha} "
                             f"(waits for LastUpdateStatus Successful first) -> v{remote.next_number}",
                             arguments=publish, number=remote.next_number))
        return steps

    def housekeeping(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        settings: LambdaSettings = context["settings"]
        current = context["current"]
        if current is None or not settings.bucket or context["tagged"] == settings.bucket:
            return []
        details = {"Resource": current["Configuration"]["FunctionArn"], "Tags": {BUCKET_TAG: settings.bucket}}
        return [_call("tag-function", "lambda:TagResource", details)]

    def check_promotion(self, deployable: Deployable, alias: str, context: Mapping[str, Any]) -> None:
        if not context["bucket"]:
            raise UsageError(f"moving alias {alias} records the move in the shared alias history, which lives "
                             "in an S3 bucket, and none is set",
                             hint="pass --bucket, set FNPACK_LAMBDA_BUCKET or aws_lambda.bucket in fnpack.yaml; "
                                  "or deploy with --no-promote")

    def alias_summary(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any], alias: str,
                      version: str) -> str:
        before = remote.aliases.get(alias)
        history = S3History(None, context["bucket"]).where(deployable.name, alias)
        operation = "UpdateAlias" if before else "CreateAlias"
        return (f"lambda:{operation} {deployable.name}:{alias} {before or '(new)'} -> {version} "
                f"(RevisionId-guarded; move recorded in {history})")

    def promotion(self, deployable: Deployable, alias: str, context: Mapping[str, Any]) -> list[Step]:
        auth = context["settings"].function_url
        if not auth:
            return []
        details = {"FunctionName": deployable.name, "Qualifier": alias, "AuthType": auth}
        step = _call("function-url", "lambda:CreateFunctionUrlConfig", details)
        if auth == "NONE":
            step = Call(step.summary + " + lambda:AddPermission (public invoke)", name=step.name,
                        arguments=step.arguments)
        return [step]

    # --- executing -----------------------------------------------------------------------------------

    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        api: LambdaApi = plan.context["api"]
        name = plan.function
        details = dict(step.details())
        kind = step.kind
        if kind == "s3-upload":
            self._upload(api, Path(details["Filename"]), details["Bucket"], details["Key"], plan.sha256)
        elif kind == "create":
            details["Code"] = _code(plan.archive, details["Code"])
            self._with_role(api, "create_function", f"creating function {name}", details)
            self._wait(api, "function_active_v2", name)
        elif kind == "update-code":
            code = _code(plan.archive, {k: v for k, v in details.items() if k != "FunctionName"})
            api.call("lambda", "update_function_code", f"updating {name}'s code", FunctionName=name, **code)
            self._wait(api, "function_updated_v2", name)
        elif kind == "update-config":
            self._with_role(api, "update_function_configuration", f"updating {name}'s configuration", details)
            self._wait(api, "function_updated_v2", name)
        elif kind == "publish":
            answer = api.call("lambda", "publish_version", f"publishing a version of {name}", **details)
            self._wait(api, "published_version_active", name, Qualifier=answer["Version"])
            done.version = lambda_version(name, answer)
            done.created = all(v.number != done.version.number for v in plan.remote.versions)
        elif kind == "tag-function":
            api.call("lambda", "tag_resource", f"tagging {name}", **details)
        elif kind == "function-url":
            done.url = self._ensure_url(api, name, details["Qualifier"], details["AuthType"])
        else:
            raise FnpackError(f"the aws-lambda target has no step {kind!r}")

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        api: LambdaApi = plan.context["api"]
        done.version = next((v for v in api.versions(plan.function) if v.number == number), None)
        if done.version is None:
            raise ConflictError(f"{plan.function} v{number} was deleted since the plan was made", hint="deploy again")

    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        return plan.context["api"].aliases(plan.function)

    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        api: LambdaApi = plan.context["api"]
        store = S3History(api.client("s3"), plan.context["bucket"])
        return move_alias(store, LambdaRouter(api), plan.function, alias, state,
                          versions=[v.number for v in api.versions(plan.function)], actor=actor(), reason=reason)

    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str:
        return plan.context["api"].invoke_url(qualifier)

    def _with_role(self, api: LambdaApi, operation: str, what: str, details: dict[str, Any]) -> None:
        """A call that passes the execution role: Lambda's vague refusal of it becomes a named one."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            getattr(api.client("lambda"), operation)(**details)
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

    def _wait(self, api: LambdaApi, waiter: str, name: str, **kwargs: Any) -> None:
        """Until Lambda has finished the change (State Active, LastUpdateStatus Successful)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            api.client("lambda").get_waiter(waiter).wait(
                FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600}, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, "lambda", f"waiting for {name}") from None

    def _upload(self, api: LambdaApi, archive: Path, bucket: str, key: str, sha256: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = api.client("s3")
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

    def _ensure_url(self, api: LambdaApi, name: str, alias: str, auth: str) -> str:
        """The alias's Function URL, created (or its auth type changed) when needed."""
        from botocore.exceptions import ClientError

        lam = api.client("lambda")
        try:
            found = lam.get_function_url_config(FunctionName=name, Qualifier=alias)
        except ClientError as exc:
            if error_parts(exc)[0] != "ResourceNotFoundException":
                raise aws_error(exc, "lambda", f"reading {name}:{alias}'s Function URL") from None
            found = api.call("lambda", "create_function_url_config", f"creating {name}:{alias}'s Function URL",
                                 FunctionName=name, Qualifier=alias, AuthType=auth)
        if found.get("AuthType") != auth:
            found = api.call("lambda", "update_function_url_config", f"updating {name}:{alias}'s Function URL",
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


def _code_sha(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode()


def _call(name: str, action: str, details: dict[str, Any]) -> Call:
    return Call(_call_text(action, details), name=name, arguments=details)
