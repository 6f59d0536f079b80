"""Every client gets its own answer: the gateway's forwarding on kept-alive worker connections.

The echo function answers with its input, so each request carries a distinct value and checks it
came back. Before the fix, one `Expect: 100-continue` (curl sends it on bodies over 1 MB) made the
gateway take the worker's interim `100 Continue` for the answer and hand the real answer to the
next client: from then on every client of the function got the previous client's answer.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from functions import build_probe
from servers import platform, read_responses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A platform serving the echo function as `echo`; yields the platform's URL."""
    tmp = tmp_path_factory.mktemp("forwarding")
    built = build_probe(tmp / "src", "echo", tmp / "dist", {"scaling": {"max": 2, "target_concurrency": 4}})
    state = tmp / "state"
    with platform(state) as url:
        token = (state / "token").read_text().strip()
        control = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60)
        deployed = control.post("/api/v1/functions/echo/versions", content=Path(built["archive"]).read_bytes())
        assert deployed.status_code == 201, deployed.text
        assert control.put("/api/v1/functions/echo/aliases/live", json={"primary": 1}).status_code == 200
        yield url


def _body(tag: int, width: int = 4) -> dict:
    return {"x": [[float(tag)] * width]}


def _check(response: httpx.Response, tag: int, width: int = 4) -> None:
    assert response.status_code == 200, response.text[:300]
    assert response.json()["y"] == [[float(tag)] * width], f"request {tag} got another request's answer"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_expect_100_continue_then_plain_requests_each_get_their_own_answer(echo: str, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    width = 200_000  # about 1.4 MB of JSON: curl sends Expect: 100-continue on its own
    big.write_text(json.dumps(_body(7, width)))
    done = subprocess.run(["curl", "-sS", "--max-time", "30", "-H", "content-type: application/json",
                           "-H", "Expect: 100-continue", "-X", "POST", f"{echo}/function/echo",
                           "--data-binary", f"@{big}", "-w", "\n%{http_code}"],
                          capture_output=True, text=True, timeout=60)
    body, _, code = done.stdout.rpartition("\n")
    assert code == "200", done.stdout[-300:] + done.stderr
    assert json.loads(body)["y"] == [[7.0] * width]
    with httpx.Client(timeout=30) as client:
        for tag in (8, 9, 10):
            _check(client.post(f"{echo}/function/echo", json=_body(tag)), tag)


def test_many_concurrent_clients_each_get_their_own_answer(echo: str) -> None:
    """Plain, `Expect: 100-continue`, large and chunked bodies, mixed on the same worker connections."""

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            for i in range(12):
                tag = worker * 1000 + i
                kind = (worker + i) % 4
                if kind == 0:
                    response = http.post(f"{echo}/function/echo", json=_body(tag))
                    _check(response, tag)
                elif kind == 1:
                    response = http.post(f"{echo}/function/echo", json=_body(tag),
                                         headers={"expect": "100-continue"})
                    _check(response, tag)
                elif kind == 2:  # large: about 700 kB
                    response = http.post(f"{echo}/function/echo:live", json=_body(tag, 100_000),
                                         headers={"expect": "100-continue"})
                    _check(response, tag, 100_000)
                else:  # chunked: a body of unknown length, sent in pieces
                    data = json.dumps(_body(tag)).encode()
                    pieces = iter([data[:5], data[5:17], data[17:]])
                    response = http.post(f"{echo}/function/echo", content=pieces,
                                         headers={"content-type": "application/json"})
                    _check(response, tag)

    with ThreadPoolExecutor(24) as pool:
        for future in [pool.submit(client, w) for w in range(24)]:
            future.result()


def test_head_is_answered_without_a_body_and_leaves_the_connection_in_step(echo: str) -> None:
    with httpx.Client(timeout=30) as client:
        head = client.head(f"{echo}/v2/models/echo")
        assert head.status_code == 200 and head.content == b""
        _check(client.post(f"{echo}/function/echo", json=_body(4)), 4)
        assert client.get(f"{echo}/v2/models/echo").json()["name"] == "echo"


def test_a_request_line_smuggled_in_an_encoded_path_reaches_no_other_client(echo: str) -> None:
    """uvicorn decodes the path: a CRLF in it must not end the worker's request line and start a
    second request on a pooled worker connection, whose answer another client would then get."""
    smuggled = ("/v2/models/echo/ready%20HTTP/1.1%0D%0Ahost:%20x%0D%0A%0D%0A"
                "POST%20/invoke%20HTTP/1.1%0D%0Ahost:%20x%0D%0Acontent-type:%20application/json%0D%0A"
                "content-length:%2013%0D%0A%0D%0A%7B%22x%22:%5B%5B666%5D%5D%7D")

    def attack() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(40):
                assert client.get(echo + smuggled).status_code in (400, 404)

    def honest(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(40):
                _check(client.post(f"{echo}/function/echo", json=_body(worker * 100 + i)), worker * 100 + i)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(attack) for _ in range(4)] + [pool.submit(honest, w) for w in range(1, 5)]:
            future.result()


def _post(path: str, body: dict, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


def test_pipelined_requests_are_answered_in_order_each_with_its_own(echo: str) -> None:
    """Invocations, a slow one, control and error answers, pipelined on one connection in one write,
    then 3000 requests refused at their head (each answered as its turn comes: none is lost, none
    answered out of order, and the gateway does not recurse once per queued request)."""
    port = int(echo.rsplit(":", 1)[1])
    wrong_method = b"GET /function/echo HTTP/1.1\r\nhost: x\r\n\r\n"
    requests = [_post("/function/echo", _body(1)), b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
                _post("/function/echo", {**_body(2), "probe": {"op": "sleep", "arg": 0.3}}), wrong_method,
                _post("/function/echo:live?q=1", _body(3), "expect: 100-continue\r\n"),
                _post("/v2/models/echo/versions/1/infer", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                                                        "data": [4.0, 4.0]}]})]
    requests += [wrong_method] * 3000 + [_post("/function/echo", _body(5))]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"".join(requests))
        answers = read_responses(sock, len(requests) + 1)  # + the interim 100 Continue
    assert len(answers) == len(requests) + 1, f"the gateway closed the connection after {len(answers)} answers"
    statuses = [status for status, _, _ in answers]
    assert statuses[:7] == [200, 200, 200, 405, 100, 200, 200], statuses[:8]
    assert json.loads(answers[0][2])["y"] == [[1.0] * 4]
    assert json.loads(answers[1][2]) == {"status": "ok"}
    assert json.loads(answers[2][2])["y"] == [[2.0] * 4]  # the slow one's answer, in its place
    assert json.loads(answers[5][2])["y"] == [[3.0] * 4]
    assert json.loads(answers[6][2])["outputs"][0]["data"] == [4.0, 4.0]
    assert statuses[7:-1] == [405] * 3000
    assert answers[-1][0] == 200 and json.loads(answers[-1][2])["y"] == [[5.0] * 4]
    assert answers[0][1][b"x-fnpack-version"] == b"1"


def test_a_client_gone_before_its_answer_leaves_no_answer_for_another(echo: str) -> None:
    """Clients that send a slow request and hang up: the answer each leaves behind on a worker
    connection is read and dropped, never handed to the next request sent on that connection."""
    port = int(echo.rsplit(":", 1)[1])
    for tag in range(8):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post("/function/echo", {**_body(666 + tag), "probe": {"op": "sleep", "arg": 0.2}}))
    with httpx.Client(timeout=30) as client:
        for tag in range(40):
            _check(client.post(f"{echo}/function/echo", json=_body(tag)), tag)
