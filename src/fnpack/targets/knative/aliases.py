"""Knative aliases as both halves of the alias-move protocol (`targets.history`), over one object each.

An alias's traffic and its history live in the same object (the Service's traffic for `live`, a Route
`NAME-ALIAS` for the others; the history in its `fnpack.dev/history` annotation), so the protocol's two
writes become one: `write` stages the history on the object as it was read and `apply` sends traffic and
history together, guarded by the resourceVersion read. A concurrent move, by fnpack, kn or kubectl, makes
the API server answer 409: a ConflictError, and nothing changed. Nothing can be recorded and not applied.
"""

from __future__ import annotations

from typing import Any

from fnpack.errors import ConflictError, NotFoundError
from fnpack.targets.history import AliasRouter, HistoryStore
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.kube import KubeApi
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState


def fnpack_annotations(obj: dict[str, Any]) -> dict[str, str]:
    """The annotations fnpack owns on an object (a rewrite keeps them; others' belong to their managers)."""
    found = obj.get("metadata", {}).get("annotations") or {}
    return {key: value for key, value in found.items() if key.startswith("fnpack.dev/")}


def live_state(function: str, service: dict[str, Any]) -> AliasState | None:
    """Where `live` points: the Service's untagged traffic, once live has been set (until then Knative
    routes the Service to the newest version, which is no alias)."""
    if not m.history_of(service):
        return None
    return m.state_of(function, service.get("spec", {}).get("traffic") or [])


def resource_version(obj: dict[str, Any] | None) -> str | None:
    return (obj or {}).get("metadata", {}).get("resourceVersion")


def _intent(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What fnpack's writes decide about an object: its spec and fnpack's annotations (not its status)."""
    return obj.get("spec"), fnpack_annotations(obj), obj.get("metadata", {}).get("labels")


def apply_guarded(kube: KubeApi, resource: str, body: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    """Apply `body` only if the object is still as `seen` said. Knative's controllers write the status of
    what fnpack writes, and every status write changes the resourceVersion: a conflict where only the
    status changed is retried with the new resourceVersion; any other change is the caller's ConflictError."""
    for _attempt in range(10):
        body["metadata"]["resourceVersion"] = resource_version(seen)
        try:
            return kube.apply(resource, body)
        except ConflictError:
            fresh = kube.get(resource, body["metadata"]["name"])
            if fresh is None or _intent(fresh) != _intent(seen):
                raise
            seen = fresh
    return kube.apply(resource, body)  # still only status changing: one last try, whose conflict is final


class AliasObjects(HistoryStore, AliasRouter):
    """The aliases of one function's Service and Routes, for one move (or a few, one after the other)."""

    def __init__(self, kube: KubeApi, function: str) -> None:
        self.kube = kube
        self.function = function
        self._seen: dict[str, dict[str, Any] | None] = {}  # alias -> its object as last read
        self._staged: dict[str, list[AliasMove]] = {}

    def where(self, function: str, alias: str) -> str:
        kind, name = self._object_name(alias)
        return f"the {m.HISTORY} annotation of {kind} {name} in namespace {self.kube.namespace}"

    def _object_name(self, alias: str) -> tuple[str, str]:
        return ("Service", self.function) if alias == DEFAULT_ALIAS else ("Route", m.route_name(self.function, alias))

    def load(self, alias: str) -> dict[str, Any] | None:
        """The alias's object, fresh from the cluster; the Service must exist for any alias."""
        service = self.kube.get("services", self.function)
        if service is None or service.get("metadata", {}).get("labels", {}).get(m.FUNCTION) != self.function:
            raise NotFoundError(f"no function {self.function} in namespace {self.kube.namespace} (no Knative Service "
                                "of fnpack's by that name)", hint="see `fnpack ls --target knative`")
        obj = service if alias == DEFAULT_ALIAS else self.kube.get("routes", m.route_name(self.function, alias))
        if obj is not None and alias != DEFAULT_ALIAS:
            labels = obj.get("metadata", {}).get("labels") or {}
            if (labels.get(m.FUNCTION), labels.get(m.ALIAS)) != (self.function, alias):
                raise ConflictError(f"the Route {m.route_name(self.function, alias)} exists but is not alias {alias} "
                                    f"of {self.function} (another function's or another tool's)",
                                    hint="pick another alias name, or delete that Route")
        self._seen[alias] = obj
        return obj

    # --- HistoryStore ---------------------------------------------------------------------------------

    def read(self, function: str, alias: str) -> tuple[list[AliasMove], str | None]:
        obj = self.load(alias)
        return m.history_of(obj), resource_version(obj)

    def write(self, function: str, alias: str, moves: list[AliasMove], token: Any) -> Any:
        if token != resource_version(self._seen.get(alias)):
            raise ConflictError(f"{function}:{alias} changed since it was read; nothing was changed",
                                hint=f"see `fnpack alias history {function} {alias}`, then try again")
        self._staged[alias] = moves  # sent with the traffic, in `apply`
        return token

    # --- AliasRouter ----------------------------------------------------------------------------------

    def current(self, function: str, alias: str) -> tuple[AliasState | None, str | None]:
        obj = self._seen[alias] if alias in self._seen else self.load(alias)
        if obj is None:
            return None, None
        if alias == DEFAULT_ALIAS:
            return live_state(function, obj), resource_version(obj)
        return m.state_of(function, obj.get("spec", {}).get("traffic") or []), resource_version(obj)

    def apply(self, function: str, alias: str, state: AliasState, revision: Any) -> None:
        moves = self._staged.pop(alias)
        obj = self._seen.get(alias)
        history = {m.HISTORY: m.history_text(moves)}
        if alias == DEFAULT_ALIAS:
            assert obj is not None  # load() refuses a function without its Service
            traffic = obj.get("spec", {}).get("traffic") or []
            body = m.service_manifest(function, self.kube.namespace, obj["spec"]["template"],
                                      m.service_traffic(function, state, state.primary, m.tagged_versions(function,
                                                                                                          traffic)),
                                      {**fnpack_annotations(obj), **history})
        else:
            body = m.route_manifest(function, alias, self.kube.namespace, state, history)
        m.check(body)
        if obj is None:  # a new alias: created, so that of two first moves one gets AlreadyExists
            written = self.kube.create("routes", body)
        else:
            if revision != resource_version(obj):
                raise ConflictError(f"{function}:{alias} changed since it was read; nothing was changed")
            written = apply_guarded(self.kube, "services" if alias == DEFAULT_ALIAS else "routes", body, obj)
        self._seen[alias] = written
