"""The CLI's commands that talk to the local platform stay lean: what they import, how they talk to it.

No timings here (benchmarks/bench_cli.py measures them): what a command loads and sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fnpack.errors import UsageError

HEAVY = ("pydantic", "httpx", "fastapi", "uvicorn", "rich", "yaml", "numpy", "onnxruntime", "boto3")


def _loaded_after(code: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; the top-level packages loaded after it, and what it printed."""
    script = (f"import sys, json\n{code}\n"
              "sys.stderr.write('\\n' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})) + '\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "FNPACK_CONFIG": str(cwd / "config.yaml"), **(env or {})})
    assert done.returncode == 0, done.stderr
    return {"modules": set(json.loads(done.stderr.strip().splitlines()[-1])), "stdout": done.stdout}


def test_importing_the_cli_loads_no_heavy_package(tmp_path: Path) -> None:
    loaded = _loaded_after("import fnpack.cli", tmp_path)["modules"]
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


class _Platform(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway answers
    connections: list[tuple[str, int]] = []  # one entry per accepted connection (an id() may be reused)
    requests: list[str] = []
    close_after = False

    def setup(self) -> None:
        super().setup()
        type(self).connections.append(self.client_address)

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        type(self).requests.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        body = json.dumps({"functions": [{"name": "iris", "versions": 2, "latest": 2,
                                          "aliases": {"live": {"primary": 2, "canary": None, "weight": 0.0}}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_after:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body.encode())
        if self.close_after:
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    _Platform.connections, _Platform.requests, _Platform.close_after = [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Platform)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fnpack_ls_loads_neither_httpx_nor_the_gateway_nor_rich(platform: str, tmp_path: Path) -> None:
    code = ("sys.argv = ['fnpack', 'ls']\nfrom fnpack.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n")
    found = _loaded_after(code, tmp_path, {"FNPACK_URL": platform, "FNPACK_TOKEN": "secret"})
    assert "iris" in found["stdout"] and "live -> v2" in found["stdout"]
    # pydantic: Typer 0.29 builds a TypeAdapter per option on every run (0.1 s), which is why Typer is pinned
    assert not found["modules"] & {"httpx", "httpcore", "fastapi", "uvicorn", "rich", "numpy", "boto3", "pydantic"}
    assert _Platform.requests == ["GET /api/v1/functions Bearer secret"]


def test_the_platform_client_keeps_one_connection_for_its_requests(platform: str) -> None:
    from fnpack.targets.local.wire import Client

    client = Client(platform, timeout=10)
    try:
        answers = [client.request("GET", "/api/v1/functions").json() for _ in range(3)]
    finally:
        client.close()
    assert answers[0]["functions"][0]["name"] == "iris" and len(_Platform.connections) == 1


def test_a_connection_the_platform_closed_is_not_used_again(platform: str) -> None:
    from fnpack.targets.local.wire import Client

    _Platform.close_after = True
    client = Client(platform, timeout=10)
    try:
        for _ in range(3):
            assert client.request("GET", "/api/v1/functions").status_code == 200
    finally:
        client.close()
    assert len(_Platform.requests) == 3 and len(_Platform.connections) == 3


def test_no_platform_is_a_start_error_naming_the_url(tmp_path: Path) -> None:
    import socket

    from fnpack.errors import StartError
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with LocalTarget(LocalSettings.layer({"url": url, "token": "t"}, "the test")) as target:
            with pytest.raises(StartError, match=f"no fnpack platform at {url}"):
                target.functions()
            assert target.healthy() is False


def test_local_settings_stack_and_check_each_source() -> None:
    from fnpack.targets.local.settings import LocalSettings

    settings = LocalSettings.layered({"url": "http://flag:1/"}, environ={"FNPACK_TOKEN": " tok \n"},
                                     context={"url": "http://context:2", "state_dir": "/srv/fnpack"})
    assert (settings.url, settings.token, settings.state_dir) == ("http://flag:1", "tok", Path("/srv/fnpack"))
    assert LocalSettings.layered({}, environ={}).url == "http://127.0.0.1:8080"
    with pytest.raises(UsageError, match=r"invalid local settings from the environment: FNPACK_URL: 'ftp://x' is not"):
        LocalSettings.from_env({"FNPACK_URL": "ftp://x"})
    with pytest.raises(UsageError, match=r"from context c: url: Input should be a valid string"):
        LocalSettings.layer({"url": 8080}, "context c")
    assert "region" not in LocalSettings.field_names()  # another target's names are ignored, not refused
    assert LocalSettings.layer({"region": "eu-west-1"}, "the command line") == LocalSettings()
