"""Deploying an archive to OpenFaaS through the shared skeleton: the planning hooks (read the gateway's
functions and model storage; change nothing) and the steps' execution.

A new version is `upload` (the archive to model storage, content-addressed: skipped when it is there
already) and `publish` (POST /system/functions of `NAME-vN`, then a wait until a replica is ready: the
runtime answers its health route only once the model is loaded). A version whose replicas never get ready
is deleted again (on CE every function counts against 15) and no alias moves. Promoting moves the alias's
router by the protocol of `targets.history` (history in S3, `aliases.RouterAliases`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fnpack.build.budget import human
from fnpack.errors import ConflictError, FnpackError, StartError, UsageError
from fnpack.targets.base import actor
from fnpack.targets.deploy import (Deployable, Deployer, Plan, Progress, Publish, RemoteState, Step, Upload,
                                   read_container_deployable)
from fnpack.targets.history import move_alias, now
from fnpack.targets.openfaas import functions as f
from fnpack.targets.openfaas.aliases import RouterAliases
from fnpack.targets.openfaas.gateway import GatewayApi
from fnpack.targets.openfaas.settings import OpenFaaSSettings
from fnpack.targets.openfaas.store import OpenFaaSStore, open_store
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier

READY_TIMEOUT = 600.0


class OpenFaaSDeployer(Deployer):
    """The plan's context holds the settings the archive's spec adds, the gateway, the function's
    deployments as read, the model storage, and the gateway's edition and function count."""

    target = "openfaas"
    build_command = "fnpack build"

    def __init__(self, api: GatewayApi, settings: OpenFaaSSettings, notes: list[str]) -> None:
        self.api = api
        self.settings = settings
        self.notes = notes  # printed by the CLI after the deploy: what CE ignores

    # --- planning (reads only) ------------------------------------------------------------------------

    def deployable(self, archive: Path) -> Deployable:
        deployable = read_container_deployable(archive, self.build_command)
        OpenFaaSSettings.from_spec(deployable.spec)  # a bad openfaas: section fails before any API call
        return deployable

    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        settings = self.settings.over(OpenFaaSSettings.from_spec(deployable.spec))
        store = open_store(settings)
        listed = self.api.functions()
        name = deployable.name
        versions = sorted((f.version_of(name, s) for s in listed if f.is_version(name, s)), key=lambda v: v.number)
        aliases = {s["labels"][f.ALIAS]: f.route_of(name, s["labels"][f.ALIAS], s)[0] for s in listed
                   if f.labels_of(s).get(f.FUNCTION) == name and f.labels_of(s).get(f.KIND) == "router"}
        edition = settings.edition or "ce"
        if edition == "ce":
            self.notes[:] = [f"OpenFaaS CE ignores {item}" for item in f.ce_ignores(deployable.spec)]
        remote = RemoteState(bool(versions or aliases), tuple(versions),
                             {a: s for a, s in sorted(aliases.items()) if s is not None},
                             last_number=max([int(x) for s in listed if f.labels_of(s).get(f.FUNCTION) == name
                                              for x in [f.labels_of(s).get(f.VERSION, "0")] if x.isdigit()],
                                             default=0))
        context = {"settings": settings, "api": self.api, "store": store, "stored": store.exists(deployable.sha256),
                   "edition": edition, "count": len(listed), "names": {s.get("name") for s in listed},
                   "deployed": any(v.sha256 == deployable.sha256 for v in versions)}
        return remote, context

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        settings: OpenFaaSSettings = context["settings"]
        store: OpenFaaSStore = context["store"]
        name, sha256, number = deployable.name, deployable.sha256, remote.next_number
        self._check_room(context, 1)
        steps: list[Step] = []
        if not context["stored"]:
            steps.append(Upload(f"upload {deployable.path.name} ({human(deployable.size)}) to {store.uri(sha256)}",
                                arguments={"to": store.uri(sha256), "size": deployable.size}))
        body = f.version_deployment(function=name, number=number, sha256=sha256, archive_uri=store.uri(sha256),
                                    spec=deployable.spec, runtime=str(deployable.manifest["runtime"]),
                                    settings=settings, storage_env=store.env(), created_at=now(), actor=actor(),
                                    edition=context["edition"])
        stored = " (already in model storage: nothing to upload)" if context["stored"] else ""
        steps.append(Publish(f"POST /system/functions {body['service']}: image {body['image']}, archive "
                             f"{store.uri(sha256)}{stored}", number=number, arguments={"deployment": body}))
        return steps

    def check_promotion(self, deployable: Deployable, alias: str, context: Mapping[str, Any]) -> None:
        if f.router_name(deployable.name, alias) not in context["names"]:  # the alias's router is new too
            self._check_room(context, 1 + (0 if context["deployed"] else 1))

    def _check_room(self, context: Mapping[str, Any], more: int) -> None:
        if context["edition"] == "ce" and context["count"] + more > f.CE_MAX_FUNCTIONS:
            raise UsageError(f"the OpenFaaS CE gateway holds at most {f.CE_MAX_FUNCTIONS} functions and has "
                             f"{context['count']}: this deploy needs {more} more (each version and each alias is a "
                             "function)", hint="delete versions no alias uses (fnpack delete NAME:VERSION), or use "
                                               "OpenFaaS Standard/Pro (--edition pro)")

    # --- executing -----------------------------------------------------------------------------------

    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        api: GatewayApi = plan.context["api"]
        if step.kind == "upload":
            plan.context["store"].put(plan.archive, plan.sha256)
            return
        if not isinstance(step, Publish):
            raise FnpackError(f"the openfaas target has no step {step.kind!r}")
        body = dict(step.arguments)["deployment"]
        if api.function(body["service"]) is not None:
            raise ConflictError(f"another deploy made {body['service']} since the plan was made; nothing was changed",
                                hint="deploy again")
        api.deploy(body)
        try:
            wait_ready(api, body["service"])
        except StartError:
            api.delete(body["service"])  # it never served; on CE it would take one of 15 places
            raise
        done.version = f.version_of(plan.function, api.function(body["service"]) or {"labels": body["labels"],
                                                                                      "annotations":
                                                                                          body["annotations"]})
        done.created = True

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        api: GatewayApi = plan.context["api"]
        status = api.function(f.version_name(plan.function, number))
        if status is None or not f.is_version(plan.function, status):
            raise ConflictError(f"{plan.function} v{number} was deleted since the plan was made", hint="deploy again")
        wait_ready(api, status["name"])
        done.version = f.version_of(plan.function, status)

    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        return aliases_of(plan.context["api"], plan.function)

    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        api: GatewayApi = plan.context["api"]
        store: OpenFaaSStore = plan.context["store"]
        router = RouterAliases(api, plan.context["settings"])
        return move_alias(store.history(), router, plan.function, alias, state,
                          versions=[v.number for v in versions_of(api, plan.function)], actor=actor(), reason=reason)

    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str:
        return invoke_url(plan.context["api"], qualifier)


def versions_of(api: GatewayApi, name: str) -> list[Any]:
    return sorted((f.version_of(name, s) for s in api.functions() if f.is_version(name, s)), key=lambda v: v.number)


def aliases_of(api: GatewayApi, name: str) -> dict[str, AliasState]:
    found = {}
    for status in api.functions():
        labels = f.labels_of(status)
        if labels.get(f.FUNCTION) == name and labels.get(f.KIND) == "router":
            state = f.route_of(name, labels[f.ALIAS], status)[0]
            if state is not None:
                found[labels[f.ALIAS]] = state
    return dict(sorted(found.items()))


def invoke_url(api: GatewayApi, qualifier: Qualifier) -> str:
    if qualifier.version is not None:
        return f"{api.url}/function/{f.version_name(qualifier.name, qualifier.version)}"
    return f"{api.url}/function/{f.router_name(qualifier.name, qualifier.alias or DEFAULT_ALIAS)}"


def wait_ready(api: GatewayApi, name: str, timeout: float = READY_TIMEOUT) -> None:
    """Until a replica of the function is ready (its model loaded). The gateway says nothing of replicas
    that crash, so their logs are read now and then: a worker that cannot start prints `error: ...` and
    exits, which ends the wait at once with that reason. A StartError after `timeout` otherwise."""
    deadline = time.monotonic() + timeout
    pause, next_look = 0.05, time.monotonic() + 1.0
    while True:
        status = api.function(name)
        if status is None:
            raise StartError(f"the OpenFaaS function {name} is gone while it was starting")
        if int(status.get("availableReplicas") or 0) >= 1:
            return
        if time.monotonic() >= next_look:
            reason = _start_failure(api, name)
            if reason:
                raise StartError(f"the OpenFaaS function {name} cannot start: {reason}",
                                 hint="no alias was moved and the version was deleted again; see `fnpack logs`")
            next_look = time.monotonic() + 2.0
        if time.monotonic() > deadline:
            raise StartError(f"the OpenFaaS function {name} had no ready replica within {timeout:.0f} s",
                             hint=f"see `fnpack logs` and `kubectl describe deploy -n openfaas-fn {name}`; no alias "
                                  "was moved and the version was deleted again")
        time.sleep(pause)
        pause = min(1.0, pause * 1.5)


def _start_failure(api: GatewayApi, name: str) -> str | None:
    """The worker's own `error: ...` line from the function's recent logs, if it wrote one."""
    try:
        for entry in api.logs(name, 50, False):
            text = str(entry.get("text") or "").strip()
            if text.startswith("error: "):
                return text.removeprefix("error: ")
    except FnpackError:  # a provider without logs: the timeout decides
        return None
    return None
