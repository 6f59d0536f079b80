"""The gateway's Prometheus metrics (prometheus-client: the gateway is a long-lived process, so its
import time does not matter, unlike the runtime inside archives, whose metrics are hand-written)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LABELS = ("function", "version", "alias")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fnpack_requests", "Invocations answered, by status code.",
                                (*LABELS, "code"), registry=self.registry)
        self.errors = Counter("fnpack_request_errors", "Invocations answered with a 5xx status.",
                              LABELS, registry=self.registry)
        self.latency = Histogram("fnpack_request_duration_seconds", "Time from request to answer at the gateway.",
                                 LABELS, registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.cold_starts = Counter("fnpack_cold_starts", "Workers started while requests waited for one.",
                                   ("function", "version"), registry=self.registry)
        self.worker_starts = Counter("fnpack_worker_starts", "Workers started, by reason.",
                                     ("function", "version", "reason"), registry=self.registry)
        self.start_seconds = Histogram("fnpack_worker_start_seconds", "Time to start a worker (fork to ready).",
                                       ("function", "version"), registry=self.registry,
                                       buckets=(.025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.workers = Gauge("fnpack_workers", "Running workers.", ("function", "version"), registry=self.registry)
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}

    def observe(self, function: str, version: str, alias: str, status: int, seconds: float) -> None:
        # labels() takes a lock and hashes its arguments: keep the children per label set instead,
        # since this runs on every request.
        key = (function, version, alias, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(function, version, alias, str(status)),
                self.errors.labels(function, version, alias) if status >= 500 else None,
                self.latency.labels(function, version, alias))
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def forget(self, function: str) -> None:
        """Drop a deleted function's cached children (its series stay until the restart)."""
        self._children = {k: v for k, v in self._children.items() if k[0] != function}

    def render(self) -> bytes:
        return generate_latest(self.registry)
