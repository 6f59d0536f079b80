"""Start `fnpack serve` in the background when none answers (for `fnpack up`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fnpack.errors import OutputError, StartError

START_WAIT = 60.0


def ensure_platform(remote: Any, state_dir: Path, invoke_token: str | None,
                    say: Callable[[str], None]) -> dict[str, Any]:
    """Use the platform answering at `remote.url`, or start one there (loopback only).

    A started platform runs in its own session, its output in STATE/gateway.log and its
    pid in STATE/gateway.pid; it outlives the command that started it.
    """
    if remote.healthy():
        say(f"platform  using the one at {remote.url}")
        return {"url": remote.url, "started": False, "pid": None}
    parts = urlsplit(remote.url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise StartError(f"no fnpack platform at {remote.url}",
                         hint="`fnpack up` starts one only at an http://127.0.0.1:PORT URL; elsewhere run "
                              "`fnpack serve` on that machine")
    host = "::1" if parts.hostname == "::1" else "127.0.0.1"
    state_dir = state_dir.resolve()
    log_path, pid_path = state_dir / "gateway.log", state_dir / "gateway.pid"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(log_path, "ab")
    except OSError as exc:
        raise OutputError(f"cannot write to the state folder {state_dir}: {exc.strerror}",
                          hint="choose another --state-dir") from None
    command = [sys.executable, "-m", "fnpack", "serve", "--host", host, "--port", str(parts.port or 80),
               "--state-dir", str(state_dir)]
    env = dict(os.environ)
    if invoke_token:
        env["FNPACK_INVOKE_TOKEN"] = invoke_token  # not on the command line, where `ps` shows it
    with log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, close_fds=True)
    pid_path.write_text(f"{process.pid}\n", encoding="utf-8")
    say(f"platform  starting at {remote.url} (pid {process.pid}, log {log_path})")
    deadline = time.monotonic() + START_WAIT
    token_needed = not os.environ.get("FNPACK_TOKEN")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_path.unlink(missing_ok=True)
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-10:])
            raise StartError(f"the platform exited with code {process.returncode} while starting:\n{tail}",
                             hint=f"its full output is in {log_path}")
        if remote.healthy(timeout=1.0) and (not token_needed or (state_dir / "token").is_file()):
            say(f"platform  started at {remote.url}")
            return {"url": remote.url, "started": True, "pid": process.pid, "log": str(log_path),
                    "pid_file": str(pid_path)}
        time.sleep(0.1)
    raise StartError(f"the platform started (pid {process.pid}) but did not answer at {remote.url} within "
                     f"{START_WAIT:.0f} s", hint=f"see {log_path}; stop it with `kill {process.pid}`")
