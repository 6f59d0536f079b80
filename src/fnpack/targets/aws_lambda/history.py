"""The aws-lambda target's shared alias history: one JSON object per alias in an S3 bucket.

Where the history lives, and why there
--------------------------------------
Each alias's moves are one JSON object in the function's S3 bucket, beside its archives:

    s3://BUCKET/fnpack/NAME/aliases/ALIAS/history.json   {"function", "alias", "moves": [AliasMove, ...]}

and the function carries the bucket's name in its `fnpack:bucket` tag, so anyone who can read the function
finds its history with no local state and no flag. Tags were the other candidate; they were not chosen
because a tag value holds 256 characters (a few moves) and TagResource has no compare-and-swap.

Concurrent moves
----------------
Moves follow the protocol of `targets.history`: this store is its compare-and-swap history (the write
is conditional on the ETag read, If-Match, or If-None-Match for the first move), and `aliases.LambdaRouter`
applies the move with UpdateAlias(RevisionId=the one read), which Lambda refuses if the alias changed
since, even through the console or another tool.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fnpack.errors import ConflictError, FnpackError, NotFoundError
from fnpack.targets.aws_lambda.errors import aws_error, error_parts
from fnpack.targets.base import move_from_dict
from fnpack.targets.history import HistoryStore
from fnpack.versions import AliasMove

BUCKET_TAG = "fnpack:bucket"  # the function's tag naming the bucket that holds its history


def history_key(function: str, alias: str, prefix: str = "fnpack") -> str:
    return f"{prefix}/{function}/aliases/{alias}/history.json"


class S3History(HistoryStore):
    """The alias history objects of one bucket, read and written with compare-and-swap on the ETag."""

    def __init__(self, s3: Any, bucket: str, prefix: str = "fnpack") -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")  # the openfaas target keeps its histories under its storage's prefix

    def where(self, function: str, alias: str) -> str:
        return f"s3://{self.bucket}/{history_key(function, alias, self.prefix)}"

    def read(self, function: str, alias: str) -> tuple[list[AliasMove], str | None]:
        """(moves, ETag); ([], None) when the alias has no history yet."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=history_key(function, alias, self.prefix))
        except BotoCoreError as exc:
            raise aws_error(exc, "s3", f"reading {self.where(function, alias)}") from None
        except ClientError as exc:
            code, _, status = error_parts(exc)
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return [], None
            if code == "NoSuchBucket":
                raise NotFoundError(f"the history bucket {self.bucket} does not exist",
                                    hint="create it (aws s3 mb s3://BUCKET) or pass another with --bucket") from None
            raise aws_error(exc, "s3", f"reading {self.where(function, alias)}") from None
        try:
            data = json.loads(answer["Body"].read())
            moves = [move_from_dict(m) for m in data["moves"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise FnpackError(f"{self.where(function, alias)} is not an fnpack alias history ({exc})",
                              hint="restore it from the bucket's versions, or delete it to start afresh") from None
        return moves, answer["ETag"]

    def write(self, function: str, alias: str, moves: list[AliasMove], etag: Any) -> str:
        """Replace the history if it is still the one read (`etag`; None: if there is none); the new ETag.
        Another writer in between raises ConflictError."""
        from botocore.exceptions import BotoCoreError, ClientError

        body = json.dumps({"function": function, "alias": alias, "moves": [asdict(m) for m in moves]},
                          indent=1).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = self.s3.put_object(Bucket=self.bucket, Key=history_key(function, alias, self.prefix), Body=body,
                                        ContentType="application/json", **condition)
        except BotoCoreError as exc:
            raise aws_error(exc, "s3", f"writing {self.where(function, alias)}") from None
        except ClientError as exc:
            code, _, status = error_parts(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise ConflictError(f"{function}:{alias} was moved by someone else at the same time (its history "
                                    f"{self.where(function, alias)} changed since it was read); nothing was changed",
                                    hint=f"see `fnpack alias history {function} {alias}`, then try again") from None
            raise aws_error(exc, "s3", f"writing {self.where(function, alias)}") from None
        return str(answer["ETag"])

    def delete_all(self, function: str) -> None:
        """Remove every alias history of a deleted function (its archives stay: they are content-addressed)."""
        prefix = f"{self.prefix}/{function}/aliases/"
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
