"""The alias router (fnpack.router) as an OpenFaaS deployment runs it: `python -m fnpack.worker` with FNPACK_ROUTE
and PORT in its environment and no arguments, as a real process on a real socket, with only the runtime image's
packages (the `worker` extra: no pydantic, numpy or onnxruntime), in front of a tiny stand-in for the gateway
(a stdlib HTTP server, a process of its own) that answers /function/NAME-vN[/path] with what it received."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from servers import free_port, stop, wait_ready

from fnpack.errors import UsageError
from fnpack.router import RouterApp, parse_route
from fnpack.versions import AliasState, WeightedRouter

REPO = Path(__file__).resolve().parent.parent
MAX_BODY = 2 * 1024 * 1024  # FNPACK_ROUTE_MAX_BODY of the routers here

# The stand-in for the gateway: /function/NAME-vN[/rest] answers, as JSON, what arrived (version, method, path,
# query, headers, body or its hash); /function/NAME-vN/slow?s=SECONDS sleeps first; /function/NAME-vN/chunked
# answers in chunks; GET /inflight counts the slow requests in progress. Keep-alive (HTTP/1.1), as the gateway.
UPSTREAM = r'''
import hashlib, json, re, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

inflight = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a head and a body written apart: no 40 ms wait for the head's ACK

    def log_message(self, *args):
        pass

    def answer(self, status, data, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.path.split("?")[0].endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(data) // 2
            for part in (data[:half], data[half:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        global inflight
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = urllib.parse.urlsplit(self.path)
        if target.path == "/inflight":
            return self.answer(200, json.dumps({"inflight": inflight}).encode())
        if target.path.endswith("/broken"):  # a body cut short: 10 bytes of the 100 announced, then closed
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        match = re.fullmatch(r"/function/([a-z0-9-]+?)-v([0-9]+)(/.*)?", target.path)
        if not match:
            return self.answer(404, b"no such function")
        function, version, rest = match.group(1), int(match.group(2)), match.group(3) or ""
        if rest == "/slow":
            with lock:
                inflight += 1
            try:
                time.sleep(float(urllib.parse.parse_qs(target.query)["s"][0]))
            finally:
                with lock:
                    inflight -= 1
        payload = {"function": function, "version": version, "method": self.command, "path": rest,
                   "query": target.query, "headers": [[k.lower(), v] for k, v in self.headers.items()],
                   "body": body.decode("latin-1") if len(body) <= 4096 else None,
                   "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self.answer(200, json.dumps(payload).encode(),
                    [("Content-Type", "application/json"), ("X-Upstream-Version", str(version)),
                     ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Keep-Alive", "timeout=30"),
                     ("Connection", "keep-alive, X-Upstream-Hop"), ("X-Upstream-Hop", "1"),
                     ("X-Fnpack-Version", "999")])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
'''


# --- the image's packages -----------------------------------------------------------------------------------------


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions `pip install REQUIREMENTS` would bring (markers evaluated, no extras)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in seen:
            seen.add(name)
            todo += [Requirement(r) for r in importlib.metadata.distribution(name).requires or []]
    return seen


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fnpack (src/) and the `worker` extra's distributions, linked into one folder: what the image installs.
    `python -S` with it on PYTHONPATH sees nothing else of this environment."""
    import importlib.metadata

    site = tmp_path_factory.mktemp("image-site")
    (site / "fnpack").symlink_to(REPO / "src" / "fnpack")
    worker = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    for name in closure(worker):
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if top not in ("..", "fnpack") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


def image_env(site: Path, **env: str) -> dict[str, str]:
    """The environment of an OpenFaaS replica of the runtime image, here: its image's env, PORT, HOST, PATH."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(site), "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1",
            "HOST": "127.0.0.1", **env}


def run_worker(site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-S", "-m", "fnpack.worker"], env=image_env(site, **env),
                          capture_output=True, text=True, timeout=60)


# --- processes ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The gateway's stand-in; its port."""
    with gateway_stand_in(tmp_path_factory.mktemp("upstream")) as port:
        yield port


@contextlib.contextmanager
def gateway_stand_in(folder: Path, port: int | None = None) -> Iterator[int]:
    port = port or free_port()
    script = folder / "upstream.py"
    script.write_text(UPSTREAM)
    process = subprocess.Popen([sys.executable, "-S", str(script), str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready", process.stderr
        yield port
    finally:
        stop(process)


@dataclass
class Router:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def logs(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def router(site: Path, folder: Path, route: dict, **env: str) -> Iterator[Router]:
    """`python -m fnpack.worker` with FNPACK_ROUTE and PORT, as an OpenFaaS replica of the router."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"router-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-S", "-m", "fnpack.worker"], stdout=out, stderr=out, text=True,
                                   env=image_env(site, FNPACK_ROUTE=json.dumps(route), PORT=str(port),
                                                 FNPACK_ROUTE_MAX_BODY=str(MAX_BODY), **env))
    served = Router(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(f"{served.url}/_/health", process, timeout=30)
        yield served
    except BaseException:
        print(served.logs(), file=sys.stderr)
        raise
    finally:
        stop(process)
    assert "Traceback" not in served.logs(), served.logs()


def route_to(port: int, primary: int = 1, canary: int | None = None, weight: float | None = None) -> dict:
    route = {"function": "iris", "alias": "live", "primary": primary,
             "upstream": f"http://127.0.0.1:{port}/function/{{function}}-v{{version}}"}
    if canary is not None:
        route["canary"] = canary
    if weight is not None:
        route["weight"] = weight
    return route


@pytest.fixture(scope="module")
def primary_only(image_site: Path, upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with router(image_site, tmp_path_factory.mktemp("primary"), route_to(upstream, primary=3)) as served:
        yield served


@pytest.fixture(scope="module")
def canary(image_site: Path, upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with router(image_site, tmp_path_factory.mktemp("canary"), route_to(upstream, 1, canary=2, weight=0.1)) as served:
        yield served


def client() -> httpx.Client:
    # TCP_NODELAY: httpcore writes a request's head and body apart (Nagle would hold the body 40 ms).
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(trust_env=False, timeout=30, transport=transport)


# --- picking ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_the_router_picks_as_the_shared_weighted_router_does(weight):
    """The router picks with fnpack.versions.WeightedRouter, as the local platform does: exact shares."""
    route = parse_route(json.dumps({"function": "f", "alias": "live", "primary": 1, "canary": 2, "weight": weight,
                                    "upstream": "http://127.0.0.1:9/{function}-v{version}"}))
    own = RouterApp(route, {}).picker
    shared = WeightedRouter(AliasState(1, 2, weight))
    picks = [own.pick() for _ in range(2000)]
    assert picks == [shared.pick() for _ in range(2000)]
    for n in range(1, 2001):
        assert abs(picks[:n].count(2) - n * weight) <= 1


# --- FNPACK_ROUTE and the worker's arguments ----------------------------------------------------------------------


def bad(**fields: object) -> str:
    """A route's JSON: a valid one with `fields` changed (None: left out)."""
    route = {"function": "iris", "alias": "live", "primary": 1, "upstream": "http://g/function/{function}-v{version}"}
    route.update(fields)
    return json.dumps({k: v for k, v in route.items() if v is not None})


@pytest.mark.parametrize(("route", "says"), [
    ('{"function": "iris"', "not valid JSON"),
    ("[1, 2]", "not an object"),
    (bad(upstream=None), "lacks upstream"),
    (bad(function=None, alias=None), "lacks alias, function"),
    (bad(canary=2, wieght=0.1), "unknown field(s) 'wieght'"),
    (bad(primary=0), "primary 0"),
    (bad(primary=True), "primary True"),
    (bad(primary="1"), "primary '1'"),
    (bad(canary=1, weight=0.5), "canary is its primary"),
    (bad(canary=2, weight=1.5), "weight 1.5"),
    (bad(canary=2, weight="10%"), "weight '10%'"),
    (bad(weight=0.5), "no canary"),
    (bad(upstream="gateway:8080/function/{function}-v{version}"), "not an http"),
    (bad(upstream="http://g/function/{name}-v{version}"), "only placeholders"),
    (bad(upstream="http://g/function/{function}"), "has no {version}"),
    (bad(function="Iris!"), "function 'Iris!'"),
    (bad(alias=""), "alias ''"),
])
def test_a_route_that_is_not_valid_is_refused_with_what_is_wrong(route, says):
    with pytest.raises(UsageError) as caught:
        parse_route(route)
    assert says in f"{caught.value.message}\n{caught.value.hint}" and caught.value.exit_code == 2


def test_the_worker_exits_2_on_a_route_that_is_not_json_or_lacks_fields(image_site):
    for route, says in (("{not json", "FNPACK_ROUTE is not valid JSON"),
                        ('{"function": "iris", "primary": 1}', "FNPACK_ROUTE lacks alias, upstream")):
        done = run_worker(image_site, FNPACK_ROUTE=route, PORT=str(free_port()))
        assert done.returncode == 2, done.stderr
        assert f"error: {says}" in done.stderr and "hint: FNPACK_ROUTE is a JSON object" in done.stderr
        assert "Traceback" not in done.stderr
    done = run_worker(image_site, FNPACK_ROUTE=json.dumps(route_to(1)), FNPACK_ROUTE_TIMEOUT="soon")
    assert done.returncode == 2 and "FNPACK_ROUTE_TIMEOUT='soon' is not a positive number" in done.stderr


def test_the_worker_without_an_archive_or_a_route_exits_2_naming_the_variables_and_the_flags(image_site):
    done = run_worker(image_site)
    assert done.returncode == 2, done.stderr
    assert "error: no archive to serve: FNPACK_ARCHIVE (--archive) and FNPACK_SHA256 (--sha256) are not set" \
        in done.stderr and "FNPACK_ROUTE" in done.stderr and "Traceback" not in done.stderr
    done = run_worker(image_site, FNPACK_ARCHIVE="s3://models/iris.zip")
    assert done.returncode == 2 and "FNPACK_SHA256 (--sha256) is not set" in done.stderr
    done = run_worker(image_site, FNPACK_ARCHIVE="s3://models/iris.zip", FNPACK_SHA256="ab" * 32,
                      FNPACK_ROUTE=json.dumps(route_to(1)))
    assert done.returncode == 2 and "a worker serves one or the other" in done.stderr


def test_the_worker_reads_its_archive_from_the_environment(image_site, tmp_path):
    """FNPACK_ARCHIVE and FNPACK_SHA256 are what --archive and --sha256 would be: an archive of another hash is
    refused as with the flags (serving a real archive is the runtime images' tests' part)."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    done = run_worker(image_site, FNPACK_ARCHIVE=archive.as_uri(), FNPACK_SHA256="ab" * 32,
                      FNPACK_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode != 0 and f"sha256 mismatch: expected {'ab' * 32}" in done.stderr, done.stderr
    flags = subprocess.run([sys.executable, "-S", "-m", "fnpack.worker", "--archive", archive.as_uri(),
                            "--sha256", "ab" * 32], env=image_env(image_site, FNPACK_CACHE_DIR=str(tmp_path / "c2")),
                           capture_output=True, text=True, timeout=60)
    assert flags.returncode == done.returncode and flags.stderr == done.stderr


def test_the_runtime_images_start_with_no_arguments():
    """No CMD (the old `--help` printed the usage and exited): an OpenFaaS deployment passes no arguments."""
    for name in ("Dockerfile", "Dockerfile.cuda"):
        lines = [line for line in (REPO / "runtimes" / "container" / name).read_text().splitlines()
                 if not line.lstrip().startswith("#")]
        assert not [line for line in lines if line.split()[:1] == ["CMD"]], name
        assert 'ENTRYPOINT ["python", "-m", "fnpack.worker"]' in lines


# --- routing ------------------------------------------------------------------------------------------------------


def test_health_answers_at_once_with_the_route(primary_only, upstream):
    with client() as http:
        for path in ("/_/health", "/healthz"):
            answer = http.get(primary_only.url + path)
            assert answer.status_code == 200 and answer.json() == route_to(upstream, primary=3)
            assert "x-fnpack-version" not in answer.headers
        assert http.head(primary_only.url + "/healthz").status_code == 200


def test_every_request_reaches_the_primary_without_a_canary(primary_only):
    with client() as http:
        for _ in range(50):
            answer = http.post(primary_only.url + "/", json={"x": 1})
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == 3 and answer.json()["function"] == "iris"
            assert answer.headers["x-fnpack-version"] == "3" and answer.headers["x-fnpack-alias"] == "live"


def test_a_ten_percent_canary_gets_its_exact_share_sequentially(canary):
    n, seen = 500, {1: 0, 2: 0}
    with client() as http:
        for _ in range(n):
            answer = http.post(canary.url + "/", json={"sepal_length": 5.1})
            assert answer.status_code == 200, answer.text
            version = answer.json()["version"]
            assert answer.headers["x-fnpack-version"] == str(version)  # the router's header, not the upstream's
            seen[version] += 1
    assert abs(seen[2] - round(n * 0.1)) <= 1 and seen[1] + seen[2] == n, seen


def test_a_ten_percent_canary_gets_its_share_under_concurrent_clients(canary):
    def requests(count: int) -> list[int]:
        with client() as http:
            versions = []
            for _ in range(count):
                answer = http.post(canary.url + "/v2/models/iris/infer", content=b"{}")
                assert answer.status_code == 200, answer.text
                versions.append(int(answer.headers["x-fnpack-version"]))
            return versions

    with ThreadPoolExecutor(8) as pool:
        versions = [v for batch in pool.map(requests, [60] * 8) for v in batch]
    # Picks are made one at a time on the router's event loop: the share is as exact as sequentially.
    assert len(versions) == 480 and abs(versions.count(2) - 48) <= 1, versions.count(2)


def test_method_path_query_headers_and_body_arrive_intact(primary_only, upstream):
    sent = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    with client() as http:
        # The gateway hands the router what follows /function/iris: "/" for the function's root.
        root = http.post(primary_only.url + "/", json=sent,
                         headers={"X-Custom": "kept", "Authorization": "Bearer t", "Connection": "keep-alive, X-Hop",
                                  "X-Hop": "dropped", "Keep-Alive": "timeout=5"})
        arrived = root.json()
        assert root.status_code == 200 and arrived["method"] == "POST" and arrived["path"] == "/"
        assert arrived["body"].encode("latin-1") == root.request.content and json.loads(arrived["body"]) == sent
        headers = dict(arrived["headers"])
        assert headers["x-custom"] == "kept" and headers["authorization"] == "Bearer t"
        assert headers["content-type"] == "application/json" and headers["host"] == f"127.0.0.1:{upstream}"
        assert "x-hop" not in headers and "keep-alive" not in headers
        assert headers["content-length"] == str(len(root.request.content))
        # The answer: the upstream's status, headers (repeated ones too) and body; its hop-by-hop ones dropped.
        assert root.headers["content-type"] == "application/json" and root.headers["x-upstream-version"] == "3"
        assert root.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert "keep-alive" not in root.headers and "x-upstream-hop" not in root.headers
        assert root.headers.get_list("x-fnpack-version") == ["3"]

        sub = http.post(primary_only.url + "/v2/models/iris/infer?verbose=1&name=a%20b%26c", json=sent)
        assert sub.json()["path"] == "/v2/models/iris/infer" and sub.json()["query"] == "verbose=1&name=a%20b%26c"
        assert json.loads(sub.json()["body"]) == sent
        assert http.get(primary_only.url + "/a%2Fb/c%20d").json()["path"] == "/a%2Fb/c%20d"  # as sent, not decoded

        blob = os.urandom(MAX_BODY)
        put = http.put(primary_only.url + "/blob", content=blob)
        assert put.json()["method"] == "PUT" and put.json()["length"] == len(blob)
        import hashlib

        assert put.json()["sha256"] == hashlib.sha256(blob).hexdigest()
        assert http.delete(primary_only.url + "/x").json()["method"] == "DELETE"
        head = http.head(primary_only.url + "/x")
        assert head.status_code == 200 and head.content == b"" and head.headers["x-fnpack-version"] == "3"
        chunked = http.get(primary_only.url + "/chunked?q=1")
        assert chunked.status_code == 200 and chunked.json()["query"] == "q=1"
        assert chunked.headers["x-fnpack-version"] == "3"


def raw_request(url: str, head: bytes) -> bytes:
    """One request as these bytes (no client library normalizes its path), the answer's head."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize("target", [b"/../../system/functions", b"/x/../../iris-v9/", b"/%2e%2E/%2E%2e/system/info",
                                    b"/./x"])
def test_a_path_that_would_climb_out_of_the_versions_url_is_refused(primary_only, target):
    """httpx resolves dot segments: /../../system/functions after /function/iris-v3 would reach the gateway's
    API (or another function) from inside the cluster."""
    answer = raw_request(primary_only.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    ok = raw_request(primary_only.url, b"GET /a..b/.well-known HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok


def test_a_body_over_the_limit_is_refused_and_the_router_keeps_serving(primary_only):
    with client() as http:
        over = http.post(primary_only.url + "/", content=b"x" * (MAX_BODY + 1))
        assert over.status_code == 413 and over.json()["error"] == "payload_too_large"
        assert "FNPACK_ROUTE_MAX_BODY" in over.json()["message"]

        def trickle() -> Iterator[bytes]:  # no content-length: counted as it comes
            for _ in range(3):
                yield b"y" * (MAX_BODY // 2)

        assert http.post(primary_only.url + "/", content=trickle()).status_code == 413
    with client() as http:
        assert http.post(primary_only.url + "/", json={}).status_code == 200


def test_an_upstream_that_is_down_or_slow_is_a_502_and_the_router_keeps_serving(image_site, tmp_path):
    port = free_port()  # nothing listens there yet
    with router(image_site, tmp_path, route_to(port, 4), FNPACK_ROUTE_TIMEOUT="1") as served, client() as http:
        for _ in range(3):
            down = http.post(served.url + "/", json={"x": 1})
            assert down.status_code == 502 and down.headers["content-type"] == "application/json"
            body = down.json()
            assert body["error"] == "upstream_unreachable" and body["version"] == 4
            assert f"127.0.0.1:{port}/function/iris-v4/" in body["message"] and "ConnectError" in body["message"]
            assert down.headers["x-fnpack-version"] == "4"
            assert http.get(served.url + "/_/health").status_code == 200
        with gateway_stand_in(tmp_path, port):  # the same router, once the upstream is there
            assert http.post(served.url + "/", json={"x": 1}).json()["version"] == 4
            began = time.monotonic()
            slow = http.post(served.url + "/slow?s=5", json={})
            assert slow.status_code == 502 and slow.json()["error"] == "upstream_unreachable"
            assert "within 1 s (FNPACK_ROUTE_TIMEOUT)" in slow.json()["message"]
            assert time.monotonic() - began < 4
            assert http.post(served.url + "/", json={"x": 1}).status_code == 200
    assert "v4 unreachable" in served.logs()


def test_an_answer_cut_short_closes_the_clients_connection_and_the_router_keeps_serving(primary_only):
    """Its head is sent already: the client must see a truncated answer (never a complete-looking one)."""
    with client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(primary_only.url + "/broken")
        assert http.get(primary_only.url + "/x").status_code == 200
    assert "v3's answer to GET" in primary_only.logs() and "broke off" in primary_only.logs()


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(image_site, upstream, tmp_path):
    with router(image_site, tmp_path, route_to(upstream, 5)) as served:
        result: dict[str, object] = {}

        def slow() -> None:
            try:
                with client() as http:
                    answer = http.post(served.url + "/slow?s=2", json={"in": "flight"})
                    result["answer"] = (answer.status_code, answer.json()["version"])
            except Exception as exc:  # noqa: BLE001 (reported by the assert below)
                result["answer"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{upstream}/inflight", trust_env=False).json()["inflight"] < 1:
            assert time.monotonic() < deadline, "the slow request never reached the upstream"
            time.sleep(0.02)
        served.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["answer"] == (200, 5)
        assert served.process.wait(30) == 0


def test_two_hundred_sequential_requests_take_well_under_a_few_seconds(primary_only):
    with client() as http:
        http.post(primary_only.url + "/", json={})  # the router's upstream connection is open
        began = time.monotonic()
        for _ in range(200):
            assert http.post(primary_only.url + "/", json={"sepal_length": 5.1}).status_code == 200
        assert time.monotonic() - began < 5
