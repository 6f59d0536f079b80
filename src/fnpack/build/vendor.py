"""Vendoring: the runtime's and the user's packages as wheels for the target platform.

Three caches under FNPACK_CACHE_DIR (default ~/.cache/fnpack) make a rebuild
need no network and little work:
- resolutions/: requirements + platform -> the exact wheels pip chose;
- wheels/: the wheel files themselves;
- layers/: each wheel installed, slimmed, compiled and compressed once, as a
  zip whose entries the archive writer copies without recompressing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from fnpack._resources import cache_dir
from fnpack.archive import sha256_file
from fnpack.build import slim
from fnpack.build.interpreters import compile_tree, find_python
from fnpack.build.profile import BuildProfile
from fnpack.build.zipwriter import ZipEntry, compress, read_entries, write_zip
from fnpack.errors import DependencyError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Layer:
    """One installed wheel: its files (for the manifest) and a zip of their compressed bytes."""

    name: str
    version: str
    wheel: str
    wheel_sha256: str
    zip_path: Path
    files: tuple[FileRecord, ...]

    def entries(self) -> Iterator[ZipEntry]:
        return read_entries(self.zip_path)


def vendor(profile: BuildProfile, requirements: list[str], progress: Progress = lambda _: None) -> list[Layer]:
    """Resolve, download and install the base packages and `requirements` for the profile's platform."""
    wheels = resolve(profile, requirements, progress)
    python = find_python(profile.python_version)
    layers = []
    for i, (wheel, sha) in enumerate(wheels, 1):
        progress(f"installing {wheel.name} ({i}/{len(wheels)})")
        layers.append(install_layer(wheel, sha, python))
    return layers


def resolve(profile: BuildProfile, requirements: list[str], progress: Progress) -> list[tuple[Path, str]]:
    """The wheel files (with their sha256) for the base pins (no dependencies: onnxruntime's are model tooling) and
    for the user's requirements with their dependencies, constrained to the base pins."""
    key_source = json.dumps({"format": 2, "base": profile.packages, "requirements": sorted(requirements),
                             "python": profile.python_version, "tags": profile.platform_tags()})
    record = cache_dir() / "resolutions" / f"{hashlib.sha256(key_source.encode()).hexdigest()[:32]}.json"
    wheel_dir = cache_dir() / "wheels"
    if record.is_file():
        known = json.loads(record.read_text())
        if all((wheel_dir / name).is_file() for name in known):
            return [(wheel_dir / name, sha) for name, sha in sorted(known.items())]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel_dir.parent) as tmp:
        progress("downloading the runtime's packages")
        found = _download(profile, list(profile.packages), Path(tmp) / "base", no_deps=True)
        if requirements:
            progress("downloading " + ", ".join(requirements))
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(profile.packages) + "\n")
            found += _download(profile, requirements, Path(tmp) / "user", constraints=constraints)
        by_name: dict[str, Path] = {}
        for path in found:  # the user's resolution repeats base pins (same files): keep one
            by_name.setdefault(canonicalize_name(parse_wheel_filename(path.name)[0]), path)
        for path in by_name.values():
            if not (wheel_dir / path.name).exists():
                os.replace(path, wheel_dir / path.name)
    # Hashed once here: rebuilds read the wheels' hashes from the record instead of 40 MB of wheels.
    known = {p.name: sha256_file(wheel_dir / p.name) for p in by_name.values()}
    record.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(record, json.dumps(known, sort_keys=True).encode())
    return [(wheel_dir / name, sha) for name, sha in sorted(known.items())]


def _download(profile: BuildProfile, requirements: list[str], dest: Path, no_deps: bool = False,
              constraints: Path | None = None) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
               "--only-binary=:all:", "--python-version", profile.python_version, "--implementation", "cp",
               "--dest", str(dest)]
    for tag in profile.platform_tags():
        command += ["--platform", tag]
    if no_deps:
        command.append("--no-deps")
    if constraints:
        command += ["--constraint", str(constraints)]
    done = subprocess.run(command + requirements, capture_output=True, text=True)
    if done.returncode != 0:
        raise _dependency_error(profile, requirements, done.stderr + done.stdout)
    return sorted(dest.glob("*.whl"))


def _dependency_error(profile: BuildProfile, requirements: list[str], output: str) -> DependencyError:
    platform = f"{profile.runtime} on {profile.machine} (glibc {profile.glibc}, target {profile.target})"
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        name = missing.group(1)
        seen = re.search(r"\(from versions: ([^)]*)\)", output)
        available = f"; versions with a wheel for it: {seen.group(1)}" if seen and seen.group(1) != "none" else ""
        return DependencyError(
            f"no wheel of {name!r} for {platform}{available}",
            hint="fnpack installs binary wheels only: pick a version that publishes a wheel for this platform "
                 "(see its files on PyPI), or another runtime/arch/target",
        )
    conflict = "ResolutionImpossible" in output or "conflicting dependencies" in output
    last = [line for line in output.strip().splitlines() if line.strip() and "WARNING" not in line][-3:]
    return DependencyError(
        f"pip could not resolve {', '.join(requirements)} for {platform}: " + " ".join(last),
        hint="the requirements conflict with the runtime's pinned packages; relax their versions"
        if conflict else "check the package names and that the package index is reachable",
    )


def install_layer(wheel_path: Path, wheel_sha: str, python: str | None) -> Layer:
    """Install one wheel into a cached layer: slimmed, stripped, compiled when `python` can, compressed."""
    name, version, _, _ = parse_wheel_filename(wheel_path.name)
    key = hashlib.sha256(f"{wheel_sha}/{slim.RULES_VERSION}/{_bytecode_magic(python)}".encode()).hexdigest()
    base = cache_dir() / "layers" / key[:32]
    zip_path, index_path = base.with_suffix(".zip"), base.with_suffix(".json")
    if not (zip_path.is_file() and index_path.is_file()):
        base.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base.parent) as tmp:
            tree = Path(tmp) / "tree"
            _unpack_wheel(wheel_path, tree)
            if python:
                compile_tree(python, str(tree))
            entries, records = tree_entries(tree)
            write_zip(Path(tmp) / "layer.zip", entries)
            os.replace(Path(tmp) / "layer.zip", zip_path)
        _atomic_write(index_path, json.dumps([r.__dict__ for r in records]).encode())
    files = tuple(FileRecord(**r) for r in json.loads(index_path.read_text()))
    return Layer(str(canonicalize_name(name)), str(version), wheel_path.name, wheel_sha, zip_path, files)


def _unpack_wheel(wheel_path: Path, dest: Path) -> None:
    """Install a wheel's purelib/platlib files; scripts, headers and data are of no use to a function."""
    with zipfile.ZipFile(wheel_path) as wheel:
        for info in wheel.infolist():
            path = info.filename
            if info.is_dir() or path.startswith("/") or ".." in path.split("/"):
                continue
            top, _, rest = path.partition("/")
            if top.endswith(".data"):
                kind, _, path = rest.partition("/")
                if kind not in ("purelib", "platlib"):
                    continue
            if not slim.keep(path):
                continue
            content = wheel.read(info)
            if slim.is_shared_library(path):
                content = slim.strip_shared_library(path, content)
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def tree_entries(root: Path) -> tuple[list[ZipEntry], list[FileRecord]]:
    """Compressed entries and records for every file under root, sorted by path."""
    entries, records = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        content = path.read_bytes()
        entries.append(compress(rel, content))
        records.append(FileRecord(rel, len(content), _sha256(content)))
    return entries, records


@lru_cache(maxsize=None)
def _bytecode_magic(python: str | None) -> str:
    """The interpreter's .pyc magic number (part of a layer's cache key); "source" when none compiles."""
    if not python:
        return "source"
    return subprocess.run([python, "-I", "-c", "import importlib.util as u; print(u.MAGIC_NUMBER.hex())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def requirement_names(requirements: list[str]) -> set[str]:
    return {str(canonicalize_name(Requirement(r).name)) for r in requirements}
