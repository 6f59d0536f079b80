"""Model storage for the openfaas target: S3 (or MinIO) only, because the shared alias history is kept
there too and written with S3's compare-and-swap (the gateway's API has none). Archives are
content-addressed (`PREFIX/archives/SHA256.zip`) as for Knative; the history of `NAME:ALIAS` is
`PREFIX/NAME/aliases/ALIAS/history.json`."""

from __future__ import annotations

from pathlib import Path

from fnpack.errors import UsageError
from fnpack.targets.aws_lambda.history import S3History
from fnpack.targets.knative.storage import S3Store
from fnpack.targets.openfaas.settings import OpenFaaSSettings


class OpenFaaSStore:
    def __init__(self, bucket: str, prefix: str, settings: OpenFaaSSettings) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.archives = S3Store(bucket, prefix, settings)  # type: ignore[arg-type]  (the same storage fields)

    def uri(self, sha256: str) -> str:
        return self.archives.uri(sha256)

    def exists(self, sha256: str) -> bool:
        return self.archives.exists(sha256)

    def put(self, archive: Path, sha256: str) -> None:
        self.archives.put(archive, sha256)

    def env(self) -> dict[str, str]:
        """What a function needs to read the archive (the endpoint, the region; credentials: a secret)."""
        return dict(self.archives.pod().env)

    def history(self) -> S3History:
        return S3History(self.archives.client(), self.bucket, prefix=self.prefix or "fnpack")


def open_store(settings: OpenFaaSSettings) -> OpenFaaSStore:
    if not settings.storage:
        raise UsageError("the openfaas target needs S3 model storage for archives and the shared alias history, "
                         "and none is set", hint="pass --storage s3://BUCKET[/PREFIX], set FNPACK_OPENFAAS_STORAGE, "
                                                 "or openfaas.storage in fnpack.yaml (MinIO: AWS_ENDPOINT_URL)")
    bucket, _, prefix = settings.storage.removeprefix("s3://").partition("/")
    return OpenFaaSStore(bucket, prefix, settings)
