"""Nothing hangs: what one client can hold of a server is bounded (issue 9, section 3).

Against both servers built on fnpack.http_server: the runtime (`python -m fnpack.worker` on an
iris archive) and the gateway (`fnpack serve`, with iris deployed). Real sockets only: a
slowloris head, a 64 MiB header, a thousand idle connections; each time a real client must
still get its answer.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES, fnpack
from servers import free_port, stop, wait_ready

pytestmark = pytest.mark.slow

SETOSA = b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
HEADER_TIMEOUT = 1  # seconds, through FNPACK_HEADER_TIMEOUT
MARGIN = 3  # seconds on top of it: timers fire late on a busy machine, never early
MAX_CONNECTIONS = 200  # through FNPACK_MAX_CONNECTIONS
NOFILE = 512  # the server's descriptor limit (soft and hard): 1,000 connections would exhaust it
IDLE = 1000


@dataclass
class Server:
    host: str
    port: int
    pid: int
    invoke: str  # the path a real client posts SETOSA to

    def answer(self, timeout: float = 10) -> httpx.Response:
        """A real client's request on a connection of its own."""
        return httpx.post(f"http://{self.host}:{self.port}{self.invoke}", content=SETOSA, timeout=timeout,
                          headers={"content-type": "application/json"})

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=10)

    def peak_rss(self) -> int:
        """The server's peak resident memory (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("limits") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    result = fnpack("build", str(folder), "--out", str(folder / "dist"), "--json")
    assert result.code == 0, result.stdout + result.stderr
    return result.json()


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], nofile: int | None) -> Iterator[subprocess.Popen]:
    def limit() -> None:
        if nofile is not None:  # the hard limit too, so that the server cannot raise it
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen(command, env={**os.environ, **env}, preexec_fn=limit,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        stop(process)


@pytest.fixture(params=["runtime", "gateway"])
def start(request: pytest.FixtureRequest, iris: dict, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(env, nofile=None) -> the runtime or the gateway serving iris, warm, on a free port."""
    stack = contextlib.ExitStack()

    def run(env: dict[str, str], nofile: int | None = None) -> Server:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if request.param == "runtime":
            command = [sys.executable, "-m", "fnpack.worker", "--archive", iris["archive"], "--sha256",
                       iris["sha256"], "--host", "127.0.0.1", "--port", str(port),
                       "--cache-dir", str(tmp_path / "cache")]
            process = stack.enter_context(_process(command, env, nofile))
            wait_ready(f"{base}/healthz", process)
            server = Server("127.0.0.1", port, process.pid, "/invoke")
        else:
            state = tmp_path / "state"
            command = [sys.executable, "-m", "fnpack", "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--state-dir", str(state)]
            process = stack.enter_context(_process(command, env, nofile))
            wait_ready(f"{base}/healthz", process)
            token = (state / "token").read_text().strip()
            with httpx.Client(base_url=base, timeout=60, headers={"authorization": f"Bearer {token}"}) as api:
                deployed = api.post("/api/v1/functions/iris/versions", content=Path(iris["archive"]).read_bytes(),
                                    headers={"content-type": "application/zip"})
                assert deployed.status_code == 201, deployed.text
                moved = api.put("/api/v1/functions/iris/aliases/live", json={"primary": 1, "reason": "test"})
                assert moved.status_code == 200, moved.text
            server = Server("127.0.0.1", port, process.pid, "/function/iris")
        warm = server.answer(timeout=60)  # the gateway's first call starts a worker
        assert warm.status_code == 200 and warm.json()["label"] == "setosa", warm.text
        return server

    with stack:
        yield run


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (anything it sends first is read and dropped)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def test_slowloris_heads_are_dropped_while_a_real_client_is_served(start: Callable[..., Server]) -> None:
    server = start({"FNPACK_HEADER_TIMEOUT": str(HEADER_TIMEOUT)})
    silent = server.connect()  # connects and sends nothing
    half = server.connect()
    half.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-")
    kept = server.connect()  # a kept-alive connection whose second head never ends
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
    kept.sendall(b"GET /heal")
    trickle = server.connect()  # a byte every 0.2 s: no read ever waits long, the head never ends

    def drip() -> None:
        with contextlib.suppress(OSError):
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                trickle.send(bytes([byte]))
                time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    answer = server.answer()
    assert answer.status_code == 200 and answer.json()["label"] == "setosa"
    for sock in (silent, half, kept, trickle):
        assert _closed_within(sock, HEADER_TIMEOUT + MARGIN - (time.monotonic() - started))
        sock.close()
    assert server.answer().status_code == 200


def test_a_trickled_body_is_dropped_and_never_served_while_a_real_client_is(start: Callable[..., Server]) -> None:
    server = start({"FNPACK_BODY_TIMEOUT": "1"})
    slow = server.connect()  # a whole head, then a body announced at 100 kB that comes a byte at a time
    slow.sendall(f"POST {server.invoke} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100000\r\n\r\n{".encode())

    def drip() -> None:
        with contextlib.suppress(OSError):
            for _ in range(200):
                slow.send(b" ")
                time.sleep(0.1)

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    assert server.answer().status_code == 200
    assert _closed_within(slow, 2 * 1 + MARGIN - (time.monotonic() - started))
    slow.close()
    assert server.answer().status_code == 200


def _established(port: int) -> int:
    """Open TCP connections whose local end is `port` (the server's side), from /proc/net/tcp."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                count += int(local.rsplit(":", 1)[1], 16) == port and state == "01"
    return count


def test_a_client_that_never_reads_its_answers_is_dropped(start: Callable[..., Server]) -> None:
    server = start({"FNPACK_BODY_TIMEOUT": "1"})
    greedy = socket.socket()
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes almost nothing of its answers
    greedy.connect((server.host, server.port))
    requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 60_000  # pipelined, never read

    def flood() -> None:
        with contextlib.suppress(OSError):
            greedy.sendall(requests)

    threading.Thread(target=flood, daemon=True).start()
    # The timeout runs once the server cannot write: after it has answered enough to fill the kernel's buffers
    # (loopback's grow to megabytes), thousands of answers, which took the gateway 12 s on a machine loaded 2.5
    # times over. What must not happen is a connection kept for ever: wait long enough for any load.
    deadline = time.monotonic() + 2 * 1 + MARGIN + 30
    while _established(server.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _established(server.port) == 0, "the connection of a client that never reads is still open"
    assert server.answer().status_code == 200
    greedy.close()


def test_a_64_mib_header_is_refused_431_without_being_buffered(start: Callable[..., Server]) -> None:
    server = start({})
    before = server.peak_rss()
    sock = server.connect()
    sent: list[int] = []

    def send() -> None:  # a thread of its own: the server answers (and stops reading) before the end
        chunk = b"a" * (1 << 20)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
                sent.append(len(chunk))
            sock.sendall(b"\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(30)
    response = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            response += chunk
    sock.close()
    sender.join(10)
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert b"connection: close" in response.lower()
    assert server.peak_rss() - before < 16 << 20  # a 64 MiB header never sat in the server's memory
    assert server.answer().status_code == 200
    # A head just under the cap is still a request.
    sock = server.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.close()


def test_a_thousand_idle_connections_do_not_starve_a_real_client(start: Callable[..., Server]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 200:
        pytest.skip(f"this test opens {IDLE} sockets; RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # A long header timeout: here the connection cap alone must make room.
    server = start({"FNPACK_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "FNPACK_HEADER_TIMEOUT": "120"},
                   nofile=NOFILE)
    idle: list[socket.socket] = []
    try:
        # Busy connections, the oldest of all: head sent, body still coming. Never closed for room.
        busy = [server.connect() for _ in range(5)]
        for sock in busy:
            sock.sendall(f"POST {server.invoke} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(SETOSA)}\r\n\r\n".encode() + SETOSA[:10])
        time.sleep(0.5)  # the server has read those heads
        for _ in range(IDLE):
            idle.append(server.connect())
        answer = server.answer()
        assert answer.status_code == 200 and answer.json()["label"] == "setosa"
        time.sleep(0.5)
        still_open = [_is_open(sock) for sock in idle]
        assert sum(still_open) <= MAX_CONNECTIONS
        assert not any(still_open[:IDLE - MAX_CONNECTIONS])  # the longest idle went first...
        assert all(still_open[-MAX_CONNECTIONS // 2:])  # ...the most recent stayed
        for sock in busy:
            sock.sendall(SETOSA[10:])
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
