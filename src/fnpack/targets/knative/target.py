"""The knative target: the same container archive as the local platform, on a Kubernetes cluster with
Knative Serving, through the API server (httpx; no Kubernetes client library).

- A function is a Knative Service; its versions are revisions `NAME-vN` (immutable, each with its own URL
  through a `vN` traffic tag); `live` is the Service's route and other aliases are Routes `NAME-ALIAS`
  (`manifests`). Each alias's history is an annotation on its object, so a move and its record are one
  write guarded by resourceVersion (`aliases`).
- Deploys go through the shared skeleton with the hooks of `deploy`; archives go to model storage
  (`storage`); pods run `python -m fnpack.worker --archive URI --sha256 HEX` in the runtime image.
- Settings are `settings.KnativeSettings`; the cluster and credentials are the kubeconfig's (`kubeconfig`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from fnpack.errors import ConflictError, FnpackError, NotFoundError, StartError
from fnpack.targets.base import FunctionSummary, Invocation, InvokeError, Target, actor
from fnpack.targets.deploy import Deployer, Plan
from fnpack.targets.history import ANY, Expect, move_alias, rollback_alias
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.aliases import AliasObjects
from fnpack.targets.knative.cluster import Cluster, condition
from fnpack.targets.knative.writes import apply_guarded
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.canary.observer import Observer


class KnativeTarget(Target):
    name = "knative"

    def __init__(self, settings: KnativeSettings | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings or KnativeSettings.layered({})
        self._transport = transport
        self._cluster: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        """The namespace the settings name, connected on first use (the kubeconfig is read then)."""
        if self._cluster is None:
            from fnpack.targets.knative.kube import KubeApi
            from fnpack.targets.knative.kubeconfig import load_connection

            connection = load_connection(self.settings.kubeconfig, self.settings.kube_context, self.settings.namespace)
            self._cluster = Cluster(KubeApi(connection, transport=self._transport))
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.kube.close()

    def deployer(self) -> Deployer:
        from fnpack.targets.knative.deploy import KnativeDeployer

        return KnativeDeployer(self.cluster, self.settings)

    def export(self, plan: Plan) -> str:
        from fnpack.targets.knative.deploy import planned_manifests

        return m.to_yaml(planned_manifests(plan))

    def preflight(self, spec: dict[str, Any] | None = None) -> None:
        """The kubeconfig, the cluster (reachable, Knative served, may be read) and model storage named."""
        from fnpack.targets.knative.storage import open_store

        settings = self.settings.over(KnativeSettings.from_spec(spec)) if spec else self.settings
        self.cluster.in_namespace(settings.namespace).kube.list("services", label_selector=f"{m.MANAGED_BY}=fnpack")
        open_store(settings)

    # --- reading -----------------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        summaries = []
        for service in self.cluster.functions():
            name = service["metadata"]["name"]
            numbers = [v.number for v in self.cluster.versions(name, require=False)]
            summaries.append(FunctionSummary(name, len(numbers), max(numbers, default=0),
                                             self.cluster.aliases(name, service)))
        return summaries

    def versions(self, name: str) -> list[Version]:
        return self.cluster.versions(name)

    def aliases(self, name: str) -> dict[str, AliasState]:
        return self.cluster.aliases(name)

    def history(self, name: str, alias: str) -> list[AliasMove]:
        moves, _ = AliasObjects(self.cluster.kube, name).read(name, alias)
        if not moves:
            raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"`fnpack alias list {name}` lists them")
        return moves

    # --- moving ------------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        # Knative splits by whole percents: a split it cannot route is refused before anything is read, and
        # the weight recorded is the one routed (0.1000001 is 10%).
        state = AliasState(state.primary, state.canary, m.percent(state.weight) / 100)
        objects = AliasObjects(self.cluster.kube, name)
        return move_alias(objects, objects, name, alias, state, versions=self._numbers(name), actor=actor(),
                          reason=reason, expect=expect)

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        objects = AliasObjects(self.cluster.kube, name)
        return rollback_alias(objects, objects, name, alias, versions=self._numbers(name), actor=actor(),
                              reason=reason)

    def _numbers(self, name: str) -> list[int]:
        return [v.number for v in self.versions(name)]

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        cluster, kube = self.cluster, self.cluster.kube
        found = cluster.versions(name)
        if version is None:
            for route in cluster.alias_routes(name):
                kube.delete("routes", route["metadata"]["name"])
            kube.delete("services", name)  # with it goes each alias's history (a new function starts afresh)
            for revision in cluster.revisions(name):  # Kubernetes' garbage collector would; not every cluster runs it
                kube.delete("revisions", revision["metadata"]["name"])
            return found
        doomed = [v for v in found if v.number == version]
        if not doomed:
            raise NotFoundError(f"{name} has no version {version}",
                                hint=f"its versions are: {', '.join(f'v{v.number}' for v in found) or 'none'}")
        service = cluster.require(name)
        users = sorted(a for a, s in cluster.aliases(name, service).items() if version in s.versions)
        if users:
            raise ConflictError(f"{name} v{version} is in use by alias {', '.join(users)}",
                                hint=f"move the alias first (fnpack alias set {name} {users[0]} VERSION)")
        if version in cluster.referenced(name, service):  # routed there by another tool, or before live was set
            raise ConflictError(f"{name} v{version} receives traffic (the Service's or a Route's, not through an "
                                "alias fnpack knows)", hint=f"point live at another version first "
                                                            f"(fnpack alias set {name} live VERSION)")
        rest = [v.number for v in found if v.number != version]
        if not rest:
            raise ConflictError(f"v{version} is the only version of {name}: Knative would make it again from the "
                                "Service's template", hint=f"delete the whole function (fnpack delete {name})")
        self._untag(name, version, max(rest), service)
        kube.delete("revisions", m.revision_name(name, version))
        return doomed

    def _untag(self, name: str, version: int, newest: int, service: dict[str, Any]) -> None:
        """The Service without the version's tag; if its template made that version, the newest remaining
        version's template takes over (else Knative would make the deleted revision again)."""
        template = None
        if (service["spec"]["template"].get("metadata") or {}).get("name") == m.revision_name(name, version):
            revision = self.cluster.kube.get("revisions", m.revision_name(name, newest))
            if revision is None:
                raise ConflictError(f"the revision of {name} v{newest} is gone", hint="see `fnpack describe`")
            template = m.template_of(revision)
        body = m.service_update(name, self.cluster.namespace, service, template=template, untag=version)
        m.check(body)
        apply_guarded(self.cluster.kube, "services", body, service)

    # --- what runs ---------------------------------------------------------------------------------

    def running(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        service = self.cluster.require(name)
        instances, errors = [], []
        for revision in sorted(self.cluster.revisions(name), key=lambda r: m.version_of(name, r["metadata"]["name"])
                               or 0):
            status, reason, message = condition(revision)
            instances.append({"revision": revision["metadata"]["name"],
                              "version": m.version_of(name, revision["metadata"]["name"]), "ready": status,
                              "replicas": (revision.get("status") or {}).get("actualReplicas", 0)})
            if status == "False":
                errors.append(f"{revision['metadata']['name']}: {reason}: {message}")
        status, reason, message = condition(service)
        if status == "False":
            errors.append(f"Service {name}: {reason}: {message}")
        template = (service.get("spec") or {}).get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or [{}]
        details = {"namespace": self.cluster.namespace, "context": self.cluster.kube.connection.context,
                   "ready": status, "latest revision": (service.get("status") or {}).get("latestReadyRevisionName"),
                   "image": containers[0].get("image"),
                   "archive": (template.get("metadata", {}).get("annotations") or {}).get(m.ARCHIVE),
                   "logs": f"fnpack logs {name} --target knative"}
        return instances, errors, details

    def observer(self, prometheus: str | None = None) -> Observer:
        """The revisions' queue-proxy metrics, as a Prometheus server scraping them has them: Knative keeps no
        figures of its own that an API call returns."""
        from fnpack.canary.prometheus import PrometheusObserver, knative_queries, server_url

        url = server_url(prometheus, self.name, "the revisions' queue-proxy metrics", "revision_app_request_count")
        return PrometheusObserver(url, knative_queries(self.settings.namespace or self.cluster.namespace))

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """The function's pods' logs, through the core API's pods/log (the newest pod when following)."""
        kube = self.cluster.kube
        self.cluster.require(name)
        found = kube.request("GET", kube.path("pods", group="v1"),
                             params={"labelSelector": f"serving.knative.dev/service={name}"}).json()
        pods = sorted(found.get("items") or [], key=lambda p: p["metadata"].get("creationTimestamp", ""))
        if not pods:
            yield f"(no pods of {name} are running: it has scaled to zero, or is starting)\n"
            return
        for pod in pods[-1:] if follow else pods:
            pod_name = pod["metadata"]["name"]
            params = {"container": m.CONTAINER, "tailLines": str(tail), **({"follow": "true"} if follow else {})}
            path = kube.path("pods", pod_name, group="v1", subresource="log")
            if not follow:
                yield f"==> pod {pod_name} <==\n" if len(pods) > 1 else ""
                yield kube.request("GET", path, params=params).text
                continue
            with kube.stream("GET", path, params=params) as response:
                yield from response.iter_text()

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        url = self.invoke_url(qualifier)
        target, headers = url, {"Content-Type": "application/json"}
        if self.settings.ingress:  # the cluster's ingress, told which route by the Host header
            parts = urlsplit(url)
            target, headers["Host"] = f"{self.settings.ingress}{parts.path or '/'}", parts.netloc
        try:
            response = httpx.post(target, content=json.dumps(payload).encode(), headers=headers, timeout=300,
                                  trust_env=False)
        except httpx.ConnectError as exc:
            raise StartError(f"cannot reach {qualifier} at {target}: {exc}",
                             hint="the route's domain may not resolve from here: pass --ingress http://HOST:PORT "
                                  "(FNPACK_KNATIVE_INGRESS), the address of the cluster's ingress") from None
        except httpx.HTTPError as exc:
            raise FnpackError(f"invoking {qualifier} at {target} failed: {exc}") from None
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            if isinstance(body, dict) and "message" in body:
                detail = f"{body.get('type')}: " if body.get("type") else ""
                raise InvokeError(f"{response.status_code} {body.get('error', 'error')}: {detail}{body['message']}",
                                  status=response.status_code, body=body)
            raise InvokeError(f"{qualifier} answered {response.status_code}: {str(body)[:300]}",
                              hint="a 404 from the ingress: no such route (see `fnpack describe`)",
                              status=response.status_code, body=body)
        return Invocation(response.status_code, body, None)

    def invoke_url(self, qualifier: Qualifier) -> str:
        return self.cluster.invoke_url(qualifier)


