"""Start `fnpack serve` in the background when none answers (for `fnpack up`), and stop it (`fnpack down`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fnpack.errors import OutputError, StartError

START_WAIT = 60.0
STOP_WAIT = 15.0  # the gateway stops within 2 x FNPACK_STOP_GRACE (4 s) even with a stuck thread
PID_FILE = "gateway.pid"
DETACHED_ENV = "FNPACK_SERVE_DETACHED"  # = gateway.DETACHED_ENV: its start lines then name `fnpack down`


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
    log_path, pid_path = state_dir / "gateway.log", state_dir / PID_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(log_path, "ab")
    except OSError as exc:
        raise OutputError(f"cannot write to the state folder {state_dir}: {exc.strerror}",
                          hint="choose another --state-dir") from None
    command = [sys.executable, "-m", "fnpack", "serve", "--host", host, "--port", str(parts.port or 80),
               "--state-dir", str(state_dir)]
    env = {**os.environ, DETACHED_ENV: "1"}
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
                     f"{START_WAIT:.0f} s", hint=f"see {log_path}; stop it with `fnpack down --state-dir {state_dir}`")


def stop_platform(state_dir: Path, wait: float = STOP_WAIT) -> dict[str, Any]:
    """Stop the platform `fnpack up` started for `state_dir` (its pid in STATE/gateway.pid).

    The pid is signalled only when /proc says it is `fnpack serve` for this very state folder (a pid
    left by a platform that died may name another process by now). SIGTERM, then up to `wait` s
    for it to exit; the pid file is removed once the process is gone, or when it names no such
    platform (stale). Returns {"stopped", "pid", "state_dir", "pid_file", "seconds"}; raises
    StartError (exit code 11, as "no platform answers") when there is nothing to stop or it does
    not exit in time, with the stale file already removed.
    """
    state_dir = Path(state_dir).resolve()
    pid_path = state_dir / PID_FILE
    result: dict[str, Any] = {"stopped": False, "pid": None, "state_dir": str(state_dir), "pid_file": str(pid_path)}
    try:
        text = pid_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise StartError(f"no platform started by `fnpack up` for {state_dir}: there is no {pid_path}",
                         hint=_not_ours_hint(state_dir)) from None
    except OSError as exc:
        raise OutputError(f"cannot read {pid_path}: {exc.strerror}") from None
    pid = int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 1 << 22 else None
    if pid is None:
        _remove(pid_path)
        raise StartError(f"{pid_path} held {text[:40]!r}, not a process id: removed it; no platform stopped",
                         hint=_not_ours_hint(state_dir))
    result["pid"] = pid
    why = _not_our_platform(pid, state_dir)
    if why is not None:
        _remove(pid_path)
        raise StartError(f"the platform of {state_dir} is not running: pid {pid} in {pid_path} {why}; "
                         f"removed the stale pid file", hint=_not_ours_hint(state_dir))
    began = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # exited between the check and the signal
        pass
    except PermissionError:
        raise StartError(f"not allowed to stop the platform of {state_dir} (pid {pid}): it runs as another user",
                         hint=f"run `fnpack down` as that user (or root), e.g. `sudo fnpack down --state-dir "
                              f"{state_dir}`") from None
    deadline = began + wait
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    result["seconds"] = round(time.monotonic() - began, 2)
    if _running(pid):
        raise StartError(f"the platform of {state_dir} (pid {pid}) got SIGTERM but is still running after "
                         f"{wait:g} s; {pid_path} is kept",
                         hint=f"its log is {state_dir / 'gateway.log'}; `kill -KILL {pid}` ends it at once "
                              "(its workers die with it)")
    _remove(pid_path)
    result["stopped"] = True
    return result


def _not_our_platform(pid: int, state_dir: Path) -> str | None:
    """None when `pid` is a running `fnpack serve` for `state_dir`; else why it is not, in words."""
    if not _running(pid):
        return "is not running"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [a.decode("utf-8", "surrogateescape") for a in handle.read().split(b"\0") if a]
    except FileNotFoundError:
        return "is not running"
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    try:
        cwd: str | None = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # another user's process: only an absolute --state-dir can be compared
        cwd = None
    fnpack_at = next((i for i, a in enumerate(args)
                      if a == "fnpack" or os.path.basename(a) == "fnpack"), None)  # -m fnpack, or the script
    if fnpack_at is None or "serve" not in args[fnpack_at + 1:]:
        return f"is another program now ({' '.join(args)[:120] or 'no command line'})"
    served = _state_dir_arg(args[fnpack_at + 1:], pid)
    if not os.path.isabs(served):
        if cwd is None:
            return "cannot be checked (its folder is not readable)"
        served = os.path.join(cwd, served)
    try:
        same = os.path.samefile(served, state_dir)
    except OSError:
        same = False
    return None if same else f"is `fnpack serve` for another state folder ({served})"


def _state_dir_arg(args: list[str], pid: int) -> str:
    """The state folder a `fnpack serve` command line names: --state-dir, else FNPACK_STATE_DIR, else .fnpack."""
    for i, arg in enumerate(args):
        if arg == "--state-dir" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--state-dir="):
            return arg.split("=", 1)[1]
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                if item.startswith(b"FNPACK_STATE_DIR="):
                    return item.split(b"=", 1)[1].decode("utf-8", "surrogateescape")
    except OSError:
        pass
    return ".fnpack"


def _running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie, exited but not reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b") ", 1)[1][:1] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot remove {path}: {exc.strerror}", hint="remove it by hand") from None


def _not_ours_hint(state_dir: Path) -> str:
    """Where a platform for this state folder may still be running, when `fnpack up` did not start it."""
    import fcntl

    try:
        with open(state_dir / "serve.lock", "r", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a `fnpack serve` runs on this folder
                owner = lock.read().strip() or "a `fnpack serve`"
                return (f"{owner} serves {state_dir}, started by hand: stop it with Ctrl-C where it runs, "
                        "or SIGTERM")
    except OSError:
        pass
    return "`fnpack up` writes the pid file when it starts a platform in the background; nothing to stop"
