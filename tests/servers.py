"""Starting real servers for tests: a free loopback port, wait until ready, stop on exit."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httptools
import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(state_dir: Path, name: str) -> list[int]:
    """Every worker the platform reported ready for function `name`, from its log."""
    log = (Path(state_dir) / "logs" / f"{name}.log").read_text()
    return [int(p) for p in re.findall(r"worker pid (\d+) ready", log)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def all_gone(pids: list[int], timeout: float = 10) -> bool:
    """Wait up to `timeout` for every process to exit; whether they all did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still there `timeout` seconds later; reaped either way."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def worker(archive: str | Path, sha256: str, cache_dir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m fnpack.worker` serving an archive; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fnpack.worker", "--archive", str(archive), "--sha256", sha256,
         "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(cache_dir)],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def reachable(state_dir: Path) -> None:
    """Let other users traverse (not list) the temp folders above a state folder, as they can a real
    deployment's: a platform run as root then gives each function a user of its own."""
    state_dir = Path(state_dir).resolve()
    for folder in state_dir.parents:
        if folder == Path(tempfile.gettempdir()).resolve() or folder == folder.parent:
            break
        if folder.exists() and os.geteuid() == folder.stat().st_uid:
            folder.chmod(folder.stat().st_mode | 0o111)


@contextlib.contextmanager
def platform(state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`fnpack serve` on a free loopback port with its state in `state_dir`; yields its base URL.

    The control token is in `state_dir / "token"` once it is ready.
    """
    with platform_process(state_dir, *extra, env=env) as (url, _):
        yield url


@contextlib.contextmanager
def platform_process(state_dir: Path, *extra: str, env: dict[str, str] | None = None,
                     port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like `platform`, also yielding the process (to kill it in reliability tests)."""
    port = port or free_port()
    reachable(state_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "fnpack", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(state_dir), *extra],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop(process)


def session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes in session `sid`: what `fnpack up` started, and its children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


# --- raw HTTP ------------------------------------------------------------------------------------

Answer = tuple[int, dict[bytes, bytes], bytes]


def read_responses(sock: socket.socket, count: int, timeout: float = 60) -> list[Answer]:
    """Read `count` responses off `sock` (interim ones count), in order; fewer if the gateway closes."""
    answers: list[Answer] = []

    class Collect:
        def on_message_begin(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            answers.append((parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Collect())
    sock.settimeout(timeout)
    while len(answers) < count:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        parser.feed_data(data)
    return answers
