"""`LocalLambda`: a built aws-lambda archive run as AWS Lambda would, without Docker.

The archive is unpacked (by the safe reader) into a read-only task root and run
by AWS's own runtime interface client, `awslambdaric`, in a fresh Python that
sees the task root first and, besides the standard library, only awslambdaric
and its own dependencies: the function uses the archive's numpy, onnxruntime
and mangum, never this venv's. This module holds the function's lifecycle
(start, invoke, wait_ready, logs, close) and the environment Lambda gives the
process; one execution environment at a time is an `environment.Runtime`,
the trees it runs are laid out by `tree`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import IO, Any, Self

from fnpack.archive import open_archive
from fnpack.errors import UsageError
from fnpack.targets.aws_lambda.emulator.environment import Runtime
from fnpack.targets.aws_lambda.emulator.result import MAX_PAYLOAD, InvokeResult
from fnpack.targets.aws_lambda.emulator.tree import (
    check_manifest,
    link_distributions,
    make_read_only,
    make_writable,
    runtime_distributions,
)

INIT_TIMEOUT = 10.0  # Lambda's limit for the init phase of an on-demand function
REGION = "us-east-1"
ACCOUNT = "000000000000"  # a placeholder account in the function's ARN
_LOG_LINES = 10_000  # logs kept in memory; a long `serve_http` must not grow without bound


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
        self._runtime: Runtime | None = None
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
        runtime_packages = runtime_distributions()  # fail before unpacking if awslambdaric is missing
        self._tmp = tempfile.TemporaryDirectory(prefix="fnpack-lambda-")
        try:
            root = Path(self._tmp.name)
            with open_archive(self.archive, self.expected_sha256) as archive:
                self.manifest = check_manifest(self.archive, archive.manifest())
                self.task_root = root / "task"
                archive.extract_all(self.task_root)
            self.handler = self.manifest["handlers"]["lambda"]
            self._runtime_dir = root / "runtime"
            link_distributions(runtime_packages, self._runtime_dir)
            make_read_only(self.task_root)  # /var/task is read-only on Lambda
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
                make_writable(self.task_root)
            self._tmp.cleanup()
            self._tmp = None

    def _spawn(self) -> Runtime:
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
        return Runtime(command, env, self.task_root, arn, self.log)

    def log(self, text: str) -> None:
        """Add text to the logs (and to log_stream): the runtime's output, Lambda's lines, the front server's."""
        # awslambdaric joins a multi-line error with "\r" (one CloudWatch event); a terminal would overwrite.
        text = text.replace("\r", "\n")
        with self._logs_lock:
            self._logs.append(text)
        if self.log_stream is not None:
            with contextlib.suppress(ValueError, OSError):  # a closed stream must not kill the reader
                self.log_stream.write(text)
                self.log_stream.flush()
