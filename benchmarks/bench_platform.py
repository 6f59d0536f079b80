#!/usr/bin/env python3
"""Benchmark the local platform (`fnpack serve`) against bare processes and a hand-written server.

In one run, on examples/iris, each figure next to its baseline:
  1. Cold start: a scaled-to-zero version's first answer through the gateway (the worker forked by the
     zygote), vs. B0, a bare process that loads the same model.onnx and runs it once; for information,
     a plain `python -m fnpack.worker` (no zygote) from spawn to its first answer.
  2. Warm throughput: gateway + one worker vs. the runtime alone (`python -m fnpack.worker`) and a
     hand-written async Starlette app, all on core 0, wrk (64, 8 and 1 connections) on core 1; for
     information, a hand-written FastAPI app and the platform unpinned.
  3. Alias moves under load: 200 requests/s while the alias moves 10 times and rolls back (failed
     requests; every request sent 50 ms after a move's acknowledgement routed per the new state), then
     the observed share of a 10 % canary.
  4. Memory: an idle worker's RSS (and PSS) vs. a bare process holding the same InferenceSession, and
     the worker processes left once the version scaled to zero.
Needs wrk, taskset, 2 CPUs, and fnpack installed in the interpreter's environment. Progress goes to
stderr, the result to stdout.

    python benchmarks/bench_platform.py [--quick] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx  # fnpack's dependencies: httpx, pyyaml, and fastapi (the gateway's control API)
import yaml

# The runtime benchmark's helpers and baselines, shared so that both benchmarks measure the same things:
# the FastAPI app (FASTAPI_APP via baseline_command), B0 (BARE_COLD), the wrk Lua script, process control.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtime as rt

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris"
IDLE_TIMEOUT = 1.0  # the cold-start version's scaling.idle_timeout, in seconds
WARM_IDLE = 600.0  # the other versions': they must not scale to zero during the run
FUNCTION = "iris"

# name -> (limit, comparison, unit)
GOALS: dict[str, tuple[float, str, str]] = {
    "cold_start_ratio": (0.5, "<=", "x"),
    "rps_vs_starlette[64]": (1.0, ">=", "x"),
    "rps_vs_starlette[8]": (1.0, ">=", "x"),
    "rps_vs_runtime[64]": (0.8, ">=", "x"),
    "rps_vs_runtime[8]": (0.8, ">=", "x"),
    "p50_vs_runtime[1]": (1.3, "<=", "x"),
    "alias_failed_requests": (0, "==", ""),
    "move_visibility_violations": (0, "==", ""),
    "canary_share_error_points": (1.5, "<=", " pt"),
    "memory_rss_ratio": (1.15, "<=", "x"),
    "workers_after_scale_to_zero": (0, "==", ""),
}

# The floor of any forwarding hop: the least a proxy in front of a worker can do in Python, in callbacks
# on uvloop (what the gateway's invocation path does, without its checks, routing, limits, metrics or
# access log): parse the head and body with httptools, write the request to a kept-alive upstream
# connection, write the answer back. It forwards to the runtime alone over TCP (the platform's workers
# listen on Unix sockets, which cost a little less).
FLOOR_PROXY = """\
import asyncio, sys, httptools, uvloop
LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
idle = []
class Collecting(asyncio.Protocol):  # a message's body, parsed by self.parser
    def connection_made(self, transport):
        self.transport, self.chunks = transport, []
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_begin(self):
        self.chunks = []
    def on_body(self, body):
        self.chunks.append(body)
class Upstream(Collecting):
    def __init__(self):
        self.parser, self.client = httptools.HttpResponseParser(self), None
    def connection_lost(self, exc):  # the server's keep-alive timeout
        if self in idle:
            idle.remove(self)
    def on_message_complete(self):
        body, client, self.client = b"".join(self.chunks), self.client, None
        client.transport.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n"
                               % len(body) + body)
        idle.append(self)
class Client(Collecting):
    def __init__(self):
        self.parser = httptools.HttpRequestParser(self)
    def on_message_complete(self):
        body = b"".join(self.chunks)
        if idle:
            self.send(idle.pop(), body)
        else:
            asyncio.ensure_future(self.connect(body))
    async def connect(self, body):
        _, upstream = await asyncio.get_running_loop().create_connection(Upstream, "127.0.0.1", UPSTREAM)
        self.send(upstream, body)
    def send(self, upstream, body):
        upstream.client = self
        upstream.transport.write(b"POST /invoke HTTP/1.1\\r\\nhost: w\\r\\ncontent-type: application/json\\r\\n"
                                 b"content-length: %d\\r\\n\\r\\n" % len(body) + body)
async def main():
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", LISTEN, backlog=2048)
    await server.serve_forever()
uvloop.run(main())
"""

# B0 kept alive for the memory part: the same script as the cold-start B0, then it says so and sleeps.
BARE_IDLE = rt.BARE_COLD + "\nsys.stdout.write('\\n')\nsys.stdout.flush()\nimport time\ntime.sleep(3600)\n"

log = rt.log


# ---------------------------------------------------------------- processes

def start(command: list[str], log_path: Path, procs: list[subprocess.Popen[Any]], **kwargs: Any
          ) -> subprocess.Popen[Any]:
    """A child in its own process group (stopped with all it forks by rt.stop), output to a log file."""
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
    procs.append(proc)
    return proc


def stat_of(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    """Live (not zombie) children of a process, from a scan of /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat_of(int(entry))
            if st and st[1] == pid and st[0] != "Z":
                found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def others_busy(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over `seconds` with work other than this run's (this process and its
    descendants: an idle gateway's zygote may still be importing, say). Other load on this 2-core box
    skews every figure, so the report warns about it."""
    def sample() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = text[text.rindex(")") + 2:].split()
                parents[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
        mine = {os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in parents.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        own = sum(parents[pid][1] for pid in mine if pid in parents)
        return sum(ticks), ticks[3] + ticks[4], own  # total, idle + iowait, this run's

    try:
        total0, idle0, own0 = sample()
        time.sleep(seconds)
        total1, idle1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, (total1 - total0) - (idle1 - idle0) - (own1 - own0)) / max(total1 - total0, 1)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and Pss of a process, in KiB. Forked workers share the zygote's pages (copy on write): RSS
    counts those in full in every process, PSS splits each shared page between the processes mapping it."""
    rss = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    pss = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
    if not rss or not pss:
        raise RuntimeError(f"no VmRSS/Pss for pid {pid}")
    return {"rss_kib": int(rss[1]), "pss_kib": int(pss[1])}


def cpus_allowed(pid: int) -> str:
    found = re.search(r"^Cpus_allowed_list:\s+(\S+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return found[1] if found else "?"


def timed_post(port: int, path: str, body: bytes, timeout: float = 30) -> tuple[float, int, str | None, bytes]:
    """One POST on a fresh connection: (wall seconds from connect to the whole answer, status,
    x-fnpack-version, body). Raises OSError (connection refused...) when nothing listens yet."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return time.perf_counter() - started, response.status, response.getheader("x-fnpack-version"), data


class Platform:
    """One `fnpack serve` child (optionally under `taskset`, which its zygotes and workers inherit) with
    its own state folder, and a client for its control API."""

    def __init__(self, name: str, tmp: Path, procs: list[subprocess.Popen[Any]], cpus: str | None) -> None:
        self.name = name
        self.state = tmp / f"state-{name}"
        self.port = rt.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{name}.log"
        command = [sys.executable, "-m", "fnpack", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--state-dir", str(self.state)]
        # taskset execs the command: the gateway keeps the pid we started, and its children the CPU set
        self.proc = start(["taskset", "-c", cpus, *command] if cpus else command, self.log_path, procs)
        give_up = time.monotonic() + rt.DEADLINE.left(60)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fnpack serve exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"fnpack serve did not answer /healthz within 60 s:\n"
                                   f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.headers = {"Authorization": f"Bearer {(self.state / 'token').read_text().strip()}"}
        self.control = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.control.request(method, f"/api/v1/functions/{FUNCTION}{path}", **kwargs)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()

    def deploy(self, archive: Path) -> int:
        answer = self.call("POST", "/versions", content=archive.read_bytes(),
                           headers={"Content-Type": "application/zip"})
        return int(answer["version"]["number"])

    def set_alias(self, primary: int, canary: int | None = None, weight: float = 0.0) -> dict[str, Any]:
        return self.call("PUT", "/aliases/live", json={"primary": primary, "canary": canary, "weight": weight,
                                                        "reason": "bench"})  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def metric(self, name: str, version: int, text: str | None = None) -> float:
        found = re.search(rf'^{name}\{{function="{FUNCTION}",version="{version}"\}} ([\d.e+-]+)$',
                          text if text is not None else self.metrics(), re.MULTILINE)
        return float(found[1]) if found else 0.0

    def zygotes(self) -> list[int]:
        return [pid for pid in children(self.pid) if "fnpack.platform.zygote" in cmdline(pid)]

    def worker_pids(self) -> list[int]:
        """Live worker processes: the children of the gateway's zygotes."""
        return [pid for zygote in self.zygotes() for pid in children(zygote)]

    def worker_pid(self, version: int) -> int:
        """The newest worker of a version, from the function's log ("iris vN: worker pid P ready")."""
        text = (self.state / "logs" / f"{FUNCTION}.log").read_text(errors="replace")
        found = re.findall(rf"\[platform\] {FUNCTION} v{version}: worker pid (\d+) ready", text)
        if not found or int(found[-1]) not in self.worker_pids():
            raise RuntimeError(f"no running worker of v{version} found (log: {found[-3:]}, "
                               f"children of the zygotes: {self.worker_pids()})")
        return int(found[-1])

    def wait_scaled_to_zero(self, version: int, timeout: float) -> float:
        """Seconds until /metrics shows no worker of `version` and no worker process is left."""
        began = time.monotonic()
        give_up = began + rt.DEADLINE.left(timeout)
        while time.monotonic() < give_up:
            if self.metric("fnpack_workers", version) == 0 and not self.worker_pids():
                return time.monotonic() - began
            time.sleep(0.02)
        raise RuntimeError(f"v{version} did not scale to zero within {timeout:.0f} s "
                           f"(worker processes: {self.worker_pids()})")

    def close(self) -> None:
        self.control.close()


# ---------------------------------------------------------------- 1. cold start

def plain_worker_start(archive: Path, sha256: str, cache: Path, body: bytes, tmp: Path,
                       procs: list[subprocess.Popen[Any]]) -> tuple[float, subprocess.Popen[Any], int]:
    """`python -m fnpack.worker` from spawn to its first answer (its archive already unpacked in `cache`,
    as the zygote's is). Returns (seconds, the running process, its port): the caller stops it."""
    port = rt.free_port()
    command = [sys.executable, "-m", "fnpack.worker", "--archive", str(archive), "--sha256", sha256,
               "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(cache)]
    started = time.perf_counter()
    proc = start(command, tmp / "plain-worker.log", procs)
    give_up = time.monotonic() + rt.DEADLINE.left(60)
    while time.monotonic() < give_up:  # it listens only once its model is loaded
        try:
            _, status, _, _ = timed_post(port, "/invoke", body)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the plain worker exited with {proc.returncode}:\n"
                                   f"{(tmp / 'plain-worker.log').read_text()[-2000:]}") from None
            time.sleep(0.002)
            continue
        if status != 200:
            raise RuntimeError(f"the plain worker answered {status}")
        return time.perf_counter() - started, proc, port
    raise RuntimeError("the plain worker did not answer within 60 s")


def cold_start(gw: Platform, version: int, body: bytes, bare: Path, archive: Path, sha256: str, tmp: Path,
               runs: int, procs: list[subprocess.Popen[Any]]) -> dict[str, Any]:
    path = f"/function/{FUNCTION}:{version}"
    python = [sys.executable, "-I", "-S"]
    cache = tmp / "plain-worker-cache"

    def bare_run() -> float:
        started = time.perf_counter()
        done = rt.run([*python, "-c", rt.BARE_COLD, str(bare)], 60, cwd=bare)
        if done.returncode != 0:
            raise RuntimeError(f"B0 failed:\n{done.stderr[-2000:]}")
        return time.perf_counter() - started

    def plain_run() -> float:
        elapsed, proc, _ = plain_worker_start(archive, sha256, cache, body, tmp, procs)
        rt.stop(proc)
        procs.remove(proc)
        return elapsed

    # Untimed: the zygote's start (begun at deploy), the page cache, the plain worker's unpacked cache.
    _, status, _, answer = timed_post(gw.port, path, body)
    if status != 200 or b"label" not in answer:
        raise RuntimeError(f"{path} answered {status}: {answer[:300]!r}")
    bare_run()
    gw.wait_scaled_to_zero(version, IDLE_TIMEOUT + 15)
    plain_run()

    platform_s, bare_s, plain_s, start_s, to_zero_s = [], [], [], [], []
    for i in range(runs):  # interleaved, so that a drift in the machine's speed hits every side alike
        to_zero_s.append(gw.wait_scaled_to_zero(version, IDLE_TIMEOUT + 15))
        time.sleep(0.2)  # let the stopped worker's exit settle
        text = gw.metrics()
        before = (gw.metric("fnpack_worker_start_seconds_sum", version, text),
                  gw.metric("fnpack_worker_start_seconds_count", version, text))
        elapsed, status, served_by, answer = timed_post(gw.port, path, body)
        if status != 200 or served_by != str(version):
            raise RuntimeError(f"cold {path} answered {status} from version {served_by}: {answer[:300]!r}")
        platform_s.append(elapsed)
        text = gw.metrics()
        if gw.metric("fnpack_worker_start_seconds_count", version, text) != before[1] + 1:
            raise RuntimeError("the timed request did not start exactly one worker: it was not a cold start")
        start_s.append(gw.metric("fnpack_worker_start_seconds_sum", version, text) - before[0])
        bare_s.append(bare_run())  # the fresh worker idles meanwhile (it stops after IDLE_TIMEOUT)
        gw.wait_scaled_to_zero(version, IDLE_TIMEOUT + 15)  # no platform worker stopping during the next
        plain_s.append(plain_run())
        log(f"cold start {i + 1}/{runs}: platform {elapsed * 1000:.0f} ms (worker start {start_s[-1] * 1000:.0f}"
            f" ms), B0 {bare_s[-1] * 1000:.0f} ms, plain worker {plain_s[-1] * 1000:.0f} ms")

    # Scale to zero: after the idle timeout no worker process is left at all (only the gateway and zygote).
    to_zero_s.append(gw.wait_scaled_to_zero(version, IDLE_TIMEOUT + 15))
    time.sleep(IDLE_TIMEOUT + 0.5)  # and none comes back
    left = gw.worker_pids()
    a, b, c = statistics.median(platform_s), statistics.median(bare_s), statistics.median(plain_s)
    return {"runs": runs, "platform_s": platform_s, "bare_s": bare_s, "plain_worker_s": plain_s,
            "worker_start_s": start_s, "platform_median_s": a, "bare_median_s": b, "plain_worker_median_s": c,
            "worker_start_median_s": statistics.median(start_s), "ratio": a / b, "plain_ratio": c / b,
            "idle_timeout_s": IDLE_TIMEOUT, "scale_to_zero_wait_s": to_zero_s,
            "workers_after_scale_to_zero": len(left),
            "workers_gauge_after": gw.metric("fnpack_workers", version),
            "worker_memory_after_kib": sum(memory(pid)["rss_kib"] for pid in left if stat_of(pid))}


# ---------------------------------------------------------------- 4. memory

def idle_memory(gw: Platform, version: int, body: bytes, bare: Path, archive: Path, sha256: str, tmp: Path,
                procs: list[subprocess.Popen[Any]]) -> dict[str, Any]:
    """An idle worker of `version` (long idle timeout) vs. a bare process holding the same session."""
    for _ in range(50):  # start it, and run the same code paths as the baseline did (and some more)
        _, status, _, _ = timed_post(gw.port, f"/function/{FUNCTION}:{version}", body)
        if status != 200:
            raise RuntimeError(f"v{version} answered {status}")
    time.sleep(2)  # idle
    pid = gw.worker_pid(version)
    zygote = gw.zygotes()
    worker = memory(pid)

    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", BARE_IDLE, str(bare)], cwd=bare,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], rt.DEADLINE.left(60))
    if not ready or not proc.stdout.readline():  # the line says it has loaded and run its session
        rt.stop(proc)
        raise RuntimeError(f"the bare memory process did not get ready: {proc.stderr.read()[-2000:]!r}")
    time.sleep(1)
    bare_mem = memory(proc.pid)
    rt.stop(proc)
    procs.remove(proc)

    # For information: a plain `python -m fnpack.worker` (no zygote) after the same 50 requests.
    _, plain, port = plain_worker_start(archive, sha256, tmp / "plain-worker-cache", body, tmp, procs)
    for _ in range(49):
        timed_post(port, "/invoke", body)
    time.sleep(2)
    plain_mem = memory(plain.pid)
    rt.stop(plain)
    procs.remove(plain)
    return {"worker_pid": pid, "worker": worker, "bare": bare_mem, "plain_worker": plain_mem,
            "zygote": memory(zygote[0]) if len(zygote) == 1 else None, "zygotes": len(zygote),
            "gateway": memory(gw.pid),
            "rss_ratio": worker["rss_kib"] / bare_mem["rss_kib"], "pss_ratio": worker["pss_kib"] / bare_mem["pss_kib"]}


# ---------------------------------------------------------------- 3. alias moves under load

# The moves made under load (primary, canary, weight), then a rollback. Moves to one version (no canary)
# are the ones whose visibility is strict: every later request must get exactly that version.
def move_plan(a: int, b: int) -> list[tuple[int, int | None, float] | None]:
    return [(a, b, 0.1), (a, b, 0.25), (a, b, 0.5), (b, None, 0.0), (b, a, 0.1), (b, a, 0.25),
            (a, None, 0.0), (a, b, 0.5), (b, None, 0.0), (a, None, 0.0), None]  # None: roll back


def stamp(times: dict[str, float]) -> Any:
    """An httpcore trace hook noting when a request's last byte was written ("sent") and when its answer's
    headers were read ("answered"). These, not the moments the coroutine started or resumed, are the
    times that matter: a busy client loop can hold a request for a while before its bytes go out."""
    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_body.complete"):
            times["sent"] = time.perf_counter()
        elif event.endswith("receive_response_headers.complete"):
            times["answered"] = time.perf_counter()
    return trace


async def alias_under_load(gw: Platform, a: int, b: int, body: bytes, rate: float, seconds: float
                           ) -> dict[str, Any]:
    """Open-loop load on the alias (request i is due at t0 + i/rate, whatever the earlier ones are doing)
    while the plan's moves run at even intervals; requests and moves are timestamped on one clock
    (perf_counter) by the trace hook."""
    now = time.perf_counter
    plan = move_plan(a, b)
    records: list[tuple[float, float, int, str | None, str | None]] = []  # sent, answered, status, version, error
    lateness: list[tuple[float, float]] = []  # (due, from then to the request's last byte out)
    moves: list[dict[str, Any]] = []
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client, \
            httpx.AsyncClient(base_url=gw.url, headers=gw.headers, timeout=30) as control:
        for version in (a, b):  # both versions warm: the figures are about routing, not cold starts
            await client.post(f"/function/{FUNCTION}:{version}", content=body, headers=headers)
        await control.put(f"/api/v1/functions/{FUNCTION}/aliases/live",
                          json={"primary": a, "canary": None, "weight": 0.0, "reason": "bench"})

        async def one(due: float) -> None:
            times: dict[str, float] = {}
            try:
                response = await client.post(f"/function/{FUNCTION}", content=body, headers=headers,
                                             extensions={"trace": stamp(times)})
                sent = times.get("sent", due)
                records.append((sent, times.get("answered", now()), response.status_code,
                                response.headers.get("x-fnpack-version"),
                                None if response.status_code == 200 else response.text[:200]))
            except httpx.HTTPError as exc:
                sent = times.get("sent", due)
                records.append((sent, now(), 0, None, f"{type(exc).__name__}: {exc}"))
            lateness.append((due, sent - due))

        t0 = now() + 0.1

        async def mover() -> None:
            for k, step in enumerate(plan, 1):
                await asyncio.sleep(max(0.0, t0 + seconds * k / (len(plan) + 1) - now()))
                times: dict[str, float] = {}
                issued = now()
                if step is None:
                    response = await control.post(f"/api/v1/functions/{FUNCTION}/aliases/live/rollback", json={},
                                                  extensions={"trace": stamp(times)})
                else:
                    response = await control.put(f"/api/v1/functions/{FUNCTION}/aliases/live", json={
                        "primary": step[0], "canary": step[1], "weight": step[2], "reason": "bench"},
                        extensions={"trace": stamp(times)})
                if response.status_code != 200:
                    raise RuntimeError(f"alias move {k} -> {response.status_code}: {response.text[:300]}")
                moves.append({"issued": issued, "acked": times.get("answered", now()),
                              "after": response.json()["move"]["after"], "rollback": step is None})

        mover_task = asyncio.create_task(mover())
        tasks = []
        for i in range(int(rate * seconds)):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - now()))
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        await mover_task
    end = now()

    # Visibility: requests sent from ack + 50 ms until the next move was issued must be routed per the
    # move's state: exactly its version for a move to one version, one of its two versions otherwise.
    checks = []
    for i, move in enumerate(moves):
        after = move["after"]
        allowed = {str(after["primary"])} | ({str(after["canary"])} if after["canary"] is not None else set())
        until = moves[i + 1]["issued"] if i + 1 < len(moves) else end
        ok = [r for r in records if move["issued"] <= r[0] < until and r[2] == 200]
        window = [r for r in ok if r[0] >= move["acked"] + 0.05]
        wrong = [r for r in window if r[3] not in allowed]
        # For information: the last request still routed per an earlier state, relative to the ack.
        stale = [r[0] - move["acked"] for r in ok if r[3] not in allowed]
        checks.append({"state": after, "rollback": move["rollback"], "single": after["canary"] is None,
                       "requests": len(window), "violations": len(wrong),
                       "canary_share": (sum(r[3] == str(after["canary"]) for r in window) / len(window)
                                        if after["canary"] is not None and window else None),
                       "ack_ms": (move["acked"] - move["issued"]) * 1000,
                       "last_stale_after_ack_ms": max(stale) * 1000 if stale else None})
    latencies = sorted(r[1] - r[0] for r in records if r[2] == 200)
    failed = [r for r in records if r[2] != 200]
    late = sorted(x for _, x in lateness)
    by_second = [max((x for due, x in lateness if s <= due - t0 < s + 1), default=0.0) * 1000
                 for s in range(int(seconds))]
    return {"rate": rate, "seconds": seconds, "sent": len(records), "failed": len(failed),
            "failures": sorted(Counter(f"{r[2]} {r[4]}" for r in failed).items())[:5],
            "achieved_rate": len(records) / (max(r[0] for r in records) - min(r[0] for r in records)),
            "lateness_p99_ms": late[int(len(late) * 0.99)] * 1000, "lateness_max_ms": late[-1] * 1000,
            "lateness_max_by_second_ms": by_second,
            "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
            "max_ms": latencies[-1] * 1000 if latencies else None,
            "moves": len(moves), "checks": checks,
            "single_moves_checked": sum(c["single"] for c in checks),
            "visibility_violations": sum(c["violations"] for c in checks)}


def run_async(coro: Any) -> Any:
    """Run the load generator on uvloop where it is installed (uvicorn's loop, in fnpack's environment).
    httpx costs the client about 2.5 ms of CPU per request here, 50 % of a core at 200 requests/s;
    uvloop takes some 20 % off that, which on 2 shared cores keeps the client closer to its schedule."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def canary_share(gw: Platform, primary: int, canary: int, weight: float, body: bytes, total: int,
                       concurrency: int) -> dict[str, Any]:
    """Set a canary, send `total` requests through the alias (closed loop, `concurrency` at a time) and
    count the versions that answered."""
    gw.set_alias(primary, canary, weight)
    counts: Counter[str] = Counter()
    failed = 0
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = iter(range(total))
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client:
        async def loop() -> None:
            nonlocal failed
            for _ in queue:
                try:
                    response = await client.post(f"/function/{FUNCTION}", content=body, headers=headers)
                except httpx.HTTPError:
                    failed += 1
                    continue
                if response.status_code != 200:
                    failed += 1
                else:
                    counts[response.headers.get("x-fnpack-version", "?")] += 1

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    answered = sum(counts.values())
    share = counts[str(canary)] / answered if answered else 0.0
    gw.set_alias(primary)
    return {"primary": primary, "canary": canary, "weight": weight, "sent": total, "answered": answered, "failed": failed,
            "counts": dict(sorted(counts.items())), "share": share, "error_points": abs(share - weight) * 100,
            "rps": total / elapsed}


# ---------------------------------------------------------------- 2. warm throughput

def wrk(url: str, lua: Path, connections: int, seconds: int) -> dict[str, Any]:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "-s", str(lua), url]
    done = rt.run(command, seconds + 30)
    text = done.stdout

    def latency(pct: str) -> float | None:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        return float(found[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found[2]] if found else None

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50, p99 = latency("50"), latency("99")
    if done.returncode != 0 or not rps or p50 is None or p99 is None:
        raise RuntimeError(f"wrk failed:\n{text[-2000:]}{done.stderr[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": float(rps[1]), "p50_ms": p50, "p99_ms": p99,
            "requests": int(re.search(r"(\d+) requests in", text)[1]),  # type: ignore[index]
            "errors": (int(non2xx[1]) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(sides: dict[str, tuple[str, Callable[[], dict[str, int]], tuple[int, ...]]], body: bytes,
               seconds: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """Every side is up (each idle while wrk drives another): one answer checked, a 2 s warm-up each, then
    per round, per connection count, `seconds` of wrk per side, the order flipped every round. Medians of
    rounds. Each side is (URL, its processes by role, the connection counts it runs at): their CPU time per
    request shows where the time goes."""
    (tmp / "body.json").write_bytes(body)
    lua = tmp / "post.lua"
    lua.write_text(rt.WRK_LUA.format(path=json.dumps(str(tmp / "body.json"))))
    processes = {}
    for side, (url, find, _) in sides.items():
        answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        if answer.status_code != 200 or "label" not in answer.json():
            raise RuntimeError(f"{side} answered {answer.status_code}: {answer.text[:300]}")
        wrk(url, lua, 8, 2)
        processes[side] = find()  # after the warm-up: the platform's worker is running
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {side: {c: [] for c in conns}
                                                        for side, (_, _, conns) in sides.items()}
    counts = sorted({c for _, _, conns in sides.values() for c in conns}, reverse=True)
    for i in range(rounds):
        for connections in counts:
            order = [side for side in sides if connections in sides[side][2]]
            for side in order if i % 2 == 0 else order[::-1]:
                before = {role: cpu_seconds(pid) for role, pid in processes[side].items()}
                run = wrk(sides[side][0], lua, connections, seconds)
                run["cpu_us_per_request"] = {role: (cpu_seconds(pid) - before[role]) / max(run["requests"], 1) * 1e6
                                             for role, pid in processes[side].items()}
                runs[side][connections].append(run)
                log(f"throughput round {i + 1}/{rounds}, {connections} connection(s), {side}: "
                    f"{run['rps']:.0f} requests/s, p50 {run['p50_ms']:.2f} ms")
    return {side: {"processes": processes[side], "seconds": seconds,
                   **{str(c): {"rounds": r, "rps": statistics.median(x["rps"] for x in r),
                               "p50_ms": statistics.median(x["p50_ms"] for x in r),
                               "p99_ms": statistics.median(x["p99_ms"] for x in r),
                               "cpu_us_per_request": {role: statistics.median(x["cpu_us_per_request"][role] for x in r)
                                                      for role in processes[side]},
                               "errors": sum(x["errors"] for x in r)} for c, r in by_count.items()}}
            for side, by_count in runs.items()}


def round_ratio(http: dict[str, Any], a: str, b: str, connections: int, key: str = "rps") -> float:
    """The median over rounds of side a's figure / side b's, each round's pair measured back to back: a drift
    in the machine's speed between rounds (other work on these 2 cores) cancels out of each ratio."""
    return statistics.median(x[key] / y[key] for x, y in zip(http[a][str(connections)]["rounds"],
                                                               http[b][str(connections)]["rounds"]))


# ---------------------------------------------------------------- the run

def variant(tmp: Path, name: str, scaling: dict[str, Any], comment: str | None = None) -> Path:
    """A copy of examples/iris with its own `scaling:` (the spec is in the manifest, so each copy is a
    distinct archive); `comment` is added to score.py to tell two otherwise equal copies apart."""
    project = Path(shutil.copytree(IRIS, tmp / "src" / name, ignore=shutil.ignore_patterns("dist", ".*",
                                                                                          "__pycache__")))
    with open(project / "fnpack.yaml", "a") as f:
        f.write("\n" + yaml.safe_dump({"scaling": scaling}))
    if comment:
        with open(project / "score.py", "a") as f:
            f.write(f"\n# {comment}\n")
    return project


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    """The run's temporary folder (sources, archives, state folders, servers' logs): deleted at the end,
    unless --keep asks to look at it afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fnpack-bench-platform-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def bench(quick: bool, keep: bool) -> dict[str, Any]:
    cold_runs, seconds, rounds = (3, 3, 1) if quick else (10, 8, 3)
    load_seconds, share_requests = (10.0, 3000) if quick else (30.0, 10000)
    procs: list[subprocess.Popen[Any]] = []
    platforms: list[Platform] = []
    with workspace(keep) as tmp:
        try:
            projects = {"cold": variant(tmp, "cold", {"max": 1, "idle_timeout": IDLE_TIMEOUT}),
                        "warm": variant(tmp, "warm", {"max": 1, "idle_timeout": WARM_IDLE}),
                        "canary": variant(tmp, "canary", {"max": 1, "idle_timeout": WARM_IDLE},
                                          "bench: a second version of the same function")}
            body = json.dumps(rt.first_sample(projects["warm"])).encode()
            log("building three iris variants (cold start, warm, canary) for target local")
            builds = {name: rt.build(p, "local", tmp / "out" / name) for name, p in projects.items()}
            archives = {name: Path(b["archive"]).resolve() for name, b in builds.items()}
            # B0's folder: the warm archive unpacked, so that B0 loads the same numpy, onnxruntime and
            # model.onnx as the platform's zygote and workers.
            bare = tmp / "bare"
            with zipfile.ZipFile(archives["warm"]) as zf:
                zf.extractall(bare)

            busy = {"setup": others_busy()}
            gw = Platform("main", tmp, procs, None)
            platforms.append(gw)
            v = {name: gw.deploy(archives[name]) for name in ("cold", "warm", "canary")}
            gw.set_alias(v["warm"])
            log(f"deployed versions {v}; alias live -> v{v['warm']}")

            busy["cold"] = others_busy()
            log(f"1. cold start: {cold_runs} platform, B0 and plain-worker starts, interleaved")
            cold = cold_start(gw, v["cold"], body, bare, archives["cold"], builds["cold"]["sha256"], tmp,
                              cold_runs, procs)

            busy["memory"] = others_busy()
            log("4. memory: an idle worker vs. a bare process holding the same session")
            mem = idle_memory(gw, v["warm"], body, bare, archives["warm"], builds["warm"]["sha256"], tmp, procs)

            busy["alias"] = others_busy()
            log(f"3. alias moves: {load_seconds:.0f} s at 200 requests/s while the alias moves, then "
                f"{share_requests} requests to a 10 % canary")
            moves = run_async(alias_under_load(gw, v["warm"], v["canary"], body, 200.0, load_seconds))
            if moves["failed"]:  # what the platform logged about them
                moves["log_tail"] = [f"{name}: {line}" for name in ("platform.log", f"{FUNCTION}.log")
                                     for line in (gw.state / "logs" / name).read_text(errors="replace")
                                     .splitlines()[-12:]]
            share = run_async(canary_share(gw, v["warm"], v["canary"], 0.1, body, share_requests, 8))

            busy["throughput"] = others_busy()
            log("2. throughput: starting the pinned platform, the runtime alone and the baselines on core 0")
            pinned = Platform("pinned", tmp, procs, "0")
            platforms.append(pinned)
            pinned.set_alias(pinned.deploy(archives["warm"]))  # its version 1
            ports = {}
            servers = {"runtime": ([sys.executable, "-m", "fnpack.worker", "--archive", str(archives["warm"]),
                                    "--sha256", builds["warm"]["sha256"], "--cache-dir", str(tmp / "runtime-cache")],
                                   os.environ),
                       "starlette": (rt.baseline_command(tmp, "starlette", rt.STARLETTE_APP),
                                     {**os.environ, "BENCH_ROOT": str(bare)}),
                       "fastapi": (rt.baseline_command(tmp, "fastapi", rt.FASTAPI_APP),
                                   {**os.environ, "BENCH_MODEL": str(bare / "model.onnx")})}
            started = {}
            for name, (command, env) in servers.items():
                ports[name] = rt.free_port()
                start(["taskset", "-c", "0", *command, "--host", "127.0.0.1", "--port", str(ports[name])],
                      tmp / f"{name}.log", procs, cwd=tmp, env=env)
                started[name] = procs[-1]
            for name, proc in started.items():
                wait_listening(ports[name], proc, tmp / f"{name}.log")
            ports["floor"] = rt.free_port()
            start(["taskset", "-c", "0", sys.executable, "-c", FLOOR_PROXY, str(ports["floor"]), str(ports["runtime"])],
                  tmp / "floor.log", procs, cwd=tmp)
            started["floor"] = procs[-1]
            wait_listening(ports["floor"], procs[-1], tmp / "floor.log")
            main_counts, info_counts = (64, 8, 1), (8,)
            sides = {"platform": (f"{pinned.url}/function/{FUNCTION}",
                                  lambda: {"gateway": pinned.pid, "worker": pinned.worker_pid(1)}, main_counts),
                     "runtime": (f"http://127.0.0.1:{ports['runtime']}/invoke",
                                 lambda: {"server": started["runtime"].pid}, main_counts),
                     "starlette": (f"http://127.0.0.1:{ports['starlette']}/invoke",
                                   lambda: {"server": started["starlette"].pid}, main_counts),
                     "floor": (f"http://127.0.0.1:{ports['floor']}/invoke",
                               lambda: {"proxy": started["floor"].pid, "server": started["runtime"].pid}, main_counts),
                     "fastapi": (f"http://127.0.0.1:{ports['fastapi']}/invoke",
                                 lambda: {"server": started["fastapi"].pid}, info_counts),
                     "platform unpinned": (f"{gw.url}/function/{FUNCTION}",
                                           lambda: {"gateway": gw.pid, "worker": gw.worker_pid(v["warm"])},
                                           info_counts)}
            log(f"   warm-up 2 s each, then {rounds} round(s) of {seconds} s per side at 64, 8 and 1 connection(s)")
            http = throughput(sides, body, seconds, rounds, tmp)
            pinning = {"gateway": cpus_allowed(pinned.pid), "zygote": ",".join(cpus_allowed(p) for p in
                                                                             pinned.zygotes()),
                       "worker": ",".join(cpus_allowed(p) for p in pinned.worker_pids()),
                       **{name: cpus_allowed(proc.pid) for name, proc in started.items()}}
        finally:
            for platform in platforms:
                platform.close()
            for proc in procs:
                rt.stop(proc)

    figures: dict[str, Any] = {
        "mode": "quick" if quick else "full", "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "archives": {k: {"archive": Path(b["archive"]).name, "sha256": b["sha256"], "version": v[k],
                         "dependencies": [f"{d['name']}=={d['version']}" for d in b["dependencies"]]}
                     for k, b in builds.items()},
        "busy_before": busy, "cold_start": cold, "memory": mem, "alias_moves": moves, "canary": share,
        "throughput": http, "pinning": pinning,
        "cold_start_ratio": cold["ratio"],
        "rps_vs_starlette[64]": round_ratio(http, "platform", "starlette", 64),
        "rps_vs_starlette[8]": round_ratio(http, "platform", "starlette", 8),
        "rps_vs_runtime[64]": round_ratio(http, "platform", "runtime", 64),
        "rps_vs_runtime[8]": round_ratio(http, "platform", "runtime", 8),
        "p50_vs_runtime[1]": round_ratio(http, "platform", "runtime", 1, "p50_ms"),
        "rps_vs_fastapi[8]": round_ratio(http, "platform", "fastapi", 8),
        "floor_vs_starlette[64]": round_ratio(http, "floor", "starlette", 64),
        "floor_vs_starlette[8]": round_ratio(http, "floor", "starlette", 8),
        "floor_vs_runtime[64]": round_ratio(http, "floor", "runtime", 64),
        "floor_vs_runtime[8]": round_ratio(http, "floor", "runtime", 8),
        "floor_p50_vs_runtime[1]": round_ratio(http, "floor", "runtime", 1, "p50_ms"),
        "alias_failed_requests": moves["failed"],
        "move_visibility_violations": moves["visibility_violations"],
        "canary_share_error_points": share["error_points"],
        "memory_rss_ratio": mem["rss_ratio"],
        "workers_after_scale_to_zero": cold["workers_after_scale_to_zero"],
    }
    figures["goals"] = [{"goal": g, "op": op, "limit": limit, "unit": unit, "value": figures[g],
                         "pass": {"<=": figures[g] <= limit, ">=": figures[g] >= limit, "==": figures[g] == limit}[op]}
                        for g, (limit, op, unit) in GOALS.items()]
    return figures


def wait_listening(port: int, proc: subprocess.Popen[Any], log_path: Path) -> None:
    """Wait until a started server accepts connections (after its model loaded)."""
    give_up = time.monotonic() + rt.DEADLINE.left(60)
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            timed_post(port, "/", b"", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen within 60 s:\n{log_path.read_text()[-2000:]}")


# ---------------------------------------------------------------- the report

def verdict(f: dict[str, Any], goal: str) -> str:
    g = next(g for g in f["goals"] if g["goal"] == goal)
    return f"{g['op']} {g['limit']:g}{g['unit']} {'PASS' if g['pass'] else 'FAIL'}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(f: dict[str, Any]) -> str:
    cold, mem, moves, share, http = f["cold_start"], f["memory"], f["alias_moves"], f["canary"], f["throughput"]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.0f}" for v in values)

    lines = [f"fnpack platform benchmark ({f['mode']}): Python {f['python']}, {f['cpus']} CPUs, examples/iris",
             "archives: " + ", ".join(f"{k} v{a['version']} {a['sha256'][:12]}" for k, a in f["archives"].items()),
             "",
             f"1. Cold start: median of {cold['runs']} runs, interleaved; everything unpinned",
             ("   platform = first answer of a version scaled to zero, through the gateway (client wall time, "
              "fresh connection);"),
             ("   B0 = a fresh `python -I -S` imports numpy, onnxruntime, creates the InferenceSession of "
              "model.onnx and runs it once: spawn to exit")]
    lines += rt.table([
        ("", "median", "B0", "ratio", "goal"),
        ("platform cold start", ms(cold["platform_median_s"]), ms(cold["bare_median_s"]), f"{cold['ratio']:.2f}x",
         verdict(f, "cold_start_ratio")),
        ("  of which fork to worker ready", ms(cold["worker_start_median_s"]), "", "", "(gateway's metric)"),
        ("plain `python -m fnpack.worker` (info)", ms(cold["plain_worker_median_s"]), ms(cold["bare_median_s"]),
         f"{cold['plain_ratio']:.2f}x", "(spawn to first answer)"),
    ])
    lines.append(f"   runs (ms): platform {runs(cold['platform_s'])}; B0 {runs(cold['bare_s'])}; "
                 f"plain worker {runs(cold['plain_worker_s'])}")
    lines.append(f"   scale to zero (idle_timeout {cold['idle_timeout_s']:g} s): after it, "
                 f"{cold['workers_after_scale_to_zero']} worker process(es) left "
                 f"({verdict(f, 'workers_after_scale_to_zero')}), {mib(cold['worker_memory_after_kib'])} of "
                 f"worker memory, fnpack_workers {cold['workers_gauge_after']:g}")

    pin = f["pinning"]
    seconds = http["platform"]["seconds"]
    lines += ["",
              (f"2. Warm throughput: POST the first sample, wrk -t1 on core 1, {len(http['platform']['8']['rounds'])} "
               f"round(s) of {seconds} s per side and connection count after a 2 s warm-up (medians; ratios: the "
               "median of the per-round ratios, each pair measured back to back)"),
              (f"   platform = `fnpack serve` gateway + 1 worker on core 0 (CPUs allowed: gateway {pin['gateway']}, "
               f"zygote {pin['zygote']}, worker {pin['worker']}), POST /function/iris;"),
              (f"   runtime = `python -m fnpack.worker` alone on the same archive (core {pin['runtime']}); "
               f"Starlette = a hand-written async route, FastAPI = a sync endpoint (bench_runtime.py), each on "
               "uvicorn (uvloop, httptools), one process on core 0")]

    def cell(side: str, c: int, key: str) -> str:
        x = http[side].get(str(c))
        return "" if x is None else f"{x[key]:.0f}" if key == "rps" else f"{x[key]:.2f} ms"

    rows = [("", "platform", "runtime", "Starlette", "vs Starlette", "goal", "vs runtime", "goal")]
    for c in (64, 8):
        rows.append((f"requests/s, {c} connections", cell("platform", c, "rps"), cell("runtime", c, "rps"),
                     cell("starlette", c, "rps"), f"{f[f'rps_vs_starlette[{c}]']:.2f}x",
                     verdict(f, f"rps_vs_starlette[{c}]"), f"{f[f'rps_vs_runtime[{c}]']:.2f}x",
                     verdict(f, f"rps_vs_runtime[{c}]")))
    rows.append(("p50 latency, 1 connection", cell("platform", 1, "p50_ms"), cell("runtime", 1, "p50_ms"),
                 cell("starlette", 1, "p50_ms"), f"{round_ratio(http, 'platform', 'starlette', 1, 'p50_ms'):.2f}x",
                 "", f"{f['p50_vs_runtime[1]']:.2f}x", verdict(f, "p50_vs_runtime[1]")))
    for c in (1, 8, 64):
        rows.append((f"p99 latency, {c} connection(s)", cell("platform", c, "p99_ms"), cell("runtime", c, "p99_ms"),
                     cell("starlette", c, "p99_ms"), f"{round_ratio(http, 'platform', 'starlette', c, 'p99_ms'):.2f}x",
                     "", f"{round_ratio(http, 'platform', 'runtime', c, 'p99_ms'):.2f}x", ""))
    lines += rt.table(rows)
    lines.append("   the floor of a hop (a bare callback proxy in front of the runtime alone, core 0; FLOOR_PROXY): "
                 + ", ".join(f"{c} connections {cell('floor', c, 'rps')}/s = {f[f'floor_vs_starlette[{c}]']:.2f}x "
                             f"Starlette, {f[f'floor_vs_runtime[{c}]']:.2f}x the runtime" for c in (64, 8))
                 + f"; p50 at 1 connection {cell('floor', 1, 'p50_ms')} = {f['floor_p50_vs_runtime[1]']:.2f}x the runtime")
    fa, u = http["fastapi"]["8"], http["platform unpinned"]["8"]
    lines.append(f"   for information, 8 connections: FastAPI {fa['rps']:.0f} requests/s (platform "
                 f"{f['rps_vs_fastapi[8]']:.2f}x); the platform unpinned (both cores, wrk on core 1) {u['rps']:.0f}")
    lines.append("   requests/s by round at 8 connections: " + "; ".join(
        f"{side} " + ", ".join(f"{r['rps']:.0f}" for r in s["8"]["rounds"]) for side, s in http.items()))
    lines.append("   CPU time per request at 8 connections (median of rounds): " + "; ".join(
        f"{side} " + ", ".join(f"{role} {us:.0f} us" for role, us in s["8"]["cpu_us_per_request"].items())
        for side, s in http.items()))
    errors = {f"{side} at {c}": x["errors"] for side, s in http.items() for c, x in s.items()
              if isinstance(x, dict) and x.get("errors")}
    if errors:
        lines.append(f"   WARNING: non-2xx answers or socket errors: {errors}")

    lines += ["",
              (f"3. Alias moves under load: {moves['rate']:.0f} requests/s (open loop, httpx) on iris (alias live) "
               f"for {moves['seconds']:.0f} s, while the alias changes {moves['moves']} times "
               f"({moves['moves'] - 1} moves, then a rollback)"),
              (f"   {moves['sent']} requests (achieved {moves['achieved_rate']:.0f}/s; out after they were due by "
               f"p99 {moves['lateness_p99_ms']:.1f} ms, max {moves['lateness_max_ms']:.1f} ms), failed "
               f"{moves['failed']} ({verdict(f, 'alias_failed_requests')}); latency p50 {moves['p50_ms']:.1f} ms, "
               f"p99 {moves['p99_ms']:.1f} ms, max {moves['max_ms']:.1f} ms"),
              ("   sent = the request's last byte written, ack = the move's answer read (httpcore trace hooks); "
               "checked: requests sent from ack + 50 ms to the next move")]
    if moves["achieved_rate"] < 0.95 * moves["rate"]:
        lines.append("   WARNING: the client fell behind its schedule (a busy machine): the load was lighter than asked")
    if moves["failures"]:
        lines.append(f"   failures: {moves['failures']}")
        lines += [f"   | {line}" for line in moves.get("log_tail", [])]

    def state(s: dict[str, Any]) -> str:
        return f"v{s['primary']}" + (f" + v{s['canary']} at {s['weight']:.0%}" if s["canary"] is not None else "")

    lines += rt.table([("move", "new state", "ack", "requests checked", "wrong version", "canary share",
                        "last stale, vs ack")] +
                      [(f"{i + 1}{' (rollback)' if c['rollback'] else ''}", state(c["state"]),
                        f"{c['ack_ms']:.1f} ms", str(c["requests"]), str(c["violations"]),
                        f"{c['canary_share']:.1%}" if c["canary_share"] is not None else "",
                        f"{c['last_stale_after_ack_ms']:+.1f} ms" if c["last_stale_after_ack_ms"] is not None else "")
                       for i, c in enumerate(moves["checks"])])
    lines.append(f"   requests routed against the state they were sent under: {moves['visibility_violations']} "
                 f"({verdict(f, 'move_visibility_violations')}; {moves['single_moves_checked']} of the changes are "
                 "to a single version, where exactly that version must answer)")
    lines.append(f"   canary v{share['canary']} at {share['weight']:.0%} of v{share['primary']}: {share['sent']} requests "
                 f"(8 at a time, {share['rps']:.0f}/s, failed {share['failed']}), answered by {share['counts']}: "
                 f"share {share['share']:.2%}, {share['error_points']:.2f} points off "
                 f"({verdict(f, 'canary_share_error_points')})")

    w, bm, pw = mem["worker"], mem["bare"], mem["plain_worker"]
    lines += ["", ("4. Memory: an idle worker (50 requests, then 2 s idle) vs. B0 kept alive after its run "
                   "(the same numpy, onnxruntime and model.onnx)")]
    rows = [("process", "RSS", "PSS", "RSS vs B0", "goal"),
            ("platform worker (forked by the zygote)", mib(w["rss_kib"]), mib(w["pss_kib"]),
             f"{mem['rss_ratio']:.2f}x", verdict(f, "memory_rss_ratio")),
            ("B0 holding the session", mib(bm["rss_kib"]), mib(bm["pss_kib"]), "1.00x", ""),
            ("plain `python -m fnpack.worker` (info)", mib(pw["rss_kib"]), mib(pw["pss_kib"]),
             f"{pw['rss_kib'] / bm['rss_kib']:.2f}x", "")]
    if mem["zygote"]:
        rows.append(("zygote (info; one for all workers)", mib(mem["zygote"]["rss_kib"]),
                     mib(mem["zygote"]["pss_kib"]), "", ""))
    rows.append(("gateway (info)", mib(mem["gateway"]["rss_kib"]), mib(mem["gateway"]["pss_kib"]), "", ""))
    lines += rt.table(rows)
    lines.append(f"   worker PSS vs B0 PSS: {mem['pss_ratio']:.2f}x (a forked worker shares the zygote's pages)")

    busy = {k: v for k, v in f["busy_before"].items() if v > 0.1}
    if busy:
        lines += ["", "   WARNING: other work kept the CPUs busy just before: " +
                  ", ".join(f"{k} {v:.0%}" for k, v in busy.items()) + "; the figures are unreliable"]
    lines += ["", "goals"]
    lines += rt.table([("goal", "limit", "measured", "")] +
                      [(g["goal"], f"{g['op']} {g['limit']:g}{g['unit']}",
                        f"{g['value']:.3f}{g['unit']}" if isinstance(g["value"], float) else str(g["value"]),
                        "PASS" if g["pass"] else "FAIL") for g in f["goals"]])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 cold starts, 10 s of alias moves, 3 s loads")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (state folders, logs)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: the throughput part needs it")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: servers on core 0, wrk on core 1")
    if subprocess.run([sys.executable, "-c", "import fastapi"], capture_output=True, check=False).returncode != 0:
        sys.exit(f"fastapi is not installed for {sys.executable}: the throughput baseline needs it")
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop the servers and delete the temp folder.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    # rt.run, used for builds, B0 and wrk, bounds every child by the runtime module's DEADLINE.
    rt.DEADLINE = rt.Deadline(240 if args.quick else 600)
    try:
        figures = bench(args.quick, args.keep)
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp folder removed", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, subprocess.SubprocessError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
