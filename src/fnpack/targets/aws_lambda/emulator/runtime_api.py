"""Lambda's side of the Runtime API (docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html), on loopback.

One `RuntimeAPIServer` per execution environment (`environment.Runtime`): awslambdaric asks it for the
next event, posts the answer or the error of each invocation, or the error of its init phase; the
handler turns those requests into calls on the environment and answers as Lambda does.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from fnpack.targets.aws_lambda.emulator.result import MAX_PAYLOAD, lambda_error

if TYPE_CHECKING:
    from fnpack.targets.aws_lambda.emulator.environment import Runtime

_API = "/2018-06-01/runtime"
_INVOCATION_PATH = re.compile(rf"^{_API}/invocation/([^/]+)/(response|error)$")


class RuntimeAPIServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread: nothing outlives close()
    block_on_close = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__(("127.0.0.1", 0), _RuntimeAPIHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed runtime drops its connections
            super().handle_error(request, client_address)


class _RuntimeAPIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # awslambdaric (libcurl) keeps its connection alive
    server: RuntimeAPIServer

    def log_message(self, format: str, *args: Any) -> None:  # the runtime's own log is what matters
        pass

    def do_GET(self) -> None:
        if self.path != f"{_API}/invocation/next":
            return self._answer(404, lambda_error("NotFound", f"no route GET {self.path}"))
        call = self.server.runtime.next_event()
        if call is None:  # the environment is shutting down
            return self._answer(500, lambda_error("Runtime.Shutdown", "the environment is shutting down"))
        self._answer(200, call.body, {
            "Lambda-Runtime-Aws-Request-Id": call.request_id,
            "Lambda-Runtime-Deadline-Ms": str(call.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.server.runtime.arn,
            "Lambda-Runtime-Trace-Id": _trace_id(),
        })

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._answer(411, lambda_error("LengthRequired", "send a Content-Length"))
        if int(length) > 4 * MAX_PAYLOAD:  # do not even read it
            self.close_connection = True
            return self._answer(413, lambda_error("RequestEntityTooLarge", "payload too large"))
        body = self.rfile.read(int(length))
        runtime = self.server.runtime
        if self.path == f"{_API}/init/error":
            runtime.fail_init(_json_or_text(body))
            return self._answer(202, {"status": "OK"})
        match = _INVOCATION_PATH.match(self.path)
        if not match:
            return self._answer(404, lambda_error("NotFound", f"no route POST {self.path}"))
        request_id, kind = match.groups()
        if kind == "response" and len(body) > MAX_PAYLOAD:
            runtime.finish(request_id, "error", lambda_error(
                "Function.ResponseSizeTooLarge",
                f"Response payload size ({len(body)} bytes) exceeded the maximum allowed ({MAX_PAYLOAD} bytes)."))
            return self._answer(413, lambda_error("RequestEntityTooLarge", "response payload too large"))
        payload = _json_or_text(body)
        if not runtime.finish(request_id, "ok" if kind == "response" else "error", payload):
            return self._answer(400, lambda_error("InvalidRequestID", f"no invocation {request_id} awaits a {kind}"))
        self._answer(202, {"status": "OK"})

    def _answer(self, status: int, body: bytes | dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"
