"""A canary observer over a Prometheus server's HTTP API (`/api/v1/query`), with the metric names and labels
of the target whose metrics it scrapes (`Queries`): Knative's queue-proxy per revision, OpenFaaS's gateway per
function, or the local gateway's own. Figures are PromQL's `increase()` over the window, evaluated now, and
`histogram_quantile()` over the buckets' increase, so they lag by up to a scrape interval (read from the
server's configuration: that is the observer's `delay`) and are extrapolated, not exact counts; a window needs
at least two scrapes in it."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from fnpack.canary.observer import Figures, Observer, Window
from fnpack.errors import FnpackError, StartError, UsageError


def _grown(metric: str, match: str, span: str) -> str:
    """How much a counter grew in the last `span`, series born within it included: increase() alone counts
    nothing for a series whose first sample is in the range (a canary's, a first 5xx's), so those count
    from zero, as a counter starts."""
    series = f"{metric}{{{match}}}"
    return f"((increase({series}[{span}]) and {series} offset {span}) or ({series} unless {series} offset {span}))"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass(frozen=True)
class Queries:
    """Where a target's request counts and latencies are in Prometheus. `selector(function, alias, version)`
    gives the label matchers of one version's series; `unit`: seconds per unit of the latency buckets."""

    requests: str  # a counter of answered requests
    errors: str  # matchers that keep the 5xx ones
    buckets: str  # the latency histogram's _bucket series
    selector: Callable[[str, str, int], str]
    unit: float = 1.0


def local_queries() -> Queries:
    return Queries("fnpack_requests_total", 'code=~"5.."', "fnpack_request_duration_seconds_bucket",
                   lambda f, a, v: f"function={_quoted(f)},alias={_quoted(a)},version={_quoted(str(v))}")


def knative_queries(namespace: str) -> Queries:
    """Knative Serving's queue-proxy: revision_app_request_count and revision_app_request_latencies (ms)."""
    return Queries("revision_app_request_count", 'response_code_class="5xx"', "revision_app_request_latencies_bucket",
                   lambda f, a, v: (f"namespace_name={_quoted(namespace)},configuration_name={_quoted(f)},"
                                    f"revision_name={_quoted(f'{f}-v{v}')}"), unit=0.001)


def openfaas_queries(namespace: str) -> Queries:
    """OpenFaaS's gateway: gateway_function_invocation_total and gateway_functions_seconds, by function_name
    (NAME-vN.NAMESPACE: each fnpack version is an OpenFaaS function)."""
    return Queries("gateway_function_invocation_total", 'code=~"5.."', "gateway_functions_seconds_bucket",
                   lambda f, a, v: f"function_name={_quoted(f'{f}-v{v}.{namespace}')}")


def server_url(given: str | None, target: str, scraped: str, metric: str) -> str:
    """The Prometheus server a target's canary analysis reads: --prometheus, else FNPACK_PROMETHEUS_URL."""
    url = given or os.environ.get("FNPACK_PROMETHEUS_URL")
    if not url:
        raise UsageError(f"canary analysis on the {target} target reads Prometheus ({scraped}): no Prometheus "
                         "server was named", hint=f"pass --prometheus URL or set FNPACK_PROMETHEUS_URL, the server "
                                              f"that scrapes them ({metric})")
    return url


class PrometheusObserver(Observer):
    poll = 1.0
    timeout = 15.0  # seconds for a whole answer: a server trickling one byte at a time never times out a read
    max_body = 16 << 20  # bytes: an instant query of one sum is a few hundred

    def __init__(self, url: str, queries: Queries, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.name = f"Prometheus at {self.url} ({queries.requests})"
        self.queries = queries
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)),
                                 transport=transport)
        self.delay = self._scrape_interval()
        self.min_interval = 2 * self.delay  # increase() needs two samples in a window

    def close(self) -> None:
        self.http.close()

    def read(self, window: Window) -> dict[int, Figures]:
        now = time.time()
        span = f"{max(1, math.ceil(now - window.start))}s"
        q = self.queries
        figures = {}
        for version in window.versions:
            match = q.selector(window.function, window.alias, version)
            requests = self._scalar(f"sum({_grown(q.requests, match, span)})", now)
            errors = self._scalar(f"sum({_grown(q.requests, f'{match},{q.errors}', span)})", now)
            latency = self._scalar(f"histogram_quantile({window.quantile}, sum by (le) "
                                   f"({_grown(q.buckets, match, span)}))", now)
            figures[version] = Figures(requests or 0.0, errors or 0.0,
                                       None if latency is None else latency * q.unit)
        return figures

    def _scalar(self, query: str, at: float) -> float | None:
        data = self._get("/api/v1/query", {"query": query, "time": f"{at:.3f}"})
        result = data.get("result") if isinstance(data, dict) else [data]
        if result is not None and not isinstance(result, list):
            result = [result]  # not a vector: unreadable below
        if not result:
            return None
        try:
            value = float(result[0]["value"][1])
        except (TypeError, KeyError, IndexError, ValueError):
            raise FnpackError(f"Prometheus at {self.url} answered a query with what is no vector: "
                              f"{str(result)[:200]}", hint="is it a Prometheus server (2.x or later)?") from None
        return None if math.isnan(value) or math.isinf(value) else value

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        deadline = time.monotonic() + self.timeout
        hint = "pass --prometheus URL (FNPACK_PROMETHEUS_URL) of the server that scrapes the functions' metrics"
        try:
            with self.http.stream("GET", path, params=params) as response:
                content = bytearray()
                for chunk in response.iter_bytes():
                    content += chunk
                    if len(content) > self.max_body:
                        raise FnpackError(f"Prometheus at {self.url} answered {path} with more than "
                                          f"{self.max_body >> 20} MB: no answer of it is that large",
                                          hint="is it a Prometheus server (2.x or later)?")
                    if time.monotonic() > deadline:
                        raise StartError(f"Prometheus at {self.url} did not finish its answer to {path} in "
                                         f"{self.timeout:g} s", hint=hint)
        except httpx.HTTPError as exc:
            raise StartError(f"no Prometheus answers at {self.url}: {type(exc).__name__} {exc}", hint=hint) from None
        text = content.decode("utf-8", errors="replace")
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        if response.status_code >= 400 or body.get("status") != "success" or "data" not in body:
            raise FnpackError(f"Prometheus at {self.url} refused {path}: {str(body.get('error') or text[:200])}",
                              hint="is it a Prometheus server (2.x or later)?")
        return body["data"]

    def _scrape_interval(self) -> float:
        """The server's global scrape interval: how stale its newest figures may be."""
        import yaml

        from fnpack.canary.policy import parse_duration

        try:
            config = yaml.safe_load(self._get("/api/v1/status/config").get("yaml", ""))
        except StartError:
            raise  # nothing answers: say so now, not at the first window
        except (FnpackError, yaml.YAMLError, AttributeError, TypeError):  # Thanos, Mimir, ...: none to read
            config = None
        settings = config.get("global") if isinstance(config, dict) else None
        settings = settings if isinstance(settings, dict) else {}
        try:
            return parse_duration(str(settings.get("scrape_interval", "15s")), "scrape_interval")
        except FnpackError:  # e.g. 1m30s: the default is as good a guess
            return 15.0
