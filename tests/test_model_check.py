"""The model checks: the raw ONNX header reader and the target's onnxruntime limits."""

from __future__ import annotations

import pytest

from conftest import EXAMPLES
from fnpack.build.model_check import check_model, read_header
from fnpack.build.profile import load_profile
from fnpack.errors import ModelError


def test_header_of_the_examples():
    onnx = pytest.importorskip("onnx")
    for name in ("iris", "digits"):
        path = EXAMPLES / name / "model.onnx"
        model = onnx.load(path)
        ir_version, opsets = read_header(path.read_bytes())
        assert ir_version == model.ir_version
        assert opsets == {o.domain: o.version for o in model.opset_import}


@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x08\x08", bytes(range(256))])
def test_garbage_is_not_onnx(data):
    with pytest.raises(ValueError):
        read_header(data)


def test_signature_is_read_when_the_spec_has_no_inputs():
    profile = load_profile("local", "python3.11", "x86_64")
    info = check_model(EXAMPLES / "digits" / "model.onnx", profile.onnx, None, "python3.11")
    assert info.inputs == [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}]
    assert [o["name"] for o in info.outputs] == ["label", "probabilities"]


def test_truncated_model_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes((EXAMPLES / "iris" / "model.onnx").read_bytes()[:-40])
    profile = load_profile("local", "python3.11", "x86_64")
    with pytest.raises(ModelError) as caught:
        check_model(path, profile.onnx, None, "python3.11")
    assert "is not an ONNX model" in caught.value.message


def test_platform_tags_list_every_glibc_the_target_accepts():
    tags = load_profile("aws-lambda", "python3.11", "x86_64").platform_tags()
    assert tags[0] == "manylinux_2_26_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_27_x86_64" not in tags
    arm = load_profile("aws-lambda", "python3.11", "arm64").platform_tags()
    assert arm[-1] == "manylinux2014_aarch64" and not [t for t in arm if "2_16" in t]


def test_python_versions_that_are_not_installed_are_reported_as_missing():
    from fnpack.build.interpreters import find_python

    assert find_python("3.99") is None
    assert find_python("3.11")
