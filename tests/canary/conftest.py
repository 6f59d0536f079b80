"""What the canary tests share: one function with four versions (a baseline, a good one, one that fails 20% of
its requests, one 3x slower) deployed once to a `fnpack serve` for the package's tests; each test puts `live`
back on v1 and rolls one of them out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import fnpack
from functions import echo_model
from servers import platform

NAME = "canaried"
# The code of every version: the echo model, a sleep (latency) and an error every FAIL_EVERY-th request.
BEHAVIOUR = '''
import itertools, time

SLEEP = {sleep}
FAIL_EVERY = {fail_every}
_count = itertools.count(1)


def extract(request):
    if FAIL_EVERY and next(_count) % FAIL_EVERY == 0:
        raise RuntimeError("failing on purpose")
    time.sleep(SLEEP)
    return {{"x": request.get("x", [[0.0]])}}
'''
VARIANTS = {1: {"sleep": 0.02, "fail_every": 0}, 2: {"sleep": 0.02, "fail_every": 0, "tag": "good"},
            3: {"sleep": 0.02, "fail_every": 5}, 4: {"sleep": 0.06, "fail_every": 0}}
FAST = ("--steps", "25,50,100", "--interval", "2s", "--min-requests", "20", "--load", "samples", "--load-rate", "60")


def build_variant(root: Path, number: int, canary: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """(folder, archive) of one version's code."""
    behaviour = VARIANTS[number]
    folder = root / f"v{number}"
    folder.mkdir(parents=True)
    echo_model(folder / "model.onnx")
    (folder / "behave.py").write_text(BEHAVIOUR.format(**behaviour) + f"# {behaviour.get('tag', number)}\n")
    spec = {"name": NAME, "model": "model.onnx", "features": "behave:extract",
            "samples": [{"data": {"x": [[1.0, 2.0]]}}], **({"canary": canary} if canary else {})}
    (folder / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    done = fnpack("build", str(folder), "--out", str(root / "dist"), "--json")
    assert done.code == 0, done.stderr
    return folder, Path(done.json()["archive"])


class Local:
    def __init__(self, url: str, state_dir: Path, folders: dict[int, Path]) -> None:
        self.url, self.folders = url, folders
        self.env = {"FNPACK_URL": url, "FNPACK_STATE_DIR": str(state_dir), "FNPACK_TOKEN": "",
                    "FNPACK_INVOKE_TOKEN": "", "FNPACK_TARGET": "local"}
        self.token = (state_dir / "token").read_text().strip()

    def __call__(self, *args: str) -> Any:
        return fnpack(*args, env=self.env)

    def ok(self, *args: str) -> dict[str, Any]:
        done = self(*args, "--json")
        assert done.code == 0, f"{args}: {done.code}\n{done.stdout}\n{done.stderr}"
        return done.json()

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "fnpack", "canary", *args], env={**os.environ, **self.env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def alias(self) -> dict[str, Any]:
        return self.ok("alias", "list", NAME)["aliases"]["live"]

    def history(self) -> list[dict[str, Any]]:
        return self.ok("alias", "history", NAME, "live")["history"]

    def reset(self) -> None:
        self.ok("alias", "set", NAME, "live", "1", "--reason", "test reset")

    def wait_for_weight(self, weight: float, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.alias().get("weight") != weight:
            assert time.monotonic() < deadline, f"live never got to {weight}: {self.alias()}"
            time.sleep(0.1)


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="package")
def local(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("canary")
    folders = {}
    archives = {}
    for number in VARIANTS:
        folders[number], archives[number] = build_variant(root / "src", number)
    with platform(root / "state") as url:
        gw = Local(url, root / "state", folders)
        for number in VARIANTS:
            extra = () if number == 1 else ("--no-promote",)
            assert gw.ok("deploy", str(archives[number]), *extra)["version"]["number"] == number
        yield gw


