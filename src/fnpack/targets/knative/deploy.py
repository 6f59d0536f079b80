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
from fnpack.errors import ConflictError, FnpackError, UsageError
from fnpack.targets.base import actor
from fnpack.targets.catalog import target_info
from fnpack.targets.deploy import (Deployable, Deployer, Plan, Progress, Publish, RemoteState, SetAlias, Step, Upload,
                                   read_deployable)
from fnpack.targets.history import move_alias, now
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.aliases import AliasObjects, apply_guarded, fnpack_annotations, live_state
from fnpack.targets.knative.cluster import Cluster
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
        deployable = read_deployable(archive, self.build_command)
        built_for = str(deployable.manifest.get("target") or "local")
        if target_info(built_for).platform != "container":
            raise UsageError(f"{archive.name} is built for {built_for}, whose archives do not run in containers",
                             hint="build it with `fnpack build` (the same archive runs locally, on Knative and on "
                                  "OpenFaaS)")
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
            remote = RemoteState(True, tuple(cluster.versions(name)), cluster.aliases(name, service))
        context = {"settings": settings, "cluster": cluster, "service": service, "store": store,
                   "stored": store.exists(deployable.sha256)}
        return remote, context

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        settings: KnativeSettings = context["settings"]
        store: ArchiveStore = context["store"]
        cluster: Cluster = context["cluster"]
        name, sha256 = deployable.name, deployable.sha256
        last = int(fnpack_annotations(context["service"] or {}).get(m.LAST_VERSION, "0") or 0)
        number = max(remote.next_number, last + 1)
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
        elif isinstance(step, Publish):
            arguments = dict(step.arguments)
            self._publish(cluster, plan.function, int(step.number or 0), arguments["template"], plan.remote.exists)
            cluster.wait_ready(arguments["revision"], plan.context["settings"].deadline_for(
                "nvidia.com/gpu" in arguments["template"]["spec"]["containers"][0]["resources"]["limits"]))
            done.version = next(v for v in cluster.versions(plan.function) if v.number == step.number)
            done.created = True
        else:
            raise FnpackError(f"the knative target has no step {step.kind!r}")

    def _publish(self, cluster: Cluster, name: str, number: int, template: dict[str, Any], existed: bool) -> None:
        """Apply the Service with the new template; its traffic keeps every alias where it is (read now, not
        at planning) and gains the new version's tag."""
        service = cluster.service(name)
        if service is None and existed:
            raise ConflictError(f"the Knative Service {name} was deleted since the plan was made", hint="deploy again")
        if service is not None and not existed:
            raise ConflictError(f"the Knative Service {name} was created by someone else since the plan was made",
                                hint="deploy again")
        traffic = (service or {}).get("spec", {}).get("traffic") or []
        body = m.service_manifest(name, cluster.namespace, template,
                                  m.service_traffic(name, live_state(name, service) if service else None, number,
                                                    [*m.tagged_versions(name, traffic), number]),
                                  {**fnpack_annotations(service or {}), m.LAST_VERSION: str(number)})
        m.check(body)
        if service is None:
            cluster.kube.apply("services", body)
        else:  # guarded: a move or deploy since this read is a conflict
            apply_guarded(cluster.kube, "services", body, service)

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        cluster: Cluster = plan.context["cluster"]
        done.version = next((v for v in cluster.versions(plan.function) if v.number == number), None)
        if done.version is None:
            raise ConflictError(f"{plan.function} v{number} was deleted since the plan was made", hint="deploy again")
        # An alias moves to it next: not if its pods never became ready (a failed deploy of the same archive).
        cluster.wait_ready(m.revision_name(plan.function, number), plan.context["settings"].deadline_for(False))

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
    service = plan.context["service"] or {}
    name = plan.function
    template = service.get("spec", {}).get("template")
    number = None
    for step in plan.steps:
        if isinstance(step, Publish):
            template, number = dict(step.arguments)["template"], int(step.number or 0)
    if template is None:
        raise ConflictError(f"the Knative Service {name} has no template to export", hint="deploy it first")
    traffic = service.get("spec", {}).get("traffic") or []
    versions = [*m.tagged_versions(name, traffic), *([number] if number else [])]
    newest = number or max(versions, default=1)
    live = live_state(name, service) if service else None
    annotations = {**fnpack_annotations(service), **({m.LAST_VERSION: str(number)} if number else {})}
    extra: list[dict[str, Any]] = []
    for step in plan.steps:
        if not isinstance(step, SetAlias):
            continue
        state = AliasState(step.version or newest)
        moves = m.history_of(service if step.alias == DEFAULT_ALIAS else
                             (cluster.kube.get("routes", m.route_name(name, step.alias)) or {}))
        moves.append(AliasMove(step.before, state, actor(), now(), step.reason))
        if step.alias == DEFAULT_ALIAS:
            live = state
            annotations[m.HISTORY] = m.history_text(moves)
        else:
            extra.append(m.route_manifest(name, step.alias, cluster.namespace, state,
                                          {m.HISTORY: m.history_text(moves)}))
    manifests = [m.service_manifest(name, cluster.namespace, template,
                                    m.service_traffic(name, live, newest, versions), annotations), *extra]
    for manifest in manifests:
        m.check(manifest)
    return manifests

