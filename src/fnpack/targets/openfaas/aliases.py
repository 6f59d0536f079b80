"""OpenFaaS aliases as the `AliasRouter` of the alias-move protocol: each alias is a router function whose
route (and a revision number every move raises) is in its annotations.

The gateway's API has no compare-and-swap, so the protocol's lock is the shared history in S3 (written
with S3's conditional writes: of two concurrent moves one gets past it, `targets.history`); `apply` checks
the router's revision once more and then updates it, a rolling replace: the new router starts and is
ready before the old one stops taking requests, and the old one finishes what it has in flight, so no
request fails and each ends on the version it started on. The move is acknowledged once the gateway
routes to the new router (its health answer gives the new route, several times in a row).
"""

from __future__ import annotations

import time
from typing import Any

from fnpack.errors import ConflictError, FnpackError, StartError
from fnpack.targets.history import AliasRouter
from fnpack.targets.openfaas import functions as f
from fnpack.targets.openfaas.gateway import GatewayApi
from fnpack.targets.openfaas.settings import OpenFaaSSettings
from fnpack.versions import AliasState

SETTLED = 5  # consecutive health answers from the new router before a move counts as done
ROLLOUT_TIMEOUT = 300.0


class RouterAliases(AliasRouter):
    def __init__(self, api: GatewayApi, settings: OpenFaaSSettings) -> None:
        self.api = api
        self.settings = settings

    def current(self, function: str, alias: str) -> tuple[AliasState | None, int | None]:
        """(state, revision); (None, None) when the alias has no router yet."""
        status = self.api.function(f.router_name(function, alias))
        if status is None:
            return None, None
        try:
            return f.route_of(function, alias, status)
        except FnpackError as exc:
            raise ConflictError(exc.message, hint=exc.hint) from None

    def apply(self, function: str, alias: str, state: AliasState, revision: int | None) -> None:
        name = f.router_name(function, alias)
        status = self.api.function(name)
        now = None if status is None else f.route_of(function, alias, status)[1]
        if now != revision:
            raise ConflictError(f"{function}:{alias} was moved by someone else since it was read (its router's "
                                "revision changed); it was left as it was",
                                hint=f"see `fnpack alias list {function}` and try again")
        body = f.router_deployment(function=function, alias=alias, state=state, revision=(revision or 0) + 1,
                                   settings=self.settings)
        if status is None:
            self.api.deploy(body)
        else:
            self.api.update(body)
        self.wait_routed(name, state)

    def wait_routed(self, name: str, state: AliasState, timeout: float = ROLLOUT_TIMEOUT) -> None:
        """Until the gateway sends requests to a router of the new route (the rolling update is done: a
        router answers its health check with its route, and the old one's differs)."""
        deadline = time.monotonic() + timeout
        streak = 0
        while streak < SETTLED:
            if time.monotonic() > deadline:
                raise StartError(f"the router {name} did not take the route {state} within {timeout:.0f} s",
                                 hint=f"see `fnpack logs` and the gateway's logs for {name}")
            answer = self._health(name) or {}
            routed = (answer.get("primary"), answer.get("canary"), float(answer.get("weight") or 0.0))
            streak = streak + 1 if routed == (state.primary, state.canary, state.weight) else 0
            if streak < SETTLED:
                time.sleep(0.02 if streak else 0.1)

    def _health(self, name: str) -> dict[str, Any] | None:
        try:
            response = self.api.http.get(f"/function/{name}/_/health", timeout=10, auth=None)
            return response.json() if response.status_code == 200 else None
        except (ValueError, OSError):
            return None
        except Exception:  # the gateway itself between two replicas: try again
            return None
