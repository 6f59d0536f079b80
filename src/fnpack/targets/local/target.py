"""The local target: functions on a local platform (`fnpack serve`), through its gateway's API.

Alias moves happen on the platform, by the protocol of `targets.history` over its registry (one
transaction is the compare-and-swap); `expect` travels with the move so a stale one is refused there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fnpack.targets.base import (FunctionSummary, Invocation, Target, move_from_dict, state_from_dict,
                                 version_from_dict)
from fnpack.targets.history import ANY, Expect
from fnpack.targets.local.api import PlatformApi, q
from fnpack.targets.local.settings import LocalSettings
from fnpack.targets.local.wire import Transport, WireError, decode
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.canary.observer import Observer
    from fnpack.targets.deploy import Deployer


class LocalTarget(Target):
    name = "local"

    def __init__(self, settings: LocalSettings | None = None, transport: Transport | None = None) -> None:
        self.settings = settings or LocalSettings.layered({})
        self.api = PlatformApi(self.settings, transport)
        self.url = self.api.url
        self.notes: list[str] = []  # what a deploy had to find out after a dropped connection

    def close(self) -> None:
        self.api.close()

    def deployer(self) -> Deployer:
        from fnpack.targets.local.deploy import LocalDeployer

        return LocalDeployer(self)

    def healthy(self, timeout: float = 2.0) -> bool:
        return self.api.healthy(timeout)

    def preflight(self, spec: dict[str, Any] | None = None) -> None:
        self.api.json("GET", "/api/v1/functions")  # reachable, and the token accepted

    # --- reading and moving ------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        data = self.api.json("GET", "/api/v1/functions")
        return [FunctionSummary(f["name"], int(f.get("versions", 0)), int(f.get("latest", 0)),
                                {a: state_from_dict(s) for a, s in (f.get("aliases") or {}).items()})
                for f in data["functions"]]

    def versions(self, name: str) -> list[Version]:
        data = self.api.json("GET", f"/api/v1/functions/{q(name)}/versions")
        return [version_from_dict(v) for v in data["versions"]]

    def aliases(self, name: str) -> dict[str, AliasState]:
        data = self.api.json("GET", f"/api/v1/functions/{q(name)}/aliases")
        return {alias: state_from_dict(state) for alias, state in data["aliases"].items()}

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        body: dict[str, Any] = {"primary": state.primary, "canary": state.canary, "weight": state.weight,
                                "reason": reason}
        if expect is not ANY:
            body["expect"] = None if expect is None else {"primary": expect.primary, "canary": expect.canary,
                                                          "weight": expect.weight}
        data = self.api.json("PUT", f"/api/v1/functions/{q(name)}/aliases/{q(alias)}", json=body)
        return move_from_dict(data["move"])

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        data = self.api.json("POST", f"/api/v1/functions/{q(name)}/aliases/{q(alias)}/rollback",
                             json={"reason": reason})
        return move_from_dict(data["move"])

    def history(self, name: str, alias: str) -> list[AliasMove]:
        data = self.api.json("GET", f"/api/v1/functions/{q(name)}/aliases/{q(alias)}/history")
        return [move_from_dict(m) for m in data["history"]]

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        path = f"/api/v1/functions/{q(name)}" + (f"/versions/{version}" if version is not None else "")
        return [version_from_dict(v) for v in self.api.json("DELETE", path)["deleted"]]

    def observer(self, prometheus: str | None = None) -> Observer:
        """The gateway's own /metrics, or a Prometheus server scraping it."""
        if prometheus:
            from fnpack.canary.prometheus import PrometheusObserver, local_queries

            return PrometheusObserver(prometheus, local_queries())
        from fnpack.targets.local.observer import GatewayObserver

        return GatewayObserver(self.api)

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        params = {"tail": str(tail), "follow": "1" if follow else "0"}
        try:
            with self.api.http.stream("GET", f"/api/v1/functions/{q(name)}/logs", params=params,
                                      headers=self.api.headers("GET", True),
                                      timeout=None if follow else 60.0) as (response, chunks):
                if response.status_code >= 400:
                    response.content = b"".join(chunks)
                    raise self.api.http_error(response, control=True)
                yield from decode(chunks)
        except WireError as exc:
            raise self.api.transport_error(exc) from None

    def running(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        data = self.api.json("GET", f"/api/v1/functions/{q(name)}/status")
        return data.get("instances", []), data.get("recent_errors", []), {"log": f"fnpack logs {name}"}

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        response = self.api.request("POST", f"/function/{q(str(qualifier), safe=':')}", control=False,
                                    content=json.dumps(payload).encode(),
                                    headers={"Content-Type": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = response.text
        version = response.headers.get("x-fnpack-version")
        return Invocation(response.status_code, body, int(version) if version and version.isdigit() else None)

    def invoke_url(self, qualifier: Qualifier) -> str:
        return f"{self.url}/function/{qualifier}"
