"""The knative target end to end, as a user drives it: the real CLI against the session's real Kubernetes API
server (Knative's CRDs), the test controller (`fake_knative`) running each revision's pod as a real process of
`python -m fnpack.worker` with the pod spec's args and environment, fetching its archive from moto's S3, and
its ingress routing by Host header. What only the controller stands in for: Knative's own controllers and
ingress (their semantics as fnpack relies on them); everything the API server says is real.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import EXAMPLES, CliResult, fnpack
from kube_cluster import KubeCluster
from servers import free_port, platform

from fnpack.versions import AliasState

pytestmark = pytest.mark.timeout(600)

NAMESPACE = "e2e"  # the controller runs pods here
PLAIN = "plain"  # a controller without pods: revisions are ready at once
GITOPS = "gitops"  # no controller: what `kubectl apply` of fnpack's YAML leaves
BUCKET = "models"
REQUEST = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
API = "/apis/serving.knative.dev/v1/namespaces"


@dataclass
class Cluster:
    kube: KubeCluster
    http: httpx.Client  # the admin's own client: reads what the server holds, not through fnpack
    env: dict[str, str]  # every CLI call gets it
    controller: Any
    s3: Any
    root: Path

    def cli(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        return fnpack(*args, "--target", "knative", env={**self.env, **(env or {})}, cwd=cwd)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Any:
        done = self.cli(*args, "--json", env=env)
        assert done.code == 0, f"{args}: exit {done.code}\n{done.stdout}\n{done.stderr}"
        return done.json()

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        answer = self.http.get(f"{API}/{namespace}/{kind}/{name}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()

    def through_ingress(self, host: str, body: Any = REQUEST) -> httpx.Response:
        return httpx.post(f"{self.controller.ingress_url}/", json=body, headers={"Host": host}, timeout=60,
                          trust_env=False)


@pytest.fixture(scope="module")
def cluster(kube_cluster: KubeCluster, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import boto3

    from fake_knative import FakeKnative

    root = tmp_path_factory.mktemp("knative-e2e")
    aws = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(root / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials")}
    env = {**aws, "FNPACK_KUBECONFIG": str(kube_cluster.kubeconfig), "FNPACK_KNATIVE_NAMESPACE": NAMESPACE,
           "FNPACK_KNATIVE_STORAGE": f"s3://{BUCKET}/fnpack", "FNPACK_KNATIVE_STORAGE_SECRET": "minio",
           "KUBECONFIG": "", "FNPACK_KUBE_CONTEXT": "", "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""}
    # The pods' storage credentials come from the Secret the manifests name (envFrom), as on a cluster.
    secrets = {f"{NAMESPACE}/minio": {k: aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with FakeKnative(kube_cluster.kubeconfig, run_pods=True, secrets=secrets, workdir=root / "controller",
                         namespaces=[NAMESPACE]) as controller, kube_cluster.client() as http, \
                FakeKnative(kube_cluster.kubeconfig, workdir=root / "plain", namespaces=[PLAIN]) as plain:
            yield Cluster(kube_cluster, http, env, controller, boto3.client("s3"), root)
            # nothing fnpack sent is what Knative's admission webhook would have refused
            assert controller.violations == [] and plain.violations == []


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """examples/iris built twice by plain `fnpack build` (no --target: the local platform's archive), the
    second differing by a comment."""
    built = []
    for variant in (0, 1):
        folder = tmp_path_factory.mktemp("iris") / "iris"
        shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        if variant:
            (folder / "features.py").write_text((folder / "features.py").read_text() + "\n# variant 1\n")
        done = fnpack("build", str(folder), "--json")
        assert done.code == 0, done.stderr
        built.append(Path(done.json()["archive"]))
    return built


def answered_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["knative-revision"]  # the test controller's ingress says which revision answered


# --- one build, every target ------------------------------------------------------------------------------


def test_the_archive_the_local_platform_runs_deploys_unchanged_and_its_pod_serves_it(
        cluster: Cluster, iris: list[Path], tmp_path: Path) -> None:
    archive = iris[0]
    with platform(tmp_path / "state") as url:
        local = fnpack("deploy", str(archive), "--target", "local", "--url", url, "--state-dir", str(tmp_path / "state"),
                       "--json")
        assert local.code == 0, local.stderr
        on_local = fnpack("invoke", "iris", "--target", "local", "--url", url, "--data", json.dumps(REQUEST), "--json")
        assert on_local.code == 0, on_local.stderr

    deployed = cluster.ok("deploy", str(archive), "--reason", "first")
    assert deployed["version"]["sha256"] == local.json()["version"]["sha256"] == deployed["plan"]["sha256"]
    assert deployed["version"]["number"] == 1 and deployed["move"]["after"]["primary"] == 1
    assert deployed["url"] == f"http://iris.{NAMESPACE}.example.com"
    sha = deployed["version"]["sha256"]

    # What the cluster holds: a Service whose revision runs the worker on the archive in model storage.
    service = cluster.get("services", "iris")
    container = service["spec"]["template"]["spec"]["containers"][0]
    uri = f"s3://{BUCKET}/fnpack/archives/{sha}.zip"
    assert container["args"] == ["--archive", uri, "--sha256", sha]
    assert container["envFrom"] == [{"secretRef": {"name": "minio"}}]
    stored = cluster.s3.head_object(Bucket=BUCKET, Key=f"fnpack/archives/{sha}.zip")
    assert stored["ContentLength"] == archive.stat().st_size and stored["Metadata"]["sha256"] == sha
    revision = cluster.get("revisions", "iris-v1")
    assert revision["metadata"]["annotations"]["fnpack.dev/sha256"] == sha
    assert "iris-v1" in cluster.controller.processes  # the pod: a real worker process, ready

    # The pod answers what the local platform answered, through the ingress, the CLI and the version's URL.
    on_knative = cluster.ok("invoke", "iris", "--ingress", cluster.controller.ingress_url, "--data",
                            json.dumps(REQUEST))
    assert on_knative["answer"] == on_local.json()["answer"] and on_knative["answer"]["label"] == "virginica"
    assert answered_by(cluster.through_ingress(f"iris.{NAMESPACE}.example.com")) == "iris-v1"
    assert answered_by(cluster.through_ingress(f"v1-iris.{NAMESPACE}.example.com")) == "iris-v1"


def test_a_canary_splits_traffic_through_the_ingress_each_version_has_its_url_and_rollback_restores(
        cluster: Cluster, iris: list[Path]) -> None:
    first = cluster.ok("deploy", str(iris[0]))  # from the test above, or made now: either way v1 runs it
    assert first["version"]["number"] == 1
    second = cluster.ok("deploy", str(iris[1]), "--no-promote")
    assert second["version"]["number"] == 2 and second["move"] is None
    assert cluster.ok("alias", "list", "iris")["aliases"]["live"] == {"primary": 1, "canary": None, "weight": 0.0}

    cluster.ok("alias", "set", "iris", "live", "1", "--canary", "2", "--weight", "0.3", "--reason", "canary")
    cluster.controller.wait_idle(30)
    answers = [answered_by(cluster.through_ingress(f"iris.{NAMESPACE}.example.com")) for _ in range(200)]
    share = answers.count("iris-v2") / len(answers)
    assert set(answers) == {"iris-v1", "iris-v2"} and 0.18 < share < 0.42, share  # 30% by Knative's random split
    assert {answered_by(cluster.through_ingress(f"v2-iris.{NAMESPACE}.example.com")) for _ in range(5)} == {"iris-v2"}

    staging = cluster.ok("alias", "set", "iris", "staging", "2")
    assert staging["move"]["before"] is None
    cluster.controller.wait_idle(30)
    route = cluster.get("routes", "iris-staging")
    assert route["metadata"]["labels"]["fnpack.dev/alias"] == "staging"
    assert answered_by(cluster.through_ingress(f"iris-staging.{NAMESPACE}.example.com")) == "iris-v2"
    described = cluster.ok("describe", "iris")
    assert described["urls"]["iris:staging"] == f"http://iris-staging.{NAMESPACE}.example.com"
    assert described["urls"]["iris:2"] == f"http://v2-iris.{NAMESPACE}.example.com"
    assert [(i["revision"], i["ready"]) for i in described["instances"]] == [("iris-v1", "True"), ("iris-v2", "True")]

    cluster.ok("rollback", "iris", "live", "--reason", "too soon")
    cluster.controller.wait_idle(30)
    assert {answered_by(cluster.through_ingress(f"iris.{NAMESPACE}.example.com")) for _ in range(40)} == {"iris-v1"}
    history = cluster.ok("alias", "history", "iris", "live")["history"]
    assert [h["reason"] for h in history][-2:] == ["canary", "too soon"]
    # the history is the Service's annotation: in the cluster, shared by everyone who deploys
    assert len(json.loads(cluster.get("services", "iris")["metadata"]["annotations"]["fnpack.dev/history"])) == \
        len(history)
    too_fine = cluster.cli("alias", "set", "iris", "live", "1", "--canary", "2", "--weight", "0.125")
    assert too_fine.code == 2 and "whole percents" in too_fine.stderr, too_fine.stderr


def test_a_revision_whose_pods_never_become_ready_moves_no_alias_and_live_keeps_serving(
        cluster: Cluster, iris: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    (folder / "fnpack.yaml").write_text((folder / "fnpack.yaml").read_text().replace("name: iris", "name: brittle", 1))
    good = cluster.ok("deploy", str(folder))
    assert good["version"]["number"] == 1
    (folder / "features.py").write_text((folder / "features.py").read_text() + "\n# v2\n")
    # the pods are pointed at a storage endpoint where nothing listens: their worker cannot fetch the archive
    broken = cluster.cli("deploy", str(folder), "--json",
                         env={"FNPACK_KNATIVE_STORAGE_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert broken.code == 11, broken.stdout + broken.stderr
    error = json.loads(broken.stderr)
    assert "brittle-v2" in error["message"] and "failed to become ready" in error["message"], error
    assert "no alias was moved" in error["hint"]
    assert cluster.ok("alias", "list", "brittle")["aliases"]["live"]["primary"] == 1
    assert answered_by(cluster.through_ingress(f"brittle.{NAMESPACE}.example.com")) == "brittle-v1"
    # the Service went back to v1's template, so Knative has nothing failing to make; v2 stays, unrouted
    assert cluster.get("services", "brittle")["spec"]["template"]["metadata"]["name"] == "brittle-v1"
    assert "v2" not in [t.get("tag") for t in cluster.get("services", "brittle")["spec"]["traffic"]]
    again = cluster.cli("deploy", str(folder))  # the same archive again: the failed version is not promoted either
    assert again.code == 11 and "brittle-v2" in again.stderr, again.stderr
    assert cluster.ok("alias", "list", "brittle")["aliases"]["live"]["primary"] == 1
    assert cluster.ok("delete", "brittle", "--yes")["deleted"]


def test_an_archive_in_model_storage_is_never_uploaded_again(cluster: Cluster, iris: list[Path]) -> None:
    archive = iris[0]
    again = cluster.ok("deploy", str(archive))  # this function already runs it: nothing to do
    assert [s["action"] for s in again["plan"]["steps"]] == ["reuse-version", "keep-alias"] or \
        [s["action"] for s in again["plan"]["steps"]][0] == "reuse-version"
    key = f"fnpack/archives/{again['version']['sha256']}.zip"
    before = cluster.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    cluster.ok("delete", "iris", "--yes")
    assert cluster.get("services", "iris") is None and cluster.get("routes", "iris-staging") is None
    assert cluster.get("revisions", "iris-v1") is None
    fresh = cluster.ok("deploy", str(archive))  # a new function of the same archive: in storage already
    actions = [s["action"] for s in fresh["plan"]["steps"]]
    assert actions == ["publish", "set-alias"], actions
    assert "already in model storage" in fresh["plan"]["steps"][0]["summary"]
    assert cluster.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] == before
    assert fresh["version"]["number"] == 1 and fresh["move"]["before"] is None  # no history inherited


# --- GitOps: the dry run's YAML, applied by the real server --------------------------------------------------


def gpu_archive(folder: Path, name: str = "vision") -> Path:
    """An archive whose spec asks for a GPU on a labelled, tainted node, with scale to zero (made directly: a
    real GPU build vendors onnxruntime-gpu, a download the suite does not make)."""
    from targets.test_planner import make_archive

    spec = {"resources": {"memory": 4096, "cpu": 2, "gpu": 1,
                          "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            "scaling": {"min": 0, "max": 2, "target_concurrency": 4, "idle_timeout": 600}}
    return make_archive(folder, name=name, spec=spec)


def test_the_dry_run_yaml_of_a_gpu_function_applies_cleanly_and_fnpack_reads_it_back(
        cluster: Cluster, tmp_path: Path) -> None:
    archive = gpu_archive(tmp_path)
    dry = cluster.cli("deploy", str(archive), "--dry-run", "-o", "yaml", "--namespace", GITOPS)
    assert dry.code == 0, dry.stderr
    documents = list(yaml.safe_load_all(dry.stdout))
    assert [d["kind"] for d in documents] == ["Service"]
    assert cluster.get("services", "vision", GITOPS) is None  # a dry run changes nothing
    (service,) = documents
    pod = service["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"].endswith("-cuda13")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    notes = service["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "0"
    assert notes["serving.knative.dev/progress-deadline"] == "1800s"

    # `kubectl apply --server-side` of it: Knative's schema takes every field (strict: nothing unknown, nothing
    # pruned), and what the server stored is what was sent.
    applied = cluster.http.patch(f"{API}/{GITOPS}/services/vision",
                                 params={"fieldManager": "kubectl", "fieldValidation": "Strict"},
                                 content=dry.stdout.encode(), headers={"Content-Type": "application/apply-patch+yaml"})
    assert applied.status_code == 201, applied.text
    assert applied.json()["spec"] == service["spec"]
    # fnpack reads what GitOps applied: live is at v1 with its recorded move
    listed = cluster.ok("alias", "list", "vision", "--namespace", GITOPS)
    assert listed["aliases"] == {"live": {"primary": 1, "canary": None, "weight": 0.0}}
    assert len(cluster.ok("alias", "history", "vision", "live", "--namespace", GITOPS)["history"]) == 1
    # in the function's folder, its spec's knative: section is a setting of every command, as of deploy
    project = tmp_path / "project"
    project.mkdir()
    (project / "fnpack.yaml").write_text(f"name: vision\nknative:\n  namespace: {GITOPS}\n")
    there = cluster.cli("alias", "list", "vision", "--json", cwd=project, env={"FNPACK_KNATIVE_NAMESPACE": ""})
    assert there.code == 0 and there.json()["aliases"]["live"]["primary"] == 1, there.stderr
    (project / "fnpack.yaml").write_text("name: vision\nknative: [not, a, mapping]\n")
    broken = cluster.cli("alias", "list", "vision", cwd=project)
    assert broken.code == 2 and "knative:" in broken.stderr and "not a mapping" in broken.stderr

    not_yaml = cluster.cli("deploy", str(archive), "-o", "yaml", "--namespace", GITOPS)
    assert not_yaml.code == 2 and "--dry-run" in not_yaml.stderr
    local = fnpack("deploy", str(archive), "--dry-run", "-o", "yaml", "--target", "local", "--url",
                   f"http://127.0.0.1:{free_port()}")
    assert local.code != 0


# --- mistakes and what the cluster refuses ------------------------------------------------------------------


def test_mistakes_are_named_before_anything_changes(cluster: Cluster, iris: list[Path], tmp_path: Path) -> None:
    archive = iris[0]
    no_storage = cluster.cli("deploy", str(archive), "--namespace", "errors", env={"FNPACK_KNATIVE_STORAGE": ""})
    assert no_storage.code == 2 and "model storage" in no_storage.stderr and "--storage" in no_storage.stderr
    assert cluster.get("services", "iris", "errors") is None

    bad_namespace = cluster.cli("ls", "--namespace", "Not_OK")
    assert bad_namespace.code == 2 and "Not_OK" in bad_namespace.stderr

    nowhere = tmp_path / "kubeconfig"
    config = yaml.safe_load(cluster.kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    nowhere.write_text(yaml.safe_dump(config))
    unreachable = cluster.cli("ls", env={"FNPACK_KUBECONFIG": str(nowhere)})
    assert unreachable.code == 11 and "cannot reach the Kubernetes API server" in unreachable.stderr

    # a Knative Service fnpack did not make is not taken over
    foreign = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "iris"},
               "spec": {"template": {"spec": {"containers": [{"image": "someone/else"}]}}}}
    made = cluster.http.post(f"{API}/errors/services", json=foreign)
    assert made.status_code == 201, made.text
    taken = cluster.cli("deploy", str(archive), "--namespace", "errors")
    assert taken.code == 13 and "not made by fnpack" in taken.stderr, taken.stderr
    assert cluster.get("services", "iris", "errors")["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "someone/else"

    # logs go through the core API's pods/log, which this API server does not serve: said plainly
    cluster.ok("deploy", str(archive), "--namespace", NAMESPACE)
    logs = cluster.cli("logs", "iris")
    assert logs.code == 12 and "serves no pods" in logs.stderr, logs.stderr

    # a context of the knative target keeps its settings, checked when saved
    refused = fnpack("context", "set", "cluster", "--target", "knative", "--namespace", "Bad Name")
    assert refused.code == 2 and "Bad Name" in refused.stderr
    other = fnpack("context", "set", "cluster", "--target", "knative", "--region", "eu-west-1")
    assert other.code == 2 and "--region" in other.stderr
    saved = fnpack("context", "set", "cluster", "--target", "knative", "--namespace", "errors", "--use",
                   env={**cluster.env, "FNPACK_KNATIVE_NAMESPACE": ""})
    assert saved.code == 0, saved.stderr
    in_context = fnpack("ls", "--json", env={**cluster.env, "FNPACK_KNATIVE_NAMESPACE": ""})
    assert in_context.code == 0, in_context.stderr
    assert in_context.json()["functions"] == []  # the foreign Service is no function of fnpack's


# --- what other people and tools did meanwhile ----------------------------------------------------------------


def plain_target(cluster: Cluster) -> Any:
    from fnpack.targets.knative.settings import KnativeSettings
    from fnpack.targets.knative.target import KnativeTarget

    return KnativeTarget(KnativeSettings(kubeconfig=cluster.kube.kubeconfig, namespace=PLAIN,
                                         storage=f"s3://{BUCKET}/plain"))


def test_what_kn_routed_survives_fnpack_deploys_and_a_stale_plan_changes_nothing(cluster: Cluster,
                                                                                 tmp_path: Path) -> None:
    from targets.test_planner import make_archive

    from fnpack.errors import ConflictError

    a, b, c = (make_archive(tmp_path, name="shared", variant=n) for n in range(3))
    with plain_target(cluster) as mine, plain_target(cluster) as theirs:
        mine.deploy(a)
        mine.deploy(b, alias=None)
        # kn adds a preview tag and splits the Service's route itself (its own field manager)
        service = cluster.get("services", "shared", PLAIN)
        traffic = [{"revisionName": "shared-v1", "percent": 70}, {"revisionName": "shared-v2", "percent": 30},
                   *[t for t in service["spec"]["traffic"] if t.get("tag")],
                   {"revisionName": "shared-v2", "percent": 0, "tag": "preview"}]
        edited = cluster.http.patch(f"{API}/{PLAIN}/services/shared", params={"fieldManager": "kn"},
                                    json={"spec": {"traffic": traffic}},
                                    headers={"Content-Type": "application/merge-patch+json"})
        assert edited.status_code == 200, edited.text
        # a plan made now, executed after someone else's deploy: v3 is theirs, mine changes nothing
        stale = mine.plan_deploy(c, alias=None)
        theirs.deploy(c, alias=None)
        before = cluster.get("services", "shared", PLAIN)
        with pytest.raises(ConflictError) as caught:
            mine.execute(stale)
        assert "another deploy made shared v3" in caught.value.message, caught.value.message
        after = cluster.get("services", "shared", PLAIN)
        assert (after["spec"], after["metadata"]["annotations"]) == (before["spec"], before["metadata"]["annotations"])
        # kn's split and tag are still there after fnpack's deploys; only fnpack's vN tags were added
        kept = after["spec"]["traffic"]
        assert kept[:2] == traffic[:2] and {"revisionName": "shared-v2", "percent": 0, "tag": "preview"} in kept
        assert [t["tag"] for t in kept if t.get("tag", "").startswith("v")] == ["v1", "v2", "v3"]
        assert mine.aliases("shared") == {"live": AliasState(1, 2, 0.3)}  # kn's move, read as it routes
        # a split fnpack cannot name (three revisions): no alias, and what it routes to is not deleted
        three = [{"revisionName": f"shared-v{n}", "percent": p} for n, p in ((1, 50), (2, 30), (3, 20))]
        edited = cluster.http.patch(f"{API}/{PLAIN}/services/shared", params={"fieldManager": "kn"},
                                    json={"spec": {"traffic": three + [t for t in kept if t.get("tag")]}},
                                    headers={"Content-Type": "application/merge-patch+json"})
        assert edited.status_code == 200, edited.text
        assert mine.aliases("shared") == {}
        with pytest.raises(ConflictError) as routed:
            mine.delete("shared", 3)
        assert "receives traffic" in routed.value.message
        assert [v.number for v in mine.versions("shared")] == [1, 2, 3]
        mine.delete("shared")


def test_an_alias_route_and_a_function_of_the_same_name_refuse_each_other(cluster: Cluster, tmp_path: Path) -> None:
    from targets.test_planner import make_archive

    from fnpack.errors import ConflictError

    with plain_target(cluster) as target:
        target.deploy(make_archive(tmp_path, name="model"))
        target.set_alias("model", "beta", AliasState(1))  # the Route model-beta
        with pytest.raises(ConflictError) as caught:
            target.deploy(make_archive(tmp_path, name="model-beta"))
        assert "a Route model-beta exists already" in caught.value.message
        assert cluster.get("services", "model-beta", PLAIN) is None
        target.deploy(make_archive(tmp_path, name="other"))
        target.deploy(make_archive(tmp_path, name="other-beta"))
        with pytest.raises(ConflictError) as taken:
            target.set_alias("other", "beta", AliasState(1))  # its Route would be the function other-beta's
        # (Knative made the Route other-beta for the Service other-beta: it is not fnpack's alias route)
        assert "other-beta" in taken.value.message and "not alias beta of other" in taken.value.message
        assert cluster.get("routes", "other-beta", PLAIN)["metadata"]["labels"].get("fnpack.dev/alias") is None
        for name in ("model", "other", "other-beta"):
            target.delete(name)
