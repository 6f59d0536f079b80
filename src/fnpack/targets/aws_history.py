"""AWS plumbing for the aws-lambda target: botocore errors as FnpackErrors, and the shared alias history.

Where the history lives, and why there
--------------------------------------
Each alias's moves are one JSON object in the function's S3 bucket, beside its archives:

    s3://BUCKET/fnpack/NAME/aliases/ALIAS/history.json   {"function", "alias", "moves": [AliasMove, ...]}

and the function carries the bucket's name in its `fnpack:bucket` tag, so anyone who can read the function
finds its history with no local state and no flag. Tags were the other candidate; they were not chosen
because a tag value holds 256 characters (a few moves) and TagResource has no compare-and-swap.

Concurrent moves
----------------
A move reads the alias (its RevisionId) and the history (its ETag), then

1. writes the history with the new move appended, conditionally (If-Match the ETag read, or If-None-Match
   for the first move): of two people moving the alias at once, exactly one write succeeds; the other
   gets a ConflictError and has changed nothing;
2. moves the alias with UpdateAlias(RevisionId=the one read): Lambda refuses it if the alias changed
   since, even through the console or another tool; the history write is then undone (conditionally
   again) and the user gets a ConflictError, the alias left as it was.

The history is written first because S3's conditional write is the one lock both sides honour;
a process killed between 1 and 2 leaves a recorded move that did not happen, whose `before` is
the alias's real state, so rolling it back is harmless.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.targets.base import move_from_dict
from fnpack.versions import AliasMove

BUCKET_TAG = "fnpack:bucket"
_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
_PERFORM = re.compile(r"perform:\s*([A-Za-z0-9-]+:[A-Za-z0-9]+)")
_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError", "UnauthorizedOperation",
                  "Forbidden"}
_BAD_CREDENTIALS = {"UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                    "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException", "InvalidSignatureException"}
_CONFLICT = {"PreconditionFailedException", "PreconditionFailed", "ResourceConflictException"}
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (`aws configure`, "
                    "`aws sso login`); fnpack uses boto3's usual credential chain")
REGION_HINT = "pass --region, set FNPACK_LAMBDA_REGION or AWS_REGION, or aws_lambda.region in fnpack.yaml"


class AccessDeniedError(UsageError):
    """AWS refused an action to these credentials; `permission` names it (e.g. lambda:CreateFunction)."""

    kind = "access-denied"

    def __init__(self, message: str, hint: str | None = None, permission: str = "") -> None:
        super().__init__(message, hint)
        self.permission = permission

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "permission": self.permission}


def error_parts(exc: Any) -> tuple[str, str, int]:
    """(code, message, HTTP status) of a botocore ClientError; unwraps the XML some endpoints put in it."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    code, message = str(error.get("Code") or ""), str(error.get("Message") or "")
    if message.lstrip().startswith("<"):  # an XML error body that botocore's JSON parser passed through
        code = (m.group(1) if (m := _XML_CODE.search(message)) else code)
        message = m.group(1) if (m := _XML_MESSAGE.search(message)) else message
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code, message, status


def aws_error(exc: BaseException, service: str = "lambda", what: str = "") -> FnpackError:
    """The FnpackError for a botocore exception: what failed, why, and how to fix it."""
    from botocore import exceptions as be

    if isinstance(exc, FnpackError):
        return exc
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError, be.CredentialRetrievalError)):
        return UsageError(f"no AWS credentials: {exc}", hint=CREDENTIALS_HINT)
    if isinstance(exc, be.NoRegionError):
        return UsageError("no AWS region is set", hint=REGION_HINT)
    if isinstance(exc, be.EndpointConnectionError):
        return FnpackError(f"cannot reach AWS: {exc}", hint="check the network, the region, and AWS_ENDPOINT_URL if set")
    if isinstance(exc, be.WaiterError):
        reason = (exc.last_response or {}).get("Configuration", {}).get("LastUpdateStatusReason")
        return FnpackError(f"{what or 'the function'} did not become ready: {reason or exc}",
                           hint="see the function's state with `aws lambda get-function`")
    if not isinstance(exc, be.ClientError):
        return FnpackError(f"AWS call failed: {type(exc).__name__}: {exc}")
    code, message, status = error_parts(exc)
    operation = getattr(exc, "operation_name", "") or "?"
    action = f"{service}:{operation}"
    doing = what or action
    if code in _ACCESS_DENIED or "not authorized to perform" in message:
        permission = m.group(1) if (m := _PERFORM.search(message)) else action
        return AccessDeniedError(f"access denied: these AWS credentials may not {permission} ({doing})",
                                 hint=f"grant {permission} to the caller's IAM policy; the README lists every "
                                      "permission fnpack needs", permission=permission)
    if code in _BAD_CREDENTIALS:
        return UsageError(f"AWS rejected the credentials ({code}: {message})", hint=CREDENTIALS_HINT)
    if code in ("ResourceNotFoundException", "NoSuchKey", "NoSuchBucket", "404") or status == 404:
        return NotFoundError(f"{doing}: not found ({message or code})")
    if code in _CONFLICT:
        return ConflictError(f"{doing}: conflict ({message or code})",
                             hint="someone else changed it at the same time; look again and retry")
    if code in ("TooManyRequestsException", "ThrottlingException", "SlowDown"):
        return FnpackError(f"{doing}: AWS is throttling requests ({message})", hint="wait a little and retry")
    return FnpackError(f"{doing} failed: {code or status}: {message}")


def history_key(function: str, alias: str) -> str:
    return f"fnpack/{function}/aliases/{alias}/history.json"


class HistoryStore:
    """The alias history objects of one bucket, read and written with compare-and-swap on the ETag."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def uri(self, function: str, alias: str) -> str:
        return f"s3://{self.bucket}/{history_key(function, alias)}"

    def read(self, function: str, alias: str) -> tuple[list[AliasMove], str | None]:
        """(moves, ETag); ([], None) when the alias has no history yet."""
        from botocore.exceptions import ClientError

        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=history_key(function, alias))
        except ClientError as exc:
            code, _, status = error_parts(exc)
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return [], None
            if code == "NoSuchBucket":
                raise NotFoundError(f"the history bucket {self.bucket} does not exist",
                                    hint="create it (aws s3 mb s3://BUCKET) or pass another with --bucket") from None
            raise aws_error(exc, "s3", f"reading {self.uri(function, alias)}") from None
        try:
            data = json.loads(answer["Body"].read())
            moves = [move_from_dict(m) for m in data["moves"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise FnpackError(f"{self.uri(function, alias)} is not an fnpack alias history ({exc})",
                              hint="restore it from the bucket's versions, or delete it to start afresh") from None
        return moves, answer["ETag"]

    def write(self, function: str, alias: str, moves: list[AliasMove], etag: str | None) -> str:
        """Replace the history if it is still the one read (`etag`; None: if there is none); the new ETag.
        Another writer in between raises ConflictError."""
        from botocore.exceptions import ClientError

        body = json.dumps({"function": function, "alias": alias, "moves": [asdict(m) for m in moves]},
                          indent=1).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = self.s3.put_object(Bucket=self.bucket, Key=history_key(function, alias), Body=body,
                                        ContentType="application/json", **condition)
        except ClientError as exc:
            code, _, status = error_parts(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise ConflictError(f"{function}:{alias} was moved by someone else at the same time (its history "
                                    f"{self.uri(function, alias)} changed since it was read); nothing was changed",
                                    hint=f"see `fnpack alias history {function} {alias}`, then try again") from None
            raise aws_error(exc, "s3", f"writing {self.uri(function, alias)}") from None
        return str(answer["ETag"])

    def delete_all(self, function: str) -> None:
        """Remove every alias history of a deleted function (its archives stay: they are content-addressed)."""
        prefix = f"fnpack/{function}/aliases/"
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
