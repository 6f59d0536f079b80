"""Prometheus metrics in the text exposition format.

Hand-written rather than prometheus-client: this module is in every archive,
and the client's import (and its thread-safe registry) would be paid on every
cold start for the four series the runtime needs. The ASGI app runs on one
event loop thread, so plain dicts suffice.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, cumulative = [], 0
        for bound, count in zip((*self.buckets, "+Inf"), self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {cumulative}")
        return out


class Metrics:
    def __init__(self, function: str) -> None:
        self.function = function
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.model_load_seconds = 0.0

    def record(self, route: str, status: int, seconds: float, error: str | None = None) -> None:
        self.requests[(route, status)] += 1
        if error:
            self.errors[(route, error)] += 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def render(self) -> str:
        fn = f'function="{self.function}"'
        lines = ["# HELP fnpack_requests_total Requests answered, by route and status code.",
                 "# TYPE fnpack_requests_total counter"]
        lines += [f'fnpack_requests_total{{{fn},route="{r}",code="{c}"}} {n}'
                  for (r, c), n in sorted(self.requests.items())]
        lines += ["# HELP fnpack_errors_total Failed requests, by route and kind of error.",
                  "# TYPE fnpack_errors_total counter"]
        lines += [f'fnpack_errors_total{{{fn},route="{r}",error="{e}"}} {n}'
                  for (r, e), n in sorted(self.errors.items())]
        lines += ["# HELP fnpack_request_duration_seconds Time to answer a request.",
                  "# TYPE fnpack_request_duration_seconds histogram"]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("fnpack_request_duration_seconds", f'{fn},route="{route}"')
        lines += ["# HELP fnpack_batch_size Records per model call.", "# TYPE fnpack_batch_size histogram"]
        lines += self.batch_sizes.lines("fnpack_batch_size", fn)
        lines += ["# HELP fnpack_model_load_seconds Time to load the model and the function's code.",
                  "# TYPE fnpack_model_load_seconds gauge",
                  f"fnpack_model_load_seconds{{{fn}}} {self.model_load_seconds}"]
        return "\n".join(lines) + "\n"
