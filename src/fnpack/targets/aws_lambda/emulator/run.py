"""The CLI's entry, `run_lambda` (`fnpack run ARCHIVE --as lambda`): reads --data, --event or --port,
runs the archive in a `LocalLambda` for one invocation or serves it as a Function URL, and prints the
answer; SIGTERM is made an exit that cleans up, so the runtime and its task root go too.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fnpack.errors import UsageError
from fnpack.targets.aws_lambda.emulator.function_url import serve_http
from fnpack.targets.aws_lambda.emulator.local import LocalLambda


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
