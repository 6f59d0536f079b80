"""fnpack.archive.fetch against real servers on 127.0.0.1: a moto_server process for s3:// and http.server for http://."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from fnpack.errors import ArchiveError
from fnpack.archive.fetch import fetch_archive, unpack_archive
from servers import free_port

FILES = {"a.txt": b"hello fnpack\n", "model/b.bin": bytes(range(256)) * 8}
BUCKET = "fnpack-test"
KEY = "functions/iris.zip"


def make_archive(path: Path, files: dict[str, bytes] = FILES, lie_about: str | None = None) -> str:
    """Write a zip with a fnpack.json manifest; `lie_about` gets a wrong sha256 there. Returns the zip's sha256."""
    listed = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}
    if lie_about:
        listed[lie_about]["sha256"] = "0" * 64
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fnpack.json", json.dumps({"files": listed}))
        for name, data in files.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def assert_unpacked(folder: Path) -> None:
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy, no user AWS config, no instance metadata lookups: loopback only."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail fast on dead endpoints, no retry backoff


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "src" / "iris.zip"
    path.parent.mkdir()
    return path, make_archive(path)


# --- file:// and plain paths ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["path", "uri"])
def test_fetch_local_file(archive: tuple[Path, str], tmp_path: Path, form: str) -> None:
    path, sha = archive
    uri = path.as_uri() if form == "uri" else str(path)
    got = fetch_archive(uri, sha.upper(), tmp_path / "cache")  # the hash's case does not matter
    assert got == tmp_path / "cache" / f"{sha}.zip"
    assert got.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]
    assert_unpacked(unpack_archive(got, sha, tmp_path / "unpacked"))


def test_fetch_missing_file(tmp_path: Path) -> None:
    uri = (tmp_path / "nope.zip").as_uri()
    with pytest.raises(ArchiveError, match=f"cannot fetch {uri}: No such file"):
        fetch_archive(uri, "a" * 64, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_wrong_hash_local(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = archive
    with pytest.raises(ArchiveError, match=f"expected {'b' * 64}, got {sha}"):
        fetch_archive(str(path), "b" * 64, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("sha", ["../../etc/passwd", "abc", "g" * 64])
def test_bad_sha256_refused(archive: tuple[Path, str], tmp_path: Path, sha: str) -> None:
    with pytest.raises(ArchiveError, match="not a sha256 digest"):
        fetch_archive(str(archive[0]), sha, tmp_path / "cache")
    with pytest.raises(ArchiveError, match="not a sha256 digest"):
        unpack_archive(archive[0], sha, tmp_path / "unpacked")


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot fetch ftp://host/x.zip: unsupported scheme 'ftp'"):
        fetch_archive("ftp://host/x.zip", "a" * 64, tmp_path / "cache")


def test_damaged_cache_entry_is_fetched_again(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{sha}.zip").write_bytes(b"garbage")
    assert fetch_archive(str(path), sha, cache).read_bytes() == path.read_bytes()


# --- http:// ----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve `folder` on a free loopback port; yields the base URL and the list of requested paths."""
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(archive: tuple[Path, str]) -> Iterator[tuple[str, list[str]]]:
    with http_server(archive[0].parent) as server:
        yield server


def test_fetch_http(served: tuple[str, list[str]], archive: tuple[Path, str], tmp_path: Path) -> None:
    base, requests = served
    got = fetch_archive(f"{base}/iris.zip", archive[1], tmp_path / "cache", timeout=10)
    assert got.read_bytes() == archive[0].read_bytes()
    assert requests == ["/iris.zip"]
    assert_unpacked(unpack_archive(got, archive[1], tmp_path / "unpacked"))


def test_fetch_http_404(served: tuple[str, list[str]], tmp_path: Path) -> None:
    url = f"{served[0]}/missing.zip"
    with pytest.raises(ArchiveError, match=f"cannot fetch {url}: HTTP 404") as info:
        fetch_archive(url, "a" * 64, tmp_path / "cache", timeout=10)
    assert info.value.hint
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_http_wrong_hash(served: tuple[str, list[str]], archive: tuple[Path, str], tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=f"sha256 mismatch: expected {'c' * 64}, got {archive[1]}"):
        fetch_archive(f"{served[0]}/iris.zip", "c" * 64, tmp_path / "cache", timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_http_unreachable(tmp_path: Path) -> None:
    url = f"{dead_url()}/iris.zip"
    with pytest.raises(ArchiveError, match=f"cannot fetch {url}: ConnectError"):
        fetch_archive(url, "a" * 64, tmp_path / "cache", timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100000 bytes, sends 10, hangs up: a connection lost mid-download."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04truncated"[:10])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch_http_connection_lost_midway(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/iris.zip"
        with pytest.raises(ArchiveError, match=f"cannot fetch {url}: RemoteProtocolError"):
            fetch_archive(url, "a" * 64, tmp_path / "cache", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_and_s3_clients_are_imported_lazily() -> None:
    code = "import sys, fnpack.archive.fetch; print(sorted(m for m in ('httpx', 'boto3', 'botocore') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_query_string_is_not_shown(served: tuple[str, list[str]], tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as info:
        fetch_archive(f"{served[0]}/missing.zip?X-Amz-Signature=secret", "a" * 64, tmp_path / "cache", timeout=10)
    assert "secret" not in info.value.message and "HTTP 404" in info.value.message


def test_cache_hit_needs_no_server(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = archive
    with http_server(path.parent) as (base, requests):
        url = f"{base}/iris.zip"
        first = fetch_archive(url, sha, tmp_path / "cache", timeout=10)
        assert requests == ["/iris.zip"]
    with pytest.raises(httpx.ConnectError):  # the server is really gone
        httpx.get(url, timeout=5)
    assert fetch_archive(url, sha, tmp_path / "cache", timeout=5) == first


# --- unpack -----------------------------------------------------------------------------------


def test_unpack_reuses_folder(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = archive
    root = tmp_path / "unpacked"
    first = unpack_archive(path, sha, root)
    assert first == root / sha and oct(first.stat().st_mode & 0o777) == oct(0o755)
    marker = first / "marker"
    marker.write_text("still here")  # a second unpack would have replaced the folder
    assert unpack_archive(path, sha, root) == first
    assert marker.read_text() == "still here"
    assert sorted(p.name for p in root.iterdir()) == [sha]


def test_unpack_tampered_archive(tmp_path: Path) -> None:
    path = tmp_path / "tampered.zip"
    sha = make_archive(path, lie_about="a.txt")
    root = tmp_path / "unpacked"
    problem = r"does not match its manifest: a\.txt: sha256 [0-9a-f]{64}, fnpack\.json says 0+"
    with pytest.raises(ArchiveError, match=problem):
        unpack_archive(path, sha, root)
    assert list(root.iterdir()) == []


def test_unpack_wrong_hash(archive: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "unpacked"
    with pytest.raises(ArchiveError, match="sha256 mismatch"):
        unpack_archive(archive[0], "d" * 64, root)
    assert list(root.iterdir()) == []


def two_versions(tmp_path: Path, second: dict[str, bytes]) -> tuple[list[tuple[Path, Path]], Path, Path, str]:
    """v1 (FILES) unpacked under tmp_path/unpacked, and v2's archive with `second`: what to reuse (v1's tree and
    archive), v1's tree, v2's archive and its sha256."""
    first = tmp_path / "v1.zip"
    tree = unpack_archive(first, make_archive(first), tmp_path / "unpacked")
    path = tmp_path / "v2.zip"
    return [(tree, first)], tree, path, make_archive(path, second)


def inode(path: Path) -> int:
    return path.stat().st_ino


def test_unpack_links_the_files_an_earlier_tree_holds_and_inflates_the_rest(tmp_path: Path) -> None:
    changed = {**FILES, "a.txt": b"v2's own code\n", "extra/c.txt": b"new in v2"}
    reuse, v1, path, sha = two_versions(tmp_path, changed)
    nowhere = (tmp_path / "nowhere", tmp_path / "nowhere.zip")
    v2 = unpack_archive(path, sha, tmp_path / "unpacked", reuse=[nowhere, *reuse])
    for name, data in changed.items():
        assert (v2 / name).read_bytes() == data
    assert inode(v2 / "model/b.bin") == inode(v1 / "model/b.bin")  # linked, not inflated
    assert inode(v2 / "a.txt") != inode(v1 / "a.txt")
    assert (v1 / "a.txt").read_bytes() == FILES["a.txt"]  # v1 untouched


def test_a_damaged_archive_is_refused_though_its_files_could_be_linked(tmp_path: Path) -> None:
    """The linked files are right, but the archive stored for the version must unpack again on its own: an entry
    whose compressed bytes differ from the earlier archive's is inflated, and its damage found."""
    reuse, _, path, _ = two_versions(tmp_path, FILES | {"a.txt": b"v2"})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model/b.bin")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF  # its compressed data
    path.write_bytes(data)
    with pytest.raises(ArchiveError, match="model/b.bin"):
        unpack_archive(path, hashlib.sha256(data).hexdigest(), tmp_path / "unpacked", reuse=reuse)


def test_a_file_stored_otherwise_or_changed_in_the_earlier_tree_is_inflated(tmp_path: Path) -> None:
    reuse, v1, path, sha = two_versions(tmp_path, FILES | {"a.txt": b"v2"})
    (v1 / "model/b.bin").write_bytes(b"planted" + FILES["model/b.bin"][7:])  # same size, other bytes
    v2 = unpack_archive(path, sha, tmp_path / "unpacked", reuse=reuse)
    assert (v2 / "model/b.bin").read_bytes() == FILES["model/b.bin"]
    assert inode(v2 / "model/b.bin") != inode(v1 / "model/b.bin")

    stored = tmp_path / "v3.zip"  # the same files, model/b.bin stored uncompressed: not the same stored bytes
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fnpack.json", zipfile.ZipFile(path).read("fnpack.json"))
        for name, data in (FILES | {"a.txt": b"v2"}).items():
            zf.writestr(name, data, zipfile.ZIP_STORED if name == "model/b.bin" else zipfile.ZIP_DEFLATED)
    fresh = [(v2, path)]
    v3 = unpack_archive(stored, hashlib.sha256(stored.read_bytes()).hexdigest(), tmp_path / "unpacked", reuse=fresh)
    assert inode(v3 / "model/b.bin") != inode(v2 / "model/b.bin")


@pytest.mark.parametrize("planted", ["symlink", "linked folder", "linked tree", "no archive", "another's file",
                                     "writable by others"])
def test_an_earlier_tree_cannot_make_the_unpack_link_a_file_from_elsewhere(tmp_path: Path, planted: str) -> None:
    """A symlink in a file's place, a folder or the tree itself a link to a folder outside holding the bytes
    wanted, an earlier archive that is gone, a file that another user owns or may write (and so change once
    linked): the file is inflated from the archive."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(FILES["model/b.bin"])  # the bytes the new archive wants, outside any tree
    reuse, v1, path, sha = two_versions(tmp_path, FILES | {"a.txt": b"v2"})
    if planted == "symlink":
        (v1 / "model/b.bin").unlink()
        (v1 / "model/b.bin").symlink_to(secret)
    elif planted == "linked folder":  # model/ -> a folder outside holding the wanted bytes as b.bin
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "b.bin").write_bytes(FILES["model/b.bin"])
        shutil.rmtree(v1 / "model")
        (v1 / "model").symlink_to(outside)
        secret = outside / "b.bin"
    elif planted == "linked tree":  # the tree offered is itself a link to a folder outside
        outside = tmp_path / "outside"
        shutil.copytree(v1, outside)
        shutil.rmtree(v1)
        v1.symlink_to(outside)
        secret = outside / "model/b.bin"
    elif planted == "another's file":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file to another user")
        os.chown(v1 / "model/b.bin", 12345, 12345)
        secret = v1 / "model/b.bin"
    elif planted == "writable by others":
        (v1 / "model/b.bin").chmod(0o666)
        secret = v1 / "model/b.bin"
    else:
        reuse[0][1].unlink()
    v2 = unpack_archive(path, sha, tmp_path / "unpacked", reuse=reuse, sealed={v1})
    got = v2 / "model/b.bin"
    assert got.read_bytes() == FILES["model/b.bin"] and not got.is_symlink()
    assert inode(got) != inode(secret) and got.stat().st_nlink == 1


def test_a_sealed_tree_s_files_are_linked_as_they_are(tmp_path: Path) -> None:
    """`sealed` is the caller's word that no one but root can have changed the tree since it was verified (the
    platform with users of its own): its files are linked without being hashed again, so even a changed one is."""
    reuse, v1, path, sha = two_versions(tmp_path, FILES | {"a.txt": b"v2"})
    (v1 / "model/b.bin").write_bytes(b"changed" + FILES["model/b.bin"][7:])
    v2 = unpack_archive(path, sha, tmp_path / "unpacked", reuse=reuse, sealed={v1})
    assert inode(v2 / "model/b.bin") == inode(v1 / "model/b.bin")


def test_an_archive_opened_by_the_caller_is_not_hashed_again_and_must_be_the_one_named(tmp_path: Path) -> None:
    from fnpack.archive import open_archive

    path = tmp_path / "a.zip"
    sha = make_archive(path)
    with open_archive(path) as opened:
        with pytest.raises(ArchiveError, match="sha256 mismatch"):
            unpack_archive(opened, "d" * 64, tmp_path / "unpacked")
        assert_unpacked(unpack_archive(opened, sha, tmp_path / "unpacked"))
        assert opened.read("a.txt") == FILES["a.txt"]  # still open: the caller closes it


# --- s3:// against a real moto_server ---------------------------------------------------------


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, archive: tuple[Path, str]) -> tuple[str, str]:
    """Credentials and endpoint in the environment, the archive uploaded; returns (uri, sha256)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    client = boto3.client("s3")  # no endpoint_url given: botocore must read it from the environment
    assert client.meta.endpoint_url == moto_endpoint
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(archive[0]), BUCKET, KEY)
    return f"s3://{BUCKET}/{KEY}", archive[1]


def test_fetch_s3(s3: tuple[str, str], tmp_path: Path) -> None:
    uri, sha = s3
    got = fetch_archive(uri, sha, tmp_path / "cache", timeout=10)
    assert got == tmp_path / "cache" / f"{sha}.zip"
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]
    assert_unpacked(unpack_archive(got, sha, tmp_path / "unpacked"))


def test_fetch_s3_cache_hit_needs_no_endpoint(s3: tuple[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uri, sha = s3
    first = fetch_archive(uri, sha, tmp_path / "cache", timeout=10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_url())
    assert fetch_archive(uri, sha, tmp_path / "cache", timeout=5) == first


def test_fetch_s3_service_endpoint_wins(s3: tuple[str, str], tmp_path: Path, moto_endpoint: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_url())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    assert fetch_archive(s3[0], s3[1], tmp_path / "cache", timeout=10).is_file()


def test_fetch_s3_wrong_hash(s3: tuple[str, str], tmp_path: Path) -> None:
    uri, sha = s3
    with pytest.raises(ArchiveError, match=f"{uri}: sha256 mismatch: expected {'e' * 64}, got {sha}"):
        fetch_archive(uri, "e" * 64, tmp_path / "cache", timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_s3_missing_key(s3: tuple[str, str], tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/functions/missing.zip"
    with pytest.raises(ArchiveError, match=f"cannot fetch {uri}: NoSuchKey"):
        fetch_archive(uri, "a" * 64, tmp_path / "cache", timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_s3_missing_bucket(s3: tuple[str, str], tmp_path: Path) -> None:
    uri = f"s3://no-such-bucket/{KEY}"
    with pytest.raises(ArchiveError, match=f"cannot fetch {uri}: NoSuchBucket"):
        fetch_archive(uri, "a" * 64, tmp_path / "cache", timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_s3_no_credentials(s3: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ArchiveError, match=f"cannot fetch {s3[0]}: NoCredentialsError"):
        fetch_archive(s3[0], s3[1], tmp_path / "cache", timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_s3_unreachable_endpoint(s3: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_url())
    with pytest.raises(ArchiveError, match=f"cannot fetch {s3[0]}: EndpointConnectionError"):
        fetch_archive(s3[0], s3[1], tmp_path / "cache", timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("uri", ["s3://bucket-only", "s3:///key-only", "s3://bucket/"])
def test_fetch_s3_malformed(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="expected s3://bucket/key"):
        fetch_archive(uri, "a" * 64, tmp_path / "cache")


def test_worker_serves_an_archive_from_s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """The container entrypoint end to end: a built archive in S3 (moto), fetched, verified, served."""
    import boto3

    from conftest import EXAMPLES, fnpack
    from servers import worker

    shutil.copytree(EXAMPLES / "iris", tmp_path / "iris")
    built = fnpack("build", str(tmp_path / "iris"), "--target", "knative", "--json")
    assert built.code == 0, built.stdout + built.stderr
    archive, sha = built.json()["archive"], built.json()["sha256"]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    client.upload_file(archive, "models", f"iris/{sha}.zip")
    with worker(f"s3://models/iris/{sha}.zip", sha, tmp_path / "cache", env=env) as url:
        record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        assert httpx.post(f"{url}/invoke", json=record, trust_env=False).json()["label"] == "setosa"
