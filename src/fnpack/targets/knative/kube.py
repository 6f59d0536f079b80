"""The Kubernetes API calls of the knative target, over httpx (no Kubernetes client library).

Objects are written with server-side apply under the field manager "fnpack". Every HTTP error body of an
API server is a `Status` (message, reason, details.kind/name); errors become FnpackErrors that name the
server, the context, the object and what to do: 401 a UsageError (credentials), 403 AccessDeniedError
(the RBAC verb and resource), 404 None on get else NotFoundError, 409 ConflictError, 410 WatchExpired,
400/422 (and 500 on writes) "the cluster refused ...", no answer at all StartError.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from fnpack import __version__
from fnpack.errors import AccessDeniedError, ConflictError, FnpackError, NotFoundError, StartError, UsageError
from fnpack.targets.knative.kubeconfig import Connection

GROUP = "serving.knative.dev/v1"
FIELD_MANAGER = "fnpack"
CORE = "v1"  # the `group` of the core API (/api/v1: pods, pods/log, ...)
RBAC_HINT = ("the RBAC Role in knative/rbac.yaml grants what fnpack uses (apply it in the namespace, bind it to "
             "the user)")
APPLY_TYPE = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
Obj = dict[str, Any]  # a Kubernetes object (or Status, or watch event) as JSON
WATCH_GRACE = 10.0  # the client waits this much longer than the server's timeoutSeconds before giving up
# /api/v1/namespaces/NS/pods/NAME/log, /apis/G/V/namespaces/NS/RESOURCE/NAME, cluster-scoped ones too
_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<namespace>[^/]+))?"
                   r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$")


class WatchExpired(FnpackError):
    """The resourceVersion a watch started from is too old (410 Gone): list again and watch from there."""

    kind = "watch-expired"


@dataclass(frozen=True)
class _Target:
    """What a request is about, for messages: parsed back from its path."""

    group: str  # "" for the core API
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @classmethod
    def of(cls, path: str) -> _Target:
        m = _PATH.match(path.split("?", 1)[0])
        if m is None:
            return cls("", path, None, None, None)
        return cls(m["group"] or "", m["resource"], m["namespace"], m["name"], m["sub"])

    @property
    def qualified(self) -> str:
        """RBAC's spelling: services.serving.knative.dev, pods/log (core), services.serving.knative.dev/status."""
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{resource}/{self.subresource}" if self.subresource else resource

    def verb(self, method: str, params: httpx.QueryParams) -> str:
        if method == "GET":
            if self.name:
                return "get"
            return "watch" if params.get("watch") in ("1", "true") else "list"
        if method == "DELETE":
            return "delete" if self.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


class KubeApi:
    """One API server, one namespace (the connection's), one HTTP connection pool."""

    def __init__(self, connection: Connection, transport: httpx.BaseTransport | None = None,
                 timeout: float = 30.0) -> None:
        self.connection = connection
        self._client = httpx.Client(
            base_url=connection.server, verify=connection.verify, transport=transport, timeout=timeout,
            trust_env=False,  # no HTTP(S)_PROXY, NO_PROXY or .netrc from the environment
            headers={"User-Agent": f"fnpack/{__version__}", "Accept": "application/json", **connection.headers})
        # tls-server-name: the name the certificate is checked against (httpcore's SNI extension does both)
        self._extensions = {"sni_hostname": connection.tls_server_name} if connection.tls_server_name else {}

    @property
    def namespace(self) -> str:
        return self.connection.namespace

    def in_namespace(self, namespace: str | None) -> KubeApi:
        """The same server, credentials and connection pool in another namespace (None: this one). They share
        the pool: close only one of them."""
        if not namespace or namespace == self.namespace:
            return self
        other = copy.copy(self)
        other.connection = dataclasses.replace(self.connection, namespace=namespace)
        return other

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def path(self, resource: str, name: str | None = None, *, namespace: str | None = None, group: str = GROUP,
             subresource: str | None = None) -> str:
        """/apis/GROUP/namespaces/NS/RESOURCE[/NAME][/SUB]; group "v1" is the core API (/api/v1/...).
        namespace None is the connection's; "" a cluster-scoped resource."""
        ns = self.namespace if namespace is None else namespace
        parts = ["/api/v1" if group == CORE else f"/apis/{group}"]
        if ns:
            parts.append(f"namespaces/{quote(ns, safe='')}")
        parts.append(resource)
        parts += [quote(p, safe="") for p in (name, subresource) if p]
        return "/".join(parts)

    # --- the calls ---------------------------------------------------------------------------------------------

    def get(self, resource: str, name: str, *, namespace: str | None = None, group: str = GROUP) -> Obj | None:
        """The object, or None when there is none (a resource type the cluster does not serve is an error)."""
        response = self._send("GET", self.path(resource, name, namespace=namespace, group=group), missing_ok=True)
        return None if response is None else self._json(response)

    def list(self, resource: str, label_selector: str | None = None, *, namespace: str | None = None,
             group: str = GROUP) -> tuple[list[Obj], str]:
        """(items, the list's resourceVersion: watch from it). Pages of 500 are followed."""
        items: list[Obj] = []
        params: dict[str, str] = {"limit": "500"}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            body = self._json(self.request("GET", self.path(resource, namespace=namespace, group=group),
                                           params=params))
            # List items come without kind and apiVersion; give them theirs, as kubectl shows them.
            kind = str(body.get("kind", "")).removesuffix("List")
            items += [{"apiVersion": body.get("apiVersion"), "kind": kind, **item} for item in body.get("items") or []]
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            params["continue"] = meta["continue"]

    def apply(self, resource: str, body: Obj, *, dry_run: bool = False, force: bool = True) -> Obj:
        """Server-side apply of `body` as fnpack's field manager; it creates the object or updates it.

        A metadata.resourceVersion in `body` is a precondition: when the object has changed since, nothing is
        changed and ConflictError says so. The object's group and namespace come from `body` when it has them."""
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ValueError("apply: body.metadata.name is required")
        params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
        if force:  # take over fields another manager (kubectl edit, a controller) set: fnpack's spec is the truth
            params["force"] = "true"
        if dry_run:
            params["dryRun"] = "All"
        path = self.path(resource, name, namespace=meta.get("namespace"), group=body.get("apiVersion") or GROUP)
        return self._json(self.request("PATCH", path, params=params, content=json.dumps(body).encode(),
                                       headers={"Content-Type": APPLY_TYPE}, _body=body))

    def create(self, resource: str, body: Obj, *, dry_run: bool = False) -> Obj:
        """POST the object; one that exists already is a ConflictError."""
        meta = body.get("metadata") or {}
        params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        path = self.path(resource, namespace=meta.get("namespace"), group=body.get("apiVersion") or GROUP)
        return self._json(self.request("POST", path, params=params, json=body, _body=body))

    def patch(self, resource: str, name: str, operations: list[Obj], *, namespace: str | None = None,
              group: str = GROUP) -> Obj:
        """A JSON patch (RFC 6902): its `test` operations make it conditional (a failed one is a refusal)."""
        path = self.path(resource, name, namespace=namespace, group=group)
        return self._json(self.request("PATCH", path, content=json.dumps(operations),
                                       headers={"Content-Type": "application/json-patch+json"}))

    def delete(self, resource: str, name: str, *, namespace: str | None = None, group: str = GROUP) -> bool:
        """Delete the object (its dependents in the background); False when it was not there."""
        path = self.path(resource, name, namespace=namespace, group=group)
        return self._send("DELETE", path, missing_ok=True, params={"propagationPolicy": "Background"}) is not None

    def watch(self, resource: str, *, resource_version: str, label_selector: str | None = None,
              field_selector: str | None = None, timeout: float = 30.0, namespace: str | None = None,
              group: str = GROUP) -> Iterator[Obj]:
        """Events ({"type": ADDED|MODIFIED|DELETED, "object": ...}) after `resource_version`, for `timeout`
        seconds at most. A version the server no longer has raises WatchExpired: list again, watch from there."""
        params = {"watch": "1", "resourceVersion": resource_version,
                  "timeoutSeconds": str(max(1, math.ceil(timeout)))}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        path = self.path(resource, namespace=namespace, group=group)
        read = httpx.Timeout(self._client.timeout.connect, read=timeout + WATCH_GRACE)
        with self.stream("GET", path, params=params, timeout=read) as response:
            try:
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = self._json(response, line)
                    if event.get("type") == "ERROR":  # a Status: 410 Expired after a compaction, or another
                        status = event.get("object") or {}
                        if status.get("code") == 410:
                            raise WatchExpired(f"the watch of {resource} from resourceVersion {resource_version} "
                                               f"expired: {status.get('message', 'Gone')}", hint="list again")
                        raise self._status_error(int(status.get("code") or 500), status, "GET", path,
                                                 httpx.QueryParams(params), None)
                    yield event
            except httpx.TransportError:
                # The server did not end the stream at timeoutSeconds, or dropped it. The watch is over either
                # way; the caller watches again from the last resourceVersion it saw (and learns then if the
                # server is gone: the request itself maps to StartError).
                return

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any call (e.g. the core API's pods), read in full, with the errors mapped; 404 is NotFoundError."""
        response = self._send(method, path, **kwargs)
        assert response is not None
        return response

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed call (pods/log?follow=true, watches), with the errors mapped, also those of reading it
        (StartError); the response closes after. It waits for data as long as the server keeps the stream
        open, unless a `timeout` is passed."""
        kwargs.setdefault("timeout", httpx.Timeout(self._client.timeout.connect, read=None))
        response = self._send(method, path, stream=True, **kwargs)
        assert response is not None
        try:
            yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            response.close()

    # --- HTTP and errors ---------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, missing_ok: bool = False, stream: bool = False,
              _body: Obj | None = None, extensions: dict[str, Any] | None = None,
              **kwargs: Any) -> httpx.Response | None:
        """The response (< 400), None for a missing object when `missing_ok`, else the mapped error.
        `_body` is the object sent, for messages (its kind, name and resourceVersion)."""
        refreshed = False
        while True:
            request = self._client.build_request(method, path, **kwargs,
                                                 extensions={**self._extensions, **(extensions or {})})
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            # An expired token (exec plugin, rotated service account token): ask for a fresh one, once.
            if response.status_code == 401 and not refreshed and self.connection.token_refresh is not None:
                response.close()
                self._client.headers.update(self.connection.token_refresh())
                refreshed = True
                continue
            if response.status_code < 400:
                return response
            try:
                response.read()
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            finally:
                response.close()
            status = _status_of(response)
            if response.status_code == 404 and missing_ok and _object_missing(status, path):
                return None
            raise self._status_error(response.status_code, status, method, path, request.url.params, _body)

    def _json(self, response: httpx.Response, text: str | None = None) -> Obj:
        """The JSON object of a response (or of one line of a watch): a proxy's HTML page is an error too."""
        try:
            body = json.loads(response.content if text is None else text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise FnpackError(f"the server at {self.connection.server} (context {self.connection.context}) answered "
                              f"{response.request.method} {response.request.url.path} with something that is not a "
                              f"Kubernetes object: {(text or response.text)[:200]!r}",
                              hint="is the kubeconfig's server a Kubernetes API server (not a proxy or a "
                                   "dashboard)?")
        return body

    def _where(self, namespace: str | None) -> str:
        return (f"in namespace {namespace} " if namespace else "") + f"(context {self.connection.context})"

    def _status_error(self, code: int, status: Obj, method: str, path: str, params: httpx.QueryParams,
                      body: Obj | None) -> FnpackError:
        c = self.connection
        target = _Target.of(path)
        message = str(status.get("message") or status.get("reason") or f"HTTP {code}")
        details = status.get("details") or {}
        sent = (body or {}).get("metadata") or {}
        name = sent.get("name") or details.get("name") or target.name
        kind = (body or {}).get("kind") or target.qualified
        what = f"{kind} {name}" if name else kind
        where = self._where(target.namespace)
        verb = target.verb(method, params)
        if code == 401:
            return UsageError(f"the Kubernetes API server at {c.server} did not accept the credentials of user "
                              f"{c.user} (context {c.context}, from {c.source})",
                              hint="the token or client certificate may have expired or be another cluster's: get "
                                   "fresh credentials (your cloud's get-credentials command) or pick another "
                                   "--context")
        if code == 403:
            permission = f"{verb} {target.qualified}"
            return AccessDeniedError(f"access denied: user {c.user} may not {permission} {where}: {message}",
                                     hint=f"grant {permission} to user {c.user}; {RBAC_HINT}", permission=permission)
        if code == 404:
            if details.get("kind") == "namespaces" and details.get("name"):
                return NotFoundError(f"there is no namespace {details['name']} on the cluster at {c.server} "
                                     f"(context {c.context})", hint="create it, or pass another --namespace")
            if _object_missing(status, path):
                return NotFoundError(f"{what} not found {where}", hint="it may have been deleted meanwhile")
            serves = f"the cluster at {c.server} (context {c.context}) serves no {target.qualified}"
            if target.group == GROUP.split("/")[0]:
                return NotFoundError(f"{serves} (is Knative Serving installed?)",
                                     hint="install Knative Serving (https://knative.dev/docs/install/), or pick the "
                                          "cluster that has it with --context")
            return NotFoundError(serves + (" (the core API /api/v1)" if not target.group else ""),
                                 hint="this API server does not serve that API")
        if code == 409:
            if status.get("reason") == "AlreadyExists":
                return ConflictError(f"{what} already exists {where}",
                                     hint="apply updates it; delete it first to create it anew")
            version = sent.get("resourceVersion")
            # A failed resourceVersion precondition ("the object has been modified"); not a field-manager
            # conflict of an apply without force ("Apply failed with 1 conflict: conflict with ...").
            if "has been modified" in message or (version and not message.startswith("Apply failed")):
                return ConflictError(f"{what} {where} changed since it was read (resourceVersion {version or '?'}); "
                                     "nothing was changed", hint="someone else changed it at the same time: "
                                     "look again and retry")
            return ConflictError(f"{what} {where}: {message}", hint="another field manager owns these fields; "
                                 "fnpack applies with force unless asked not to")
        if code == 410:
            return WatchExpired(f"{what} {where}: {message}", hint="list again")
        # The test server (apiextensions-apiserver alone) answers some apply refusals with 500 where
        # kube-apiserver answers 422: on a write, 500 is a refusal too.
        if code in (400, 422) or (code == 500 and method in ("PATCH", "POST", "PUT")):
            return UsageError(f"the cluster refused the {what} {where}: {message}",
                              hint="fix the object: the cluster checks it against the resource's schema")
        return FnpackError(f"the Kubernetes API server at {c.server} answered {code} to {verb} {target.qualified} "
                           f"{where}: {message}", hint="retry in a moment" if code in (429, 503, 504) else None)

    def _unreachable(self, exc: httpx.TransportError) -> FnpackError:
        c = self.connection
        cause = _ssl_cause(exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            if cause.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
                return StartError(f"the certificate of the Kubernetes API server at {c.server} (context "
                                  f"{c.context}) is not for that name: {cause.verify_message}",
                                  hint="fix the cluster's server, or set its tls-server-name in the kubeconfig")
            return StartError(f"the certificate of the Kubernetes API server at {c.server} (context {c.context}) "
                              f"is not signed by the CA of the kubeconfig ({c.source}): {cause.verify_message}",
                              hint="fix the cluster's certificate-authority(-data); insecure-skip-tls-verify: true "
                                   "skips the check (not for production)")
        if isinstance(cause, ssl.SSLError) and "alert" in str(cause):
            # The server ended the handshake over the client certificate (not one its client CA signed).
            return UsageError(f"the Kubernetes API server at {c.server} refused the client certificate of user "
                              f"{c.user} (context {c.context}, from {c.source}): {cause.reason or cause}",
                              hint="the certificate may be another cluster's or expired: get fresh credentials")
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            detail = f"timed out ({type(exc).__name__})"
        return StartError(f"cannot reach the Kubernetes API server at {c.server} (context {c.context}): {detail}",
                          hint="check that the cluster is up and the kubeconfig's server is right (kubectl "
                               "cluster-info)")


def _status_of(response: httpx.Response) -> Obj:
    """The response's Status object; {} when the body is not one (e.g. "404 page not found")."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def _object_missing(status: Obj, path: str) -> bool:
    """A 404 about the named object itself, not about its resource type being unknown to the server (an
    aggregated server answers those with a Status without details, apiextensions-apiserver with plain text)."""
    details = status.get("details") or {}
    target = _Target.of(path)
    return status.get("reason") == "NotFound" and bool(details.get("name")) and details.get("kind") != "namespaces" \
        and (target.name is None or details.get("name") == target.name)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps ssl's
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
