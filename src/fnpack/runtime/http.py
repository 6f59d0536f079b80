"""The function's HTTP interface as a plain ASGI app (no framework: its import time is the cold start).

Routes: POST /invoke or POST / (JSON, one record or a list), the Open Inference
Protocol v2 (/v2/...), GET /healthz and /_/health, GET /metrics.
Model work runs on a thread pool (onnxruntime releases the GIL) under the
function's timeout; the event loop only parses, routes and answers. An app made
`inline` (the Lambda handler's: one event at a time, Lambda's own timeout) runs
it in the caller instead, with no pool, no asyncio and no timer.

Imports are lazy where a path does not need them (the pool, batching, the Open
Inference Protocol codec): this module is part of every Lambda cold start.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fnpack.runtime.function import BadRequest, CallTimedOut, Function, RequestError, loads
from fnpack.runtime.logs import log
from fnpack.runtime.metrics import Metrics

if TYPE_CHECKING:
    from fnpack.runtime.watchdog import GuardedPool

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
DEFAULT_MAX_BODY = 6 * 1024 * 1024  # Lambda's synchronous payload limit
JSON = b"application/json"


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": error, "message": message, **extra}


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes = JSON,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers or []


# allow_nan=False: an answer with NaN or Infinity in it is not JSON; strict clients cannot read it.
# One encoder for every answer: json.dumps(allow_nan=False) would build a new one per call.
_encode = json.JSONEncoder(allow_nan=False).encode


def json_response(status: int, data: Any) -> Response:
    try:
        return Response(status, _encode(data).encode())
    except ValueError as exc:
        log().error("an answer is not JSON: %s", exc)
        raise HTTPError(500, "function_error", f"the answer cannot be sent as JSON: {exc} (NaN or Infinity; "
                        "the score function must return finite numbers, or null)") from None


def create_app(function: Function, max_body: int | None = None, threads: int | None = None,
               inline: bool = False) -> ASGIApp:
    return FunctionApp(function, max_body, threads, inline)


class FunctionApp:
    def __init__(self, function: Function, max_body: int | None = None, threads: int | None = None,
                 inline: bool = False) -> None:
        self.function = function
        self.max_body = max_body or int(os.environ.get("FNPACK_MAX_BODY", DEFAULT_MAX_BODY))
        self.version = os.environ.get("FNPACK_MODEL_VERSION", "1")
        self.inline = inline
        # Sized by the CPUs this process may use (taskset, cgroups), not by the machine's count.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = threads or min(4, cpus)
        self._pool: GuardedPool | None = None  # made on first use: an inline app never has one
        self.metrics = Metrics(function.name)
        self.metrics.model_load_seconds = function.load_seconds
        self._batcher: Any = None

    @property
    def pool(self) -> GuardedPool:
        if self._pool is None:
            from fnpack.runtime.watchdog import GuardedPool

            self._pool = GuardedPool(self.threads)
        return self._pool

    @property
    def batcher(self) -> Any:
        batching = self.function.spec.get("batching")
        if self._batcher is None and batching and not self.inline:
            from fnpack.runtime.batching import Batcher

            self._batcher = Batcher(self.function, batching["max_batch_size"], batching["max_wait_ms"] / 1000,
                                    self.pool, self.metrics.batch_sizes)
        return self._batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self)
            return
        started = time.perf_counter()
        route, handler = self._route(scope["method"], scope["path"])
        error = None
        try:
            response = await handler(scope, receive)
        except HTTPError as exc:
            response, error = _failure(scope, exc.status, exc.body), exc.body["error"]
        except RequestError as exc:
            response, error = _failure(scope, 422, {"error": "unprocessable", "message": str(exc)}), "unprocessable"
        except (TimeoutError, CallTimedOut):  # CallTimedOut: a batch shared with a timed-out call
            error = "timeout"
            response = _failure(scope, 504, {"error": error, "message":
                                             f"the request took longer than the function's timeout of "
                                             f"{self.function.timeout:g} s (resources.timeout)"})
        except Exception as exc:  # user code crashed: answer 500, keep serving
            request_id = os.urandom(8).hex()
            log().exception("request %s failed", request_id)
            error = "function_error"
            response = _failure(scope, 500, {"error": error, "type": type(exc).__name__, "message": str(exc),
                                             "request_id": request_id})
        await _send(send, response)
        if route != "/metrics":
            self.metrics.record(route, response.status, time.perf_counter() - started, error)

    def _route(self, method: str, path: str) -> tuple[str, Callable[[Scope, Receive], Awaitable[Response]]]:
        if path in ("/invoke", "/"):  # "/": a Knative or OpenFaaS route's own URL, as users call it
            return "/invoke", self._only("POST", self.invoke, method)
        if path in ("/healthz", "/_/health"):
            return path, self._only("GET", self.health, method)
        if path == "/metrics":
            return path, self._only("GET", self.prometheus, method)
        if path == "/v2" or path.startswith("/v2/"):
            return self._route_v2(method, path)
        return "other", self.not_found

    def _route_v2(self, method: str, path: str) -> tuple[str, Callable[[Scope, Receive], Awaitable[Response]]]:
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if not parts:
            return "/v2", self._only("GET", self.server_metadata, method)
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            return f"/v2/health/{parts[1]}", self._only("GET", self.health, method)
        if parts[0] != "models" or len(parts) < 2:
            return "other", self.not_found
        name, rest = parts[1], parts[2:]
        version = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        if name != self.function.name or (version is not None and version != self.version):
            return "other", lambda *_: self._unknown_model(name, version)
        if not rest:
            return "/v2/models/{name}", self._only("GET", self.model_metadata, method)
        if rest == ["ready"]:
            return "/v2/models/{name}/ready", self._only("GET", self.health, method)
        if rest == ["infer"]:
            return "/v2/models/{name}/infer", self._only("POST", self.infer, method)
        return "other", self.not_found

    def _only(self, allowed: str, handler: Callable[[Scope, Receive], Awaitable[Response]],
              method: str) -> Callable[[Scope, Receive], Awaitable[Response]]:
        if method == allowed or (allowed == "GET" and method == "HEAD"):
            return handler

        async def not_allowed(scope: Scope, receive: Receive) -> Response:
            raise HTTPError(405, "method_not_allowed", f"{method} is not allowed here; use {allowed}")

        return not_allowed

    async def not_found(self, scope: Scope, receive: Receive) -> Response:
        raise HTTPError(404, "not_found", f"no route {scope['method']} {scope['path']}",
                        expected="POST /invoke, GET /healthz, GET /metrics or the /v2 inference protocol")

    async def _unknown_model(self, name: str, version: str | None) -> Response:
        wanted = f"{name}" + (f" version {version}" if version else "")
        raise HTTPError(404, "model_not_found", f"no model {wanted}; this server serves "
                                               f"{self.function.name} version {self.version}")

    async def health(self, scope: Scope, receive: Receive) -> Response:
        # The model loads before the server accepts connections: serving means ready.
        return json_response(200, {"status": "ok", "function": self.function.name})

    async def prometheus(self, scope: Scope, receive: Receive) -> Response:
        return Response(200, self.metrics.render().encode(), b"text/plain; version=0.0.4")

    async def invoke(self, scope: Scope, receive: Receive) -> Response:
        body = await self._body(receive)
        try:
            request = loads(body)
        except BadRequest as exc:
            raise HTTPError(400, "bad_request", str(exc),
                            expected="a JSON record, or a JSON array of records") from None
        if isinstance(request, list):
            results = await self._call(self.function.call_many, request)
            for i, result in enumerate(results):
                if isinstance(result, Exception):
                    raise _record_error(i, result)
            return json_response(200, results)
        batcher = self.batcher
        if batcher:
            return json_response(200, await self._timed(batcher.submit(request)))
        return json_response(200, await self._call(self.function, request))

    async def infer(self, scope: Scope, receive: Receive) -> Response:
        from fnpack.runtime import oip

        body = await self._body(receive)
        header_length = _header(scope, b"inference-header-content-length")
        try:
            length = int(header_length) if header_length is not None else None
        except ValueError:
            raise HTTPError(400, "bad_request", "Inference-Header-Content-Length is not an integer") from None
        try:
            request = oip.decode_request(body, length, self.function.inputs)
        except BadRequest as exc:
            raise HTTPError(400, "bad_request", str(exc), expected="an Open Inference Protocol request") from None
        outputs = await self._call(self.function.run, request.inputs)
        payload, headers = oip.encode_response(self.function.name, self.version, request, outputs,
                                               self.function.outputs)
        content_type = b"application/octet-stream" if headers else JSON
        return Response(200, payload, content_type, headers)

    async def model_metadata(self, scope: Scope, receive: Receive) -> Response:
        from fnpack.runtime import oip

        return json_response(200, oip.model_metadata(
            self.function.name, [self.version], "onnxruntime_onnx",
            list(self.function.inputs.values()), list(self.function.outputs.values())))

    async def server_metadata(self, scope: Scope, receive: Receive) -> Response:
        from fnpack.runtime import oip

        return json_response(200, oip.server_metadata(["binary_tensor_data"]))

    async def _body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # cut short: never run the model on part of a body
                raise HTTPError(400, "client_disconnected", "the client disconnected before its body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise HTTPError(413, "payload_too_large", f"the body is over the limit of {self.max_body} bytes",
                                hint="send fewer records per request, or raise FNPACK_MAX_BODY")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """fn(arg): in the caller when inline, else on the pool under the function's timeout."""
        if self.inline:
            return fn(arg)
        from asyncio import get_running_loop  # loaded already: the server runs on it

        return await self._timed(self.pool.submit(get_running_loop(), fn, arg))

    async def _timed(self, future: Any) -> Any:
        # One timer per call, which sets the future's TimeoutError itself: no task wrapped around the
        # work (wait_for) and no cancellation to undo (asyncio.timeout).
        timer = future.get_loop().call_later(self.function.timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: Any) -> None:
        if not future.done():
            future.set_exception(TimeoutError())
            self.pool.overran(future.get_loop(), self.function.timeout)  # the thread goes on: stop it, or retire


def _failure(scope: Scope, status: int, body: dict[str, Any]) -> Response:
    """An error answer; on the Open Inference Protocol's routes with the detail in `error`, where its
    clients read it."""
    if scope["path"].startswith("/v2"):
        from fnpack.runtime import oip

        body = oip.error_body(body)
    return json_response(status, body)


def _record_error(index: int, exc: Exception) -> Exception:
    if isinstance(exc, RequestError):
        return HTTPError(422, "unprocessable", f"record {index}: {exc}", index=index)
    log().error("record %d failed", index, exc_info=exc)
    return exc


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send(send: Send, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(b"content-type", response.content_type),
                            (b"content-length", str(len(response.body)).encode()), *response.headers]})
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Receive, send: Send, app: FunctionApp) -> None:
    # The model is loaded at import; start-up starts the pool's threads, so the first call does not
    # wait for them, and settles the heap (gc_settle).
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if not app.inline:
                app.pool.start()
                gc_settle()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def gc_settle() -> None:
    """Move what the start-up made (modules, the model, the user's code) out of the collector's way.

    Every full collection would walk those objects again, for nothing: they live as long as the
    process; gc.freeze() leaves them out. A larger first generation makes the young collections
    that remain rarer (a request frees nearly all it allocates when it ends, through reference
    counts), so fewer requests pay for one.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


GC_THRESHOLD = 7000  # first-generation allocations between young collections (CPython's default: 700)
