"""A test controller that does, against the real test API server (`kube_cluster`), what Knative Serving's
controllers do for the objects fnpack makes. The server has no controllers of its own; this module stands in for
Knative's service, configuration, revision, route and labeler reconcilers, Kubernetes' garbage collector (for
ownerReferences), and, with `run_pods=True`, for the pods and the ingress.

    with FakeKnative(kube_cluster.kubeconfig, workdir=tmp_path) as knative:
        ...apply a Service...
        knative.wait_idle()

It never imports fnpack: it talks to the API server with plain httpx, with the admin kubeconfig's own TLS
material. It follows Knative Serving v1.23's semantics (names, labels, condition types, reasons and messages are
Knative's); what it leaves out is listed in `FakeKnative`'s docstring.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.server
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("fake_knative")

GROUP = "serving.knative.dev"
API_VERSION = f"{GROUP}/v1"
PLURALS = ("services", "configurations", "revisions", "routes")
KIND_PLURAL = {"Service": "services", "Configuration": "configurations", "Revision": "revisions", "Route": "routes"}

# Knative's label and annotation keys (knative.dev/serving/pkg/apis/serving/register.go).
SERVICE_LABEL = "serving.knative.dev/service"
SERVICE_UID_LABEL = "serving.knative.dev/serviceUID"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
CONFIGURATION_GENERATION_LABEL = "serving.knative.dev/configurationGeneration"
CONFIGURATION_UID_LABEL = "serving.knative.dev/configurationUID"
ROUTING_STATE_LABEL = "serving.knative.dev/routingState"
ROUTES_ANNOTATION = "serving.knative.dev/routes"
ROUTING_STATE_MODIFIED_ANNOTATION = "serving.knative.dev/routingStateModified"
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
VISIBILITY_LABEL = "networking.knative.dev/visibility"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

DEFAULT_CONTAINER_NAME = "user-container"
DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 600  # config-defaults max-revision-timeout-seconds
DEFAULT_PROGRESS_DEADLINE = 600.0
AGGRESSIVE_PROBE_PERIOD = 0.05  # Knative's queue-proxy probes readiness every 25 ms while periodSeconds is unset
# Feature-flag-gated PodSpec fields that are off by default in config-features (kubernetes.podspec-*).
GATED_PODSPEC_FIELDS = ("affinity", "nodeSelector", "tolerations", "runtimeClassName", "priorityClassName",
                        "schedulerName", "topologySpreadConstraints", "hostAliases", "dnsConfig")
RESERVED_ENV = ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "expect", "proxy-connection"}
# The queue-proxy's request metrics as Knative <= 1.18 exports them (pkg/queue/request_metric.go, OpenCensus'
# Prometheus exporter: a counter without `_total`, latencies in milliseconds in defaultLatencyDistribution).
REQUEST_COUNT = "revision_app_request_count"
REQUEST_LATENCIES = "revision_app_request_latencies"
LATENCY_BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900, 1000,
                      2000, 5000, 10000, 20000, 50000, 100000)
METRIC_LABELS = ("configuration_name", "container_name", "namespace_name", "pod_name", "response_code",
                 "response_code_class", "revision_name", "service_name")


# ---------------------------------------------------------------------------------------------------------------
# The API server: kubeconfig, TLS, a small REST client and watches.


class ApiError(Exception):
    def __init__(self, code: int, body: str, what: str) -> None:
        super().__init__(f"{what}: {code} {body[:500]}")
        self.code = code
        self.body = body


def _load_kubeconfig(path: Path) -> tuple[str, ssl.SSLContext, dict[str, str], str]:
    """(server, TLS context, extra headers, default namespace) from a kubeconfig's current context."""
    text = Path(path).read_text()
    try:
        config = json.loads(text)
    except ValueError:
        import yaml  # kubeconfigs are YAML in general; the test server writes JSON (a YAML subset)

        config = yaml.safe_load(text)
    by_name = lambda section, name: next(e[section.rstrip("s")] for e in config[section] if e["name"] == name)
    current = config.get("current-context") or config["contexts"][0]["name"]
    context = by_name("contexts", current)
    cluster = by_name("clusters", context["cluster"])
    user = by_name("users", context["user"]) if context.get("user") else {}

    if cluster.get("certificate-authority-data"):
        tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
    else:
        tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    if user.get("client-certificate-data"):
        # ssl can load a client key pair from files only: a private folder, removed as soon as they are loaded.
        private = Path(tempfile.mkdtemp(prefix="fake-knative-tls-"))
        try:
            private.chmod(0o700)
            cert, key = private / "client.crt", private / "client.key"
            for target, data in ((cert, user["client-certificate-data"]), (key, user["client-key-data"])):
                target.touch(mode=0o600)
                target.write_bytes(base64.b64decode(data))
            tls.load_cert_chain(str(cert), str(key))
        finally:
            shutil.rmtree(private, ignore_errors=True)
    elif user.get("client-certificate"):
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    return cluster["server"], tls, headers, context.get("namespace") or "default"


def connect(kubeconfig: Path, **kwargs: Any) -> httpx.Client:
    """An httpx client for the kubeconfig's API server (its base URL, TLS and credentials): also for tests."""
    server, tls, headers, _ = _load_kubeconfig(kubeconfig)
    kwargs.setdefault("timeout", httpx.Timeout(10.0))
    return httpx.Client(base_url=server, verify=tls, headers=headers, trust_env=False, **kwargs)


def _path(plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{API_VERSION}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class _Kube:
    """The few REST calls the reconcilers make (JSON in and out; 404 on a read is None)."""

    def __init__(self, http: httpx.Client, on_write: Any = None, on_delete: Any = None) -> None:
        self.http = http
        # Told of each write (plural, object written) and deletion (plural, namespace, name, uid): wait_idle
        # waits until the watches have seen them.
        self.on_write = on_write
        self.on_delete = on_delete

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict | None:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, f"{method} {path} ({what})")
        return response.json() if response.content else None

    def _wrote(self, plural: str, obj: dict | None) -> dict | None:
        if self.on_write is not None and obj is not None:
            self.on_write(plural, obj)
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", _path(plural, namespace, name), "get")
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def list(self, plural: str, namespace: str | None = None) -> dict:
        return self._call("GET", _path(plural, namespace), "list")

    def create(self, plural: str, obj: dict) -> dict:
        return self._wrote(plural, self._call("POST", _path(plural, obj["metadata"]["namespace"]), "create", json=obj))

    def update(self, plural: str, obj: dict) -> dict:
        meta = obj["metadata"]
        return self._wrote(plural, self._call("PUT", _path(plural, meta["namespace"], meta["name"]), "update",
                                              json=obj))

    def update_status(self, plural: str, obj: dict) -> dict:
        meta = obj["metadata"]
        return self._wrote(plural, self._call("PUT", _path(plural, meta["namespace"], meta["name"], "status"),
                                              "update status", json=obj))

    def merge_patch(self, plural: str, namespace: str, name: str, patch: dict) -> dict | None:
        try:
            return self._wrote(plural, self._call("PATCH", _path(plural, namespace, name), "merge patch",
                                                  content=json.dumps(patch),
                                                  headers={"Content-Type": "application/merge-patch+json"}))
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def delete(self, plural: str, namespace: str, name: str, uid: str,
               propagation: str = "Background") -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation,
                "preconditions": {"uid": uid}}
        try:
            self._call("DELETE", _path(plural, namespace, name), "delete", content=json.dumps(body),
                       headers={"Content-Type": "application/json"})
        except ApiError as error:
            if error.code not in (404, 409):  # gone already, or another object of that name now
                raise
            return
        if self.on_delete is not None:
            self.on_delete(plural, namespace, name, uid)


class _Informer(threading.Thread):
    """List, then watch one resource in every namespace, keeping a cache; relist on 410 or errors."""

    def __init__(self, controller: FakeKnative, plural: str) -> None:
        super().__init__(name=f"fake-knative-watch-{plural}", daemon=True)
        self.controller = controller
        self.plural = plural
        self.cache: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        # The resourceVersion this cache is known to be current at. etcd's versions are increasing integers,
        # which wait_idle compares (clients must not, in general; this fake knows its server).
        self.seen = 0
        self._socket: socket.socket | None = None
        self._http = controller._new_http(timeout=httpx.Timeout(10.0, read=None))

    def snapshot(self) -> dict[tuple[str, str], dict]:
        with self.lock:
            return dict(self.cache)

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            return self.cache.get((namespace, name))

    def interrupt(self) -> None:
        """Unblock a watch read (stop() calls it): shutting the socket down ends the stream at once."""
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        stopping = self.controller._stopping
        version = None
        while not stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                version = self._watch(version)
            except Exception as error:  # the server restarting, a dropped connection: list again
                if stopping.is_set():
                    break
                busy = isinstance(error, httpx.HTTPStatusError) and error.response.status_code == 429
                # 429 "storage is (re)initializing": a server that has just started
                log.log(logging.DEBUG if busy else logging.WARNING, "watch of %s failed (%s); listing again",
                        self.plural, error)
                version = None
                stopping.wait(0.2)
        self._http.close()

    def _relist(self) -> str:
        response = self._http.get(_path(self.plural), timeout=10.0)
        response.raise_for_status()
        listing = response.json()
        fresh = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in listing.get("items") or []}
        with self.lock:
            old, self.cache = self.cache, fresh
        for key, obj in old.items():
            if key not in fresh:
                self.controller._on_event(self.plural, "DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None or before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.controller._on_event(self.plural, "ADDED" if before is None else "MODIFIED", obj)
        self.seen = int(listing["metadata"]["resourceVersion"])
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> str | None:
        """Follow the watch from `version`; the version to resume from, or None to list again."""
        params = {"watch": "true", "allowWatchBookmarks": "false", "resourceVersion": version,
                  "timeoutSeconds": "300"}
        with self._http.stream("GET", _path(self.plural), params=params) as response:
            if response.status_code == 410:
                return None
            if response.status_code != 200:
                response.read()
                raise ApiError(response.status_code, response.text, f"watch {self.plural}")
            stream = response.extensions.get("network_stream")
            self._socket = stream.get_extra_info("socket") if stream is not None else None
            try:
                if self.controller._stopping.is_set():
                    return version
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise ApiError(obj.get("code") or 500, json.dumps(obj), f"watch {self.plural}")
                    meta = obj.get("metadata") or {}
                    version = meta.get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    key = (meta["namespace"], meta["name"])
                    with self.lock:
                        if kind == "DELETED":
                            self.cache.pop(key, None)
                        else:
                            self.cache[key] = obj
                    self.controller._on_event(self.plural, kind, obj)
                    self.seen = max(self.seen, int(version))
            finally:
                self._socket = None
        return version  # the server ended the watch (timeoutSeconds): resume where it stopped


class _Queue:
    """A work queue of keys: each key at most once, each with a time it is due (retries back off)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[tuple, float] = {}
        self._busy: tuple | None = None

    def add(self, key: tuple, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cv:
            if key not in self._due or self._due[key] > due:
                self._due[key] = due
                self._cv.notify_all()

    def take(self, stopping: threading.Event) -> tuple | None:
        with self._cv:
            while not stopping.is_set():
                if self._due:
                    key = min(self._due, key=self._due.__getitem__)
                    wait = self._due[key] - time.monotonic()
                    if wait <= 0:
                        del self._due[key]
                        self._busy = key
                        return key
                    self._cv.wait(min(wait, 0.5))
                else:
                    self._cv.wait(0.5)
            return None

    def done(self) -> None:
        with self._cv:
            self._busy = None
            self._cv.notify_all()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def pending(self) -> list[tuple]:
        with self._cv:
            return list(self._due) + ([self._busy] if self._busy else [])


class _Conflict(Exception):
    """A write lost an optimistic-concurrency race (409): the key is reconciled again at once."""


# ---------------------------------------------------------------------------------------------------------------
# Knative's conditions.


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Conditions:
    """Knative's living condition set: `Ready` follows the dependent last marked False, else the one last marked
    Unknown, else it is True; conditions outside the set get severity Info. A condition keeps its
    lastTransitionTime while nothing else in it changes, and the list is sorted by type, as Knative's is."""

    def __init__(self, existing: list[dict] | None, dependents: tuple[str, ...]) -> None:
        self.old = {c["type"]: c for c in existing or [] if c.get("type")}
        self.dependents = dependents
        self.current = {t: c for t, c in self.old.items() if t != "Ready"}
        self.order = list(dependents)  # the order they were marked in, oldest first
        for name in dependents:
            if name not in self.current:
                self.mark(name, "Unknown")

    def mark(self, kind: str, status: str, reason: str = "", message: str = "") -> None:
        condition = {"type": kind, "status": status}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        if kind not in self.dependents and kind != "Ready":
            condition["severity"] = "Info"
        old = self.old.get(kind)
        if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == condition:
            condition = old
        else:
            condition["lastTransitionTime"] = _now()
        self.current[kind] = condition
        if kind in self.order:
            self.order.remove(kind)
        self.order.append(kind)

    def get(self, kind: str) -> dict:
        return self.current.get(kind) or {"type": kind, "status": "Unknown"}

    def result(self) -> list[dict]:
        dependents = [self.current[d] for d in reversed(self.order) if d in self.dependents]
        failed = next((c for c in dependents if c["status"] == "False"), None)
        unknown = next((c for c in dependents if c["status"] == "Unknown"), None)
        summary = failed or unknown
        if summary is None:
            self.mark("Ready", "True")
        else:
            self.mark("Ready", summary["status"], summary.get("reason", ""), summary.get("message", ""))
        return sorted(self.current.values(), key=lambda c: c["type"])


def _condition(obj: dict | None, kind: str = "Ready") -> dict:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return {"type": kind, "status": "Unknown"}


def _observed(obj: dict) -> bool:
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")


def is_ready(obj: dict | None) -> bool:
    """Knative's IsReady: the current generation observed and Ready True."""
    return obj is not None and _observed(obj) and _condition(obj)["status"] == "True"


def is_failed(obj: dict | None) -> bool:
    return obj is not None and _observed(obj) and _condition(obj)["status"] == "False"


# ---------------------------------------------------------------------------------------------------------------
# Small helpers.


def _pruned(value: Any) -> Any:
    """For comparing specs as Go's semantic equality does: absent, null, "" and empty lists/maps are alike."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    return _pruned(a) == _pruned(b)


def _controller_ref(owner: dict) -> dict:
    return {"apiVersion": owner.get("apiVersion", API_VERSION), "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _controlled_by(obj: dict, owner: dict) -> bool:
    return any(ref.get("controller") and ref.get("uid") == owner["metadata"]["uid"]
               for ref in obj["metadata"].get("ownerReferences") or [])


def _meta_map(obj: dict, key: str) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get(key) or {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _duration(text: str | None, default: float) -> float:
    """A Go duration ("600s", "10m", "1h30m") in seconds; `default` when unset or unreadable."""
    if not text:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return default
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes; unknown references stay)."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def _serving_container(spec: dict) -> dict:
    containers = spec.get("containers") or [{}]
    return next((c for c in containers if c.get("ports")), containers[0])


# ---------------------------------------------------------------------------------------------------------------
# Pods: a revision's serving container as a local process.


@dataclass
class _Pod:
    namespace: str
    revision: str
    port: int
    log_path: Path
    state: str = "starting"  # starting | ready | failed
    reason: str = ""
    message: str = ""
    process: subprocess.Popen | None = None
    stopping: bool = False
    activated: bool = False  # started by a request (scale from zero): its revision stays Ready meanwhile
    ready: threading.Event = field(default_factory=threading.Event)  # set once ready or failed

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def fail(self, reason: str, message: str) -> None:
        self.state, self.reason, self.message = "failed", reason, message
        self.ready.set()


def _escaped(value: str) -> str:
    """A label value as the exposition format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _tail(path: Path, lines: int = 80, limit: int = 2048) -> str:
    """The end of a log, as kubelet's FallbackToLogsOnError keeps it (80 lines, 2 KiB)."""
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:]).strip()


def _terminate(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the pod's process group, SIGKILL `grace` seconds later; reaped either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ---------------------------------------------------------------------------------------------------------------
# The controller.


class FakeKnative:
    """Knative Serving's controllers, for tests, against a real API server with Knative's CRDs.

    What it does, as Knative v1.23 does it: a Service gets a Configuration and a Route of its name (owned by it,
    the Service's labels copied, plus `serving.knative.dev/service`); a Configuration gets the Revision its template
    names (or `NAME-00001`, from its generation), with the template's labels and annotations and Knative's own
    labels; a BYO name reused with a changed spec is refused (Configuration Ready False "RevisionFailed", Service
    RoutesReady False "RevisionNameTaken"); revisions, configurations, routes and services get Knative's status
    (conditions, URLs on `example.com`, traffic with tag URLs, "RevisionMissing" for a traffic target that is
    missing or not ready); the labeler marks revisions' `routingState` and `serving.knative.dev/routes`; deleting an
    owner deletes its dependents (ownerReferences, with background, foreground or orphan propagation), as
    Kubernetes' garbage collector would.

    With `run_pods=True`, each new revision's serving container runs as a local process (command + args, env,
    envFrom secrets from `secrets`, PORT on a free loopback port, HOST=127.0.0.1) and is Ready once its readiness
    probe passes; `ingress_url` is an HTTP proxy that routes by Host as Knative's ingress does. A revision that was
    Ready before this controller started (another test's) has no process until a request for it comes: the
    ingress then starts it and waits, as Knative's activator scales a revision up from zero. Every request the
    ingress hands a revision's process is counted as that revision's queue-proxy counts it (Knative <= 1.18,
    pkg/queue/request_metric.go): `revision_app_request_count` (a counter, no `_total`) and the histogram
    `revision_app_request_latencies` (milliseconds), by namespace_name, service_name, configuration_name,
    revision_name, pod_name, container_name="queue-proxy", response_code and response_code_class, on
    `metrics_url` + /metrics (a port of its own: the real ones are each pod's :9091; a request the ingress cannot
    hand a process, 404 or 503, never reaches a queue-proxy and is not counted). `metrics_text()` is that page.

    Not done (real Knative does): images (a container without a command cannot run here), scaling (one process per
    revision, never scaled to zero or restarted: a process that exits leaves its revision failed), readiness probing
    after the first success, liveness probes, sidecars and init containers, revision garbage collection,
    gradual rollouts, domain mappings, TLS, cluster-local visibility beyond the URL, configmaps and field refs in
    env. Knative's webhook is not here either: what it would refuse is recorded in `violations` (and logged), and
    the object is reconciled as sent.

    `namespaces` limits it to those (None: every namespace, as Knative); `domain` is config-domain's;
    `secrets` maps "name" or "namespace/name" to a Secret's data; `extra_env` goes into every process's
    environment (under the container's own env). `wait_idle`, `logs`, `processes` and `stop` are described below.
    """

    def __init__(self, kubeconfig: Path, *, run_pods: bool = False, secrets: dict[str, dict[str, str]] | None = None,
                 extra_env: dict[str, str] | None = None, workdir: Path, domain: str = "example.com",
                 namespaces: list[str] | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.run_pods = run_pods
        self.secrets = dict(secrets or {})  # "name" or "namespace/name" -> {KEY: value}
        self.extra_env = dict(extra_env or {})
        self.workdir = Path(workdir)
        self.domain = domain
        self.namespaces = set(namespaces) if namespaces else None  # None: every namespace
        self.violations: list[str] = []  # what Knative's admission webhook would have refused
        self.ingress_url: str | None = None
        self.metrics_url: str | None = None  # the queue-proxies' Prometheus metrics, at /metrics (run_pods only)

        self._server, self._tls, self._headers, _ = _load_kubeconfig(self.kubeconfig)
        self._stopping = threading.Event()
        self._queue = _Queue()
        self._failures: dict[tuple, int] = {}
        self._informers = {plural: _Informer(self, plural) for plural in PLURALS}
        self._expect_lock = threading.Lock()
        self._written: dict[str, int] = {}  # plural -> the highest resourceVersion this controller wrote
        self._deleted: dict[tuple[str, str, str], str] = {}  # (plural, namespace, name) -> uid deleted
        self._kube = _Kube(self._new_http(), on_write=self._note_write, on_delete=self._note_delete)
        self._snapshot_kubes: dict[str, _Kube] = {}  # wait_idle's, one per kind
        self._worker = threading.Thread(target=self._work, name="fake-knative-reconciler", daemon=True)
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._logs: dict[tuple[str, str], Path] = {}
        self._pods_lock = threading.Lock()
        self._activation_lock = threading.Lock()
        self._stoppers: list[threading.Thread] = []
        self._templates: dict[str, tuple[str, Any]] = {}  # service uid -> (template name, template) last seen
        self._violation_keys: set[tuple] = set()
        self._ingress: http.server.ThreadingHTTPServer | None = None
        self._ingress_thread: threading.Thread | None = None
        self._proxy_http: httpx.Client | None = None
        self._metrics_server: http.server.ThreadingHTTPServer | None = None
        self._metrics_lock = threading.Lock()
        self._requests: dict[tuple[str, ...], int] = {}  # METRIC_LABELS' values -> count
        self._latencies: dict[tuple[str, ...], list[float]] = {}  # -> [count per bucket..., sum in ms]
        self._started = False

    # -- public API ---------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeKnative:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "fnpack-cache").mkdir(parents=True, exist_ok=True)
        for informer in self._informers.values():
            informer.start()
        deadline = time.monotonic() + 15
        for informer in self._informers.values():
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise RuntimeError(f"fake Knative: could not list {informer.plural} from {self._server}")
        self._queue.add(("sweep",))  # owners deleted while no controller ran: collect their dependents
        self._worker.start()
        if self.run_pods:
            self._start_ingress()
            self._start_metrics()

    def stop(self) -> None:
        """Stop watching and reconciling, stop the ingress, then every process (SIGTERM, SIGKILL after 10 s)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._queue.wake()
        for informer in self._informers.values():
            informer.interrupt()
        if self._worker.is_alive():
            self._worker.join(15)
        for informer in self._informers.values():
            if informer.is_alive():
                informer.join(15)
        if self._ingress is not None:
            self._ingress.shutdown()
            self._ingress.server_close()
            self._ingress_thread.join(15)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        with self._pods_lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for pod in pods:
            pod.stopping = True
            pod.ready.set()
            if pod.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pod.process.pid, signal.SIGTERM)
        for pod in pods:
            if pod.process is not None:
                _terminate(pod.process)
        for thread in self._stoppers:
            thread.join(15)
        if self._proxy_http is not None:
            self._proxy_http.close()
        self._kube.http.close()
        for kube in self._snapshot_kubes.values():
            kube.http.close()

    def wait_idle(self, timeout: float = 10) -> None:
        """Return once this controller has caught up: its watches hold everything the server held when called
        and everything it wrote since, nothing is queued, every Service, Route, Configuration and Revision has
        status for its current generation, and every process it started is ready or failed (and its revision
        says so). TimeoutError, naming what is behind, otherwise."""
        deadline = time.monotonic() + timeout
        barrier: dict[str, tuple[int, dict[tuple[str, str], int]]] | None = self._server_snapshot()
        while True:
            behind: list[str] = []
            if barrier is not None:
                behind += self._behind_snapshot(barrier)
                if not behind:
                    barrier = None  # caught up with what the caller had written: that stays true
            behind += [f"queued: {key}" for key in self._queue.pending()[:5]]
            behind += self._behind_own_writes()
            for plural, informer in self._informers.items():
                for (namespace, name), obj in informer.snapshot().items():
                    if self._watched(namespace) and not obj["metadata"].get("deletionTimestamp") \
                            and not _observed(obj):
                        behind.append(f"{plural} {namespace}/{name}: generation "
                                      f"{obj['metadata'].get('generation')} not observed")
            behind += self._unsettled_pods()
            if not behind and not self._queue.pending():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake Knative not idle after {timeout} s: {'; '.join(behind[:10])}")
            time.sleep(0.005)

    def _server_snapshot(self) -> dict[str, tuple[int, dict[tuple[str, str], int]]]:
        """Each kind's objects and versions now, by consistent LISTs (in parallel: each can wait ~100 ms for the
        API server's watch cache to catch up with etcd)."""
        results: dict[str, Any] = {}

        def one(plural: str) -> None:
            try:
                with self._expect_lock:
                    kube = self._snapshot_kubes.get(plural)
                    if kube is None:
                        kube = self._snapshot_kubes[plural] = _Kube(self._new_http())
                results[plural] = kube.list(plural)
            except Exception as error:  # reported below
                results[plural] = error

        threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in PLURALS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        snapshot = {}
        for plural in PLURALS:
            listing = results.get(plural)
            if not isinstance(listing, dict):
                raise RuntimeError(f"fake Knative: listing {plural} failed: {listing}")
            snapshot[plural] = (int(listing["metadata"]["resourceVersion"]),
                                {(o["metadata"]["namespace"], o["metadata"]["name"]):
                                 int(o["metadata"]["resourceVersion"])
                                 for o in listing.get("items") or [] if self._watched(o["metadata"]["namespace"])})
        return snapshot

    def _behind_snapshot(self, snapshot: dict[str, tuple[int, dict[tuple[str, str], int]]]) -> list[str]:
        behind = []
        for plural, (listed_at, versions) in snapshot.items():
            cached = self._informers[plural].snapshot()
            for key, version in versions.items():
                obj = cached.get(key)
                if obj is None or int(obj["metadata"]["resourceVersion"]) < version:
                    if self._informers[plural].seen < version or obj is not None:
                        behind.append(f"{plural} {key[0]}/{key[1]}: watch behind the server")
            for key, obj in cached.items():
                if self._watched(key[0]) and key not in versions \
                        and int(obj["metadata"]["resourceVersion"]) <= listed_at:
                    behind.append(f"{plural} {key[0]}/{key[1]}: deleted, watch behind the server")
        return behind

    def _note_write(self, plural: str, obj: dict) -> None:
        with self._expect_lock:
            self._written[plural] = max(self._written.get(plural, 0), int(obj["metadata"]["resourceVersion"]))

    def _note_delete(self, plural: str, namespace: str, name: str, uid: str) -> None:
        with self._expect_lock:
            self._deleted[(plural, namespace, name)] = uid

    def _behind_own_writes(self) -> list[str]:
        behind = []
        with self._expect_lock:
            for plural, version in self._written.items():
                if self._informers[plural].seen < version:
                    behind.append(f"{plural}: watch behind this controller's write {version}")
            for (plural, namespace, name), uid in list(self._deleted.items()):
                obj = self._cached(plural, namespace, name)
                if obj is not None and obj["metadata"]["uid"] == uid:
                    behind.append(f"{plural} {namespace}/{name}: deletion not seen yet")
                else:
                    del self._deleted[(plural, namespace, name)]
        return behind

    def _unsettled_pods(self) -> list[str]:
        """Pods still starting, or whose revision's status does not show yet what they came to."""
        unsettled = []
        with self._pods_lock:
            pods = list(self._pods.values())
        for pod in pods:
            ready = _condition(self._cached("revisions", pod.namespace, pod.revision))["status"]
            if pod.state == "starting" or (pod.state == "ready" and ready != "True") or \
                    (pod.state == "failed" and ready != "False"):
                unsettled.append(f"pod {pod.namespace}/{pod.revision} {pod.state}")
        return unsettled

    def logs(self, revision: str, namespace: str | None = None) -> str:
        """Everything the revision's process wrote (stdout and stderr), also after it exited."""
        matches = [p for (ns, name), p in self._logs.items() if name == revision and namespace in (None, ns)]
        if not matches:
            raise KeyError(f"no process was started for revision {revision!r}")
        return matches[-1].read_text(errors="replace")

    @property
    def processes(self) -> dict[str, int]:
        """Revision name -> pid of its running process."""
        with self._pods_lock:
            return {name: pod.process.pid for (ns, name), pod in self._pods.items() if pod.alive()}

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _new_http(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", httpx.Timeout(10.0))
        return httpx.Client(base_url=self._server, verify=self._tls, headers=self._headers, trust_env=False,
                            **kwargs)

    def _watched(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def _cached(self, plural: str, namespace: str, name: str) -> dict | None:
        return self._informers[plural].get(namespace, name)

    def _on_event(self, plural: str, kind: str, obj: dict) -> None:
        """Called by the watches (cache already updated): queue what has to look again. Never blocks."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if not self._watched(namespace):
            return
        add = self._queue.add
        labels = meta.get("labels") or {}
        if kind == "DELETED":
            add(("gc", namespace, meta["uid"]))
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") in KIND_PLURAL:
                    add(("finalize", KIND_PLURAL[ref["kind"]], namespace, ref["name"]))
        elif meta.get("deletionTimestamp") and meta.get("finalizers"):
            add(("finalize", plural, namespace, name))
        if plural == "services":
            add(("service", namespace, name))
        elif plural == "configurations":
            if labels.get(SERVICE_LABEL):
                add(("service", namespace, labels[SERVICE_LABEL]))
            else:
                add(("configuration", namespace, name))  # one of its own, not a Service's
            for route in self._routes_referencing(namespace, configuration=name):
                add(("route", namespace, route))
        elif plural == "revisions":
            add(("revision", namespace, name))
            if labels.get(SERVICE_LABEL):
                add(("service", namespace, labels[SERVICE_LABEL]))
            for route in self._routes_referencing(namespace, revision=name):
                add(("route", namespace, route))
            if kind != "MODIFIED":
                add(("labeler", namespace))
        elif plural == "routes":
            add(("route", namespace, name))
            add(("labeler", namespace))
            if labels.get(SERVICE_LABEL):
                add(("service", namespace, labels[SERVICE_LABEL]))

    def _routes_referencing(self, namespace: str, revision: str | None = None,
                            configuration: str | None = None) -> list[str]:
        found = []
        for (ns, name), route in self._informers["routes"].snapshot().items():
            if ns != namespace:
                continue
            targets = ((route.get("spec") or {}).get("traffic") or []) + \
                ((route.get("status") or {}).get("traffic") or [])
            if any((revision and t.get("revisionName") == revision) or
                   (configuration and t.get("configurationName") == configuration) for t in targets):
                found.append(name)
            elif configuration and route["metadata"].get("labels", {}).get(SERVICE_LABEL) == configuration:
                found.append(name)
        return found

    def _work(self) -> None:
        while True:
            key = self._queue.take(self._stopping)
            if key is None:
                return
            started = time.monotonic()
            try:
                self._reconcile(key)
                self._failures.pop(key, None)
                log.debug("reconciled %s in %.1f ms", key, 1000 * (time.monotonic() - started))
            except _Conflict:
                self._queue.add(key, 0.005)
            except Exception:
                if self._stopping.is_set():
                    return
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(0.05 * 2 ** (failures - 1), 2.0)
                log.warning("reconciling %s failed (attempt %d); again in %.2f s", key, failures, delay,
                            exc_info=True)
                self._queue.add(key, delay)
            finally:
                self._queue.done()

    def _reconcile(self, key: tuple) -> None:
        kind = key[0]
        if kind == "service":
            self._reconcile_service(key[1], key[2])
        elif kind == "route":
            self._reconcile_route(key[1], key[2])
        elif kind == "configuration":
            config = self._kube.get("configurations", key[1], key[2])
            if config is not None and not config["metadata"].get("deletionTimestamp"):
                self._reconcile_configuration(config)
        elif kind == "revision":
            rev = self._kube.get("revisions", key[1], key[2])
            if rev is None:
                self._stop_pod((key[1], key[2]))
            else:
                self._reconcile_revision(rev)
        elif kind == "labeler":
            self._label(key[1])
        elif kind == "gc":
            self._collect(key[1], key[2])
        elif kind == "finalize":
            self._finalize(key[1], key[2], key[3])
        elif kind == "sweep":
            self._sweep()

    def _write_status(self, plural: str, obj: dict, status: dict) -> dict:
        if obj.get("status") == status:
            return obj
        body = dict(obj)
        body["status"] = status
        try:
            return self._kube.update_status(plural, body)
        except ApiError as error:
            if error.code == 409:
                raise _Conflict() from error
            raise

    def _violation(self, obj: dict, message: str) -> None:
        meta = obj["metadata"]
        key = (meta.get("uid"), meta.get("generation"), message)
        if key in self._violation_keys:
            return
        self._violation_keys.add(key)
        text = f"{obj.get('kind')} {meta['namespace']}/{meta['name']} (generation {meta.get('generation')}): {message}"
        self.violations.append(text)
        log.warning("Knative's webhook would refuse %s", text)

    # -- Service ------------------------------------------------------------------------------------------------

    def _reconcile_service(self, namespace: str, name: str) -> None:
        svc = self._kube.get("services", namespace, name)
        if svc is None or svc["metadata"].get("deletionTimestamp"):
            return  # dependents: the garbage collector's part (_collect, _finalize)
        self._check_service(svc)
        status = copy.deepcopy(svc.get("status") or {})
        conditions = _Conditions(status.get("conditions"), ("ConfigurationsReady", "RoutesReady"))

        def done() -> None:
            status["conditions"] = conditions.result()
            status["observedGeneration"] = svc["metadata"]["generation"]
            self._write_status("services", svc, status)

        config = self._kube.get("configurations", namespace, name)
        desired = self._desired_configuration(svc)
        if config is None:
            config = self._create("configurations", desired)
        elif not _controlled_by(config, svc):
            conditions.mark("ConfigurationsReady", "False", "NotOwned",
                            f'There is an existing Configuration "{name}" that we do not own.')
            return done()
        elif not (_same(config["spec"], desired["spec"])
                  and _meta_map(config, "labels") == desired["metadata"]["labels"]
                  and _meta_map(config, "annotations") == desired["metadata"]["annotations"]):
            config = copy.deepcopy(config)
            config["spec"] = desired["spec"]
            config["metadata"]["labels"] = desired["metadata"]["labels"]
            config["metadata"]["annotations"] = desired["metadata"]["annotations"]
            config = self._update("configurations", config)
        config, name_taken, revision = self._reconcile_configuration(config)

        config_status = config.get("status") or {}
        for field_name in ("latestCreatedRevisionName", "latestReadyRevisionName"):
            if config_status.get(field_name):
                status[field_name] = config_status[field_name]
        if not _observed(config):
            conditions.mark("ConfigurationsReady", "Unknown", "OutOfDate",
                            "The Configuration is still working to reflect the latest desired specification.")
        else:
            ready = _condition(config)
            conditions.mark("ConfigurationsReady", ready["status"], ready.get("reason", ""), ready.get("message", ""))
        if name_taken:
            template_name = svc["spec"]["template"]["metadata"]["name"]
            conditions.mark("RoutesReady", "False", "RevisionNameTaken",
                            f'The revision name "{template_name}" is taken by a conflicting Revision, '
                            "so traffic will not be migrated")
            return done()

        route = self._kube.get("routes", namespace, name)
        desired_route = self._desired_route(svc)
        if route is None:
            route = self._create("routes", desired_route)
        elif not _controlled_by(route, svc):
            conditions.mark("RoutesReady", "False", "NotOwned",
                            f'There is an existing Route "{name}" that we do not own.')
            return done()
        elif not (_same(route["spec"], desired_route["spec"])
                  and _meta_map(route, "labels") == desired_route["metadata"]["labels"]
                  and _meta_map(route, "annotations") == desired_route["metadata"]["annotations"]):
            route = copy.deepcopy(route)
            route["spec"] = desired_route["spec"]
            route["metadata"]["labels"] = desired_route["metadata"]["labels"]
            route["metadata"]["annotations"] = desired_route["metadata"]["annotations"]
            route = self._update("routes", route)
        known = {revision["metadata"]["name"]: revision} if revision is not None else {}
        route = self._reconcile_route(namespace, name, route, known) or route

        route_status = route.get("status") or {}
        for field_name in ("url", "address", "traffic"):
            if field_name in route_status:
                status[field_name] = copy.deepcopy(route_status[field_name])
        if not _observed(route):
            conditions.mark("RoutesReady", "Unknown", "OutOfDate",
                            "The Route is still working to reflect the latest desired specification.")
        else:
            ready = _condition(route)
            conditions.mark("RoutesReady", ready["status"], ready.get("reason", ""), ready.get("message", ""))
            programmed = len(route_status.get("traffic") or [])
            if ready["status"] == "True" and len(route["spec"].get("traffic") or []) != programmed:
                conditions.mark("RoutesReady", "Unknown", "TrafficNotMigrated",
                                "Traffic is not yet migrated to the latest revision.")
        done()

    def _desired_configuration(self, svc: dict) -> dict:
        meta = svc["metadata"]
        labels = {**_meta_map(svc, "labels"), SERVICE_LABEL: meta["name"], SERVICE_UID_LABEL: meta["uid"]}
        annotations = {k: v for k, v in _meta_map(svc, "annotations").items() if k != LAST_APPLIED}
        return {"apiVersion": API_VERSION, "kind": "Configuration",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
                             "annotations": annotations, "ownerReferences": [_controller_ref(svc)]},
                "spec": {"template": copy.deepcopy(svc["spec"].get("template") or {})}}

    def _desired_route(self, svc: dict) -> dict:
        meta = svc["metadata"]
        labels = {**_meta_map(svc, "labels"), SERVICE_LABEL: meta["name"]}
        annotations = {k: v for k, v in _meta_map(svc, "annotations").items() if k != LAST_APPLIED}
        # Knative's webhook defaults an empty traffic block to the latest revision; MakeRoute names the
        # Configuration in every target without a revision.
        traffic = copy.deepcopy(svc["spec"].get("traffic")) or [{"latestRevision": True, "percent": 100}]
        for target in traffic:
            if not target.get("revisionName"):
                target["configurationName"] = meta["name"]
        return {"apiVersion": API_VERSION, "kind": "Route",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
                             "annotations": annotations, "ownerReferences": [_controller_ref(svc)]},
                "spec": {"traffic": traffic}}

    def _create(self, plural: str, obj: dict) -> dict:
        try:
            return self._kube.create(plural, obj)
        except ApiError as error:
            if error.code == 409:  # created meanwhile (our watch is behind): read it next time
                raise _Conflict() from error
            raise

    def _update(self, plural: str, obj: dict) -> dict:
        try:
            return self._kube.update(plural, obj)
        except ApiError as error:
            if error.code == 409:
                raise _Conflict() from error
            raise

    # -- Configuration and Revision -------------------------------------------------------------------------------

    def _reconcile_configuration(self, config: dict) -> tuple[dict, bool, dict | None]:
        """The Configuration's Revision for its generation, and its status: (configuration, whether the BYO name
        is taken, the revision)."""
        meta = config["metadata"]
        namespace, generation = meta["namespace"], meta["generation"]
        template = config["spec"].get("template") or {}
        wanted = (template.get("metadata") or {}).get("name")
        status = copy.deepcopy(config.get("status") or {})
        conditions = _Conditions(status.get("conditions"), ())
        revision, taken = None, False
        if wanted:
            existing = self._kube.get("revisions", namespace, wanted)
            if existing is None:
                revision = self._create("revisions", self._make_revision(config, wanted))
            elif _controlled_by(existing, config) and (
                    (existing["metadata"].get("labels") or {}).get(CONFIGURATION_GENERATION_LABEL) == str(generation)
                    or _same(template.get("spec"), existing.get("spec"))):
                revision = existing
            else:
                taken = True
        else:
            # Knative names them consistently, from the generation (it also lists by label, for revisions made
            # before it did: none here).
            generated = f"{meta['name']}-{generation:05d}"
            revision = self._kube.get("revisions", namespace, generated) or self._create(
                "revisions", self._make_revision(config, generated))

        if taken:
            conditions.mark("Ready", "False", "RevisionFailed",
                            f'Revision creation failed with message: revisions.{GROUP} "{wanted}" already exists.')
        else:
            revision = self._reconcile_revision(revision)
            name = revision["metadata"]["name"]
            status["latestCreatedRevisionName"] = name
            ready = _condition(revision)
            if is_ready(revision):
                status["latestReadyRevisionName"] = name
                conditions.mark("Ready", "True")
            else:
                previous = status.get("latestReadyRevisionName")
                if previous and not is_ready(self._kube.get("revisions", namespace, previous)):
                    status.pop("latestReadyRevisionName", None)
                if is_failed(revision):
                    conditions.mark("Ready", "False", "RevisionFailed",
                                    f'Revision "{name}" failed with message: {ready.get("message", "")}.')
                else:
                    conditions.mark("Ready", "Unknown")
        status["conditions"] = sorted(conditions.current.values(), key=lambda c: c["type"])
        status["observedGeneration"] = generation
        return self._write_status("configurations", config, status), taken, revision

    def _make_revision(self, config: dict, name: str) -> dict:
        meta = config["metadata"]
        template = copy.deepcopy(config["spec"].get("template") or {})
        template_meta = template.get("metadata") or {}
        config_labels = meta.get("labels") or {}
        labels = {**(template_meta.get("labels") or {}),
                  CONFIGURATION_LABEL: meta["name"],
                  CONFIGURATION_GENERATION_LABEL: str(meta["generation"]),
                  CONFIGURATION_UID_LABEL: meta["uid"],
                  SERVICE_LABEL: config_labels.get(SERVICE_LABEL, ""),
                  SERVICE_UID_LABEL: config_labels.get(SERVICE_UID_LABEL, ""),
                  ROUTING_STATE_LABEL: "pending"}
        annotations = {**(template_meta.get("annotations") or {}), ROUTING_STATE_MODIFIED_ANNOTATION: _now()}
        return {"apiVersion": API_VERSION, "kind": "Revision",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                             "annotations": annotations, "ownerReferences": [_controller_ref(config)]},
                "spec": template.get("spec") or {}}

    def _reconcile_revision(self, rev: dict) -> dict:
        meta = rev["metadata"]
        if meta.get("deletionTimestamp"):
            return rev
        key = (meta["namespace"], meta["name"])
        status = copy.deepcopy(rev.get("status") or {})
        conditions = _Conditions(status.get("conditions"), ("ResourcesAvailable", "ContainerHealthy"))
        container = _serving_container(rev.get("spec") or {})
        status["containerStatuses"] = [{"name": container.get("name") or DEFAULT_CONTAINER_NAME}]
        if "@sha256:" in (container.get("image") or ""):
            status["containerStatuses"][0]["imageDigest"] = container["image"]
        if not self.run_pods:
            conditions.mark("ResourcesAvailable", "True")
            conditions.mark("ContainerHealthy", "True")
            conditions.mark("Active", "True")
            status["actualReplicas"] = status["desiredReplicas"] = 1
        else:
            with self._pods_lock:
                pod = self._pods.get(key)
            if pod is None and _condition(rev)["status"] == "Unknown" and not self._stopping.is_set():
                pod = self._start_pod(rev)  # a new revision: its initial scale of one
            if pod is None or (pod.activated and pod.state == "starting"):
                # Ready (or failed) before this controller: scaled to zero until a request comes (the ingress
                # starts it then, and it stays Ready while it scales up). Its status stays as it was.
                return rev
            if pod.state == "ready":
                conditions.mark("ResourcesAvailable", "True")
                conditions.mark("ContainerHealthy", "True")
                conditions.mark("Active", "True")
                status["actualReplicas"] = 1
            elif pod.state == "failed":
                if pod.reason in ("CreateContainerConfigError", "ProgressDeadlineExceeded"):
                    conditions.mark("ResourcesAvailable", "False", pod.reason, pod.message)
                else:
                    conditions.mark("ContainerHealthy", "False", pod.reason, pod.message)
                conditions.mark("Active", "False", "NoTraffic", "The target is not receiving traffic.")
                status["actualReplicas"] = 0
            else:
                conditions.mark("ResourcesAvailable", "Unknown", "Deploying")
                conditions.mark("Active", "Unknown", "Deploying")
                status["actualReplicas"] = 0
            status["desiredReplicas"] = 1
        status["conditions"] = conditions.result()
        status["observedGeneration"] = meta.get("generation", 1)
        return self._write_status("revisions", rev, status)

    # -- Route -------------------------------------------------------------------------------------------------

    def _host(self, name: str, namespace: str, labels: dict[str, str]) -> str:
        if labels.get(VISIBILITY_LABEL) == "cluster-local":
            return f"{name}.{namespace}.svc.cluster.local"
        return f"{name}.{namespace}.{self.domain}"

    def _reconcile_route(self, namespace: str, name: str, route: dict | None = None,
                         known: dict[str, dict] | None = None) -> dict | None:
        route = route if route is not None else self._kube.get("routes", namespace, name)
        if route is None or route["metadata"].get("deletionTimestamp"):
            return route
        if not any(ref.get("kind") == "Service" for ref in route["metadata"].get("ownerReferences") or []):
            self._check_traffic(route, (route.get("spec") or {}).get("traffic") or [], service=False)
        labels = _meta_map(route, "labels")
        status = copy.deepcopy(route.get("status") or {})
        conditions = _Conditions(status.get("conditions"),
                                 ("AllTrafficAssigned", "IngressReady", "CertificateProvisioned"))
        status["url"] = f"http://{self._host(name, namespace, labels)}"
        status["address"] = {"url": f"http://{name}.{namespace}.svc.cluster.local"}

        # Revisions just written, else GETs (a consistent LIST of another kind can take 100 ms on this server).
        revisions: dict[str, dict | None] = dict(known or {})
        targets, bad = [], None
        for spec_target in (route.get("spec") or {}).get("traffic") or []:
            revision_name, latest = spec_target.get("revisionName"), False
            if not revision_name:
                config_name = spec_target.get("configurationName") or labels.get(SERVICE_LABEL) or ""
                config = self._kube.get("configurations", namespace, config_name) if config_name else None
                if config is None:
                    bad = ("False", "ConfigurationMissing",
                           f'Configuration "{config_name}" referenced in traffic not found.')
                    break
                revision_name = (config.get("status") or {}).get("latestReadyRevisionName")
                if not revision_name:
                    if is_failed(config):
                        bad = ("False", "RevisionMissing",
                               f'Configuration "{config_name}" does not have any ready Revision.')
                    else:
                        bad = ("Unknown", "RevisionMissing",
                               f'Configuration "{config_name}" is waiting for a Revision to become ready.')
                    break
                latest = True
            else:
                if revision_name not in revisions:
                    revisions[revision_name] = self._kube.get("revisions", namespace, revision_name)
                revision = revisions[revision_name]
                if revision is None:
                    bad = ("False", "RevisionMissing", f'Revision "{revision_name}" referenced in traffic not found.')
                    break
                if not is_ready(revision):
                    if is_failed(revision):
                        bad = ("False", "RevisionMissing", f'Revision "{revision_name}" failed to become ready.')
                    else:
                        bad = ("Unknown", "RevisionMissing", f'Revision "{revision_name}" is not yet ready.')
                    break
            target: dict[str, Any] = {}
            if spec_target.get("tag"):
                target["tag"] = spec_target["tag"]
            target["revisionName"] = revision_name
            if spec_target.get("percent") is not None:
                target["percent"] = spec_target["percent"]
            target["latestRevision"] = latest
            if spec_target.get("tag"):
                target["url"] = f"http://{self._host(spec_target['tag'] + '-' + name, namespace, labels)}"
            targets.append(target)

        if bad is not None:
            # As Knative: the bad target is reported, and the traffic already programmed stays as it was.
            conditions.mark("AllTrafficAssigned", *bad)
        else:
            conditions.mark("AllTrafficAssigned", "True")
            status["traffic"] = targets
            conditions.mark("IngressReady", "True")
            if labels.get(VISIBILITY_LABEL) == "cluster-local":
                why = "TLS is not enabled for cluster-local"
            else:
                why = "external-domain-tls is not enabled"
            conditions.mark("CertificateProvisioned", "True", "TLSNotEnabled", why)
        status["conditions"] = conditions.result()
        status["observedGeneration"] = route["metadata"]["generation"]
        return self._write_status("routes", route, status)

    def _label(self, namespace: str) -> None:
        """Knative's labeler: revisions routed to get routingState "active" and the routes' names; revisions no
        longer routed to get "reserve"."""
        # From the caches: every route or revision event queues the labeler again, so it converges.
        routes = [r for (ns, _), r in self._informers["routes"].snapshot().items() if ns == namespace]
        routed: dict[str, set[str]] = {}
        for route in routes:
            if route["metadata"].get("deletionTimestamp"):
                continue
            spec, status = route.get("spec") or {}, route.get("status") or {}
            for target in (spec.get("traffic") or []) + (status.get("traffic") or []):
                if target.get("revisionName"):
                    routed.setdefault(target["revisionName"], set()).add(route["metadata"]["name"])
        for (ns, _), rev in self._informers["revisions"].snapshot().items():
            meta = rev["metadata"]
            if ns != namespace or meta.get("deletionTimestamp"):
                continue
            labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
            names = ",".join(sorted(routed.get(meta["name"], ())))
            state = labels.get(ROUTING_STATE_LABEL)
            want_state = "active" if names else ("reserve" if state == "active" or annotations.get(ROUTES_ANNOTATION)
                                                 else state)
            if names == annotations.get(ROUTES_ANNOTATION, "") and want_state == state:
                continue
            patch: dict[str, Any] = {"metadata": {"annotations": {ROUTES_ANNOTATION: names or None}}}
            if want_state != state:
                patch["metadata"]["labels"] = {ROUTING_STATE_LABEL: want_state}
                patch["metadata"]["annotations"][ROUTING_STATE_MODIFIED_ANNOTATION] = _now()
            self._kube.merge_patch("revisions", namespace, meta["name"], patch)

    # -- the garbage collector's part -----------------------------------------------------------------------------

    def _dependents(self, namespace: str, uid: str) -> list[tuple[str, dict]]:
        found = []
        for plural, informer in self._informers.items():
            for (ns, _), obj in informer.snapshot().items():
                refs = obj["metadata"].get("ownerReferences") or []
                if ns == namespace and any(ref.get("uid") == uid for ref in refs):
                    found.append((plural, obj))
        return found

    def _collect(self, namespace: str, uid: str) -> None:
        """An owner is gone: delete what it owned (background propagation)."""
        for plural, obj in self._dependents(namespace, uid):
            if not obj["metadata"].get("deletionTimestamp"):
                self._kube.delete(plural, namespace, obj["metadata"]["name"], obj["metadata"]["uid"])

    def _finalize(self, plural: str, namespace: str, name: str) -> None:
        """Foreground deletion (dependents first, then the owner) and orphaning, as the garbage collector does."""
        obj = self._kube.get(plural, namespace, name)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        dependents = self._dependents(namespace, meta["uid"])
        if "orphan" in finalizers:
            for dep_plural, dep in dependents:
                refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != meta["uid"]]
                self._kube.merge_patch(dep_plural, namespace, dep["metadata"]["name"],
                                       {"metadata": {"ownerReferences": refs or None}})
            finalizers.remove("orphan")
        elif "foregroundDeletion" in finalizers:
            if dependents:
                for dep_plural, dep in dependents:
                    if not dep["metadata"].get("deletionTimestamp"):
                        self._kube.delete(dep_plural, namespace, dep["metadata"]["name"], dep["metadata"]["uid"],
                                          propagation="Foreground")
                return  # each dependent's deletion queues this again
            finalizers.remove("foregroundDeletion")
        else:
            return
        try:
            self._kube.merge_patch(plural, namespace, name, {"metadata": {
                "finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]}})
        except ApiError as error:
            if error.code == 409:
                raise _Conflict() from error
            raise

    def _sweep(self) -> None:
        """Dependents whose owner no longer exists (deleted while no controller ran) are deleted."""
        for plural, informer in self._informers.items():
            for (namespace, name), obj in informer.snapshot().items():
                if not self._watched(namespace):
                    continue
                for ref in obj["metadata"].get("ownerReferences") or []:
                    owner_plural = KIND_PLURAL.get(ref.get("kind"))
                    if owner_plural is None or not (ref.get("apiVersion") or "").startswith(GROUP):
                        continue
                    owner = self._cached(owner_plural, namespace, ref["name"])
                    if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
                        owner = self._kube.get(owner_plural, namespace, ref["name"])
                    if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
                        self._queue.add(("gc", namespace, ref["uid"]))

    # -- what Knative's webhook would refuse ------------------------------------------------------------------------

    def _check_service(self, svc: dict) -> None:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        template = spec.get("template") or {}
        template_name = (template.get("metadata") or {}).get("name")
        if template_name and not template_name.startswith(meta["name"] + "-"):
            self._violation(svc, f'spec.template.metadata.name: "{template_name}" must have prefix "{meta["name"]}-"')
        pod_spec = template.get("spec") or {}
        gated = [f"spec.template.spec.{f}" for f in GATED_PODSPEC_FIELDS if pod_spec.get(f)]
        if gated:
            self._violation(svc, "must not set the field(s): " + ", ".join(gated))
        for container in pod_spec.get("containers") or []:
            reserved = [e.get("name") for e in container.get("env") or [] if e.get("name") in RESERVED_ENV]
            if reserved:
                self._violation(svc, f"env: {reserved} are reserved by Knative")
            if len(container.get("ports") or []) > 1:
                self._violation(svc, "more than one container port is set")
        timeout = pod_spec.get("timeoutSeconds")
        if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_SECONDS:
            self._violation(svc, f"expected 0 <= {timeout} <= {MAX_TIMEOUT_SECONDS}: spec.template.spec.timeoutSeconds")
        self._check_traffic(svc, spec.get("traffic") or [], service=True)
        previous = self._templates.get(meta["uid"])
        if previous is not None and previous[0] == template_name and template_name and \
                not _same(previous[1], template):
            self._violation(svc, "Saw the following changes without a name change (-old +new): spec.template "
                                 f"(BYO revision name {template_name!r} kept with a changed template)")
        self._templates[meta["uid"]] = (template_name, copy.deepcopy(template))

    def _check_traffic(self, obj: dict, traffic: list[dict], service: bool) -> None:
        if not traffic:
            if not service:
                self._violation(obj, "missing field(s): spec.traffic")
            return
        total, tags = 0, set()
        for i, target in enumerate(traffic):
            where = f"spec.traffic[{i}]"
            percent = target.get("percent")
            if percent is not None and not 0 <= percent <= 100:
                self._violation(obj, f"expected 0 <= {percent} <= 100: {where}.percent")
            total += percent or 0
            has_revision, has_config = bool(target.get("revisionName")), bool(target.get("configurationName"))
            if has_revision and has_config:
                self._violation(obj, f"expected exactly one, got both: {where}.configurationName, {where}.revisionName")
            if target.get("latestRevision") and has_revision:
                self._violation(obj, f"may not set revisionName when latestRevision is true: {where}.revisionName")
            if target.get("latestRevision") is False and not has_revision:
                self._violation(obj, f"may not set latestRevision false without a revisionName: {where}")
            if not service and not (has_revision or has_config):
                self._violation(obj, f"expected exactly one, got neither: {where}.configurationName, "
                                     f"{where}.revisionName")
            if target.get("url"):
                self._violation(obj, f"must not set the field(s): {where}.url")
            tag = target.get("tag")
            if tag:
                if tag in tags:
                    self._violation(obj, f'Multiple definitions for "{tag}": spec.traffic[*].tag')
                tags.add(tag)
                if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", tag) or len(tag) > 63:
                    self._violation(obj, f"invalid tag {tag!r}: {where}.tag")
        if total != 100:
            self._violation(obj, f"Traffic targets sum to {total}, want 100: spec.traffic")

    # -- pods -----------------------------------------------------------------------------------------------------

    def _start_pod(self, rev: dict, activated: bool = False) -> _Pod:
        meta, spec = rev["metadata"], rev.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        log_path = self.workdir / "logs" / namespace / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pod = _Pod(namespace, name, _free_port(), log_path, activated=activated)
        with self._pods_lock:
            if (namespace, name) in self._pods:
                return self._pods[(namespace, name)]
            self._pods[(namespace, name)] = pod
            self._logs[(namespace, name)] = log_path
        container = _serving_container(spec)
        try:
            env = self._pod_env(rev, container, pod.port)
        except LookupError as error:
            pod.fail("CreateContainerConfigError", str(error.args[0]))
            return pod
        argv = [_expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not container.get("command"):
            pod.fail("ExitCode127", "Container failed with: the fake runs a container's command and args as a "
                                    "local process, and this container has no command (images are not run)")
            return pod
        if argv[0] in ("python", "python3") or re.fullmatch(r"python3(\.\d+)?", Path(argv[0]).name or ""):
            argv[0] = sys.executable
        cwd = container.get("workingDir")
        if not cwd or not Path(cwd).is_dir():
            cwd = self.workdir / "pods" / namespace / name
            Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            try:
                pod.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as error:
                pod.fail("ExitCode127", f"Container failed with: {error}")
                return pod
        threading.Thread(target=self._supervise, args=(pod, rev, container), daemon=True,
                         name=f"fake-knative-pod-{name}").start()
        return pod

    def _pod_env(self, rev: dict, container: dict, port: int) -> dict[str, str]:
        meta = rev["metadata"]
        labels = meta.get("labels") or {}
        env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "LANG", "TMPDIR")}
        env["FNPACK_CACHE_DIR"] = str(self.workdir / "fnpack-cache")
        env.update(self.extra_env)
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if not ref:
                continue  # configMapRef: there are no ConfigMaps on the test server
            values = self._secret(meta["namespace"], ref.get("name", ""))
            if values is None:
                if ref.get("optional"):
                    continue
                raise LookupError(f'secret "{ref.get("name", "")}" not found')
            env.update({source.get("prefix", "") + k: str(v) for k, v in values.items()})
        for item in container.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = _expand(str(item.get("value", "")), env)
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue  # fieldRef, configMapKeyRef, resourceFieldRef: not here
            values = self._secret(meta["namespace"], ref.get("name", ""))
            if values is None or ref.get("key") not in values:
                if ref.get("optional"):
                    continue
                if values is None:
                    raise LookupError(f'secret "{ref.get("name", "")}" not found')
                raise LookupError(f"couldn't find key {ref.get('key')} in Secret {meta['namespace']}/{ref.get('name')}")
            env[item["name"]] = str(values[ref["key"]])
        env.update({"PORT": str(port), "K_REVISION": meta["name"],
                    "K_CONFIGURATION": labels.get(CONFIGURATION_LABEL, ""), "K_SERVICE": labels.get(SERVICE_LABEL, ""),
                    "HOST": "127.0.0.1"})
        return env

    def _secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.secrets.get(f"{namespace}/{name}")
        return found if found is not None else self.secrets.get(name)

    def _probe(self, probe: dict, pod: _Pod, container: dict, env: dict[str, str] | None = None) -> bool:
        timeout = float(probe.get("timeoutSeconds") or 1)
        declared = container.get("ports") or []
        ports = {p.get("containerPort") for p in declared} | {p.get("name") for p in declared}

        def port_of(value: Any) -> int:
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if value in (None, 0, "") or value in ports:
                return pod.port  # Knative probes the user port, whatever the container port says
            return int(value)

        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                scheme = (get.get("scheme") or "HTTP").lower()
                path = get.get("path") or "/"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/1.36")
                url = f"{scheme}://127.0.0.1:{port_of(get.get('port'))}{path if path.startswith('/') else '/' + path}"
                response = httpx.get(url, headers=headers, timeout=timeout, verify=False, trust_env=False)
                return 200 <= response.status_code < 400
            if "exec" in probe:
                done = subprocess.run((probe["exec"] or {}).get("command") or ["false"], env=env,
                                      capture_output=True, timeout=timeout)
                return done.returncode == 0
            port = port_of((probe.get("tcpSocket") or probe.get("grpc") or {}).get("port"))
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return True
        except (httpx.HTTPError, OSError, subprocess.TimeoutExpired, ValueError):
            return False

    def _supervise(self, pod: _Pod, rev: dict, container: dict) -> None:
        """Probe the process until ready (startupProbe first), then wait for it to exit; report each change."""
        key = ("revision", pod.namespace, pod.revision)
        process = pod.process
        annotations = rev["metadata"].get("annotations") or {}
        deadline = time.monotonic() + _duration(annotations.get(PROGRESS_DEADLINE_ANNOTATION),
                                                DEFAULT_PROGRESS_DEADLINE)

        def exited() -> bool:
            if process.poll() is None:
                return False
            if not pod.stopping:
                code = process.returncode
                code = 128 - code if code < 0 else code  # killed by a signal: a container's 128+n
                text = _tail(pod.log_path) or ("container exited with no error" if code == 0 else "")
                pod.fail(f"ExitCode{code}", f"Container failed with: {text}")
            return True

        def wait_until(probe: dict | None, default_period: float, startup: bool) -> bool:
            probe = probe or {}
            period = float(probe.get("periodSeconds") or default_period)
            failures, threshold = 0, int(probe.get("failureThreshold") or 3)
            if pod.ready.wait(float(probe.get("initialDelaySeconds") or 0)):
                return False
            while not pod.stopping:
                if exited():
                    return False
                if self._probe(probe, pod, container):
                    return True
                failures += 1
                if startup and failures >= threshold:
                    pod.fail("ExitCode137", f"Container failed with: startup probe failed {failures} times\n"
                                            f"{_tail(pod.log_path)}".strip())
                    self._kill(pod)
                    return False
                if time.monotonic() > deadline:
                    pod.fail("ProgressDeadlineExceeded", "Initial scale was never achieved")
                    self._kill(pod)
                    return False
                if pod.ready.wait(period):
                    return False
            return False

        try:
            startup = container.get("startupProbe")
            readiness = container.get("readinessProbe") or {"tcpSocket": {"port": 0}}  # Knative's default probe
            started = startup is None or wait_until(startup, 10.0, True)  # kubelet's default period: 10 s
            if started and wait_until(readiness, AGGRESSIVE_PROBE_PERIOD, False):
                pod.state = "ready"
                pod.ready.set()
            self._queue.add(key)
            if pod.state == "ready":
                process.wait()
                if exited():
                    self._queue.add(key)
        except Exception:  # never let a pod's thread die silently
            log.exception("supervising %s/%s failed", pod.namespace, pod.revision)
            pod.fail("ExitCode1", "Container failed with: the fake's supervisor failed (see the test log)")
            self._queue.add(key)

    def _kill(self, pod: _Pod) -> None:
        pod.stopping = True
        if pod.process is not None:
            _terminate(pod.process, grace=2)

    def _stop_pod(self, key: tuple[str, str]) -> None:
        with self._pods_lock:
            pod = self._pods.pop(key, None)
        if pod is None:
            return
        pod.stopping = True
        pod.ready.set()
        if pod.process is not None:
            thread = threading.Thread(target=_terminate, args=(pod.process,), daemon=True)
            thread.start()
            self._stoppers.append(thread)

    def _activate(self, namespace: str, revision: str, timeout: float = 60) -> _Pod | None:
        """The activator: a revision that is Ready but has no process here is started, and waited for."""
        with self._activation_lock:
            with self._pods_lock:
                pod = self._pods.get((namespace, revision))
            if pod is None:
                rev = self._cached("revisions", namespace, revision)
                if rev is None or not is_ready(rev) or self._stopping.is_set():
                    return None
                pod = self._start_pod(rev, activated=True)
        pod.ready.wait(timeout)
        return pod if pod.state == "ready" and pod.alive() else None

    # -- the queue-proxies' metrics ----------------------------------------------------------------------------

    def _count(self, namespace: str, revision: str, pod: _Pod, code: int, milliseconds: float) -> None:
        """One request a revision's queue-proxy handed its user container (pkg/queue/request_metric.go)."""
        labels = (self._cached("revisions", namespace, revision) or {}).get("metadata", {}).get("labels") or {}
        key = (labels.get(CONFIGURATION_LABEL, ""), "queue-proxy", namespace, f"{revision}-deployment-{pod.port}",
               str(code), f"{code // 100}xx", revision, labels.get(SERVICE_LABEL, ""))
        with self._metrics_lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            buckets = self._latencies.setdefault(key, [0] * len(LATENCY_BUCKETS_MS) + [0.0])
            for i, bound in enumerate(LATENCY_BUCKETS_MS):
                if milliseconds <= bound:
                    buckets[i] += 1
            buckets[-1] += milliseconds

    def metrics_text(self) -> str:
        """The Prometheus exposition the queue-proxies' metrics endpoints would show, all in one."""
        def labels(key: tuple[str, ...], **more: str) -> str:
            values = dict(zip(METRIC_LABELS, key), **more)
            return "{" + ",".join(f'{k}="{_escaped(v)}"' for k, v in values.items()) + "}"

        with self._metrics_lock:
            requests = dict(self._requests)
            latencies = {k: list(v) for k, v in self._latencies.items()}
        out = [f"# HELP {REQUEST_COUNT} The number of requests that are routed to user-container",
               f"# TYPE {REQUEST_COUNT} counter"]
        out += [f"{REQUEST_COUNT}{labels(key)} {n}" for key, n in sorted(requests.items())]
        out += [f"# HELP {REQUEST_LATENCIES} The response time in millisecond", f"# TYPE {REQUEST_LATENCIES} histogram"]
        for key, values in sorted(latencies.items()):
            out += [f"{REQUEST_LATENCIES}_bucket{labels(key, le=str(bound))} {n}"
                    for bound, n in zip(LATENCY_BUCKETS_MS, values)]
            out.append(f"{REQUEST_LATENCIES}_bucket{labels(key, le='+Inf')} {requests[key]}")
            out.append(f"{REQUEST_LATENCIES}_sum{labels(key)} {values[-1]!r}")
            out.append(f"{REQUEST_LATENCIES}_count{labels(key)} {requests[key]}")
        return "\n".join(out) + "\n"

    def _start_metrics(self) -> None:
        controller = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                found = self.path.split("?", 1)[0] == "/metrics"
                body = controller.metrics_text().encode() if found else b"404 page not found\n"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self._metrics_server = Server(("127.0.0.1", 0), Handler)
        self.metrics_url = f"http://127.0.0.1:{self._metrics_server.server_address[1]}"
        threading.Thread(target=self._metrics_server.serve_forever, kwargs={"poll_interval": 0.1},
                         name="fake-knative-metrics", daemon=True).start()

    # -- the ingress -------------------------------------------------------------------------------------------

    def _routing(self, host: str) -> tuple[str, list[tuple[str, int]]] | None:
        """(namespace, [(revision, weight)]) for a Host, from the Routes' status (what Knative has programmed)."""
        host = host.lower().rsplit(":", 1)[0] if not host.startswith("[") else host.lower()
        for (namespace, name), route in self._informers["routes"].snapshot().items():
            status = route.get("status") or {}
            traffic = status.get("traffic") or []
            if not status.get("url") or not self._watched(namespace):
                continue
            local = {f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc", f"{name}.{namespace}"}
            if host == httpx.URL(status["url"]).host or host in local:
                split = [(t["revisionName"], int(t.get("percent") or 0)) for t in traffic if t.get("percent")]
                return namespace, split
            for target in traffic:
                tag = target.get("tag")
                if not tag:
                    continue
                tag_local = {f"{tag}-{name}.{namespace}.svc.cluster.local", f"{tag}-{name}.{namespace}.svc",
                             f"{tag}-{name}.{namespace}"}
                if (target.get("url") and host == httpx.URL(target["url"]).host) or host in tag_local:
                    return namespace, [(target["revisionName"], 100)]
        return None

    def _start_ingress(self) -> None:
        controller = self
        no_delay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # small writes must not wait for delayed ACKs
        transport = httpx.HTTPTransport(socket_options=no_delay,
                                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self._proxy_http = httpx.Client(trust_env=False, timeout=httpx.Timeout(DEFAULT_TIMEOUT_SECONDS, connect=5),
                                        transport=transport)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _finish(self, body: bytes) -> None:
                """The end of the headers and the body in one write."""
                self._headers_buffer.append(b"\r\n")
                if self.command != "HEAD":
                    self._headers_buffer.append(body)
                self.flush_headers()

            def _reply(self, code: int, text: str, revision: str | None = None) -> None:
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                if revision:
                    self.send_header("knative-revision", revision)
                self._finish(body)

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _proxy(self) -> None:
                body = self._body()
                found = controller._routing(self.headers.get("Host") or "")
                if found is None:
                    return self._reply(404, f"no Route serves host {self.headers.get('Host')!r}")
                namespace, split = found
                if not split:
                    return self._reply(503, "the route has no traffic target with a percent")
                revision = random.choices([r for r, _ in split], weights=[w for _, w in split])[0]
                pod = controller._activate(namespace, revision)
                if pod is None:
                    return self._reply(503, f"revision {revision} has no running process", revision)
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP
                           and k.lower() != "content-length"]
                headers.append(("X-Forwarded-For", self.client_address[0]))
                headers.append(("X-Forwarded-Proto", "http"))
                rev = controller._cached("revisions", namespace, revision) or {}
                timeout = (rev.get("spec") or {}).get("timeoutSeconds") or DEFAULT_TIMEOUT_SECONDS
                started = time.monotonic()
                try:
                    request = controller._proxy_http.build_request(
                        self.command, f"http://127.0.0.1:{pod.port}{self.path}", headers=headers, content=body,
                        timeout=httpx.Timeout(float(timeout), connect=5))
                    response = controller._proxy_http.send(request, stream=True)
                    try:
                        data = b"".join(response.iter_raw())
                    finally:
                        response.close()
                except httpx.HTTPError as error:  # the queue-proxy answers 502 for its user container
                    controller._count(namespace, revision, pod, 502, (time.monotonic() - started) * 1000)
                    return self._reply(502, f"revision {revision}: {error}", revision)
                controller._count(namespace, revision, pod, response.status_code, (time.monotonic() - started) * 1000)
                self.send_response(response.status_code, response.reason_phrase)
                for name, value in response.headers.multi_items():
                    if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                # A test aid, not something Knative's ingress adds: which revision answered.
                self.send_header("knative-revision", revision)
                self._finish(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self._ingress = Server(("127.0.0.1", 0), Handler)
        self.ingress_url = f"http://127.0.0.1:{self._ingress.server_address[1]}"
        self._ingress_thread = threading.Thread(target=self._ingress.serve_forever, kwargs={"poll_interval": 0.1},
                                                name="fake-knative-ingress", daemon=True)
        self._ingress_thread.start()


__all__ = ["FakeKnative", "ApiError", "connect", "is_ready", "is_failed"]
