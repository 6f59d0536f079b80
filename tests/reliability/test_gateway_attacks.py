"""The gateway's invocation path (platform/invocations.py) under attack, over real sockets.

Invocations are taken in the gateway's HTTP protocol, not through ASGI; these are the attacks a
hostile or careless client can make on that path: pipelined floods mixing invocations and control
calls, clients that hang up or never read, `Expect: 100-continue` with a refusal coming, bodies at
and over FNPACK_MAX_BODY, encoded paths, HEAD/GET, HTTP/1.0, workers that die or hang, and a
SIGTERM with requests in flight. Each time every other client must still get its own answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from functions import build_probe
from servers import Answer, free_port, reachable, read_responses, stop, wait_ready

pytestmark = pytest.mark.slow

MAX_BODY = 100_000  # FNPACK_MAX_BODY: small, so that a whole over-limit body fits in one read
INVOKE_TOKEN = "attack-invoke-token"
AUTH = f"authorization: Bearer {INVOKE_TOKEN}\r\n"


@dataclass
class Gateway:
    port: int
    process: subprocess.Popen
    log: Path  # the gateway's stderr: access log, warnings, tracebacks
    token: str  # the control token

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def failures(self) -> list[str]:
        """The gateway's own tracebacks so far."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith(("Traceback", "invocation ", "ERROR:"))]

    def served(self, code: str = "200") -> int:
        """Invocations of `echo` answered `code`, as /metrics counts them."""
        metrics = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30,
                            headers={"authorization": f"Bearer {INVOKE_TOKEN}"}).text
        for line in metrics.splitlines():
            if line.startswith("fnpack_requests_total{") and f'code="{code}"' in line and 'function="echo"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return 0


@contextlib.contextmanager
def _gateway(tmp: Path, archive: str, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """`fnpack serve` with an invoke token and the access log on, stderr to a file, echo deployed (alias live)."""
    state, log, port = tmp / "state", tmp / "gateway.log", free_port()
    reachable(state)
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fnpack", "serve", "--host", "127.0.0.1", "--port", str(port), "--state-dir",
             str(state), "--invoke-token", INVOKE_TOKEN],
            env={**os.environ, "FNPACK_MAX_BODY": str(MAX_BODY), **(env or {})}, stdout=subprocess.DEVNULL,
            stderr=stderr)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)
        token = (state / "token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"authorization": f"Bearer {token}"}) as control:
            deployed = control.post("/api/v1/functions/echo/versions", content=Path(archive).read_bytes())
            assert deployed.status_code == 201, deployed.text
            assert control.put("/api/v1/functions/echo/aliases/live", json={"primary": 1}).status_code == 200
        gateway = Gateway(port, process, log, token)
        with gateway.connect() as sock:  # warm: a worker is ready
            sock.sendall(_post("/function/echo", _body(0)))
            assert read_responses(sock, 1)[0][0] == 200
        yield gateway
    finally:
        stop(process)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("attacks")
    spec = {"scaling": {"max": 2, "target_concurrency": 4}, "resources": {"timeout": 3}}
    return build_probe(tmp / "src", "echo", tmp / "dist", spec)["archive"]


@pytest.fixture(scope="module")
def gateway(archive: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # A long body timeout: the write timeout is the same, and a client that does not read is
    # watched here for longer than the default 10 s.
    with _gateway(tmp_path_factory.mktemp("gateway"), archive, {"FNPACK_BODY_TIMEOUT": "60"}) as gateway:
        yield gateway


# --- raw HTTP ------------------------------------------------------------------------------------

def _head(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """The answer to a HEAD: its status, headers and whatever came after them (nothing, in step)."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, rest + _received(sock, 0.3)


def _received(sock: socket.socket, seconds: float) -> bytes:
    """Whatever arrives within `seconds` (for what must not arrive)."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            data += chunk
    return data


def _post(path: str, body: dict | bytes, extra: str = AUTH, version: str = "1.1") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/{version}\r\nhost: x\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


def _chunked(path: str, data: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{AUTH}"
            "transfer-encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


def _body(tag: float, width: int = 1) -> dict:
    return {"x": [[float(tag)] * width]}


def _sized(size: int) -> bytes:
    """A JSON request for echo of exactly `size` bytes."""
    head, tail = b'{"x": [[1.0]], "pad": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def _y(answer: Answer) -> list:
    assert answer[0] == 200, answer
    return json.loads(answer[2])["y"]


def _echo_again(gateway: Gateway, count: int = 20) -> None:
    """A real client on a fresh connection: each of its requests gets its own answer."""
    with gateway.connect() as sock:
        for tag in range(count):
            sock.sendall(_post("/function/echo", _body(1000 + tag)))
            assert _y(read_responses(sock, 1)[0]) == [[1000.0 + tag]]


# --- bodies, limits and Expect -------------------------------------------------------------------


def test_bodies_at_and_over_the_limit(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(_post("/function/echo", _sized(MAX_BODY)) + _post("/function/echo", _sized(MAX_BODY + 1)) +
                     _chunked("/function/echo", _sized(MAX_BODY + 1)) + _chunked("/function/echo", _sized(MAX_BODY)))
        answers = read_responses(sock, 4)
    assert [status for status, _, _ in answers] == [200, 413, 413, 200], answers
    assert json.loads(answers[1][2])["error"] == "payload_too_large"
    assert json.loads(answers[2][2])["error"] == "payload_too_large"


def test_a_pipelined_chunked_body_over_the_limit_is_refused_not_forwarded_empty(gateway: Gateway) -> None:
    """A chunked body over FNPACK_MAX_BODY that arrived whole while the request waited its turn behind
    a slow one: it was forwarded to the function with an empty body (the collected chunks dropped at
    the limit, the size not checked when its turn came). It must be a 413, like the same body unqueued."""
    slow = _post("/function/echo", {**_body(1), "probe": {"op": "sleep", "arg": 0.5}})
    over = json.dumps({"x": [[2.0]], "pad": "a" * (MAX_BODY + 500)}).encode()
    with gateway.connect() as sock:
        sock.sendall(slow + _chunked("/function/echo", over) + _post("/function/echo", _body(3)))
        answers = read_responses(sock, 3)
    assert [status for status, _, _ in answers] == [200, 413, 200], [(s, b[:200]) for s, _, b in answers]
    assert json.loads(answers[1][2])["error"] == "payload_too_large"
    assert _y(answers[2]) == [[3.0]]


@pytest.mark.parametrize("why", ["wrong token", "no token", "over the limit", "oip wrong token"])
def test_expect_100_continue_gets_no_100_before_a_refusal_and_the_connection_ends(gateway: Gateway, why: str) -> None:
    path = "/v2/models/echo/infer" if why.startswith("oip") else "/function/echo"
    auth = {"no token": "", "over the limit": AUTH}.get(why, "authorization: Bearer wrong\r\n")
    length = MAX_BODY + 1 if why == "over the limit" else 13
    with gateway.connect() as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\n{auth}expect: 100-continue\r\n"
                     f"content-length: {length}\r\n\r\n".encode())
        answers = read_responses(sock, 1, timeout=30)
        # The body it held back never came: the connection ends, or its next bytes would be read as that body.
        assert answers and answers[0][1].get(b"connection") == b"close", answers
        sock.settimeout(10)
        assert sock.recv(1) == b""
    assert answers[0][0] == (413 if why == "over the limit" else 401), answers
    assert b"error" in answers[0][2]


def test_expect_100_continue_with_a_good_request_gets_100_then_its_answer(gateway: Gateway) -> None:
    data = json.dumps(_body(7)).encode()
    with gateway.connect() as sock:
        sock.sendall(f"POST /function/echo HTTP/1.1\r\nhost: x\r\n{AUTH}expect: 100-continue\r\n"
                     f"content-length: {len(data)}\r\n\r\n".encode())
        assert read_responses(sock, 1)[0][0] == 100
        sock.sendall(data)
        assert _y(read_responses(sock, 1)[0]) == [[7.0]]


# --- paths and methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/function/echo%0D%0AGET%20/function/echo%20HTTP/1.1", "/function/ec%00ho",
                                  "/function/echo%2F..%2Fx", "/function/%C3%A9cho", "/function/" + "a" * 5000,
                                  "/function/echo:%0d%0a", "/function/", "/function/echo:0", "/v2/models/",
                                  "/v2/models/ech%0Ao/infer", "/v2/models/echo/versions/%7B0%7D/infer"])
def test_encoded_paths_are_a_clear_4xx_in_json(gateway: Gateway, path: str) -> None:
    with gateway.connect() as sock:
        sock.sendall(_post(path, _body(1)) + _post("/function/echo", _body(2)))
        answers = read_responses(sock, 2)
    assert 400 <= answers[0][0] < 500, answers[0]
    assert json.loads(answers[0][2])["error"]
    assert _y(answers[1]) == [[2.0]]  # the same connection goes on


@pytest.mark.parametrize("path", [b"/function/\xc3\xa9cho", b"/function/echo?\xff", b"/v2/models/echo/\xff",
                                  b"/function/e\x7f"])
def test_raw_non_ascii_in_a_path_is_refused(gateway: Gateway, path: bytes) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nhost: x\r\n" + AUTH.encode() + b"content-length: 2\r\n\r\n{}")
        answers = read_responses(sock, 1)
    assert answers and answers[0][0] == 400, answers


def test_an_encoded_request_line_in_an_oip_path_smuggles_nothing(gateway: Gateway) -> None:
    """CR LF and a second request line, encoded in a /v2/models path: the worker gets the path encoded
    again (its 404), and no second answer comes on the connection."""
    path = "/v2/models/echo/versions/1/infer%0D%0A%0D%0AGET%20/healthz%20HTTP/1.1%0D%0Ahost:%20w%0D%0A%0D%0A"
    with gateway.connect() as sock:
        sock.sendall(_post(path, {}) + _post("/function/echo", _body(5)))
        answers = read_responses(sock, 2)
        assert _received(sock, 0.5) == b""
    assert answers[0][0] == 404 and answers[0][1][b"x-fnpack-version"] == b"1", answers[0]
    assert _y(answers[1]) == [[5.0]]


def test_head_and_get(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(f"GET /function/echo HTTP/1.1\r\nhost: x\r\n{AUTH}\r\n".encode())
        assert read_responses(sock, 1)[0][0] == 405
        sock.sendall(f"HEAD /function/echo HTTP/1.1\r\nhost: x\r\n{AUTH}\r\n".encode())
        status, headers, rest = _head(sock)
        assert status == 405 and rest == b"" and int(headers[b"content-length"]) > 0
        sock.sendall(f"GET /v2/models/echo HTTP/1.1\r\nhost: x\r\n{AUTH}\r\n".encode())
        status, headers, metadata = read_responses(sock, 1)[0]
        assert status == 200 and json.loads(metadata)["name"] == "echo"
        sock.sendall(f"HEAD /v2/models/echo HTTP/1.1\r\nhost: x\r\n{AUTH}\r\n".encode())
        status, headers, rest = _head(sock)
        assert status == 200 and rest == b"" and int(headers[b"content-length"]) == len(metadata)
        sock.sendall(_post("/function/echo", _body(4)))  # the HEAD answer had no body: in step
        assert _y(read_responses(sock, 1)[0]) == [[4.0]]


def test_http_1_0_gets_its_answer_and_the_connection_closes(gateway: Gateway) -> None:
    for extra in (AUTH, AUTH + "connection: keep-alive\r\n"):
        with gateway.connect() as sock:
            sock.sendall(_post("/function/echo", _body(6), extra, "1.0"))
            answers = read_responses(sock, 2, timeout=30)
        assert len(answers) == 1 and _y(answers[0]) == [[6.0]]
        assert answers[0][1][b"connection"] == b"close"


# --- floods, pipelines and clients that go --------------------------------------------------------


def test_pipelined_floods_mixing_invocations_and_control_calls(gateway: Gateway) -> None:
    """Several clients, each 300 requests in one write: invocations (both paths, refused or not) and
    control calls; every answer in order, each with its own value, none lost."""
    control = f"GET /api/v1/functions/echo/aliases HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gateway.token}\r\n\r\n"

    def client(worker: int) -> None:
        requests, expected = [], []
        for i in range(300):
            tag, kind = float(worker * 1000 + i), (worker + i * 3) % 7
            if kind == 0:
                requests.append(_post("/function/echo", _body(tag)))
                expected.append((200, lambda b, t=tag: json.loads(b)["y"] == [[t]]))
            elif kind == 1:
                requests.append(control.encode())
                expected.append((200, lambda b: "live" in json.loads(b)["aliases"]))
            elif kind == 2:
                requests.append(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                expected.append((200, lambda b: json.loads(b) == {"status": "ok"}))
            elif kind == 3:
                requests.append(_post("/function/echo", _body(tag), ""))
                expected.append((401, lambda b: json.loads(b)["error"] == "unauthorized"))
            elif kind == 4:
                tensor = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [tag]}]}
                requests.append(_post("/v2/models/echo/infer", tensor))
                expected.append((200, lambda b, t=tag: json.loads(b)["outputs"][0]["data"] == [t]))
            elif kind == 5:
                requests.append(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")  # no invoke token
                expected.append((401, lambda b: json.loads(b)["error"] == "unauthorized"))
            else:
                requests.append(_post("/function/nope", _body(tag)))
                expected.append((404, lambda b: json.loads(b)["error"] == "not-found"))
        with gateway.connect() as sock:
            sock.sendall(b"".join(requests))
            answers = read_responses(sock, len(requests))
        assert len(answers) == len(requests), f"client {worker}: {len(answers)} of {len(requests)} answers"
        for i, ((status, _, body), (want, check)) in enumerate(zip(answers, expected)):
            assert status == want and check(body), f"client {worker}, request {i}: {status} {body[:200]!r}"

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(client, w) for w in range(4)]:
            future.result()
    assert gateway.failures() == []


def test_metrics_without_the_invoke_token_is_a_401_and_the_connection_goes_on(gateway: Gateway) -> None:
    """With an invoke token and the access log on, an unauthorized /metrics raised (an unset variable
    of the access log) after its 401: a traceback per request, and the connection was closed, taking
    the requests pipelined behind it."""
    with gateway.connect() as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n" + _post("/function/echo", _body(8)))
        answers = read_responses(sock, 2)
    assert [status for status, _, _ in answers] == [401, 200], answers
    assert _y(answers[1]) == [[8.0]]
    assert gateway.failures() == []


def test_clients_that_hang_up_mid_body_mid_forward_or_with_requests_queued(gateway: Gateway) -> None:
    slow = _post("/function/echo", {**_body(666), "probe": {"op": "sleep", "arg": 0.3}})
    queued = _post("/function/echo", _body(667)) * 3 + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    for _ in range(5):
        with gateway.connect() as sock:  # mid-body
            request = _post("/function/echo", _body(665, 200))
            sock.sendall(request[:-40])
        with gateway.connect() as sock:  # mid-forward, requests queued behind it
            sock.sendall(slow + queued)
        with gateway.connect() as sock:  # waiting for 100 Continue
            sock.sendall(f"POST /function/echo HTTP/1.1\r\nhost: x\r\n{AUTH}expect: 100-continue\r\n"
                         "content-length: 13\r\n\r\n".encode())
    time.sleep(1)  # the slow requests' answers come back to no one
    _echo_again(gateway)


def test_a_client_reset_with_requests_queued_leaves_no_traceback(gateway: Gateway) -> None:
    """A client that resets its connection while its request is at a worker and another is queued
    behind it: the answer was written to the closed transport (uvicorn marks only the newest request
    as disconnected), which raised, logged a traceback and answered 500 to no one, per request."""
    slow = _post("/function/echo", {**_body(669), "probe": {"op": "sleep", "arg": 0.3}})
    for _ in range(4):
        sock = gateway.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        sock.sendall(slow + _post("/function/echo", _body(670)))
        time.sleep(0.05)
        sock.close()
    time.sleep(1)  # the answers come back to no one
    _echo_again(gateway)
    assert gateway.failures() == []


def test_a_client_that_pipelines_and_never_reads_is_not_answered_into_memory(gateway: Gateway) -> None:
    """2,000 pipelined invocations of ~14 kB answers from a client that reads nothing: the gateway used
    to answer them all into its write buffer (every one processed, ~28 MB held for one connection,
    for as long as the write timeout), where uvicorn's ASGI path waits for the client to read. Now an
    answer waits while the client does not read, and the requests behind it with it. Once the client
    reads, it gets every answer, in order."""
    count, width = 2000, 2000
    before = gateway.served()
    greedy = gateway.connect(rcvbuf=4096)
    requests = b"".join(_post("/function/echo", _body(tag, width)) for tag in range(count))

    def flood() -> None:
        with contextlib.suppress(OSError):
            greedy.sendall(requests)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    served, still = gateway.served() - before, 0
    while served < count and still < 6:  # until all are served or none more is, for 3 s
        time.sleep(0.5)
        now = gateway.served() - before
        still, served = (still + 1 if now == served else 0), now
    # What the kernel's socket buffers hold (a few MB on loopback), not all of them.
    assert served < count // 2, f"{served} of {count} answered to a client that reads nothing"
    _echo_again(gateway, 3)  # meanwhile, others are served
    answers = read_responses(greedy, count)
    greedy.close()
    sender.join(30)
    assert len(answers) == count
    assert all(_y(answer) == [[float(tag)] * width] for tag, answer in enumerate(answers))


def test_many_slow_clients_while_a_real_client_is_served(gateway: Gateway) -> None:
    """Slow heads, bodies trickled and unfinished, held 100-continues, at once: a real client is served."""
    held = []
    try:
        for i in range(60):
            sock = gateway.connect()
            kind = i % 3
            if kind == 0:
                sock.sendall(b"POST /function/echo HTTP/1.1\r\nhost: x\r\n")
            elif kind == 1:
                sock.sendall(_post("/function/echo", _body(1, 500))[:-100])
            else:
                sock.sendall(f"POST /function/echo HTTP/1.1\r\nhost: x\r\n{AUTH}expect: 100-continue\r\n"
                             "content-length: 1000\r\n\r\n".encode())
            held.append(sock)
        _echo_again(gateway)
    finally:
        for sock in held:
            sock.close()


# --- workers that die or hang ---------------------------------------------------------------------


@pytest.mark.parametrize("probe,status,kind", [({"op": "allocate", "arg": 900}, 502, "memory-limit"),
                                               ({"op": "spin", "arg": 6}, 504, "timeout")])
def test_a_worker_that_dies_or_overruns_is_a_json_error_and_the_connection_goes_on(
        gateway: Gateway, probe: dict, status: int, kind: str) -> None:
    with gateway.connect() as sock, gateway.connect() as other:
        sock.sendall(_post("/function/echo", {**_body(1), "probe": probe}) + _post("/function/echo", _body(2)))
        other.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")  # meanwhile, the gateway answers others
        assert read_responses(other, 1)[0][0] == 200
        answers = read_responses(sock, 2)
    assert answers[0][0] == status and json.loads(answers[0][2])["error"] == kind, answers[0]
    assert _y(answers[1]) == [[2.0]]
    _echo_again(gateway)


# --- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish(archive: str, tmp_path: Path) -> None:
    with _gateway(tmp_path, archive) as gateway:
        slow = [gateway.connect() for _ in range(2)]  # (the worker has a thread per core: 2 here)
        for tag, sock in enumerate(slow):
            sock.sendall(_post("/function/echo", {**_body(tag), "probe": {"op": "sleep", "arg": 1}}))
        piped = gateway.connect()
        piped.sendall(_post("/function/echo", {**_body(10), "probe": {"op": "sleep", "arg": 0.5}}) +
                      _post("/function/echo", _body(11)))
        unfinished = gateway.connect()
        request = _post("/function/echo", _body(12))
        unfinished.sendall(request[:-5])
        time.sleep(0.5)
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        unfinished.sendall(request[-5:])  # its body completes after the signal
        for tag, sock in enumerate(slow):
            answer = read_responses(sock, 1)[0]
            assert _y(answer) == [[float(tag)]] and answer[1][b"connection"] == b"close"
        assert [_y(answer) for answer in read_responses(piped, 2)] == [[[10.0]], [[11.0]]]
        assert _y(read_responses(unfinished, 1)[0]) == [[12.0]]
        for sock in (*slow, piped, unfinished):
            sock.close()
        gateway.process.wait(30)
        assert gateway.failures() == []
