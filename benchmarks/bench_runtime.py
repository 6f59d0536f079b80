#!/usr/bin/env python3
"""Benchmark fnpack's runtime (cold init, warm HTTP, tail latency, batching) against hand-written peers.

In one run, on examples/iris and examples/digits:
  1. Lambda-style cold init: the archive's handler answering one Function URL event in a fresh
     `python -I -S`, vs. a bare process that loads the same model.onnx and runs it once (B0), and B0
     plus the function's own modules (B1), whose difference to fnpack is fnpack's own share.
  2. Warm HTTP (iris): fnpack's worker vs. a hand-written FastAPI app and a hand-written Starlette app
     (an `async` route) on uvicorn, and BentoML when it is importable, driven by wrk.
  3. Batching (digits): the worker with `batching:` on vs. off, and the Starlette app's p99.
Servers run pinned to core 0 and wrk to core 1 (`taskset`). Needs wrk, taskset, and fastapi (which
brings starlette) in the interpreter's environment (for the baselines only). Progress goes to stderr,
the result to stdout.

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
BATCH_LOADS = (64, 32, 8, 1)  # connections

# name -> (limit, comparison, unit); each figure is a ratio (fnpack / baseline, or batching on / off),
# except fnpack's own share of cold init, in milliseconds.
GOALS: dict[str, tuple[float, str, str]] = {
    "cold_init_ratio[iris]": (1.3, "<=", "x"),
    "cold_init_ratio[digits]": (1.3, "<=", "x"),
    "cold_init_own_ms[iris]": (25.0, "<=", "ms"),
    "cold_init_own_ms[digits]": (25.0, "<=", "ms"),
    "http_rps_ratio": (1.0, ">=", "x"),
    "http_p50_ratio": (1.0, "<=", "x"),
    "p99_ratio[iris]": (1.2, "<=", "x"),
    "p99_ratio[digits]": (1.2, "<=", "x"),
    "batching_rps_ratio[32]": (2.0, ">=", "x"),
    "batching_rps_ratio[64]": (2.0, ">=", "x"),
    "batching_one_rps_ratio": (0.95, ">=", "x"),
    "batching_p50_ratio": (1.05, "<=", "x"),
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
# B1: what the function itself needs, written by hand: its own modules (features, score) and the model,
# the event's record decoded, features -> one run -> score. fnpack - B1 is fnpack's own share; B1 - B0
# the function's own imports and first call (Pillow's image plugins load on the first decode, say).
OWN_COLD = """\
import sys
sys.path.insert(0, sys.argv[1])
import base64
import importlib
import json
import onnxruntime as ort
with open("fnpack.json") as f:
    spec = json.load(f)["spec"]
def load(ref):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
extract, score = load(spec["features"]), load(spec["score"])
session = ort.InferenceSession(spec["model"], providers=["CPUExecutionProvider"])
with open(sys.argv[2]) as f:
    record = json.loads(base64.b64decode(json.load(f)["body"]))
feeds = extract([record]) if getattr(extract, "takes_list", False) else extract(record)
outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
sys.stdout.write(json.dumps(score(outputs)))
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

# The fastest way to write it by hand: an `async` Starlette route that runs the model on the event loop.
# It runs on the archive's own packages and code (BENCH_ROOT: the archive for target local, unpacked):
# the same numpy, onnxruntime, features and score as fnpack's worker, so only the serving differs.
STARLETTE_APP = """\
import importlib
import json
import os
import sys

sys.path.insert(0, os.environ["BENCH_ROOT"])
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


def load(ref):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


with open(os.path.join(os.environ["BENCH_ROOT"], "fnpack.json")) as f:
    spec = json.load(f)["spec"]
extract, score = load(spec["features"]), load(spec["score"])
session = ort.InferenceSession(os.path.join(os.environ["BENCH_ROOT"], spec["model"]),
                               providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]


async def invoke(request):
    record = json.loads(await request.body())
    feeds = extract([record]) if getattr(extract, "takes_list", False) else extract(record)
    outputs = dict(zip(names, session.run(None, feeds)))
    return Response(json.dumps(score(outputs)), media_type="application/json")


app = Starlette(routes=[Route("/invoke", invoke, methods=["POST"])])
"""

# BentoML 1.2+'s service API, on iris: one sync API (BentoML runs it in its thread pool), the record's
# fields as its parameters, the archive's packages and code as for Starlette.
BENTOML_APP = """\
import importlib
import json
import os
import sys

sys.path.insert(0, os.environ["BENCH_ROOT"])
import bentoml
import onnxruntime as ort

with open(os.path.join(os.environ["BENCH_ROOT"], "fnpack.json")) as f:
    SPEC = json.load(f)["spec"]


def load(ref):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@bentoml.service(workers=1)
class Bench:
    def __init__(self) -> None:
        self.extract, self.score = load(SPEC["features"]), load(SPEC["score"])
        self.session = ort.InferenceSession(os.path.join(os.environ["BENCH_ROOT"], SPEC["model"]),
                                            providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    @bentoml.api(route="/invoke")
    def invoke(self, sepal_length: float, sepal_width: float, petal_length: float, petal_width: float) -> dict:
        record = {"sepal_length": sepal_length, "sepal_width": sepal_width, "petal_length": petal_length,
                  "petal_width": petal_width}
        feeds = self.extract([record]) if getattr(self.extract, "takes_list", False) else self.extract(record)
        return self.score(dict(zip(self.names, self.session.run(None, feeds))))
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

    once(FNPACK_COLD), once(BARE_COLD), once(OWN_COLD)  # untimed: page cache, .pyc for modules shipped without
    fnpack_s, bare_s, own_s, statuses = [], [], [], set()
    for _ in range(runs):  # interleaved, so a drift in machine load hits all alike
        elapsed, done = once(FNPACK_COLD)
        fnpack_s.append(elapsed)
        statuses.add(done.stdout.strip())
        bare_s.append(once(BARE_COLD)[0])
        own_s.append(once(OWN_COLD)[0])
    if statuses != {"200"}:
        raise RuntimeError(f"fnpack's handler answered {sorted(statuses)} for {name}, expected 200")
    _, traced = once(FNPACK_COLD, ("-X", "importtime"))
    a, b, b1 = statistics.median(fnpack_s), statistics.median(bare_s), statistics.median(own_s)
    return {"runs": runs, "fnpack_s": fnpack_s, "bare_s": bare_s, "own_modules_s": own_s,
            "fnpack_median_s": a, "bare_median_s": b, "own_modules_median_s": b1,
            "ratio": a / b, "extra_ms": (a - b) * 1000, "function_imports_ms": (b1 - b) * 1000,
            "fnpack_own_ms": (a - b1) * 1000, "status": 200, "top_imports": top_imports(traced.stderr, 8)}


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
    pct = {q: re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE) for q in (50, 99)}
    if done.returncode != 0 or not rps or not all(pct.values()):
        raise RuntimeError(f"wrk failed:\n{text[-2000:]}{done.stderr[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    ms = {q: float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]] for q, m in pct.items() if m}
    return {"connections": connections, "seconds": seconds, "rps": float(rps[1]),
            "p50_ms": ms[50], "p99_ms": ms[99],
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
            **{key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")},
            "non_2xx": sum(r["non_2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs)}


class Side:
    """One server of a part: its command, Popen keywords, and the connection counts wrk drives it at."""

    def __init__(self, command: list[str], loads: Sequence[int], **kwargs: Any) -> None:
        self.command, self.loads, self.kwargs = command, tuple(loads), kwargs


def compare(part: str, sides: dict[str, Side], body: bytes, check: str, seconds: int, rounds: int, tmp: Path,
            procs: list[subprocess.Popen[Any]]) -> tuple[dict[str, Any], float]:
    """Serve every side at once (each idle while wrk drives another), check one answer each, warm each up
    2 s at its highest load, then per round and load: side after side, the order flipped every round so
    that a drift in the machine's speed hits all alike. Returns ({side: {connections: figures}}, the share
    of CPUs busy with other work just before)."""
    busy = cpu_busy()
    (tmp / f"{part}.json").write_bytes(body)
    lua = tmp / f"{part}.lua"
    lua.write_text(WRK_LUA.format(path=json.dumps(str(tmp / f"{part}.json"))))
    ports: dict[str, int] = {}
    results: dict[str, dict[str, Any]] = {}
    loads = sorted({n for side in sides.values() for n in side.loads}, reverse=True)
    try:
        for name, side in sides.items():
            log(f"{part}: starting {name}")
            ports[name] = port = free_port()
            serve([*side.command, "--host", "127.0.0.1", "--port", str(port)], port, tmp / f"{part}-{name}.log",
                  procs, **side.kwargs)
            answer = post(port, body)
            if check not in answer:
                raise RuntimeError(f"{part}/{name} answered {answer!r}, expected a {check!r} field")
            results[name] = {"answer": answer, "runs": {n: [] for n in side.loads}}
        log(f"{part}: warm-up 2 s each, then {rounds} round(s) of {seconds} s at each of {loads} connections")
        for name, port in ports.items():
            wrk(port, lua, max(sides[name].loads), 2)
        # records and model calls per load, for the fnpack workers (from their metrics)
        counted = [name for name, side in sides.items() if "fnpack.worker" in side.command]
        batches = {name: {n: [0.0, 0] for n in sides[name].loads} for name in counted}
        order = list(sides)
        for i in range(rounds):
            for connections in loads:
                for name in order if i % 2 == 0 else order[::-1]:
                    if connections not in sides[name].loads:
                        continue
                    before = batch_calls(ports[name]) if name in counted else (0.0, 0)
                    results[name]["runs"][connections].append(wrk(ports[name], lua, connections, seconds))
                    if name in counted:
                        after = batch_calls(ports[name])
                        batches[name][connections][0] += after[0] - before[0]
                        batches[name][connections][1] += after[1] - before[1]
        for name, r in results.items():
            for connections, runs in r["runs"].items():
                r[connections] = summary(runs)
                records, calls = batches.get(name, {}).get(connections, (0.0, 0))
                r[connections]["mean_batch_size"] = records / calls if calls else None
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
            roots = {}
            for name in projects:  # the archives for target local, unpacked: what the peers run
                roots[name] = tmp / f"root-{name}"
                with zipfile.ZipFile(builds[f"{name}/local"]["archive"]) as zf:
                    zf.extractall(roots[name])
            fastapi_env = {**os.environ, "BENCH_MODEL": str(projects["iris"] / "model.onnx")}
            http_sides = {"fnpack": Side(worker_command(builds["iris/local"], cache), (8, 1)),
                          "fastapi": Side(baseline_command(tmp, "fastapi", FASTAPI_APP), (8, 1), cwd=tmp,
                                          env=fastapi_env),
                          "starlette": Side(baseline_command(tmp, "starlette", STARLETTE_APP), (8, 1), cwd=tmp,
                                            env={**os.environ, "BENCH_ROOT": str(roots["iris"])})}
            if bentoml_importable():
                http_sides["bentoml"] = Side(bentoml_command(tmp), (8, 1), cwd=tmp,
                                             env={**os.environ, "BENCH_ROOT": str(roots["iris"])})
            http, busy_http = compare("http", http_sides, bodies["iris"], "label", seconds, rounds, tmp, procs)
            batching, busy_batching = compare(
                "batching", {"on": Side(worker_command(builds["digits-batching/local"], cache), BATCH_LOADS),
                             "off": Side(worker_command(builds["digits/local"], cache), BATCH_LOADS),
                             "starlette": Side(baseline_command(tmp, "starlette", STARLETTE_APP), (1,), cwd=tmp,
                                               env={**os.environ, "BENCH_ROOT": str(roots["digits"])})},
                bodies["digits"], "digit", seconds, rounds, tmp, procs)
        finally:
            for proc in procs:
                stop(proc)

    on, off = batching["on"], batching["off"]
    figures: dict[str, Any] = {
        "mode": "quick" if quick else "full", "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "archives": {k: {"archive": Path(v["archive"]).name, "sha256": v["sha256"],
                         "dependencies": [f"{d['name']}=={d['version']}" for d in v["dependencies"]]}
                     for k, v in builds.items()},
        "busy_before": max(busy, busy_http, busy_batching), "bentoml": "bentoml" in http,
        "cold_init": cold, "http": http, "batching": batching,
        **{f"cold_init_ratio[{name}]": c["ratio"] for name, c in cold.items()},
        **{f"cold_init_own_ms[{name}]": c["fnpack_own_ms"] for name, c in cold.items()},
        "http_rps_ratio": http["fnpack"][8]["rps"] / http["fastapi"][8]["rps"],
        "http_p50_ratio": http["fnpack"][1]["p50_ms"] / http["fastapi"][1]["p50_ms"],
        "p99_ratio[iris]": http["fnpack"][1]["p99_ms"] / http["starlette"][1]["p99_ms"],
        "p99_ratio[digits]": off[1]["p99_ms"] / batching["starlette"][1]["p99_ms"],
        **{f"batching_rps_ratio[{n}]": on[n]["rps"] / off[n]["rps"] for n in (32, 64)},
        "batching_one_rps_ratio": on[1]["rps"] / off[1]["rps"],
        "batching_p50_ratio": on[1]["p50_ms"] / off[1]["p50_ms"],
    }
    figures["errors"] = {f"{part}/{side}/{n}": r[n]["non_2xx"] + r[n]["socket_errors"]
                         for part in ("http", "batching") for side, r in figures[part].items()
                         for n in r["runs"] if r[n]["non_2xx"] + r[n]["socket_errors"]}
    figures["goals"] = [{"goal": g, "op": op, "limit": limit, "unit": unit, "value": figures[g],
                         "pass": figures[g] <= limit if op == "<=" else figures[g] >= limit}
                        for g, (limit, op, unit) in GOALS.items()]
    return figures


def baseline_command(tmp: Path, name: str, source: str) -> list[str]:
    (tmp / f"{name}_app.py").write_text(source)
    # The same server stack as fnpack's worker: uvicorn with uvloop and httptools, one process.
    return [sys.executable, "-m", "uvicorn", f"{name}_app:app", "--app-dir", str(tmp), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log"]


def bentoml_importable() -> bool:
    probe = [sys.executable, "-c", "import bentoml"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def bentoml_command(tmp: Path) -> list[str]:
    (tmp / "bento_app.py").write_text(BENTOML_APP)
    return [sys.executable, "-m", "bentoml", "serve", "bento_app:Bench", "--working-dir", str(tmp)]


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
    return f"{g['op']} {g['limit']:.2f}{g['unit']} {'PASS' if g['pass'] else 'FAIL'}"


def ratio_row(label: str, a: float, b: float, unit: str, goal: str = "", f: dict[str, Any] | None = None
              ) -> tuple[str, ...]:
    shown = (lambda v: f"{v:.0f}") if unit == "rps" else (lambda v: f"{v:.2f} ms")
    return (label, shown(a), shown(b), f"{a / b:.2f}x", verdict(f, goal) if goal and f else "")


def report(f: dict[str, Any]) -> str:
    cold, http, batching = f["cold_init"], f["http"], f["batching"]
    fn, seconds = http["fnpack"], http["fnpack"][8]["seconds"]
    lines = [(f"fnpack runtime benchmark ({f['mode']}): Python {f['python']}, {f['cpus']} CPUs; "
              "servers on core 0, wrk on core 1"),
             "archives: " + ", ".join(f"{k} {v['sha256'][:12]}" for k, v in f["archives"].items()),
             "lambda archives bundle " + " ".join(f["archives"]["iris/aws-lambda"]["dependencies"]),
             "",
             f"1. Lambda-style cold init: median of {cold['iris']['runs']} fresh `python -I -S`, spawn to exit",
             "   fnpack = import fnpack_handler + handler(Function URL event, POST /invoke) -> 200;",
             "   B0 = import numpy, onnxruntime + InferenceSession(model.onnx) + one run;",
             "   B1 = the function's own work by hand: its modules and model, features -> run -> score on the",
             "   event's record; B1 - B0 = the function's own imports and first call; fnpack's own share = fnpack - B1"]
    rows = [("example", "fnpack", "B0", "ratio", "goal", "B1 - B0", "fnpack - B1", "goal")]
    for name, c in cold.items():
        rows.append((name, f"{c['fnpack_median_s'] * 1000:.1f} ms", f"{c['bare_median_s'] * 1000:.1f} ms",
                     f"{c['ratio']:.2f}x", verdict(f, f"cold_init_ratio[{name}]"),
                     f"{c['function_imports_ms']:+.1f} ms",
                     f"{c['fnpack_own_ms']:+.1f} ms", verdict(f, f"cold_init_own_ms[{name}]")))
    lines += table(rows)
    for name, c in cold.items():
        lines += ["", f"   top self-time imports, one fnpack run with -X importtime ({name}; fnpack_handler's self",
                  "   time includes loading the model):"]
        lines += table([("module", "self", "cumulative")] +
                       [(i["module"], f"{i['self_ms']:.1f} ms", f"{i['cumulative_ms']:.1f} ms")
                        for i in c["top_imports"]])

    def spread(sides: dict[str, Any], n: int) -> str:
        return "; ".join(f"{side} " + ", ".join(f"{r['rps']:.0f}" for r in figures["runs"][n])
                         for side, figures in sides.items() if n in figures["runs"])

    rounds = fn[8]["rounds"]
    how = (f"   wrk 1 thread; per side {rounds} round(s) of {seconds} s per load (median shown), after a 2 s "
           "warm-up;\n   all servers up, driven in turn")
    peers = [p for p in ("fastapi", "starlette", "bentoml") if p in http]
    lines += ["", "2. Warm HTTP and tail latency, iris: POST /invoke with the first sample",
              "   fnpack worker (archive for target local) vs. FastAPI sync endpoint and Starlette `async` route",
              "   (the archive's packages and code) on uvicorn (uvloop, httptools)" +
              ("" if f["bentoml"] else "; BentoML: not importable here, skipped"), how]
    names = {"fastapi": "FastAPI", "starlette": "Starlette", "bentoml": "BentoML"}
    rows = [("", "fnpack", *(names[p] for p in peers), *(f"/ {names[p]}" for p in peers))]
    for label, n, key in (("requests/s, 8 connections", 8, "rps"), ("requests/s, 1 connection", 1, "rps"),
                          ("p50 latency, 1 connection", 1, "p50_ms"), ("p99 latency, 1 connection", 1, "p99_ms"),
                          ("p50 latency, 8 connections", 8, "p50_ms"), ("p99 latency, 8 connections", 8, "p99_ms")):
        shown = (lambda v: f"{v:.0f}") if key == "rps" else (lambda v: f"{v:.2f} ms")
        rows.append((label, shown(fn[n][key]), *(shown(http[p][n][key]) for p in peers),
                     *(f"{fn[n][key] / http[p][n][key]:.2f}x" for p in peers)))
    lines += table(rows)
    lines += table([("goal", "ratio", ""),
                    ("requests/s at 8 vs FastAPI", f"{f['http_rps_ratio']:.2f}x", verdict(f, "http_rps_ratio")),
                    ("p50 at 1 vs FastAPI", f"{f['http_p50_ratio']:.2f}x", verdict(f, "http_p50_ratio")),
                    ("p99 at 1 vs Starlette", f"{f['p99_ratio[iris]']:.2f}x", verdict(f, "p99_ratio[iris]"))])
    lines.append(f"   requests/s at 8 connections by round: {spread(http, 8)}")

    on, off, star = batching["on"], batching["off"], batching["starlette"]
    lines += ["", (f"3. Batching, digits: POST /invoke with the first sample; two fnpack workers, batching on "
                   f"({BATCHING['max_batch_size']}, {BATCHING['max_wait_ms']} ms) vs. off; the Starlette app "
                   "at 1 connection"), how]
    rows = [("", "batching on", "batching off", "ratio", "goal", "records per call")]
    for n in BATCH_LOADS:
        goal = {32: "batching_rps_ratio[32]", 64: "batching_rps_ratio[64]", 1: "batching_one_rps_ratio"}.get(n, "")
        mean = on[n]["mean_batch_size"]
        rows.append((*ratio_row(f"requests/s, {n} connections", on[n]["rps"], off[n]["rps"], "rps", goal, f),
                     f"{mean:.1f}" if mean else "-"))
    rows.append((*ratio_row("p50 latency, 1 connection", on[1]["p50_ms"], off[1]["p50_ms"], "ms",
                            "batching_p50_ratio", f), ""))
    rows.append((*ratio_row("p99 latency, 1 connection", on[1]["p99_ms"], off[1]["p99_ms"], "ms"), ""))
    lines += table(rows)
    lines += table([("tail latency, 1 connection", "fnpack (off)", "Starlette", "ratio", "goal"),
                    ratio_row("p50", off[1]["p50_ms"], star[1]["p50_ms"], "ms"),
                    ratio_row("p99", off[1]["p99_ms"], star[1]["p99_ms"], "ms", "p99_ratio[digits]", f),
                    ratio_row("p99, batching on", on[1]["p99_ms"], star[1]["p99_ms"], "ms")])
    lines.append(f"   requests/s at 32 connections by round: {spread(batching, 32)}")
    if f["errors"]:
        lines += ["", "   WARNING: non-2xx answers or socket errors: " +
                  ", ".join(f"{k} {v}" for k, v in f["errors"].items())]
    if f["busy_before"] > 0.1:
        lines += ["", (f"   WARNING: up to {f['busy_before']:.0%} of the CPUs were busy with other work just "
                       "before a part ran: the figures are unreliable")]
    lines += ["", "goals (each against its baseline measured in this run)"]
    lines += table([("goal", "limit", "measured", "")] +
                   [(g["goal"], f"{g['op']} {g['limit']:.2f}{g['unit']}", f"{g['value']:.3f}{g['unit']}",
                     "PASS" if g["pass"] else "FAIL") for g in f["goals"]])
    return "\n".join(lines)


def main() -> int:
    global DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7 cold runs and 3 s loads (under 3 minutes)")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: the HTTP parts need it")
    if subprocess.run([sys.executable, "-c", "import fastapi"], capture_output=True, check=False).returncode != 0:
        sys.exit(f"fastapi is not installed for {sys.executable}: the warm-HTTP baselines need it and the "
                 "starlette it brings (pip install fastapi)")
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop the servers and delete the temp folder.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    DEADLINE = Deadline(170 if args.quick else 840)
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
