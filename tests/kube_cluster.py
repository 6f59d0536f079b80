"""A real Kubernetes API server for the tests (`../shared/k8s/cluster.py`: etcd + apiextensions-apiserver with
the Knative Serving CRDs, real TLS, an admin kubeconfig), started once per test session.

Tests that need it take the `kube_cluster` fixture; outside this repository's CI (no `../shared/k8s`, or no
`openssl`) they skip with the reason. `FNPACK_SHARED` points elsewhere when the checkout is not beside it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FNPACK_SHARED") or REPO.parent / "shared")
CLUSTER_SCRIPT = SHARED / "k8s" / "cluster.py"


@dataclass(frozen=True)
class KubeCluster:
    kubeconfig: Path
    server: str
    seconds: float  # how long the server took to start (the fixture's timing, as the issue asks)
    dir: Path

    def client(self) -> httpx.Client:
        """A plain httpx client with the admin kubeconfig's credentials: for tests to read and write what the
        server holds without going through fnpack's own client."""
        config = json.loads(self.kubeconfig.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        context = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        with tempfile.TemporaryDirectory() as private:
            cert, key = Path(private, "cert.pem"), Path(private, "key.pem")
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            context.load_cert_chain(cert, key)
        return httpx.Client(base_url=cluster["server"], verify=context, timeout=30, trust_env=False)


def cluster_missing() -> str | None:
    """Why the real API server cannot start here; None when it can."""
    if not CLUSTER_SCRIPT.is_file():
        return f"no Kubernetes API server for tests: {CLUSTER_SCRIPT} is absent (set FNPACK_SHARED)"
    if shutil.which("openssl") is None:
        return "no Kubernetes API server for tests: `openssl` is not installed"
    return None


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    reason = cluster_missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("kube")
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "start", str(work)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        pytest.fail(f"the test API server did not start: {done.stdout}{done.stderr}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        yield KubeCluster(Path(info["kubeconfig"]), info["server"], time.monotonic() - started, work)
    finally:
        subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "stop", str(work)], capture_output=True, timeout=60)
