"""Canary analysis on the openfaas target through a real Prometheus server: the fake gateway (`fake_openfaas`)
runs each version and each alias's router as real processes and counts every /function/NAME call it proxies,
the routers' calls to NAME-vN included, as the real gateway does (gateway_function_invocation_total,
gateway_functions_seconds); Prometheus scrapes its /metrics every second; the observer's PromQL
(`openfaas_queries`) reads it back per version, and a rollout driven by it promotes a good version and rolls
back one that fails a fifth of its requests."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from canary import iris_traffic
from canary.iris_traffic import OTHER, ROWS, SETOSA, Traffic
from prometheus_server import PrometheusServer, Scrape
from targets import conftest as contract

from fnpack.canary.policy import build_policy
from fnpack.canary.rollout import CanaryFailed, Rollout
from fnpack.errors import UsageError
from fnpack.targets.base import Target
from fnpack.versions import AliasState

pytestmark = pytest.mark.timeout(300)
openfaas_harness = contract.openfaas_harness  # the contract suite's gateway (Pro), started for this module
OpenFaaSHarness = contract.OpenFaaSHarness

NAME = "scored"
NAMESPACE = "openfaas-fn"  # the gateway's, in its metrics' function_name


def build(root: Path, variant: int, failing: bool = False) -> Path:
    return iris_traffic.build(root, NAME, variant, "openfaas", failing)


class Faas:
    """The contract suite's gateway (Pro), Prometheus scraping its /metrics, and a Target on it."""

    def __init__(self, harness: OpenFaaSHarness, prometheus: PrometheusServer) -> None:
        self.harness, self.prometheus = harness, prometheus
        self.target: Target = harness.target()

    def call(self, function: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.harness.gateway}/function/{function}", json=body, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def faas(openfaas_harness: OpenFaaSHarness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faas]:
    """NAME deployed: v1 live, v2 (failing) and v3 not promoted; Prometheus scraping the gateway every second
    (its metrics are on the gateway's own port here: :8082 on a real one)."""
    root = tmp_path_factory.mktemp("openfaas-canary")
    archives = [build(root, 0), build(root, 1, failing=True), build(root, 2)]
    for archive, promote in zip(archives, (True, False, False)):
        openfaas_harness.ok("deploy", str(archive), *(() if promote else ("--no-promote",)))
    address = openfaas_harness.gateway.removeprefix("http://")
    with pytest.MonkeyPatch.context() as patch, \
            PrometheusServer(root / "prometheus", [Scrape("gateway", address)], interval="1s") as prometheus:
        patch.delenv("FNPACK_PROMETHEUS_URL", raising=False)
        yield Faas(openfaas_harness, prometheus)


def test_without_a_prometheus_url_canary_analysis_is_refused_and_says_how(faas: Faas,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError) as refused:
        faas.target.observer()
    assert "reads Prometheus" in refused.value.message and "--prometheus URL" in refused.value.hint
    assert "FNPACK_PROMETHEUS_URL" in refused.value.hint
    monkeypatch.setenv("FNPACK_PROMETHEUS_URL", faas.prometheus.url)
    observer = faas.target.observer()
    try:
        assert observer.name.startswith(f"Prometheus at {faas.prometheus.url} (") and observer.delay == 1.0
    finally:
        observer.close()


def test_the_observer_reads_each_versions_requests_errors_and_latency_as_sent(faas: Faas) -> None:
    # every series the window reads exists beforehand (increase() counts from a series' first sample on)
    for function, body in ((f"{NAME}-v1", OTHER), (f"{NAME}-v2", OTHER), (f"{NAME}-v2", SETOSA)):
        faas.call(function, body)
    assert faas.prometheus.wait_for(f'gateway_function_invocation_total{{function_name="{NAME}-v2.{NAMESPACE}",'
                                    'code="500"}')
    time.sleep(2.2)  # two more scrapes

    observer = faas.target.observer(faas.prometheus.url)
    try:
        window = observer.open(NAME, "live", (1, 2), 0.99)
        time.sleep(1.2)  # a scrape inside the window before the traffic
        assert all(faas.call(f"{NAME}-v1", ROWS[i % 5]).status_code == 200 for i in range(20))
        # and through the alias's router, which calls the version through the gateway: counted there too
        assert all(faas.call(NAME, ROWS[i % 5]).status_code == 200 for i in range(10))
        codes = Counter(faas.call(f"{NAME}-v2", ROWS[i % 5]).status_code for i in range(20))
        assert codes == {200: 16, 500: 4}
        time.sleep(observer.delay + 1.2)  # scraped
        figures = observer.read(window)
    finally:
        observer.close()
    first, second = figures[1], figures[2]
    # increase() extrapolates to the window's ends: at least what was sent, not much more
    assert 30 <= first.requests <= 30 * 1.4 and first.errors == 0, first
    assert 20 <= second.requests <= 20 * 1.4 and 4 <= second.errors <= 4 * 1.4, second
    # each series is extrapolated on its own (a counter no further back than to zero): the rate is about right
    assert 0.16 <= second.error_rate <= 0.25, second
    for each in (first, second):  # a few ms: in the first buckets of the seconds histogram
        assert each.latency is not None and 0 < each.latency <= 0.5, each


def test_a_version_that_fails_a_fifth_of_its_requests_is_rolled_back_by_the_gateways_metrics(faas: Faas) -> None:
    policy = build_policy(steps="20,100", interval="4s", min_requests=10)
    events: list[dict[str, Any]] = []
    before = faas.target.aliases(NAME)["live"]
    with Traffic(faas.harness.gateway, f"/function/{NAME}", "x-fnpack-version") as traffic:
        time.sleep(0.5)
        rollout = Rollout(faas.target, NAME, "live", 2, policy, faas.target.observer(faas.prometheus.url),
                          report=events.append)
        try:
            with pytest.raises(CanaryFailed) as failed:
                rollout.run()
        finally:
            rollout.observer.close()
        time.sleep(0.5)
    assert failed.value.exit_code == 14 and failed.value.outcome.outcome == "rolled-back", failed.value
    assert "errors" in failed.value.message and f"live is on v{before.primary} again" in failed.value.message
    assert faas.target.aliases(NAME)["live"] == AliasState(before.primary)
    window = next(e for e in events if e["event"] == "window")
    assert window["verdict"] == "fail" and window["canary"]["error_rate"] > policy.max_error_rate, window
    moves = faas.target.history(NAME, "live")
    assert moves[-1].reason.startswith("canary v2 rolled back at 20%: errors") and moves[-1].after == before
    assert moves[-2].reason.startswith("canary v2 20%: started")
    assert moves[-2].after == AliasState(before.primary, 2, 0.2)
    assert traffic.errors == [] and {v for (v, code) in traffic.answers if code != 200} == {"2"}, traffic.answers
    assert traffic.answers[(str(before.primary), 200)] > 0


def test_a_good_version_is_promoted_after_its_window_passes(faas: Faas) -> None:
    policy = build_policy(steps="20,100", interval="4s", min_requests=10)
    primary = faas.target.aliases(NAME)["live"].primary
    with Traffic(faas.harness.gateway, f"/function/{NAME}", "x-fnpack-version") as traffic:
        time.sleep(0.5)
        observer = faas.target.observer(faas.prometheus.url)
        try:
            outcome = Rollout(faas.target, NAME, "live", 3, policy, observer).run()
        finally:
            observer.close()
        time.sleep(0.5)
    assert outcome.outcome == "promoted" and outcome.primary == primary, outcome
    assert faas.target.aliases(NAME)["live"] == AliasState(3)
    [window] = outcome.steps
    assert window["verdict"] == "pass" and window["canary"]["requests"] >= 10 and window["canary"]["errors"] == 0
    assert window["canary"]["latency_ms"] is not None and window["primary"]["requests"] > window["canary"]["requests"]
    assert faas.target.history(NAME, "live")[-1].reason.startswith("canary v3 promoted: errors 0%")
    assert traffic.errors == [] and {code for (_, code) in traffic.answers} == {200}, traffic.answers
    assert {v for (v, _) in traffic.answers} == {str(primary), "3"}
    assert all(faas.call(NAME, OTHER).headers["x-fnpack-version"] == "3" for _ in range(5))
