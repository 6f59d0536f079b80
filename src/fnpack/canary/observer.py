"""The one interface a target's metrics are read through, as Flagger's `observers.Interface`: figures per
version of an alias for a window of time. Each target has its own observer (`Target.observer()`); the
analysis loop knows none of them.

Observers differ in what they can tell and when: the local gateway's counters are exact and current;
Prometheus lags by a scrape interval and extrapolates `increase()`; CloudWatch has one-minute resolution for
Lambda and shows a minute's figures a minute or more late. `delay` says how long after a request its figures
show, so that a window is read only once it is complete.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figures:
    """One version's traffic in a window: requests, 5xx answers and a latency quantile (seconds; None when
    there were no requests or the source has no latency). `statistic` names what `latency` is when it is not
    the quantile asked for (CloudWatch without percentiles: "max", an upper bound of it)."""

    requests: float = 0.0
    errors: float = 0.0
    latency: float | None = None
    statistic: str | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": round(self.requests, 3), "errors": round(self.errors, 3),
                "error_rate": round(self.error_rate, 6),
                "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
                **({"statistic": self.statistic} if self.statistic else {})}


@dataclass
class Window:
    """A window being observed: the alias's versions from `start` (epoch seconds) on. `baseline` is an
    observer's own record of where counters stood at the start (the local gateway's)."""

    function: str
    alias: str
    versions: tuple[int, ...]
    quantile: float
    start: float = field(default_factory=time.time)
    baseline: Any = None


class Observer(ABC):
    """Where a target's figures are read from."""

    name = "metrics"
    delay = 0.0  # seconds from a request to its figures showing
    min_interval = 0.0  # the shortest window its figures mean something for

    def open(self, function: str, alias: str, versions: Iterable[int], quantile: float) -> Window:
        """Start a window now."""
        return Window(function, alias, tuple(versions), quantile)

    @abstractmethod
    def read(self, window: Window) -> dict[int, Figures]:
        """Each of the window's versions' figures from its start until now (a version with no traffic:
        Figures())."""

    def close(self) -> None:
        """Release connections."""


def bucket_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """A quantile from cumulative histogram buckets [(upper bound, count)], interpolated linearly within the
    bucket it falls in, as PromQL's histogram_quantile does; None with no observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = quantile * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the open-ended bucket: the highest finite bound is all that is known
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower
