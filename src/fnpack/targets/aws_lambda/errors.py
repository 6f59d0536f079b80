"""Botocore's exceptions as FnpackErrors for the aws-lambda target: what failed, why, and how to fix it
(the IAM permission a refusal names, the credentials or region that are missing)."""

from __future__ import annotations

import re
from typing import Any

# AccessDeniedError lives in fnpack.errors (the knative target raises it too); imported here so that
# `from fnpack.targets.aws_lambda.errors import AccessDeniedError` keeps working.
from fnpack.errors import AccessDeniedError, ConflictError, FnpackError, NotFoundError, StartError, UsageError

_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
_PERFORM = re.compile(r"perform:\s*([A-Za-z0-9-]+:[A-Za-z0-9]+)")
_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError", "UnauthorizedOperation",
                  "Forbidden"}
_BAD_CREDENTIALS = {"UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                    "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException", "InvalidSignatureException"}
_CONFLICT = {"PreconditionFailedException", "PreconditionFailed", "ResourceConflictException"}
# API operations whose IAM action is spelled otherwise (the rest are service:Operation).
_IAM_ACTION = {"lambda:Invoke": "lambda:InvokeFunction", "s3:ListObjectsV2": "s3:ListBucket",
               "s3:HeadObject": "s3:GetObject", "s3:CreateMultipartUpload": "s3:PutObject",
               "s3:UploadPart": "s3:PutObject", "s3:CompleteMultipartUpload": "s3:PutObject"}
# API endpoint prefixes some refusals (moto's) name actions with, which no IAM policy accepts: IAM's own.
_IAM_SERVICE = {"monitoring": "cloudwatch"}
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (`aws configure`, "
                    "`aws sso login`); fnpack uses boto3's usual credential chain")
REGION_HINT = ("pass --region, set FNPACK_LAMBDA_REGION, AWS_REGION or AWS_DEFAULT_REGION, aws_lambda.region in "
               "fnpack.yaml, or a region in the context (fnpack context set NAME --region R)")


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
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectionError)):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return StartError(f"cannot reach AWS at {endpoint or 'its endpoint'} ({what or service})",
                           hint="check the network and the region; AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_LAMBDA, "
                                "_S3) overrides the endpoint, e.g. for MinIO or moto")
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
        permission = _IAM_ACTION.get(permission, permission)
        prefix, _, name = permission.partition(":")
        permission = f"{_IAM_SERVICE[prefix]}:{name}" if prefix in _IAM_SERVICE else permission
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
