"""fnpack.archive.fetch: fetch an archive by URI into a content-addressed cache, then unpack it once, safely.

`fetch_archive` streams file://, plain-path, http(s):// and s3:// sources to a temp file
in the cache folder, hashes the bytes as they arrive and renames the file to
`<sha256>.zip` only when the hash is the expected one: the cache never holds a
partial or wrong archive, and a cached archive is never fetched again.
`unpack_archive` unpacks with the safe reader into `<dest_root>/<sha256>/`, again
through a temp folder and a rename, so the folder exists only once complete and verified.

httpx and boto3 are imported only by the branch that needs them: the server's cold
start pays for neither when it serves a local archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Generator, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from fnpack.archive.reader import MANIFEST_NAME, Identical, SafeArchive, open_archive, sha256_file
from fnpack.errors import ArchiveError, OutputError

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# TODO: a dedicated FetchError (exit code of its own) is pending; ArchiveError meanwhile.
_FETCH_HINT = "check the URI, that the source is reachable and, for s3://, the AWS credentials and endpoint"


def fetch_archive(uri: str, sha256: str, cache_dir: Path, timeout: float = 60) -> Path:
    """Return `cache_dir/<sha256>.zip`, downloading it from `uri` unless a correct copy is cached.

    `uri` is file:///abs/path, a plain path, http(s)://... or s3://bucket/key. `timeout` bounds
    each connect and each read, not the whole download (a large archive may take longer).
    Raises ArchiveError when the source cannot be read or its bytes have another sha256,
    OutputError when the cache folder cannot be written; nothing is left behind either way.
    """
    expected = _check_sha256(sha256)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{expected}.zip"
    if target.is_file():
        if sha256_file(target) == expected:
            return target
        target.unlink(missing_ok=True)  # damaged on disk (or by hand): fetch it again
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{expected}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write to the cache folder {cache_dir}: {exc}",
                          hint="check that the folder is writable") from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        # closing(): release the HTTP connection / S3 stream at once if writing fails midway.
        with os.fdopen(fd, "wb") as out, contextlib.closing(_read(uri, timeout)) as chunks:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # the rename must not publish a file whose bytes are still in flight
        actual = digest.hexdigest()
        if actual != expected:
            raise ArchiveError(
                f"{_display(uri)}: sha256 mismatch: expected {expected}, got {actual}",
                hint="the archive at that URI is not the one expected; check the URI and the expected hash",
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)  # atomic: concurrent fetchers of the same hash write the same bytes
    except OSError as exc:  # source errors arrive as ArchiveError; a bare OSError is the cache's
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc}",
                          hint="check that the folder is writable and has free space") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def unpack_archive(archive: Path | SafeArchive, sha256: str, dest_root: Path,
                   reuse: Iterable[tuple[Path, Path]] = (), sealed: Collection[Path] = (), mode: int = 0o755) -> Path:
    """Unpack `archive` into `dest_root/<sha256>/` and return that folder; reuse it if it exists.

    The archive must have the given sha256 and match its manifest (`verify()` returns []);
    otherwise ArchiveError, and nothing is left under dest_root. An archive the caller opened is
    not opened (nor hashed) again. The folder gets `mode` before it gets its name.

    `reuse` pairs unpacked trees with the archives they were unpacked from (earlier versions of one
    function: the same dependencies, the same model, stored by their hash). A file such a tree
    holds is hard-linked instead of inflated when this archive stores it byte for byte as that one
    does, and when the file is still what that archive holds: hashed again, unless its tree is in
    `sealed` (verified, and unchangeable since: root's, read-only to every function).
    """
    expected = _check_sha256(sha256)
    dest_root = Path(dest_root)
    dest = unpacked_path(expected, dest_root)
    if dest.is_dir():
        return dest
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest_root, prefix=f".{expected}.", suffix=".part"))
    except OSError as exc:
        raise OutputError(f"cannot write to {dest_root}: {exc}", hint="check that the folder is writable") from exc
    try:
        with _opened(archive, expected) as arc, contextlib.ExitStack() as earlier:
            # Verified as it is unpacked (one pass inflates 78 MB instead of two): a tampered archive's files
            # reach only the temporary folder, removed below, never `dest`.
            problems = arc.extract_all(tmp, check=True, same_as=_same_files(arc, reuse, sealed, earlier))
            if problems:
                raise ArchiveError(
                    f"{arc.path} does not match its manifest: " + "; ".join(problems),
                    hint="the archive is damaged or tampered with; rebuild it or download it again",
                )
        os.chmod(tmp, mode)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent unpack of the same hash won the race
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot unpack into {dest}: {exc}",
                          hint="check that the folder is writable and has free space") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@contextlib.contextmanager
def _opened(archive: Path | SafeArchive, sha256: str) -> Iterator[SafeArchive]:
    """The archive opened and hashed; one the caller opened stays open for it to close."""
    if not isinstance(archive, SafeArchive):
        with open_archive(archive, expected_sha256=sha256) as arc:
            yield arc
        return
    archive.expect(sha256)
    yield archive


def _same_files(arc: SafeArchive, reuse: Iterable[tuple[Path, Path]], sealed: Collection[Path],
                earlier: contextlib.ExitStack) -> dict[str, Identical]:
    """For each non-empty file of the archive's manifest, a file the same size and sha256 in one of the unpacked
    trees, as the manifest of the archive it came from lists it (opened here, closed by `earlier`). Only a hint:
    `extract_all` checks each one before keeping it."""
    wanted: dict[tuple[str, int], list[str]] = {}  # many names may hold the same bytes (empty __init__.py files)
    for name, want in (arc.manifest() or {}).get("files", {}).items():
        if want.get("size"):
            wanted.setdefault((str(want.get("sha256")).lower(), want["size"]), []).append(name)
    found: dict[tuple[str, int], Identical] = {}
    for tree, tree_archive in reuse:
        if len(found) == len(wanted):
            break
        inside = _Inside(tree)
        try:
            if not inside.root:
                continue
            source = earlier.enter_context(open_archive(tree_archive, tree.name, hashed=False))
            for name, have in (source.manifest() or {}).get("files", {}).items():
                key = (str(have.get("sha256")).lower(), have.get("size"))
                if key in wanted and key not in found and inside(name):
                    found[key] = Identical(Path(inside.root, name), source, name, tree in sealed)
        except (OSError, ArchiveError):
            continue  # gone, or not an archive: it offers nothing
    return {name: found[key] for key, names in wanted.items() if key in found for name in names}


class _Inside:
    """Whether a name is a plain relative path that stays in the tree (its manifest is read as a hint only):
    no `..`, no folder that is a link out of it. Each folder is resolved once, not once per file."""

    def __init__(self, tree: Path) -> None:
        self.root = os.path.abspath(tree)
        if os.path.realpath(tree) != self.root:  # the tree itself is reached through a link: offer nothing
            self.root = ""
        self._folders: dict[str, bool] = {"": True}

    def __call__(self, name: str) -> bool:
        parts = name.split("/")
        if "" in parts or "." in parts or ".." in parts or "\\" in name:
            return False
        folder = "/".join(parts[:-1])
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(os.path.join(self.root, folder)) == \
                os.path.join(self.root, folder)
        return self._folders[folder]  # the file itself is lstat-ed when linked: a link there is never followed


def unpacked_path(sha256: str, dest_root: Path) -> Path:
    """Where `unpack_archive` puts an archive. Only a complete, verified unpack is ever renamed
    to this name, so a folder there can be served without fetching or hashing the zip again."""
    return Path(dest_root) / _check_sha256(sha256)


def _check_sha256(sha256: str) -> str:
    """The hash in lowercase; it becomes a file name, so anything but 64 hex digits is refused."""
    value = sha256.strip().lower()
    if not _SHA256.fullmatch(value):
        raise ArchiveError(f"{sha256!r} is not a sha256 digest", hint="expected 64 hexadecimal digits")
    return value


def _display(uri: str) -> str:
    """The URI for messages and logs: without a password or query (presigned URLs carry signatures there)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))


def _fail(uri: str, reason: str) -> ArchiveError:
    return ArchiveError(f"cannot fetch {_display(uri)}: {reason}", hint=_FETCH_HINT)


def _read(uri: str, timeout: float) -> Generator[bytes, None, None]:
    """The source's bytes in chunks; every failure of the source is raised as ArchiveError."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        return _read_file(uri)
    if scheme in ("http", "https"):
        return _read_http(uri, timeout)
    if scheme == "s3":
        return _read_s3(uri, timeout)
    raise _fail(uri, f"unsupported scheme {scheme!r}; expected file://, http://, https://, s3:// or a path")


def _read_file(uri: str) -> Generator[bytes, None, None]:
    if "://" in uri:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise _fail(uri, f"file:// URIs must name a local absolute path, not the host {parts.netloc!r}")
        path = Path(url2pathname(parts.path))
    else:
        path = Path(uri)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    except OSError as exc:
        raise _fail(uri, exc.strerror or str(exc)) from exc


def _read_http(uri: str, timeout: float) -> Generator[bytes, None, None]:
    import httpx

    try:
        with httpx.stream("GET", uri, timeout=timeout, follow_redirects=True) as response:
            if not response.is_success:
                raise _fail(uri, f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
            yield from response.iter_bytes(_CHUNK)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _fail(uri, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


def _read_s3(uri: str, timeout: float) -> Generator[bytes, None, None]:
    # Split by hand: urlsplit would cut a key at '?' or '#', which S3 keys may contain.
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket or not key:
        raise _fail(uri, "expected s3://bucket/key")
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise _fail(uri, "boto3 is not installed") from exc
    try:
        # A fresh session, not boto3's default one: that one caches credentials from its first use and
        # is not thread-safe. No endpoint_url: botocore reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
        client = boto3.session.Session().client("s3", config=Config(connect_timeout=timeout, read_timeout=timeout))
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(_CHUNK)
        finally:
            body.close()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), error.get("Message", "")
        raise _fail(uri, f"{code} ({message})" if message else code) from exc
    except (BotoCoreError, OSError) as exc:
        raise _fail(uri, f"{type(exc).__name__}: {exc}") from exc


def verify_unpacked(root: Path, archive: Path, sha256: str) -> list[str]:
    """What differs between an unpacked tree and its archive; [] when the tree's manifest is the
    archive's, every file it lists is there with its size and sha256, and no other file is.

    A tree left on disk by an earlier run is checked before anything imports from it: a file
    changed or added there (a planted module, a stale .pyc) would run in the next worker.
    """
    with open_archive(archive, expected_sha256=sha256) as arc:
        manifest_bytes = arc.read(MANIFEST_NAME)
        listed: dict = arc.manifest()["files"]  # type: ignore[index]
    root = Path(root)
    try:
        if (root / MANIFEST_NAME).read_bytes() != manifest_bytes:
            return [f"{MANIFEST_NAME} differs from the archive's"]
    except OSError as exc:
        return [f"{MANIFEST_NAME}: {exc.strerror or exc}"]
    problems, seen = [], set()
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel == MANIFEST_NAME:
                continue
            want = listed.get(rel)
            if want is None:
                problems.append(f"{rel}: not in the manifest")
                continue
            seen.add(rel)
            try:  # lstat: a link or a FIFO planted in a file's place is a change, never followed or opened
                info = os.lstat(path)
                changed = not stat.S_ISREG(info.st_mode) or info.st_size != want.get("size") or \
                    sha256_file(Path(path)) != want.get("sha256")
            except OSError as exc:
                changed = bool(exc)
            if changed:
                problems.append(f"{rel}: changed since it was unpacked")
    problems += [f"{name}: missing" for name in listed if name not in seen]
    return problems
