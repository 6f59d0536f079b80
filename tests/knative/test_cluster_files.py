"""What ships for a cluster in knative/: the golden manifests are what fnpack generates now and the real API
server (Knative's CRDs) stores them as sent; config-features.yaml enables exactly the PodSpec flags the
manifests need (read from Knative's own CRD schema); rbac.yaml grants exactly the verbs fnpack's code uses
(read from the Kubernetes calls in src/fnpack/targets/knative/*.py); the README's fnpack.yaml is the golden
GPU function's spec."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_cluster import SHARED, KubeCluster

from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.targets.knative.storage import PvcStore

REPO = Path(__file__).resolve().parents[2]
KNATIVE = REPO / "knative"
CODE = REPO / "src" / "fnpack" / "targets" / "knative"
SERVICE_CRD = SHARED / "conformance" / "knative-serving-service.yaml"
GROUP = "serving.knative.dev"

# The Role's rules as the deployer needs them: (API group, resource) -> verbs.
VERBS = {
    (GROUP, "services"): {"get", "list", "create", "patch", "delete"},
    (GROUP, "revisions"): {"get", "list", "delete"},
    (GROUP, "routes"): {"get", "list", "create", "patch", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
}
FLAGS = {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations",
         "kubernetes.podspec-persistent-volume-claim"}

pytestmark = pytest.mark.timeout(120)


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("knative_examples_generate", KNATIVE / "examples" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden() -> list[dict[str, Any]]:
    return [doc for name in ("cpu-service.yaml", "gpu-service.yaml")
            for doc in yaml.safe_load_all((KNATIVE / "examples" / name).read_text())]


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KNATIVE / name).read_text()) if doc]


# --- the golden manifests ---------------------------------------------------------------------------------


def test_the_golden_manifests_are_what_fnpack_generates_now() -> None:
    for name, text in generator().files().items():
        assert (KNATIVE / "examples" / name).read_text() == text, \
            f"knative/examples/{name} is stale: run python knative/examples/generate.py"


def test_the_gpu_example_has_what_the_issue_asks_for() -> None:
    service, route = yaml.safe_load_all((KNATIVE / "examples" / "gpu-service.yaml").read_text())
    pod = service["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    notes = service["spec"]["template"]["metadata"]["annotations"]
    assert (notes["autoscaling.knative.dev/min-scale"], notes["autoscaling.knative.dev/max-scale"]) == ("0", "2")
    assert notes["serving.knative.dev/progress-deadline"] == "1800s"
    assert [(t["revisionName"], t["percent"], t.get("tag")) for t in service["spec"]["traffic"]] == [
        ("resnet-v1", 90, None), ("resnet-v2", 10, None), ("resnet-v1", 0, "v1"), ("resnet-v2", 0, "v2")]
    assert route["metadata"]["name"] == "resnet-staging" and route["spec"]["traffic"] == [
        {"revisionName": "resnet-v2", "percent": 100}]


def test_the_readme_fnpack_yaml_is_the_golden_gpu_spec() -> None:
    from fnpack.spec import FunctionSpec

    readme = (KNATIVE / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if b.startswith("# fnpack.yaml")]
    assert len(blocks) == 1, "knative/README.md has one ```yaml block starting with '# fnpack.yaml'"
    assert yaml.safe_load(blocks[0]) == yaml.safe_load(generator().GPU_SPEC)
    FunctionSpec.model_validate(yaml.safe_load(blocks[0]))  # a spec fnpack takes as it is


def test_the_api_server_stores_the_golden_manifests_as_sent(kube_cluster: KubeCluster) -> None:
    """Server-side apply with strict field validation against Knative's CRDs, in a namespace of its own: no
    field unknown to the schema (Strict refuses it), none pruned (what is read back is what was sent)."""
    namespace = f"golden-{uuid.uuid4().hex[:10]}"
    with kube_cluster.client() as client:
        for doc in golden():
            sent = json.loads(json.dumps(doc))
            sent["metadata"]["namespace"] = namespace
            name, resource = sent["metadata"]["name"], sent["kind"].lower() + "s"
            path = f"/apis/{sent['apiVersion']}/namespaces/{namespace}/{resource}/{name}"
            answer = client.patch(path, params={"fieldManager": "fnpack-golden-test", "fieldValidation": "Strict",
                                                "force": "true"},
                                  content=json.dumps(sent), headers={"Content-Type": "application/apply-patch+yaml"})
            assert answer.status_code in (200, 201), f"{sent['kind']} {name}: {answer.status_code} {answer.text}"
            stored = client.get(path).json()
            assert stored["spec"] == sent["spec"], f"the server changed the spec of {sent['kind']} {name}"
            for key in ("labels", "annotations"):
                assert stored["metadata"][key] == sent["metadata"][key]


# --- config-features.yaml and config-autoscaler.yaml -------------------------------------------------------


def enabled_flags() -> set[str]:
    (features,) = documents("config-features.yaml")
    assert (features["kind"], features["metadata"]["name"], features["metadata"]["namespace"]) == (
        "ConfigMap", "config-features", "knative-serving")
    assert set(features["data"].values()) == {"enabled"}
    return set(features["data"])


def pvc_template() -> dict[str, Any]:
    """A revision made for pvc:// model storage (the only kind of storage that adds a volume)."""
    store = PvcStore("models", "fnpack", None)
    digest = "ab" * 32
    return m.revision_template(function="iris", number=1, sha256=digest, archive_uri=store.uri(digest), spec={},
                               runtime="python3.11", settings=KnativeSettings(), storage=store.pod(),
                               created_at="2026-01-01T00:00:00+00:00", actor="test")


def test_config_features_enables_the_flags_of_node_selectors_tolerations_and_pvc_storage() -> None:
    assert enabled_flags() == FLAGS
    gpu = next(doc for doc in golden() if doc["metadata"]["name"] == "resnet")["spec"]["template"]["spec"]
    assert "nodeSelector" in gpu and "tolerations" in gpu
    assert "persistentVolumeClaim" in pvc_template()["spec"]["volumes"][0]


_GATED = re.compile(r"accessible behind a feature flag - (\S+)")


def gated(value: Any, schema: dict[str, Any], path: str, found: dict[str, list[str]]) -> None:
    """Each feature flag the schema says a field of `value` is behind, with where; a field the schema does
    not have fails (Knative's server would prune it)."""
    flag = _GATED.search(schema.get("description") or "")
    if flag:
        found[flag.group(1)].append(path)
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is None and isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                gated(item, schema["additionalProperties"], f"{path}.{key}", found)
            return
        if properties is None:  # x-kubernetes-preserve-unknown-fields: the schema says no more
            return
        for key, item in value.items():
            assert key in properties, f"{path}.{key} is not in Knative's Service schema"
            gated(item, properties[key], f"{path}.{key}", found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            gated(item, schema.get("items") or {}, f"{path}[{index}]", found)


def test_the_flags_enabled_are_those_knatives_schema_gates_the_manifests_fields_behind() -> None:
    if not SERVICE_CRD.is_file():
        pytest.skip(f"Knative's Service CRD is not here ({SERVICE_CRD}; set FNPACK_SHARED)")
    crd = yaml.safe_load(SERVICE_CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    pod_schema = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    found: dict[str, list[str]] = defaultdict(list)
    templates = [doc["spec"]["template"] for doc in golden() if doc["kind"] == "Service"] + [pvc_template()]
    for template in templates:
        gated(template["spec"], pod_schema, template["metadata"]["name"], found)
    assert set(found) == enabled_flags(), f"the manifests' flag-gated fields: {dict(found)}"


def test_config_autoscaler_keeps_scale_to_zero_on() -> None:
    (autoscaler,) = documents("config-autoscaler.yaml")
    assert (autoscaler["metadata"]["name"], autoscaler["metadata"]["namespace"]) == (
        "config-autoscaler", "knative-serving")
    assert autoscaler["data"] == {"enable-scale-to-zero": "true"}


# --- rbac.yaml ----------------------------------------------------------------------------------------------


def role_rules() -> dict[tuple[str, str], set[str]]:
    docs = documents("rbac.yaml")
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    role, binding, account = kinds["Role"], kinds["RoleBinding"], kinds["ServiceAccount"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert {"kind": "ServiceAccount", "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"]} in binding["subjects"]
    assert len({doc["metadata"]["namespace"] for doc in docs}) == 1
    rules: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules[group, resource] |= set(rule["verbs"])
    return dict(rules)


def test_the_role_grants_exactly_the_verbs_fnpack_uses() -> None:
    assert role_rules() == VERBS


# What each KubeApi method asks the API server for, in RBAC's verbs. A server-side apply is a PATCH, and one
# that creates its object is authorized as create as well.
_METHOD_VERBS = {"get": {"get"}, "list": {"list"}, "watch": {"watch"}, "apply": {"patch", "create"},
                 "create": {"create"}, "delete": {"delete"}, "patch": {"patch"}}
_HTTP_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _on_kube(call: ast.Call, method: str | None = None) -> bool:
    """`kube.METHOD(...)` or `<anything>.kube.METHOD(...)`: a call of fnpack's KubeApi."""
    func = call.func
    if not isinstance(func, ast.Attribute) or (method is not None and func.attr != method):
        return False
    owner = func.value
    return (isinstance(owner, ast.Name) and owner.id == "kube") or (isinstance(owner, ast.Attribute)
                                                                   and owner.attr == "kube")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _keyword(call: ast.Call, name: str) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def _group(call: ast.Call) -> str:
    group = _keyword(call, "group")
    return "" if group == "v1" else (group or GROUP).split("/")[0]


def kube_calls() -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    """The RBAC verbs of the KubeApi calls in src/fnpack/targets/knative/*.py (kube.py itself is the client):

    - `kube.get/list/watch/apply/create/delete("RESOURCE", ...)`, the resource a literal (or literals in an
      expression: `"services" if ... else "routes"`);
    - the same with the resource a parameter of the function around it (a helper such as
      `apply_guarded(kube, resource, ...)`): then each call of that helper, by name, with a literal there;
    - `kube.request/stream("METHOD", PATH)`, PATH a `kube.path("RESOURCE", [NAME], group=..., subresource=...)`
      call, inline or assigned to a name in the same function.

    A call it cannot read is returned apart, so that a new kind of call is looked at rather than missed."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    unread: list[str] = []
    helpers: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)  # name -> (index, param, method, group)
    trees = {source.name: ast.parse(source.read_text(), str(source))
             for source in sorted(CODE.glob("*.py")) if source.name != "kube.py"}
    for file, tree in trees.items():
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            params = [a.arg for a in function.args.args]
            paths = {target.id: node.value for node in ast.walk(function) if isinstance(node, ast.Assign)
                     for target in node.targets if isinstance(target, ast.Name)
                     and isinstance(node.value, ast.Call) and _on_kube(node.value, "path")}
            for call in [n for n in ast.walk(function) if isinstance(n, ast.Call) and _on_kube(n)]:
                method, where = call.func.attr, f"{file}:{call.lineno}"  # type: ignore[union-attr]
                if method in _METHOD_VERBS:
                    first = call.args[0] if call.args else None
                    if isinstance(first, ast.Name) and first.id in params:
                        index = params.index(first.id) - (1 if params[:1] in (["self"], ["cls"]) else 0)
                        helpers[function.name].append((index, first.id, method, _group(call)))
                        continue
                    resources = _strings(first) if first is not None else []
                    if not resources:
                        unread.append(f"{where}: kube.{method} of a resource that is not a literal")
                    for resource in resources:
                        found[_group(call), resource] |= _METHOD_VERBS[method]
                elif method in ("request", "stream"):
                    verb = _strings(call.args[0]) if call.args else []
                    path = call.args[1] if len(call.args) > 1 else None
                    if isinstance(path, ast.Name):
                        path = paths.get(path.id)
                    if len(verb) != 1 or not (isinstance(path, ast.Call) and _on_kube(path, "path")
                                              and path.args and _strings(path.args[0])):
                        unread.append(f"{where}: kube.{method} whose method or kube.path(...) is not literal")
                        continue
                    named = len(path.args) > 1 or any(k.arg == "name" for k in path.keywords)
                    resource = _strings(path.args[0])[0]
                    subresource = _keyword(path, "subresource")
                    qualified = f"{resource}/{subresource}" if subresource else resource
                    found[_group(path), qualified].add(
                        ("get" if named else "list") if verb[0] == "GET" else _HTTP_VERBS[verb[0]])
    for file, tree in trees.items():
        for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
            name = call.func.id if isinstance(call.func, ast.Name) else \
                call.func.attr if isinstance(call.func, ast.Attribute) else None
            for index, param, method, group in helpers.get(name or "", []):
                given = [k.value for k in call.keywords if k.arg == param] or call.args[index:index + 1]
                resources = _strings(given[0]) if given else []
                if not resources:
                    unread.append(f"{file}:{call.lineno}: {name}() with {param} not a literal")
                for resource in resources:
                    found[group, resource] |= _METHOD_VERBS[method]
    return dict(found), unread


def test_the_role_matches_the_kubernetes_calls_in_fnpacks_code() -> None:
    found, unread = kube_calls()
    assert not unread, "calls this test cannot read (make the resource a literal, or teach the test): " + \
        "; ".join(unread)
    assert found == role_rules(), "knative/rbac.yaml's Role and the calls in src/fnpack/targets/knative differ"
