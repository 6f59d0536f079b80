"""The function's file trees: what `LocalLambda` runs, checked and laid out before the runtime starts.

- `check_manifest`: refuses, before unpacking, an archive that Lambda (or this machine) could not run.
- `runtime_distributions` and `link_distributions`: awslambdaric and what it requires, found in this
  Python and symlinked into the runtime folder, the only part of the function's sys.path that is not
  the archive's.
- `make_read_only` / `make_writable`: the task root is read-only, as /var/task is on Lambda, and
  writable again so that it can be removed.
"""

from __future__ import annotations

import os
import platform
import re
import stat
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from fnpack.errors import ArchiveError, DependencyError

_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def check_manifest(path: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Refuse, before unpacking, what Lambda (or this machine) could not run."""
    if manifest is None:
        raise ArchiveError(f"{path} has no fnpack.json",
                           hint="run an archive built by `fnpack build --target aws-lambda`")
    target = manifest.get("target")
    if target != "aws-lambda":
        raise ArchiveError(f"{path} was built for the target {target!r}, not 'aws-lambda'",
                           hint="rebuild it with `fnpack build --target aws-lambda`")
    handler = manifest.get("handlers", {}).get("lambda")
    if not isinstance(handler, str) or "." not in handler:
        raise ArchiveError(f"{path}: fnpack.json names no Lambda handler (handlers.lambda)",
                           hint="rebuild it with `fnpack build --target aws-lambda`")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if str(manifest.get("python")) != here:
        raise ArchiveError(f"{path} was built for Python {manifest.get('python')}, but fnpack runs on Python {here}; "
                           "its compiled packages would not load",
                           hint=f"run fnpack with Python {manifest.get('python')}, or rebuild for {here}")
    arch, machine = manifest.get("arch"), _MACHINES.get(platform.machine().lower(), platform.machine())
    if not sys.platform.startswith("linux") or (arch and arch != machine):
        raise ArchiveError(f"{path} holds Linux {arch} binaries; this machine is {sys.platform} {machine}",
                           hint="run it on a Linux machine of the same architecture")
    return manifest


def runtime_distributions() -> list[metadata.Distribution]:
    """awslambdaric and what it requires, recursively: the runtime's part of the function's sys.path."""
    found: dict[str, metadata.Distribution] = {}
    todo = ["awslambdaric"]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name == "awslambdaric":
                raise DependencyError("awslambdaric, AWS's runtime interface client, is not installed",
                                      hint="install it: `pip install awslambdaric`") from None
            continue  # an optional or platform-specific need; awslambdaric reports it if it matters
        found[name] = dist
        for requirement in dist.requires or []:
            if re.search(r"extra\s*==", requirement):
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            if match:
                todo.append(match.group())
    return list(found.values())


def link_distributions(dists: Iterable[metadata.Distribution], dest: Path) -> None:
    """Symlink each distribution's top-level entries (packages, modules, dist-info) into dest."""
    dest.mkdir()
    for dist in dists:
        tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}
        if not tops:
            raise DependencyError(f"{dist.metadata['Name']} lists no installed files",
                                  hint=f"reinstall it: `pip install --force-reinstall {dist.metadata['Name']}`")
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (dest / top).exists():
                (dest / top).symlink_to(source, target_is_directory=source.is_dir())


def make_read_only(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode & ~0o222)
    root.chmod(root.stat().st_mode & ~0o222)


def make_writable(root: Path) -> None:
    root.chmod(root.stat().st_mode | stat.S_IWUSR)
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode | stat.S_IWUSR)
