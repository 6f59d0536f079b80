"""The worker pool: processes that serve one (function, version) each, started on demand.

- A request for a version with no worker waits while one starts (cold start), instead of failing.
- More workers start (up to `scaling.max`) when the in-flight requests exceed
  `scaling.target_concurrency` per worker; idle workers stop after `scaling.idle_timeout`
  (scale to zero), except the `min_warm` the platform asks to keep.
- A worker that dies is dropped: the requests it held get a 502 that says so, the rest go on,
  and the next request (or the `min_warm` rule) starts a replacement.
Workers are forked by zygotes (see `zygote.py`), one per set of vendored dependencies, and
listen on Unix sockets in a private folder: only the gateway, not any local user, reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, StartError, UsageError
from fnpack.platform.forward import Connection, Response, UpstreamClosed
from fnpack.platform.isolation import Principal, worker_environment
from fnpack.platform.memory import MemoryLimits
from fnpack.platform.storage import state_error

START_TIMEOUT = float(os.environ.get("FNPACK_START_TIMEOUT", "120"))
RETRY_START_AFTER = 2.0  # seconds during which a failed start is reported again instead of retried
STALE_CONNECTION = 3000.0  # a pooled connection idle longer is not reused (workers keep them 3600 s)


class WorkerLost(FnpackError):
    """The worker holding a request exited before answering it (HTTP 502)."""

    exit_code = 11
    kind = "worker-lost"


class UpstreamTimeout(FnpackError):
    """A worker did not answer within the function's timeout (HTTP 504)."""

    exit_code = 11
    kind = "timeout"


class MemoryExceeded(WorkerLost):
    """The worker holding a request went over `resources.memory` and was stopped (HTTP 502)."""

    kind = "memory-limit"


@dataclass(frozen=True)
class Scaling:
    min: int
    max: int
    target_concurrency: int
    idle_timeout: float
    timeout: float
    memory_mib: int = 512

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Scaling:
        scaling, resources = spec.get("scaling") or {}, spec.get("resources") or {}
        return cls(scaling.get("min", 0), scaling.get("max", 4), scaling.get("target_concurrency", 8),
                   float(scaling.get("idle_timeout", 300)), float(resources.get("timeout", 30)),
                   int(resources.get("memory", 512)))

    @property
    def memory(self) -> int:
        return self.memory_mib << 20


@dataclass(eq=False)
class Worker:
    pid: int
    socket: str
    workdir: Path | None = None
    cgroup: Path | None = None
    over_memory: bool = False  # stopped by the watchdog for going over resources.memory
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    idle: list[tuple[Connection, float]] = field(default_factory=list)

    def ready_connection(self) -> Connection | None:
        """A kept-alive connection that can take a request now, if there is one."""
        while self.idle:
            conn, since = self.idle.pop()
            if conn.usable and time.monotonic() - since < STALE_CONNECTION:
                return conn
            conn.close()
        return None

    async def connection(self) -> Connection:
        conn = self.ready_connection()
        if conn is not None:
            return conn
        conn = await Connection.open(self.socket)
        # The socket's folder is the function's: it could put another process's socket (another
        # function's, the gateway's own) in its place. Only the worker itself is ever talked to.
        if self.pid and conn.peer_pid() != self.pid:
            conn.close()
            raise OSError(f"{self.socket} is not the socket of worker pid {self.pid}")
        return conn

    def give_back(self, conn: Connection, reusable: bool) -> None:
        if reusable and conn.usable:
            self.idle.append((conn, time.monotonic()))
        else:
            conn.close()

    def close_connections(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


_UNLOGGED: set[Path] = set()  # logs a line could not be written to (said once on stderr)


def _child_of(pid: Any, parent: int) -> bool:
    """Whether `pid` is a live (not yet reaped) child of `parent`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 1 and fields[1] == str(parent).encode()


def log_line(path: Path, message: str) -> None:
    """Append one platform event to a function's log (the workers append their output to it too).

    Best effort: a read-only or full state folder must not stop the platform from answering."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{stamp} [platform] {message}\n")
    except OSError as exc:
        if path not in _UNLOGGED:
            _UNLOGGED.add(path)
            print(f"fnpack serve: cannot write {path} ({exc.strerror}); its events are lost until it can be",
                  file=sys.stderr, flush=True)


class Zygote:
    """Gateway side of one zygote process: spawn requests out, worker events in."""

    def __init__(self, root: Path, stderr: Path, on_exit: Callable[[int, str], None], principal: Principal,
                 folder: Path, on_fork: Callable[[int, int], None] = lambda *_: None,
                 on_retire: Callable[[int, str], None] = lambda *_: None) -> None:
        self.root = root
        self.stderr = stderr
        self.on_exit = on_exit
        self.principal = principal
        self.folder = folder
        self.on_fork = on_fork
        self.on_retire = on_retire
        self.process: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.forked: dict[int, int] = {}  # spawn id -> pid, until ready or failed
        self.children: set[int] = set()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # onnxruntime's telemetry (on by default in 1.31) runs an uploader thread and keeps a SQLite
        # database open from import on: neither survives fork(), so the zygote turns it off.
        env = {**worker_environment(), "ORT_DISABLE_TELEMETRY": "1", "HOME": str(self.folder)}
        # The zygote becomes the function's user itself (uvloop's subprocesses take no user=), so until
        # then it runs as root: -I keeps the current folder, the user site and PYTHON* variables off
        # its sys.path, and it starts in "/"; it enters the function's folder once it is that user.
        user = [] if self.principal.uid is None else ["--user", str(self.principal.uid), "--group",
                                                       str(self.principal.gid)]
        with open(self.stderr, "ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-m", "fnpack.platform.zygote", "--root", str(self.root),
                "--folder", str(self.folder), *user,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                limit=1 << 20, env=env, cwd="/")
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT)
        except (asyncio.TimeoutError, ValueError):
            line = b""
        if not line.startswith(b'{"zygote": "ready"'):
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            raise StartError(f"the worker launcher for {self.root.name[:12]} did not start",
                             hint=f"its errors are in {self.stderr}")
        self._reader = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._reader is not None \
            and not self._reader.done()

    async def spawn(self, spawn_id: int, request: dict[str, Any]) -> int:
        assert self.process is not None and self.process.stdin is not None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[spawn_id] = future
        self.process.stdin.write((json.dumps({"spawn": spawn_id, **request}) + "\n").encode())
        await self.process.stdin.drain()
        try:
            return await asyncio.wait_for(asyncio.shield(future), START_TIMEOUT)
        except asyncio.TimeoutError:
            raise StartError(f"{request['label']} did not become ready within {START_TIMEOUT:.0f} s",
                             hint="set FNPACK_START_TIMEOUT for slow models; its log says where it stopped") \
                from None
        finally:
            self.pending.pop(spawn_id, None)
            pid = self.forked.pop(spawn_id, None)
            if pid and not (future.done() and not future.cancelled() and future.exception() is None):
                with contextlib.suppress(ProcessLookupError):  # given up (timeout, cancelled): none is left
                    os.kill(pid, signal.SIGKILL)

    async def _read(self) -> None:
        """Events from the zygote and its workers. Workers run the function's code, and can write on
        this channel too: a message is believed only about this zygote's own children."""
        assert self.process is not None and self.process.stdout is not None
        try:
            while line := await self._line():
                try:
                    message = json.loads(line)
                    self._handle(message)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue  # not ours to read: a worker wrote it
        finally:
            # The zygote is gone, and its workers with it (they die with their parent).
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(StartError("the worker launcher exited", hint=f"see {self.stderr}"))
            for pid in list(self.children):
                self.on_exit(pid, "its launcher exited")
            self.children.clear()

    async def _line(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        while True:
            try:
                return await self.process.stdout.readline()
            except ValueError:  # a line over the limit: dropped by the reader, go on with the next
                continue

    def _handle(self, message: dict[str, Any]) -> None:
        assert self.process is not None
        if "exited" in message:
            pid = message["exited"]
            if pid in self.children and not _child_of(pid, self.process.pid):  # reaped: it is gone
                self.children.discard(pid)
                self.on_exit(pid, str(message["status"])[:200])
        elif "forked" in message:
            spawn_id, pid = message["forked"], message["pid"]
            if spawn_id in self.pending and spawn_id not in self.forked and _child_of(pid, self.process.pid):
                self.forked[spawn_id] = pid
                self.children.add(pid)
                self.on_fork(spawn_id, pid)
        elif "retiring" in message:
            if message["retiring"] in self.children:
                self.on_retire(message["retiring"], str(message.get("reason", ""))[:300])
        else:
            spawn_id = message.get("ready", message.get("failed"))
            future = self.pending.get(spawn_id)
            if future is None or future.done() or message.get("pid") != self.forked.get(spawn_id):
                return
            if "ready" in message:
                future.set_result(message["pid"])
            else:
                future.set_exception(StartError(str(message["message"])[:2000], hint=message.get("hint")))

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)


class VersionPool:
    """The workers of one (function, version) and the requests waiting for one."""

    def __init__(self, function: str, number: int, root: Path, key: str, scaling: Scaling, log: Path,
                 launch: Callable[[VersionPool], Any], on_start: Callable[[VersionPool, float, str], None],
                 principal: Principal = Principal(), folder: Path | None = None) -> None:
        self.function = function
        self.number = number
        self.root = root
        self.key = key
        self.principal = principal
        self.folder = folder or root.parent  # its workers' sockets and working folders
        self.scaling = scaling
        self.log = log
        self.label = f"{function} v{number}"
        self.min_warm = 0
        self.workers: list[Worker] = []
        self.starting = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.failure: tuple[StartError, float] | None = None
        self._launch = launch
        self._on_start = on_start
        self._tasks: set[asyncio.Task[None]] = set()

    # --- requests ----------------------------------------------------------------------------

    def take(self) -> Worker | None:
        """The least busy worker, counted in flight (starting one more if all are over target); None
        while there is none yet (one is then starting); the StartError of a start that just failed."""
        workers = self.workers
        if workers:
            worker = workers[0] if len(workers) == 1 else min(workers, key=lambda w: w.in_flight)
            if worker.in_flight >= self.scaling.target_concurrency and \
                    len(workers) + self.starting < self.scaling.max:
                self.start("scale up")
            worker.in_flight += 1
            return worker
        if self.failure and time.monotonic() - self.failure[1] < RETRY_START_AFTER:
            raise self.failure[0]
        if not self.starting:
            self.start("cold start")
        return None

    async def acquire(self) -> Worker:
        """`take`, waiting while a worker starts."""
        while True:
            worker = self.take()
            if worker is not None:
                return worker
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter

    def release(self, worker: Worker) -> None:
        worker.in_flight -= 1
        worker.last_used = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, reason: str) -> None:
        self.starting += 1
        task = asyncio.get_running_loop().create_task(self._start(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, reason: str) -> None:
        began = time.monotonic()
        try:
            worker = await self._launch(self)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the waiters, or they wait forever
            self.starting -= 1
            if isinstance(exc, StartError):
                error = exc
            elif isinstance(exc, FnpackError):
                error = StartError(exc.message, hint=exc.hint)
            else:  # e.g. the state folder turned read-only or full under the logs: say so
                known = state_error(exc, self.log.parent.parent)  # <state>/logs/NAME.log
                error = StartError(f"{self.label} cannot start: {known.message}", hint=known.hint) if known else \
                    StartError(f"{self.label} cannot start: {type(exc).__name__}: {exc}")
            self.failure = (error, time.monotonic())
            if not self.workers and not self.starting:
                self._wake(error)
            log_line(self.log, f"{self.label}: start failed: {error.message}")
            return
        self.starting -= 1
        self.failure = None
        self.workers.append(worker)
        self._wake(None)
        elapsed = time.monotonic() - began
        log_line(self.log, f"{self.label}: worker pid {worker.pid} ready in {elapsed * 1000:.0f} ms ({reason})")
        self._on_start(self, elapsed, reason)

    def _wake(self, error: StartError | None) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error) if error else waiter.set_result(None)

    def ensure_min(self) -> None:
        for _ in range(self.min_warm - len(self.workers) - self.starting):
            self.start("kept warm")

    def forget(self, worker: Worker, why: str) -> bool:
        """Drop a worker that exited; True if it was still in the pool."""
        worker.close_connections()
        if worker not in self.workers:
            return False
        self.workers.remove(worker)
        log_line(self.log, f"{self.label}: worker pid {worker.pid} {why}")
        if self.workers or self.starting:
            return True
        if self.waiters:
            self.start("replacement")
        else:
            self.ensure_min()
        return True

    def idle_workers(self, now: float) -> list[Worker]:
        """Workers to stop: idle past the timeout, beyond the ones kept warm."""
        spare = len(self.workers) - self.min_warm
        doomed = []
        for worker in sorted(self.workers, key=lambda w: w.last_used):
            if spare <= 0:
                break
            if worker.in_flight == 0 and now - worker.last_used >= self.scaling.idle_timeout:
                doomed.append(worker)
                spare -= 1
        return doomed

    def stop_worker(self, worker: Worker, why: str) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        worker.close_connections()
        log_line(self.log, f"{self.label}: stopping worker pid {worker.pid} ({why})")
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._wake(StartError(f"{self.label} was removed"))


class WorkerPool:
    """Every version's pool, the zygotes that fork their workers, memory limits and the idle reaper."""

    def __init__(self, run_dir: Path, logs_dir: Path,
                 on_start: Callable[[VersionPool, float, str], None] = lambda *_: None,
                 on_change: Callable[[VersionPool], None] = lambda _: None,
                 memory: MemoryLimits | None = None,
                 prepare: Callable[[VersionPool], Awaitable[None]] | None = None) -> None:
        self.run_dir = run_dir
        self._prepare = prepare
        self.logs_dir = logs_dir
        self.pools: dict[tuple[str, int], VersionPool] = {}
        self.on_change = on_change
        self.memory = memory or MemoryLimits(None)
        self._on_start = on_start
        self._zygotes: dict[tuple[str, str], asyncio.Task[Zygote]] = {}
        self._owners: dict[int, tuple[VersionPool, Worker]] = {}
        self._spawning: dict[int, VersionPool] = {}  # spawn id -> its pool, until its fork is reported
        self._groups: dict[int, Path | None] = {}  # pid -> its memory cgroup
        self._spawned = 0
        self._reaper: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # requests waiting for a worker or a connection

    def log_path(self, function: str) -> Path:
        return self.logs_dir / f"{function}.log"

    def pool(self, function: str, number: int, root: Path, key: str, scaling: Scaling,
             principal: Principal = Principal(), folder: Path | None = None) -> VersionPool:
        pool = self.pools.get((function, number))
        if pool is None:
            pool = VersionPool(function, number, root, key, scaling, self.log_path(function), self._launch,
                               self._started, principal, folder)
            self.pools[(function, number)] = pool
        return pool

    def _started(self, pool: VersionPool, elapsed: float, reason: str) -> None:
        self._on_start(pool, elapsed, reason)
        self.on_change(pool)

    # --- forwarding ----------------------------------------------------------------------------

    def send(self, pool: VersionPool, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes, done: Callable[[Response | FnpackError], None]) -> None:
        """Send one request to a worker of `pool`; `done` gets the worker's Response, or the FnpackError
        that answers the request instead (WorkerLost, UpstreamTimeout, StartError, UsageError).

        With a worker that has a kept-alive connection ready (the usual case), the whole exchange
        runs in the loop's callbacks: no task. Otherwise a task waits for a worker to start, or
        connects; a worker found gone before the request reached it is dropped and another one used.
        """
        try:
            worker = pool.take()
        except StartError as exc:
            return done(exc)
        conn = worker.ready_connection() if worker is not None else None
        if conn is not None:
            return self._exchange(pool, worker, conn, method, target, headers, body, done)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(self._connect(pool, worker, method, target, headers, body, done))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _connect(self, pool: VersionPool, worker: Worker | None, method: bytes, target: bytes,
                       headers: list[tuple[bytes, bytes]], body: bytes,
                       done: Callable[[Response | FnpackError], None]) -> None:
        for _ in range(3):
            try:
                if worker is None:
                    worker = await pool.acquire()
                conn = await worker.connection()
            except StartError as exc:
                return done(exc)
            except OSError:  # its socket is gone (it exited, or is no more its): this request never reached it
                pool.release(worker)  # type: ignore[arg-type]
                self._stop(pool, worker, "stopped accepting connections", signal.SIGKILL)  # type: ignore[arg-type]
                worker = None
                continue
            except BaseException:  # cancelled: the platform is stopping
                if worker is not None:
                    pool.release(worker)
                raise
            return self._exchange(pool, worker, conn, method, target, headers, body, done)
        done(WorkerLost(f"no worker of {pool.label} accepted the request", hint=f"`fnpack logs {pool.function}`"))

    def _exchange(self, pool: VersionPool, worker: Worker, conn: Connection, method: bytes, target: bytes,
                  headers: list[tuple[bytes, bytes]], body: bytes,
                  done: Callable[[Response | FnpackError], None]) -> None:
        """One request on `conn`, in callbacks; `worker` is counted in flight until its answer."""
        limit = pool.scaling.timeout + 10

        def answered(result: Response | UpstreamClosed) -> None:
            timer.cancel()
            pool.release(worker)
            if isinstance(result, UpstreamClosed):
                return done(self._lost(pool, worker, str(result)))
            worker.give_back(conn, result.keep_alive)
            done(result)

        def hung() -> None:
            conn.abandon()  # the answer, should it come, is no one's: the connection closes, unanswered
            pool.release(worker)
            # The worker's own timeout should have answered long ago: it is hung. Replace it.
            self._stop(pool, worker, f"did not answer within {limit:.0f} s", signal.SIGKILL)
            done(UpstreamTimeout(f"{pool.label} did not answer within {limit:.0f} s; its worker was hung and is "
                                 "replaced", hint="raise resources.timeout in fnpack.yaml"))

        timer = asyncio.get_running_loop().call_later(limit, hung)
        try:
            conn.send(method, target, headers, body, answered)
        except ValueError as exc:  # a request target that would split the request line
            timer.cancel()
            pool.release(worker)
            worker.give_back(conn, True)
            done(UsageError(str(exc), hint="encode spaces and control characters in the path and query"))

    def _lost(self, pool: VersionPool, worker: Worker, why: str) -> WorkerLost:
        """The error for a request whose worker dropped it; the worker is taken out of rotation."""
        over = worker.over_memory or self.memory.exceeded(worker.pid, worker.cgroup, pool.scaling.memory)
        # Dropping a request means it died or is dying: make sure, so that none runs untracked.
        self._stop(pool, worker, f"went over its memory limit of {pool.scaling.memory_mib} MiB" if over else
                   f"dropped a request ({why})", signal.SIGKILL)
        if over:
            return MemoryExceeded(
                f"the worker serving {pool.label} (pid {worker.pid}) went over its memory limit of "
                f"{pool.scaling.memory_mib} MiB (resources.memory) and was stopped; this request was not completed",
                hint="raise resources.memory in fnpack.yaml, or send smaller requests; a new worker starts "
                     "with the next request")
        return WorkerLost(f"the worker serving {pool.label} (pid {worker.pid}) stopped before it answered ({why}); "
                          "it exited or crashed, and this request was not completed",
                          hint=f"`fnpack logs {pool.function}` shows why; retrying the request starts a new worker")

    def _stop(self, pool: VersionPool, worker: Worker, why: str, sig: int = signal.SIGTERM) -> None:
        """Take a misbehaving worker out of rotation (unlike an idle one, it is replaced when needed)."""
        if pool.forget(worker, why):
            self.on_change(pool)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # --- processes ----------------------------------------------------------------------------

    async def _launch(self, pool: VersionPool) -> Worker:
        if self._prepare is not None:  # the platform verifies and locks the version's tree first
            await self._prepare(pool)
        zygote = await self.zygote(pool)
        self._spawned += 1
        spawn_id = self._spawned
        socket_path = str(pool.folder / f"w{spawn_id}.sock")
        workdir = pool.folder / f"w{spawn_id}"
        self._spawning[spawn_id] = pool
        try:
            pid = await zygote.spawn(spawn_id, {
                "root": str(pool.root), "socket": socket_path, "workdir": str(workdir), "label": pool.label,
                "hold": self.memory.hold_at_fork,
                "env": {"FNPACK_MODEL_VERSION": str(pool.number), "FNPACK_FUNCTION": pool.function}})
        except BaseException:  # nothing of a start that failed is left behind
            shutil.rmtree(workdir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
            raise
        finally:
            self._spawning.pop(spawn_id, None)
        worker = Worker(pid, socket_path, workdir, self._groups.get(pid))
        self._owners[pid] = (pool, worker)
        return worker

    def _forked(self, spawn_id: int, pid: int) -> None:
        # Moving a process into a cgroup takes 5-20 ms here (the kernel waits for an RCU grace
        # period): in a thread, so that the gateway's other requests do not wait for it too.
        asyncio.get_running_loop().run_in_executor(None, self._limit, spawn_id, pid, self._spawning.get(spawn_id))

    def _limit(self, spawn_id: int, pid: int, pool: VersionPool | None) -> None:
        try:
            if pool is None:
                raise OSError("its start was given up already")
            self._groups[pid] = self.memory.attach(f"w{spawn_id}", pid, pool.scaling.memory)
        except OSError as exc:  # a worker runs under its limit, or not at all: its start fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pool is not None:
                log_line(pool.log, f"{pool.label}: cannot limit the memory of worker pid {pid}: {exc}")

    def _retiring(self, pid: int, reason: str) -> None:
        owner = self._owners.get(pid)
        if owner is not None:
            self._stop(owner[0], owner[1], f"retiring: {reason}")

    async def zygote(self, pool: VersionPool) -> Zygote:
        """The running zygote for a function's dependency set, started from `pool.root` if there is none."""
        key = (pool.function, pool.key)
        task = self._zygotes.get(key)
        if task is not None and task.done() and (task.exception() or not task.result().alive):
            task = None
        if task is None:
            zygote = Zygote(pool.root, pool.log, self._exited, pool.principal, pool.folder, self._forked,
                            self._retiring)
            task = asyncio.get_running_loop().create_task(self._start_zygote(zygote))
            self._zygotes[key] = task
        return await asyncio.shield(task)

    @staticmethod
    async def _start_zygote(zygote: Zygote) -> Zygote:
        await zygote.start()
        return zygote

    def _exited(self, pid: int, status: str) -> None:
        group = self._groups.pop(pid, None)
        owner = self._owners.pop(pid, None)
        if owner is not None:  # read before the cgroup goes: a request it held says why it ended
            owner[1].over_memory = owner[1].over_memory or self.memory.exceeded(pid, group, owner[0].scaling.memory)
        self.memory.release(group)
        if owner is None:
            return
        pool, worker = owner
        if worker.workdir is not None:
            shutil.rmtree(worker.workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(worker.socket)
        if pool.forget(worker, f"exited: {status}"):
            self.on_change(pool)
        else:  # dropped already (idle-stopped, or found dead by a request): record how it ended
            log_line(pool.log, f"{pool.label}: worker pid {worker.pid} exited: {status}")

    # --- scaling and limits --------------------------------------------------------------------

    def start_reaper(self, every: float = 0.25) -> None:
        async def reap() -> None:
            while True:
                await asyncio.sleep(every)
                now = time.monotonic()
                for pool in list(self.pools.values()):
                    doomed = pool.idle_workers(now)
                    for worker in doomed:
                        pool.stop_worker(worker, f"idle for {pool.scaling.idle_timeout:g} s")
                    if doomed:
                        self.on_change(pool)
                    if not self.memory.cgroups:  # the watchdog: the kernel does it with cgroups
                        for worker in list(pool.workers):
                            if self.memory.exceeded(worker.pid, None, pool.scaling.memory):
                                worker.over_memory = True
                                self._stop(pool, worker, f"went over its memory limit of "
                                                         f"{pool.scaling.memory_mib} MiB", signal.SIGKILL)

        self._reaper = asyncio.get_running_loop().create_task(reap())

    def remove(self, function: str, number: int | None = None) -> None:
        """Stop the workers of a deleted version (or of every version of a deleted function)."""
        for key in [k for k in self.pools if k[0] == function and (number is None or k[1] == number)]:
            pool = self.pools.pop(key)
            pool.cancel()
            for worker in list(pool.workers):
                pool.stop_worker(worker, "version deleted")
            self.on_change(pool)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for task in self._sending:
            task.cancel()
        for pool in self.pools.values():
            pool.cancel()
            for worker in list(pool.workers):
                pool.stop_worker(worker, "platform stopping")
        tasks = list(self._zygotes.values())
        for task in tasks:
            if task.done() and not task.exception():
                await task.result().stop()
            else:
                task.cancel()
