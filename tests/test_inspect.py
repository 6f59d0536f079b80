"""`fnpack inspect` on built, tampered, unsafe and foreign archives."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import EXAMPLES, fnpack

FIXTURES = Path(__file__).parent / "fixtures" / "archives"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("inspect") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder)
    result = fnpack("build", str(folder), "--json")
    assert result.code == 0, result.stdout + result.stderr
    return result.json()


def rewrite(source: str, target: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info, replace.get(info.filename, old.read(info)))
        for name, data in replace.items():
            if name not in old.namelist():
                new.writestr(name, data)
    return target


def test_inspect_reports_manifest_and_breakdown(built):
    result = fnpack("inspect", built["archive"])
    assert result.code == 0, result.stderr
    assert "intact   yes" in result.stdout and built["sha256"] in result.stdout
    assert "asgi fnpack_handler:app, lambda fnpack_handler.handler" in result.stdout
    # The model's inputs and outputs, from the manifest: name, dtype, shape.
    assert "  inputs   features float32 [-1, 4]\n" in result.stdout
    assert "  outputs  label int64 [-1], probabilities float32 [-1, 3]\n" in result.stdout
    assert "largest (unzipped)" in result.stdout
    as_json = fnpack("inspect", built["archive"], "--json")
    assert as_json.stdout.count("\n") == 1  # one JSON object on one line
    report = as_json.json()
    assert report["unzipped_size"] == built["unzipped_size"] and report["files"] == built["files"]
    assert {p["name"] for p in report["breakdown"]["packages"]} >= {"numpy", "onnxruntime", "(model)"}
    assert report["manifest"]["model"]["inputs"] == [{"dtype": "float32", "name": "features", "shape": [-1, 4]}]
    # Compressed sizes come from the zip's directory: with the headers they add up to the archive.
    assert sum(p["zipped"] for p in report["breakdown"]["packages"]) + 22 == report["zipped_size"]


def test_tampered_file_is_named(built, tmp_path):
    tampered = rewrite(built["archive"], tmp_path / "t.zip", {"score.py": b"print('pwned')\n"})
    result = fnpack("inspect", str(tampered))
    assert result.code == 10 and "intact   no" in result.stdout and "score.py" in result.stdout
    extra = rewrite(built["archive"], tmp_path / "e.zip", {"extra.py": b"x = 1\n"})
    report = fnpack("inspect", str(extra), "--json")
    assert report.code == 10 and any("extra.py" in p for p in report.json()["problems"])


def test_expected_sha256(built):
    ok = fnpack("inspect", built["archive"], "--sha256", built["sha256"])
    assert ok.code == 0
    wrong = fnpack("inspect", built["archive"], "--sha256", "0" * 64)
    assert wrong.code == 10 and "sha256 mismatch" in wrong.stderr


def test_unsafe_archive_is_refused(built, tmp_path):
    slip = rewrite(built["archive"], tmp_path / "slip.zip", {"../../etc/cron.d/evil": b"* * * * * root sh\n"})
    result = fnpack("inspect", str(slip))
    assert result.code == 10 and "../../etc/cron.d/evil" in result.stderr


def test_symlink_made_by_info_zip_is_refused():
    result = fnpack("inspect", str(FIXTURES / "symlink-escape.zip"))
    assert result.code == 10 and "link" in result.stderr


def test_deflate64_archive_from_7zip_is_intact():
    result = fnpack("inspect", str(FIXTURES / "deflate64.zip"), "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert result.json()["intact"] is True


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.zip"
    path.write_text("hello")
    result = fnpack("inspect", str(path))
    assert result.code == 10 and "is not a zip archive" in result.stderr
    missing = fnpack("inspect", str(tmp_path / "nope.zip"))
    assert missing.code == 10
