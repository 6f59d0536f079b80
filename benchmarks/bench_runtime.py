#!/usr/bin/env python3
"""Benchmark fnpack's runtime (cold init, warm HTTP, batching) against hand-written baselines.

In one run, on examples/iris and examples/digits:
  1. Lambda-style cold init: the archive's handler answering one Function URL event in a fresh
     `python -I -S`, vs. a bare process that loads the same model.onnx and runs it once (B0).
  2. Warm HTTP (iris): fnpack's worker vs. a hand-written FastAPI app on uvicorn, driven by wrk.
  3. Batching (digits): the worker with `batching:` on vs. off.
Servers run pinned to core 0 and wrk to core 1 (`taskset`). Needs wrk, taskset, and fastapi in the
interpreter's environment (for the baseline only). Progress goes to stderr, the result to stdout.

    python benchmarks/bench_runtime.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml  # a dependency of fnpack, so in its venv

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BATCHING = {"max_batch_size": 32, "max_wait_ms": 2}

# name -> (limit, comparison); each figure is a ratio: fnpack / baseline, or batching on / off.
GOALS: dict[str, tuple[float, str]] = {
    "cold_init_ratio[iris]": (1.5, "<="),
    "cold_init_ratio[digits]": (1.5, "<="),
    "http_rps_ratio": (1.0, ">="),
    "http_p50_ratio": (1.0, "<="),
    "batching_rps_ratio": (2.0, ">="),
    "batching_p50_ratio": (1.05, "<="),
}

# Cold-init children. argv: [folder, event.json]; the folder is the cwd too, as on Lambda.
FNPACK_COLD = """\
import sys
sys.path.insert(0, sys.argv[1])
import json
import fnpack_handler
with open(sys.argv[2]) as f:
    event = json.load(f)
sys.stdout.write(str(fnpack_handler.handler(event, None)["statusCode"]))
"""
BARE_COLD = """\
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
         "tensor(int32)": np.int32}
feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], types[i.type])
         for i in session.get_inputs()}
sys.stdout.write(str(len(session.run(None, feeds))))
"""

# The warm-HTTP baseline: what one writes by hand to serve the iris model (cf. examples/iris/score.py).
FASTAPI_APP = """\
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException

FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASSES = ("setosa", "versicolor", "virginica")
session = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/invoke")
def invoke(record: dict[str, float]):
    try:
        row = [record[field] for field in FIELDS]
    except KeyError as exc:
        raise HTTPException(422, f"missing field {exc}")
    label, probabilities = session.run(None, {"features": np.array([row], dtype=np.float32)})
    return {"label": CLASSES[int(label[0])],
            "probabilities": {name: round(float(p), 4) for name, p in zip(CLASSES, probabilities[0])}}
"""

WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open({path}, "rb"))
wrk.body = f:read("*a")
f:close()
"""


class Deadline:
    """The whole run's time bound: every child gets at most what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, want: float) -> float:
        left = self.end - time.monotonic()
        if left <= 1:
            raise TimeoutError("out of time: the run's bound is spent (a cold fnpack cache? build the "
                               "examples once first)")
        return min(want, left)


DEADLINE = Deadline(0)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own process group, all of which is killed on timeout, Ctrl-C or any error
    (fnpack build has children of its own)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=DEADLINE.left(timeout))
    except BaseException:
        stop(proc)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a child started by this script and its process group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def build(project: Path, target: str, out: Path) -> dict[str, Any]:
    fnpack = Path(sys.executable).parent / "fnpack"
    command = [str(fnpack) if fnpack.is_file() else "fnpack", "build", str(project), "--target", target,
               "--out", str(out), "--json"]
    done = run(command, 300, cwd=project)
    if done.returncode != 0:
        raise RuntimeError(f"fnpack build {project.name} --target {target} failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def first_sample(project: Path) -> Any:
    sample = yaml.safe_load((project / "fnpack.yaml").read_text())["samples"][0]
    return sample["data"] if "data" in sample else json.loads((project / sample["file"]).read_text())


def url_event(body: bytes) -> dict[str, Any]:
    """A Lambda Function URL event (payload format 2.0): POST /invoke (from fnpack.runtime.smoke)."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": "/invoke", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "bench.lambda-url.local"},
        "requestContext": {"http": {"method": "POST", "path": "/invoke", "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "fnpack-bench"},
                           "routeKey": "$default", "stage": "$default", "requestId": "bench"},
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
    }


# ---------------------------------------------------------------- 1. cold init

def cold_init(name: str, archive: Path, body: bytes, tmp: Path, runs: int) -> dict[str, Any]:
    folder = tmp / f"lambda-{name}"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    event = tmp / f"event-{name}.json"
    event.write_text(json.dumps(url_event(body)))
    python = [sys.executable, "-I", "-S"]

    def once(script: str, flags: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess[str]]:
        started = time.perf_counter()
        done = run([*python, *flags, "-c", script, str(folder), str(event)], 60, cwd=folder)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"cold-init child failed ({name}):\n{done.stderr[-2000:]}")
        return elapsed, done

    once(FNPACK_COLD), once(BARE_COLD)  # untimed: page cache, and .pyc for any module shipped without one
    fnpack_s, bare_s, statuses = [], [], set()
    for _ in range(runs):  # interleaved, so a drift in machine load hits both alike
        elapsed, done = once(FNPACK_COLD)
        fnpack_s.append(elapsed)
        statuses.add(done.stdout.strip())
        bare_s.append(once(BARE_COLD)[0])
    if statuses != {"200"}:
        raise RuntimeError(f"fnpack's handler answered {sorted(statuses)} for {name}, expected 200")
    _, traced = once(FNPACK_COLD, ("-X", "importtime"))
    a, b = statistics.median(fnpack_s), statistics.median(bare_s)
    return {"runs": runs, "fnpack_s": fnpack_s, "bare_s": bare_s, "fnpack_median_s": a, "bare_median_s": b,
            "ratio": a / b, "extra_ms": (a - b) * 1000, "status": 200,
            "top_imports": top_imports(traced.stderr, 8)}


def top_imports(stderr: str, n: int) -> list[dict[str, Any]]:
    """The n imports with the most self time in `-X importtime` output (microseconds -> ms)."""
    rows = [(int(m[1]) / 1000, int(m[2]) / 1000, m[3]) for m in
            re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|\s+(\S+)", stderr, re.MULTILINE)]
    return [{"module": module, "self_ms": own, "cumulative_ms": total}
            for own, total, module in sorted(rows, reverse=True)[:n]]


# ---------------------------------------------------------------- 2./3. servers and wrk

def cpu_busy(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat). Sampled while none of ours runs: other
    load on this 2-core box skews every figure, so the report warns about it."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(command: list[str], port: int, log_path: Path, procs: list[subprocess.Popen[Any]],
          **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a server pinned to core 0; return once it accepts connections (after its model loaded)."""
    with open(log_path, "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
    procs.append(proc)
    give_up = time.monotonic() + DEADLINE.left(60)
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen within 60 s:\n{log_path.read_text()[-2000:]}")


def post(port: int, body: bytes) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invoke", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wrk(port: int, lua: Path, connections: int, seconds: int) -> dict[str, Any]:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "-s", str(lua), f"http://127.0.0.1:{port}/invoke"]
    done = run(command, seconds + 30)
    text = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if done.returncode != 0 or not rps or not p50:
        raise RuntimeError(f"wrk failed:\n{text[-2000:]}{done.stderr[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"connections": connections, "seconds": seconds, "rps": float(rps[1]),
            "p50_ms": float(p50[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50[2]],
            "requests": int(re.search(r"(\d+) requests in", text)[1]),  # type: ignore[index]
            "non_2xx": int(non2xx[1]) if non2xx else 0,
            "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0}


def batch_calls(port: int) -> tuple[float, int]:
    """(records, model calls) so far, from a worker's fnpack_batch_size histogram (only batched calls count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = re.search(r"^fnpack_batch_size_sum\{.*\} ([\d.e+]+)$", text, re.MULTILINE)
    count = re.search(r"^fnpack_batch_size_count\{.*\} (\d+)$", text, re.MULTILINE)
    return (float(total[1]) if total else 0.0), (int(count[1]) if count else 0)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over rounds of each figure; error counts summed."""
    return {"connections": runs[0]["connections"], "seconds": runs[0]["seconds"], "rounds": len(runs),
            "rps": statistics.median(r["rps"] for r in runs), "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "non_2xx": sum(r["non_2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs)}


def compare(part: str, sides: dict[str, tuple[list[str], dict[str, Any]]], body: bytes, check: str, high: int,
            seconds: int, rounds: int, tmp: Path, procs: list[subprocess.Popen[Any]]
            ) -> tuple[dict[str, Any], float]:
    """Serve both sides at once (each idle while wrk drives the other), check one answer each, warm each up
    2 s at `high` connections, then per round: `high` connections (-> requests/s) and 1 (-> p50), side
    after side, the order flipped every round so that a drift in the machine's speed hits both alike.
    Returns ({side: figures}, the share of CPUs busy with other work just before)."""
    busy = cpu_busy()
    (tmp / f"{part}.json").write_bytes(body)
    lua = tmp / f"{part}.lua"
    lua.write_text(WRK_LUA.format(path=json.dumps(str(tmp / f"{part}.json"))))
    ports: dict[str, int] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for side, (command, kwargs) in sides.items():
            log(f"{part}: starting {side}")
            ports[side] = port = free_port()
            serve([*command, "--host", "127.0.0.1", "--port", str(port)], port, tmp / f"{part}-{side}.log",
                  procs, **kwargs)
            answer = post(port, body)
            if check not in answer:
                raise RuntimeError(f"{part}/{side} answered {answer!r}, expected a {check!r} field")
            results[side] = {"answer": answer, "runs": {"high": [], "one": []}}
        log(f"{part}: warm-up 2 s each, then {rounds} round(s) of {seconds} s at {high} connections and "
            f"{seconds} s at 1 per side")
        for port in ports.values():
            wrk(port, lua, high, 2)
        # records and model calls under the `high` load, for the fnpack workers (from their metrics)
        records = {side: 0.0 for side, (command, _) in sides.items() if "fnpack.worker" in command}
        calls = dict.fromkeys(records, 0)
        order = list(sides)
        for i in range(rounds):
            for load, connections in (("high", high), ("one", 1)):
                for side in order if i % 2 == 0 else order[::-1]:
                    counted = load == "high" and side in records
                    before = batch_calls(ports[side]) if counted else (0.0, 0)
                    results[side]["runs"][load].append(wrk(ports[side], lua, connections, seconds))
                    if counted:
                        after = batch_calls(ports[side])
                        records[side] += after[0] - before[0]
                        calls[side] += after[1] - before[1]
        for side, r in results.items():
            r["high"], r["one"] = summary(r["runs"]["high"]), summary(r["runs"]["one"])
            r["mean_batch_size"] = records[side] / calls[side] if calls.get(side) else None
        return results, busy
    finally:
        for proc in procs[:]:
            stop(proc)
            procs.remove(proc)


def worker_command(built: dict[str, Any], cache: Path) -> list[str]:
    return [sys.executable, "-m", "fnpack.worker", "--archive", built["archive"], "--sha256", built["sha256"],
            "--cache-dir", str(cache)]


# ---------------------------------------------------------------- the run

def bench(quick: bool) -> dict[str, Any]:
    runs, seconds, rounds = (7, 3, 1) if quick else (15, 10, 3)
    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="fnpack-bench-runtime-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            projects = {}
            for name in ("iris", "digits"):  # build from copies: the repo's folders stay untouched
                projects[name] = Path(shutil.copytree(EXAMPLES / name, tmp / "src" / name,
                                                      ignore=shutil.ignore_patterns("dist", ".*", "__pycache__")))
            batched = Path(shutil.copytree(projects["digits"], tmp / "src" / "digits-batching"))
            with open(batched / "fnpack.yaml", "a") as f:
                f.write("\n" + yaml.safe_dump({"batching": BATCHING}))
            bodies = {name: json.dumps(first_sample(p)).encode() for name, p in projects.items()}

            busy = cpu_busy()
            log("building iris and digits for aws-lambda and local, and digits with batching")
            builds = {f"{name}/{target}": build(p, target, tmp / "out" / f"{name}-{target}")
                      for name, p in projects.items() for target in ("aws-lambda", "local")}
            builds["digits-batching/local"] = build(batched, "local", tmp / "out" / "digits-batching")

            cold = {}
            for name in projects:
                log(f"cold init, {name}: {runs} fnpack + {runs} bare runs, interleaved")
                cold[name] = cold_init(name, Path(builds[f"{name}/aws-lambda"]["archive"]), bodies[name], tmp, runs)

            cache = tmp / "worker-cache"
            fastapi_env = {**os.environ, "BENCH_MODEL": str(projects["iris"] / "model.onnx")}
            http, busy_http = compare(
                "http", {"fnpack": (worker_command(builds["iris/local"], cache), {}),
                         "fastapi": (baseline_command(tmp), {"cwd": tmp, "env": fastapi_env})},
                bodies["iris"], "label", 8, seconds, rounds, tmp, procs)
            batching, busy_batching = compare(
                "batching", {"on": (worker_command(builds["digits-batching/local"], cache), {}),
                             "off": (worker_command(builds["digits/local"], cache), {})},
                bodies["digits"], "digit", 32, seconds, rounds, tmp, procs)
        finally:
            for proc in procs:
                stop(proc)

    figures: dict[str, Any] = {
        "mode": "quick" if quick else "full", "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "archives": {k: {"archive": Path(v["archive"]).name, "sha256": v["sha256"],
                         "dependencies": [f"{d['name']}=={d['version']}" for d in v["dependencies"]]}
                     for k, v in builds.items()},
        "busy_before": max(busy, busy_http, busy_batching),
        "cold_init": cold, "http": http, "batching": batching,
        "cold_init_ratio[iris]": cold["iris"]["ratio"], "cold_init_ratio[digits]": cold["digits"]["ratio"],
        "http_rps_ratio": http["fnpack"]["high"]["rps"] / http["fastapi"]["high"]["rps"],
        "http_p50_ratio": http["fnpack"]["one"]["p50_ms"] / http["fastapi"]["one"]["p50_ms"],
        "batching_rps_ratio": batching["on"]["high"]["rps"] / batching["off"]["high"]["rps"],
        "batching_p50_ratio": batching["on"]["one"]["p50_ms"] / batching["off"]["one"]["p50_ms"],
    }
    figures["errors"] = {f"{part}/{side}/{load}": r[load]["non_2xx"] + r[load]["socket_errors"]
                         for part in ("http", "batching") for side, r in figures[part].items()
                         for load in ("high", "one") if r[load]["non_2xx"] + r[load]["socket_errors"]}
    figures["goals"] = [{"goal": g, "op": op, "limit": limit, "value": figures[g],
                         "pass": figures[g] <= limit if op == "<=" else figures[g] >= limit}
                        for g, (limit, op) in GOALS.items()]
    return figures


def baseline_command(tmp: Path) -> list[str]:
    (tmp / "baseline_app.py").write_text(FASTAPI_APP)
    # The same server stack as fnpack's worker: uvicorn with uvloop and httptools, one process.
    return [sys.executable, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(tmp), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log"]


# ---------------------------------------------------------------- the report

def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                      for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def verdict(f: dict[str, Any], goal: str) -> str:
    g = next(g for g in f["goals"] if g["goal"] == goal)
    return f"{g['op']} {g['limit']:.2f}x {'PASS' if g['pass'] else 'FAIL'}"


def report(f: dict[str, Any]) -> str:
    cold, http, batching = f["cold_init"], f["http"], f["batching"]
    seconds = http["fnpack"]["high"]["seconds"]
    lines = [(f"fnpack runtime benchmark ({f['mode']}): Python {f['python']}, {f['cpus']} CPUs; "
              "servers on core 0, wrk on core 1"),
             "archives: " + ", ".join(f"{k} {v['sha256'][:12]}" for k, v in f["archives"].items()),
             "lambda archives bundle " + " ".join(f["archives"]["iris/aws-lambda"]["dependencies"]),
             "",
             f"1. Lambda-style cold init: median of {cold['iris']['runs']} fresh `python -I -S`, spawn to exit",
             "   fnpack = import fnpack_handler + handler(Function URL event, POST /invoke) -> 200;",
             "   B0 = import numpy, onnxruntime + InferenceSession(model.onnx) + one run"]
    rows = [("example", "fnpack", "B0", "ratio", "fnpack - B0", "goal")]
    for name, c in cold.items():
        rows.append((name, f"{c['fnpack_median_s'] * 1000:.1f} ms", f"{c['bare_median_s'] * 1000:.1f} ms",
                     f"{c['ratio']:.2f}x", f"{c['extra_ms']:+.1f} ms", verdict(f, f"cold_init_ratio[{name}]")))
    lines += table(rows)
    for name, c in cold.items():
        lines += ["", f"   top self-time imports, one fnpack run with -X importtime ({name}; fnpack_handler's self",
                  "   time includes loading the model):"]
        lines += table([("module", "self", "cumulative")] +
                       [(i["module"], f"{i['self_ms']:.1f} ms", f"{i['cumulative_ms']:.1f} ms")
                        for i in c["top_imports"]])

    def load_rows(a: dict[str, Any], b: dict[str, Any], high: int, rps_goal: str, p50_goal: str,
                  extra: list[tuple[str, ...]]) -> list[str]:
        return table([("", *extra[0]),
                      (f"requests/s, {high} connections", f"{a['high']['rps']:.0f}", f"{b['high']['rps']:.0f}",
                       f"{f[rps_goal]:.2f}x", verdict(f, rps_goal)),
                      ("p50 latency, 1 connection", f"{a['one']['p50_ms']:.2f} ms", f"{b['one']['p50_ms']:.2f} ms",
                       f"{f[p50_goal]:.2f}x", verdict(f, p50_goal)),
                      ("requests/s, 1 connection", f"{a['one']['rps']:.0f}", f"{b['one']['rps']:.0f}",
                       f"{a['one']['rps'] / b['one']['rps']:.2f}x", ""),
                      (f"p50 latency, {high} connections", f"{a['high']['p50_ms']:.2f} ms",
                       f"{b['high']['p50_ms']:.2f} ms", f"{a['high']['p50_ms'] / b['high']['p50_ms']:.2f}x", ""),
                      *extra[1:]])

    def spread(sides: dict[str, Any]) -> str:
        return "; ".join(f"{side} " + ", ".join(f"{r['rps']:.0f}" for r in figures["runs"]["high"])
                         for side, figures in sides.items())

    rounds = http["fnpack"]["high"]["rounds"]
    how = (f"   wrk 1 thread; per side {rounds} round(s) of {seconds} s per load (median shown), after a 2 s "
           "warm-up;\n   both servers up, driven in turn")
    lines += ["", "2. Warm HTTP, iris: POST /invoke with the first sample",
              "   fnpack worker (archive for target local) vs. FastAPI sync endpoint on uvicorn (uvloop, httptools)",
              how]
    lines += load_rows(http["fnpack"], http["fastapi"], 8, "http_rps_ratio", "http_p50_ratio",
                       [("fnpack", "FastAPI", "ratio", "goal")])
    lines.append(f"   requests/s at 8 connections by round: {spread(http)}")
    on = batching["on"]
    mean = f"{on['mean_batch_size']:.1f}" if on["mean_batch_size"] else "-"
    lines += ["", (f"3. Batching, digits: POST /invoke with the first sample; two fnpack workers, batching on "
                   f"({BATCHING['max_batch_size']}, {BATCHING['max_wait_ms']} ms) vs. off"), how]
    lines += load_rows(on, batching["off"], 32, "batching_rps_ratio", "batching_p50_ratio",
                       [("batching on", "batching off", "ratio", "goal"),
                        ("records per model call, 32 conns", mean, "1", "", "")])
    lines.append(f"   requests/s at 32 connections by round: {spread(batching)}")
    if f["errors"]:
        lines += ["", "   WARNING: non-2xx answers or socket errors: " +
                  ", ".join(f"{k} {v}" for k, v in f["errors"].items())]
    if f["busy_before"] > 0.1:
        lines += ["", (f"   WARNING: up to {f['busy_before']:.0%} of the CPUs were busy with other work just "
                       "before a part ran: the figures are unreliable")]
    lines += ["", "goals"]
    lines += table([("goal", "limit", "measured", "")] +
                   [(g["goal"], f"{g['op']} {g['limit']:.2f}x", f"{g['value']:.3f}x", "PASS" if g["pass"] else "FAIL")
                    for g in f["goals"]])
    return "\n".join(lines)


def main() -> int:
    global DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7 cold runs and 3 s loads (under 2 minutes)")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: the HTTP parts need it")
    if subprocess.run([sys.executable, "-c", "import fastapi"], capture_output=True, check=False).returncode != 0:
        sys.exit(f"fastapi is not installed for {sys.executable}: the warm-HTTP baseline needs it "
                 "(pip install fastapi)")
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop the servers and delete the temp folder.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    DEADLINE = Deadline(110 if args.quick else 470)
    try:
        figures = bench(args.quick)
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp folder removed", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
