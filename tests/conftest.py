"""Shared helpers: run the real `fnpack` CLI in a subprocess, copy examples into temp folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def fnpack(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           umask: int | None = None) -> CliResult:
    import os

    full_env = {**os.environ, **(env or {})}
    full_env.pop("SOURCE_DATE_EPOCH", None) if env is None or "SOURCE_DATE_EPOCH" not in env else None
    done = subprocess.run([sys.executable, "-m", "fnpack", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=900, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def example(tmp_path: Path):
    """Copy an example into a fresh folder: example("iris") -> Path."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        return target

    return copy
