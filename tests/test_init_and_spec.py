"""`fnpack init`, `fnpack schema` and the spec's validation messages."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES, fnpack
from fnpack.errors import SpecError
from fnpack.spec import load_project, parse_spec


def test_init_scaffolds_a_function_that_builds(tmp_path):
    created = fnpack("init", "churn-model", cwd=tmp_path)
    assert created.code == 0, created.stderr
    folder = tmp_path / "churn-model"
    assert {"fnpack.yaml", "model.onnx", "features.py", "score.py", "train.py"} <= {p.name for p in folder.iterdir()}
    assert load_project(folder).spec.name == "churn-model"

    built = fnpack("build", "--json", cwd=folder)
    assert built.code == 0, built.stdout + built.stderr
    assert built.json()["archive"].endswith(".zip") and built.json()["name"] == "churn-model"


def test_init_image_template(tmp_path):
    created = fnpack("init", "digit-reader", "--template", "image", cwd=tmp_path)
    assert created.code == 0, created.stderr
    spec = load_project(tmp_path / "digit-reader").spec
    assert spec.requirements == ["pillow"] and len(spec.samples) == 3


def test_init_refuses_bad_names_templates_and_existing_folders(tmp_path):
    # Bad command-line values are usage errors (exit 2) naming the value and what was expected.
    bad_name = fnpack("init", "Bad_Name", cwd=tmp_path)
    assert bad_name.code == 2 and "NAME 'Bad_Name' is not a lower-case DNS label" in bad_name.stderr
    assert "e.g. bad-name" in bad_name.stderr
    bad_template = fnpack("init", "ok-name", "--template", "audio", cwd=tmp_path)
    assert bad_template.code == 2 and "unknown template 'audio'" in bad_template.stderr
    assert "expected one of: tabular, image" in bad_template.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    taken = fnpack("init", "taken", cwd=tmp_path)
    assert taken.code == 2 and "already exists" in taken.stderr
    assert not (tmp_path / "Bad_Name").exists()


def test_schema_lists_every_key():
    result = fnpack("schema")
    schema = json.loads(result.stdout)
    assert result.code == 0
    assert {"name", "model", "features", "score", "inputs", "runtime", "arch", "requirements", "include", "exclude",
            "resources", "scaling", "batching", "samples", "budget", "target", "aws_lambda", "knative", "openfaas",
            "canary"} == \
        set(schema["properties"])
    assert schema["properties"]["target"]["default"] is None
    assert schema["required"] == ["name", "model"]


@pytest.mark.parametrize("example", ["iris", "digits"])
def test_examples_are_valid(example):
    assert load_project(EXAMPLES / example).spec.name == example


@pytest.mark.parametrize("changes, message", [
    ({"name": "x" * 41}, "at most 40 characters"),
    ({"name": "-iris"}, "not a lower-case DNS label"),
    ({"model": "model.pt"}, "'model.pt' is not an .onnx file"),
    ({"model": "../elsewhere/model.onnx"}, "must be a path inside the function folder"),
    ({"features": "features.extract"}, "is not of the form 'module:callable'"),
    ({"requirements": ["numpy>>2"]}, "'numpy>>2' is not a valid requirement"),
    ({"runtime": "python2.7"}, "runtime: Input should be 'python3.11' or 'python3.12'"),
    ({"scaling": {"min": 5, "max": 2}}, "min (5) must not exceed max (2)"),
    ({"samples": [{"data": {}, "file": "x.json"}]}, "exactly one of 'data' or 'file'"),
    ({"resources": {"gpus": 1}}, "resources.gpus: unknown key; did you mean 'gpu'?"),
    ({"inputs": [{"name": "x", "dtype": "float", "shape": [1]}]}, "inputs.0.dtype: Input should be"),
    ({"target": "gcp"}, "target: Input should be 'local', 'aws-lambda', 'knative' or 'openfaas'"),
    ({"aws_lambda": {"regoin": "eu-west-1"}}, "aws_lambda.regoin: unknown key; did you mean 'region'?"),
    ({"aws_lambda": {"role": "fnpack-role"}}, "'fnpack-role' is not an IAM role ARN"),
    ({"aws_lambda": {"bucket": "No_Such"}}, "'No_Such' is not an S3 bucket name"),
    ({"aws_lambda": {"region": "Europe"}}, "'Europe' is not an AWS region name"),
    ({"aws_lambda": {"memory": 64}}, "aws_lambda.memory: Input should be greater than or equal to 128"),
    ({"aws_lambda": {"function_url": "PUBLIC"}}, "aws_lambda.function_url: Input should be 'NONE' or 'AWS_IAM'"),
    ({"aws_lambda": {"environment": {"AWS_REGION": "x"}}}, "'AWS_REGION' is reserved by AWS Lambda"),
    ({"aws_lambda": {"arch": "arm64"}}, "arch arm64 differs from the top-level arch (x86_64)"),
])
def test_invalid_values_are_named(changes, message):
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "iris", "model": "model.onnx", **changes})
    assert message in caught.value.message


def test_missing_required_keys():
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "iris"})
    assert "model: required key is missing" in caught.value.message


def test_spec_that_is_not_a_mapping(tmp_path):
    (tmp_path / "fnpack.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SpecError) as caught:
        load_project(tmp_path)
    assert "must be a mapping" in caught.value.message


def test_sizes_accept_units():
    spec = parse_spec({"name": "iris", "model": "m.onnx", "budget": {"zipped": "45MB", "unzipped": "1GiB"}})
    assert spec.budget.zipped == 45_000_000 and spec.budget.unzipped == 2**30


def test_aws_lambda_section_and_default_target():
    spec = parse_spec({"name": "iris", "model": "m.onnx", "arch": "arm64", "target": "aws-lambda",
                       "aws_lambda": {"region": "eu-west-1", "role": "arn:aws:iam::123456789012:role/fnpack",
                                      "bucket": "my-artifacts", "memory": 1024, "timeout": 60, "arch": "arm64",
                                      "environment": {"LOG_LEVEL": "info"}, "function_url": "AWS_IAM"}})
    assert spec.target == "aws-lambda"
    assert spec.aws_lambda.region == "eu-west-1" and spec.aws_lambda.memory == 1024
    assert spec.aws_lambda.environment == {"LOG_LEVEL": "info"} and spec.aws_lambda.function_url == "AWS_IAM"
    plain = parse_spec({"name": "iris", "model": "m.onnx"})
    assert plain.target is None and plain.aws_lambda.role is None and plain.aws_lambda.environment == {}
