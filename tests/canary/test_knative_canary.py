"""Canary analysis on the knative target through a real Prometheus server: the test controller (`fake_knative`)
runs each revision as a real worker process behind its ingress and counts what it routes as Knative's
queue-proxy does (revision_app_request_count, revision_app_request_latencies in ms); Prometheus scrapes that
every second; the observer's PromQL (`knative_queries`) reads it back per revision, and a rollout driven by it
promotes a good revision and rolls back one that fails a fifth of its requests."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import CliResult, fnpack
from canary import iris_traffic
from canary.iris_traffic import OTHER, ROWS, SETOSA, Traffic
from prometheus_server import PrometheusServer, Scrape

from fnpack.canary.policy import build_policy
from fnpack.canary.rollout import CanaryFailed, Rollout
from fnpack.errors import UsageError
from fnpack.targets import get_target
from fnpack.targets.base import Target
from fnpack.versions import AliasState

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "canary"  # the controller here runs pods in this namespace alone
BUCKET = "canary-models"
NAME = "scored"


@dataclass
class Knative:
    controller: Any
    prometheus: PrometheusServer
    env: dict[str, str]
    target: Target

    def cli(self, *args: str) -> CliResult:
        return fnpack(*args, "--target", "knative", env=self.env)

    def call(self, host: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.controller.ingress_url}/", json=body, timeout=60, trust_env=False,
                          headers={"Host": f"{host}.{NAMESPACE}.example.com"})


def build(root: Path, variant: int, failing: bool = False) -> Path:
    return iris_traffic.build(root, NAME, variant, "knative", failing)


@pytest.fixture(scope="module")
def knative(kube_cluster: Any, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knative]:
    """The controller running pods in NAMESPACE, moto's S3 as model storage, Prometheus scraping the
    queue-proxies' metrics every second, and NAME deployed: v1 live, v2 (failing) and v3 not promoted."""
    import boto3

    from fake_knative import FakeKnative

    root = tmp_path_factory.mktemp("knative-canary")
    aws = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(root / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials")}
    env = {**aws, "FNPACK_KUBECONFIG": str(kube_cluster.kubeconfig), "FNPACK_KNATIVE_NAMESPACE": NAMESPACE,
           "FNPACK_KNATIVE_STORAGE": f"s3://{BUCKET}/fnpack", "FNPACK_KNATIVE_STORAGE_SECRET": "storage",
           "KUBECONFIG": "", "FNPACK_KUBE_CONTEXT": "", "FNPACK_TARGET": "", "FNPACK_CONTEXT": "",
           "FNPACK_PROMETHEUS_URL": ""}
    secrets = {f"{NAMESPACE}/storage": {k: aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    archives = [build(root, 0), build(root, 1, failing=True), build(root, 2)]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with FakeKnative(kube_cluster.kubeconfig, run_pods=True, secrets=secrets, workdir=root / "controller",
                         namespaces=[NAMESPACE]) as controller, \
                PrometheusServer(root / "prometheus", [Scrape("queue-proxy", controller.metrics_url[len("http://"):])],
                                 interval="1s") as prometheus:
            target = get_target("knative", kubeconfig=str(kube_cluster.kubeconfig), namespace=NAMESPACE)
            knative = Knative(controller, prometheus, env, target)
            for archive, promote in zip(archives, (True, False, False)):
                done = knative.cli("deploy", str(archive), "--json", *(() if promote else ("--no-promote",)))
                assert done.code == 0, done.stdout + done.stderr
            controller.wait_idle(30)
            try:
                yield knative
            finally:
                target.close()
            assert controller.violations == []  # nothing fnpack sent is what Knative's webhook would refuse


def users(knative: Knative) -> Traffic:
    """Callers of the function's `live` through the test ingress (Host routing, as Knative's)."""
    return Traffic(knative.controller.ingress_url, "/", "knative-revision", {"Host": f"{NAME}.{NAMESPACE}.example.com"})


def test_without_a_prometheus_url_canary_analysis_is_refused_and_says_how(knative: Knative,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError) as refused:
        knative.target.observer()
    assert "reads Prometheus" in refused.value.message and "--prometheus URL" in refused.value.hint
    assert "FNPACK_PROMETHEUS_URL" in refused.value.hint
    monkeypatch.setenv("FNPACK_PROMETHEUS_URL", knative.prometheus.url)
    observer = knative.target.observer()
    try:
        assert observer.name.startswith(f"Prometheus at {knative.prometheus.url} (") and observer.delay == 1.0
    finally:
        observer.close()


def test_the_observer_reads_each_revisions_requests_errors_and_latency_as_sent(knative: Knative) -> None:
    # every series the window reads exists beforehand (increase() counts from a series' first sample on)
    for host, body in (("v1-scored", OTHER), ("v2-scored", OTHER), ("v2-scored", SETOSA)):
        knative.call(host, body)
    assert knative.prometheus.wait_for(f'revision_app_request_count{{namespace_name="{NAMESPACE}",'
                                       f'revision_name="{NAME}-v2",response_code="500"}}')
    time.sleep(2.2)  # two more scrapes
    page = httpx.get(f"{knative.controller.metrics_url}/metrics", trust_env=False).text  # as the queue-proxy writes it
    assert "# TYPE revision_app_request_count counter" in page and "_total" not in page
    assert re.search(r'^revision_app_request_count\{configuration_name="scored",container_name="queue-proxy",'
                     r'namespace_name="canary",pod_name="scored-v2-deployment-\d+",response_code="500",'
                     r'response_code_class="5xx",revision_name="scored-v2",service_name="scored"\} \d+$', page, re.M)
    assert re.search(r'^revision_app_request_latencies_bucket\{.*revision_name="scored-v1".*le="100000"\} \d+$', page,
                     re.M)

    observer = knative.target.observer(knative.prometheus.url)
    try:
        window = observer.open(NAME, "live", (1, 2), 0.99)
        time.sleep(1.2)  # a scrape inside the window before the traffic
        assert all(knative.call("v1-scored", ROWS[i % 5]).status_code == 200 for i in range(30))
        codes = Counter(knative.call("v2-scored", ROWS[i % 5]).status_code for i in range(20))
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
    for each in (first, second):  # milliseconds read as seconds: a few ms, in the first buckets
        assert each.latency is not None and 0 < each.latency <= 0.2, each


def test_a_revision_that_fails_a_fifth_of_its_requests_is_rolled_back_by_its_own_metrics(knative: Knative) -> None:
    policy = build_policy(steps="20,100", interval="4s", min_requests=10)
    events: list[dict[str, Any]] = []
    before = knative.target.aliases(NAME)["live"]
    with users(knative) as traffic:
        time.sleep(0.5)
        rollout = Rollout(knative.target, NAME, "live", 2, policy, knative.target.observer(knative.prometheus.url),
                          report=events.append)
        try:
            with pytest.raises(CanaryFailed) as failed:
                rollout.run()
        finally:
            rollout.observer.close()
        knative.controller.wait_idle(30)
        time.sleep(0.5)
    assert failed.value.exit_code == 14 and failed.value.outcome.outcome == "rolled-back", failed.value
    assert "errors" in failed.value.message and f"live is on v{before.primary} again" in failed.value.message
    assert knative.target.aliases(NAME)["live"] == AliasState(before.primary)
    window = next(e for e in events if e["event"] == "window")
    assert window["verdict"] == "fail" and window["canary"]["error_rate"] > policy.max_error_rate, window
    moves = knative.target.history(NAME, "live")
    assert moves[-1].reason.startswith("canary v2 rolled back at 20%: errors") and moves[-1].after == before
    assert moves[-2].reason.startswith("canary v2 20%: started")
    assert moves[-2].after == AliasState(before.primary, 2, 0.2)
    assert traffic.errors == [] and {r for (r, code) in traffic.answers if code != 200} == {f"{NAME}-v2"}
    assert traffic.answers[(f"{NAME}-v1", 200)] > 0


def test_a_good_revision_is_promoted_after_its_window_passes(knative: Knative) -> None:
    policy = build_policy(steps="20,100", interval="4s", min_requests=10)
    primary = knative.target.aliases(NAME)["live"].primary
    with users(knative) as traffic:
        time.sleep(0.5)
        observer = knative.target.observer(knative.prometheus.url)
        try:
            outcome = Rollout(knative.target, NAME, "live", 3, policy, observer).run()
        finally:
            observer.close()
        knative.controller.wait_idle(30)
        time.sleep(0.5)
    assert outcome.outcome == "promoted" and outcome.primary == primary, outcome
    assert knative.target.aliases(NAME)["live"] == AliasState(3)
    [window] = outcome.steps
    assert window["verdict"] == "pass" and window["canary"]["requests"] >= 10 and window["canary"]["errors"] == 0
    assert window["canary"]["latency_ms"] is not None and window["primary"]["requests"] > window["canary"]["requests"]
    assert knative.target.history(NAME, "live")[-1].reason.startswith("canary v3 promoted: errors 0%")
    assert traffic.errors == [] and {code for (_, code) in traffic.answers} == {200}, traffic.answers
    assert {r for (r, _) in traffic.answers} == {f"{NAME}-v{primary}", f"{NAME}-v3"}
    assert all(knative.call(NAME, OTHER).headers["knative-revision"] == f"{NAME}-v3" for _ in range(5))
