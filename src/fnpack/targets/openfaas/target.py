"""The openfaas target: the same container archive as the local platform, behind an OpenFaaS gateway,
through its REST API (`gateway`).

- Each version is a function `NAME-vN` (the runtime image on the archive in model storage), read back
  from its labels and annotations alone (`functions`); each alias is a router function (`NAME` for
  live, `NAME-ALIAS` for others) that splits by exact weights between two versions (`fnpack.router`),
  moved by a rolling update of the router (`aliases`), with the shared history in S3 (`store`).
- Deploys go through the shared skeleton with the hooks of `deploy`; `-o yaml` exports a stack.yml that
  `faas-cli deploy` takes (`stack`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from fnpack.errors import ConflictError, NotFoundError
from fnpack.targets.base import FunctionSummary, Invocation, InvokeError, Target, actor
from fnpack.targets.deploy import Deployer, Plan, Publish, SetAlias
from fnpack.targets.history import ANY, Expect, move_alias, rollback_alias
from fnpack.targets.openfaas import functions as f
from fnpack.targets.openfaas.aliases import RouterAliases
from fnpack.targets.openfaas.deploy import aliases_of, invoke_url, versions_of
from fnpack.targets.openfaas.gateway import GatewayApi
from fnpack.targets.openfaas.settings import OpenFaaSSettings
from fnpack.targets.openfaas.store import OpenFaaSStore, open_store
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.canary.observer import Observer

GATEWAY_NAMESPACE = "openfaas-fn"  # the gateway's function namespace when none is set (its metrics' label)


class OpenFaaSTarget(Target):
    name = "openfaas"

    def __init__(self, settings: OpenFaaSSettings | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings or OpenFaaSSettings.layered({})
        self.api = GatewayApi(self.settings.gateway_url(), self.settings.credentials(), self.settings.namespace,
                              transport)
        self.notes: list[str] = []  # what the gateway will ignore, said after a deploy

    def close(self) -> None:
        self.api.close()

    def deployer(self) -> Deployer:
        from fnpack.targets.openfaas.deploy import OpenFaaSDeployer

        return OpenFaaSDeployer(self.api, self.settings, self.notes)

    def preflight(self, spec: dict[str, Any] | None = None) -> None:
        """The gateway reachable, the credentials accepted, model storage named."""
        settings = self.settings.over(OpenFaaSSettings.from_spec(spec)) if spec else self.settings
        self.api.functions()
        open_store(settings)

    def export(self, plan: Plan) -> str:
        """The plan as a stack.yml for `faas-cli deploy -f` (the routers with their moved routes)."""
        from fnpack.targets.openfaas.stack import stack_yaml

        deployments = [dict(step.arguments)["deployment"] for step in plan.steps if isinstance(step, Publish)]
        number = next((int(step.number or 0) for step in plan.steps if isinstance(step, Publish)), None)
        for step in plan.steps:
            if isinstance(step, SetAlias):
                state = AliasState(step.version or number or 1)
                revision = (RouterAliases(self.api, self.settings).current(plan.function, step.alias)[1] or 0) + 1
                deployments.append(f.router_deployment(function=plan.function, alias=step.alias, state=state,
                                                       revision=revision, settings=plan.context["settings"]))
        return stack_yaml(self.api.url, deployments)

    # --- reading -----------------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        listed = self.api.functions()
        names = sorted({f.labels_of(s)[f.FUNCTION] for s in listed if f.labels_of(s).get(f.FUNCTION)})
        summaries = []
        for name in names:
            numbers = [int(f.labels_of(s)[f.VERSION]) for s in listed if f.is_version(name, s)]
            summaries.append(FunctionSummary(name, len(numbers), max(numbers, default=0), aliases_of(self.api, name)))
        return summaries

    def versions(self, name: str) -> list[Version]:
        found = versions_of(self.api, name)
        if not found and not aliases_of(self.api, name):
            raise NotFoundError(f"no function {name} on the OpenFaaS gateway at {self.api.url}",
                                hint="see `fnpack ls --target openfaas`")
        return found

    def aliases(self, name: str) -> dict[str, AliasState]:
        self.versions(name)  # an unknown function is NotFound, not "no aliases"
        return aliases_of(self.api, name)

    def history(self, name: str, alias: str) -> list[AliasMove]:
        moves = self._store(name).history().read(name, alias)[0]
        if not moves:
            raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"`fnpack alias list {name}` lists them")
        return moves

    # --- moving ------------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        f.router_name(name, alias)  # a name too long is refused before anything is read
        return move_alias(self._store(name).history(), RouterAliases(self.api, self.settings), name, alias,
                          state, versions=self._numbers(name), actor=actor(), reason=reason, expect=expect)

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        return rollback_alias(self._store(name).history(), RouterAliases(self.api, self.settings), name,
                              alias, versions=self._numbers(name), actor=actor(), reason=reason)

    def _store(self, name: str) -> OpenFaaSStore:
        """The function's model storage (and history): the settings', else where its archives are, as its
        versions' annotations say, so a second machine needs the gateway alone."""
        if self.settings.storage:
            return open_store(self.settings)
        for status in self.api.functions():
            uri = f.annotations_of(status).get(f.ARCHIVE, "") if f.is_version(name, status) else ""
            if uri.startswith("s3://") and "/archives/" in uri:
                return open_store(self.settings.over(OpenFaaSSettings.layer(
                    {"storage": uri.rsplit("/archives/", 1)[0]}, "the function's archive")))
        return open_store(self.settings)  # none: the usage error that says how to name it

    def _numbers(self, name: str) -> list[int]:
        return [v.number for v in self.versions(name)]

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        found = self.versions(name)
        if version is None:
            for alias in aliases_of(self.api, name):
                self.api.delete(f.router_name(name, alias))
            for each in found:
                self.api.delete(f.version_name(name, each.number))
            self._store(name).history().delete_all(name)  # a new function must not inherit moves
            return found
        doomed = [v for v in found if v.number == version]
        if not doomed:
            raise NotFoundError(f"{name} has no version {version}",
                                hint=f"its versions are: {', '.join(f'v{v.number}' for v in found) or 'none'}")
        users = sorted(a for a, s in aliases_of(self.api, name).items() if version in s.versions)
        if users:
            raise ConflictError(f"{name} v{version} is in use by alias {', '.join(users)}",
                                hint=f"move the alias first (fnpack alias set {name} {users[0]} VERSION)")
        self.api.delete(f.version_name(name, version))
        return doomed

    def running(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        self.versions(name)
        instances, errors = [], []
        for status in self.api.functions():
            labels = f.labels_of(status)
            if labels.get(f.FUNCTION) != name:
                continue
            wanted, ready = int(status.get("replicas") or 0), int(status.get("availableReplicas") or 0)
            instances.append({"function": status.get("name"), "kind": labels.get(f.KIND),
                              "version": int(labels[f.VERSION]) if str(labels.get(f.VERSION, "")).isdigit() else None,
                              "replicas": wanted, "ready": ready,
                              "invocations": int(status.get("invocationCount") or 0)})
            if wanted and not ready:
                errors.append(f"{status.get('name')}: no ready replica of {wanted}")
        return sorted(instances, key=lambda i: str(i["function"])), errors, \
            {"gateway": self.api.url, "logs": f"fnpack logs {name} --target openfaas"}

    def observer(self, prometheus: str | None = None) -> Observer:
        """The gateway's metrics per function (each version is one), as a Prometheus server scraping the
        gateway has them: the gateway's REST API tells invocation counts but no errors nor latencies."""
        from fnpack.canary.prometheus import PrometheusObserver, openfaas_queries, server_url

        url = server_url(prometheus, self.name, "the gateway's metrics, OpenFaaS installs a server beside it",
                         "gateway_function_invocation_total")
        return PrometheusObserver(url, openfaas_queries(self.settings.namespace or GATEWAY_NAMESPACE))

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """The gateway's /system/logs of the function's versions and routers, one line per entry."""
        names = [str(s["name"]) for s in self.api.functions()
                 if f.labels_of(s).get(f.FUNCTION) == name and s.get("name")]
        if not names:
            raise NotFoundError(f"no function {name} on the OpenFaaS gateway at {self.api.url}")
        for function in sorted(names) if not follow else [f.router_name(name, DEFAULT_ALIAS)]:
            for entry in self.api.logs(function, tail, follow):
                yield f"{entry.get('timestamp', '')} {entry.get('instance') or function} {entry.get('text', '')}" \
                    .rstrip("\n") + "\n"

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        target = invoke_url(self.api, qualifier).removeprefix(f"{self.api.url}/function/")
        response = self.api.invoke(target, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            if response.status_code == 404 and not isinstance(body, dict):
                raise NotFoundError(f"{qualifier}: no such function, version or alias on the gateway at "
                                    f"{self.api.url}", hint=f"see `fnpack describe {qualifier.name} --target openfaas`")
            detail = f"{body.get('error', 'error')}: {body.get('message', '')}" if isinstance(body, dict) else \
                str(body)[:300]
            raise InvokeError(f"{qualifier} answered {response.status_code}: {detail}", status=response.status_code,
                              body=body)
        version = response.headers.get("x-fnpack-version")
        number = int(version) if version and version.isdigit() else qualifier.version
        return Invocation(response.status_code, body, number)

    def invoke_url(self, qualifier: Qualifier) -> str:
        return invoke_url(self.api, qualifier)

