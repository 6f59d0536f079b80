"""Deploying an archive to Knative through the shared skeleton: the planning hooks (read the Service, its
revisions and model storage; change nothing) and the steps' execution.

A new version is two steps: `upload` (the archive to model storage, content-addressed: skipped when it is
there already, whoever put it there) and `publish` (a server-side apply of the Service with a new template,
whose revision is `NAME-vN`, then a wait until that revision is Ready: its pods answer only once the model
is loaded). Promoting moves the alias by the protocol of `targets.history` over `aliases.AliasObjects`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fnpack.build.budget import human
from fnpack.errors import ConflictError, FnpackError, StartError
from fnpack.targets.base import actor
from fnpack.targets.deploy import (Deployable, Deployer, Plan, Progress, Publish, RemoteState, SetAlias, Step, Upload,
                                   read_container_deployable)
from fnpack.targets.history import move_alias, now
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.aliases import AliasObjects
from fnpack.targets.knative.cluster import Cluster
from fnpack.targets.knative.writes import apply_guarded, create_owned
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.targets.knative.storage import ArchiveStore, open_store
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier


class KnativeDeployer(Deployer):
    """The plan's context holds the settings the archive's spec adds, the cluster in their namespace, the
    Service as read, the model storage and whether the archive is in it already."""

    target = "knative"
    build_command = "fnpack build"

    def __init__(self, cluster: Cluster, settings: KnativeSettings) -> None:
        self.cluster = cluster
        self.settings = settings

    # --- planning (reads only) ------------------------------------------------------------------------

    def deployable(self, archive: Path) -> Deployable:
        deployable = read_container_deployable(archive, self.build_command)
        KnativeSettings.from_spec(deployable.spec)  # a bad knative: section fails before any API call
        return deployable

    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        settings = self.settings.over(KnativeSettings.from_spec(deployable.spec))
        cluster = self.cluster.in_namespace(settings.namespace)
        store = open_store(settings)
        name = deployable.name
        service = cluster.service(name)
        remote = RemoteState()
        if service is not None:
            remote = RemoteState(True, tuple(cluster.versions(name)), cluster.aliases(name, service),
                                 last_number=m.last_version(service))
        context = {"settings": settings, "cluster": cluster, "service": service, "store": store,
                   "stored": store.exists(deployable.sha256)}
        return remote, context

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        settings: KnativeSettings = context["settings"]
        store: ArchiveStore = context["store"]
        cluster: Cluster = context["cluster"]
        name, sha256 = deployable.name, deployable.sha256
        number = remote.next_number
        steps: list[Step] = []
        if not context["stored"]:
            steps.append(Upload(f"upload {deployable.path.name} ({human(deployable.size)}) to {store.where(sha256)}",
                                arguments={"to": store.where(sha256), "size": deployable.size}))
        template = m.revision_template(function=name, number=number, sha256=sha256, archive_uri=store.uri(sha256),
                                       spec=deployable.spec, runtime=str(deployable.manifest["runtime"]),
                                       settings=settings, storage=store.pod(), created_at=now(), actor=actor())
        container = template["spec"]["containers"][0]
        stored = " (already in model storage: nothing to upload)" if context["stored"] else ""
        steps.append(Publish(f"apply Service {name} in namespace {cluster.namespace}: revision "
                             f"{m.revision_name(name, number)}, image {container['image']}, archive "
                             f"{store.where(sha256)}{stored}", number=number,
                             arguments={"revision": m.revision_name(name, number), "template": template}))
        return steps

    # --- executing -----------------------------------------------------------------------------------

    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        cluster: Cluster = plan.context["cluster"]
        if step.kind == "upload":
            plan.context["store"].put(plan.archive, plan.sha256)
            return
        if not isinstance(step, Publish):
            raise FnpackError(f"the knative target has no step {step.kind!r}")
        name, number = plan.function, int(step.number or 0)
        template = dict(step.arguments)["template"]
        self._publish(cluster, name, number, template, plan.remote.exists)
        gpu = "nvidia.com/gpu" in template["spec"]["containers"][0]["resources"]["limits"]
        try:
            cluster.wait_ready(m.revision_name(name, number), plan.context["settings"].deadline_for(gpu), plan.sha256)
        except StartError:
            self._hand_back(cluster, name, number)
            raise
        self._tag(cluster, name, number)
        cluster.wait_observed(name)  # the URLs the deploy prints are Knative's own
        done.version = next(v for v in cluster.versions(name) if v.number == number)
        done.created = True

    def _publish(self, cluster: Cluster, name: str, number: int, template: dict[str, Any], existed: bool) -> None:
        """Apply the Service with the new template (its traffic, read now, stays as it is: the new version
        gets its tag once ready, as Knative programs no route while a target is not ready)."""
        service = cluster.service(name)
        if service is None and existed:
            raise ConflictError(f"the Knative Service {name} was deleted since the plan was made", hint="deploy again")
        if service is not None and not existed:
            raise ConflictError(f"the Knative Service {name} was created by someone else since the plan was made",
                                hint="deploy again")
        if service is not None and (m.last_version(service) >= number or
                                    cluster.kube.get("revisions", m.revision_name(name, number)) is not None):
            raise ConflictError(f"another deploy made {name} v{number} since the plan was made; nothing was changed",
                                hint="deploy again")
        body = m.service_update(name, cluster.namespace, service, template=template,
                                annotations={m.LAST_VERSION: str(number)})
        m.check(body)
        if service is not None:
            apply_guarded(cluster.kube, "services", body, service)
            return
        if cluster.kube.get("routes", name) is not None:  # an alias of another function has this host
            raise ConflictError(f"a Route {name} exists already (an alias of another function?): its host would be "
                                f"this function's", hint="deploy under another name")
        try:
            create_owned(cluster.kube, "services", body)
        except ConflictError:
            raise ConflictError(f"the Knative Service {name} was created by someone else at the same time; nothing "
                                "was changed", hint="deploy again") from None

    def _tag(self, cluster: Cluster, name: str, number: int) -> None:
        """The version's own URL (and Knative's promise not to collect it): its 0% tag `vN`."""
        service = cluster.require(name)
        body = m.service_update(name, cluster.namespace, service, tag=number)
        if body["spec"]["traffic"] != (service.get("spec") or {}).get("traffic"):
            m.check(body)
            apply_guarded(cluster.kube, "services", body, service)

    def _hand_back(self, cluster: Cluster, name: str, number: int) -> None:
        """After a revision that never got ready: the Service's template goes back to the newest other
        version's, so the Service is ready again (the failed revision stays, a version to delete)."""
        older = [v.number for v in cluster.versions(name) if v.number != number]
        service = cluster.service(name)
        revision = cluster.kube.get("revisions", m.revision_name(name, max(older))) if older else None
        if service is None or revision is None:
            return
        body = m.service_update(name, cluster.namespace, service, template=m.template_of(revision))
        m.check(body)
        apply_guarded(cluster.kube, "services", body, service)

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        cluster: Cluster = plan.context["cluster"]
        done.version = next((v for v in cluster.versions(plan.function) if v.number == number), None)
        if done.version is None:
            raise ConflictError(f"{plan.function} v{number} was deleted since the plan was made", hint="deploy again")
        # An alias moves to it next: not if its pods never became ready (a failed deploy of the same archive).
        revision = m.revision_name(plan.function, number)
        cluster.wait_ready(revision, m.deadline_of(cluster.kube.get("revisions", revision),
                                                   plan.context["settings"].deadline_for(False)), plan.sha256)
        self._tag(cluster, plan.function, number)

    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        return plan.context["cluster"].aliases(plan.function)

    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        cluster: Cluster = plan.context["cluster"]
        objects = AliasObjects(cluster.kube, plan.function)
        return move_alias(objects, objects, plan.function, alias, state,
                          versions=[v.number for v in cluster.versions(plan.function)], actor=actor(), reason=reason)

    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str:
        return plan.context["cluster"].invoke_url(qualifier)


def planned_manifests(plan: Plan) -> list[dict[str, Any]]:
    """What the cluster will hold for the function once the plan is carried out, as manifests `kubectl apply`
    takes (for GitOps: `fnpack deploy --dry-run -o yaml`). The alias move is in them with its history."""
    cluster: Cluster = plan.context["cluster"]
    service = plan.context["service"]
    name = plan.function
    template, number = None, None
    for step in plan.steps:
        if isinstance(step, Publish):
            template, number = dict(step.arguments)["template"], int(step.number or 0)
    live: AliasState | None = None
    annotations = {m.LAST_VERSION: str(number)} if number else {}
    routes: list[dict[str, Any]] = []
    for step in plan.steps:
        if not isinstance(step, SetAlias):
            continue
        state = AliasState(step.version or number or 1)
        if step.alias == DEFAULT_ALIAS:
            live, seen = state, service
        else:
            seen = cluster.kube.get("routes", m.route_name(name, step.alias))
        history = m.history_text([*m.history_of(seen), AliasMove(step.before, state, actor(), now(), step.reason)])
        if step.alias == DEFAULT_ALIAS:
            annotations[m.HISTORY] = history
        else:
            routes.append(m.route_manifest(name, step.alias, cluster.namespace, state, {m.HISTORY: history}))
    manifests = [m.service_update(name, cluster.namespace, service, template=template, live=live, tag=number,
                                  annotations=annotations), *routes]
    for manifest in manifests:
        m.check(manifest)
    return manifests
