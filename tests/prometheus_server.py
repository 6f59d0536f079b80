"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping what a test names, for the
canary observers' PromQL. Tests skip, with the reason, where the binary is not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import yaml

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"


def need_prometheus() -> None:
    if not Path(BINARY).is_file():
        pytest.skip("no prometheus binary (apt-get install prometheus; .ci/run installs it)")


@dataclass(frozen=True)
class Scrape:
    job: str
    address: str  # host:port
    path: str = "/metrics"
    token: str | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    def __init__(self, workdir: Path, scrapes: list[Scrape], interval: str = "1s") -> None:
        need_prometheus()
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = []
        for scrape in scrapes:
            job = {"job_name": scrape.job, "metrics_path": scrape.path, "scrape_interval": interval,
                   "static_configs": [{"targets": [scrape.address]}]}
            if scrape.token:
                job["authorization"] = {"type": "Bearer", "credentials": scrape.token}
            jobs.append(job)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({"global": {"scrape_interval": interval, "evaluation_interval": interval},
                                               "scrape_configs": jobs}))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [BINARY, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.workdir / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus never got ready: " + (self.workdir / "prometheus.log").read_text()[-2000:])

    def __exit__(self, *exc: object | TracebackType) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def wait_for(self, query: str, timeout: float = 20.0) -> list[dict]:
        """The first non-empty result of an instant query (the first scrapes take a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            result = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.2)
