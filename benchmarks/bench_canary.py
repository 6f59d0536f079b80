#!/usr/bin/env python3
"""Benchmark `fnpack canary` on the local platform against its floors, in one run.

A function with three versions (v1 the primary, v2 as good, v3 failing every fifth request: 20 %), all with
the same 5 ms of work, behind `fnpack serve`; an open-loop load of --rate requests/s (default 100) through
`live` for the whole run, each answer recorded with the version that gave it (X-Fnpack-Version). Each round:
  1. bad: `fnpack canary NAME 3 --steps 10,50,100 --interval 2s --min-requests 20`: the time from the first
     move (10 %) to the rollback, and the requests that reached v3 (and failed) meanwhile, beside the floor of
     weight x rate x window (0.1 x rate x 2 s; x 0.2 of them failing);
  2. good: the same with v2: the time from the first move to the promotion beside the sum of the intervals
     (2 windows x 2 s): the overhead per step (3 moves) has a goal of < 100 ms.
Times are the rollout's own (the CLI's JSON events); the CLI's whole wall time is shown beside. Medians of
--rounds. Progress goes to stderr, the result to stdout.

    python benchmarks/bench_canary.py [--rounds N] [--rate R] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

NAME = "canaried"
INTERVAL = 2.0
STEPS = "10,50,100"
GOALS = {"good_overhead_per_step_ms": (100.0, "<", " ms")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(root: Path, number: int, fail_every: int) -> Path:
    from canary.conftest import BEHAVIOUR
    from functions import echo_model
    import yaml

    folder = root / f"v{number}"
    folder.mkdir(parents=True)
    echo_model(folder / "model.onnx")
    (folder / "behave.py").write_text(BEHAVIOUR.format(sleep=0.005, fail_every=fail_every) + f"# {number}\n")
    (folder / "fnpack.yaml").write_text(yaml.safe_dump({"name": NAME, "model": "model.onnx",
                                                        "features": "behave:extract",
                                                        "samples": [{"data": {"x": [[1.0]]}}]}))
    done = subprocess.run([sys.executable, "-m", "fnpack", "build", str(folder), "--out", str(root / "dist"),
                           "--json"], capture_output=True, text=True, check=True)
    return Path(json.loads(done.stdout)["archive"])


class Load:
    """Open-loop requests through `live`: (time, status, version) of each answer."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.answers: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, 4), daemon=True) for i in range(4)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, index: int, of: int) -> None:
        step = of / self.rate
        due = time.monotonic() + index / self.rate
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                self._stop.wait(max(0.0, due - time.monotonic()))
                due += step
                try:
                    answer = client.post(f"/function/{NAME}", json={"x": [[1.0]]})
                    version = answer.headers.get("x-fnpack-version")
                    self.answers.append((time.time(), answer.status_code, int(version) if version else None))
                except httpx.HTTPError:
                    self.answers.append((time.time(), 0, None))

    def between(self, start: float, end: float, version: int) -> tuple[int, int]:
        """(answers from `version`, of them failed) in [start, end]."""
        hits = [a for a in self.answers if start <= a[0] <= end and a[2] == version]
        return len(hits), sum(1 for a in hits if a[1] >= 500)

    def achieved_rate(self, start: float, end: float) -> float:
        return sum(1 for a in self.answers if start <= a[0] <= end) / max(end - start, 1e-9)


def rollout(env: dict[str, str], version: int) -> tuple[list[dict[str, Any]], float, int]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fnpack", "canary", NAME, str(version), "--steps", STEPS,
                           "--interval", f"{INTERVAL:g}s", "--min-requests", "20", "--json"],
                          capture_output=True, text=True, env=env)
    wall = time.monotonic() - began
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()], wall, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from servers import platform

    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        root = Path(tmp)
        log("building three versions ...")
        archives = {1: build(root, 1, 0), 2: build(root, 2, 0), 3: build(root, 3, 5)}
        with platform(root / "state") as url:
            env = {**os.environ, "FNPACK_URL": url, "FNPACK_STATE_DIR": str(root / "state"), "FNPACK_TARGET": "local",
                   "FNPACK_CACHE_DIR": str(root / "cache"), "FNPACK_CONFIG": str(root / "config.yaml")}

            def cli(*words: str) -> None:
                subprocess.run([sys.executable, "-m", "fnpack", *words], env=env, check=True, capture_output=True)

            for number, archive in archives.items():
                cli("deploy", str(archive), *(() if number == 1 else ("--no-promote",)))
            rows: dict[str, list[float]] = {k: [] for k in ("bad_to_rollback_s", "bad_reached", "bad_failed",
                                                            "bad_floor_reached", "bad_floor_failed", "bad_wall_s",
                                                            "good_to_promotion_s", "good_floor_s",
                                                            "good_overhead_per_step_ms", "good_wall_s", "rate")}
            with Load(url, args.rate) as load:
                time.sleep(2)  # workers warm, traffic steady
                for round_ in range(args.rounds):
                    log(f"round {round_ + 1}/{args.rounds}: bad ...")
                    cli("alias", "set", NAME, "live", "1")
                    seen, wall, code = rollout(env, 3)
                    assert code == 14, seen
                    moves = [e for e in seen if e["event"] == "step"]
                    start, end = moves[0]["time"], moves[-1]["time"]
                    reached, failed = load.between(start, end + 0.5, 3)  # answers in flight at the rollback too
                    rate = load.achieved_rate(start, end)
                    rows["bad_to_rollback_s"].append(end - start)
                    rows["bad_reached"].append(reached)
                    rows["bad_failed"].append(failed)
                    rows["bad_floor_reached"].append(0.1 * rate * INTERVAL)
                    rows["bad_floor_failed"].append(0.1 * rate * INTERVAL * 0.2)
                    rows["bad_wall_s"].append(wall)
                    rows["rate"].append(rate)
                    log(f"round {round_ + 1}/{args.rounds}: good ...")
                    cli("alias", "set", NAME, "live", "1")
                    seen, wall, code = rollout(env, 2)
                    assert code == 0, seen
                    moves = [e for e in seen if e["event"] == "step"]
                    took = moves[-1]["time"] - moves[0]["time"]
                    floor = INTERVAL * (len(moves) - 1)
                    rows["good_to_promotion_s"].append(took)
                    rows["good_floor_s"].append(floor)
                    rows["good_overhead_per_step_ms"].append((took - floor) / (len(moves) - 1) * 1000)
                    rows["good_wall_s"].append(wall)
                    cli("alias", "set", NAME, "live", "1")
    result = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    result["goals"] = {k: {"limit": lim, "value": result[k], "pass": result[k] < lim if op == "<" else
                           result[k] == lim} for k, (lim, op, _) in GOALS.items()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"load: {result['rate']:.0f} requests/s through live; steps {STEPS}, interval {INTERVAL:g} s, "
          f"medians of {args.rounds} rounds")
    print("| measure | fnpack | floor | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| bad v3: first move to rollback | {result['bad_to_rollback_s']:.2f} s | {INTERVAL:.2f} s (one window) "
          f"| {result['bad_to_rollback_s'] / INTERVAL:.2f}x |")
    print(f"| bad v3: requests that reached it | {result['bad_reached']:.0f} | {result['bad_floor_reached']:.0f} "
          f"(0.1 x rate x window) | {result['bad_reached'] / max(result['bad_floor_reached'], 1):.2f}x |")
    print(f"| bad v3: failed requests | {result['bad_failed']:.0f} | {result['bad_floor_failed']:.0f} "
          f"(x 20 %) | {result['bad_failed'] / max(result['bad_floor_failed'], 1):.2f}x |")
    print(f"| good v2: first move to promotion | {result['good_to_promotion_s']:.2f} s | "
          f"{result['good_floor_s']:.2f} s (sum of intervals) | "
          f"{result['good_to_promotion_s'] / result['good_floor_s']:.2f}x |")
    print(f"| CLI wall time, bad / good | {result['bad_wall_s']:.2f} s / {result['good_wall_s']:.2f} s | | |")
    for key, goal in result["goals"].items():
        print(f"goal {key}: {goal['value']} < {goal['limit']}: {'PASS' if goal['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
