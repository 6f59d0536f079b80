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
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, StartError
from fnpack.platform.forward import Connection, Response, UpstreamClosed

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


@dataclass(frozen=True)
class Scaling:
    min: int
    max: int
    target_concurrency: int
    idle_timeout: float
    timeout: float

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Scaling:
        scaling, resources = spec.get("scaling") or {}, spec.get("resources") or {}
        return cls(scaling.get("min", 0), scaling.get("max", 4), scaling.get("target_concurrency", 8),
                   float(scaling.get("idle_timeout", 300)), float(resources.get("timeout", 30)))


@dataclass(eq=False)
class Worker:
    pid: int
    socket: str
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    idle: list[tuple[Connection, float]] = field(default_factory=list)

    async def connection(self) -> Connection:
        while self.idle:
            conn, since = self.idle.pop()
            if conn.usable and time.monotonic() - since < STALE_CONNECTION:
                return conn
            conn.close()
        return await Connection.open(self.socket)

    def give_back(self, conn: Connection, reusable: bool) -> None:
        if reusable and conn.usable:
            self.idle.append((conn, time.monotonic()))
        else:
            conn.close()

    def close_connections(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


def log_line(path: Path, message: str) -> None:
    """Append one platform event to a function's log (the workers append their output to it too)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{stamp} [platform] {message}\n")


class Zygote:
    """Gateway side of one zygote process: spawn requests out, worker events in."""

    def __init__(self, root: Path, stderr: Path, on_exit: Callable[[int, str], None]) -> None:
        self.root = root
        self.stderr = stderr
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.forked: dict[int, int] = {}  # spawn id -> pid, until ready or failed
        self.children: set[int] = set()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # onnxruntime's telemetry (on by default in 1.31) runs an uploader thread and keeps a SQLite
        # database open from import on: neither survives fork(), so the zygote turns it off.
        env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
        with open(self.stderr, "ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fnpack.platform.zygote", "--root", str(self.root),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                limit=1 << 20, env=env)
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b'{"zygote": "ready"'):
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
            pid = self.forked.pop(spawn_id, None)
            if pid:
                os.kill(pid, signal.SIGKILL)
            raise StartError(f"{request['label']} did not become ready within {START_TIMEOUT:.0f} s",
                             hint="set FNPACK_START_TIMEOUT for slow models; its log says where it stopped") \
                from None
        finally:
            self.pending.pop(spawn_id, None)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            message = json.loads(line)
            if "exited" in message:
                self.children.discard(message["exited"])
                self.on_exit(message["exited"], message["status"])
            elif "forked" in message:
                self.forked[message["forked"]] = message["pid"]
                self.children.add(message["pid"])
            else:
                spawn_id = message.get("ready", message.get("failed"))
                self.forked.pop(spawn_id, None)
                future = self.pending.get(spawn_id)
                if future is None or future.done():
                    continue
                if "ready" in message:
                    future.set_result(message["pid"])
                else:
                    future.set_exception(StartError(message["message"], hint=message.get("hint")))
        # The zygote is gone, and its workers with it (they die with their parent).
        for future in self.pending.values():
            if not future.done():
                future.set_exception(StartError("the worker launcher exited", hint=f"see {self.stderr}"))
        for pid in list(self.children):
            self.on_exit(pid, "its launcher exited")
        self.children.clear()

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
                 launch: Callable[[VersionPool], Any], on_start: Callable[[VersionPool, float, str], None]) -> None:
        self.function = function
        self.number = number
        self.root = root
        self.key = key
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

    async def acquire(self) -> Worker:
        """The least busy worker, after starting one if there is none (or all are over target)."""
        while True:
            if self.workers:
                worker = min(self.workers, key=lambda w: w.in_flight)
                if worker.in_flight >= self.scaling.target_concurrency and \
                        len(self.workers) + self.starting < self.scaling.max:
                    self.start("scale up")
                worker.in_flight += 1
                return worker
            if self.failure and time.monotonic() - self.failure[1] < RETRY_START_AFTER:
                raise self.failure[0]
            if not self.starting:
                self.start("cold start")
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
        except FnpackError as exc:
            error = exc if isinstance(exc, StartError) else StartError(exc.message, hint=exc.hint)
            self.starting -= 1
            self.failure = (error, time.monotonic())
            log_line(self.log, f"{self.label}: start failed: {error.message}")
            if not self.workers and not self.starting:
                self._wake(error)
            return
        self.starting -= 1
        self.failure = None
        self.workers.append(worker)
        elapsed = time.monotonic() - began
        log_line(self.log, f"{self.label}: worker pid {worker.pid} ready in {elapsed * 1000:.0f} ms ({reason})")
        self._on_start(self, elapsed, reason)
        self._wake(None)

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
    """Every version's pool, the zygotes that fork their workers, and the idle reaper."""

    def __init__(self, run_dir: Path, logs_dir: Path,
                 on_start: Callable[[VersionPool, float, str], None] = lambda *_: None,
                 on_change: Callable[[VersionPool], None] = lambda _: None) -> None:
        self.run_dir = run_dir
        self.logs_dir = logs_dir
        self.pools: dict[tuple[str, int], VersionPool] = {}
        self.on_change = on_change
        self._on_start = on_start
        self._zygotes: dict[str, asyncio.Task[Zygote]] = {}
        self._owners: dict[int, tuple[VersionPool, Worker]] = {}
        self._spawned = 0
        self._reaper: asyncio.Task[None] | None = None

    def log_path(self, function: str) -> Path:
        return self.logs_dir / f"{function}.log"

    def pool(self, function: str, number: int, root: Path, key: str, scaling: Scaling) -> VersionPool:
        pool = self.pools.get((function, number))
        if pool is None:
            pool = VersionPool(function, number, root, key, scaling, self.log_path(function), self._launch,
                               self._started)
            self.pools[(function, number)] = pool
        return pool

    def _started(self, pool: VersionPool, elapsed: float, reason: str) -> None:
        self._on_start(pool, elapsed, reason)
        self.on_change(pool)

    # --- forwarding ----------------------------------------------------------------------------

    async def forward(self, pool: VersionPool, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> Response:
        """Send one request to a worker of `pool`; a worker found gone before the request reached it
        is dropped and another one is used."""
        for _ in range(3):
            worker = await pool.acquire()
            try:
                try:
                    conn = await worker.connection()
                except OSError:  # its socket is gone: it exited, and this request never reached it
                    if pool.forget(worker, "stopped accepting connections"):
                        self.on_change(pool)
                    continue
                try:
                    async with asyncio.timeout(pool.scaling.timeout + 10):
                        response = await conn.request(method, target, headers, body)
                except UpstreamClosed as exc:
                    conn.close()
                    # Dropping a request means the worker died (or is dying): stop sending it any.
                    if pool.forget(worker, f"dropped a request ({exc})"):
                        self.on_change(pool)
                    raise WorkerLost(f"the worker serving {pool.label} (pid {worker.pid}) stopped before it "
                                     f"answered ({exc}); it exited or crashed, and this request was not completed",
                                     hint=f"`fnpack logs {pool.function}` shows why; retrying the request "
                                          "starts a new worker") from None
                except TimeoutError:
                    conn.close()
                    raise UpstreamTimeout(f"{pool.label} did not answer within {pool.scaling.timeout + 10:.0f} s",
                                          hint="raise resources.timeout in fnpack.yaml") from None
                worker.give_back(conn, response.keep_alive)
                return response
            finally:
                pool.release(worker)
        raise WorkerLost(f"no worker of {pool.label} accepted the request", hint=f"`fnpack logs {pool.function}`")

    # --- processes ----------------------------------------------------------------------------

    async def _launch(self, pool: VersionPool) -> Worker:
        zygote = await self.zygote(pool.key, pool.root)
        self._spawned += 1
        socket_path = str(self.run_dir / f"w{self._spawned}.sock")
        pid = await zygote.spawn(self._spawned, {
            "root": str(pool.root), "socket": socket_path, "log": str(pool.log), "label": pool.label,
            "env": {"FNPACK_MODEL_VERSION": str(pool.number), "FNPACK_FUNCTION": pool.function}})
        worker = Worker(pid, socket_path)
        self._owners[pid] = (pool, worker)
        return worker

    async def zygote(self, key: str, root: Path) -> Zygote:
        """The running zygote for a dependency set, started from `root` if there is none."""
        task = self._zygotes.get(key)
        if task is not None and task.done() and (task.exception() or not task.result().alive):
            task = None
        if task is None:
            zygote = Zygote(root, self.logs_dir / "platform.log", self._exited)
            task = asyncio.get_running_loop().create_task(self._start_zygote(zygote))
            self._zygotes[key] = task
        return await asyncio.shield(task)

    @staticmethod
    async def _start_zygote(zygote: Zygote) -> Zygote:
        await zygote.start()
        return zygote

    def _exited(self, pid: int, status: str) -> None:
        owner = self._owners.pop(pid, None)
        if owner is None:
            return
        pool, worker = owner
        if pool.forget(worker, f"exited: {status}"):
            self.on_change(pool)
        else:  # dropped already (idle-stopped, or found dead by a request): record how it ended
            log_line(pool.log, f"{pool.label}: worker pid {worker.pid} exited: {status}")

    # --- scaling -------------------------------------------------------------------------------

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
