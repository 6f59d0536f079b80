"""Synthetic traffic for a rollout (`--load samples`): the spec's samples sent through the alias, at a rate
that gives the canary, at the current step's weight, twice `min_requests` per window (or a fixed rate).
The answers are not what is judged: the target's own metrics are, as for real traffic."""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

from fnpack.errors import UsageError
from fnpack.versions import Qualifier

MAX_RATE = 200.0  # requests per second, whatever the arithmetic says
MIN_RATE = 2.0


class SampleLoad:
    def __init__(self, target: Any, qualifier: Qualifier, samples: list[Any], min_requests: int, interval: float,
                 rate: float | None = None, workers: int = 4) -> None:
        if rate is not None and not (math.isfinite(rate) and rate > 0):  # 0 kills the workers (1 / 0); a
            # negative, nan or inf one undoes the pacing: every worker sends as fast as it can
            raise UsageError(f"--load-rate {rate:g} is not a number of requests per second",
                             hint="e.g. --load-rate 20, or leave it out: enough for --min-requests at each step")
        self.target, self.qualifier, self.samples = target, qualifier, samples
        self.min_requests, self.interval, self.fixed = min_requests, interval, rate
        self.weight = 0.05
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"fnpack-load-{i}", daemon=True)
                         for i in range(workers)]
        self._next = time.monotonic()
        self._turn = threading.Lock()
        self._pick = random.Random(len(samples))  # not in turn: a router's exact shares would give a canary
        # at 1/N of the traffic the same one of N samples every time

    @property
    def rate(self) -> float:
        if self.fixed is not None:
            return self.fixed
        wanted = 2 * self.min_requests / (max(self.weight, 0.01) * self.interval)
        return max(MIN_RATE, min(MAX_RATE, wanted))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._turn:  # one schedule for all workers: requests are paced, not bunched
                self._next = max(self._next + 1.0 / self.rate, time.monotonic() - 1.0)
                due, payload = self._next, self._pick.choice(self.samples)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.target.invoke(self.qualifier, payload)
            except Exception:  # noqa: BLE001 - the function's errors are in its metrics; the load goes on
                pass
