"""`fnpack serve`'s start lines and access log, `fnpack up` then `fnpack down`, and the gateway's Open
Inference Protocol face (server metadata, errors as tritonclient reads them): the real CLI, real servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import EXAMPLES, CliResult, fnpack
from servers import alive, free_port, reachable, session_processes, stop, wait_ready

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
WAIT = 30  # seconds: a bound on every wait, far above what any step takes
# time, client, method, path, status, duration, the function and version that answered (or -)
ACCESS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1:\d+ (GET|POST|PUT|DELETE|HEAD) (\S+) "
                    r"(\d{3}) (\d+\.\d)ms (-|\S+ v\d+)$")


def _error(result: CliResult) -> dict[str, Any]:
    """The JSON error object a `--json` command printed (on stderr; stdout is read too, for a result)."""
    for text in (result.stdout, result.stderr):
        if text.strip():
            try:
                return json.loads(text)
            except ValueError:
                continue
    raise AssertionError(f"no JSON error object in {result}")


@pytest.fixture(scope="module")
def iris_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve-cli") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    done = fnpack("build", str(folder), "--json")
    assert done.code == 0, done.stdout + done.stderr
    return Path(done.json()["archive"])


class Serve:
    """`fnpack serve` as a subprocess on a free port, its stderr in a file (read while it runs)."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state_dir.mkdir(parents=True, exist_ok=True)
        reachable(state_dir)
        self.log_path = state_dir.parent / f"serve-{self.port}.stderr"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fnpack", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--state-dir", str(state_dir), *extra],
            stdout=subprocess.DEVNULL, stderr=self._log, env={**os.environ, "FNPACK_TOKEN": "",
                                                               "FNPACK_INVOKE_TOKEN": ""})

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[tuple[str, str, int, str]]:
        """(method, path, status, who answered) of every access log line so far."""
        found = []
        for line in self.stderr().splitlines():
            match = ACCESS.match(line)
            if match:
                found.append((match[1], match[2], int(match[3]), match[5]))
        return found

    def wait_lines(self, count: int) -> list[tuple[str, str, int, str]]:
        """The access lines once there are at least `count` (a thread writes them, just after the answer)."""
        deadline = time.monotonic() + WAIT
        while len(lines := self.access_lines()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return lines

    def close(self) -> None:
        stop(self.process)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(*extra: str) -> Serve:
        server = Serve(tmp_path / f"state-{len(started)}", *extra)
        started.append(server)
        wait_ready(f"{server.url}/healthz", server.process)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


def test_serve_prints_where_it_listens_and_one_access_line_per_request(serve: Any, iris_archive: Path) -> None:
    server = serve()
    start = server.stderr()
    assert f"fnpack serve: listening on {server.url}\n" in start
    assert f"fnpack serve: state folder {server.state_dir.resolve()}\n" in start
    assert "Ctrl-C (or SIGTERM) stops it" in start and "`fnpack down`" in start
    assert "access log: one line per request" in start

    env = {"FNPACK_URL": server.url, "FNPACK_STATE_DIR": str(server.state_dir), "FNPACK_TOKEN": ""}
    deployed = fnpack("deploy", str(iris_archive), "--json", env=env)
    assert deployed.code == 0, deployed.stderr
    before = len(server.wait_lines(1))  # GET /healthz (wait_ready) and the deploy's control calls
    for _ in range(3):
        assert httpx.post(f"{server.url}/function/iris", json=SETOSA).json()["label"] == "setosa"
    assert httpx.post(f"{server.url}/function/iris:v7", json=SETOSA).status_code == 404
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    lines = server.wait_lines(before + 5)
    assert lines[before:] == [("POST", "/function/iris", 200, "iris v1")] * 3 + [
        ("POST", "/function/iris:v7", 404, "-"), ("GET", "/healthz", 200, "-")]
    assert ("POST", "/api/v1/functions/iris/versions", 201, "-") in lines[:before]  # control calls too
    time.sleep(0.3)
    assert len(server.access_lines()) == before + 5  # one line per request, not more


def test_log_level_warning_silences_the_access_log(serve: Any) -> None:
    server = serve("--log-level", "warning")
    for _ in range(3):
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    time.sleep(0.5)
    text = server.stderr()
    assert f"listening on {server.url}" in text and "access log: off" in text
    assert server.access_lines() == []
    bad = fnpack("serve", "--port", str(free_port()), "--state-dir", str(server.state_dir.parent / "x"),
                 "--log-level", "loud")
    assert bad.code == 2 and "loud" in bad.stderr


def test_the_gateway_speaks_the_inference_protocol_as_its_workers_do(serve: Any, iris_archive: Path) -> None:
    tritonclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    from fnpack.platform.gateway import OIP_EXTENSIONS
    from fnpack.runtime.oip import EXTENSIONS, server_metadata

    server = serve()
    env = {"FNPACK_URL": server.url, "FNPACK_STATE_DIR": str(server.state_dir), "FNPACK_TOKEN": ""}
    assert fnpack("deploy", str(iris_archive), "--json", env=env).code == 0
    client = tritonclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    metadata = client.get_server_metadata()
    # what the workers say of themselves (runtime/http.py serves oip.server_metadata(["binary_tensor_data"]))
    assert metadata["extensions"] == server_metadata(["binary_tensor_data"])["extensions"] == list(EXTENSIONS)
    assert tuple(metadata["extensions"]) == OIP_EXTENSIONS and "binary_tensor_data" in metadata["extensions"]

    batch = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
    tensor = tritonclient.InferInput("features", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)  # the extension the gateway now reports
    result = client.infer("iris", [tensor], outputs=[tritonclient.InferRequestedOutput("label", binary_data=True)])
    assert result.as_numpy("label").tolist() == [0, 2]

    wrong = tritonclient.InferInput("features", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:  # the worker's error, through the gateway
        client.infer("iris", [wrong])
    assert caught.value.status() == "422"
    assert "input 'features'" in caught.value.message() and "expected shape [-1, 4]" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:  # the gateway's own errors
        client.infer("nope", [tensor])
    assert caught.value.status() == "404" and "no function named 'nope'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("iris", model_version="9")
    assert caught.value.status() == "404" and "version 9" in caught.value.message()
    body = httpx.get(f"{server.url}/v2/models/nope").json()
    assert body["kind"] == "not-found" and body["exit_code"] == 12 and body["message"] in body["error"]
    assert httpx.post(f"{server.url}/function/nope", json={}).json()["error"] == "not-found"  # unchanged


def test_up_then_down_stops_the_platform_and_removes_its_pid_file(tmp_path: Path) -> None:
    folder = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    state_dir = tmp_path / "state"
    pid_file = state_dir / "gateway.pid"
    url = f"http://127.0.0.1:{free_port()}"
    env = {"FNPACK_URL": url, "FNPACK_STATE_DIR": str(state_dir), "FNPACK_TOKEN": "", "FNPACK_INVOKE_TOKEN": ""}
    pid = None
    try:
        up = fnpack("up", str(folder), "--json", env=env)
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        assert up.code == 0, up.stderr
        assert up.json()["platform"]["pid"] == pid and alive(pid)
        workers = [p for p in session_processes(pid) if p != pid]
        assert workers  # the samples ran: a zygote and a worker at least
        log = (state_dir / "gateway.log").read_text()
        assert f"`fnpack down --state-dir {state_dir.resolve()}` stops it" in log
        assert re.search(r"POST /function/iris 200 \S+ms iris v1", log)  # the access log goes there too

        down = fnpack("down", "--json", env=env)  # the state folder from FNPACK_STATE_DIR, as `up` took it
        assert down.code == 0, down.stdout + down.stderr
        assert len(down.stdout.splitlines()) == 1
        result = json.loads(down.stdout)
        assert result["stopped"] is True and result["pid"] == pid
        assert result["state_dir"] == str(state_dir.resolve()) and result["seconds"] < WAIT
        assert not alive(pid) and not pid_file.exists()
        deadline = time.monotonic() + WAIT
        while session_processes(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_processes(pid) == []  # its zygotes and workers went with it
        assert not _answers(url)

        again = fnpack("down", "--state-dir", str(state_dir))
        assert again.code == 11 and "no platform started by `fnpack up`" in again.stderr
    finally:
        if pid is not None and session_processes(pid):
            os.killpg(pid, signal.SIGKILL)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def test_down_with_nothing_running(tmp_path: Path) -> None:
    done = fnpack("down", "--state-dir", str(tmp_path / "state"))
    assert done.code == 11
    assert f"no platform started by `fnpack up` for {(tmp_path / 'state').resolve()}" in done.stderr
    assert "hint:" in done.stderr
    as_json = fnpack("down", "--state-dir", str(tmp_path / "state"), "--json")
    assert as_json.code == 11 and _error(as_json)["exit_code"] == 11


def test_down_with_a_stale_pid_file_removes_it_and_signals_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    pid_file = state_dir / "gateway.pid"

    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")  # a platform that died
    done = fnpack("down", "--state-dir", str(state_dir))
    assert done.code == 11 and "is not running" in done.stderr and "removed the stale pid file" in done.stderr
    assert not pid_file.exists()

    other = subprocess.Popen(["sleep", "60"])  # the pid now names another program: never signal it
    try:
        pid_file.write_text(f"{other.pid}\n")
        done = fnpack("down", "--state-dir", str(state_dir), "--json")
        assert done.code == 11 and "is another program now" in _error(done)["message"]
        assert not pid_file.exists()
        time.sleep(0.2)
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()

    pid_file.write_text("not a pid\n")
    done = fnpack("down", "--state-dir", str(state_dir))
    assert done.code == 11 and "not a process id" in done.stderr and not pid_file.exists()


def test_down_leaves_a_platform_for_another_state_folder_alone(serve: Any, tmp_path: Path) -> None:
    server = serve()  # a real `fnpack serve`, for another folder than the pid file's
    state_dir = tmp_path / "elsewhere"
    state_dir.mkdir()
    (state_dir / "gateway.pid").write_text(f"{server.process.pid}\n")
    done = fnpack("down", "--state-dir", str(state_dir))
    assert done.code == 11 and "for another state folder" in done.stderr
    assert not (state_dir / "gateway.pid").exists()
    assert server.process.poll() is None and httpx.get(f"{server.url}/healthz").status_code == 200
