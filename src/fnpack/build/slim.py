"""What a running function never reads, and the shrinking of what it does.

Dropped: bytecode caches (fresh .pyc are compiled deterministically), tests,
type stubs, C sources and headers, pip's install records, and the tooling
parts of onnxruntime and numpy. Each package rule was checked by running a
session from a slimmed install; every build re-checks with its smoke run.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from fnpack.build.globs import matches

# Bump when the rules change: it is part of the layer cache key.
RULES_VERSION = 1

DROP = (
    "**/__pycache__", "**/*.pyc", "**/*.pyo", "**/*.pyi",
    "**/tests", "**/*.pxd", "**/*.pyx", "**/*.h", "**/*.hpp", "**/*.c", "**/*.cpp", "**/*.a",
    "*.dist-info/RECORD", "*.dist-info/INSTALLER", "*.dist-info/REQUESTED", "*.dist-info/direct_url.json",
    # numpy: Fortran wrapping, build helpers, C headers and static libraries, docs, examples.
    "numpy/f2py", "numpy/distutils", "numpy/_pyinstaller", "numpy/random/_examples", "numpy/doc",
    "numpy/_core/include", "numpy/_core/lib", "numpy/core/include", "numpy/core/lib",
    # onnxruntime: model tooling (transformers, quantization, tools), the ONNX backend API (needs the
    # onnx package), sample data, and the C API library, which the Python binding does not link.
    "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools", "onnxruntime/datasets",
    "onnxruntime/backend", "onnxruntime/capi/libonnxruntime.so*",
)

# auditwheel-vendored libraries are patched with patchelf; strip corrupts them.
NEVER_STRIP = ("*.libs/**",)
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def keep(path: str) -> bool:
    return not matches(path, DROP)


def strip_shared_library(path: str, content: bytes) -> bytes:
    """`strip --strip-unneeded` an ELF shared library when strip exists; else the bytes unchanged."""
    strip = shutil.which("strip")
    if not strip or not content.startswith(b"\x7fELF") or matches(path, NEVER_STRIP):
        return content
    if _ELF_MACHINES.get(int.from_bytes(content[18:20], "little")) != platform.machine():
        return content  # the host's strip only knows the host's machine
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "lib.so"
        target.write_bytes(content)
        done = subprocess.run([strip, "--strip-unneeded", str(target)], capture_output=True)
        stripped = target.read_bytes() if done.returncode == 0 else content
    return stripped if len(stripped) < len(content) else content


def is_shared_library(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".so") or ".so." in name
