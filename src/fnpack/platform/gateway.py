"""The local platform's HTTP face: `fnpack serve`.

- The control API (`/api/v1/...`, FastAPI, bearer token) deploys archives, lists functions and
  versions, moves aliases, rolls back, deletes and streams logs.
- Invocations (`POST /function/NAME[:QUALIFIER]` and the Open Inference Protocol's
  `/v2/models/NAME[/versions/QUALIFIER]/...`) bypass FastAPI's routing: they are on every
  request's path, so a plain ASGI branch resolves the version and forwards to a worker.
- `/metrics` (Prometheus), `/healthz`, `/v2/health/{live,ready}`.
Errors are JSON: `{"error": kind, "message": ..., "hint": ..., "exit_code": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from fnpack import __version__
from fnpack.errors import FnpackError, NotFoundError, StartError, UsageError
from fnpack.platform import auth
from fnpack.platform.forward import HOP_BY_HOP, end_to_end
from fnpack.platform.isolation import Isolation
from fnpack.platform.memory import MemoryLimits
from fnpack.platform.service import LocalPlatform
from fnpack.platform.storage import mib, state_error
from fnpack.platform.workers import UpstreamTimeout, WorkerLost
from fnpack.targets.history import ANY, Expect
from fnpack.versions import AliasState, Qualifier

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_ARCHIVE = 2 << 30
STOP_GRACE = float(os.environ.get("FNPACK_STOP_GRACE", "4"))  # seconds requests get after SIGTERM
MAX_BODY = int(os.environ.get("FNPACK_MAX_BODY", 6 * 1024 * 1024))
STATUS = {"usage": 400, "spec": 422, "archive": 422, "not-found": 404, "conflict": 409, "start": 503,
          "worker-lost": 502, "memory-limit": 502, "timeout": 504, "state-folder": 503, "storage-full": 507}


def status_of(exc: FnpackError) -> int:
    return STATUS.get(exc.kind, 500)


def error_body(exc: FnpackError) -> bytes:
    return json.dumps(exc.to_dict()).encode()


# --- the control API ---------------------------------------------------------------------------


class StateBody(BaseModel):
    primary: int
    canary: int | None = None
    weight: float = 0.0


class AliasBody(StateBody):
    reason: str | None = None
    expect: StateBody | None = None  # given (null: "not set yet"): refuse the move unless the alias is there


class RollbackBody(BaseModel):
    reason: str | None = None


def _version(v: Any, aliases: dict[str, AliasState]) -> dict[str, Any]:
    return {**asdict(v), "aliases": sorted(a for a, s in aliases.items() if v.number in s.versions)}


def control_api(platform: LocalPlatform, token: str) -> FastAPI:
    registry = platform.registry

    def authorized(authorization: str | None = Header(default=None)) -> None:
        if not auth.bearer_matches(authorization, token):
            raise _Unauthorized()

    def actor(x_fnpack_actor: str | None = Header(default=None)) -> str:
        return (x_fnpack_actor or "api")[:200]

    def qualifier(name: str, alias: str | None = None) -> Qualifier:
        # The CLI's checks, before a name or alias touches the disk or the registry.
        if alias is not None:
            return Qualifier(name, alias=Qualifier.alias_name(name, alias))
        return Qualifier(Qualifier.function_name(name))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        yield
        await platform.stop()

    api = FastAPI(title="fnpack local platform", lifespan=lifespan, docs_url=None, redoc_url=None)

    @api.exception_handler(FnpackError)
    async def fnpack_error(_: Request, exc: FnpackError) -> Response:
        return Response(error_body(exc), status_code=status_of(exc), media_type="application/json")

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else
                   str(exc.detail))
        return JSONResponse({"error": "not-found" if exc.status_code == 404 else "usage", "message": message,
                             "hint": "the control API is under /api/v1; invocations are POST /function/NAME",
                             "exit_code": 12 if exc.status_code == 404 else 2}, status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "usage", "message": f"bad request: {problems}", "hint": None,
                             "exit_code": 2}, status_code=422)

    @api.exception_handler(OSError)
    async def os_error(_: Request, exc: OSError) -> Response:
        error = state_error(exc, platform.state_dir)  # a read-only or full state folder: 503 / 507
        if error is not None:
            return Response(error_body(error), status_code=status_of(error), media_type="application/json")
        return JSONResponse({"error": "internal", "message": f"{type(exc).__name__}: {exc}",
                             "hint": "`fnpack serve`'s output may say more", "exit_code": 1}, status_code=500)

    @api.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, exc: _Unauthorized) -> Response:
        return JSONResponse({"error": "unauthorized", "message": "missing or wrong control token",
                             "hint": "the token is in <state-dir>/token; the CLI reads it there or from FNPACK_TOKEN",
                             "exit_code": 2}, status_code=401, headers={"www-authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v2/health/live")
    @api.get("/v2/health/ready")
    async def v2_health() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2")
    async def v2_metadata() -> dict[str, Any]:
        return {"name": "fnpack", "version": __version__, "extensions": []}

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(platform.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/api/v1/functions", dependencies=guarded)
    async def functions() -> dict[str, Any]:
        listed = []
        for name in registry.functions():
            versions = registry.versions(name)
            aliases = registry.aliases(name)
            listed.append({"name": name, "versions": len(versions), "latest": versions[-1].number,
                           "aliases": {a: asdict(s) for a, s in aliases.items()}})
        return {"functions": listed}

    @api.post("/api/v1/functions/{name}/versions", dependencies=guarded)
    async def deploy(name: str, request: Request, who: str = Depends(actor)) -> Response:
        qualifier(name)
        upload = await _receive_upload(request, platform.incoming, platform.state_dir)
        version, created = await platform.deploy(name, upload, who)
        return JSONResponse({"function": name, "version": _version(version, registry.aliases(name)),
                             "created": created}, status_code=201 if created else 200)

    @api.get("/api/v1/functions/{name}/versions", dependencies=guarded)
    async def versions(name: str) -> dict[str, Any]:
        qualifier(name)
        found = registry.versions(name)
        aliases = registry.aliases(name)
        return {"versions": [_version(v, aliases) for v in found]}

    @api.delete("/api/v1/functions/{name}", dependencies=guarded)
    async def delete_function(name: str) -> dict[str, Any]:
        qualifier(name)
        return {"deleted": [_version(v, {}) for v in await platform.delete(name, None)]}

    @api.delete("/api/v1/functions/{name}/versions/{number}", dependencies=guarded)
    async def delete_version(name: str, number: int) -> dict[str, Any]:
        qualifier(name)
        return {"deleted": [_version(v, {}) for v in await platform.delete(name, number)]}

    @api.get("/api/v1/functions/{name}/aliases", dependencies=guarded)
    async def aliases(name: str) -> dict[str, Any]:
        qualifier(name)
        return {"aliases": {a: asdict(s) for a, s in registry.aliases(name).items()}}

    @api.put("/api/v1/functions/{name}/aliases/{alias}", dependencies=guarded)
    async def set_alias(name: str, alias: str, body: AliasBody, who: str = Depends(actor)) -> dict[str, Any]:
        qualifier(name, alias)
        state = AliasState(body.primary, body.canary, body.weight)  # AliasError (400) for bad weights
        expect: AliasState | None | Expect = ANY
        if "expect" in body.model_fields_set:
            expect = AliasState(body.expect.primary, body.expect.canary, body.expect.weight) if body.expect else None
        return {"move": asdict(await platform.set_alias(name, alias, state, who, body.reason, expect))}

    @api.get("/api/v1/functions/{name}/aliases/{alias}/history", dependencies=guarded)
    async def history(name: str, alias: str) -> dict[str, Any]:
        qualifier(name, alias)
        return {"history": [asdict(m) for m in registry.history(name, alias)]}

    @api.post("/api/v1/functions/{name}/aliases/{alias}/rollback", dependencies=guarded)
    async def rollback(name: str, alias: str, body: RollbackBody | None = None,
                       who: str = Depends(actor)) -> dict[str, Any]:
        qualifier(name, alias)
        if not registry.history(name, alias):
            raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"`fnpack alias list {name}` lists them")
        return {"move": asdict(await platform.rollback(name, alias, who, body.reason if body else None))}

    @api.get("/api/v1/functions/{name}/logs", dependencies=guarded)
    async def logs(name: str, tail: int = 100, follow: bool = False) -> Response:
        qualifier(name)
        registry.versions(name)  # NotFoundError for unknown functions
        path = platform.workers.log_path(name)
        if not follow:
            return PlainTextResponse(_tail(path, tail))
        return StreamingResponse(_follow(path, tail), media_type="text/plain")

    return api


class _Unauthorized(Exception):
    pass


async def _receive_upload(request: Request, folder: Path, state_dir: Path) -> Path:
    """Stream the request body into a temp file; the caller deletes it."""
    size = 0
    path: Path | None = None
    chunks = request.stream()
    try:
        fd, name = tempfile.mkstemp(dir=folder, suffix=".zip")
        path = Path(name)
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_ARCHIVE:
                    raise UsageError(f"the archive is over {MAX_ARCHIVE >> 30} GiB", hint="check what you upload")
                out.write(chunk)
    except OSError as exc:
        if path:
            path.unlink(missing_ok=True)
        total = max(size, int(request.headers.get("content-length", "0") or 0))
        error = state_error(exc, state_dir, f"this archive needs {mib(total)} to upload, as much again to "
                                            f"store and roughly {mib(3 * total)} unpacked")
        if error is None:
            raise
        async for chunk in chunks:  # read the rest unstored: the client then gets this answer, not a reset
            size += len(chunk)
            if size > MAX_ARCHIVE:
                break
        raise error from exc
    except BaseException:
        if path:
            path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise UsageError("no archive in the request body", hint="send the zip built by `fnpack build`")
    return path


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as log:
        log.seek(0, os.SEEK_END)
        end = log.tell()
        log.seek(max(0, end - max(lines, 1) * 400))  # enough for `lines` lines of usual length
        text = log.read().decode("utf-8", "replace").splitlines()
    return "".join(line + "\n" for line in text[-lines:]) if lines > 0 else ""


async def _follow(path: Path, lines: int) -> AsyncIterator[bytes]:
    yield _tail(path, lines).encode()
    position = path.stat().st_size if path.is_file() else 0
    while True:
        await asyncio.sleep(0.25)
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size > position:
            with open(path, "rb") as log:
                log.seek(position)
                data = log.read(size - position)
            position = size
            yield data


# --- invocations ---------------------------------------------------------------------------------


class Gateway:
    """The ASGI app: invocations take the short path, everything else goes to the control API."""

    def __init__(self, platform: LocalPlatform, token: str, invoke_token: str | None) -> None:
        self.platform = platform
        self.invoke_token = invoke_token
        self.control = control_api(platform, token)
        self._qualifiers: dict[str, Qualifier] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/function/"):
                return await self._invoke(scope, receive, send, path[10:])
            if path.startswith("/v2/models/"):
                return await self._oip(scope, receive, send, path[11:])
            if path in _NEEDS_INVOKE_TOKEN and not self._may_invoke(scope):
                return await _send_unauthorized(send)
        await self.control(scope, receive, send)

    def _may_invoke(self, scope: Scope) -> bool:
        return not self.invoke_token or auth.bearer_matches(_header(scope, b"authorization"), self.invoke_token)

    async def _invoke(self, scope: Scope, receive: Receive, send: Send, target: str) -> None:
        if scope["method"] != "POST":
            return await _send_error(send, 405, "method_not_allowed", f"{scope['method']} is not allowed; use POST")
        qualifier = self._qualifiers.get(target)
        if qualifier is None:
            try:
                qualifier = Qualifier.parse(unquote(target))
            except UsageError as exc:
                return await _send(send, 400, error_body(exc))
            if len(self._qualifiers) < 10_000:  # parsed once per distinct target, not per request
                self._qualifiers[target] = qualifier
        await self._forward(scope, receive, send, qualifier, b"/invoke", _invoke_path)

    async def _oip(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        parts = rest.rstrip("/").split("/")
        name, tail = parts[0], parts[1:]
        chosen = None
        if tail[:1] == ["versions"] and len(tail) >= 2:
            chosen, tail = tail[1], tail[2:]
        try:
            qualifier = Qualifier.parse(f"{unquote(name)}:{unquote(chosen)}" if chosen else unquote(name))
        except UsageError as exc:
            return await _send(send, 400, error_body(exc))
        # Encoded again: uvicorn decodes the path, and a decoded space or CRLF in the worker's request
        # line would let a client smuggle a second request onto a pooled worker connection.
        suffix = "".join("/" + quote(part, safe="") for part in tail)

        def worker_path(number: int) -> bytes:
            return f"/v2/models/{qualifier.name}/versions/{number}{suffix}".encode()

        await self._forward(scope, receive, send, qualifier, None, worker_path)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, qualifier: Qualifier,
                       fixed_path: bytes | None, worker_path: Callable[[int], bytes]) -> None:
        began = time.perf_counter()
        if not self._may_invoke(scope):
            return await _send_unauthorized(send)
        try:
            body = await _read_body(receive, MAX_BODY)
        except _ClientGone:
            return
        if body is None:
            return await _send_error(send, 413, "payload_too_large", f"the request body is over {MAX_BODY} bytes")
        platform = self.platform
        try:
            route = platform.route(qualifier)
        except FnpackError as exc:
            return await _send(send, status_of(exc), error_body(exc))
        pool = route.pool
        headers = end_to_end(scope["headers"], _NOT_FORWARDED)
        query = scope.get("query_string") or b""
        path = fixed_path or worker_path(pool.number)
        # HEAD goes on as GET: the response parser would otherwise wait for a body HEAD never gets.
        method = b"GET" if scope["method"] == "HEAD" else scope["method"].encode()
        try:
            response = await platform.workers.forward(pool, method, path + (b"?" + query if query else b""),
                                                      headers, body)
            status, payload = response.status, response.body
            extra = end_to_end(response.headers)
        except (WorkerLost, UpstreamTimeout, StartError) as exc:
            status, payload, extra = status_of(exc), error_body(exc), [(b"content-type", b"application/json")]
        extra += [(b"x-fnpack-function", pool.function.encode()), (b"x-fnpack-version", str(pool.number).encode())]
        await _send(send, status, payload, extra)
        platform.metrics.observe(pool.function, str(pool.number), route.alias, status, time.perf_counter() - began)


# What the functions' names and traffic can be read from is for those who may invoke them.
_NEEDS_INVOKE_TOKEN = frozenset({"/metrics", "/openapi.json"})
# The platform's credential is the gateway's business: a function never sees the caller's token.
_NOT_FORWARDED = HOP_BY_HOP | {b"authorization"}


def _invoke_path(_: int) -> bytes:
    return b"/invoke"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nothing to forward, no one to answer."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # never forward a body cut short
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = headers if headers is not None else [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, status: int, error: str, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    await _send(send, status, body, [(b"content-type", b"application/json"), *(headers or [])])


async def _send_unauthorized(send: Send) -> None:
    await _send_error(send, 401, "unauthorized", "missing or wrong invoke token", [(b"www-authenticate", b"Bearer")])


# --- `fnpack serve` ------------------------------------------------------------------------------


def serve(host: str, port: int, state_dir: Path, invoke_token: str | None = None) -> None:
    """Run the platform until interrupted (blocking)."""
    import uvicorn

    auth.check_exposure(host, invoke_token)
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartError(f"cannot create the state folder {state_dir}: {exc}") from exc
    os.umask(0o077)  # the token, registry, archives and logs are the platform's alone
    lock = auth.lock_state_dir(state_dir)
    token = auth.control_token(state_dir)
    # Workers listen on Unix sockets in a private folder; a short path (sun_path holds 108 bytes).
    # Each function has a folder of its own in it (isolation.py): the top one is only traversed.
    run_dir = Path(tempfile.mkdtemp(prefix="fnpack-"))
    memory = MemoryLimits.detect()
    try:
        isolation = Isolation(run_dir, state_dir)
        if isolation.separate_users:
            run_dir.chmod(0o711)
        gateway = Gateway(LocalPlatform(state_dir.resolve(), run_dir, isolation, memory), token, invoke_token)
        sock = _listen(host, port)
        _announce(host, port, state_dir, isolation, memory)
        from fnpack.http_server import make_config

        config = make_config(gateway, timeout_keep_alive=30)
        server = uvicorn.Server(config)
        _stop_in_time(server, run_dir)
        server.run(sockets=[sock])
    except _Terminated:  # uvicorn stopped and re-raised SIGTERM: clean up (finally), then exit as SIGTERM's
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        memory.close()
        lock.close()


def _announce(host: str, port: int, state_dir: Path, isolation: Isolation, memory: MemoryLimits) -> None:
    """Where the platform listens, how functions are kept apart here, and what cannot be guaranteed."""
    users = "a user of its own per function" if isolation.separate_users else "the platform's own user"
    print(f"fnpack serve: listening on http://{host}:{port}, state in {state_dir}; functions run as {users}, "
          f"memory limits by {memory.kind}; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
    for limitation in isolation.limitations():
        print(f"warning: {limitation}", file=sys.stderr, flush=True)


def _stop_in_time(server: Any, run_dir: Path) -> None:
    """SIGTERM / SIGINT always stop the gateway: requests in flight get STOP_GRACE s, then are cancelled
    (a waiter or a followed log must not hold the exit); if the process is still alive STOP_GRACE s later
    (a thread stuck on a broken disk), it exits at once, and its zygotes and workers die with it
    (PR_SET_PDEATHSIG)."""
    if server.config.timeout_graceful_shutdown is None:
        server.config.timeout_graceful_shutdown = STOP_GRACE
    signal.signal(signal.SIGTERM, _terminate)  # what uvicorn restores and re-raises once it has stopped
    handle_exit = server.handle_exit

    def last_resort(sig: int) -> None:
        time.sleep(2 * STOP_GRACE)
        shutil.rmtree(run_dir, ignore_errors=True)
        os._exit(128 + sig)

    def handle(sig: int, frame: Any) -> None:
        if not server.should_exit:
            threading.Thread(target=last_resort, args=(sig,), daemon=True).start()
        handle_exit(sig, frame)

    server.handle_exit = handle  # uvicorn installs `server.handle_exit` as the handler when it starts


class _Terminated(BaseException):
    pass


def _terminate(*_: Any) -> None:
    raise _Terminated


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so that a port in use is a clear error and not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         hint="pick another --port, or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock

