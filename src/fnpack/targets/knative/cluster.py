"""One namespace of a Knative cluster as fnpack sees it: its Services (functions), their revisions (versions),
aliases and URLs, and the waits on Knative's status. Reads only; writes are the deployer's and the alias
objects' (`deploy`, `aliases`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fnpack.errors import ConflictError, NotFoundError, StartError
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.kube import KubeApi
from fnpack.versions import DEFAULT_ALIAS, AliasState, Qualifier, Version

T = TypeVar("T")


def condition(obj: dict[str, Any] | None, kind: str = "Ready") -> tuple[str, str, str]:
    """(status, reason, message) of a Knative condition; ("Unknown", "", "") when not reported yet."""
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found.get("type") == kind:
            return str(found.get("status", "Unknown")), str(found.get("reason") or ""), str(found.get("message") or "")
    return "Unknown", "", ""


def wait_until(check: Callable[[], T | None], deadline: float, what: str) -> T:
    """Poll `check()` (every 20 ms at first, backing off to 1 s) until it returns something; a StartError
    naming `what` after `deadline` seconds."""
    started = time.monotonic()
    pause = 0.02
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() - started > deadline:
            raise StartError(f"{what} within {deadline:.0f} s",
                             hint="see `fnpack describe NAME --target knative` and the pods' events "
                                  "(kubectl describe revision ...)")
        time.sleep(pause)
        pause = min(1.0, pause * 1.5)


class Cluster:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def in_namespace(self, namespace: str | None) -> Cluster:
        return self if namespace in (None, self.namespace) else Cluster(self.kube.in_namespace(namespace))

    def where(self) -> str:
        return f"namespace {self.namespace} (context {self.kube.connection.context})"

    # --- functions and versions --------------------------------------------------------------------------

    def service(self, name: str) -> dict[str, Any] | None:
        """The function's Service; None when there is none; a Service fnpack did not make is refused."""
        found = self.kube.get("services", name)
        if found is not None and (found.get("metadata", {}).get("labels") or {}).get(m.FUNCTION) != name:
            raise ConflictError(f"the Knative Service {name} in {self.where()} was not made by fnpack",
                                hint="deploy under another name, or delete that Service (kn service delete)")
        return found

    def require(self, name: str) -> dict[str, Any]:
        found = self.service(name)
        if found is None:
            raise NotFoundError(f"no function {name} in {self.where()}",
                                hint="see `fnpack ls --target knative` (and --namespace)")
        return found

    def functions(self) -> list[dict[str, Any]]:
        items, _ = self.kube.list("services", label_selector=f"{m.MANAGED_BY}=fnpack")
        mine = [s for s in items if (s["metadata"].get("labels") or {}).get(m.FUNCTION) == s["metadata"]["name"]]
        return sorted(mine, key=lambda s: s["metadata"]["name"])

    def revisions(self, name: str) -> list[dict[str, Any]]:
        items, _ = self.kube.list("revisions", label_selector=f"{m.FUNCTION}={name}")
        return [r for r in items if m.version_of(name, r["metadata"]["name"]) is not None]

    def versions(self, name: str, require: bool = True) -> list[Version]:
        if require:
            self.require(name)
        versions = []
        for revision in self.revisions(name):
            meta = revision["metadata"]
            notes = meta.get("annotations") or {}
            versions.append(Version(function=name, number=int(m.version_of(name, meta["name"]) or 0),
                                    sha256=notes.get(m.SHA256, ""), created_at=notes.get(m.CREATED, ""),
                                    actor=notes.get(m.ACTOR, ""), target="knative"))
        return sorted(versions, key=lambda v: v.number)

    def alias_routes(self, name: str) -> list[dict[str, Any]]:
        """fnpack's Routes for the aliases other than live (not the Service's own Route, which carries the
        Service's labels but no alias label)."""
        items, _ = self.kube.list("routes", label_selector=f"{m.FUNCTION}={name},{m.ALIAS}")
        return [r for r in items if r["metadata"]["name"] == m.route_name(name, r["metadata"]["labels"][m.ALIAS])]

    def aliases(self, name: str, service: dict[str, Any] | None = None) -> dict[str, AliasState]:
        service = service or self.require(name)
        found: dict[str, AliasState] = {}
        live = m.live_state(name, service)
        if live is not None:
            found[DEFAULT_ALIAS] = live
        for route in self.alias_routes(name):
            state = m.state_of(name, route.get("spec", {}).get("traffic") or [])
            if state is not None:
                found[route["metadata"]["labels"][m.ALIAS]] = state
        return dict(sorted(found.items()))

    # --- status -------------------------------------------------------------------------------------------

    def wait_ready(self, revision: str, deadline: float, sha256: str | None = None) -> None:
        """Until the revision is Ready (its pods answer: the model is loaded); a StartError if Knative says it
        failed (or cannot make it), or after `deadline` seconds and a minute's grace for Knative's own
        verdict. `sha256`: the archive it must run (another deploy may have made a revision of that name)."""
        function = revision.rsplit("-v", 1)[0]

        def ready() -> bool | None:
            found = self.kube.get("revisions", revision)
            if found is not None and sha256 and m.fnpack_annotations(found).get(m.SHA256) != sha256:
                raise ConflictError(f"the revision {revision} runs another archive: another deploy made it at the "
                                    "same time", hint="deploy again")
            status, reason, message = condition(found)
            if found is None:  # not made yet: the Service may say why it cannot be
                configured, reason, message = condition(self.kube.get("services", function), "ConfigurationsReady")
                status = "False" if configured == "False" else "Unknown"
            if status == "True":
                return True
            if status == "False":
                raise StartError(f"the revision {revision} in {self.where()} failed to become ready: "
                                 f"{reason or 'no reason given'}: {message}",
                                 hint="no alias was moved to it and the Service went back to the previous "
                                      "version's template; fix the cause (see `fnpack logs`, `kubectl describe "
                                      "revision`), then deploy a new build")
            return None

        wait_until(ready, deadline + 60, f"the revision {revision} in {self.where()} did not become ready")

    def wait_observed(self, name: str, timeout: float = 30.0) -> None:
        """Until Knative's status of the Service follows its last change (its URLs are in it), or `timeout`:
        a deploy that waited for its revision need not fail on a route Knative is still programming."""
        def observed() -> bool | None:
            found = self.kube.get("services", name) or {}
            status = found.get("status") or {}
            done = status.get("observedGeneration") == (found.get("metadata") or {}).get("generation")
            return True if done and status.get("url") else None

        try:
            wait_until(observed, timeout, "")
        except StartError:
            pass

    def referenced(self, name: str, service: dict[str, Any]) -> set[int]:
        """The versions the function's Service and alias Routes send requests to, however they were set."""
        return m.referenced(name, [service, *self.alias_routes(name)])

    def invoke_url(self, qualifier: Qualifier) -> str:
        """The URL Knative gives the alias or version (`status`), or the one its default domain template gives
        when the status is not there yet."""
        name = qualifier.name
        service = self.require(name)
        status = service.get("status") or {}
        base = str(status.get("url") or f"http://{name}.{self.namespace}.svc.cluster.local")
        host = urlsplit(base).netloc
        domain = host.split(f"{name}.{self.namespace}.", 1)[-1]
        scheme = urlsplit(base).scheme or "http"
        if qualifier.version is not None:
            tag = m.version_tag(qualifier.version)
            for entry in status.get("traffic") or []:
                if entry.get("tag") == tag and entry.get("url"):
                    return str(entry["url"])
            return f"{scheme}://{tag}-{name}.{self.namespace}.{domain}"
        if qualifier.alias not in (None, DEFAULT_ALIAS):
            route_name = m.route_name(name, str(qualifier.alias))
            route = self.kube.get("routes", route_name)
            if route is None:
                raise NotFoundError(f"{name} has no alias {qualifier.alias!r} in {self.where()}",
                                    hint=f"`fnpack alias list {name} --target knative` lists them")
            url = (route.get("status") or {}).get("url")
            return str(url or f"{scheme}://{route_name}.{self.namespace}.{domain}")
        return base
