"""The GPU build profile: a spec with resources.gpu > 0 built for a container target (local, knative, openfaas)
vendors onnxruntime-gpu, at the CPU pin's version, on the same platform (`container-cuda` in runtime.toml);
AWS Lambda, which has no GPUs, refuses such a spec. Fast: nothing is downloaded (onnxruntime-gpu is ~250 MB)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES
from fnpack.build import pipeline
from fnpack.build.profile import load_profile
from fnpack.errors import SpecError

RUNTIMES = Path(__file__).resolve().parent.parent / "runtimes"
CONTAINER_TARGETS = ("local", "knative", "openfaas")


def pins(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    return dict(p.split("==", 1) for p in packages)


@pytest.mark.parametrize("runtime", ["python3.11", "python3.12"])
@pytest.mark.parametrize("target", CONTAINER_TARGETS)
def test_a_gpu_spec_on_a_container_target_vendors_onnxruntime_gpu_at_the_cpu_pins_version(target, runtime):
    cpu = load_profile(target, runtime, "x86_64")
    gpu = load_profile(target, runtime, "x86_64", gpu=True)
    assert "onnxruntime" in pins(cpu.packages) and "onnxruntime-gpu" not in pins(cpu.packages)
    assert "onnxruntime" not in pins(gpu.packages)
    assert pins(gpu.packages)["onnxruntime-gpu"] == pins(cpu.packages)["onnxruntime"] == gpu.onnx.onnxruntime
    # The same platform otherwise: glibc (so the same wheels for the rest), numpy, ONNX limits, size budget.
    assert {k: v for k, v in pins(gpu.packages).items() if k != "onnxruntime-gpu"} == \
        {k: v for k, v in pins(cpu.packages).items() if k != "onnxruntime"}
    assert (gpu.glibc, gpu.onnx, gpu.budget, gpu.python_version) == (cpu.glibc, cpu.onnx, cpu.budget,
                                                                    cpu.python_version)


@pytest.mark.parametrize("runtime", ["python3.11", "python3.12"])
def test_each_runtime_toml_has_a_cuda_twin_of_its_container_platform(runtime):
    platforms = tomllib.loads((RUNTIMES / runtime / "runtime.toml").read_text())["platforms"]
    container, cuda = platforms["container"], platforms["container-cuda"]
    assert (cuda["glibc"], cuda["onnx"]) == (container["glibc"], container["onnx"])
    assert [p.replace("onnxruntime-gpu==", "onnxruntime==") for p in cuda["packages"]] == container["packages"]


def test_no_gpu_means_the_cpu_profile():
    assert load_profile("knative", "python3.11", "x86_64", gpu=False) == load_profile("knative", "python3.11",
                                                                                      "x86_64")


@pytest.mark.parametrize("runtime", ["python3.11", "python3.12"])
def test_aws_lambda_refuses_a_gpu_spec_and_says_why(runtime):
    with pytest.raises(SpecError) as caught:
        load_profile("aws-lambda", runtime, "x86_64", gpu=True)
    assert "no GPUs" in caught.value.message and "resources.gpu" in caught.value.message
    assert "resources.gpu: 0" in caught.value.hint
    assert "onnxruntime-gpu" not in str(load_profile("aws-lambda", runtime, "x86_64").packages)


def iris_with(tmp_path: Path, resources: dict) -> Path:
    folder = tmp_path / "iris"
    folder.mkdir()
    for name in ("model.onnx", "features.py", "score.py"):
        (folder / name).write_bytes((EXAMPLES / "iris" / name).read_bytes())
    spec = yaml.safe_load((EXAMPLES / "iris" / "fnpack.yaml").read_text())
    spec["resources"] = resources
    (folder / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    return folder


class Vendored(Exception):
    """Raised in place of vendoring: the build got that far, with this profile."""


@pytest.fixture
def vendoring(monkeypatch: pytest.MonkeyPatch) -> list:
    seen: list = []

    def stop(profile, requirements, progress):
        seen.append(profile)
        raise Vendored

    monkeypatch.setattr(pipeline, "vendor", stop)
    return seen


@pytest.mark.parametrize("gpu, package", [(1, "onnxruntime-gpu"), (0, "onnxruntime")])
def test_the_build_chooses_the_profile_from_the_specs_gpus(tmp_path, vendoring, gpu, package):
    with pytest.raises(Vendored):
        pipeline.build(iris_with(tmp_path, {"gpu": gpu}), target="knative", out=tmp_path / "dist")
    (profile,) = vendoring
    assert package in pins(profile.packages) and profile.target == "knative"


def test_a_gpu_build_for_aws_lambda_fails_before_any_work(tmp_path, vendoring):
    with pytest.raises(SpecError, match="no GPUs"):
        pipeline.build(iris_with(tmp_path, {"gpu": 1}), target="aws-lambda", out=tmp_path / "dist")
    assert vendoring == [] and not (tmp_path / "dist").exists()
