"""`fnpack build` end to end through the real CLI: real wheels, real archives, real smoke runs."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import fnpack


def edit_spec(folder: Path, **changes: object) -> None:
    spec_path = folder / "fnpack.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec.update(changes)
    spec_path.write_text(yaml.safe_dump(spec))


def build(folder: Path, *args: str, **kwargs) -> dict:
    result = fnpack("build", str(folder), "--out", str(folder / "dist"), "--json", *args, **kwargs)
    assert result.code == 0, result.stdout + result.stderr
    return result.json()


def leftovers(folder: Path) -> list[str]:
    dist = folder / "dist"
    return sorted(p.name for p in dist.iterdir()) if dist.exists() else []


def test_build_iris_for_local(example):
    folder = example("iris")
    result = build(folder)

    archive = Path(result["archive"])
    assert archive.name == f"iris-{result['sha256'][:12]}.zip"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == result["sha256"]
    assert result["smoke"] == {"status": "passed", "samples": 3}
    assert leftovers(folder) == [archive.name]  # no partial files
    assert {d["name"] for d in result["dependencies"]} == {"numpy", "onnxruntime"}

    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        manifest = json.loads(z.read("fnpack.json"))
        assert names == sorted(names)
        assert {"fnpack_handler.py", "features.py", "score.py", "model.onnx", "fnpack/runtime/function.py"} <= set(names)
        assert "train.py" not in names and "fnpack.yaml" not in names  # excluded by the spec / never packaged
        assert not [n for n in names if "/tests/" in n or n.endswith(".pyi")]
        assert not [n for n in names if "libonnxruntime.so" in n]
        # Deterministic bytecode: hash-based, unchecked (flags == 1), next to the sources.
        pyc = z.read("__pycache__/features.cpython-311.pyc")
        assert int.from_bytes(pyc[4:8], "little") == 1
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in z.infolist()} == {0o100644}
        assert z.testzip() is None

    assert manifest["handlers"] == {"asgi": "fnpack_handler:app", "lambda": "fnpack_handler.handler"}
    assert manifest["model"]["inputs"] == [{"name": "features", "dtype": "float32", "shape": [-1, 4]}]
    assert manifest["model"]["ir_version"] == 8
    assert set(manifest["files"]) == set(names) - {"fnpack.json"}
    features = manifest["files"]["features.py"]
    assert features["sha256"] == hashlib.sha256((folder / "features.py").read_bytes()).hexdigest()

    inspected = fnpack("inspect", str(archive), "--json").json()
    assert inspected["intact"] is True and inspected["sha256"] == result["sha256"]
    assert inspected["manifest"]["name"] == "iris"


def test_same_inputs_give_the_same_bytes_anywhere(example, tmp_path):
    first = example("iris")
    second = tmp_path / "elsewhere" / "deeper" / "iris"
    second.parent.mkdir(parents=True)
    os.rename(first, second)  # another folder, other mtimes, another umask
    a = build(second)
    for path in second.rglob("*"):
        os.utime(path, (1_600_000_000, 1_700_000_000))
    b = fnpack("build", str(second), "--out", str(tmp_path / "out-b"), "--json", umask=0o077).json()
    assert a["sha256"] == b["sha256"]
    assert (Path(b["archive"]).stat().st_mode & 0o777) == 0o600  # the umask is honoured for the file itself

    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    c = fnpack("build", str(second), "--out", str(tmp_path / "out-c"), "--json", env=epoch).json()
    d = fnpack("build", str(second), "--out", str(tmp_path / "out-d"), "--json", env=epoch).json()
    assert c["sha256"] == d["sha256"] != a["sha256"]
    with zipfile.ZipFile(c["archive"]) as z:
        assert z.infolist()[0].date_time == (2023, 11, 14, 22, 13, 20)


def test_digits_vendors_its_own_requirement(example):
    result = build(example("digits"))
    assert "pillow" in {d["name"] for d in result["dependencies"]}
    assert result["smoke"] == {"status": "passed", "samples": 3}


def test_aws_lambda_build_pins_what_amazon_linux_2_can_load(example):
    result = build(example("iris"), "--target", "aws-lambda")
    versions = {d["name"]: d["version"] for d in result["dependencies"]}
    assert versions["onnxruntime"] == "1.16.3" and versions["numpy"] == "1.26.4" and "mangum" in versions
    assert result["upload"] == "direct"
    assert result["smoke"]["status"] == "passed"  # through the ASGI app, a Function URL event and a direct invoke


def test_arm64_build_says_it_was_not_smoke_run(example):
    folder = example("iris")
    edit_spec(folder, arch="arm64")
    result = build(folder)
    assert result["smoke"]["status"] == "skipped"
    assert any("not smoke-run" in note and "aarch64" in note for note in result["notes"])
    with zipfile.ZipFile(result["archive"]) as z:
        assert any("aarch64" in n for n in z.namelist() if n.endswith(".so"))


# --- bad input: one clear message, a documented exit code, no archive --------------------------------


def test_missing_spec(tmp_path):
    result = fnpack("build", str(tmp_path))
    assert result.code == 3 and "no fnpack.yaml found" in result.stderr and "fnpack init" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_spec(example):
    folder = example("iris")
    (folder / "fnpack.yaml").write_text("name: iris\nmodel: [unclosed\n")
    result = fnpack("build", str(folder))
    assert result.code == 3 and "not valid YAML at line" in result.stderr


def test_unknown_key_names_the_closest_valid_one(example):
    folder = example("iris")
    edit_spec(folder, scaling={"mx": 3}, requirments=["x"])
    result = fnpack("build", str(folder))
    assert result.code == 3
    assert "requirments: unknown key; did you mean 'requirements'?" in result.stderr
    assert "scaling.mx: unknown key; did you mean 'max'?" in result.stderr


def test_bad_name(example):
    folder = example("iris")
    edit_spec(folder, name="Iris_Classifier")
    result = fnpack("build", str(folder), "--json")
    assert result.code == 3 and result.stdout == ""  # with --json, the error is one JSON object on stderr
    error = json.loads(result.stderr)
    assert error["exit_code"] == 3 and "'Iris_Classifier' is not a lower-case DNS label" in error["message"]


def test_missing_model_file(example):
    folder = example("iris")
    (folder / "model.onnx").unlink()
    result = fnpack("build", str(folder))
    assert result.code == 4 and "model.onnx not found" in result.stderr


def test_file_that_is_not_onnx(example):
    folder = example("iris")
    (folder / "model.onnx").write_text("this is not a model\n")
    result = fnpack("build", str(folder))
    assert result.code == 4 and "is not an ONNX model" in result.stderr


def test_model_inputs_that_do_not_match_the_spec(example):
    folder = example("iris")
    edit_spec(folder, inputs=[{"name": "features", "dtype": "float64", "shape": [-1, 5]}])
    result = fnpack("build", str(folder))
    assert result.code == 4
    assert "fnpack.yaml says float64, the model takes float32" in result.stderr
    assert "fnpack.yaml says shape [-1, 5], the model takes [-1, 4]" in result.stderr


def test_model_too_new_for_the_targets_onnxruntime(example):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    folder = example("iris")
    graph = helper.make_graph([helper.make_node("Relu", ["features"], ["y"])], "g",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, folder / "model.onnx")
    result = fnpack("build", str(folder), "--target", "aws-lambda")
    assert result.code == 4
    assert "needs a newer onnxruntime than onnxruntime 1.16.3" in result.stderr
    assert "IR version 10 (at most 9)" in result.stderr and "target_opset=19" in result.stderr


def test_extractor_that_cannot_be_imported(example):
    folder = example("iris")
    edit_spec(folder, features="featurez:extract")
    result = fnpack("build", str(folder))
    assert result.code == 5 and "module 'featurez' not found" in result.stderr

    edit_spec(folder, features="features:extrac")
    result = fnpack("build", str(folder))
    assert result.code == 5 and "defines no top-level 'extrac'" in result.stderr


def test_failing_sample_fails_with_the_functions_own_message(example):
    folder = example("iris")
    spec = yaml.safe_load((folder / "fnpack.yaml").read_text())
    spec["samples"].append({"data": {"sepal_length": 5.0}})
    (folder / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    result = fnpack("build", str(folder), "--out", str(folder / "dist"))
    assert result.code == 8
    assert "sample 4 via http failed with 422" in result.stderr and "sepal_width" in result.stderr
    assert leftovers(folder) == []


def test_sample_with_a_wrong_expectation(example):
    folder = example("iris")
    spec = yaml.safe_load((folder / "fnpack.yaml").read_text())
    spec["samples"][0]["expect"] = {"label": "virginica"}
    (folder / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    result = fnpack("build", str(folder), "--out", str(folder / "dist"))
    assert result.code == 8 and "expected it to contain {\"label\": \"virginica\"}" in result.stderr
    assert leftovers(folder) == []


def test_user_code_that_crashes_on_import(example):
    folder = example("iris")
    (folder / "score.py").write_text((folder / "score.py").read_text() + "\nraise RuntimeError('broken scorer')\n")
    result = fnpack("build", str(folder), "--out", str(folder / "dist"))
    assert result.code == 8 and "RuntimeError: broken scorer" in result.stderr
    assert leftovers(folder) == []


def test_package_without_a_wheel_for_the_target(example):
    folder = example("iris")
    edit_spec(folder, requirements=["scipy==1.8.0"])  # no cp311 wheels were ever published
    result = fnpack("build", str(folder))
    assert result.code == 6
    assert "no wheel of 'scipy==1.8.0' for python3.11 on x86_64" in result.stderr
    assert "versions with a wheel for it:" in result.stderr


def test_over_the_size_budget_shows_the_breakdown(example):
    folder = example("iris")
    result = fnpack("build", str(folder), "--out", str(folder / "dist"), "--max-size", "5MB")
    assert result.code == 7
    assert "the archive is too large: zipped" in result.stderr
    assert "over the limit of 5 MB (--max-size)" in result.stderr
    assert "largest (zipped)" in result.stderr and "numpy" in result.stderr and "onnxruntime" in result.stderr
    assert "MiB" not in result.stderr  # the unit the limit was given in, MB, throughout
    assert "Drop the requirements" not in result.stderr  # iris has none
    assert leftovers(folder) == []

    as_json = fnpack("build", str(folder), "--max-size", "5MB", "--json")
    assert as_json.code == 7 and as_json.stdout == ""
    report = json.loads(as_json.stderr)["report"]
    assert report["measure"] == "zipped" and report["unit"] == "MB" and report["limit"] == 5_000_000
    assert report["packages"][0]["name"] in ("numpy", "onnxruntime") and report["largest_files"]
    assert sum(p["zipped"] for p in report["packages"]) + 22 == report["total"] == report["actual"]


def test_bad_max_size_value(example):
    result = fnpack("build", str(example("iris")), "--max-size", "lots")
    assert result.code == 2 and "is not a size" in result.stderr


def test_unwritable_output_folder(example, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = fnpack("build", str(example("iris")), "--out", str(blocker / "dist"))
    assert result.code == 9 and "cannot write to the output folder" in result.stderr


def test_exclude_applies_to_packages_too(example):
    folder = example("iris")
    full = build(folder)
    edit_spec(folder, exclude=["train.py", "numpy/polynomial"])  # numpy 2 imports it lazily
    slim = build(folder)
    with zipfile.ZipFile(slim["archive"]) as z:
        assert not [n for n in z.namelist() if n.startswith("numpy/polynomial/")]
    assert slim["unzipped_size"] < full["unzipped_size"]

    edit_spec(folder, exclude=["numpy/_core/_multiarray_umath*"])  # what `import numpy` needs
    result = fnpack("build", str(folder), "--out", str(folder / "dist"), "--json")
    assert result.code == 8 and "importing the archive's handler failed" in json.loads(result.stderr)["message"]


@pytest.mark.parametrize("target", ["knative", "openfaas"])
def test_container_targets_share_the_container_platform(example, target):
    result = build(example("iris"), "--target", target)
    with zipfile.ZipFile(result["archive"]) as z:
        manifest = json.loads(z.read("fnpack.json"))
    assert manifest["target"] == target and manifest["platform"]["glibc"] == "2.36"
    assert result["upload"] is None and result["smoke"]["status"] == "passed"


def test_lambda_archive_over_50mb_goes_through_s3(example):
    folder = example("iris")
    (folder / "blob.bin").write_bytes(os.urandom(52 * 1024 * 1024))  # incompressible
    edit_spec(folder, include=["blob.bin"])
    result = build(folder, "--target", "aws-lambda")
    assert result["zipped_size"] > 50 * 1024 * 1024 and result["upload"] == "s3"
    assert any("through S3" in note for note in result["notes"])


def test_lambda_hard_limit_of_250mb_unzipped(example):
    folder = example("iris")
    with open(folder / "weights.bin", "wb") as f:
        f.truncate(260 * 1024 * 1024)  # zeros: tiny zipped, over the unzipped limit
    edit_spec(folder, include=["weights.bin"])
    result = fnpack("build", str(folder), "--target", "aws-lambda", "--out", str(folder / "dist"))
    assert result.code == 7 and "is over AWS Lambda's limit of 250 MB (AWS's MB: 1,048,576 bytes)" in result.stderr
    assert "largest (unzipped)" in result.stderr and "weights.bin  260.0 MB" in result.stderr
    assert 'exclude: ["weights.bin"]' in result.stderr and "cannot be raised" in result.stderr
    assert leftovers(folder) == []


def test_runtime_without_a_local_interpreter_says_what_it_could_not_check(example):
    from fnpack.build.interpreters import find_python

    if find_python("3.12"):
        pytest.skip("python3.12 is installed here: the build can check everything")
    folder = example("iris")
    edit_spec(folder, runtime="python3.12")
    result = build(folder, "--target", "aws-lambda")
    assert result["smoke"]["status"] == "skipped"
    assert any("python3.12 is not installed here" in n and "untested" in n for n in result["notes"])
    assert any("no bytecode precompiled" in n for n in result["notes"])
    with zipfile.ZipFile(result["archive"]) as z:
        names = z.namelist()
    assert not [n for n in names if n.endswith(".pyc")] and [n for n in names if "cpython-312" in n]
