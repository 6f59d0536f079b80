"""`python -m fnpack.platform.zygote --root DIR`: a pre-started process that forks workers.

Cold start is the cost of scale to zero, and most of it is importing numpy,
onnxruntime and the HTTP server (DESIGN.md: ~0.24 s before a model even loads).
The zygote pays that once: it imports them from one unpacked archive, then
forks a worker per request. A forked worker only imports the archive's own code,
loads its model and listens: a few tens of milliseconds.

A zygote serves archives whose vendored dependencies are byte-identical to the
ones it imported (the gateway keys zygotes by `dependency_key`), so a worker
never runs with libraries other than its archive's.

Protocol, one JSON object per line (lines are shorter than PIPE_BUF, so the
writes of the zygote and of its children never interleave):
  stdin   {"spawn": ID, "root": DIR, "socket": PATH, "log": PATH, "label": TEXT, "env": {...}}
  stdout  {"zygote": "ready"}                         once, after the imports
          {"forked": ID, "pid": PID}                  from the zygote, right after fork
          {"ready": ID, "pid": PID}                   from the worker, listening, model loaded
          {"failed": ID, "pid": PID, "message": ..., "hint": ...}   from the worker, then it exits
          {"exited": PID, "status": TEXT}             from the zygote, when a worker is reaped
The zygote and its workers die with their parent (PR_SET_PDEATHSIG): a gateway killed
with SIGKILL leaves no orphan behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
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


def _emit(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


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

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    import fnpack.worker  # noqa: F401


def _worker(request: dict[str, Any], ready_fd: int) -> None:
    """In the forked child: become the worker for one version; never returns."""
    spawn_id = request["spawn"]
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update(request.get("env", {}))
        import logging

        logging.basicConfig(level=logging.INFO, force=True,
                            format=f"%(asctime)s {request['label']} pid %(process)d %(levelname)s: %(message)s")
        from fnpack.errors import FnpackError
        from fnpack.worker import load_app

        try:
            app = load_app(Path(request["root"]))
        except FnpackError as exc:
            _emit(ready_fd, {"failed": spawn_id, "pid": os.getpid(), "message": exc.message, "hint": exc.hint})
            os._exit(exc.exit_code)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(request["socket"])
        except FileNotFoundError:
            pass
        sock.bind(request["socket"])
        sock.listen(1024)
        _emit(ready_fd, {"ready": spawn_id, "pid": os.getpid()})
        os.close(ready_fd)
        _serve(app, sock)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
        try:
            _emit(ready_fd, {"failed": spawn_id, "pid": os.getpid(),
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

    # Keep-alive far longer than uvicorn's 5 s: the gateway pools connections and must not
    # race a worker closing an idle one.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", proxy_headers=False,
                            server_header=False, date_header=False, timeout_keep_alive=3600,
                            http="httptools", loop="auto")
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnpack.platform.zygote")
    parser.add_argument("--root", type=Path, required=True, help="an unpacked archive to import libraries from")
    args = parser.parse_args(argv)
    die_with_parent()
    _preload(args.root)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # workers follow through their death signal
    _emit(1, {"zygote": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _worker(request, os.dup(1))
        _emit(1, {"forked": request["spawn"], "pid": pid})
    return 0


if __name__ == "__main__":
    sys.exit(main())
