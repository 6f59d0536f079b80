"""Knative aliases as both halves of the alias-move protocol (`targets.history`), over one object each.

An alias's traffic and its history live in the same object (the Service's traffic for `live`, a Route
`NAME-ALIAS` for the others; the history in its `fnpack.dev/history` annotation), so the protocol's two
writes become one: `write` stages the history on the object as it was read and `apply` sends traffic and
history together, guarded by the resourceVersion read (`writes`). A concurrent move, by fnpack, kn or
kubectl, makes the API server answer 409: a ConflictError, and nothing changed. Nothing can be recorded
and not applied, so the protocol's undo of a record only drops what was staged.
"""

from __future__ import annotations

from typing import Any

from fnpack.errors import ConflictError
from fnpack.targets.history import AliasRouter, HistoryStore
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.kube import KubeApi
from fnpack.targets.knative.writes import apply_guarded, create_owned, resource_version
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState


class AliasObjects(HistoryStore, AliasRouter):
    """The aliases of one function's Service and Routes, for one move (or a few, one after the other)."""

    def __init__(self, kube: KubeApi, function: str) -> None:
        from fnpack.targets.knative.cluster import Cluster

        self.kube = kube
        self.cluster = Cluster(kube)
        self.function = function
        self._seen: dict[str, dict[str, Any] | None] = {}  # alias -> its object as last read
        self._staged: dict[str, list[AliasMove]] = {}

    def where(self, function: str, alias: str) -> str:
        kind, name = self._object_name(alias)
        return f"the {m.HISTORY} annotation of {kind} {name} in namespace {self.kube.namespace}"

    def _object_name(self, alias: str) -> tuple[str, str]:
        return ("Service", self.function) if alias == DEFAULT_ALIAS else ("Route", m.route_name(self.function, alias))

    def load(self, alias: str) -> dict[str, Any] | None:
        """The alias's object, fresh from the cluster; the function's Service must exist for any alias."""
        service = self.cluster.require(self.function)
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
        self._staged[alias] = moves  # sent with the traffic by `apply`, guarded by the resourceVersion read
        return token

    # --- AliasRouter ----------------------------------------------------------------------------------

    def current(self, function: str, alias: str) -> tuple[AliasState | None, str | None]:
        obj = self._seen[alias] if alias in self._seen else self.load(alias)
        if obj is None:
            return None, None
        if alias == DEFAULT_ALIAS:
            return m.live_state(function, obj), resource_version(obj)
        return m.state_of(function, obj.get("spec", {}).get("traffic") or []), resource_version(obj)

    def apply(self, function: str, alias: str, state: AliasState, revision: Any) -> None:
        history = {m.HISTORY: m.history_text(self._staged.pop(alias))}
        obj = self._seen.get(alias)
        if alias == DEFAULT_ALIAS:
            assert obj is not None  # load() refuses a function without its Service
            body = m.service_update(function, self.kube.namespace, obj, live=state, annotations=history)
        else:
            body = m.route_manifest(function, alias, self.kube.namespace, state, history)
        m.check(body)
        if obj is not None:
            self._seen[alias] = apply_guarded(self.kube, "services" if alias == DEFAULT_ALIAS else "routes", body, obj)
            return
        route = body["metadata"]["name"]
        if self.kube.get("services", route) is not None:  # its host would be that Service's own
            raise ConflictError(f"alias {alias} of {function} would be the Route {route}, the name of a function "
                                "(Knative Service) already", hint="pick another alias name")
        try:  # a new alias: created, so that of two first moves exactly one succeeds
            self._seen[alias] = create_owned(self.kube, "routes", body)
        except ConflictError:
            raise ConflictError(f"alias {alias} of {function} was created by someone else at the same time; "
                                "nothing was changed", hint=f"see `fnpack alias list {function}`") from None
