"""The OpenFaaS gateway's REST API (`/system/...`, `/function/...`) over httpx, with its answers as
fnpack's errors: what was refused, by which gateway, and how to fix it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from fnpack.errors import ConflictError, FnpackError, NotFoundError, StartError, UsageError

Obj = dict[str, Any]


class GatewayApi:
    def __init__(self, url: str, credentials: tuple[str, str] | None, namespace: str | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 60.0) -> None:
        self.url = url
        self.user = credentials[0] if credentials else None
        self.namespace = namespace
        self.http = httpx.Client(base_url=url, auth=credentials, timeout=timeout, transport=transport, trust_env=False)

    def close(self) -> None:
        self.http.close()

    # --- /system ---------------------------------------------------------------------------------------

    def info(self) -> Obj:
        return self._json("GET", "/system/info", "reading the gateway's information")

    def functions(self) -> list[Obj]:
        return list(self._json("GET", "/system/functions", "listing functions", params=self._ns()) or [])

    def function(self, name: str) -> Obj | None:
        """The function's status, None when there is none."""
        response = self._send("GET", f"/system/function/{name}", f"reading function {name}", params=self._ns(),
                              missing_ok=True)
        return None if response is None else response.json()

    def deploy(self, deployment: Obj) -> None:
        self._send("POST", "/system/functions", f"deploying function {deployment['service']}", json=deployment)

    def update(self, deployment: Obj) -> None:
        self._send("PUT", "/system/functions", f"updating function {deployment['service']}", json=deployment)

    def delete(self, name: str) -> bool:
        """False when there was no such function."""
        return self._send("DELETE", "/system/functions", f"deleting function {name}", params=self._ns(),
                          json={"functionName": name}, missing_ok=True) is not None

    def logs(self, name: str, tail: int, follow: bool) -> Iterator[Obj]:
        """The gateway's log stream (NDJSON: name, instance, timestamp, text), as the provider offers it."""
        params = {"name": name, "tail": str(tail), "follow": "true" if follow else "false", **self._ns()}
        try:
            with self.http.stream("GET", "/system/logs", params=params,
                                  timeout=httpx.Timeout(None if follow else 60.0, connect=10.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response, f"reading the logs of {name}")
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    # --- invoking ------------------------------------------------------------------------------------------

    def invoke(self, name: str, body: bytes, headers: dict[str, str], timeout: float = 300) -> httpx.Response:
        try:
            return self.http.post(f"/function/{name}", content=body, headers=headers, timeout=timeout, auth=None)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    # --- plumbing ------------------------------------------------------------------------------------------

    def _ns(self) -> dict[str, str]:
        return {"namespace": self.namespace} if self.namespace else {}

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self._send(method, path, what, **kwargs)
        assert response is not None
        try:
            return response.json()
        except ValueError:
            raise FnpackError(f"{what}: the gateway at {self.url} answered {response.status_code} with something other "
                              f"than JSON: {response.text[:200]!r}", hint="is it an OpenFaaS gateway?") from None

    def _send(self, method: str, path: str, what: str, missing_ok: bool = False,
              **kwargs: Any) -> httpx.Response | None:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise self._error(response, what)
        return response

    def _error(self, response: httpx.Response, what: str) -> FnpackError:
        status, text = response.status_code, response.text.strip()[:500]
        if status == 401:
            return UsageError(f"the OpenFaaS gateway at {self.url} did not accept the credentials"
                              + (f" of user {self.user}" if self.user else " (none were given)"),
                              hint="faas-cli login (fnpack reads what it saved), or pass --password-stdin / set "
                                   "FNPACK_OPENFAAS_PASSWORD")
        if status == 404:
            return NotFoundError(f"{what}: not found on the gateway at {self.url}" + (f": {text}" if text else ""))
        if "already exists" in text:
            return ConflictError(f"{what}: it exists already on the gateway at {self.url} ({text})",
                                 hint="someone deployed it at the same time; try again")
        if status in (400, 422):
            return UsageError(f"{what}: the gateway at {self.url} refused it: {text}")
        return FnpackError(f"{what}: the gateway at {self.url} answered {status}: {text}",
                           hint="see the gateway's and the provider's logs")

    def _unreachable(self, exc: httpx.HTTPError) -> FnpackError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return StartError(f"cannot reach the OpenFaaS gateway at {self.url}: {exc}",
                              hint="pass --gateway (FNPACK_OPENFAAS_GATEWAY or OPENFAAS_URL), or port-forward it: "
                                   "kubectl port-forward -n openfaas svc/gateway 8080:8080")
        return FnpackError(f"talking to the OpenFaaS gateway at {self.url} failed: {type(exc).__name__}: {exc}")
