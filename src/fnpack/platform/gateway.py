"""The local platform's HTTP face: `fnpack serve`.

- The control API (`/api/v1/...`, FastAPI, bearer token) deploys archives, lists functions and
  versions, moves aliases, rolls back, deletes and streams logs.
- Invocations (`POST /function/NAME[:QUALIFIER]` and the Open Inference Protocol's
  `/v2/models/NAME[/versions/QUALIFIER]/...`) never reach ASGI: they are on every request's
  path, so the HTTP protocol takes them itself (invocations.py).
- `/metrics` (Prometheus), `/healthz`, `/v2/health/{live,ready}`.
Errors are JSON: `{"error": kind, "message": ..., "hint": ..., "exit_code": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
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
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from fnpack import __version__
from fnpack.errors import FnpackError, StartError, UsageError
from fnpack.platform import auth
from fnpack.platform.invocations import GatewayProtocol, Invocations, error_json, oip_error, status_of
from fnpack.platform.isolation import Isolation
from fnpack.platform.memory import MemoryLimits
from fnpack.platform.service import LocalPlatform
from fnpack.platform.storage import mib, state_error
from fnpack.targets.history import ANY, Expect
from fnpack.versions import AliasState, Qualifier

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_ARCHIVE = 2 << 30
OIP_EXTENSIONS = ("binary_tensor_data",)  # = fnpack.runtime.oip.EXTENSIONS (a test holds them equal)
STOP_GRACE = float(os.environ.get("FNPACK_STOP_GRACE", "4"))  # seconds requests get after SIGTERM
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


def _version(v: Any, aliases: dict[str, AliasState], target: str = "") -> dict[str, Any]:
    return {**asdict(v), "target": target or v.target,
            "aliases": sorted(a for a, s in aliases.items() if v.number in s.versions)}


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
        body = {"error": "not-found" if exc.status_code == 404 else "usage", "message": message,
                "hint": "the control API is under /api/v1; invocations are POST /function/NAME",
                "exit_code": 12 if exc.status_code == 404 else 2}
        if request.url.path == "/v2" or request.url.path.startswith("/v2/"):  # an inference protocol client's
            body = oip_error({**body, "hint": "the Open Inference Protocol routes are /v2, /v2/health/{live,ready} "
                                              "and /v2/models/NAME[/versions/V][/ready|/infer]"})
        return JSONResponse(body, status_code=exc.status_code)

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
        # What a client gets through the gateway: the workers' own (runtime/oip.py's EXTENSIONS), since
        # /v2/models/... is forwarded to them as sent, binary tensors included.
        return {"name": "fnpack", "version": __version__, "extensions": list(OIP_EXTENSIONS)}

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
        return JSONResponse({"function": name, "version": _version(version, registry.aliases(name),
                                                                    platform.archive_target(version.sha256)),
                             "created": created}, status_code=201 if created else 200)

    @api.get("/api/v1/functions/{name}/versions", dependencies=guarded)
    async def versions(name: str) -> dict[str, Any]:
        qualifier(name)
        found = registry.versions(name)
        aliases = registry.aliases(name)
        return {"versions": [_version(v, aliases, platform.archive_target(v.sha256)) for v in found]}

    @api.get("/api/v1/functions/{name}/status", dependencies=guarded)
    async def status(name: str) -> dict[str, Any]:
        qualifier(name)
        registry.versions(name)  # NotFoundError for unknown functions
        return platform.describe(name)

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
        error = state_error(exc, state_dir, f"this archive needs {mib(total)} to upload (then kept as it is) "
                                            f"and roughly {mib(3 * total)} unpacked")
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


# --- invocations and the rest --------------------------------------------------------------------


class Gateway:
    """The ASGI app of everything but invocations, which GatewayProtocol takes before ASGI
    (invocations.py): serve it with `GatewayProtocol.bound(gateway.invocations)`.

    With an access log, each request ends with one line of it (`AccessLog.line`).
    """

    def __init__(self, platform: LocalPlatform, token: str, invoke_token: str | None,
                 access_log: AccessLog | None = None) -> None:
        self.platform = platform
        self.invocations = Invocations(platform, invoke_token, access_log)
        self.control = control_api(platform, token)
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.control(scope, receive, send)
        log = self.access_log
        began = time.perf_counter()  # before the 401 below too: its access log line needs it
        if scope["path"] in _NEEDS_INVOKE_TOKEN and not self.invocations.may_invoke(scope["headers"]):
            status = await _send_unauthorized(send)
        elif log is None:
            return await self.control(scope, receive, send)
        else:
            try:
                status = await self._control_logged(scope, receive, send)
            except Exception:  # uvicorn logs the traceback (and answers 500 if nothing was sent yet)
                log.line(scope.get("client"), scope["method"], scope.get("raw_path") or b"", 500, None, began)
                raise
        if log is not None:
            log.line(scope.get("client"), scope["method"], scope.get("raw_path") or b"", status, None, began)

    async def _control_logged(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The control API, noting the status it answers (control calls are not the hot path)."""
        seen = [0]

        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen[0] = message["status"]
            await send(message)

        await self.control(scope, receive, noting)
        return seen[0]


# What the functions' names and traffic can be read from is for those who may invoke them.
_NEEDS_INVOKE_TOKEN = frozenset({"/metrics", "/openapi.json"})


async def _send_unauthorized(send: Send) -> int:
    body = error_json({"error": "unauthorized", "message": "missing or wrong invoke token"}, False)
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    return 401


# --- stderr and the access log ------------------------------------------------------------------


class StderrWriter:
    """The gateway's stderr, written by a thread: `put` only queues the text.

    Whatever the process writes to `sys.stderr` (the access log, uvicorn's log, tracebacks) goes
    through it once `serve` installs it (`install`), so a stderr nobody reads (a full pipe, a paused
    terminal) stalls this thread only, never the event loop. Past MAX_PENDING unwritten pieces,
    text is counted instead of kept, and the count is written when stderr takes text again.
    """

    MAX_PENDING = 20_000

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.dropped = 0
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._installed: Any = None
        self._thread = threading.Thread(target=self._write, name="fnpack-stderr", daemon=True)
        self._thread.start()

    def put(self, text: str) -> None:
        if self._queue.qsize() >= self.MAX_PENDING:
            self.dropped += 1
            return
        self._queue.put(text)

    def install(self) -> None:
        """Make `sys.stderr` this writer's (until `close`)."""
        self._installed = sys.stderr
        sys.stderr = _QueuedStream(self, self.stream)

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (waiting at most `timeout` s for stderr), then stop the thread."""
        if self._installed is not None:
            sys.stderr, self._installed = self._installed, None
        self._queue.put(None)
        self._thread.join(timeout)

    def _write(self) -> None:
        written_dropped = 0
        while True:
            pieces = [self._queue.get()]
            while True:  # everything queued meanwhile, in one write
                try:
                    pieces.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = None in pieces
            text = "".join(piece for piece in pieces if piece is not None)
            if self.dropped != written_dropped:
                text += f"fnpack serve: {self.dropped - written_dropped} log line(s) dropped: stderr was not read\n"
                written_dropped = self.dropped
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing left to tell
                return
            if done:
                return


class _QueuedStream(io.TextIOBase):
    """`sys.stderr` while the gateway serves: writes are queued to a StderrWriter."""

    def __init__(self, writer: StderrWriter, real: Any) -> None:
        self._writer, self._real = writer, real

    def write(self, text: str) -> int:
        self._writer.put(text)
        return len(text)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8")


class AccessLog:
    """One line per request, as uvicorn and BentoML print them:

        2026-12-01 09:31:18.123 127.0.0.1:50532 POST /function/iris 200 1.8ms iris v2

    (time, client, method, path as sent, status, duration, the function and version that answered or
    "-"). The request only formats the line and appends it to a batch; the batch goes to the
    StderrWriter FLUSH_S later, in one piece: a queue put per line woke the writer thread per request,
    and its handoffs of the GIL cost the gateway a fifth of its time at the default log level.
    """

    FLUSH_S = 0.05

    def __init__(self, writer: StderrWriter) -> None:
        self.put = writer.put
        self._second = -1
        self._stamp = ""
        self._batch: list[str] = []

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self.put("".join(batch))

    def _add(self, text: str) -> None:
        if not self._batch:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
            except RuntimeError:  # no loop running (a test calling it directly): at once
                return self.put(text)
        self._batch.append(text)

    def line(self, client: tuple[str, int] | None, method: str, raw_path: bytes, status: int, pool: Any,
             began: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not per request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        path = raw_path.decode("latin-1")
        if not (raw_path.isascii() and path.isprintable()) or " " in path:  # never a forged line or a terminal escape
            path = quote(raw_path, safe="/:@!$&'()*+,;=-._~%")
        answered = f"{pool.function} v{pool.number}" if pool is not None else "-"
        self._add(f"{self._stamp}.{int(now * 1000) % 1000:03d}Z {client[0] if client else '-'}:"
                 f"{client[1] if client else '-'} {method} {path} {status} "
                 f"{(time.perf_counter() - began) * 1000:.1f}ms {answered}\n")


# --- `fnpack serve` ------------------------------------------------------------------------------


LOG_LEVELS = ("debug", "info", "warning", "error")
DETACHED_ENV = "FNPACK_SERVE_DETACHED"  # set by `fnpack up` (launch.py) for the platform it starts in the background


def serve(host: str, port: int, state_dir: Path, invoke_token: str | None = None, log_level: str = "info") -> None:
    """Run the platform until interrupted (blocking).

    `log_level`: `debug` and `info` print the start lines and one access log line per request
    (`debug` adds uvicorn's own log); `warning` prints the start lines and warnings only; `error`
    only the warnings about guarantees this machine cannot give (those always print) and errors.
    """
    import uvicorn

    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}",
                         hint="warning silences the access log")
    detached = os.environ.pop(DETACHED_ENV, None) is not None  # popped: workers must not inherit it
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
    stderr = access_log = None
    try:
        isolation = Isolation(run_dir, state_dir)
        if isolation.separate_users:
            run_dir.chmod(0o711)
        sock = _listen(host, port)
        _announce(host, port, state_dir, isolation, memory, log_level, detached)
        stderr = StderrWriter()
        stderr.install()  # before uvicorn's logging takes sys.stderr: nothing it writes can stall the loop
        access_log = AccessLog(stderr) if log_level in ("debug", "info") else None
        gateway = Gateway(LocalPlatform(state_dir.resolve(), run_dir, isolation, memory), token, invoke_token,
                          access_log)
        from fnpack.http_server import make_config

        config = make_config(gateway, GatewayProtocol.bound(gateway.invocations), timeout_keep_alive=30,
                             **({"log_level": "debug"} if log_level == "debug" else {}))
        server = uvicorn.Server(config)
        _stop_in_time(server, run_dir)
        server.run(sockets=[sock])
    except _Terminated:  # uvicorn stopped and re-raised SIGTERM: clean up (finally), then exit as SIGTERM's
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if access_log is not None:
            access_log.flush()  # the last lines' timer died with the loop
        if stderr is not None:
            stderr.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        memory.close()
        lock.close()


def _announce(host: str, port: int, state_dir: Path, isolation: Isolation, memory: MemoryLimits,
              log_level: str = "info", detached: bool = False) -> None:
    """Where the platform listens, its state folder, how to stop it, how functions are kept apart here,
    and what cannot be guaranteed (those `warning:` lines print at every log level)."""
    if log_level != "error":
        users = "a user of its own per function" if isolation.separate_users else "the platform's own user"
        state = state_dir.resolve()
        stop = (f"`fnpack down --state-dir {state}` stops it (or SIGTERM)" if detached else
                "Ctrl-C (or SIGTERM) stops it; one started in the background by `fnpack up` stops with `fnpack down`")
        url_host = f"[{host}]" if ":" in host else host
        access = "one line per request" if log_level in ("debug", "info") else "off (--log-level info turns it on)"
        for line in (f"listening on http://{url_host}:{port}", f"state folder {state}",
                     f"functions run as {users}; memory limits by {memory.kind}",
                     f"access log: {access}", stop):
            print(f"fnpack serve: {line}", file=sys.stderr, flush=True)
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

