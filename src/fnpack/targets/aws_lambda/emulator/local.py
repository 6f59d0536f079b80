"""Run a built aws-lambda archive as AWS Lambda would, without Docker.

The archive is unpacked (by the safe reader) into a read-only task root and run
by AWS's own runtime interface client, `awslambdaric`, in a fresh Python that
sees the task root first and, besides the standard library, only awslambdaric
and its own dependencies: the function uses the archive's numpy, onnxruntime
and mangum, never this venv's. A small Runtime API server here plays Lambda's
side of the contract (docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html).

One `_Runtime` is one execution environment: a Runtime API server on its own
port plus one awslambdaric process. When it breaks (init error, crash, timeout)
it is thrown away and the next invocation starts a fresh one, as Lambda does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import platform
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal, Self
from urllib.parse import parse_qsl

from fnpack.archive import open_archive
from fnpack.errors import ArchiveError, DependencyError, UsageError

MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit for synchronous requests and responses
INIT_TIMEOUT = 10.0  # Lambda's limit for the init phase of an on-demand function
REGION = "us-east-1"
ACCOUNT = "000000000000"  # a placeholder account in the function's ARN
_API = "/2018-06-01/runtime"
_INVOCATION_PATH = re.compile(rf"^{_API}/invocation/([^/]+)/(response|error)$")
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
_LOG_LINES = 10_000  # logs kept in memory; a long `serve_http` must not grow without bound

Status = Literal["ok", "error", "init_error"]


@dataclass(frozen=True)
class InvokeResult:
    """status: "ok" (payload: the function's answer), "error" (payload: Lambda's error object with
    errorType and errorMessage) or "init_error" (payload: the same, from the init phase).
    duration_s: the handler's run, as Lambda bills it; the cold start is not included."""

    status: Status
    payload: Any
    duration_s: float
    request_id: str

    @property
    def error_type(self) -> str | None:
        return self.payload.get("errorType") if self.status != "ok" and isinstance(self.payload, dict) else None

    @property
    def error_message(self) -> str | None:
        return self.payload.get("errorMessage") if self.status != "ok" and isinstance(self.payload, dict) else None


def _lambda_error(error_type: str, message: str) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message}


@dataclass
class _Call:
    request_id: str
    body: bytes
    deadline_ms: int
    handed_at: float = 0.0  # monotonic; 0 until the runtime took it
    outcome: tuple[Status, Any] | None = None


class _Runtime:
    """One execution environment: a Runtime API server and the awslambdaric process that polls it."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, arn: str,
                 log: Callable[[str], None]) -> None:
        self._cond = threading.Condition()
        self._pending: _Call | None = None
        self._calls: dict[str, _Call] = {}
        self._arn = arn
        self._log = log
        self._closed = False
        self.ready = False  # the runtime asked for its first event: init is done
        self.init_error: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.broken = False  # set once this environment must not serve another event
        self.started = time.monotonic()
        self.init_duration_s: float | None = None
        self._server = _RuntimeAPIServer(self)
        self._threads = [threading.Thread(target=self._server.serve_forever, name="lambda-runtime-api", daemon=True)]
        self._threads[0].start()
        env = {**env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self._server.server_address[1]}"}
        try:
            # A session of its own, so that close() also ends whatever the function started.
            self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError:
            self._stop_server()
            raise
        for target, name in ((self._read_logs, "lambda-logs"), (self._watch, "lambda-exit")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # --- the caller's side ---

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self.ready or self.init_error is not None or self.exit_code is not None,
                                timeout)
            return self.ready and self.exit_code is None

    def invoke(self, body: bytes, timeout: float, init_timeout: float) -> InvokeResult:
        request_id = str(uuid.uuid4())
        with self._cond:
            # Init has its own budget, as on Lambda; the function's timeout starts with the event.
            init_end = self.started + init_timeout
            self._cond.wait_for(lambda: self.ready or self.init_error is not None or self.exit_code is not None,
                                max(0.0, init_end - time.monotonic()))
            if not self.ready or self.exit_code is not None:
                self.broken = True
                if self.init_error is not None:
                    return InvokeResult("init_error", self.init_error, 0.0, request_id)
                if self.exit_code is not None:
                    return InvokeResult("init_error", self._exit_error(request_id), 0.0, request_id)
                return InvokeResult("init_error", _lambda_error(
                    "Sandbox.Timedout", f"init did not finish within {init_timeout:g} seconds"), 0.0, request_id)
            start = time.monotonic()
            call = _Call(request_id, body, deadline_ms=int((time.time() + timeout) * 1000))
            self._calls[request_id] = call
            self._pending = call
            self._cond.notify_all()
            end = start + timeout
            while call.outcome is None and self.exit_code is None and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            self._calls.pop(request_id, None)
            self._pending = None
        duration = time.monotonic() - start
        if call.outcome is not None:
            status, payload = call.outcome
        elif self.exit_code is not None:
            self.broken = True
            status, payload = "error", self._exit_error(request_id)
        else:  # Lambda stops the environment of a function that ran out of time
            self.broken = True
            status, payload = "error", _lambda_error("Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds")
        self._report(request_id, duration)
        return InvokeResult(status, payload, duration, request_id)

    def _exit_error(self, request_id: str) -> dict[str, Any]:
        code = self.exit_code or 0
        how = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return _lambda_error("Runtime.ExitError", f"RequestId: {request_id} Error: Runtime exited with error: {how}")

    def _report(self, request_id: str, duration: float) -> None:
        """The END and REPORT lines Lambda writes after each invocation."""
        line = (f"REPORT RequestId: {request_id}\tDuration: {duration * 1000:.2f} ms\t"
                f"Billed Duration: {math.ceil(duration * 1000)} ms\tMax Memory Used: {self._max_rss_mb()} MB")
        if self.init_duration_s is not None:  # the first invocation of an environment: its cold start
            line += f"\tInit Duration: {self.init_duration_s * 1000:.2f} ms"
            self.init_duration_s = None
        self._log(f"END RequestId: {request_id}\n{line}\n")

    def _max_rss_mb(self) -> str:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return str(int(line.split()[1]) // 1024)
        return "?"

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._stop_server()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def _stop_server(self) -> None:
        with self._cond:
            self._closed = True  # wakes a /next that still waits
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()  # joins the request threads

    # --- the runtime's side, called by _RuntimeAPIHandler ---

    def next_event(self) -> _Call | None:
        with self._cond:
            if not self.ready:
                self.ready = True
                self.init_duration_s = time.monotonic() - self.started
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._pending is not None or self._closed)
            if self._closed or self._pending is None:
                return None
            call, self._pending = self._pending, None
            call.handed_at = time.monotonic()
        self._log(f"START RequestId: {call.request_id} Version: $LATEST\n")
        return call

    def finish(self, request_id: str, status: Status, payload: Any) -> bool:
        with self._cond:
            call = self._calls.get(request_id)
            if call is None or call.outcome is not None or not call.handed_at:
                return False
            call.outcome = (status, payload)
            self._cond.notify_all()
            return True

    def fail_init(self, error: Any) -> None:
        with self._cond:
            self.init_error = error if isinstance(error, dict) else _lambda_error("Runtime.Unknown", str(error))
            self._cond.notify_all()

    @property
    def arn(self) -> str:
        return self._arn

    def _read_logs(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self._log(raw.decode("utf-8", "replace"))

    def _watch(self) -> None:
        code = self.proc.wait()
        with self._cond:
            self.exit_code = code
            self._cond.notify_all()


class _RuntimeAPIServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread: nothing outlives close()
    block_on_close = True

    def __init__(self, runtime: _Runtime) -> None:
        self.runtime = runtime
        super().__init__(("127.0.0.1", 0), _RuntimeAPIHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed runtime drops its connections
            super().handle_error(request, client_address)


class _RuntimeAPIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # awslambdaric (libcurl) keeps its connection alive
    server: _RuntimeAPIServer

    def log_message(self, format: str, *args: Any) -> None:  # the runtime's own log is what matters
        pass

    def do_GET(self) -> None:
        if self.path != f"{_API}/invocation/next":
            return self._answer(404, _lambda_error("NotFound", f"no route GET {self.path}"))
        call = self.server.runtime.next_event()
        if call is None:  # the environment is shutting down
            return self._answer(500, _lambda_error("Runtime.Shutdown", "the environment is shutting down"))
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
            return self._answer(411, _lambda_error("LengthRequired", "send a Content-Length"))
        if int(length) > 4 * MAX_PAYLOAD:  # do not even read it
            self.close_connection = True
            return self._answer(413, _lambda_error("RequestEntityTooLarge", "payload too large"))
        body = self.rfile.read(int(length))
        runtime = self.server.runtime
        if self.path == f"{_API}/init/error":
            runtime.fail_init(_json_or_text(body))
            return self._answer(202, {"status": "OK"})
        match = _INVOCATION_PATH.match(self.path)
        if not match:
            return self._answer(404, _lambda_error("NotFound", f"no route POST {self.path}"))
        request_id, kind = match.groups()
        if kind == "response" and len(body) > MAX_PAYLOAD:
            runtime.finish(request_id, "error", _lambda_error(
                "Function.ResponseSizeTooLarge",
                f"Response payload size ({len(body)} bytes) exceeded the maximum allowed ({MAX_PAYLOAD} bytes)."))
            return self._answer(413, _lambda_error("RequestEntityTooLarge", "response payload too large"))
        payload = _json_or_text(body)
        if not runtime.finish(request_id, "ok" if kind == "response" else "error", payload):
            return self._answer(400, _lambda_error("InvalidRequestID", f"no invocation {request_id} awaits a {kind}"))
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


class LocalLambda:
    """An aws-lambda archive running under awslambdaric, one invocation at a time (one environment).

    with LocalLambda(path) as fn: fn.invoke({"sepal_length": 5.1, ...}).payload
    """

    def __init__(self, archive: Path | str, *, expected_sha256: str | None = None,
                 init_timeout: float = INIT_TIMEOUT, log_stream: IO[str] | None = None) -> None:
        self.archive = Path(archive)
        self.expected_sha256 = expected_sha256
        self.init_timeout = init_timeout
        self.log_stream = log_stream  # e.g. sys.stderr, to see the function's logs as they come
        self.manifest: dict[str, Any] = {}
        self.handler = ""
        self.task_root = Path()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()  # one execution environment serves one event at a time
        self._logs: deque[str] = deque(maxlen=_LOG_LINES)
        self._logs_lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", ""))

    @property
    def timeout(self) -> float:
        """The function's timeout from its spec, the default for `invoke`."""
        return float(self.manifest.get("spec", {}).get("resources", {}).get("timeout") or 3.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        runtime_packages = _runtime_distributions()  # fail before unpacking if awslambdaric is missing
        self._tmp = tempfile.TemporaryDirectory(prefix="fnpack-lambda-")
        try:
            root = Path(self._tmp.name)
            with open_archive(self.archive, self.expected_sha256) as archive:
                self.manifest = _check_manifest(self.archive, archive.manifest())
                self.task_root = root / "task"
                archive.extract_all(self.task_root)
            self.handler = self.manifest["handlers"]["lambda"]
            self._runtime_dir = root / "runtime"
            _link_distributions(runtime_packages, self._runtime_dir)
            _make_read_only(self.task_root)  # /var/task is read-only on Lambda
            with self._lock:
                self._runtime = self._spawn()
        except BaseException:
            self.close()
            raise

    def invoke(self, event: Any, timeout: float | None = None) -> InvokeResult:
        """Send one event and wait for the answer; timeout: the function's, in seconds (spec default)."""
        body = json.dumps(event).encode()
        if len(body) > MAX_PAYLOAD:
            raise UsageError(f"the event is {len(body)} bytes, over Lambda's limit of {MAX_PAYLOAD}",
                             hint="send a smaller event")
        with self._lock:
            if self._runtime is None:
                raise RuntimeError("LocalLambda is not started; use it as a context manager")
            runtime = self._runtime
            # Lambda starts a fresh environment after a failed one, or after one that died once ready.
            if runtime.broken or (runtime.ready and runtime.exit_code is not None):
                self._runtime.close()
                self._runtime = self._spawn()
            return self._runtime.invoke(body, self.timeout if timeout is None else timeout, self.init_timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the init phase; False when it failed (see `logs()`) or took longer than timeout."""
        with self._lock:
            if self._runtime is None:
                return False
            return self._runtime.wait_ready(self.init_timeout if timeout is None else timeout)

    @property
    def init_error(self) -> dict[str, Any] | None:
        return self._runtime.init_error if self._runtime else None

    def logs(self) -> str:
        """What the runtime process wrote (stdout and stderr), plus Lambda's START/END/REPORT lines."""
        with self._logs_lock:
            return "".join(self._logs)

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None:
                self._runtime.close()
                self._runtime = None
        if self._tmp is not None:
            if self.task_root.is_dir():
                _make_writable(self.task_root)
            self._tmp.cleanup()
            self._tmp = None

    def _spawn(self) -> _Runtime:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        spec = self.manifest.get("spec", {})
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            # The environment Lambda gives a python runtime; the caller's own is not passed on.
            "LD_LIBRARY_PATH": ":".join(filter(None, [str(self.task_root), str(self.task_root / "lib"),
                                                      os.environ.get("LD_LIBRARY_PATH")])),
            "TZ": ":UTC",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONPATH": f"{self.task_root}{os.pathsep}{self._runtime_dir}",
            "LAMBDA_TASK_ROOT": str(self.task_root),
            "LAMBDA_RUNTIME_DIR": str(self._runtime_dir),
            "_HANDLER": self.handler,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{version}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.get("resources", {}).get("memory", 128)),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }
        # -S: no site-packages and no .pth files; PYTHONPATH alone decides what is importable.
        command = [sys.executable, "-S", "-m", "awslambdaric", self.handler]
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.name}"
        return _Runtime(command, env, self.task_root, arn, self._log)

    def _log(self, text: str) -> None:
        # awslambdaric joins a multi-line error with "\r" (one CloudWatch event); a terminal would overwrite.
        text = text.replace("\r", "\n")
        with self._logs_lock:
            self._logs.append(text)
        if self.log_stream is not None:
            with contextlib.suppress(ValueError, OSError):  # a closed stream must not kill the reader
                self.log_stream.write(text)
                self.log_stream.flush()


def _check_manifest(path: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Refuse, before unpacking, what Lambda (or this machine) could not run."""
    if manifest is None:
        raise ArchiveError(f"{path} has no fnpack.json",
                           hint="run an archive built by `fnpack build --target aws-lambda`")
    target = manifest.get("target")
    if target != "aws-lambda":
        raise ArchiveError(f"{path} was built for the target {target!r}, not 'aws-lambda'",
                           hint="rebuild it with `fnpack build --target aws-lambda`")
    handler = manifest.get("handlers", {}).get("lambda")
    if not isinstance(handler, str) or "." not in handler:
        raise ArchiveError(f"{path}: fnpack.json names no Lambda handler (handlers.lambda)",
                           hint="rebuild it with `fnpack build --target aws-lambda`")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if str(manifest.get("python")) != here:
        raise ArchiveError(f"{path} was built for Python {manifest.get('python')}, but fnpack runs on Python {here}; "
                           "its compiled packages would not load",
                           hint=f"run fnpack with Python {manifest.get('python')}, or rebuild for {here}")
    arch, machine = manifest.get("arch"), _MACHINES.get(platform.machine().lower(), platform.machine())
    if not sys.platform.startswith("linux") or (arch and arch != machine):
        raise ArchiveError(f"{path} holds Linux {arch} binaries; this machine is {sys.platform} {machine}",
                           hint="run it on a Linux machine of the same architecture")
    return manifest


def _runtime_distributions() -> list[metadata.Distribution]:
    """awslambdaric and what it requires, recursively: the runtime's part of the function's sys.path."""
    found: dict[str, metadata.Distribution] = {}
    todo = ["awslambdaric"]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name == "awslambdaric":
                raise DependencyError("awslambdaric, AWS's runtime interface client, is not installed",
                                      hint="install it: `pip install awslambdaric`") from None
            continue  # an optional or platform-specific need; awslambdaric reports it if it matters
        found[name] = dist
        for requirement in dist.requires or []:
            if re.search(r"extra\s*==", requirement):
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            if match:
                todo.append(match.group())
    return list(found.values())


def _link_distributions(dists: Iterable[metadata.Distribution], dest: Path) -> None:
    """Symlink each distribution's top-level entries (packages, modules, dist-info) into dest."""
    dest.mkdir()
    for dist in dists:
        tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}
        if not tops:
            raise DependencyError(f"{dist.metadata['Name']} lists no installed files",
                                  hint=f"reinstall it: `pip install --force-reinstall {dist.metadata['Name']}`")
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (dest / top).exists():
                (dest / top).symlink_to(source, target_is_directory=source.is_dir())


def _make_read_only(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode & ~0o222)
    root.chmod(root.stat().st_mode & ~0o222)


def _make_writable(root: Path) -> None:
    root.chmod(root.stat().st_mode | stat.S_IWUSR)
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode | stat.S_IWUSR)


# --- HTTP: Function URL events and responses ---

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
        self.server.local._log(f"{self.address_string()} - {format % args}\n")

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


# --- the CLI's entry ---

def run_lambda(archive: Path, data: str | None = None, event_file: Path | None = None, port: int | None = None,
               *, timeout: float | None = None) -> int:
    """`fnpack run --target aws-lambda`-style entry: 0 when the function answered, 1 on a function error.

    --data JSON: a direct invocation with that event; --event FILE: a JSON event sent as is (e.g. an
    API Gateway event); --port N: serve HTTP as a Function URL on 127.0.0.1:N (0: a free port).
    The answer goes to stdout as JSON; the function's logs and errors go to stderr.
    """
    given = [name for name, value in (("--data", data), ("--event", event_file), ("--port", port)) if value is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise UsageError(f"give exactly one of --data, --event or --port{got}",
                         hint="--data JSON invokes once, --event FILE sends a Lambda event, --port N serves HTTP")
    event: Any = None
    if data is not None:
        event = _parse_json(data, "--data")
    elif event_file is not None:
        try:
            text = Path(event_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the event file {event_file}: {exc}", hint="check the path") from exc
        event = _parse_json(text, f"the event file {event_file}")

    with _exit_on_sigterm(), LocalLambda(archive, log_stream=sys.stderr) as local:
        if port is not None:
            if not local.wait_ready():
                error = local.init_error or {}
                print(f"warning: init failed: {error.get('errorType', '')}: {error.get('errorMessage', '')}; "
                      "each request retries it", file=sys.stderr)
            serve_http(local, "127.0.0.1", port,
                       on_ready=lambda url: print(f"serving {local.name} as a Function URL on {url} "
                                                  f"(POST {url}/invoke); Ctrl-C stops", file=sys.stderr, flush=True))
            return 0
        result = local.invoke(event, timeout)
    print(json.dumps(result.payload, indent=2))
    if result.status == "ok":
        return 0
    where = "init error" if result.status == "init_error" else "function error"
    print(f"error: {where}: {result.error_type}: {result.error_message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM ends Python without cleanup: make it a SystemExit, so the runtime and its task root go too."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}", hint="pass a JSON value, e.g. '{\"x\": 1}'") from exc
