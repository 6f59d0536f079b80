"""The fake Knative controller (`tests/fake_knative.py`) against the real test API server: what it makes of the
objects fnpack writes, as Knative Serving would, and its pods and ingress with `run_pods=True`."""

from __future__ import annotations

import collections
import json
import re
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_knative import FakeKnative, connect

SERVING = "/apis/serving.knative.dev/v1"


# -- helpers --------------------------------------------------------------------------------------------------------


@pytest.fixture
def api(kube_cluster) -> Iterator[httpx.Client]:
    with connect(kube_cluster.kubeconfig) as client:
        yield client


@pytest.fixture
def ns(api: httpx.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own (the server has no Namespace objects: any name is one); emptied afterwards."""
    words = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    name = f"fk-{words}-{uuid.uuid4().hex[:6]}"
    yield name
    for plural in ("services", "routes", "configurations", "revisions"):
        api.delete(f"{SERVING}/namespaces/{name}/{plural}")


@pytest.fixture
def knative(kube_cluster, tmp_path: Path, ns: str) -> Iterator[FakeKnative]:
    """The controller as fnpack's tests use it: every namespace, no pods."""
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "knative") as controller:
        yield controller
    assert not [v for v in controller.violations if f" {ns}/" in v]  # other tests' objects are theirs


def apply(api: httpx.Client, ns: str, plural: str, obj: dict) -> dict:
    """Server-side apply, as fnpack writes."""
    response = api.patch(f"{SERVING}/namespaces/{ns}/{plural}/{obj['metadata']['name']}",
                         params={"fieldManager": "fnpack", "force": "true"}, content=json.dumps(obj),
                         headers={"Content-Type": "application/apply-patch+yaml"})
    assert response.status_code in (200, 201), response.text
    return response.json()


def get(api: httpx.Client, ns: str, plural: str, name: str) -> dict | None:
    response = api.get(f"{SERVING}/namespaces/{ns}/{plural}/{name}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def names(api: httpx.Client, ns: str, plural: str) -> set[str]:
    response = api.get(f"{SERVING}/namespaces/{ns}/{plural}")
    response.raise_for_status()
    return {o["metadata"]["name"] for o in response.json()["items"]}


def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        time.sleep(0.005)


def condition(obj: dict, kind: str = "Ready") -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def ready_for_generation(api: httpx.Client, ns: str, plural: str, name: str) -> dict | None:
    obj = get(api, ns, plural, name)
    if obj and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"] \
            and condition(obj)["status"] == "True":
        return obj
    return None


def settled(api: httpx.Client, ns: str, plural: str, name: str) -> dict | None:
    obj = get(api, ns, plural, name)
    if obj and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]:
        return obj
    return None


def template(name: str, revision: str | None, version: str, *, command: list[str] | None = None,
             env: list[dict] | None = None, probe: dict | None = None, env_from: list[dict] | None = None) -> dict:
    container: dict[str, Any] = {"image": "ghcr.io/example/fnpack-runtime:1", "ports": [{"containerPort": 8080}],
                                 "env": [{"name": "VERSION", "value": version}, *(env or [])]}
    if command:
        container["command"] = command
    if probe:
        container["readinessProbe"] = probe
    if env_from:
        container["envFrom"] = env_from
    meta: dict[str, Any] = {"labels": {"fnpack.dev/function": name, "fnpack.dev/version": version},
                            "annotations": {"fnpack.dev/sha256": f"{version}-sha"}}
    if revision:
        meta["name"] = revision
    return {"metadata": meta, "spec": {"containers": [container]}}


def service(name: str, tmpl: dict, traffic: list[dict] | None) -> dict:
    spec: dict[str, Any] = {"template": tmpl}
    if traffic is not None:
        spec["traffic"] = traffic
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name,
                         "labels": {"app.kubernetes.io/managed-by": "fnpack", "fnpack.dev/function": name}},
            "spec": spec}


def split(live: dict[str, int], tags: dict[str, str]) -> list[dict]:
    """fnpack's traffic block: the live alias's percents, then one 0% tagged target per version."""
    return [{"revisionName": r, "percent": p} for r, p in live.items()] + \
        [{"revisionName": r, "percent": 0, "tag": t} for t, r in tags.items()]


# -- reconciling ----------------------------------------------------------------------------------------------------


def test_byo_revision_gets_created_and_the_service_ready(api, ns, knative):
    started = time.monotonic()
    svc = apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"),
                                              split({"fn-v1": 100}, {"v1": "fn-v1"})))
    svc = eventually(lambda: ready_for_generation(api, ns, "services", "fn"), what="Service Ready")
    took = time.monotonic() - started
    assert took < 5, took  # well under 100 ms in practice; the bound only catches a stuck controller

    revision = get(api, ns, "revisions", "fn-v1")
    labels, annotations = revision["metadata"]["labels"], revision["metadata"]["annotations"]
    assert labels["fnpack.dev/version"] == "1" and labels["fnpack.dev/function"] == "fn"
    assert annotations["fnpack.dev/sha256"] == "1-sha"
    assert labels["serving.knative.dev/service"] == "fn"
    assert labels["serving.knative.dev/configuration"] == "fn"
    assert labels["serving.knative.dev/configurationGeneration"] == "1"
    assert labels["serving.knative.dev/serviceUID"] == svc["metadata"]["uid"]
    config = get(api, ns, "configurations", "fn")
    assert revision["metadata"]["ownerReferences"] == [
        {"apiVersion": "serving.knative.dev/v1", "kind": "Configuration", "name": "fn",
         "uid": config["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert revision["spec"]["containers"][0]["env"] == [{"name": "VERSION", "value": "1"}]
    assert {c["type"]: c["status"] for c in revision["status"]["conditions"]} == {
        "Active": "True", "ContainerHealthy": "True", "Ready": "True", "ResourcesAvailable": "True"}

    status = svc["status"]
    assert status["url"] == f"http://fn.{ns}.example.com"
    assert status["address"] == {"url": f"http://fn.{ns}.svc.cluster.local"}
    assert status["latestCreatedRevisionName"] == status["latestReadyRevisionName"] == "fn-v1"
    assert status["traffic"] == [
        {"revisionName": "fn-v1", "percent": 100, "latestRevision": False},
        {"tag": "v1", "revisionName": "fn-v1", "percent": 0, "latestRevision": False,
         "url": f"http://v1-fn.{ns}.example.com"}]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "ConfigurationsReady": "True", "RoutesReady": "True", "Ready": "True"}

    # The Service's own Route, as Knative makes it: not one of fnpack's alias routes.
    route = get(api, ns, "routes", "fn")
    assert route["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "fnpack", "fnpack.dev/function": "fn",
                                           "serving.knative.dev/service": "fn"}
    assert route["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert route["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert route["status"]["traffic"] == status["traffic"]
    # The labeler: a routed revision is active, with its routes named.
    eventually(lambda: get(api, ns, "revisions", "fn-v1")["metadata"]["labels"]
               .get("serving.knative.dev/routingState") == "active", what="routingState active")
    assert get(api, ns, "revisions", "fn-v1")["metadata"]["annotations"]["serving.knative.dev/routes"] == "fn"
    knative.wait_idle()


def test_a_new_template_makes_a_second_revision_and_keeps_the_first(api, ns, knative):
    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {"v1": "fn-v1"})))
    eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
    apply(api, ns, "services", service("fn", template("fn", "fn-v2", "2"),
                                       split({"fn-v1": 90, "fn-v2": 10}, {"v1": "fn-v1", "v2": "fn-v2"})))
    svc = eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
    knative.wait_idle()

    assert names(api, ns, "revisions") == {"fn-v1", "fn-v2"}
    second = get(api, ns, "revisions", "fn-v2")
    assert second["metadata"]["labels"]["serving.knative.dev/configurationGeneration"] == "2"
    assert second["metadata"]["labels"]["fnpack.dev/version"] == "2"
    first = get(api, ns, "revisions", "fn-v1")
    assert first["metadata"]["labels"]["serving.knative.dev/configurationGeneration"] == "1"
    assert svc["status"]["latestCreatedRevisionName"] == svc["status"]["latestReadyRevisionName"] == "fn-v2"
    assert [(t["revisionName"], t["percent"], t.get("tag"), t.get("url")) for t in svc["status"]["traffic"]] == [
        ("fn-v1", 90, None, None), ("fn-v2", 10, None, None),
        ("fn-v1", 0, "v1", f"http://v1-fn.{ns}.example.com"), ("fn-v2", 0, "v2", f"http://v2-fn.{ns}.example.com")]

    # Moving traffic alone (same template) makes no revision.
    apply(api, ns, "services", service("fn", template("fn", "fn-v2", "2"),
                                       split({"fn-v2": 100}, {"v1": "fn-v1", "v2": "fn-v2"})))
    knative.wait_idle()
    assert names(api, ns, "revisions") == {"fn-v1", "fn-v2"}
    assert get(api, ns, "configurations", "fn")["metadata"]["generation"] == 2

    # The template naming an earlier revision again, unchanged (deleting v2 makes v1's template the Service's):
    # Knative takes the existing revision, as its spec matches.
    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {"v1": "fn-v1"})))
    svc = eventually(lambda: (s := ready_for_generation(api, ns, "services", "fn"))
                     and s["status"]["latestCreatedRevisionName"] == "fn-v1" and s)
    assert svc["status"]["latestReadyRevisionName"] == "fn-v1"
    assert names(api, ns, "revisions") == {"fn-v1", "fn-v2"}


def test_generated_revision_names_follow_the_configuration_generation(api, ns, knative):
    apply(api, ns, "services", service("gen", template("gen", None, "1"), None))
    svc = eventually(lambda: ready_for_generation(api, ns, "services", "gen"))
    assert svc["status"]["latestReadyRevisionName"] == "gen-00001"
    # No traffic block: Knative's default, the latest ready revision.
    assert svc["status"]["traffic"] == [{"revisionName": "gen-00001", "percent": 100, "latestRevision": True}]
    apply(api, ns, "services", service("gen", template("gen", None, "2"), None))
    svc = eventually(lambda: (s := ready_for_generation(api, ns, "services", "gen"))
                     and s["status"]["latestReadyRevisionName"] == "gen-00002" and s)
    assert svc["status"]["traffic"][0]["revisionName"] == "gen-00002"
    assert names(api, ns, "revisions") == {"gen-00001", "gen-00002"}


def test_traffic_to_a_missing_revision_is_not_ready(api, ns, knative):
    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"),
                                       split({"fn-v1": 50, "fn-v9": 50}, {"v1": "fn-v1"})))
    svc = eventually(lambda: settled(api, ns, "services", "fn"))
    knative.wait_idle()
    svc = get(api, ns, "services", "fn")
    for kind in ("RoutesReady", "Ready"):
        assert condition(svc, kind)["status"] == "False"
        assert condition(svc, kind)["reason"] == "RevisionMissing"
        assert condition(svc, kind)["message"] == 'Revision "fn-v9" referenced in traffic not found.'
    assert condition(svc, "ConfigurationsReady")["status"] == "True"
    assert condition(get(api, ns, "routes", "fn"), "AllTrafficAssigned")["reason"] == "RevisionMissing"

    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {"v1": "fn-v1"})))
    eventually(lambda: ready_for_generation(api, ns, "services", "fn"))


def test_a_byo_name_reused_with_a_changed_template_is_refused(api, ns, kube_cluster, tmp_path):
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path, namespaces=[ns]) as knative:
        apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {})))
        eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
        apply(api, ns, "services", service("fn", template("fn", "fn-v1", "changed"), split({"fn-v1": 100}, {})))
        knative.wait_idle()
        svc = get(api, ns, "services", "fn")
        assert condition(svc, "RoutesReady")["reason"] == "RevisionNameTaken"
        assert condition(svc, "Ready")["status"] == "False"
        assert condition(svc, "Ready")["reason"] == "RevisionNameTaken"
        assert condition(svc, "ConfigurationsReady")["reason"] == "RevisionFailed"
        assert get(api, ns, "revisions", "fn-v1")["spec"]["containers"][0]["env"][0]["value"] == "1"
        # Knative's webhook would have refused the update: the fake says so.
        assert any("without a name change" in v for v in knative.violations), knative.violations


def test_what_knatives_webhook_would_refuse_is_recorded(api, ns, kube_cluster, tmp_path):
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path, namespaces=[ns]) as knative:
        bad = service("fn", template("fn", "other-v1", "1"),
                      [{"revisionName": "other-v1", "percent": 60}, {"revisionName": "other-v1", "tag": "v1"},
                       {"revisionName": "other-v1", "tag": "v1"}])
        bad["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "true"}
        apply(api, ns, "services", bad)
        knative.wait_idle()
    text = "\n".join(knative.violations)
    assert '"other-v1" must have prefix "fn-"' in text
    assert "Traffic targets sum to 60, want 100" in text
    assert 'Multiple definitions for "v1"' in text
    assert "spec.template.spec.nodeSelector" in text
    # Reconciled as sent all the same (nothing here refuses a write).
    assert condition(get(api, ns, "services", "fn"))["status"] == "True"


def test_alias_routes_get_status(api, ns, knative):
    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {"v1": "fn-v1"})))
    eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
    alias = {"apiVersion": "serving.knative.dev/v1", "kind": "Route",
             "metadata": {"name": "fn-prod", "labels": {"fnpack.dev/function": "fn", "fnpack.dev/alias": "prod"}},
             "spec": {"traffic": [{"revisionName": "fn-v1", "percent": 100},
                                  {"revisionName": "fn-v1", "percent": 0, "tag": "v1"}]}}
    apply(api, ns, "routes", alias)
    route = eventually(lambda: ready_for_generation(api, ns, "routes", "fn-prod"))
    assert route["status"]["url"] == f"http://fn-prod.{ns}.example.com"
    assert route["status"]["address"] == {"url": f"http://fn-prod.{ns}.svc.cluster.local"}
    assert route["status"]["traffic"] == [
        {"revisionName": "fn-v1", "percent": 100, "latestRevision": False},
        {"tag": "v1", "revisionName": "fn-v1", "percent": 0, "latestRevision": False,
         "url": f"http://v1-fn-prod.{ns}.example.com"}]
    assert {c["type"]: c["status"] for c in route["status"]["conditions"]} == {
        "AllTrafficAssigned": "True", "CertificateProvisioned": "True", "IngressReady": "True", "Ready": "True"}

    alias["spec"]["traffic"] = [{"revisionName": "fn-v7", "percent": 100}]
    apply(api, ns, "routes", alias)
    route = eventually(lambda: settled(api, ns, "routes", "fn-prod"))
    assert condition(route)["status"] == "False"
    assert condition(route)["message"] == 'Revision "fn-v7" referenced in traffic not found.'
    # What was programmed stays until the new traffic can be (as Knative keeps the old ingress).
    assert route["status"]["traffic"][0]["revisionName"] == "fn-v1"
    # A later revision appearing makes it ready without any change to the Route.
    apply(api, ns, "services", service("fn", template("fn", "fn-v7", "7"), split({"fn-v1": 100}, {"v7": "fn-v7"})))
    route = eventually(lambda: ready_for_generation(api, ns, "routes", "fn-prod"))
    assert route["status"]["traffic"] == [{"revisionName": "fn-v7", "percent": 100, "latestRevision": False}]
    knative.wait_idle()


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_a_service_deletes_what_it_owns(api, ns, knative, propagation):
    apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {})))
    eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
    apply(api, ns, "services", service("fn", template("fn", "fn-v2", "2"), split({"fn-v2": 100}, {"v1": "fn-v1"})))
    eventually(lambda: (s := ready_for_generation(api, ns, "services", "fn"))
               and s["status"]["latestReadyRevisionName"] == "fn-v2")
    assert names(api, ns, "revisions") == {"fn-v1", "fn-v2"}
    response = api.request("DELETE", f"{SERVING}/namespaces/{ns}/services/fn",
                           json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation})
    assert response.status_code in (200, 202), response.text
    eventually(lambda: not any(names(api, ns, p) for p in ("services", "configurations", "revisions", "routes")),
               what="everything deleted")
    knative.wait_idle()


def test_owners_deleted_while_no_controller_ran_are_collected(api, ns, kube_cluster, tmp_path):
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "a", namespaces=[ns]) as knative:
        apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1"), split({"fn-v1": 100}, {})))
        eventually(lambda: ready_for_generation(api, ns, "services", "fn"))
        knative.wait_idle()
    api.delete(f"{SERVING}/namespaces/{ns}/services/fn").raise_for_status()
    assert names(api, ns, "revisions") == {"fn-v1"}
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "b", namespaces=[ns]):
        eventually(lambda: not any(names(api, ns, p) for p in ("configurations", "revisions", "routes")))


# -- pods and the ingress ---------------------------------------------------------------------------------------------

SERVER = textwrap.dedent("""
    import http.server, json, os, sys, time

    started = time.monotonic()
    if os.environ.get("CRASH"):
        print("loading the model failed: no such file model.onnx", flush=True)
        sys.exit(3)
    print("serving version", os.environ["VERSION"], "on", os.environ["PORT"], flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, code, payload):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ready":
                ready = time.monotonic() - started > 0.3
                return self.answer(200 if ready else 503, {"ready": ready})
            self.answer(200, {"version": os.environ["VERSION"], "revision": os.environ.get("K_REVISION"),
                              "path": self.path, "host": self.headers.get("Host"),
                              "token": os.environ.get("API_TOKEN"), "cache": os.environ.get("FNPACK_CACHE_DIR")})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(201, {"echo": body.decode(), "version": os.environ["VERSION"]})

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
""")


def test_pods_run_and_the_ingress_routes_by_host(api, ns, kube_cluster, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    probe = {"httpGet": {"path": "/ready", "port": 0}, "periodSeconds": 0}
    secret_env = [{"secretRef": {"name": "fn-secrets"}}]

    def tmpl(revision: str, version: str, **kwargs: Any) -> dict:
        return template("fn", revision, version, command=["python", str(script)], probe=probe, **kwargs)

    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "knative", namespaces=[ns], run_pods=True,
                     secrets={"fn-secrets": {"API_TOKEN": "s3cret"}}) as knative:
        apply(api, ns, "services", service("fn", tmpl("fn-v1", "1", env_from=secret_env),
                                           split({"fn-v1": 100}, {"v1": "fn-v1"})))
        svc = eventually(lambda: ready_for_generation(api, ns, "services", "fn"), what="v1 ready")
        rev = get(api, ns, "revisions", "fn-v1")
        assert condition(rev, "ContainerHealthy")["status"] == "True" and rev["status"]["actualReplicas"] == 1
        # The readiness probe held it back until the server said so (0.3 s after its start).
        assert "serving version 1" in knative.logs("fn-v1")

        apply(api, ns, "services", service("fn", tmpl("fn-v2", "2", env_from=secret_env),
                                           split({"fn-v1": 90, "fn-v2": 10}, {"v1": "fn-v1", "v2": "fn-v2"})))
        eventually(lambda: (s := ready_for_generation(api, ns, "services", "fn"))
                   and s["status"]["latestReadyRevisionName"] == "fn-v2", what="v2 ready")
        knative.wait_idle()
        assert set(knative.processes) == {"fn-v1", "fn-v2"}
        pids = dict(knative.processes)

        with httpx.Client(base_url=knative.ingress_url, trust_env=False, timeout=10) as client:
            host = f"fn.{ns}.example.com"
            seen = collections.Counter()
            for _ in range(200):
                response = client.get("/", headers={"Host": host})
                assert response.status_code == 200
                assert response.headers["knative-revision"] == f"fn-v{response.json()['version']}"
                seen[response.json()["revision"]] += 1
            assert 150 <= seen["fn-v1"] <= 198 and seen["fn-v1"] + seen["fn-v2"] == 200, seen

            tagged = client.get("/predict?x=1", headers={"Host": f"v2-fn.{ns}.example.com:80"})
            assert tagged.status_code == 200 and tagged.headers["knative-revision"] == "fn-v2"
            assert tagged.json()["path"] == "/predict?x=1" and tagged.json()["host"] == f"v2-fn.{ns}.example.com:80"
            assert tagged.json()["token"] == "s3cret"
            assert tagged.json()["cache"] == str(tmp_path / "knative" / "fnpack-cache")
            posted = client.post("/infer", headers={"Host": f"v1-fn.{ns}.example.com"}, content=b'{"x": [1]}')
            assert posted.status_code == 201 and posted.json() == {"echo": '{"x": [1]}', "version": "1"}
            assert client.get("/", headers={"Host": f"nope.{ns}.example.com"}).status_code == 404

            # A revision whose process exits is failed, with its exit code and the end of its output.
            apply(api, ns, "services", service("fn", tmpl("fn-v3", "3", env=[{"name": "CRASH", "value": "1"}]),
                                               split({"fn-v2": 100}, {"v3": "fn-v3"})))
            knative.wait_idle()
            rev = get(api, ns, "revisions", "fn-v3")
            assert condition(rev)["status"] == "False" and condition(rev)["reason"] == "ExitCode3"
            assert "no such file model.onnx" in condition(rev)["message"]
            assert condition(rev, "ContainerHealthy")["reason"] == "ExitCode3"
            svc = get(api, ns, "services", "fn")
            assert condition(svc)["status"] == "False"
            assert condition(svc, "RoutesReady")["message"] == 'Revision "fn-v3" failed to become ready.'
            assert condition(svc, "ConfigurationsReady")["reason"] == "RevisionFailed"
            assert "fn-v3" not in knative.processes
            # The ingress still routes what was programmed last.
            assert client.get("/", headers={"Host": host}).headers["knative-revision"] in ("fn-v1", "fn-v2")

        api.delete(f"{SERVING}/namespaces/{ns}/services/fn").raise_for_status()
        eventually(lambda: not knative.processes, what="processes stopped with their revisions")
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_stop_ends_processes_and_a_later_controller_scales_from_zero(api, ns, kube_cluster, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    probe = {"httpGet": {"path": "/ready"}}
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "a", namespaces=[ns], run_pods=True) as knative:
        apply(api, ns, "services", service("fn", template("fn", "fn-v1", "1", command=["python3", str(script)],
                                                          probe=probe), split({"fn-v1": 100}, {})))
        knative.wait_idle()
        pid = knative.processes["fn-v1"]
    assert not Path(f"/proc/{pid}").exists()
    # The revision stays Ready (scaled to zero); a request through a new controller's ingress starts it.
    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path / "b", namespaces=[ns], run_pods=True) as knative:
        knative.wait_idle()
        assert knative.processes == {}
        response = httpx.get(f"{knative.ingress_url}/", headers={"Host": f"fn.{ns}.example.com"}, trust_env=False,
                             timeout=10)
        assert response.status_code == 200 and response.json()["version"] == "1"
        assert set(knative.processes) == {"fn-v1"}
        assert condition(get(api, ns, "revisions", "fn-v1"))["status"] == "True"
        pid = knative.processes["fn-v1"]
    assert not Path(f"/proc/{pid}").exists()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fake-knative")]
