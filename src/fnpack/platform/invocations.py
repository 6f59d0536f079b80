"""The gateway's invocation path, inside its HTTP protocol: `POST /function/NAME[:QUALIFIER]` and the
Open Inference Protocol's `/v2/models/NAME[/versions/QUALIFIER]/...`.

Invocations are every request's path, so they bypass ASGI. The request head is parsed by uvicorn's
httptools protocol (with the bounds of http_server.py); for an invocation path, GatewayProtocol takes
the request itself: the body is collected as bytes, the version resolved, and the request written to
a kept-alive worker connection (forward.py); the worker's answer is written to the client from that
connection's callback. While a worker is ready, a request costs no task, no ASGI scope or messages
and no stream buffer. Every other path (the control API, /metrics, health) goes to the ASGI app.

Pipelined requests queue in uvicorn's pipeline, ASGI and invocation alike, and are answered in order;
an Exchange stands in uvicorn's `cycle` slot, so its connection-level handling (a client gone,
graceful shutdown, keep-alive timeout) is uvicorn's own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote, unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from fnpack.errors import FnpackError
from fnpack.http_server import BoundedHttpProtocol
from fnpack.platform import auth
from fnpack.platform.forward import HOP_BY_HOP, Response, end_to_end
from fnpack.platform.service import LocalPlatform
from fnpack.platform.workers import WorkerLost
from fnpack.versions import Qualifier

MAX_BODY = int(os.environ.get("FNPACK_MAX_BODY", 6 * 1024 * 1024))
STATUS = {"usage": 400, "spec": 422, "archive": 422, "not-found": 404, "conflict": 409, "start": 503,
          "worker-lost": 502, "memory-limit": 502, "timeout": 504, "state-folder": 503, "storage-full": 507}
# The platform's credential is the gateway's business: a function never sees the caller's token.
_NOT_FORWARDED = HOP_BY_HOP | {b"authorization"}
_JSON = (b"content-type", b"application/json")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
logger = logging.getLogger("fnpack.gateway")


def status_of(exc: FnpackError) -> int:
    return STATUS.get(exc.kind, 500)


def oip_error(body: dict[str, Any]) -> dict[str, Any]:
    """An error body as Open Inference Protocol clients read it: the human detail in `error` (KServe
    answers `{"error": "..."}`; tritonclient raises InferenceServerException with that field), fnpack's
    own fields kept, the kind under `kind`. The runtime's `oip.error_body` does the same for workers
    (not imported here: it imports numpy)."""
    rest = dict(body)
    kind, message = rest.pop("error", None), str(rest.pop("message", "") or "")
    detail = message or str(kind or "error")
    if rest.get("hint"):
        detail += f" (hint: {rest['hint']})"
    return {"error": detail, "kind": kind, "message": message, **rest}


def error_json(body: dict[str, Any], oip: bool) -> bytes:
    return json.dumps(oip_error(body) if oip else body).encode()


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class Invocations:
    """What every invocation needs: the platform, the invoke token and the access log (or None)."""

    def __init__(self, platform: LocalPlatform, invoke_token: str | None, access_log: Any = None) -> None:
        self.platform = platform
        self.invoke_token = invoke_token
        self.access_log = access_log
        self._qualifiers: dict[bytes, Qualifier] = {}

    def may_invoke(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return not self.invoke_token or auth.bearer_matches(header(headers, b"authorization"), self.invoke_token)

    def qualifier(self, target: bytes) -> Qualifier:
        """`NAME[:QUALIFIER]` of /function/..., parsed once per distinct target, not per request."""
        qualifier = self._qualifiers.get(target)
        if qualifier is None:
            qualifier = Qualifier.parse(unquote(target.decode("latin-1")))  # UsageError for bad names
            if len(self._qualifiers) < 10_000:
                self._qualifiers[target] = qualifier
        return qualifier


class Exchange:
    """One invocation on a client connection, from its head to its answer."""

    # Read by uvicorn's protocol, which takes an Exchange for its RequestResponseCycle.
    response_complete = False
    disconnected = False

    class _NoEvent:
        @staticmethod
        def set() -> None:
            pass

    message_event = _NoEvent()

    def __init__(self, protocol: GatewayProtocol, method: str, raw_path: bytes, query: bytes,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool, expect_continue: bool) -> None:
        self.protocol = protocol
        self.invocations = protocol.invocations
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.began = 0.0  # set when its turn comes (begin): a pipelined request is timed from then
        self.oip = raw_path.startswith(b"/v2/")
        self.chunks: list[bytes] = []
        self.size = 0
        self.body_done = False
        self.started = False  # its turn has come: every request before it on the connection is answered
        self.sent = False  # forwarded, or answered: nothing more to do with its body
        self.qualifier: Qualifier | None = None
        self.worker_path: bytes | str = b"/invoke"  # for /v2/models: the path with `{}` for the version number
        self.alias = ""
        self.pool: Any = None

    # --- the client's side ---------------------------------------------------------------------

    def begin(self) -> None:
        """Its turn: check what the head says (the answer may be an error, then the body is dropped)."""
        if self.protocol.transport.is_closing():  # a pipelined request whose client has gone
            return
        self.started = True
        self.began = time.perf_counter()
        try:
            self._check_head()
            if self.sent:
                return
            if self.size > MAX_BODY:  # a chunked body that went over while it waited its turn: its chunks are gone
                return self._too_large()
            if self.expect_continue:
                self.protocol.transport.write(_CONTINUE)
            if self.body_done:
                self.dispatch()
        except FnpackError as exc:
            self.respond_error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
            self.fail(exc)

    def _check_head(self) -> None:
        invocations = self.invocations
        if self.oip:
            self.qualifier, self.worker_path = _oip_target(self.raw_path[len(b"/v2/models/"):])
        else:
            if self.method != "POST":
                return self.respond(405, error_json({"error": "method_not_allowed",
                                                     "message": f"{self.method} is not allowed; use POST"}, False))
            self.qualifier = invocations.qualifier(self.raw_path[len(b"/function/"):])
        if not invocations.may_invoke(self.headers):
            return self.respond(401, error_json({"error": "unauthorized", "message": "missing or wrong invoke token"},
                                                self.oip), [_JSON, (b"www-authenticate", b"Bearer")])
        length = header(self.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            self._too_large()

    def add_body(self, chunk: bytes) -> None:
        if self.sent:
            return
        self.size += len(chunk)
        if self.size > MAX_BODY:
            self.chunks = []
            if self.started:
                self._too_large()
            return
        self.chunks.append(chunk)

    def body_complete(self) -> None:
        self.body_done = True
        if self.started and not self.sent:
            if self.size > MAX_BODY:
                return self._too_large()
            try:
                self.dispatch()
            except Exception as exc:  # noqa: BLE001
                self.fail(exc)

    def _too_large(self) -> None:
        self.respond(413, error_json({"error": "payload_too_large",
                                      "message": f"the request body is over {MAX_BODY} bytes"}, self.oip))

    # --- on to a worker and back ---------------------------------------------------------------

    def dispatch(self) -> None:
        self.sent = True
        platform = self.invocations.platform
        try:
            route = platform.route(self.qualifier)  # type: ignore[arg-type]
        except FnpackError as exc:
            return self.respond_error(exc)
        pool = self.pool = route.pool
        self.alias = route.alias
        path = self.worker_path if isinstance(self.worker_path, bytes) else \
            self.worker_path.format(pool.number).encode()
        if self.query:
            path += b"?" + self.query
        # HEAD goes on as GET: the response parser would otherwise wait for a body HEAD never gets.
        method = b"GET" if self.method == "HEAD" else self.method.encode()
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        platform.workers.send(pool, method, path, end_to_end(self.headers, _NOT_FORWARDED), body, self.answered)

    def answered(self, result: Response | FnpackError) -> None:
        try:
            self._answer(result)
        except Exception as exc:  # noqa: BLE001 - called by the worker connection: nobody else would answer
            self.fail(exc)

    def _answer(self, result: Response | FnpackError) -> None:
        pool = self.pool
        if isinstance(result, Response) and not 100 <= result.status < 600:  # httptools reads any 3 digits
            result = WorkerLost(f"the worker serving {pool.label} answered with status {result.status}",
                                hint="a worker's status must be 100-599")
        if isinstance(result, Response):
            status, payload, extra = result.status, result.body, end_to_end(result.headers)
        else:
            status, payload, extra = status_of(result), error_json(result.to_dict(), self.oip), [_JSON]
        extra += [(b"x-fnpack-function", pool.function.encode()), (b"x-fnpack-version", str(pool.number).encode())]
        self.respond(status, payload, extra)
        self.invocations.platform.metrics.observe(pool.function, str(pool.number), self.alias, status,
                                                  time.perf_counter() - self.began)

    def fail(self, exc: Exception) -> None:
        """A bug, not the client's or the worker's doing: logged with its traceback, answered 500."""
        logger.error("invocation %s failed", self.raw_path[:200], exc_info=exc)
        if self.response_complete:
            self.protocol.transport.close()
            return
        self.respond(500, error_json({"error": "internal", "message": f"{type(exc).__name__}: {exc}",
                                      "hint": "`fnpack serve`'s output has the traceback", "exit_code": 1}, self.oip))

    def respond_error(self, exc: FnpackError) -> None:
        self.respond(status_of(exc), error_json(exc.to_dict(), self.oip))

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Write the answer (headers: content-type's included; content-length is added) and finish."""
        self.sent = True
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected and not protocol.transport.is_closing():
            # The client is not reading its answers: this one waits until it does, and the requests
            # pipelined behind it with it (uvicorn's ASGI send waits the same way). Else a client that
            # pipelines and never reads has every answer buffered here, until the write timeout.
            protocol.held = lambda: self.respond(status, body, headers)
            return
        self.response_complete = True
        if self.expect_continue and not self.body_done:
            # Answered before the body it was told to send (RFC 9110 10.1.1): the client may never send
            # it, and what it sends next would be read as this body. The connection ends with this answer.
            self.keep_alive = False
        # Closing, not only `disconnected`: uvicorn marks only the newest request on a connection, and a
        # write to a closed uvloop transport raises (a client gone while a request is queued behind this one).
        if not self.disconnected and not protocol.transport.is_closing():
            head = [STATUS_LINE[status]]
            for name, value in headers if headers is not None else (_JSON,):
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
            if not self.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            if self.method != "HEAD":
                head.append(body)
            protocol.transport.write(b"".join(head))
            if not self.keep_alive:
                protocol.transport.close()
        log = self.invocations.access_log
        if log is not None:
            log.line(protocol.client, self.method, self.raw_path, status, self.pool, self.began)
        protocol.on_response_complete()


def _oip_target(rest: bytes) -> tuple[Qualifier, str]:
    """The qualifier of `/v2/models/NAME[/versions/V][/TAIL]` and the worker's path, `{}` for the version."""
    parts = unquote(rest.decode("latin-1")).rstrip("/").split("/")
    name, tail = parts[0], parts[1:]
    chosen = None
    if tail[:1] == ["versions"] and len(tail) >= 2:
        chosen, tail = tail[1], tail[2:]
    qualifier = Qualifier.parse(f"{name}:{chosen}" if chosen else name)  # UsageError for bad names
    # Encoded again: a decoded space or CRLF in the worker's request line would let a client smuggle
    # a second request onto a pooled worker connection.
    suffix = "".join("/" + quote(part, safe="") for part in tail).replace("{", "{{").replace("}", "}}")
    return qualifier, f"/v2/models/{qualifier.name}/versions/{{}}{suffix}"


class GatewayProtocol(BoundedHttpProtocol):
    """The gateway's HTTP protocol: invocations are taken here (Exchange), the rest goes to ASGI."""

    invocations: ClassVar[Invocations]
    held: Callable[[], None] | None = None  # an answer waiting for the client to read those before it

    @classmethod
    def bound(cls, invocations: Invocations) -> type[GatewayProtocol]:
        """The protocol class of a gateway: uvicorn makes one instance per connection, with no arguments of ours."""
        return type(cls.__name__, (cls,), {"invocations": invocations})

    def start_request(self) -> None:
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        if not (raw_path.startswith(b"/function/") or raw_path.startswith(b"/v2/models/")) or \
                self.parser.should_upgrade():
            return super().start_request()
        http_version = self.parser.get_http_version()
        exchange = Exchange(self, self.parser.get_method().decode("ascii"), raw_path, parsed.query or b"",
                            self.headers, http_version != "1.0" and self.parser.should_keep_alive(),
                            self.expect_100_continue)
        previous, self.cycle = self.cycle, exchange  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            exchange.begin()
        else:  # pipelined: its turn comes when the answer before it is complete (uvicorn's queue)
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, None))  # type: ignore[arg-type]

    def resume_writing(self) -> None:
        super().resume_writing()
        self._release_held()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._release_held()  # not written now: the transport is closed; logged, and the request finished

    def _release_held(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if cycle.__class__ is Exchange:  # the next pipelined request: later, not within the answer before it
            self.loop.call_soon(cycle.begin)
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.__class__ is Exchange:
            self._body_bytes += len(body)
            return cycle.add_body(body)  # type: ignore[attr-defined]
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle.__class__ is Exchange:
            self._body_bytes = -1
            return cycle.body_complete()  # type: ignore[attr-defined]
        super().on_message_complete()
