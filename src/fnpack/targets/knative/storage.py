"""Model storage for the knative (and OpenFaaS) target: where archives wait for the pods that fetch them.

Archives are content-addressed (`PREFIX/archives/SHA256.zip`), so an archive already there is never sent
again, whoever sent it, and a pod verifies what it fetched against the sha256 in its arguments
(`fnpack.worker`). Three kinds, as KServe's storage URIs:

- `s3://BUCKET[/PREFIX]`: S3 or an S3-compatible store (MinIO), through boto3 (AWS_ENDPOINT_URL and the
  usual credentials); pods get the endpoint (`storage_endpoint`) and a Secret's credentials;
- `http(s)://BASE`: a server taking PUT and serving GET (an artifact store, a WebDAV folder);
- `pvc://CLAIM[/PATH]`: a PersistentVolumeClaim the pods mount read-only; this machine writes it where it
  sees the claim's files (`storage_path`: an NFS mount of the same volume, say).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, NotFoundError, UsageError
from fnpack.targets.knative.manifests import PodStorage
from fnpack.targets.knative.settings import KnativeSettings

MOUNT = "/mnt/fnpack-models"


class ArchiveStore(ABC):
    """One model storage location."""

    @abstractmethod
    def uri(self, sha256: str) -> str:
        """Where a pod fetches the archive (`fnpack.worker --archive`)."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def put(self, archive: Path, sha256: str) -> None:
        """Store the archive; a failure leaves nothing under its name."""

    def pod(self) -> PodStorage:
        """What the pods need to read this storage."""
        return PodStorage()

    def where(self, sha256: str) -> str:
        """The location shown in plans and messages."""
        return self.uri(sha256)


def archive_key(prefix: str, sha256: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), "archives", f"{sha256}.zip") if part)


class S3Store(ArchiveStore):
    def __init__(self, bucket: str, prefix: str, settings: KnativeSettings) -> None:
        self.bucket, self.prefix, self.settings = bucket, prefix, settings
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3")  # AWS_ENDPOINT_URL: botocore reads it itself
        return self._client

    def uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{archive_key(self.prefix, sha256)}"

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_object(Bucket=self.bucket, Key=archive_key(self.prefix, sha256))
            return True
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return False
            raise self._error(exc, "reading") from None
        except BotoCoreError as exc:
            raise self._error(exc, "reading") from None

    def put(self, archive: Path, sha256: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # a multipart upload appears only once complete: no half-written archive under the name
            self.client().upload_file(str(archive), self.bucket, archive_key(self.prefix, sha256),
                                      ExtraArgs={"Metadata": {"sha256": sha256}, "ContentType": "application/zip"})
        except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
            raise self._error(exc, "uploading to") from None

    def pod(self) -> PodStorage:
        endpoint = self.settings.storage_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        region = self.client().meta.region_name
        env = {"AWS_ENDPOINT_URL": endpoint} if endpoint else {}
        if region:
            env["AWS_REGION"] = region
        return PodStorage(env=env, secret=self.settings.storage_secret)

    def _error(self, exc: Exception, doing: str) -> FnpackError:
        text = str(exc)
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if "NoSuchBucket" in text:
            return NotFoundError(f"the model storage bucket {self.bucket} does not exist",
                                 hint="create it (aws s3 mb, mc mb) or pass another with --storage")
        if "AccessDenied" in text or "Forbidden" in text or "403" in text:
            return UsageError(f"access denied {doing} the model storage {where}: {text}",
                              hint="these credentials need s3:GetObject and s3:PutObject on it")
        return FnpackError(f"{doing} the model storage {where} failed: {text}",
                           hint="check AWS_ENDPOINT_URL and the credentials (MinIO: its access key and secret)")


class HttpStore(ArchiveStore):
    def __init__(self, base: str) -> None:
        self.base = base

    def uri(self, sha256: str) -> str:
        return f"{self.base}/archives/{sha256}.zip"

    def exists(self, sha256: str) -> bool:
        import httpx

        try:
            answer = httpx.head(self.uri(sha256), timeout=30, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise FnpackError(f"cannot reach the model storage {self.base}: {exc}") from None
        if answer.status_code in (403, 404, 410):
            return False
        if answer.status_code >= 400:
            raise FnpackError(f"the model storage {self.base} answered HEAD with {answer.status_code}")
        return True

    def put(self, archive: Path, sha256: str) -> None:
        import httpx

        try:
            with archive.open("rb") as body:
                answer = httpx.put(self.uri(sha256), content=body, timeout=httpx.Timeout(300, connect=30),
                                   headers={"Content-Type": "application/zip", "Content-Length":
                                            str(archive.stat().st_size)})
        except httpx.HTTPError as exc:
            raise FnpackError(f"uploading {archive.name} to the model storage {self.base} failed: {exc}") from None
        if answer.status_code >= 400:
            raise FnpackError(f"the model storage {self.base} refused the upload with {answer.status_code}: "
                              f"{answer.text[:200]}", hint="it must take PUT (and serve GET) under its base URL")


class PvcStore(ArchiveStore):
    def __init__(self, claim: str, path: str, local: Path | None) -> None:
        self.claim, self.path, self.local = claim, path.strip("/"), local

    def uri(self, sha256: str) -> str:
        return f"file://{MOUNT}/{archive_key(self.path, sha256)}"

    def where(self, sha256: str) -> str:
        return f"pvc://{self.claim}/{archive_key(self.path, sha256)}"

    def _file(self, sha256: str) -> Path:
        if self.local is None:
            raise UsageError(f"pvc://{self.claim} storage needs the folder where this machine sees the claim's files",
                             hint="pass --storage-path (FNPACK_KNATIVE_STORAGE_PATH), e.g. the NFS mount of the "
                                  "same volume")
        return self.local / archive_key(self.path, sha256)

    def exists(self, sha256: str) -> bool:
        return self._file(sha256).is_file()

    def put(self, archive: Path, sha256: str) -> None:
        final = self._file(sha256)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=final.parent, prefix=".upload-", suffix=".part")
            with os.fdopen(handle, "wb") as out, archive.open("rb") as source:
                shutil.copyfileobj(source, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(partial, 0o644)
            os.replace(partial, final)  # whole or not at all
        except OSError as exc:
            if "partial" in locals():
                Path(partial).unlink(missing_ok=True)
            raise FnpackError(f"writing {archive.name} to {final.parent} failed: {exc.strerror or exc}",
                              hint="check that --storage-path is the claim's folder and is writable") from None

    def pod(self) -> PodStorage:
        return PodStorage(volumes=({"name": "fnpack-models",
                                    "persistentVolumeClaim": {"claimName": self.claim, "readOnly": True}},),
                          mounts=({"name": "fnpack-models", "mountPath": MOUNT, "readOnly": True},))


def open_store(settings: KnativeSettings) -> ArchiveStore:
    """The model storage the settings name; none named is a usage error that says how to name one."""
    uri = settings.storage
    if not uri:
        raise UsageError("the knative target needs model storage for archives, and none is set",
                         hint="pass --storage s3://BUCKET[/PREFIX] (or http(s)://..., pvc://CLAIM/PATH), set "
                              "FNPACK_KNATIVE_STORAGE, or knative.storage in fnpack.yaml")
    scheme, _, rest = uri.partition("://")
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        return S3Store(bucket, prefix, settings)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return PvcStore(claim, path, settings.storage_path)
    return HttpStore(uri)
