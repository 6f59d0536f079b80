"""The Prometheus observer against real PromQL: a real Prometheus server (Debian's package) scraping the local
platform's gateway every second, read through `fnpack.canary.prometheus` with the local gateway's queries
(the Knative and OpenFaaS queries are tested the same way against their fakes)."""

from __future__ import annotations

import time

import httpx

from canary.conftest import FAST, NAME
from prometheus_server import PrometheusServer, Scrape


def test_prometheus_figures_follow_the_traffic_and_a_bad_canary_is_rolled_back(local, tmp_path):
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    address = local.url.removeprefix("http://")
    with PrometheusServer(tmp_path / "prometheus", [Scrape("fnpack", address)]) as prometheus:
        local.ok("alias", "set", NAME, "live", "1", "--canary", "3", "--weight", "0.5")
        with httpx.Client(base_url=local.url) as client:
            def send(count: int) -> None:
                for _ in range(count):
                    client.post(f"/function/{NAME}", json={"x": [[1.0]]})
                    time.sleep(0.02)

            send(10)  # both versions' series exist before the window: increase() needs a first sample
            assert prometheus.wait_for(f'fnpack_requests_total{{function="{NAME}",version="3",alias="live"}}')
            time.sleep(2.5)
            observer = PrometheusObserver(prometheus.url, local_queries())
            assert observer.delay == 1.0  # the server's own scrape interval
            window = observer.open(NAME, "live", (1, 3), 0.99)
            send(100)
            time.sleep(2.5)  # two more scrapes
            figures = observer.read(window)
            observer.close()
        # increase() extrapolates to the window's edges: close to the 50 each, not exact
        assert 35 <= figures[1].requests <= 70 and figures[1].errors == 0, figures
        assert 35 <= figures[3].requests <= 70 and 0.1 <= figures[3].error_rate <= 0.3, figures
        assert 0.02 <= figures[1].latency <= 0.05, figures  # p99 of 20 ms sleeps, in the (25 ms, 50 ms] bucket

        local.reset()
        done = local("canary", NAME, "3", *FAST[:3], "3s", *FAST[4:], "--prometheus", prometheus.url,
                     "--spec", str(local.folders[3]))
        assert done.code == 14, done.stdout + done.stderr
        assert "figures from Prometheus at" in done.stdout and "rolled back at 25%: errors" in done.stderr
        assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}

        done = local("canary", NAME, "2", "--steps", "50", "--interval", "3s", "--min-requests", "20", "--load",
                     "samples", "--load-rate", "40", "--prometheus", prometheus.url, "--spec", str(local.folders[2]))
        assert done.code == 0, done.stdout + done.stderr
        assert local.alias() == {"primary": 2, "canary": None, "weight": 0.0}

        local.reset()  # a window shorter than two scrapes would read nothing: refused before any move
        done = local("canary", NAME, "2", "--interval", "1s", "--prometheus", prometheus.url)
        assert done.code == 2 and "too short for Prometheus at" in done.stderr and "--interval 2s" in done.stderr
        assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


def test_no_prometheus_at_the_url_is_a_clear_error(local):
    done = local("canary", NAME, "2", "--prometheus", "http://127.0.0.1:9", "--interval", "1s")
    assert done.code == 11 and "no Prometheus answers at http://127.0.0.1:9" in done.stderr, done.stderr
