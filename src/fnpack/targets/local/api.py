"""The HTTP client of the local platform's gateway (`fnpack serve`).

Control routes (`/api/v1/...`) send the control token; invocations (`/function/...`) send the optional
invoke token. Error bodies `{"error", "message", "hint", "exit_code"}` become the FnpackError of that
exit code, so the CLI shows the gateway's own message and hint. A connection that drops once a request
may have been sent is a `CutOff`: what it did is not known yet (the deployer finds out). The wire is
`wire.Client` (http.client: a command's one or two requests cost less than importing httpx would).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fnpack import errors
from fnpack.errors import FnpackError, StartError, UsageError
from fnpack.targets.base import InvokeError, actor
from fnpack.targets.local.settings import LocalSettings
from fnpack.targets.local.wire import Client, Response, Transport, WireError

_ERRORS: dict[int, type[FnpackError]] = {cls.exit_code: cls for cls in (
    errors.UsageError, errors.SpecError, errors.ModelError, errors.UserCodeError, errors.DependencyError,
    errors.BudgetError, errors.SmokeTestError, errors.OutputError, errors.ArchiveError, errors.StartError,
    errors.NotFoundError, errors.ConflictError)}


class CutOff(FnpackError):
    """The connection dropped once the request was (perhaps) sent: what it did is not known yet."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def q(text: str, safe: str = "") -> str:
    """A name or qualifier as one URL path segment."""
    return quote(text, safe=safe)


class PlatformApi:
    """One platform's gateway, at `settings.url`."""

    def __init__(self, settings: LocalSettings, transport: Transport | None = None, timeout: float = 300.0) -> None:
        self.settings = settings
        self.url = settings.url
        self._token = settings.token
        self.http = Client(self.url, timeout, transport=transport)  # `transport`: tests play a platform with it

    def close(self) -> None:
        self.http.close()

    @property
    def token(self) -> str:
        """The control token: FNPACK_TOKEN (or the settings'), else `<state-dir>/token` (written by `fnpack serve`)."""
        if self._token is None:
            path = self.settings.state_dir / "token"
            try:
                self._token = path.read_text(encoding="utf-8").strip()
            except OSError:
                raise UsageError(f"no control token: FNPACK_TOKEN is not set and {path} does not exist",
                                 hint="set FNPACK_TOKEN, or point --state-dir (FNPACK_STATE_DIR) at the platform's "
                                      "state folder, whose `token` file `fnpack serve` writes") from None
        return self._token

    def headers(self, method: str, control: bool, given: dict[str, str] | None = None) -> dict[str, str]:
        """`given` with the bearer token (the control token, or the invoke token) and, for a change, who makes it."""
        headers = dict(given or {})
        bearer = self.token if control else self.settings.invoke_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if control and method != "GET":
            headers["X-Fnpack-Actor"] = actor()
        return headers

    def request(self, method: str, path: str, *, control: bool = True, **kwargs: Any) -> Response:
        headers = self.headers(method, control, kwargs.pop("headers", None))
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except WireError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 400:
            raise self.http_error(response, control)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise FnpackError(f"{method} {self.url}{path} answered {response.status_code} with something "
                              f"other than JSON: {response.text[:200]!r}",
                              hint=f"is {self.url} an fnpack platform?") from None

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether a platform answers /healthz at the URL."""
        try:
            return self.http.request("GET", "/healthz", timeout=timeout).status_code == 200
        except WireError:
            return False

    def transport_error(self, exc: WireError) -> FnpackError:
        if exc.timeout:
            return FnpackError(f"the platform at {self.url} did not answer in time ({exc})",
                               hint="the function may be slow to start; try again")
        if exc.connect:
            return StartError(f"no fnpack platform at {self.url}",
                              hint="start one with `fnpack serve` (or `fnpack up`), or pass --url / FNPACK_URL")
        return CutOff(f"talking to the platform at {self.url} failed: {exc}", str(exc))

    def http_error(self, response: Response, control: bool) -> FnpackError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 401:
            if control:
                return UsageError("the gateway refused the token",
                                  hint=f"use the token of the platform at {self.url}: FNPACK_TOKEN, or the `token` "
                                       f"file in its state folder (--state-dir, now {self.settings.state_dir})")
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
        return InvokeError(f"{response.method} {response.path} failed with {status}: {text}",
                           status=status, body=body)
