"""fnpack.archive: real archives in tmp_path and committed fixtures made by 7-Zip and Info-ZIP."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from fnpack.archive import MANIFEST_NAME, Limits, open_archive, sha256_file
from fnpack.errors import ArchiveError, OutputError

FIXTURES = Path(__file__).parent / "fixtures" / "archives"
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
# Header fields patched to forge archives: struct format, offset in the local header, in the central one.
FIELDS = {
    "flags": ("<H", 6, 8),
    "method": ("<H", 8, 10),
    "csize": ("<I", 18, 20),
    "usize": ("<I", 22, 24),
    "name_len": ("<H", 26, 28),
    "extra_len": ("<H", 28, 30),
}

Entry = tuple[str | zipfile.ZipInfo, bytes]


def make_zip(path: Path, entries: Sequence[Entry], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests need
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def mode_entry(name: str, mode: int, data: bytes) -> Entry:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = mode << 16
    return info, data


def link(name: str, target: str) -> Entry:
    return mode_entry(name, stat.S_IFLNK | 0o777, target.encode())


def with_manifest(files: dict[str, bytes]) -> list[Entry]:
    listed = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}
    return [(MANIFEST_NAME, json.dumps({"files": listed}).encode()), *files.items()]


def patch(path: Path, name: str, central_only: bool = False, **fields: int) -> None:
    """Overwrite header fields of one entry in place, as a forger would."""
    with zipfile.ZipFile(path) as zf:
        local, central = zf.getinfo(name).header_offset, zf.start_dir
    data = bytearray(path.read_bytes())
    while True:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, central + 28)
        if data[central + 46 : central + 46 + name_len] == name.encode():
            break
        central += 46 + name_len + extra_len + comment_len
    for field, value in fields.items():
        fmt, local_at, central_at = FIELDS[field]
        struct.pack_into(fmt, data, central + central_at, value)
        if not central_only:
            struct.pack_into(fmt, data, local + local_at, value)
    path.write_bytes(bytes(data))


def rejected(path: Path, **kwargs: object) -> str:
    with pytest.raises(ArchiveError) as caught:
        open_archive(path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.hint
    return caught.value.message


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


FILES = {
    "features.py": b"def extract(request):\n    return request\n",
    "model/model.onnx": bytes(range(256)) * 40,
}


@pytest.mark.parametrize("compression", METHODS)
def test_round_trip(tmp_path: Path, compression: int) -> None:
    entries = with_manifest({**FILES, "bin/run.sh": b"#!/bin/sh\n"})
    entries[-1] = mode_entry("bin/run.sh", stat.S_IFREG | 0o755, b"#!/bin/sh\n")  # same bytes, executable
    path = make_zip(tmp_path / "fn.zip", [*entries, ("empty/", b"")], compression)

    with open_archive(path, expected_sha256=sha256_file(path).upper()) as archive:
        assert archive.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert archive.names() == [MANIFEST_NAME, "features.py", "model/model.onnx", "bin/run.sh"]
        assert archive.read("model/model.onnx") == FILES["model/model.onnx"]
        assert set(archive.manifest()["files"]) == {"features.py", "model/model.onnx", "bin/run.sh"}  # type: ignore[index]
        assert archive.verify() == []
        archive.extract_all(tmp_path / "out")

    out = tmp_path / "out"
    assert tree(out) == ["bin", "bin/run.sh", "empty", "features.py", MANIFEST_NAME, "model", "model/model.onnx"]
    assert (out / "model/model.onnx").read_bytes() == FILES["model/model.onnx"]
    assert stat.S_IMODE((out / "features.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "bin/run.sh").stat().st_mode) == 0o755


def test_sha256_mismatch(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.txt", b"a")])
    message = rejected(path, expected_sha256="0" * 64)
    assert f"sha256 mismatch: expected {'0' * 64}, got {sha256_file(path)}" in message
    assert str(path) in message


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a zip at all")
    assert f"{path} is not a zip archive" in rejected(path)
    assert f"{tmp_path / 'missing.zip'} does not exist" in rejected(tmp_path / "missing.zip")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/cron.d/evil", "absolute path"),
        ("C:\\Windows\\evil.dll", "absolute path"),
        ("C:evil.dll", "absolute path"),
        ("\\\\server\\share\\evil", "absolute path"),
        ("model\\evil.py", "backslash"),
        ("../evil.py", "'..' component"),
        ("model/../../evil.py", "'..' component"),
        ("model//evil.py", "empty or '.' component"),
        ("./evil.py", "empty or '.' component"),
    ],
)
def test_unsafe_names(tmp_path: Path, name: str, problem: str) -> None:
    path = make_zip(tmp_path / "fn.zip", [("ok.txt", b"ok"), (name, b"evil")])
    message = rejected(path)
    assert repr(name) in message and problem in message


def test_nul_byte_in_name(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("evil.py_x.txt", b"evil")])
    path.write_bytes(path.read_bytes().replace(b"evil.py_x.txt", b"evil.py\x00x.txt"))  # zipfile cannot write one
    message = rejected(path)
    assert repr("evil.py\x00x.txt") in message and "NUL" in message


def test_empty_name(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("ok.txt", b"ok"), ("x", b"evil")])
    patch(path, "x", name_len=0, extra_len=1)  # the name's byte becomes a (meaningless) extra field
    assert "entry '' has an empty name" in rejected(path)


@pytest.mark.parametrize("second", ["a.txt", "a.txt/"])
def test_duplicate_names(tmp_path: Path, second: str) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.txt", b"one"), (second, b"")])
    assert f"entry {second!r} appears twice" in rejected(path)


def test_symlink_escaping_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("ok.txt", b"ok"), link("lib/passwd", "../../etc/passwd")])
    assert "symlink 'lib/passwd' points outside the archive ('../../etc/passwd')" in rejected(path)


def test_absolute_symlink_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [link("passwd", "/etc/passwd")])
    assert "symlink 'passwd' points to the absolute path '/etc/passwd'" in rejected(path)


def test_symlink_through_another_link_and_back_up_is_rejected(tmp_path: Path) -> None:
    # Lexically "here/.." is the root; the OS resolves it from "." and lands above the root.
    path = make_zip(tmp_path / "fn.zip", [link("d/here", "."), link("d/up", "here/../..")])
    message = rejected(path)
    assert "symlink 'd/up'" in message and "'d/here'" in message


def test_entry_under_a_symlink_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [link("lib", "model"), ("lib/evil.py", b"evil")])
    assert "entry 'lib/evil.py' lies under 'lib', a link" in rejected(path)


def test_symlink_inside_is_extracted_as_a_symlink(tmp_path: Path) -> None:
    entries = [*FILES.items(), link("lib/model.onnx", "../model/model.onnx")]
    with open_archive(make_zip(tmp_path / "fn.zip", entries)) as archive:
        assert archive.read("lib/model.onnx") == b"../model/model.onnx"
        archive.extract_all(tmp_path / "out")
    extracted = tmp_path / "out/lib/model.onnx"
    assert extracted.is_symlink() and os.readlink(extracted) == "../model/model.onnx"
    assert extracted.read_bytes() == FILES["model/model.onnx"]


def test_too_many_entries(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [(f"f{i}.txt", b"x") for i in range(4)])
    message = rejected(path, limits=Limits(max_entries=3))
    assert "4 entries, over the limit of 3" in message and "'f3.txt'" in message


def test_total_size_over_limit(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.txt", b"x" * 60), ("b.txt", b"x" * 60)])
    message = rejected(path, limits=Limits(max_total_size=100))
    assert "entry 'b.txt' brings the declared uncompressed size to 120 bytes, over the limit of 100" in message


def test_zip_bomb_is_rejected_by_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf, zf.open("bomb.bin", "w") as f:
        for _ in range(200):
            f.write(bytes(1 << 20))
    with zipfile.ZipFile(path) as zf:  # deflate cannot beat ~1032:1; this is as close as it gets
        assert zf.getinfo("bomb.bin").file_size / zf.getinfo("bomb.bin").compress_size > Limits().max_ratio
    message = rejected(path)
    assert "entry 'bomb.bin' declares 209715200 bytes" in message and "zip bomb" in message


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_forged_sizes_are_caught_while_reading(tmp_path: Path, compression: int) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.txt", b"a"), ("bomb.bin", bytes(8 << 20))], compression)
    patch(path, "bomb.bin", usize=1000)  # declares a harmless size: passes every check made at open
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "mine.txt").write_text("mine")

    with open_archive(path) as archive:
        with pytest.raises(ArchiveError, match="entry 'bomb.bin' decompresses to more than the 1000 bytes"):
            archive.read("bomb.bin")
        with pytest.raises(ArchiveError, match="'bomb.bin'"):
            archive.extract_all(tmp_path / "new/dest")
        with pytest.raises(ArchiveError, match="'bomb.bin'"):
            archive.extract_all(keep)

    assert not (tmp_path / "new").exists()
    assert tree(keep) == ["mine.txt"]


def test_extract_never_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "features.py").write_text("mine")
    with open_archive(make_zip(tmp_path / "fn.zip", list(FILES.items())[::-1])) as archive:
        with pytest.raises(OutputError, match="entry 'features.py'.* already exists"):
            archive.extract_all(dest)
    assert tree(dest) == ["features.py"] and (dest / "features.py").read_text() == "mine"


def test_overlapping_entries_are_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.bin", b"a" * 100), ("b.bin", b"b" * 100)], zipfile.ZIP_STORED)
    patch(path, "a.bin", central_only=True, csize=400)  # a.bin's data now runs over b.bin's
    assert "entry 'a.bin' overlaps entry 'b.bin'" in rejected(path)


def test_encrypted_entry_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("secret.bin", b"s")])
    patch(path, "secret.bin", flags=0x1)
    assert "entry 'secret.bin' is encrypted" in rejected(path)


def test_unsupported_method_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("ppmd.bin", b"p")])
    patch(path, "ppmd.bin", method=98)
    assert "entry 'ppmd.bin' uses compression method 98" in rejected(path)


def test_corrupt_data_is_caught(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "fn.zip", [("a.txt", b"hello world")], zipfile.ZIP_STORED)
    path.write_bytes(path.read_bytes().replace(b"hello world", b"hello WORLD"))
    with open_archive(path) as archive, pytest.raises(ArchiveError, match="entry 'a.txt' is corrupt"):
        archive.read("a.txt")


def test_tampered_archive_fails_verify(tmp_path: Path) -> None:
    manifest, *listed = with_manifest({**FILES, "gone.py": b"x"})
    files = dict(listed)
    del files["gone.py"]
    files["features.py"] = files["features.py"].upper()  # same size, other bytes
    files["extra.py"] = b"import os\n"
    with open_archive(make_zip(tmp_path / "fn.zip", [manifest, *files.items()])) as archive:
        problems = archive.verify()
    assert problems[0].startswith(f"features.py: sha256 {hashlib.sha256(files['features.py']).hexdigest()}, ")
    assert problems[1:] == [
        "gone.py: listed in fnpack.json but missing from the archive",
        "extra.py: in the archive but not listed in fnpack.json",
    ]


def test_manifest_absent_or_invalid(tmp_path: Path) -> None:
    with open_archive(make_zip(tmp_path / "plain.zip", [("a.txt", b"a")])) as archive:
        assert archive.manifest() is None
        with pytest.raises(ArchiveError, match="has no fnpack.json"):
            archive.verify()
    with open_archive(make_zip(tmp_path / "bad.zip", [(MANIFEST_NAME, b"[1, 2")])) as archive:
        with pytest.raises(ArchiveError, match="entry 'fnpack.json' is not valid JSON"):
            archive.manifest()
    with open_archive(make_zip(tmp_path / "list.zip", [(MANIFEST_NAME, b"[]")])) as archive:
        with pytest.raises(ArchiveError, match="entry 'fnpack.json' must be a JSON object, got list"):
            archive.manifest()


def test_deflate64_fixture_from_7zip(tmp_path: Path) -> None:
    path = FIXTURES / "deflate64.zip"
    with zipfile.ZipFile(path) as zf:  # the fixture really is Deflate64, which zipfile alone cannot read
        assert {info.compress_type for info in zf.infolist()} == {9}
    with open_archive(path) as archive:
        assert archive.names() == ["features.py", MANIFEST_NAME, "model/numbers.txt"]
        assert archive.read("model/numbers.txt") == "".join(f"{i}\n" for i in range(1, 1201)).encode()
        assert archive.verify() == []
        archive.extract_all(tmp_path / "out")
    assert (tmp_path / "out/features.py").read_text().startswith("def feature_1(x):")


def test_deflate64_support_is_imported_only_when_needed(tmp_path: Path) -> None:
    # Importing zipfile_deflate64 patches zipfile for the whole process.
    path = make_zip(tmp_path / "fn.zip", list(FILES.items()))
    code = (
        "import sys; from fnpack.archive import open_archive; "
        f"open_archive({str(path)!r}).read('features.py'); print('zipfile_deflate64' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_the_package_imports_only_the_reader() -> None:
    # fnpack.archive re-exports the reader; fetch (httpx, boto3) and inspect (the build's budget) load only when named.
    code = (
        "import sys, fnpack.archive; "
        "print(sorted(m for m in ('fnpack.archive.fetch', 'fnpack.archive.inspect', 'fnpack.build', 'httpx', 'boto3') "
        "if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_symlink_fixture_from_info_zip_is_rejected() -> None:
    message = rejected(FIXTURES / "symlink-escape.zip")
    assert "symlink 'escape' points outside the archive ('../../etc/passwd')" in message
