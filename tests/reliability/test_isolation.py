"""One function must not reach another, or the platform: a hostile function's user code probes
the platform's files, another function's files, its own code, its environment and its identity.

The per-user guarantees need the platform to run as root (and this Python to be usable by other
users); elsewhere the tests that need them skip, and the start message saying so is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from functions import build_probe
from servers import free_port, platform_process, reachable, wait_ready

pytestmark = pytest.mark.slow

INVOKE_TOKEN = "invoke-secret-for-tests"
SECRETS = {"FNPACK_TOKEN": "control-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret", "FNPACK_INVOKE_TOKEN": INVOKE_TOKEN}


@dataclass
class Platform:
    url: str
    state: Path
    process: subprocess.Popen
    trees: dict[str, Path]  # function -> its unpacked tree

    def probe(self, function: str, op: str, arg: object = None, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/function/{function}", json={"probe": {"op": op, "arg": arg}},
                          headers={"authorization": f"Bearer {INVOKE_TOKEN}"}, timeout=timeout)

    def result(self, function: str, op: str, arg: object = None) -> dict:
        response = self.probe(function, op, arg)
        assert response.status_code == 200, response.text
        return response.json()["probe"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("isolation")
    return {
        "prober": build_probe(tmp / "prober", "prober", tmp / "dist-prober",
                              {"resources": {"timeout": 1, "memory": 128}, "scaling": {"max": 1}}),
        "victim": build_probe(tmp / "victim", "victim", tmp / "dist-victim"),
    }


@pytest.fixture(scope="module")
def platform(built: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    state = tmp_path_factory.mktemp("isolated") / "state"
    env = {**SECRETS, "FNPACK_STUCK_GRACE": "1"}
    with platform_process(state, "--invoke-token", INVOKE_TOKEN, env=env) as (url, process):
        token = (state / "token").read_text().strip()
        control = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60)
        trees = {}
        for name, archive in built.items():
            deployed = control.post(f"/api/v1/functions/{name}/versions", content=Path(archive["archive"]).read_bytes())
            assert deployed.status_code == 201, deployed.text
            assert control.put(f"/api/v1/functions/{name}/aliases/live", json={"primary": 1}).status_code == 200
            trees[name] = state / "unpacked" / archive["sha256"]
        yield Platform(url, state, process, trees)


def _isolating(platform: Platform) -> None:
    if platform.result("victim", "whoami")["uid"] == os.geteuid():
        pytest.skip("the platform cannot give per-function users here (it says why at start: see "
                    "test_serve_says_which_guarantees_it_cannot_give)")


def _denied(result: dict) -> bool:
    return result["ok"] is False and result["error"] in ("PermissionError", "OSError")


def test_a_function_cannot_read_the_platform_secrets_or_another_function(platform: Platform) -> None:
    _isolating(platform)
    state = platform.state
    for path in (state / "token", state / "registry.db", state / "serve.lock"):
        assert _denied(platform.result("prober", "read", str(path))), path
    for folder in (state / "archives", state / "logs", state / "unpacked", platform.trees["victim"]):
        assert _denied(platform.result("prober", "listdir", str(folder))), folder
    archive = next((state / "archives").glob("*.zip"), None) if os.geteuid() == 0 else None
    if archive is not None:
        assert _denied(platform.result("prober", "read", str(archive)))
    victim_code = platform.trees["victim"] / "probe.py"
    assert _denied(platform.result("prober", "read", str(victim_code)))
    assert _denied(platform.result("prober", "write", str(victim_code)))
    # Its own code, and the dependencies its zygote imported, are read-only to it.
    own = platform.trees["prober"]
    assert platform.result("prober", "read", str(own / "probe.py"))["ok"] is True
    for path in (own / "probe.py", own / "numpy" / "__init__.py", own / "fnpack_handler.py"):
        assert _denied(platform.result("prober", "write", str(path))), path
    # And a function's identity is its own, never another's or the platform's.
    me, other = platform.result("prober", "whoami"), platform.result("victim", "whoami")
    assert me["uid"] != 0 and other["uid"] != 0 and me["uid"] != other["uid"] and me["gid"] != other["gid"]
    assert me["groups"] in ([], [me["gid"]])


def test_code_planted_in_its_folder_never_runs_as_root(platform: Platform, tmp_path: Path) -> None:
    """A function writes a `fnpack` package (and a user site) where its zygote starts, then kills the
    zygote: the zygote the gateway starts next, as root until it switches users, imports neither."""
    _isolating(platform)
    marker = tmp_path / "ran-as"
    tmp_path.chmod(0o777)
    folder = os.path.dirname(platform.result("prober", "whoami")["cwd"])
    payload = f"import os; open({str(marker)!r}, 'w').write(str(os.geteuid()))\n"  # one line: a .pth runs it too
    for planted in ("fnpack/__init__.py", "fnpack/platform/__init__.py", "argparse.py", "json.py",
                    ".local/lib/python3.11/site-packages/evil.pth"):
        assert platform.result("prober", "put", [os.path.join(folder, planted), payload])["ok"] is True
    platform.probe("prober", "kill-zygote")  # its worker dies with the zygote: no answer to expect
    deadline = time.monotonic() + 30
    while platform.probe("prober", "whoami").status_code != 200:
        assert time.monotonic() < deadline, "the function never came back"
        time.sleep(0.2)
    assert not marker.exists(), f"planted code ran as uid {marker.read_text()}"


def test_what_a_worker_forges_on_the_control_channel_touches_no_other_process(platform: Platform) -> None:
    _isolating(platform)
    victim = platform.result("victim", "whoami")["pid"]
    gateway = platform.process.pid
    for forged in ({"retiring": victim, "reason": "forged"}, {"exited": victim, "status": "forged"},
                   {"forked": 1, "pid": gateway}, {"ready": 1, "pid": gateway}, {"exited": gateway, "status": "x"}):
        assert platform.result("prober", "control", json.dumps(forged))["ok"] is True
    assert platform.result("prober", "control", "not json {")["ok"] is True
    assert platform.result("prober", "control", "x" * 3_000_000)["ok"] is True  # over the reader's line limit
    time.sleep(0.5)
    assert platform.process.poll() is None
    assert platform.result("victim", "whoami")["pid"] == victim  # neither stopped nor forgotten
    assert platform.result("prober", "whoami")["ok"] is True  # and its own zygote still reads its channel
    assert "forged" not in (platform.state / "logs" / "victim.log").read_text()


def test_deploying_the_same_archive_again_leaves_its_tree_to_its_function(platform: Platform,
                                                                          built: dict[str, dict]) -> None:
    """The same bytes give back the same version and tree: the tree, verified and opened to its
    function already, must stay readable to it (a new zygote imports from it)."""
    assert platform.result("victim", "whoami")["ok"] is True  # served: its tree is verified and opened
    token = (platform.state / "token").read_text().strip()
    again = httpx.post(f"{platform.url}/api/v1/functions/victim/versions", timeout=60,
                       content=Path(built["victim"]["archive"]).read_bytes(), headers={"authorization": f"Bearer {token}"})
    assert again.status_code == 200 and again.json()["created"] is False, again.text
    platform.probe("victim", "kill-zygote")  # the next request needs a new zygote, reading the tree
    deadline = time.monotonic() + 30
    while (answer := platform.probe("victim", "whoami")).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def test_a_new_version_links_the_files_its_function_had_and_never_another_functions(
        platform: Platform, tmp_path: Path) -> None:
    """v2 of the prober (another spec, the same code and dependencies) is unpacked by hard-linking the files
    it shares with v1 instead of inflating them, from the prober's own trees only: the victim holds the very
    same numpy files, and none of them is linked. The linked files stay read-only to the function."""
    v2 = build_probe(tmp_path / "prober-v2", "prober", tmp_path / "dist",
                     {"resources": {"timeout": 2, "memory": 128}, "scaling": {"max": 1}})
    control = httpx.Client(base_url=platform.url, timeout=60,
                           headers={"authorization": f"Bearer {(platform.state / 'token').read_text().strip()}"})
    deployed = control.post("/api/v1/functions/prober/versions", content=Path(v2["archive"]).read_bytes())
    assert deployed.status_code == 201, deployed.text
    tree, v1, victim = platform.state / "unpacked" / v2["sha256"], platform.trees["prober"], platform.trees["victim"]

    def inodes(root: Path) -> dict[int, str]:
        return {p.stat().st_ino: str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.stat().st_size}

    shared = set(inodes(tree)) & set(inodes(v1))
    assert "numpy/__init__.py" in {inodes(v1)[i] for i in shared} and len(shared) > 100
    assert (victim / "numpy" / "__init__.py").read_bytes() == (tree / "numpy" / "__init__.py").read_bytes()
    assert not set(inodes(tree)) & set(inodes(victim))
    number = deployed.json()["version"]["number"]
    assert control.put("/api/v1/functions/prober/aliases/live", json={"primary": number}).status_code == 200
    try:
        assert platform.probe("prober", "whoami").headers["x-fnpack-version"] == str(number)
        if platform.result("prober", "whoami")["uid"] != os.geteuid():
            for path in (tree / "numpy" / "__init__.py", v1 / "numpy" / "__init__.py"):
                assert _denied(platform.result("prober", "write", str(path))), path
    finally:
        assert control.put("/api/v1/functions/prober/aliases/live", json={"primary": 1}).status_code == 200


def test_workers_get_a_scrubbed_environment_and_a_folder_of_their_own(platform: Platform) -> None:
    env = platform.result("prober", "env")["env"]
    for name in SECRETS:
        assert name not in env, name
    assert not any(value in SECRETS.values() for value in env.values())
    me = platform.result("prober", "whoami")
    assert env["HOME"] == env["TMPDIR"] == me["cwd"]
    assert me["cwd"] != platform.result("victim", "whoami")["cwd"]
    assert platform.result("prober", "write", os.path.join(me["cwd"], "scratch"))["ok"] is True
    if me["uid"] != os.geteuid():  # with users of their own, one function cannot read another's folder
        assert platform.result("victim", "read", os.path.join(me["cwd"], "scratch"))["ok"] is False


def test_metrics_and_the_openapi_document_need_the_invoke_token(platform: Platform) -> None:
    for path in ("/metrics", "/openapi.json"):
        assert httpx.get(platform.url + path).status_code == 401, path
        allowed = httpx.get(platform.url + path, headers={"authorization": f"Bearer {INVOKE_TOKEN}"})
        assert allowed.status_code == 200, path
    assert httpx.get(platform.url + "/healthz").status_code == 200  # probes need no token


def test_a_worker_over_its_memory_limit_is_stopped_and_replaced(platform: Platform) -> None:
    before = platform.result("prober", "whoami")["pid"]
    over = platform.probe("prober", "allocate", 400)
    assert over.status_code == 502, over.text
    assert over.json()["error"] == "memory-limit" and "128 MiB" in over.json()["message"], over.text
    assert platform.result("prober", "allocate", 16)["ok"] is True  # a new worker, under the limit
    assert platform.result("prober", "whoami")["pid"] != before


def test_a_timed_out_call_stops_and_a_stuck_worker_is_replaced(platform: Platform) -> None:
    # Pure Python: the call is stopped at the deadline and the same worker goes on serving.
    before = platform.result("prober", "whoami")["pid"]
    spin = platform.probe("prober", "spin", 1e5)
    assert spin.status_code == 504, spin.text
    assert platform.result("prober", "whoami")["pid"] == before
    # Blocked in C: every thread of the worker held; each request gets its 504, and the worker,
    # which cannot stop them, is replaced: later requests are answered again.
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        stuck = list(pool.map(lambda _: platform.probe("prober", "sleep", 1e5).status_code, range(4)))
    assert stuck == [504] * 4 and time.monotonic() - began < 15
    deadline = time.monotonic() + 30
    while platform.probe("prober", "whoami").status_code != 200:
        assert time.monotonic() < deadline, "the stuck worker was never replaced"
        time.sleep(0.2)
    assert platform.result("prober", "whoami")["pid"] != before
    assert "retiring" in (platform.state / "logs" / "prober.log").read_text()


def test_a_tree_changed_on_disk_is_unpacked_again_before_anything_imports_it(built: dict[str, dict],
                                                                             tmp_path: Path) -> None:
    state = tmp_path / "state"
    archive = built["victim"]
    with platform_process(state) as (url, _):
        token = (state / "token").read_text().strip()
        headers = {"authorization": f"Bearer {token}"}
        httpx.post(f"{url}/api/v1/functions/victim/versions", content=Path(archive["archive"]).read_bytes(),
                   headers=headers, timeout=60).raise_for_status()
        httpx.put(f"{url}/api/v1/functions/victim/aliases/live", json={"primary": 1}, headers=headers).raise_for_status()
        assert httpx.post(f"{url}/function/victim", json={"x": [[1.0]]}, timeout=60).status_code == 200
    tree = state / "unpacked" / archive["sha256"]
    code = tree / "probe.py"
    original = code.read_bytes()
    for folder in (tree, tree / "numpy"):
        folder.chmod(0o755)
    code.chmod(0o644)
    code.write_bytes(original.replace(b'return {"y"', b'return {"tampered": True, "y"'))
    (tree / "numpy" / "planted.py").write_text("raise SystemExit('planted')\n")
    with platform_process(state) as (url, _):
        answer = httpx.post(f"{url}/function/victim", json={"x": [[2.0]]}, timeout=60)
        assert answer.status_code == 200 and "tampered" not in answer.json(), answer.text
    assert code.read_bytes() == original and not (tree / "numpy" / "planted.py").exists()
    assert "changed on disk" in (state / "logs" / "victim.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to start the platform as an unprivileged user")
def test_serve_says_which_guarantees_it_cannot_give(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    reachable(state)
    port = free_port()
    process = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "fnpack", "serve",
         "--port", str(port), "--state-dir", str(state)],
        env={**os.environ, "HOME": str(state)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)
    except RuntimeError as exc:
        pytest.skip(f"this Python cannot run as another user here: {exc}")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert f"listening on http://127.0.0.1:{port}" in stderr and str(state) in stderr
    warning = next(line for line in stderr.splitlines() if line.startswith("warning:"))
    assert "not running as root" in warning and "control token" in warning and "every other function" in warning
