"""The function behind a Lambda Function URL: HTTP requests in, invocations of a `LocalLambda`, HTTP out.

- `url_event`: the event a Function URL sends for one request (payload format 2.0).
- `url_response`: what the Function URL answers for the invocation's result.
- `serve_http`: a front HTTP server on loopback doing both for each request (`fnpack run --as lambda --port`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fnpack.errors import UsageError
from fnpack.targets.aws_lambda.emulator.result import MAX_PAYLOAD, InvokeResult

if TYPE_CHECKING:
    from fnpack.targets.aws_lambda.emulator.local import LocalLambda


def url_event(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b"", *,
              source_ip: str = "127.0.0.1", protocol: str = "HTTP/1.1") -> dict[str, Any]:
    """The event a Lambda Function URL sends for one request (payload format 2.0).

    target: the request target, path and query ("/invoke?x=1"). The body is always base64-encoded.
    """
    path, _, query = target.partition("?")
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":  # Function URLs move cookies out of the headers
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            joined[name] = f"{joined[name]},{value}" if name in joined else value
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path or "/",
        "rawQueryString": query,
        "headers": joined,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": joined.get("host", "localhost"),
            "domainPrefix": "local",
            "http": {"method": method.upper(), "path": path or "/", "protocol": protocol,
                     "sourceIp": source_ip, "userAgent": joined.get("user-agent", "")},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": bool(body),
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        event["body"] = base64.b64encode(body).decode()
    return event


def url_response(result: InvokeResult) -> tuple[int, list[tuple[str, str]], bytes]:
    """What a Function URL answers for an invocation's result: (status, headers, body)."""
    if result.status != "ok":  # the caller sees no details; they are in the function's logs
        return 502, [("content-type", "application/json")], b'{"Message":"Internal Server Error"}'
    payload = result.payload
    if not isinstance(payload, dict) or "statusCode" not in payload:
        # Lambda's rule: JSON without a statusCode is the body of a 200 application/json answer.
        return 200, [("content-type", "application/json")], json.dumps(payload).encode()
    headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
    headers += [("set-cookie", str(c)) for c in payload.get("cookies") or []]
    body = payload.get("body") or ""
    if not isinstance(body, str):
        body = json.dumps(body)
    data = base64.b64decode(body) if payload.get("isBase64Encoded") else body.encode()
    return int(payload["statusCode"]), headers, data


_DRAIN_MAX = 4 * MAX_PAYLOAD  # the most of a refused body the front server reads before answering


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True

    def __init__(self, local: LocalLambda, address: tuple[str, int]) -> None:
        self.local = local
        super().__init__(address, _FrontHandler)


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a silent client must not hold a thread (and shutdown) forever
    server: _FrontServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.local.log(f"{self.address_string()} - {format % args}\n")

    def _handle(self) -> None:
        self.close_connection = True  # one request per connection: shutdown never waits on idle clients
        length = self.headers.get("Content-Length", "0")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or not length.isdigit():
            return self._send(411, [("content-type", "application/json")], b'{"Message":"Length Required"}')
        if int(length) > MAX_PAYLOAD:
            self._discard(int(length))
            return self._send(413, [("content-type", "application/json")], b'{"Message":"Request Entity Too Large"}')
        body = self.rfile.read(int(length))
        event = url_event(self.command, self.path, self.headers.items(), body, source_ip=self.client_address[0],
                          protocol=self.request_version)
        event["headers"].update({"x-forwarded-for": self.client_address[0], "x-forwarded-proto": "http",
                                 "x-forwarded-port": str(self.server.server_address[1])})
        self._send(*url_response(self.server.local.invoke(event)))

    def _discard(self, length: int) -> None:
        """Read a refused body before answering: closing on unread bytes resets the connection, and the
        reset can destroy the answer before the client reads it. Past _DRAIN_MAX, closing is cheaper."""
        length = min(length, _DRAIN_MAX)
        while length > 0 and (chunk := self.rfile.read(min(length, 1 << 16))):
            length -= len(chunk)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # HTTP/1.1 keeps a connection alive unless the answer says otherwise: a client would
        # send its next request on a connection this server is closing.
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


def serve_http(local: LocalLambda, host: str = "127.0.0.1", port: int = 0, *,
               on_ready: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> None:
    """Serve the function as its Function URL would, until Ctrl-C or `stop` is set.

    port 0 picks a free port; on_ready gets the URL once the socket listens.
    """
    try:
        server = _FrontServer(local, (host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="pick another --port, or 0 for any free one") from exc
    stop = stop or threading.Event()
    try:
        if on_ready:
            on_ready(f"http://{host}:{server.server_address[1]}")
    except BaseException:
        server.server_close()
        raise
    # serve_forever() has no stop flag of its own: a watcher turns `stop` into shutdown().
    def watch() -> None:
        stop.wait()
        server.shutdown()

    watcher = threading.Thread(target=watch, name="lambda-http-stop", daemon=True)
    watcher.start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        watcher.join(timeout=10)
        server.server_close()
