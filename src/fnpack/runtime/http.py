"""The function's HTTP interface as a plain ASGI app (no framework: its import time is the cold start)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fnpack.runtime.function import Function, RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
log = logging.getLogger("fnpack.runtime")

MAX_BODY = 6 * 1024 * 1024  # Lambda's synchronous payload limit


def create_app(function: Function) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path == "/invoke" and method == "POST":
            status, body = _invoke(function, await _read_body(receive))
        elif path in ("/healthz", "/_/health") and method == "GET":
            status, body = 200, {"status": "ok", "function": function.name}
        else:
            status, body = 404, {"error": "not found", "message": f"no route {method} {path}",
                                 "expected": "POST /invoke or GET /healthz"}
        await _send_json(send, status, body)

    return app


def _invoke(function: Function, raw: bytes | None) -> tuple[int, Any]:
    if raw is None:
        return 413, {"error": "payload too large", "message": f"the body is over {MAX_BODY} bytes"}
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return 400, {"error": "bad request", "message": f"the body is not JSON: {exc}",
                     "expected": "a JSON request body"}
    try:
        return 200, function(request)
    except RequestError as exc:
        return 422, {"error": "unprocessable", "message": str(exc)}
    except Exception as exc:  # user code crashed: answer 500, keep serving
        request_id = uuid.uuid4().hex
        log.exception("request %s failed", request_id)
        return 500, {"error": "function error", "type": type(exc).__name__, "message": str(exc),
                     "request_id": request_id}


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    # The model is loaded at import, so start-up has nothing left to do.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
