"""Shared helpers: run the real `fnpack` CLI in a subprocess, copy examples into temp folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import free_port
from kube_cluster import kube_cluster  # noqa: F401  (the session's real API server, for every test folder)

REPO = Path(__file__).resolve().parent.parent
# Functions' user ids are allocated machine-wide (isolation.py): the suite's platforms share a table of their own.
os.environ.setdefault("FNPACK_IDS_DB", str(Path(tempfile.mkdtemp(prefix="fnpack-ids-")) / "ids.db"))
# The user's configuration (contexts): never the real user's. Servers started by module fixtures
# register into the session's file; each test gets a fresh one of its own (below).
os.environ["FNPACK_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="fnpack-config-")) / "config.yaml")
os.environ.pop("FNPACK_CONTEXT", None)
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def own_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration file of the test's own, so that no test sees contexts another one registered."""
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    monkeypatch.setenv("FNPACK_CONFIG", str(path))
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def fnpack(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           umask: int | None = None, input: str | None = None) -> CliResult:
    """The real CLI in a subprocess; `input` is piped to its standard input (else it reads nothing)."""
    import os

    full_env = {**os.environ, **(env or {})}
    full_env.pop("SOURCE_DATE_EPOCH", None) if env is None or "SOURCE_DATE_EPOCH" not in env else None
    done = subprocess.run([sys.executable, "-m", "fnpack", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=900, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
                          input=input if input is not None else "")
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def example(tmp_path: Path):
    """Copy an example into a fresh folder: example("iris") -> Path."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        return target

    return copy


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `moto_server` (AWS APIs over HTTP: S3, Lambda, IAM, ...) on a free loopback port, per test module."""
    # The venv's bin folder first: not resolved, as the venv's python is a symlink out of it.
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}; see {log.name}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1, trust_env=False)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within 30 s")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
