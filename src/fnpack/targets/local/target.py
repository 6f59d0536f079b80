"""The local target: an HTTP client of the local platform's gateway (`fnpack serve`).

Control routes (`/api/v1/...`) send the control token; invocations (`/function/...`) send the
optional invoke token. Error bodies `{"error", "message", "hint", "exit_code"}` become the
FnpackError of that exit code, so the CLI shows the gateway's own message and hint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from fnpack import errors
from fnpack.build.budget import human
from fnpack.errors import FnpackError, NotFoundError, StartError, UsageError
from fnpack.targets.base import (Deployment, FunctionSummary, Invocation, InvokeError, Plan, Step, Target, actor,
                                 move_from_dict, read_deployable, state_from_dict, version_from_dict)
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_STATE_DIR = ".fnpack"
_ERRORS: dict[int, type[FnpackError]] = {cls.exit_code: cls for cls in (
    errors.UsageError, errors.SpecError, errors.ModelError, errors.UserCodeError, errors.DependencyError,
    errors.BudgetError, errors.SmokeTestError, errors.OutputError, errors.ArchiveError, errors.StartError,
    errors.NotFoundError, errors.ConflictError)}
_CHUNK = 1 << 20
# How long a deploy whose connection dropped waits for the platform to answer again, to learn the outcome.
RECONNECT_WAIT = float(os.environ.get("FNPACK_RECONNECT_WAIT", "30"))


class _CutOff(FnpackError):
    """The connection dropped once the request was (perhaps) sent: what it did is not known yet."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_token(state_dir: Path | str) -> str:
    """The control token: FNPACK_TOKEN, else `<state-dir>/token` (written by `fnpack serve`)."""
    token = os.environ.get("FNPACK_TOKEN")
    if token:
        return token.strip()
    path = Path(state_dir) / "token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise UsageError(f"no control token: FNPACK_TOKEN is not set and {path} does not exist",
                         hint="set FNPACK_TOKEN, or point --state-dir (FNPACK_STATE_DIR) at the platform's state "
                              "folder, whose `token` file `fnpack serve` writes") from None


class LocalTarget(Target):
    name = "local"

    def __init__(self, url: str | None = None, state_dir: Path | str | None = None, token: str | None = None,
                 invoke_token: str | None = None, timeout: float = 300.0, max_connections: int = 100) -> None:
        self.url = (url or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"{self.url!r} is not an http:// or https:// URL", hint="e.g. --url http://127.0.0.1:8080")
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR)
        self.notes: list[str] = []  # what a deploy had to find out after a dropped connection
        self._token = token
        self.invoke_token = invoke_token
        self._client = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._client.close()

    # --- HTTP --------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = read_token(self.state_dir)
        return self._token

    def _request(self, method: str, path: str, *, control: bool = True, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        bearer = self.token if control else self.invoke_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if control and method != "GET":
            headers["X-Fnpack-Actor"] = actor()
        try:
            response = self._client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._http_error(response, control)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise FnpackError(f"{method} {self.url}{path} answered {response.status_code} with something "
                              f"other than JSON: {response.text[:200]!r}",
                              hint=f"is {self.url} an fnpack platform?") from None

    def _transport_error(self, exc: httpx.HTTPError) -> FnpackError:
        if isinstance(exc, httpx.ConnectError):
            return StartError(f"no fnpack platform at {self.url}",
                              hint="start one with `fnpack serve` (or `fnpack up`), or pass --url / FNPACK_URL")
        if isinstance(exc, httpx.TimeoutException):
            return FnpackError(f"the platform at {self.url} did not answer in time ({type(exc).__name__})",
                               hint="the function may be slow to start; try again")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return _CutOff(f"talking to the platform at {self.url} failed: {exc}", str(exc) or type(exc).__name__)
        return FnpackError(f"talking to the platform at {self.url} failed: {exc}")

    def _http_error(self, response: httpx.Response, control: bool) -> FnpackError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 401:
            if control:
                return UsageError("the gateway refused the token",
                                  hint=f"use the token of the platform at {self.url}: FNPACK_TOKEN, or the `token` "
                                       f"file in its state folder (--state-dir, now {self.state_dir})")
            return UsageError("the gateway refused the invoke token",
                              hint="pass the platform's invoke token with --invoke-token or FNPACK_INVOKE_TOKEN")
        if isinstance(body, dict) and isinstance(body.get("exit_code"), int):
            code = body["exit_code"]
            cls = _ERRORS.get(code)
            message = str(body.get("message") or body.get("error") or f"HTTP {status}")
            if cls is not None:
                return cls(message, hint=body.get("hint"))
            exc = FnpackError(message, hint=body.get("hint"))
            exc.exit_code = code
            exc.kind = str(body.get("error") or "error")
            return exc
        if isinstance(body, dict) and "message" in body:  # a function's own error answer
            detail = f"{body['type']}: " if body.get("type") else ""
            request_id = f" (request id {body['request_id']})" if body.get("request_id") else ""
            return InvokeError(f"{status} {body.get('error', 'error')}: {detail}{body['message']}{request_id}",
                               status=status, body=body)
        text = response.text.strip()[:300] or response.reason_phrase
        return InvokeError(f"{response.request.method} {response.request.url.path} failed with {status}: {text}",
                           status=status, body=body)

    # --- deploying ---------------------------------------------------------------------------------

    def plan_deploy(self, archive: Path, alias: str | None = "live", reason: str | None = None) -> Plan:
        archive = Path(archive)
        manifest, sha256, _ = read_deployable(archive)
        name = manifest["name"]
        Qualifier.parse(name)
        try:
            existing = self.versions(name)
        except NotFoundError:
            existing = []
        same = next((v for v in existing if v.sha256 == sha256), None)
        size = archive.stat().st_size
        if same is not None:
            steps = [Step("reuse-version", {"function": name, "version": same.number, "sha256": sha256},
                          f"{name} v{same.number} already has this archive: nothing to upload")]
        else:
            steps = [Step("upload", {"function": name, "archive": str(archive), "sha256": sha256, "size": size,
                                     "url": f"{self.url}/api/v1/functions/{name}/versions"},
                          f"upload {archive.name} ({human(size)}) as a new version of {name}")]
        if alias is not None:
            Qualifier.parse(f"{name}:{alias}")
            before = self.aliases(name).get(alias) if existing else None
            number = same.number if same else None
            if number is not None and before == AliasState(number):
                steps.append(Step("keep-alias", {"function": name, "alias": alias, "state": _state(before)},
                                  f"alias {alias} already sends all traffic to v{number}"))
            else:
                target = f"v{number}" if number else "the new version"
                steps.append(Step("set-alias", {"function": name, "alias": alias, "before": _state(before),
                                                "primary": number, "canary": None, "weight": 0.0, "reason": reason},
                                  f"move alias {alias}: {before or '(new)'} -> {target}"))
        return Plan(self.name, name, archive, sha256, steps)

    def execute(self, plan: Plan) -> Deployment:
        version: Version | None = None
        created = False
        move: AliasMove | None = None
        alias: str | None = None
        for step in plan.steps:
            if step.action == "upload":
                version, created = self._upload_verified(plan)
            elif step.action == "reuse-version":
                version = next((v for v in self.versions(plan.function) if v.sha256 == plan.sha256), None)
                if version is None:  # deleted since the plan was made
                    version, created = self._upload_verified(plan)
            elif step.action in ("set-alias", "keep-alias"):
                assert version is not None, "a plan uploads or reuses a version before moving an alias"
                alias = step.details["alias"]
                current = self.aliases(plan.function).get(alias)
                if current != AliasState(version.number):
                    move = self._set_alias_verified(plan, alias, AliasState(version.number),
                                                    step.details.get("reason"))
            else:
                raise UsageError(f"the local target has no step {step.action!r}")
        assert version is not None, "a plan always uploads or reuses a version"
        if alias is None:  # not promoted: only the pinned version reaches it
            qualifier = Qualifier(plan.function, version=version.number)
        else:
            qualifier = Qualifier(plan.function, alias=None if alias == DEFAULT_ALIAS else alias)
        return Deployment(version, created, alias, move, self.invoke_url(qualifier))

    def _upload_verified(self, plan: Plan) -> tuple[Version, bool]:
        """Upload; when the connection drops, ask the platform (once it answers) whether the version
        was made before saying anything: a committed deploy must not look failed. Uploads again once
        when it was not (the same archive gives the same version, so that is safe)."""
        for attempt in (1, 2):
            try:
                return self._upload(plan.archive, plan.function)
            except _CutOff as cut:
                what = f"whether {plan.function} got a version with this archive"
                self._wait_back(plan, cut, "uploading the archive", what)
                try:
                    found = next((v for v in self.versions(plan.function) if v.sha256 == plan.sha256), None)
                except NotFoundError:
                    found = None
                if found is not None:
                    self.notes.append(f"the connection dropped during the upload ({cut.reason}); the platform "
                                      f"has the version: {plan.function} v{found.number}, sha256 {plan.sha256[:12]}")
                    return found, True
                self.notes.append(f"the connection dropped during the upload ({cut.reason}) before the platform "
                                  f"made a version" + ("; uploaded again" if attempt == 1 else ""))
        raise FnpackError(f"the connection to {self.url} dropped during both uploads of {plan.archive.name}; "
                          f"{plan.function} has no version with this archive: nothing was deployed",
                          hint="check the platform's output (`fnpack serve`), then deploy again")

    def _set_alias_verified(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        """Move an alias; when the connection drops, look at where it points before doing it again."""
        try:
            return self.set_alias(plan.function, alias, state, reason)
        except _CutOff as cut:
            self._wait_back(plan, cut, f"moving alias {alias}", f"whether alias {alias} moved to {state}")
            if self.aliases(plan.function).get(alias) != state:
                return self.set_alias(plan.function, alias, state, reason)
            self.notes.append(f"the connection dropped while moving alias {alias} ({cut.reason}); it points at "
                              f"{state}")
            history = self.history(plan.function, alias)
            return history[-1] if history and history[-1].after == state else None

    def _wait_back(self, plan: Plan, cut: _CutOff, doing: str, unknown: str) -> None:
        """Wait for the platform to answer again; if it does not, say that the outcome is unknown."""
        deadline = time.monotonic() + RECONNECT_WAIT
        while not self.healthy(timeout=2.0):
            if time.monotonic() >= deadline:
                raise StartError(
                    f"the connection to {self.url} dropped while {doing} ({cut.reason}) and the platform has not "
                    f"answered since ({RECONNECT_WAIT:g} s): {unknown} is unknown",
                    hint=f"once it is back, `fnpack versions {plan.function}` lists the version with sha256 "
                         f"{plan.sha256[:12]}... if it was made, and `fnpack alias list {plan.function}` shows the "
                         "aliases; deploying again is safe: the same archive gives the same version")
            time.sleep(0.5)

    def _upload(self, archive: Path, name: str) -> tuple[Version, bool]:
        size = archive.stat().st_size
        with open(archive, "rb") as f:
            data = self._json("POST", f"/api/v1/functions/{_q(name)}/versions", content=_chunks(f),
                              headers={"Content-Type": "application/zip", "Content-Length": str(size)})
        return version_from_dict(data["version"]), bool(data.get("created"))

    # --- reading and moving ------------------------------------------------------------------------

    def functions(self) -> list[FunctionSummary]:
        data = self._json("GET", "/api/v1/functions")
        return [FunctionSummary(f["name"], int(f.get("versions", 0)), int(f.get("latest", 0)),
                                {a: state_from_dict(s) for a, s in (f.get("aliases") or {}).items()})
                for f in data["functions"]]

    def versions(self, name: str) -> list[Version]:
        data = self._json("GET", f"/api/v1/functions/{_q(name)}/versions")
        return [version_from_dict(v) for v in data["versions"]]

    def aliases(self, name: str) -> dict[str, AliasState]:
        data = self._json("GET", f"/api/v1/functions/{_q(name)}/aliases")
        return {alias: state_from_dict(state) for alias, state in data["aliases"].items()}

    def set_alias(self, name: str, alias: str, state: AliasState, reason: str | None = None) -> AliasMove:
        data = self._json("PUT", f"/api/v1/functions/{_q(name)}/aliases/{_q(alias)}",
                          json={"primary": state.primary, "canary": state.canary, "weight": state.weight,
                                "reason": reason})
        return move_from_dict(data["move"])

    def rollback(self, name: str, alias: str, reason: str | None = None) -> AliasMove:
        data = self._json("POST", f"/api/v1/functions/{_q(name)}/aliases/{_q(alias)}/rollback",
                          json={"reason": reason})
        return move_from_dict(data["move"])

    def history(self, name: str, alias: str) -> list[AliasMove]:
        data = self._json("GET", f"/api/v1/functions/{_q(name)}/aliases/{_q(alias)}/history")
        return [move_from_dict(m) for m in data["history"]]

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        path = f"/api/v1/functions/{_q(name)}" + (f"/versions/{version}" if version is not None else "")
        return [version_from_dict(v) for v in self._json("DELETE", path)["deleted"]]

    def logs(self, name: str, tail: int = 100, follow: bool = False) -> Iterator[str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        params = {"tail": str(tail), "follow": "1" if follow else "0"}
        try:
            with self._client.stream("GET", f"/api/v1/functions/{_q(name)}/logs", params=params, headers=headers,
                                     timeout=httpx.Timeout(None if follow else 60.0, connect=10.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._http_error(response, control=True)
                yield from response.iter_text()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    # --- calling -----------------------------------------------------------------------------------

    def invoke(self, qualifier: Qualifier, payload: Any) -> Invocation:
        import json

        response = self._request("POST", f"/function/{_q(str(qualifier), safe=':')}", control=False,
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

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether a platform answers /healthz at the URL."""
        try:
            return self._client.get("/healthz", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False


def _q(text: str, safe: str = "") -> str:
    return quote(text, safe=safe)


def _chunks(f: Any) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _state(state: AliasState | None) -> dict[str, Any] | None:
    return None if state is None else {"primary": state.primary, "canary": state.canary, "weight": state.weight}
