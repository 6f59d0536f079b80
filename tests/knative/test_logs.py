"""`fnpack logs --target knative` reads the pods' logs through the core API (pods, pods/log). The test API
server has no core API (test_knative.py checks the plain error it then gives), so this protocol-faithful
stand-in answers those two endpoints as kube-apiserver does, and checks what fnpack asks."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from fnpack.targets.knative.settings import KnativeSettings
from fnpack.targets.knative.target import KnativeTarget

SERVICE = {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
           "metadata": {"name": "iris", "namespace": "ml", "resourceVersion": "7",
                        "labels": {"fnpack.dev/function": "iris", "app.kubernetes.io/managed-by": "fnpack"}},
           "spec": {"template": {"metadata": {"name": "iris-v1"}, "spec": {"containers": [{"image": "x"}]}}}}


def pod(name: str, created: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ml", "creationTimestamp": created,
                         "labels": {"serving.knative.dev/service": "iris"}}}


def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "prod", "cluster": {"server": "https://k8s.test:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "deployer", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "deployer", "namespace": "ml"}}]}))
    return path


def test_logs_come_from_every_pod_of_the_service_and_follow_streams_the_newest(tmp_path: Path) -> None:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        assert request.headers["Authorization"] == "Bearer t0ken"
        path = request.url.path
        if path == "/apis/serving.knative.dev/v1/namespaces/ml/services/iris":
            return httpx.Response(200, json=SERVICE)
        if path == "/api/v1/namespaces/ml/pods":
            assert request.url.params["labelSelector"] == "serving.knative.dev/service=iris"
            return httpx.Response(200, json={"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                             "items": [pod("iris-v1-b", "2026-12-01T10:05:00Z"),
                                                       pod("iris-v1-a", "2026-12-01T10:00:00Z")]})
        if path.endswith("/log"):
            assert request.url.params["container"] == "function"
            name = path.split("/")[-2]
            return httpx.Response(200, text=f"{name} line {request.url.params['tailLines']}\n")
        return httpx.Response(404, json={"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "reason": "NotFound", "code": 404, "message": f"{path} not found"})

    settings = KnativeSettings(kubeconfig=kubeconfig(tmp_path))
    with KnativeTarget(settings, transport=httpx.MockTransport(answer)) as target:
        text = "".join(target.logs("iris", tail=5))
        assert text == "==> pod iris-v1-a <==\niris-v1-a line 5\n==> pod iris-v1-b <==\niris-v1-b line 5\n"
        followed = "".join(target.logs("iris", tail=3, follow=True))
        assert followed == "iris-v1-b line 3\n"  # the newest pod
        assert asked[-1].url.params["follow"] == "true"
