"""Finding a Python interpreter of the target's version on this machine (for .pyc and smoke runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache


@lru_cache(maxsize=None)
def find_python(version: str) -> str | None:
    """A working `pythonX.Y`, or None. pyenv shims exist for versions that are not installed: run it."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidate = shutil.which(f"python{version}")
    if candidate is None:
        return None
    probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
    return candidate if probe.returncode == 0 and probe.stdout.strip() == version else None


COMPILE_SCRIPT = """
import os, py_compile, sys
root = sys.argv[1]
for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".py"):
            path = os.path.join(folder, name)
            try:  # unchecked-hash pycs: no mtime inside, nothing to re-check in a read-only archive
                py_compile.compile(path, dfile=os.path.relpath(path, root), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            except py_compile.PyCompileError:
                pass  # not valid for this Python (a template, a py2 file): leave it as source
"""


def compile_tree(python: str, root: str) -> None:
    """Write deterministic __pycache__/*.pyc next to every .py under root, in a fresh process."""
    subprocess.run([python, "-I", "-c", COMPILE_SCRIPT, root], check=True, capture_output=True)
