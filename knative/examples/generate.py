"""Writes the golden manifests of this folder with fnpack's own code (`fnpack.targets.knative.manifests` and its
settings model), as `fnpack deploy --target knative` would apply them: never edit the YAML files by hand.

    python knative/examples/generate.py          # rewrite cpu-service.yaml and gpu-service.yaml
    python knative/examples/generate.py --check  # exit 1 if they are not what fnpack generates now

- cpu-service.yaml: `iris` (CPU), v1 behind `live`, scale to zero, the archive on S3-compatible storage (MinIO);
- gpu-service.yaml: `resnet` (one GPU, an H100 node selector and the nvidia.com/gpu toleration, 0 to 2 pods),
  `live` at v1 with a 10% canary of v2, and a `staging` Route at v2; its spec is the fnpack.yaml of
  knative/README.md (GPU_SPEC below, checked by tests/knative/test_cluster_files.py).

The sha256 digests, times and actor are made up (fixed, so that the files change only when fnpack's manifests do).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.targets.knative.storage import ArchiveStore, S3Store, open_store
from fnpack.versions import AliasMove, AliasState

HERE = Path(__file__).resolve().parent
ACTOR = "deployer@ci"
RUNTIME = "python3.11"
REGION = "us-east-1"  # what the deploying machine's boto3 would give the pods (AWS_REGION)

CPU_SPEC = """\
name: iris
model: model.onnx
features: features:extract
score: score:score
resources:
  memory: 512
  cpu: 0.5
  timeout: 10
scaling:
  min: 0              # scale to zero when idle
  max: 4
  target_concurrency: 8
  idle_timeout: 120   # seconds without requests before the last pod goes
knative:
  namespace: ml
  storage: s3://models/fnpack
  storage_endpoint: http://minio.minio.svc.cluster.local:9000
  storage_secret: fnpack-storage
"""

GPU_SPEC = """\
name: resnet
model: model.onnx
runtime: python3.11
resources:
  memory: 8192
  cpu: 4
  timeout: 60
  gpu: 1
  node_selector:
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
  tolerations:
    - key: nvidia.com/gpu
      operator: Exists
      effect: NoSchedule
scaling:
  min: 0              # scale to zero: no GPU held while idle
  max: 2
  target_concurrency: 4
  idle_timeout: 600   # keep the last pod (and its loaded model) 10 minutes after the last request
knative:
  namespace: ml
  storage: s3://models/fnpack
  storage_endpoint: http://minio.minio.svc.cluster.local:9000
  storage_secret: fnpack-storage
  image: registry.example/fnpack/runtime:python3.11-cuda13
  ingress: http://192.0.2.10   # the cluster's ingress, for fnpack invoke (sent with the route's Host header)
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def store_for(settings: KnativeSettings) -> ArchiveStore:
    """The model storage the settings name, as the deploy opens it; an S3 store's region is fixed here (the
    deploy asks boto3, which reads the deploying machine's configuration)."""
    store = open_store(settings)
    if isinstance(store, S3Store):
        store._client = SimpleNamespace(meta=SimpleNamespace(region_name=REGION))
    return store


def template(spec: dict[str, Any], settings: KnativeSettings, store: ArchiveStore, number: int,
             at: str) -> dict[str, Any]:
    digest = sha(f"{spec['name']} v{number}")
    return m.revision_template(function=spec["name"], number=number, sha256=digest, archive_uri=store.uri(digest),
                               spec=spec, runtime=spec.get("runtime", RUNTIME), settings=settings,
                               storage=store.pod(), created_at=at, actor=ACTOR)


def cpu_manifests() -> list[dict[str, Any]]:
    spec = yaml.safe_load(CPU_SPEC)
    settings = KnativeSettings.from_spec(spec)
    store = store_for(settings)
    name, ns = spec["name"], settings.namespace
    live = [AliasMove(None, AliasState(1), ACTOR, "2026-01-05T09:00:00+00:00", "first deploy")]
    annotations = {m.LAST_VERSION: "1", m.HISTORY: m.history_text(live)}
    return [m.service_update(name, ns, None, template=template(spec, settings, store, 1, "2026-01-05T09:00:00+00:00"),
                             live=AliasState(1), tag=1, annotations=annotations)]


def gpu_manifests() -> list[dict[str, Any]]:
    spec = yaml.safe_load(GPU_SPEC)
    settings = KnativeSettings.from_spec(spec)
    store = store_for(settings)
    name, ns = spec["name"], settings.namespace
    canary = AliasState(1, 2, 0.1)
    live = [AliasMove(None, AliasState(1), ACTOR, "2026-01-05T09:00:00+00:00", "first deploy"),
            AliasMove(AliasState(1), canary, ACTOR, "2026-01-12T14:30:00+00:00", "canary of v2")]
    staging = [AliasMove(None, AliasState(2), ACTOR, "2026-01-12T14:00:00+00:00", "v2 for the QA team")]
    first = m.service_update(name, ns, None, template=template(spec, settings, store, 1, "2026-01-05T09:00:00+00:00"),
                             tag=1)
    service = m.service_update(name, ns, first, template=template(spec, settings, store, 2,
                                                                  "2026-01-12T14:00:00+00:00"),
                               live=canary, tag=2, annotations={m.LAST_VERSION: "2", m.HISTORY: m.history_text(live)})
    route = m.route_manifest(name, "staging", ns, AliasState(2), {m.HISTORY: m.history_text(staging)})
    return [service, route]


HEADER = """\
# Generated by knative/examples/generate.py with fnpack's own manifest code: do not edit by hand.
# {what}
# `kubectl apply -f` takes it on a cluster with knative/config-features.yaml applied; the archive URIs and
# sha256 digests are made up, so its pods would not start.
"""


def files() -> dict[str, str]:
    """File name -> its text, as generated now (each manifest checked as Knative's webhook would)."""
    made = {"cpu-service.yaml": ("iris on CPU: v1 behind live, scale to zero, its archive on MinIO (s3://).",
                                 cpu_manifests()),
            "gpu-service.yaml": ("resnet on one GPU: live at v1 with a 10% canary of v2, a staging Route at v2.",
                                 gpu_manifests())}
    out = {}
    for file, (what, manifests) in made.items():
        for manifest in manifests:
            m.check(manifest)
        out[file] = HEADER.format(what=what) + m.to_yaml(manifests)
    return out


def main(argv: list[str]) -> int:
    stale = [name for name, text in files().items()
             if not (HERE / name).is_file() or (HERE / name).read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for name in stale:
            print(f"{HERE / name} is not what fnpack generates now: run python {Path(__file__).name}", file=sys.stderr)
        return 1 if stale else 0
    for name, text in files().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
