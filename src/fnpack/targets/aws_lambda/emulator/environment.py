"""One execution environment: a Runtime API server on its own port plus one awslambdaric process.

`Runtime` holds the environment's state (init done or failed, the event waiting, the process's exit)
and both sides of it: the caller's (`invoke`, `wait_ready`, `close`) and the runtime's, which the
Runtime API handler (`runtime_api`) calls (`next_event`, `finish`, `fail_init`). It also reads the
process's output into the logs and writes Lambda's START/END/REPORT lines. When it breaks (init
error, crash, timeout) it is thrown away and the next invocation starts a fresh one, as Lambda does.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnpack.targets.aws_lambda.emulator.result import InvokeResult, Status, lambda_error
from fnpack.targets.aws_lambda.emulator.runtime_api import RuntimeAPIServer


@dataclass
class Call:
    """One event, from the moment it is sent until the runtime answers it."""

    request_id: str
    body: bytes
    deadline_ms: int
    handed_at: float = 0.0  # monotonic; 0 until the runtime took it
    outcome: tuple[Status, Any] | None = None


class Runtime:
    """One execution environment: a Runtime API server and the awslambdaric process that polls it."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, arn: str,
                 log: Callable[[str], None]) -> None:
        self._cond = threading.Condition()
        self._pending: Call | None = None
        self._calls: dict[str, Call] = {}
        self._arn = arn
        self._log = log
        self._closed = False
        self.ready = False  # the runtime asked for its first event: init is done
        self.init_error: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.broken = False  # set once this environment must not serve another event
        self.started = time.monotonic()
        self.init_duration_s: float | None = None
        self._server = RuntimeAPIServer(self)
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
                return InvokeResult("init_error", lambda_error(
                    "Sandbox.Timedout", f"init did not finish within {init_timeout:g} seconds"), 0.0, request_id)
            start = time.monotonic()
            call = Call(request_id, body, deadline_ms=int((time.time() + timeout) * 1000))
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
            status, payload = "error", lambda_error("Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds")
        self._report(request_id, duration)
        return InvokeResult(status, payload, duration, request_id)

    def _exit_error(self, request_id: str) -> dict[str, Any]:
        code = self.exit_code or 0
        how = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return lambda_error("Runtime.ExitError", f"RequestId: {request_id} Error: Runtime exited with error: {how}")

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

    # --- the runtime's side, called by the Runtime API handler (runtime_api) ---

    def next_event(self) -> Call | None:
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
            self.init_error = error if isinstance(error, dict) else lambda_error("Runtime.Unknown", str(error))
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
