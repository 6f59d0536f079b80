"""A protocol-faithful fake OpenFaaS gateway (Community Edition, on faas-netes) for the tests.

    with FakeOpenFaaS(workdir=tmp_path / "openfaas", secrets={"storage": "key"}) as gateway:
        httpx.post(f"{gateway.url}/system/functions", auth=("admin", "secret"), json={...})
        gateway.wait_ready("fn")
        httpx.post(f"{gateway.url}/function/fn", content=b"...")

No OpenFaaS can run here (faasd needs containerd, faas-netes a cluster), so this one HTTP server stands in for
the gateway (openfaas/faas `gateway/`, 0.27), its provider faas-netes CE (0.18, `pkg/handlers`, `pkg/k8s`) and the
Kubernetes Deployment controller under it: each deployed function's replicas are local processes. Every request
is checked against the upstream OpenAPI spec (`../shared/conformance/openfaas-gateway-spec.openapi.yml`) and so is
every answer; status codes and bodies are those the real components write (the source file is named beside each).

It never imports fnpack: a replica runs the runtime image's ENTRYPOINT, `python -m fnpack.worker`, as a process
of this interpreter (or the `command` given), and everything else is plain HTTP. `FakeOpenFaaS`'s docstring
lists what it does and what it leaves out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import http.client
import http.server
import itertools
import json
import logging
import os
import platform
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker
from referencing import Registry
from referencing.jsonschema import DRAFT4

log = logging.getLogger("fake_openfaas")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FNPACK_SHARED") or REPO.parent / "shared")
SPEC_PATH = SHARED / "conformance" / "openfaas-gateway-spec.openapi.yml"

NAMESPACE = "openfaas-fn"  # faas-netes' default (and, in CE, only) function namespace
GATEWAY_VERSION = "0.27.13"  # ghcr.io/openfaas/gateway in faas-netes' chart/openfaas/values.yaml
GATEWAY_SHA = "fake0000000000000000000000000000000000000"
PROVIDER_NAME = "fake"
PROVIDER_VERSION = "0.18.17"  # ghcr.io/openfaas/faas-netes (CE) in the same chart
MAX_FUNCTIONS = 15  # faas-netes pkg/handlers/replica_reader.go: MaxFunctions for CE
MAX_REPLICAS = 5  # idem MaxReplicas; the CE gateway's scaling/ranges.go clamps to [1, 5] as well
UPSTREAM_TIMEOUT = 60.0  # chart: gateway.upstreamTimeout "1m"
LOGS_TIMEOUT = 65.0  # chart: gateway.writeTimeout "1m05s" bounds a followed log stream
DEFAULT_LOG_SINCE = 300.0  # faas-netes pkg/k8s/logs.go defaultLogSince (5 minutes) when neither tail nor since
PROBE_PATH = "/_/health"  # faas-netes pkg/k8s/probes.go (httpProbe: true in the chart)
STARTUP_PROBE_PERIOD = 0.05  # the chart probes every 2 s; the fake probes a starting replica every 50 ms
READINESS_PERIOD = 1.0  # then every second; 3 failures make it unready (failureThreshold 3), a success ready
RESTART_BACKOFF = 0.5  # Kubernetes' first restart backoff is 10 s: shortened for the tests
TERMINATION_GRACE = 30.0  # terminationGracePeriodSeconds' default: the longest a retiring replica may drain
KILL_AFTER = 10.0  # SIGTERM, then SIGKILL this long after

DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # faas-netes pkg/handlers/validate.go
NAME_EXPRESSION = r"[-a-zA-Z_0-9.]+"  # the gateway's mux NameExpression
# Kubernetes' resource.Quantity grammar (a number, then an optional SI, binary-SI or exponent suffix).
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[munkMGTPE])?$")
QUANTITY_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"

# Hop-by-hop headers the gateway removes from a forwarded request (gateway/handlers/forwarding_proxy.go), plus
# Expect (the fake answers 100-continue itself) and Content-Length (set again for the body as read).
HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "expect", "content-length", "host"}

# Fields that faas-provider's Go types accept beyond the spec's schemas (types/function_deployment.go,
# types/requests.go): not unknown to the real gateway, so not refused as unknown here.
GO_EXTRA_FIELDS: dict[str, set[str]] = {
    "FunctionResources": {"nvidia.com/gpu", "amd.com/gpu", "intel.com/gpu"},
    "DeleteFunctionRequest": {"namespace"},
}

# Answers the real gateway gives that its own spec does not list (status codes), each with its source. They are
# sent as the real gateway sends them and not counted as answer violations.
KNOWN_DEVIATIONS: dict[tuple[str, str, int], str] = {
    ("put", "/system/functions", 202): "faas-netes update.go answers 202 Accepted, the spec lists 200",
    ("delete", "/system/functions", 202): "faas-netes delete.go answers 202 Accepted, the spec lists 200",
    ("get", "/system/functions", 400): "faas-netes reader.go: 'namespace must be: openfaas-fn'",
    ("get", "/system/function/{functionName}", 400): "faas-netes replica_reader.go: 'namespace must be: ...'",
    ("post", "/system/scale-function/{functionName}", 400): "faas-netes replica_updater.go: namespace, bad JSON",
    ("post", "/system/secrets", 202): "faas-netes secrets.go answers 202 Accepted, the spec lists 201",
    ("post", "/system/secrets", 409): "faas-netes secrets.go: AlreadyExists is 409 with no body",
    ("put", "/system/secrets", 202): "faas-netes secrets.go answers 202 Accepted, the spec lists 200",
    ("delete", "/system/secrets", 202): "faas-netes secrets.go answers 202 Accepted, the spec lists 204",
    ("get", "/system/secrets", 400): "faas-netes secrets.go: a namespace other than openfaas-fn, no body",
}
# Answer bodies whose spec schema is wrong about the real one: GET /system/secrets answers a list.
BODY_OVERRIDES: dict[tuple[str, str, int], dict] = {
    ("get", "/system/secrets", 200): {"type": "array", "items": {"$ref": "#/components/schemas/SecretDescription"}},
}

# The Go client's default histogram buckets (prometheus.DefBuckets), which gateway_functions_seconds uses.
GO_DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' rand.String alphabet


class AnswerViolation(AssertionError):
    """The fake answered something its own spec does not allow: a bug in the fake."""


# ---------------------------------------------------------------------------------------------------------------
# The spec: operations and validation.


@dataclass
class _Operation:
    method: str  # lower case
    template: str  # "/system/function/{functionName}"
    regex: re.Pattern
    spec: dict


class _Spec:
    """The gateway's OpenAPI 3.0 document: matching a request to its operation, checking requests and answers."""

    URI = "urn:fnpack-test:openfaas-gateway-spec"

    def __init__(self, path: Path) -> None:
        self.document = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.components = self.document.get("components", {}).get("schemas", {})
        self.registry = Registry().with_resource(self.URI, DRAFT4.create_resource(self.document))
        self.operations: list[_Operation] = []
        for template, item in self.document["paths"].items():
            pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+?)", re.escape(template))
            if template.endswith("{functionName}.{namespace}"):
                pattern = pattern.replace("[^/]+?)\\.(?P<namespace>[^/]+?)", "[^/]+)\\.(?P<namespace>[^/.]+)")
            for method, op in item.items():
                if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                    self.operations.append(_Operation(method, template, re.compile(f"^{pattern}$"), op))
        self._validators: dict[tuple[str, bool], Any] = {}

    def operation(self, method: str, path: str) -> tuple[_Operation, dict[str, str]] | None:
        for op in self.operations:
            if op.method == method.lower():
                match = op.regex.match(path)
                if match:
                    return op, match.groupdict()
        return None

    def _absolute(self, schema: Any) -> Any:
        """`schema` with its local $refs made absolute (into the registered document)."""
        if isinstance(schema, dict):
            return {k: (self.URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else self._absolute(v))
                    for k, v in schema.items()}
        if isinstance(schema, list):
            return [self._absolute(v) for v in schema]
        return schema

    def validator(self, schema: dict, request: bool) -> Any:
        key = (json.dumps(schema, sort_keys=True), request)
        found = self._validators.get(key)
        if found is None:
            cls = OAS30WriteValidator if request else OAS30ReadValidator
            found = cls(self._absolute(schema), registry=self.registry, format_checker=oas30_format_checker)
            self._validators[key] = found
        return found

    def errors(self, instance: Any, schema: dict, request: bool, where: str = "") -> list[str]:
        """Schema errors, then fields the gateway's Go types do not have (it would ignore them silently)."""
        found = []
        for error in sorted(self.validator(schema, request).iter_errors(instance), key=lambda e: list(e.path)):
            at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            found.append(f"{where}{at or ''}: {error.message}" if (where or at) else error.message)
        if not found:
            found.extend(f"{where}{at}: unknown field (not in the spec nor in faas-provider's Go types: the "
                         "gateway would ignore it)" for at in self._unknown(instance, schema, ""))
        return found

    def _resolve(self, schema: dict) -> tuple[dict, str | None]:
        name = None
        while isinstance(schema, dict) and "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.components[name]
        return schema, name

    def _unknown(self, instance: Any, schema: Any, where: str) -> list[str]:
        if not isinstance(schema, dict) or instance is None:
            return []
        schema, name = self._resolve(schema)
        parts = [(schema, name)] + [self._resolve(s) for s in schema.get("allOf") or []]
        properties: dict[str, Any] = {}
        extras: set[str] = set()
        open_ended = False
        for part, part_name in parts:
            properties.update(part.get("properties") or {})
            extras |= GO_EXTRA_FIELDS.get(part_name or "", set())
            open_ended = open_ended or "additionalProperties" in part
        found: list[str] = []
        if isinstance(instance, dict):
            if properties and not open_ended:
                found += [f"{where}.{k}" for k in instance if k not in properties and k not in extras]
            additional = next((p["additionalProperties"] for p, _ in parts
                               if isinstance(p.get("additionalProperties"), dict)), None)
            for key, value in instance.items():
                if key in properties:
                    found += self._unknown(value, properties[key], f"{where}.{key}")
                elif additional is not None:
                    found += self._unknown(value, additional, f"{where}.{key}")
        elif isinstance(instance, list):
            items = next((p["items"] for p, _ in parts if "items" in p), None)
            for i, value in enumerate(instance):
                found += self._unknown(value, items, f"{where}[{i}]")
        return found

    # -- requests -------------------------------------------------------------------------------------------------

    def check_request(self, op: _Operation, path_params: dict[str, str], query: dict[str, list[str]],
                      headers: http.client.HTTPMessage, body: bytes) -> list[str]:
        problems: list[str] = []
        for param in op.spec.get("parameters") or []:
            where, name, schema = param["in"], param["name"], param.get("schema") or {}
            if where == "path":
                raw = [path_params[name]] if name in path_params else []
            elif where == "query":
                raw = query.get(name, [])
            elif where == "header":
                raw = headers.get_all(name) or []
            else:
                continue
            if not raw:
                if param.get("required"):
                    problems.append(f"{where} parameter {name!r} is required")
                continue
            value, error = _coerce(raw[-1], schema)
            errors = [error] if error else self.errors(value, schema, request=True)
            problems += [f"{where} parameter {name}={raw[-1]!r}: {e}" for e in errors]
        declared = op.spec.get("requestBody")
        if declared is None:
            return problems
        if not body:
            if declared.get("required"):
                problems.append("the request body is required")
            return problems
        content = declared.get("content") or {}
        media = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if "application/json" in content:
            if media != "application/json":
                problems.append(f"Content-Type {headers.get('Content-Type')!r}: the body must be application/json")
                return problems
            try:
                instance = json.loads(body)
            except ValueError as error:
                problems.append(f"the body is not JSON: {error}")
                return problems
            problems += [f"body{e}" if e.startswith((".", "[", ":")) else f"body: {e}"
                         for e in self.errors(instance, content["application/json"].get("schema") or {},
                                              request=True)]
        return problems

    # -- answers --------------------------------------------------------------------------------------------------

    def check_answer(self, op: _Operation, status: int, content_type: str, body: bytes) -> list[str]:
        key = (op.method, op.template, status)
        responses = op.spec.get("responses") or {}
        declared = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
        if declared is None:
            if key in KNOWN_DEVIATIONS or status in (401, 405):  # basic auth and method checks: not in the spec
                return []
            return [f"status {status} is not among the spec's answers {sorted(responses)}"]
        content = declared.get("content") or {}
        schema = BODY_OVERRIDES.get(key)
        if schema is None and content:
            media = next(iter(content))
            schema = content[media].get("schema")
            if media == "application/x-ndjson":
                return self.check_ndjson(body, schema)
        if schema is None:
            return []
        try:
            instance = json.loads(body)
        except ValueError as error:
            return [f"the {status} answer is not JSON: {error}"]
        if "json" not in content_type:
            return [f"the {status} answer's Content-Type {content_type!r} is not JSON"]
        return [f"answer{e}" if e.startswith((".", "[")) else f"answer: {e}"
                for e in self.errors(instance, schema, request=False)]

    def check_ndjson(self, data: bytes, schema: dict | None) -> list[str]:
        problems: list[str] = []
        for number, line in enumerate(data.splitlines(), 1):
            try:
                instance = json.loads(line)
            except ValueError as error:
                problems.append(f"NDJSON line {number} is not JSON: {error}")
                continue
            problems += [f"NDJSON line {number}{e}" if e.startswith((".", "[")) else f"NDJSON line {number}: {e}"
                         for e in self.errors(instance, schema or {}, request=False)]
        return problems


def _coerce(text: str, schema: dict) -> tuple[Any, str | None]:
    """A parameter's text as its schema's type (OpenAPI's simple style)."""
    kind = schema.get("type")
    if kind == "integer":
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text), None
        return None, "not an integer"
    if kind == "number":
        try:
            return float(text), None
        except ValueError:
            return None, "not a number"
    if kind == "boolean":
        if text in ("true", "false"):
            return text == "true", None
        return None, "not a boolean (true or false)"
    return text, None


# ---------------------------------------------------------------------------------------------------------------
# Replicas: a function's pods as local processes.


@dataclass(eq=False)
class _Pod:
    function: str
    name: str  # the instance name, as Kubernetes names a Deployment's pods: NAME-<template hash>-<5 chars>
    template: int  # the function's template generation it runs
    port: int
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    state: str = "starting"  # starting | ready | failed
    terminating: bool = False  # out of rotation, draining, then stopped
    stopping: bool = False  # its process is being (or was) stopped on purpose
    restarts: int = 0
    inflight: int = 0
    process: subprocess.Popen | None = None
    lines: list[tuple[datetime, str]] = field(default_factory=list)  # the current container's log
    gone: threading.Event = field(default_factory=threading.Event)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(eq=False)
class _Function:
    name: str
    deployment: dict  # the last FunctionDeployment sent (POST or PUT), as sent
    labels: dict[str, str]
    annotations: dict[str, str]
    replicas: int
    created_at: datetime
    template: int = 1
    template_hash: str = ""
    pods: list[_Pod] = field(default_factory=list)
    rr: itertools.count = field(default_factory=itertools.count)
    deleted: bool = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rfc3339(moment: datetime, nanos: bool = True) -> str:
    """Go's time.Time JSON (RFC 3339, fractional seconds without trailing zeros, Z for UTC)."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos and moment.microsecond:
        text += ("." + f"{moment.microsecond:06d}").rstrip("0")
    return text + "Z"


def _terminate(process: subprocess.Popen, grace: float = KILL_AFTER) -> None:
    """SIGTERM to the replica's process group, SIGKILL `grace` seconds later; reaped either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _worker_reads_env() -> bool:
    """Whether `python -m fnpack.worker` with no arguments reads FNPACK_ARCHIVE / FNPACK_SHA256 (read, not imported)."""
    candidates = [REPO / "src" / "fnpack" / "worker.py"]
    with contextlib.suppress(Exception):
        import importlib.util

        spec = importlib.util.find_spec("fnpack.worker")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin))
    for path in candidates:
        with contextlib.suppress(OSError):
            return "FNPACK_ARCHIVE" in path.read_text(encoding="utf-8")
    return False


# ---------------------------------------------------------------------------------------------------------------
# Answers.


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), "")


def _http_error(status: int, text: str) -> _Reply:
    """Go's http.Error: text/plain, nosniff, the message and a newline."""
    return _Reply(status, (text + "\n").encode(), [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("X-Content-Type-Options", "nosniff")])


def _written(status: int, text: str = "") -> _Reply:
    """Go's w.WriteHeader(status) then w.Write(text): the type sniffed (text/plain for text), no newline."""
    headers = [("Content-Type", "text/plain; charset=utf-8")] if text else []
    return _Reply(status, text.encode(), headers)


def _json(status: int, value: Any) -> _Reply:
    return _Reply(status, json.dumps(value, separators=(",", ":")).encode(), [("Content-Type", "application/json")])


# ---------------------------------------------------------------------------------------------------------------
# The gateway.


class FakeOpenFaaS:
    """The OpenFaaS CE gateway with faas-netes under it, for tests: a real HTTP server on loopback.

    REST API (`url`, basic auth with `username`/`password` on every /system/* route, /function/*, /healthz and
    /metrics open, as CE): POST/PUT/DELETE/GET /system/functions, GET /system/function/{name},
    POST /system/scale-function/{name}, GET /system/info, GET /system/namespaces, GET /system/logs, the
    /system/secrets CRUD, /healthz, /metrics, /function/{name}[/{path}] with any method. Status codes and bodies are
    the real ones (faas-netes pkg/handlers/*.go, the gateway's handlers, faas-provider's auth and logs): a duplicate
    deploy is 500 "unable create Deployment: deployments.apps "NAME" already exists", an update of an unknown
    function 404 "unable update Deployment: NAME.openfaas-fn, error: deployments.apps "NAME" not found", a delete of
    one 404 'deployments.apps "NAME" not found', GET /system/function of one 404 with no body, an invocation of one
    404 "error finding function NAME.openfaas-fn: server returned non-200 status code (404) for function, NAME,
    body: " (the gateway's scale-from-zero handler, on by default), deploys, updates, deletes and scales answer 202.
    CE's limits apply with `edition="ce"`: at most 15 functions, replicas clamped to [1, 5] by the gateway (0 is
    1: there is no scale to zero), labels com.openfaas.scale.zero=true, .zero-duration, .target, .type refused
    (400 "validation failed: ... not available for Community Edition"), .min/.max above 5 refused. With
    `edition="pro"` none of these apply and a function scaled to 0 is scaled to max(1, scale.min) by its first
    invocation, which waits for a ready replica (as the gateway's scale-from-zero handler does in both editions).

    Every request to a route of the spec is checked against it (parameters, Content-Type, JSON body, plus fields
    that faas-provider's Go types do not have, which the real gateway would silently ignore): one that does not
    conform is answered 400 with the errors in its body and recorded in `violations`. Every answer is checked too;
    one that does not conform is recorded in `answer_violations` and makes `stop()` raise (a bug in the fake).
    Answers the real gateway gives that its spec does not list (202 for PUT/DELETE, 401, ...) are in
    KNOWN_DEVIATIONS. `calls` records (method, path?query, status) of every request but invocations.

    Functions as Kubernetes runs them: a deploy makes a Deployment of `com.openfaas.scale.min` (else 1) replicas;
    each replica is a process running `command` (default: the runtime image's ENTRYPOINT, `python -m
    fnpack.worker`, with `--archive $FNPACK_ARCHIVE --sha256 $FNPACK_SHA256` added while the worker does not read
    those itself) with the image's env (PYTHONUNBUFFERED=1), HOME, PATH, LANG and TMPDIR from the test,
    FNPACK_CACHE_DIR (one folder under `workdir`), `extra_env`, the deployment's `envVars`, fprocess (envProcess),
    HOSTNAME (the instance name), PORT (a free loopback port of its own), HOST=127.0.0.1 and FNPACK_SECRETS_DIR: a
    folder holding one file per secret the deployment names, as OpenFaaS mounts them under /var/openfaas/secrets/.
    A replica is ready once GET /_/health answers 200 (probed every 50 ms while starting, then every second, 3
    failures make it unready); one whose process exits is restarted once after 0.5 s, then stays failed (as a
    crash-looping pod: it still counts as a replica). `availableReplicas` counts ready replicas. An update (PUT)
    always rolls (faas-netes labels every new template with a fresh uid) with maxSurge 1 and maxUnavailable 0: a new
    replica starts; once it is ready it takes requests and an old one leaves the rotation, finishes its in-flight
    requests (at most 30 s) and is stopped (SIGTERM, SIGKILL after 10 s); a new replica that never becomes ready
    stalls the rollout and the old ones keep serving. Invocations go round robin over ready replicas; with none
    ready the gateway waits up to `invoke_wait` seconds (the real one about 100 s), then answers 503 "No endpoints
    available for: NAME.".

    Read back as faas-netes does (pkg/k8s/function_status.go): name, image, namespace, envProcess, labels (as sent,
    plus faas_function=NAME, plus uid=... after an update), annotations (as sent, plus prometheus.io.scrape=false
    unless given), secrets, limits, requests, replicas, availableReplicas, createdAt; invocationCount in the list
    only (the gateway adds it from Prometheus); fields at zero are left out (Go's omitempty). Not read back, as by
    faas-netes CE: envVars, constraints (ignored altogether), readOnlyRootFilesystem.

    Not done (a real gateway does): images (never pulled, nor checked: CE refuses images it cannot pull
    anonymously, "the Community Edition license agreement only allows public images"), resource limits, constraints,
    liveness probes, readOnlyRootFilesystem, non-root users, async invocations (/async-function, NATS), the
    autoscaler (scale.factor), the UI, streamed function answers (SSE and NDJSON answers are buffered whole),
    Prometheus' scrape delay (invocationCount is live here), metrics on a port of their own (:8082 on the real
    gateway; /metrics is on `url` here), endpoint propagation delays (a retiring replica gets no request once it
    leaves the rotation; on Kubernetes it may still get some after its SIGTERM), random endpoint choice (round robin
    here), namespaces other than openfaas-fn (refused, as CE refuses them).

    /system/logs streams NDJSON as faas-netes does: per replica the last `tail` lines (else those of the last 5
    minutes, or since `since`), of the replicas that exist now and only of their current process (a restarted
    replica's earlier output is gone, as a pod's previous container's is), each line's text with its newline and
    "namespace": "" (faas-netes sets none); `instance` is ignored (faas-netes ignores it); `follow=true` streams
    until the client goes (or 65 s, the gateway's write timeout). `logs(function)` is everything, for the tests.
    """

    def __init__(self, *, workdir: Path, username: str = "admin", password: str = "secret",
                 secrets: dict[str, str] | None = None, extra_env: dict[str, str] | None = None,
                 command: Sequence[str] | Callable[[dict], Sequence[str]] | None = None, edition: str = "ce",
                 invoke_wait: float = 30.0, spec_path: Path | None = None) -> None:
        if edition not in ("ce", "pro"):
            raise ValueError("edition is 'ce' or 'pro'")
        self.workdir = Path(workdir)
        self.username = username
        self.password = password
        self.extra_env = dict(extra_env or {})
        self.command = command
        self.edition = edition
        self.invoke_wait = invoke_wait
        self.url = ""
        self.violations: list[str] = []  # requests that do not conform to the spec (answered 400)
        self.answer_violations: list[str] = []  # answers of the fake's that do not conform: bugs in the fake
        self.calls: list[tuple[str, str, int]] = []  # (method, path?query, status) of every non-invocation
        spec_path = Path(spec_path or SPEC_PATH)
        if not spec_path.is_file():
            raise FileNotFoundError(f"the OpenFaaS gateway spec is not at {spec_path} (set FNPACK_SHARED)")
        self.spec = _Spec(spec_path)

        self._secrets: dict[str, str] = dict(secrets or {})
        self._functions: dict[str, _Function] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # any replica's state, any rotation change
        self._log_changed = threading.Condition()  # a log line arrived
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics_lock = threading.Lock()
        self._invocations: dict[tuple[str, str], int] = {}  # (function_name, code) -> count
        self._durations: dict[tuple[str, str], list[float]] = {}  # -> [bucket counts..., sum]
        self._started_count: dict[str, int] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._proxy: httpx.Client | None = None
        self._probe: httpx.Client | None = None
        self._worker_env = _worker_reads_env()

    # -- public API ---------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenFaaS:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop(check=exc_type is None)

    def start(self) -> None:
        for sub in ("logs", "pods", "secrets", "fnpack-cache"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        no_delay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        self._proxy = httpx.Client(
            trust_env=False, timeout=httpx.Timeout(UPSTREAM_TIMEOUT, connect=5),
            transport=httpx.HTTPTransport(socket_options=no_delay,
                                          limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)))
        self._probe = httpx.Client(trust_env=False, timeout=httpx.Timeout(1.0),
                                   headers={"User-Agent": "kube-probe/1.33"})
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.gateway = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                               name="fake-openfaas-gateway", daemon=True)
        self._server_thread.start()

    def stop(self, check: bool = True) -> None:
        """Stop serving, then every process (SIGTERM, SIGKILL after 10 s). Raises AnswerViolation if the fake
        answered anything its spec does not allow (and `check`)."""
        if not self._stopping.is_set():
            self._stopping.set()
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server_thread.join(15)
            with self._lock:
                pods = [pod for fn in self._functions.values() for pod in fn.pods]
                for pod in pods:
                    pod.terminating = pod.stopping = True
                self._changed.notify_all()
            with self._log_changed:
                self._log_changed.notify_all()
            for pod in pods:
                if pod.alive():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pod.process.pid, signal.SIGTERM)
            stoppers = [threading.Thread(target=_terminate, args=(pod.process,), daemon=True)
                        for pod in pods if pod.process is not None]
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join(KILL_AFTER + 5)
            for thread in list(self._threads):
                thread.join(5)
            for client in (self._proxy, self._probe):
                if client is not None:
                    client.close()
        if check and self.answer_violations:
            raise AnswerViolation("the fake gateway answered outside its spec:\n" + "\n".join(self.answer_violations))

    def functions(self) -> dict[str, dict]:
        """name -> the FunctionDeployment last deployed or updated, as fnpack sent it."""
        with self._lock:
            return {name: copy.deepcopy(fn.deployment) for name, fn in self._functions.items() if not fn.deleted}

    def logs(self, function: str) -> str:
        """Everything the function's replicas wrote (stdout and stderr), past ones too, in order."""
        path = self.workdir / "logs" / f"{function}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def processes(self, function: str) -> list[int]:
        """The process ids of the function's running replicas (retiring ones included)."""
        with self._lock:
            fn = self._functions.get(function)
            return [pod.process.pid for pod in (fn.pods if fn else []) if pod.alive()]

    def wait_ready(self, function: str, timeout: float = 30) -> dict:
        """Wait until the function exists, every replica runs its current template and all are ready (a rollout
        done); its FunctionStatus. TimeoutError (with the end of its logs) otherwise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                fn = self._functions.get(function)
                if fn is not None and not fn.deleted:
                    live = [p for p in fn.pods if not p.terminating]
                    if (len(live) == fn.replicas and all(p.template == fn.template and p.state == "ready"
                                                         for p in live)):
                        return self._status(fn)
                    if any(p.state == "failed" for p in live):
                        break
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    break
                self._changed.wait(min(left, 0.5))
        states = [(p.name, p.state, p.terminating) for p in (fn.pods if fn else [])]
        raise TimeoutError(f"function {function!r} is not ready (replicas: {states}); its logs end:\n"
                           + self.logs(function)[-3000:])

    # -- functions and replicas ------------------------------------------------------------------------------------

    def _status(self, fn: _Function, with_count: bool = False) -> dict:
        """FunctionStatus as faas-netes' AsFunctionStatus reads a Deployment (omitempty: zero values left out)."""
        request = fn.deployment
        status: dict[str, Any] = {"name": fn.name, "image": request["image"], "namespace": NAMESPACE}
        if request.get("envProcess"):
            status["envProcess"] = request["envProcess"]
        if request.get("secrets"):
            status["secrets"] = list(request["secrets"])
        status["labels"] = dict(fn.labels)
        status["annotations"] = dict(fn.annotations)
        for key in ("limits", "requests"):
            resources = {k: v for k, v in (request.get(key) or {}).items() if k in ("memory", "cpu") and v}
            if resources:
                status[key] = resources
        count = self._invocation_count(fn.name) if with_count else 0
        if count:
            status["invocationCount"] = count
        if fn.replicas:
            status["replicas"] = fn.replicas
        available = sum(1 for p in fn.pods if p.state == "ready" and not p.terminating)
        if available:
            status["availableReplicas"] = available
        status["createdAt"] = _rfc3339(fn.created_at, nanos=False)
        return status

    def _template_hash(self, fn: _Function) -> str:
        digest = hashlib.sha256(f"{fn.name}/{fn.template}/{json.dumps(fn.deployment, sort_keys=True)}".encode())
        return "".join(_POD_SUFFIX_ALPHABET[b % len(_POD_SUFFIX_ALPHABET)] for b in digest.digest()[:10])

    def _argv(self, deployment: dict, env: dict[str, str]) -> list[str]:
        command = self.command
        if callable(command):
            return [str(a) for a in command(copy.deepcopy(deployment))]
        if command is not None:
            return [str(a) for a in command]
        argv = [sys.executable, "-m", "fnpack.worker"]
        if not self._worker_env and env.get("FNPACK_ARCHIVE") and env.get("FNPACK_SHA256"):
            argv += ["--archive", env["FNPACK_ARCHIVE"], "--sha256", env["FNPACK_SHA256"]]
        return argv

    def _pod_env(self, fn: _Function, name: str, port: int, secrets_dir: Path) -> dict[str, str]:
        request = fn.deployment
        env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "LANG", "TMPDIR")}
        env["PYTHONUNBUFFERED"] = "1"  # the runtime image's ENV
        env["FNPACK_CACHE_DIR"] = str(self.workdir / "fnpack-cache")
        env.update(self.extra_env)
        env.update({k: str(v) for k, v in (request.get("envVars") or {}).items()})
        if request.get("envProcess"):
            env["fprocess"] = request["envProcess"]
        env.update({"HOSTNAME": name, "PORT": str(port), "HOST": "127.0.0.1", "FNPACK_SECRETS_DIR": str(secrets_dir)})
        return env

    def _start_pod(self, fn: _Function) -> _Pod:
        """A new replica of the function's current template (called with the lock held)."""
        suffix = "".join(random.choice(_POD_SUFFIX_ALPHABET) for _ in range(5))
        name = f"{fn.name}-{fn.template_hash}-{suffix}"
        secrets_dir = self.workdir / "secrets" / name
        secrets_dir.mkdir(parents=True, exist_ok=True)
        for secret in fn.deployment.get("secrets") or []:
            target = secrets_dir / secret
            target.touch(mode=0o600)
            target.write_text(self._secrets.get(secret, ""), encoding="utf-8")
        port = _free_port()
        env = self._pod_env(fn, name, port, secrets_dir)
        cwd = self.workdir / "pods" / name
        cwd.mkdir(parents=True, exist_ok=True)
        pod = _Pod(fn.name, name, fn.template, port, self._argv(fn.deployment, env), env, cwd,
                   self.workdir / "logs" / f"{fn.name}.log")
        fn.pods.append(pod)
        self._spawn(pod)
        thread = threading.Thread(target=self._supervise, args=(pod,), name=f"fake-openfaas-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return pod

    def _spawn(self, pod: _Pod) -> None:
        pod.lines = []  # Kubernetes keeps the current container's log (the earlier one only with --previous)
        try:
            pod.process = subprocess.Popen(pod.argv, env=pod.env, cwd=pod.cwd, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            pod.process = None
            self._append_log(pod, pod.lines, f"fake-openfaas: cannot start {pod.argv!r}: {error}\n")
            return
        reader = threading.Thread(target=self._read_output, args=(pod, pod.process, pod.lines), daemon=True,
                                  name=f"fake-openfaas-log-{pod.name}")
        reader.start()

    def _append_log(self, pod: _Pod, lines: list, text: str) -> None:
        moment = datetime.now(timezone.utc)
        with self._log_changed:
            lines.append((moment, text))
            with open(pod.log_path, "a", encoding="utf-8") as out:
                out.write(text)
            self._log_changed.notify_all()

    def _read_output(self, pod: _Pod, process: subprocess.Popen, lines: list) -> None:
        for raw in iter(process.stdout.readline, b""):
            self._append_log(pod, lines, raw.decode("utf-8", errors="replace"))
        process.stdout.close()

    def _healthy(self, pod: _Pod) -> bool:
        try:
            return self._probe.get(f"http://127.0.0.1:{pod.port}{PROBE_PATH}").status_code == 200
        except (httpx.HTTPError, RuntimeError):
            return False

    def _set_state(self, pod: _Pod, state: str) -> None:
        with self._lock:
            if pod.state != state:
                pod.state = state
                fn = self._functions.get(pod.function)
                if fn is not None and pod in fn.pods:
                    self._reconcile(fn)
                self._changed.notify_all()

    def _supervise(self, pod: _Pod) -> None:
        """Probe the replica until ready, then every second; restart it once when its process exits."""
        try:
            while not pod.stopping and not self._stopping.is_set():
                process = pod.process
                if process is None:
                    exited = True
                else:
                    exited = False
                    failures = 0
                    while not pod.stopping and not self._stopping.is_set():
                        if process.poll() is not None:
                            exited = True
                            break
                        if pod.state != "ready":
                            if self._healthy(pod):
                                self._set_state(pod, "ready")
                                continue
                            time.sleep(STARTUP_PROBE_PERIOD)
                            continue
                        try:
                            process.wait(READINESS_PERIOD)
                        except subprocess.TimeoutExpired:
                            pass
                        if process.poll() is not None or pod.stopping:
                            continue
                        if self._healthy(pod):
                            failures = 0
                        else:
                            failures += 1
                            if failures >= 3:
                                self._set_state(pod, "starting")  # unready: out of the rotation until it passes
                if not exited or pod.stopping or self._stopping.is_set():
                    break
                code = process.returncode if process is not None else 127
                if pod.restarts >= 1:
                    log.info("replica %s exited with %s again: failed", pod.name, code)
                    self._set_state(pod, "failed")
                    break
                log.info("replica %s exited with %s: restarting", pod.name, code)
                self._set_state(pod, "starting")
                time.sleep(RESTART_BACKOFF)
                with self._lock:
                    if pod.stopping or self._stopping.is_set():
                        break
                    pod.restarts += 1
                    self._spawn(pod)
        except Exception:  # never let a replica's thread die silently
            log.exception("supervising %s failed", pod.name)
            self._set_state(pod, "failed")

    def _retire(self, pod: _Pod) -> None:
        """Out of the rotation now; stopped once its in-flight requests are done (called with the lock held)."""
        if pod.terminating:
            return
        pod.terminating = True
        self._changed.notify_all()
        thread = threading.Thread(target=self._stop_pod, args=(pod,), daemon=True, name=f"fake-openfaas-stop-{pod.name}")
        self._threads.append(thread)
        thread.start()

    def _stop_pod(self, pod: _Pod) -> None:
        deadline = time.monotonic() + TERMINATION_GRACE
        with self._lock:
            while pod.inflight > 0 and time.monotonic() < deadline and not self._stopping.is_set():
                self._changed.wait(0.2)
            pod.stopping = True
        if pod.process is not None:
            _terminate(pod.process)
        with self._lock:
            fn = self._functions.get(pod.function)
            if fn is not None and pod in fn.pods:
                fn.pods.remove(pod)
                if fn.deleted and not fn.pods:
                    del self._functions[fn.name]
            pod.gone.set()
            self._changed.notify_all()

    def _reconcile(self, fn: _Function) -> None:
        """The Deployment controller's part: replicas of the current template, rolling (maxSurge 1,
        maxUnavailable 0) when the template changed. Called with the lock held after every change."""
        if self._stopping.is_set():
            return
        live = [p for p in fn.pods if not p.terminating]
        if fn.deleted or fn.replicas == 0:
            for pod in live:
                self._retire(pod)
            return
        desired = fn.replicas
        current = [p for p in live if p.template == fn.template]
        old = [p for p in live if p.template != fn.template]
        for pod in [p for p in old if p.state != "ready"]:  # unavailable old replicas go first, at once
            self._retire(pod)
            old.remove(pod)
        if len(current) > desired:  # scaled down: unready ones first, then the newest
            extra = sorted(current, key=lambda p: (p.state == "ready", -fn.pods.index(p)))[:len(current) - desired]
            for pod in extra:
                self._retire(pod)
                current.remove(pod)
        ready_current = sum(1 for p in current if p.state == "ready")
        while old and ready_current + len(old) - 1 >= desired:  # never below `desired` available
            self._retire(old.pop(0))
        limit = desired + (1 if old else 0)  # maxSurge 1 while old replicas remain
        while len(current) < desired and len(current) + len(old) < limit:
            current.append(self._start_pod(fn))

    # -- metrics ------------------------------------------------------------------------------------------------

    def _invocation_count(self, name: str) -> int:
        label = f"{name}.{NAMESPACE}"
        with self._metrics_lock:
            return sum(n for (fn, _), n in self._invocations.items() if fn == label)

    def _observe(self, label: str, code: int, seconds: float) -> None:
        key = (label, str(code))
        with self._metrics_lock:
            self._invocations[key] = self._invocations.get(key, 0) + 1
            buckets = self._durations.setdefault(key, [0] * len(GO_DEF_BUCKETS) + [0.0])
            for i, bound in enumerate(GO_DEF_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            buckets[-1] += seconds

    def _metrics_text(self) -> str:
        def labels(**values: str) -> str:
            return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(values.items())) + "}"

        with self._metrics_lock:
            invocations = dict(self._invocations)
            durations = {k: list(v) for k, v in self._durations.items()}
            started = dict(self._started_count)
        with self._lock:
            replicas = {f"{fn.name}.{NAMESPACE}": fn.replicas for fn in self._functions.values() if not fn.deleted}
        out = ["# HELP gateway_function_invocation_started The total number of function HTTP requests started.",
               "# TYPE gateway_function_invocation_started counter"]
        out += [f"gateway_function_invocation_started{labels(function_name=fn)} {n}" for fn, n in sorted(started.items())]
        out += ["# HELP gateway_function_invocation_total Function metrics",
                "# TYPE gateway_function_invocation_total counter"]
        out += [f"gateway_function_invocation_total{labels(function_name=fn, code=code)} {n}"
                for (fn, code), n in sorted(invocations.items())]
        out += ["# HELP gateway_functions_seconds Function time taken", "# TYPE gateway_functions_seconds histogram"]
        for (fn, code), values in sorted(durations.items()):
            count = invocations.get((fn, code), 0)
            for bound, n in zip(GO_DEF_BUCKETS, values):
                out.append(f"gateway_functions_seconds_bucket{labels(function_name=fn, code=code, le=format(bound, 'g'))} {n}")
            out.append(f"gateway_functions_seconds_bucket{labels(function_name=fn, code=code, le='+Inf')} {count}")
            out.append(f"gateway_functions_seconds_sum{labels(function_name=fn, code=code)} {values[-1]!r}")
            out.append(f"gateway_functions_seconds_count{labels(function_name=fn, code=code)} {count}")
        out += ["# HELP gateway_service_count Current count of replicas for function",
                "# TYPE gateway_service_count gauge"]
        out += [f"gateway_service_count{labels(function_name=fn)} {n}" for fn, n in sorted(replicas.items())]
        return "\n".join(out) + "\n"

    # -- the REST API -------------------------------------------------------------------------------------------

    def _authorized(self, headers: http.client.HTTPMessage) -> bool:
        value = headers.get("Authorization") or ""
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.username and hmac.compare_digest(password.encode(), self.password.encode())

    def _namespace_error(self, namespace: str | None) -> _Reply | None:
        if namespace and namespace != NAMESPACE:
            return _http_error(400, f"namespace must be: {NAMESPACE}")
        return None

    def _validate_deployment(self, request: dict) -> str | None:
        """faas-netes' ValidateDeployRequest (validate.go), CE's scaling-label checks included."""
        service, image = request.get("service") or "", request.get("image") or ""
        if not service:
            return "service: is required"
        if not DNS_NAME.match(service):
            return f"service: ({service}) is invalid, must be a valid DNS entry"
        if not image:
            return "image: is required"
        if self.edition == "ce":
            labels = request.get("labels") or {}
            if labels.get("com.openfaas.scale.zero") == "true":
                return "com.openfaas.scale.zero not available for Community Edition"
            for key in ("com.openfaas.scale.zero-duration", "com.openfaas.scale.target", "com.openfaas.scale.type"):
                if key in labels:
                    return f"{key} not available for Community Edition"
            for key in ("com.openfaas.scale.max", "com.openfaas.scale.min"):
                value = labels.get(key, "")
                if re.fullmatch(r"[+-]?\d+", value or "") and int(value) > MAX_REPLICAS:
                    return f"{key} is set too high for Community Edition"
        return None

    def _annotations(self, request: dict) -> tuple[dict[str, str] | None, str | None]:
        """faas-netes' buildAnnotations: CE's checks, and prometheus.io.scrape=false unless given."""
        annotations = dict(request.get("annotations") or {})
        if self.edition == "ce":
            if "," in annotations.get("topic", ""):
                return None, "the topic annotation may only support one value in the Community Edition"
            for key in annotations:
                if "amazonaws.com" in key or "gke.io" in key:
                    return None, f'annotation "{key}" is not supported in the Community Edition'
        annotations.setdefault("prometheus.io.scrape", "false")
        return annotations, None

    @staticmethod
    def _resource_error(request: dict) -> str | None:
        for key in ("limits", "requests"):
            for kind in ("memory", "cpu"):
                value = (request.get(key) or {}).get(kind)
                if value and not QUANTITY.match(value):
                    return QUANTITY_ERROR
        return None

    def _min_replicas(self, request: dict) -> int | None:
        value = (request.get("labels") or {}).get("com.openfaas.scale.min", "")
        if re.fullmatch(r"\d+", value or "") and int(value) > 0:
            return int(value)
        return None

    def deploy(self, request: dict) -> _Reply:
        """POST /system/functions: faas-netes pkg/handlers/deploy.go."""
        error = self._validate_deployment(request)
        if error:
            return _http_error(400, f"validation failed: {error}")
        if (namespace_error := self._namespace_error(request.get("namespace"))) is not None:
            return namespace_error
        missing = next((s for s in request.get("secrets") or [] if s not in self._secrets), None)
        if missing is not None:
            return _http_error(400, f'unable to fetch secrets: secrets "{missing}" not found')
        annotations, error = self._annotations(request)
        if error:
            return _http_error(400, f"failed create Deployment spec: {error}")
        if (error := self._resource_error(request)) is not None:
            return _http_error(400, f"failed create Deployment spec: {error}")
        name = request["service"]
        with self._lock:
            count = sum(1 for fn in self._functions.values() if not fn.deleted)
            if self.edition == "ce" and count + 1 > MAX_FUNCTIONS:
                return _http_error(400, f"unable to create function, maximum: {MAX_FUNCTIONS}, visit "
                                        "https://openfaas.com/pricing to upgrade to OpenFaaS Standard")
            existing = self._functions.get(name)
            if existing is not None:  # a deleted one whose replicas still drain exists as well (foreground delete)
                return _http_error(500, f'unable create Deployment: deployments.apps "{name}" already exists')
            labels = {"faas_function": name, **(request.get("labels") or {})}
            fn = _Function(name, copy.deepcopy(request), labels, annotations, self._min_replicas(request) or 1,
                           datetime.now(timezone.utc).replace(microsecond=0))
            fn.template_hash = self._template_hash(fn)
            self._functions[name] = fn
            self._reconcile(fn)
            self._changed.notify_all()
        return _Reply(202)

    def update(self, request: dict) -> _Reply:
        """PUT /system/functions: faas-netes pkg/handlers/update.go (a rolling update, always)."""
        error = self._validate_deployment(request)
        if error:
            return _http_error(400, f"validation failed: {error}")
        if (namespace_error := self._namespace_error(request.get("namespace"))) is not None:
            return namespace_error
        annotations, error = self._annotations(request)
        if error:
            return _http_error(400, error)
        name = request["service"]
        with self._lock:
            fn = self._functions.get(name)
            if fn is None or fn.deleted:
                return _http_error(404, f"unable update Deployment: {name}.{NAMESPACE}, error: "
                                        f'deployments.apps "{name}" not found')
            missing = next((s for s in request.get("secrets") or [] if s not in self._secrets), None)
            if missing is not None:
                return _http_error(400, f"unable update Deployment: {name}.{NAMESPACE}, error: "
                                        f'secrets "{missing}" not found')
            if self._resource_error(request) is not None:
                # update.go logs an error that is not a NotFound and returns without writing: 200, no change.
                return _Reply(200)
            fn.deployment = copy.deepcopy(request)
            fn.labels = {"faas_function": name, "uid": str(time.time_ns() % 1_000_000_000),
                         **(request.get("labels") or {})}
            fn.annotations = annotations
            if (minimum := self._min_replicas(request)) is not None:
                fn.replicas = minimum
            fn.template += 1
            fn.template_hash = self._template_hash(fn)
            self._reconcile(fn)
            self._changed.notify_all()
        return _Reply(202)

    def delete(self, request: dict, namespace: str | None) -> _Reply:
        """DELETE /system/functions: faas-netes pkg/handlers/delete.go (the namespace comes from the query)."""
        if (namespace_error := self._namespace_error(namespace)) is not None:
            return namespace_error
        name = request.get("functionName") or ""
        if not name:
            return _Reply(400)
        with self._lock:
            fn = self._functions.get(name)
            if fn is None or fn.deleted:
                return _written(404, f'deployments.apps "{name}" not found')
            fn.deleted = True
            self._reconcile(fn)
            if not fn.pods:
                del self._functions[name]
            self._changed.notify_all()
        return _Reply(202)

    def scale(self, name: str, request: dict, namespace: str | None) -> _Reply:
        """POST /system/scale-function/{name}: the gateway's scaling/ranges.go, then faas-netes replica_updater.go."""
        replicas = int(request.get("replicas") or 0)
        if self.edition == "ce":
            replicas = min(max(replicas, 1), MAX_REPLICAS)
        if (namespace_error := self._namespace_error(namespace)) is not None:
            return namespace_error
        with self._lock:
            fn = self._functions.get(name)
            if fn is None or fn.deleted:
                return _written(500, f"Unable to lookup function deployment {name}")
            fn.replicas = replicas
            self._reconcile(fn)
            self._changed.notify_all()
        return _Reply(202)

    def _logs_reply(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        """GET /system/logs: faas-provider logs/handler.go over faas-netes pkg/k8s/logs.go, through the gateway's
        log proxy (a provider error becomes 500 "unknown log request error (CODE)"). Streams NDJSON."""
        last = lambda key: (query.get(key) or [""])[-1]
        name, tail_text, since_text = last("name"), last("tail"), last("since")
        follow = last("follow").lower() in ("1", "t", "true")
        tail = int(tail_text) if tail_text else 0
        since: datetime | None = None
        if since_text:
            try:
                since = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
            except ValueError:
                return handler.reply(_http_error(500, "unknown log request error (422)"))
        if since is None and tail <= 0:
            since = datetime.now(timezone.utc) - timedelta(seconds=DEFAULT_LOG_SINCE)
        elif since is not None:  # Kubernetes' sinceSeconds: whole seconds back from now
            since = datetime.now(timezone.utc) - timedelta(seconds=int((datetime.now(timezone.utc) - since)
                                                                       .total_seconds()))
        with self._lock:
            fn = self._functions.get(name)
            pods = list(fn.pods) if fn is not None else []
        if not pods:  # startFunctionPodInformer: "no matching instances found", a 500 from the provider
            return handler.reply(_http_error(500, "unknown log request error (500)"))

        cursors: dict[int, tuple[_Pod, list, int]] = {}

        def batch(first: bool) -> list[tuple[datetime, str, str]]:
            found = []
            with self._lock:
                current = list(fn.pods) if fn is not None else []
            with self._log_changed:
                for pod in current:
                    held = cursors.get(id(pod))
                    lines = pod.lines
                    if held is None or held[1] is not lines:
                        chosen = [entry for entry in lines if since is None or entry[0] >= since]
                        if tail > 0:
                            chosen = chosen[-tail:]
                        if not first:  # a replica (or container) that came after the stream began: all of it
                            chosen = list(lines)
                        start = len(lines) - len(chosen)
                    else:
                        start = held[2]
                    found += [(ts, pod.name, text) for ts, text in lines[start:]]
                    cursors[id(pod)] = (pod, lines, len(lines))
            return sorted(found, key=lambda entry: entry[0])

        def encode(entries: list[tuple[datetime, str, str]]) -> bytes:
            # faas-netes' podLogs sets no namespace on a message: the real stream has "namespace": "".
            return b"".join(json.dumps({"name": name, "namespace": "", "instance": instance,
                                        "timestamp": _rfc3339(ts), "text": text}).encode() + b"\n"
                            for ts, instance, text in entries)

        handler.start_stream(200, [("Content-Type", "application/x-ndjson"), ("Connection", "Keep-Alive")])
        try:
            data = encode(batch(first=True))
            handler.check_stream(data)
            if data:
                handler.write_chunk(data)
            deadline = time.monotonic() + LOGS_TIMEOUT
            while follow and not self._stopping.is_set() and time.monotonic() < deadline:
                with self._log_changed:
                    self._log_changed.wait(0.25)
                if handler.client_gone():
                    return
                data = encode(batch(first=False))
                if data:
                    handler.check_stream(data)
                    handler.write_chunk(data)
            handler.write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True

    def _secrets_api(self, method: str, request: dict, namespace: str | None) -> _Reply:
        """/system/secrets: faas-netes pkg/handlers/secrets.go (a secret's key is its name)."""
        if method == "GET":
            if namespace and namespace != NAMESPACE:
                return _Reply(400)
            with self._lock:
                return _json(200, [{"name": s, "namespace": NAMESPACE} for s in sorted(self._secrets)])
        name = request.get("name") or ""
        if (request.get("namespace") or NAMESPACE) != NAMESPACE:
            return _Reply(400)
        with self._lock:
            if method == "POST":
                if not name:
                    return _Reply(400)
                if name in self._secrets:
                    return _Reply(409)
                self._secrets[name] = _secret_value(request)
            elif method == "PUT":
                if name not in self._secrets:
                    return _Reply(404)
                self._secrets[name] = _secret_value(request)
            elif method == "DELETE":
                if name not in self._secrets:
                    return _Reply(404)
                del self._secrets[name]
        return _Reply(202)

    def _info(self) -> _Reply:
        """GET /system/info: the gateway's infohandler.go wrapping the provider's ProviderInfo."""
        return _json(200, {
            "provider": {"provider": PROVIDER_NAME, "orchestration": "local processes",
                         "version": {"sha": GATEWAY_SHA, "release": PROVIDER_VERSION}},
            "version": {"commit_message": "fnpack's fake OpenFaaS gateway", "sha": GATEWAY_SHA,
                        "release": GATEWAY_VERSION},
            "arch": platform.machine() or "x86_64",
        })

    # -- invocation ---------------------------------------------------------------------------------------------

    def _replicas_query(self, name: str, namespace: str) -> tuple[int, str, _Function | None]:
        """What the gateway's scale-from-zero handler reads: GET /system/function/NAME?namespace=NS."""
        if namespace != NAMESPACE:
            return 400, f"namespace must be: {NAMESPACE}\n", None
        with self._lock:
            fn = self._functions.get(name)
            if fn is None or fn.deleted:
                return 404, "", None
            return 200, "", fn

    def _pick(self, fn: _Function) -> _Pod | None:
        """A ready replica, round robin, counted in flight (called with the lock held)."""
        ready = [p for p in fn.pods if p.state == "ready" and not p.terminating]
        if not ready:
            return None
        pod = ready[next(fn.rr) % len(ready)]
        pod.inflight += 1
        return pod

    def _release(self, pod: _Pod) -> None:
        with self._lock:
            pod.inflight -= 1
            if pod.terminating:
                self._changed.notify_all()

    def invoke(self, handler: _Handler, service: str, rest: str, body: bytes) -> _Reply:
        """/function/NAME[.NAMESPACE][/rest]: the gateway's scaling handler, call-id middleware and forwarding
        proxy, then faas-netes' proxy to one ready replica."""
        name, _, namespace = service.rpartition(".") if "." in service else (service, "", NAMESPACE)
        code, text, fn = self._replicas_query(name, namespace)
        if fn is None:  # handlers/scaling.go: the function was not found
            return _written(404, f"error finding function {name}.{namespace}: server returned non-200 status code "
                                 f"({code}) for function, {name}, body: {text}")
        label = f"{name}.{namespace}"
        with self._metrics_lock:
            self._started_count[label] = self._started_count.get(label, 0) + 1
        start = time.monotonic()
        start_ns = time.time_ns()
        call_id = handler.headers.get("X-Call-Id") or str(uuid.uuid4())
        extra = [("X-Start-Time", str(start_ns)), ("X-Served-By", f"openfaas-{self.edition}/{GATEWAY_VERSION}")]
        if not handler.headers.get("X-Call-Id"):
            extra.insert(0, ("X-Call-Id", call_id))
        reply = self._forward(handler, fn, name, rest, body, call_id, start_ns)
        reply.headers += extra
        self._observe(label, reply.status, time.monotonic() - start)
        return reply

    def _forward(self, handler: _Handler, fn: _Function, name: str, rest: str, body: bytes, call_id: str,
                 start_ns: int) -> _Reply:
        deadline = time.monotonic() + self.invoke_wait
        with self._lock:
            pod = self._pick(fn)
            if pod is None and fn.replicas == 0 and not fn.deleted:  # scale from zero (Pro: CE never gets here)
                fn.replicas = self._min_replicas(fn.deployment) or 1
                self._reconcile(fn)
            while pod is None and not fn.deleted and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.25))
                pod = self._pick(fn)
        if pod is None:  # faas-provider proxy.go: the resolver found no endpoint
            return _http_error(503, f"No endpoints available for: {name}.")
        try:
            headers = [(k, v) for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP]
            if not handler.headers.get("X-Call-Id"):
                headers.append(("X-Call-Id", call_id))
            headers.append(("X-Start-Time", str(start_ns)))
            if not handler.headers.get("X-Forwarded-Host") and handler.headers.get("Host"):
                headers.append(("X-Forwarded-Host", handler.headers["Host"]))
            if not handler.headers.get("X-Forwarded-For"):
                headers.append(("X-Forwarded-For", "%s:%s" % handler.client_address[:2]))
            query = urllib.parse.urlsplit(handler.path).query
            url = f"http://127.0.0.1:{pod.port}/{rest}" + (f"?{query}" if query else "")
            try:
                request = self._proxy.build_request(handler.command, url, headers=headers, content=body or None)
                response = self._proxy.send(request, stream=True)
                try:
                    data = b"".join(response.iter_raw())  # as sent: a Content-Encoding stays the function's
                finally:
                    response.close()
            except httpx.TimeoutException:
                return _Reply(502)  # forwarding_proxy.go: the upstream call failed, 502 with no body
            except httpx.HTTPError:
                return _http_error(500, f"Can't reach service for: {name}.")  # faas-provider proxy.go
        finally:
            self._release(pod)
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"]
        content_type = (response.headers.get("Content-Type") or handler.headers.get("Content-Type")
                        or "text/plain")  # faas-provider proxy.go getContentType
        headers.append(("Content-Type", content_type))
        return _Reply(response.status_code, data, headers)


def _secret_value(request: dict) -> str:
    if request.get("value") is not None:
        return str(request["value"])
    if request.get("rawValue"):
        return base64.b64decode(request["rawValue"]).decode("utf-8", errors="replace")
    return ""


# ---------------------------------------------------------------------------------------------------------------
# HTTP.


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    gateway: FakeOpenFaaS


_FUNCTION_ROUTE = re.compile(rf"^/function/(?P<name>{NAME_EXPRESSION})(?:/(?P<rest>.*))?$")
# The gateway's routes (gateway/main.go) and the methods each takes; a route with another method is 405.
_SYSTEM_ROUTES: list[tuple[re.Pattern, set[str]]] = [
    (re.compile(r"^/system/info$"), {"GET"}),
    (re.compile(r"^/system/alert$"), {"POST"}),
    (re.compile(rf"^/system/function/{NAME_EXPRESSION}$"), {"GET"}),
    (re.compile(r"^/system/functions$"), {"GET", "POST", "DELETE", "PUT"}),
    (re.compile(rf"^/system/scale-function/{NAME_EXPRESSION}$"), {"POST"}),
    (re.compile(r"^/system/secrets$"), {"GET", "PUT", "POST", "DELETE"}),
    (re.compile(r"^/system/logs$"), {"GET"}),
    (re.compile(r"^/system/namespaces$"), {"GET"}),
    (re.compile(r"^/system/namespace/[-a-zA-Z_0-9.]*$"), {"POST", "DELETE", "PUT", "GET"}),
]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- writing ------------------------------------------------------------------------------------------------

    def reply(self, reply: _Reply) -> None:
        self._status = reply.status
        lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}"]
        names = {k.lower() for k, _ in reply.headers}
        if "date" not in names:
            lines.append(f"Date: {self.date_time_string()}")
        lines += [f"{k}: {v}" for k, v in reply.headers]
        lines.append(f"Content-Length: {len(reply.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        self.wfile.write(data + (reply.body if self.command != "HEAD" else b""))
        self.wfile.flush()

    def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._status = status
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Date: {self.date_time_string()}"]
        lines += [f"{k}: {v}" for k, v in headers] + ["Transfer-Encoding: chunked"]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def check_stream(self, data: bytes) -> None:
        op = self.server.gateway.spec.operation("get", "/system/logs")
        if op is not None:
            schema = op[0].spec["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
            for problem in self.server.gateway.spec.check_ndjson(data, schema):
                self.server.gateway.answer_violations.append(f"GET /system/logs: {problem}")

    def client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- reading ------------------------------------------------------------------------------------------------

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

    # -- routing ------------------------------------------------------------------------------------------------

    def _handle(self) -> None:
        gateway = self.server.gateway
        self._status = 0
        body = self._body()
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path, urllib.parse.parse_qs(split.query, keep_blank_values=True)
        method = self.command

        match = _FUNCTION_ROUTE.match(path)
        try:
            if match:
                if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
                    return self.reply(_Reply(405))  # faas-provider proxy.go
                return self.reply(gateway.invoke(self, match["name"], match["rest"] or "", body))
            self._system(gateway, method, path, query, split.query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # a bug in the fake: recorded, and a 500 if nothing was sent yet
            log.exception("fake OpenFaaS failed on %s %s", method, self.path)
            gateway.answer_violations.append(f"{method} {self.path}: the fake raised {type(error).__name__}: {error}")
            if not self._status:
                self.close_connection = True
                self.reply(_http_error(500, f"fake gateway error: {error}"))
        finally:
            if not match:
                gateway.calls.append((method, path + (f"?{split.query}" if split.query else ""), self._status))

    def _system(self, gateway: FakeOpenFaaS, method: str, path: str, query: dict[str, list[str]], raw_query: str,
                body: bytes) -> None:
        if path == "/healthz":
            return self.reply(_Reply(200) if method in ("GET", "HEAD") else _Reply(405))
        if path == "/metrics":
            return self.reply(_Reply(200, gateway._metrics_text().encode(),
                                     [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")]))
        if path == "/" and method == "GET":
            return self.reply(_Reply(307, b'<a href="/ui/">Temporary Redirect</a>.\n\n',
                                     [("Location", "/ui/"), ("Content-Type", "text/html; charset=utf-8")]))
        route = next(((regex, methods) for regex, methods in _SYSTEM_ROUTES if regex.match(path)), None)
        if route is None:
            return self.reply(_http_error(404, "404 page not found"))
        if method not in route[1]:
            return self.reply(_Reply(405))  # gorilla/mux: method not allowed, no body
        if not gateway._authorized(self.headers):  # faas-provider auth/basic_auth.go
            return self.reply(_Reply(401, b"invalid credentials", [("Www-Authenticate", 'Basic realm="Restricted"'),
                                                                   ("Content-Type", "text/plain; charset=utf-8")]))
        found = gateway.spec.operation(method, path)
        if found is None:  # a route of the real gateway that the spec leaves out
            if path.startswith("/system/namespace/"):
                return self.reply(_http_error(501, "Feature not implemented in this version of OpenFaaS")
                                  if method == "GET" else _Reply(405))
            return self.reply(_http_error(404, "404 page not found"))
        op, params = found
        problems = gateway.spec.check_request(op, params, query, self.headers, body)
        where = f"{method} {path}" + (f"?{raw_query}" if raw_query else "")
        if problems:
            gateway.violations += [f"{where}: {p}" for p in problems]
            log.warning("fake OpenFaaS: %s does not conform: %s", where, problems)
            return self.reply(_http_error(400, "the request does not conform to the gateway's OpenAPI spec:\n"
                                               + "\n".join(problems)))
        request = json.loads(body) if body and "json" in (self.headers.get("Content-Type") or "") else {}
        if not isinstance(request, dict):
            request = {}
        namespace = (query.get("namespace") or [None])[-1]

        if op.template == "/system/logs":
            return gateway._logs_reply(self, query)
        reply = self._dispatch(gateway, op, params, request, namespace)
        problems = gateway.spec.check_answer(op, reply.status, reply.content_type, reply.body)
        if problems:
            gateway.answer_violations += [f"{where} -> {reply.status}: {p}" for p in problems]
            log.error("fake OpenFaaS answered %s outside the spec: %s", where, problems)
        self.reply(reply)

    def _dispatch(self, gateway: FakeOpenFaaS, op: _Operation, params: dict[str, str], request: dict,
                  namespace: str | None) -> _Reply:
        method, template = op.method.upper(), op.template
        if template == "/system/functions":
            if method == "GET":
                if (error := gateway._namespace_error(namespace)) is not None:
                    return error
                with gateway._lock:
                    return _json(200, [gateway._status(fn, with_count=True)
                                       for fn in sorted(gateway._functions.values(), key=lambda f: f.name)
                                       if not fn.deleted])
            if method == "POST":
                return gateway.deploy(request)
            if method == "PUT":
                return gateway.update(request)
            return gateway.delete(request, namespace)
        if template == "/system/function/{functionName}":
            if (error := gateway._namespace_error(namespace)) is not None:
                return error
            with gateway._lock:
                fn = gateway._functions.get(params["functionName"])
                if fn is None or fn.deleted:
                    return _Reply(404)
                return _json(200, gateway._status(fn))
        if template == "/system/scale-function/{functionName}":
            return gateway.scale(params["functionName"], request, namespace)
        if template == "/system/info":
            return gateway._info()
        if template == "/system/namespaces":
            return _json(200, [NAMESPACE])
        if template == "/system/secrets":
            return gateway._secrets_api(method, request, namespace)
        if template == "/system/alert":
            return _Reply(200)
        return _http_error(404, "404 page not found")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


__all__ = ["FakeOpenFaaS", "AnswerViolation", "KNOWN_DEVIATIONS", "NAMESPACE", "SPEC_PATH"]
