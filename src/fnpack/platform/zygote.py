"""`python -m fnpack.platform.zygote --root DIR`: a pre-started process that forks workers.

Cold start is the cost of scale to zero, and most of it is importing numpy,
onnxruntime and the HTTP server (DESIGN.md: ~0.24 s before a model even loads).
The zygote pays that once: it imports them from one unpacked archive, then
forks a worker per request. A forked worker only imports the archive's own code,
loads its model and listens: a few tens of milliseconds.

A zygote serves archives whose vendored dependencies are byte-identical to the
ones it imported, so a worker never runs with libraries other than its archive's.
A zygote serves the versions of one function (the gateway keys zygotes by function and
`dependency_key`) and runs as that function's user (see `isolation.py`): code of one
function is never imported into a process that serves another.

Protocol, one JSON object per line (lines are shorter than PIPE_BUF, so the
writes of the zygote and of its children never interleave):
  stdin   {"spawn": ID, "root": DIR, "socket": PATH, "workdir": DIR, "label": TEXT, "env": {...}, "hold": BOOL}
  stdout  {"zygote": "ready"}                         once, after the imports
          {"forked": ID, "pid": PID}                  from the zygote, right after fork (with "hold", once the
                                                      child has stopped itself: the gateway puts it in its
                                                      memory cgroup, then sends SIGCONT)
          {"ready": ID, "pid": PID}                   from the worker, listening, model loaded
          {"failed": ID, "pid": PID, "message": ..., "hint": ...}   from the worker, then it exits
          {"retiring": PID, "reason": TEXT}           from the worker: its timed-out calls cannot be stopped
          {"exited": PID, "status": TEXT}             from the zygote, when a worker is reaped
Workers write their output to the zygote's stderr, the function's log. The zygote and its
workers die with their parent (PR_SET_PDEATHSIG): a gateway killed with SIGKILL leaves no
orphan behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

PRELOAD = ("numpy", "onnxruntime")
OWN_FILES = ("(fnpack runtime)", "(your code)", "(model)")


def dependency_key(manifest: dict[str, Any]) -> str:
    """Hash of the archive's vendored files: archives with equal keys can share a zygote."""
    import hashlib

    digest = hashlib.sha256(manifest.get("python", "").encode())
    for path, entry in sorted(manifest["files"].items()):
        if entry.get("owner") not in OWN_FILES:
            digest.update(f"\n{path}\0{entry['sha256']}".encode())
    return digest.hexdigest()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: orphans are then stopped by the gateway's shutdown only
        pass


def become(uid: int, gid: int) -> None:
    """Drop root for good: no supplementary groups, then the group, then the user (all of real,
    effective and saved), so that nothing this process runs can get root back."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def no_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS: no set-user-id program or file capability can raise this process's rights."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _emit(fd: int, message: dict[str, Any]) -> None:
    line = json.dumps(message)
    if len(line) > 3000 and "message" in message:  # under PIPE_BUF: writes to the pipe never interleave
        line = json.dumps({**message, "message": str(message["message"])[:2000] + "..."})
    os.write(fd, (line + "\n").encode())


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with code {os.WEXITSTATUS(status)}"


def _reap(*_: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _emit(1, {"exited": pid, "status": _describe(status)})


def _wait_stopped(pid: int, within: float = 2.0) -> None:
    """Until the child has stopped itself (or died, or `within` seconds passed: someone may have sent
    it SIGCONT first; the gateway's SIGCONT is then harmless)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        except ChildProcessError:  # it died first, and was reaped: "exited" says so
            return
        if done:
            return
        time.sleep(0.0005)


def _preload(root: Path) -> None:
    sys.path.insert(0, str(root))
    for name in PRELOAD:
        if (root / name).is_dir():
            __import__(name)
    # The server side of a worker (from the installed fnpack's environment, as `fnpack.worker` uses).
    import asyncio  # noqa: F401
    import logging  # noqa: F401

    import uvicorn  # noqa: F401
    import uvicorn.lifespan.on  # noqa: F401
    import uvicorn.protocols.http.httptools_impl  # noqa: F401

    import fnpack.http_server  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    import fnpack.worker  # noqa: F401


def _worker(request: dict[str, Any], control_fd: int) -> None:
    """In the forked child: become the worker for one version; never returns."""
    spawn_id = request["spawn"]
    code = 0
    try:
        die_with_parent(signal.SIGKILL)  # first: a worker stopped below must not outlive its zygote
        if os.getppid() == 1:
            os._exit(1)
        if request.get("hold"):  # wait until the gateway has put this process in its memory cgroup
            os.kill(os.getpid(), signal.SIGSTOP)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.dup2(2, 1)  # the zygote's stdout is the control channel; stderr is the function's log
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        workdir = request["workdir"]
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        # On top of the zygote's environment, which the gateway scrubbed of its secrets.
        os.environ.update(request.get("env", {}), HOME=workdir, TMPDIR=workdir,
                          FNPACK_CONTROL_FD=str(control_fd))
        import logging

        logging.Formatter.converter = time.gmtime  # one time format in a function's log: UTC, as the platform's
        logging.basicConfig(level=logging.INFO, force=True, datefmt="%Y-%m-%dT%H:%M:%S",
                            format=f"%(asctime)s.%(msecs)03dZ {request['label']} pid %(process)d %(levelname)s: "
                                   "%(message)s")
        from fnpack.errors import FnpackError
        from fnpack.worker import load_app

        try:
            app = load_app(Path(request["root"]))
        except FnpackError as exc:
            _emit(control_fd, {"failed": spawn_id, "pid": os.getpid(), "message": exc.message, "hint": exc.hint})
            os._exit(exc.exit_code)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(request["socket"])
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o077)  # only this user (and the gateway, root) may connect
        sock.bind(request["socket"])
        os.umask(old_umask)
        sock.listen(1024)
        _emit(control_fd, {"ready": spawn_id, "pid": os.getpid()})
        _serve(app, sock)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
        try:
            _emit(control_fd, {"failed": spawn_id, "pid": os.getpid(),
                               "message": f"the worker failed to start: {type(exc).__name__}: {exc}", "hint": None})
        except OSError:
            pass
        code = 11
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(app: Any, sock: socket.socket) -> None:
    import uvicorn

    from fnpack.http_server import make_config

    # Keep-alive far longer than uvicorn's 5 s: the gateway pools connections and must not
    # race a worker closing an idle one.
    config = make_config(app, timeout_keep_alive=3600)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnpack.platform.zygote")
    parser.add_argument("--root", type=Path, required=True, help="an unpacked archive to import libraries from")
    parser.add_argument("--folder", type=Path, help="the working folder, entered once the user is switched")
    parser.add_argument("--user", type=int, help="become this uid (and --group) before importing anything")
    parser.add_argument("--group", type=int)
    args = parser.parse_args(argv)
    if args.user is not None:
        become(args.user, args.group if args.group is not None else args.user)
    if args.folder is not None:
        os.chdir(args.folder)
    die_with_parent()  # after the switch: changing credentials clears the parent-death signal
    no_new_privileges()
    _preload(args.root)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # workers follow through their death signal
    _emit(1, {"zygote": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _worker(request, os.dup(1))
        if request.get("hold"):
            _wait_stopped(pid)
        _emit(1, {"forked": request["spawn"], "pid": pid})
    return 0


if __name__ == "__main__":
    sys.exit(main())
