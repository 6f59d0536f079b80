#!/usr/bin/env python3
"""Benchmark the knative target's control plane against the floor of the same API calls made by hand.

In one run, against a real Kubernetes API server (../shared/k8s: etcd + apiextensions-apiserver with Knative's
CRDs), the test controller (tests/fake_knative.py, standing in for Knative's controllers: no pods) and
moto_server's S3 as model storage, on examples/iris, medians of rounds, each beside its baseline:
  1. deploy, archive already in storage: `KnativeTarget.deploy` (plan, publish, wait for the revision, move
     live) until the Service's status routes live to the new revision, vs. the floor: the same Service applied
     by a bare httpx client, then polled for the same status. fnpack's own part = fnpack - floor (goal < 0.5 s).
  2. deploy with the upload: the same after removing the archive from storage, vs. the floor plus a bare
     boto3 upload_file of the same archive (the transfer). fnpack's own part = fnpack - floor - transfer
     (goal < 1 s).
  3. alias move: `set_alias` to a 10 % canary until the Service's status shows it, vs. a bare apply of the
     same traffic polled the same way.
  4. redeploying the unchanged archive: bytes uploaded (goal 0) and its time.
Also the API server's start (the test fixture's cost). Needs openssl, moto_server and fnpack in the
interpreter's environment. Progress goes to stderr, the result to stdout.

    python benchmarks/bench_knative.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FNPACK_SHARED") or REPO.parent / "shared")
sys.path.insert(0, str(REPO / "tests"))  # the test controller and the API server's client

NAMESPACE = "bench"
BUCKET = "bench-models"
# name -> (limit, comparison, unit)
GOALS: dict[str, tuple[float, str, str]] = {
    "deploy_in_storage_own_s": (0.5, "<", " s"),
    "deploy_with_upload_own_s": (1.0, "<", " s"),
    "unchanged_redeploy_bytes": (0, "==", " B"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def poll(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the status never showed the change")
        time.sleep(0.002)


def bench(rounds: int, root: Path) -> dict[str, Any]:
    import boto3

    from fake_knative import FakeKnative
    from kube_cluster import KubeCluster

    from fnpack.targets.knative.settings import KnativeSettings
    from fnpack.targets.knative.target import KnativeTarget
    from fnpack.versions import AliasState

    figures: dict[str, Any] = {"rounds": rounds}
    log("building examples/iris, twice (the second differs by a comment)")
    archives = []
    for variant in (0, 1):
        folder = root / f"iris-{variant}" / "iris"
        shutil.copytree(REPO / "examples" / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        (folder / "features.py").write_text((folder / "features.py").read_text() + f"\n# variant {variant}\n")
        built = subprocess.run([sys.executable, "-m", "fnpack", "build", str(folder), "--json"],
                               capture_output=True, text=True, check=True)
        archives.append(Path(json.loads(built.stdout)["archive"]))
    figures["archive_bytes"] = archives[0].stat().st_size

    log("starting the API server and moto_server")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(SHARED / "k8s" / "cluster.py"), "start", str(root / "kube")],
                          capture_output=True, text=True, check=True)
    figures["api_server_start_s"] = time.perf_counter() - started
    info = json.loads(done.stdout.strip().splitlines()[-1])
    cluster = KubeCluster(Path(info["kubeconfig"]), info["server"], figures["api_server_start_s"], root / "kube")
    port = free_port()
    moto_exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    moto = subprocess.Popen([moto_exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        poll(lambda: _answers(f"http://127.0.0.1:{port}/moto-api/"), 30)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        settings = KnativeSettings(kubeconfig=cluster.kubeconfig, namespace=NAMESPACE, storage=f"s3://{BUCKET}/b")
        with FakeKnative(cluster.kubeconfig, workdir=root / "controller", namespaces=[NAMESPACE]), \
                cluster.client() as http, KnativeTarget(settings) as target:
            figures.update(_measure(rounds, archives, target, http, s3, AliasState))
    finally:
        moto.terminate()
        moto.wait(10)
        subprocess.run([sys.executable, str(SHARED / "k8s" / "cluster.py"), "stop", str(root / "kube")],
                       capture_output=True, check=False)
    return figures


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1, trust_env=False)
        return True
    except httpx.HTTPError:
        return False


def _measure(rounds: int, archives: list[Path], target: Any, http: httpx.Client, s3: Any,
             state: Any) -> dict[str, Any]:
    api = f"/apis/serving.knative.dev/v1/namespaces/{NAMESPACE}/services"
    archive = archives[0]

    def routed(name: str, revision: str, percent: int = 100) -> Callable[[], bool]:
        """Whether the Service's status (the controller's) routes `percent` of its traffic to `revision`."""
        def check() -> bool:
            found = http.get(f"{api}/{name}").json()
            status = found.get("status") or {}
            return status.get("observedGeneration") == found["metadata"]["generation"] and any(
                t.get("revisionName") == revision and t.get("percent") == percent and not t.get("tag")
                for t in status.get("traffic") or [])
        return check

    def fnpack_deploy() -> None:
        target.deploy(archive)
        poll(routed("iris", "iris-v1"))

    def bare_apply(name: str, spec: dict[str, Any], revision: str, percent: int = 100) -> None:
        """The floor: one server-side apply of the same Service by a bare client, polled the same way."""
        body = {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        http.patch(f"{api}/{name}", params={"fieldManager": "bench", "force": "true"},
                   content=json.dumps(body).replace("iris-v", f"{name}-v"),
                   headers={"Content-Type": "application/apply-patch+yaml"}).raise_for_status()
        poll(routed(name, f"{name}-v{revision}", percent))

    log("1. deploy with the archive in storage")
    first = target.deploy(archive)  # puts the archive in storage; untimed
    key = f"b/archives/{first.version.sha256}.zip"
    spec = http.get(f"{api}/iris").json()["spec"]
    in_storage, floor, with_upload, transfer = [], [], [], []
    for i in range(rounds):
        target.delete("iris")
        in_storage.append(timed(fnpack_deploy))
        floor.append(timed(lambda: bare_apply(f"floor-{i}", spec, "1")))
        http.delete(f"{api}/floor-{i}")
    log("2. deploy with the upload")
    for i in range(rounds):
        target.delete("iris")
        s3.delete_object(Bucket=BUCKET, Key=key)
        with_upload.append(timed(fnpack_deploy))
        transfer.append(timed(lambda: s3.upload_file(str(archive), BUCKET, f"transfer/{i}.zip")))
    log("3. alias moves: live between v1 and a 10% canary of v2")
    target.deploy(archives[1], alias=None)
    spec = http.get(f"{api}/iris").json()["spec"]
    only_v1 = [{"revisionName": "iris-v1", "percent": 100}]
    canary = [{"revisionName": "iris-v1", "percent": 90}, {"revisionName": "iris-v2", "percent": 10}]
    v1_template = {**spec["template"], "metadata": {**spec["template"]["metadata"], "name": "iris-v1"}}
    bare_apply("floor-move", {"template": v1_template, "traffic": only_v1}, "1")  # the floor's two revisions
    bare_apply("floor-move", {"template": spec["template"], "traffic": only_v1}, "1")
    moves, bare_moves = [], []
    for i in range(rounds):
        target.set_alias("iris", "live", state(1))
        poll(routed("iris", "iris-v1"))
        moves.append(timed(lambda: (target.set_alias("iris", "live", state(1, 2, 0.1), reason=f"move {i}"),
                                    poll(routed("iris", "iris-v2", 10)))))
        bare_apply("floor-move", {"template": spec["template"], "traffic": only_v1}, "1")
        bare_moves.append(timed(lambda: bare_apply("floor-move", {"template": spec["template"], "traffic": canary},
                                                   "2", 10)))
    log("4. the unchanged archive again")
    target.set_alias("iris", "live", state(1))
    before = s3.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    again = timed(lambda: target.deploy(archive))
    unchanged_bytes = 0 if s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] == before else archive.stat().st_size
    median = statistics.median
    return {
        "deploy_in_storage_s": median(in_storage), "deploy_floor_s": median(floor),
        "deploy_in_storage_own_s": median(in_storage) - median(floor),
        "deploy_in_storage_ratio": median(in_storage) / median(floor),
        "deploy_with_upload_s": median(with_upload), "upload_transfer_s": median(transfer),
        "deploy_with_upload_own_s": median(with_upload) - median(floor) - median(transfer),
        "alias_move_s": median(moves), "alias_move_floor_s": median(bare_moves),
        "alias_move_ratio": median(moves) / median(bare_moves),
        "unchanged_redeploy_s": again, "unchanged_redeploy_bytes": unchanged_bytes,
    }


def report(figures: dict[str, Any]) -> str:
    f = figures
    lines = [
        f"knative control plane, examples/iris ({f['archive_bytes'] / 1e6:.1f} MB archive), medians of "
        f"{f['rounds']} rounds; the test API server started in {f['api_server_start_s']:.2f} s",
        "",
        "| figure | fnpack | floor (bare httpx / boto3) | ratio | fnpack's own part |",
        "| --- | --- | --- | --- | --- |",
        f"| deploy, archive in storage, until live routes to it | {f['deploy_in_storage_s']:.3f} s | "
        f"{f['deploy_floor_s']:.3f} s | {f['deploy_in_storage_ratio']:.2f}x | {f['deploy_in_storage_own_s']:.3f} s |",
        f"| deploy with the upload | {f['deploy_with_upload_s']:.3f} s | {f['deploy_floor_s']:.3f} s + "
        f"{f['upload_transfer_s']:.3f} s transfer | {f['deploy_with_upload_s'] / (f['deploy_floor_s'] + f['upload_transfer_s']):.2f}x | "
        f"{f['deploy_with_upload_own_s']:.3f} s |",
        f"| alias move, until the status shows it | {f['alias_move_s']:.3f} s | {f['alias_move_floor_s']:.3f} s | "
        f"{f['alias_move_ratio']:.2f}x | {f['alias_move_s'] - f['alias_move_floor_s']:.3f} s |",
        f"| unchanged archive again | {f['unchanged_redeploy_s']:.3f} s, {f['unchanged_redeploy_bytes']} bytes "
        "uploaded | | | |",
        "",
        "goals:",
    ]
    for name, (limit, op, unit) in GOALS.items():
        value = f[name]
        ok = {"<": value < limit, "==": value == limit}[op]
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name} = {value:.3f}{unit} (goal {op} {limit}{unit})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    args = parser.parse_args()
    if not (SHARED / "k8s" / "cluster.py").is_file():
        sys.exit(f"{SHARED / 'k8s' / 'cluster.py'} is absent: set FNPACK_SHARED")
    with tempfile.TemporaryDirectory(prefix="bench-knative-") as tmp:
        os.environ.setdefault("FNPACK_CONFIG", str(Path(tmp) / "config.yaml"))
        figures = bench(max(1, args.rounds), Path(tmp))
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
