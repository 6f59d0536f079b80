"""What a build targets: Python version, platform tags, pinned base packages, ONNX limits, size budget.

Read from `runtimes/<runtime>/runtime.toml`, one platform section per kind of
target: `aws-lambda`, or `container` for local, knative and openfaas; a spec that
asks for a GPU (`resources.gpu > 0`) builds for `container-cuda` instead: the same
platform with onnxruntime-gpu in place of onnxruntime (Lambda has no GPUs).
"""

from __future__ import annotations

import platform as host_platform
import tomllib
from dataclasses import dataclass
from fnpack._resources import data_dir
from fnpack.errors import SpecError
from fnpack.targets.catalog import TARGETS, target_info


_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class OnnxLimits:
    onnxruntime: str
    max_ir_version: int
    max_opset: int
    max_ml_opset: int


@dataclass(frozen=True)
class SizeBudget:
    """Hard limits fail the build; `direct_upload` only changes how the archive is deployed."""

    max_zipped: int | None
    max_unzipped: int | None
    direct_upload: int | None = None


@dataclass(frozen=True)
class BuildProfile:
    target: str
    runtime: str
    python_version: str  # "3.11"
    arch: str  # spec spelling: x86_64 or arm64
    glibc: str
    packages: tuple[str, ...]
    onnx: OnnxLimits
    budget: SizeBudget

    @property
    def machine(self) -> str:
        return _MACHINE[self.arch]

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    def platform_tags(self) -> list[str]:
        """Every manylinux tag this glibc accepts, newest first: pip matches `--platform` exactly."""
        major, minor = (int(part) for part in self.glibc.split("."))
        oldest = 17 if self.machine == "aarch64" else 5
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, oldest - 1, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.machine}" for m, name in legacy.items() if oldest <= m <= minor]
        return tags

    def can_run_here(self) -> str | None:
        """None when this machine can run the archive, else the reason it cannot."""
        if _MACHINE.get(self.arch) != host_platform.machine():
            return f"this machine is {host_platform.machine()}, the archive is for {self.machine}"
        return None


def load_profile(target: str, runtime: str, arch: str, gpu: bool = False) -> BuildProfile:
    """The profile of `runtime` on `target`; `gpu`: the spec asks for one (its archive vendors onnxruntime-gpu)."""
    if target not in TARGETS:
        raise SpecError(f"unknown target {target!r}", hint=f"choose one of: {', '.join(TARGETS)}")
    path = data_dir("runtimes") / runtime / "runtime.toml"
    if not path.is_file():
        raise SpecError(f"runtime {runtime!r} is not supported by this fnpack",
                        hint=f"supported: {', '.join(sorted(p.parent.name for p in data_dir('runtimes').glob('*/runtime.toml')))}")
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    info = target_info(target)
    platform = info.platform
    if gpu:
        if platform != "container":
            raise SpecError(f"the {target} target has no GPUs (AWS Lambda offers none), and the spec asks for one "
                            "(resources.gpu > 0)",
                            hint="set resources.gpu: 0 to build for Lambda, or build for a container target "
                                 "(knative, local)")
        platform = "container-cuda"
        if platform not in config["platforms"]:
            raise SpecError(f"runtime {runtime!r} has no GPU build (no [platforms.{platform}] in its runtime.toml)",
                            hint="set resources.gpu to 0, or pick a runtime that has one")
    section = config["platforms"][platform]
    budget = SizeBudget(max_zipped=None, max_unzipped=info.max_unzipped, direct_upload=info.direct_upload)
    return BuildProfile(
        target=target, runtime=runtime, python_version=config["python"], arch=arch, glibc=section["glibc"],
        packages=tuple(section["packages"]), onnx=OnnxLimits(**section["onnx"]), budget=budget,
    )
