"""The local platform's canary observer: the gateway's own `/metrics` (requests, 5xx answers and the latency
histogram per function, version and alias), read at a window's start and again at each read; the figures
are the difference. Exact and current (no scrape delay); latency quantiles are interpolated within the
histogram's buckets, as Prometheus's histogram_quantile does."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fnpack.canary.observer import Figures, Observer, Window, bucket_quantile
from fnpack.targets.local.api import PlatformApi

# version -> (requests, errors, {le: cumulative count})
Counts = dict[int, tuple[float, float, dict[float, float]]]


class GatewayObserver(Observer):
    name = "the local gateway's /metrics"
    poll = 0.5

    def __init__(self, api: PlatformApi) -> None:
        self.api = api

    def open(self, function: str, alias: str, versions: Any, quantile: float) -> Window:
        window = super().open(function, alias, versions, quantile)
        window.baseline = self._counts(function, alias)
        return window

    def read(self, window: Window) -> dict[int, Figures]:
        now, then = self._counts(window.function, window.alias), window.baseline or {}
        figures = {}
        for version in window.versions:
            requests, errors, buckets = now.get(version, (0.0, 0.0, {}))
            before = then.get(version, (0.0, 0.0, {}))
            delta = [(le, count - before[2].get(le, 0.0)) for le, count in buckets.items()]
            figures[version] = Figures(requests - before[0], errors - before[1],
                                       bucket_quantile(window.quantile, delta))
        return figures

    def _counts(self, function: str, alias: str) -> Counts:
        text = self.api.request("GET", "/metrics", control=False).text
        requests: dict[int, float] = defaultdict(float)
        errors: dict[int, float] = defaultdict(float)
        buckets: dict[int, dict[float, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            if family.name not in ("fnpack_requests", "fnpack_request_duration_seconds"):
                continue
            for sample in family.samples:
                labels = sample.labels
                if labels.get("function") != function or labels.get("alias") != alias:
                    continue
                version = int(labels["version"])
                if sample.name == "fnpack_requests_total":
                    requests[version] += sample.value
                    if labels.get("code", "").startswith("5"):
                        errors[version] += sample.value
                elif sample.name == "fnpack_request_duration_seconds_bucket":
                    le = float(labels["le"])
                    buckets[version][le] = buckets[version].get(le, 0.0) + sample.value
        return {v: (requests[v], errors[v], buckets[v]) for v in set(requests) | set(buckets)}
