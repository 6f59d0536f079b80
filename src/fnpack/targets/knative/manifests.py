"""The Knative objects fnpack writes, as plain dicts: a Service per function, a Route per alias other than
`live`, and the checks Knative's admission webhook would make (the test API server has no webhook, and a
refusal found here costs nothing).

- Versions are revisions named by fnpack, `NAME-vN`, each made by a new Service template that carries the
  archive's URI and sha256; each version keeps a 0% traffic target tagged `vN` (its own URL
  `vN-NAME.NAMESPACE.DOMAIN`), which also keeps Knative from garbage-collecting it, as does
  `serving.knative.dev/no-gc`.
- The `live` alias is the Service's own route (`NAME.NAMESPACE.DOMAIN`): its untagged traffic targets, the
  primary first, then the canary. Every other alias is a Route `NAME-ALIAS` of fnpack's own.
- An alias's history is an annotation on the object that holds its traffic, so that the move and its record
  are one write, guarded by the object's resourceVersion.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from fnpack.errors import FnpackError, UsageError
from fnpack.targets.knative.settings import KNATIVE_RESERVED_ENV, KnativeSettings
from fnpack.versions import AliasMove, AliasState

API_VERSION = "serving.knative.dev/v1"
MANAGED_BY = "app.kubernetes.io/managed-by"
FUNCTION = "fnpack.dev/function"
ALIAS = "fnpack.dev/alias"
VERSION = "fnpack.dev/version"
SHA256 = "fnpack.dev/sha256"
ARCHIVE = "fnpack.dev/archive"
CREATED = "fnpack.dev/created-at"
ACTOR = "fnpack.dev/actor"
HISTORY = "fnpack.dev/history"
LAST_VERSION = "fnpack.dev/last-version"  # on the Service: numbers are never reused, even after a delete
NO_GC = "serving.knative.dev/no-gc"
CONTAINER = "function"
PORT = 8080
READY_PATH = "/healthz"  # the runtime listens only once the model is loaded
CACHE_DIR = "/tmp/fnpack-cache"
MAX_MOVES = 200  # kept per alias: an object's annotations hold 256 KiB in all
MAX_HISTORY_BYTES = 128 * 1024
MAX_TIMEOUT = 600  # Knative's max-revision-timeout-seconds default
MAX_CONCURRENCY = 1000  # Knative's container-concurrency-max-limit default
_REVISION = re.compile(r"(?P<function>[a-z]([-a-z0-9]*[a-z0-9])?)-v(?P<number>[0-9]{1,9})")


def revision_name(function: str, number: int) -> str:
    return f"{function}-v{number}"


def version_tag(number: int) -> str:
    return f"v{number}"


def route_name(function: str, alias: str) -> str:
    name = f"{function}-{alias}"
    if len(name) > 63:
        raise UsageError(f"alias {alias!r} of {function} is too long for Knative: the Route {name!r} would have "
                         f"{len(name)} characters, at most 63", hint="use a shorter alias name")
    return name


def version_of(function: str, revision: str) -> int | None:
    found = _REVISION.fullmatch(revision)
    return int(found["number"]) if found and found["function"] == function else None


@dataclass(frozen=True)
class PodStorage:
    """What model storage adds to the pod: environment, a Secret's keys as environment, volumes."""

    env: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = None
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()


# --- the revision template ------------------------------------------------------------------------------


def revision_template(*, function: str, number: int, sha256: str, archive_uri: str, spec: Mapping[str, Any],
                      runtime: str, settings: KnativeSettings, storage: PodStorage, created_at: str,
                      actor: str) -> dict[str, Any]:
    """The Service template that makes revision `NAME-vN` run the archive at `archive_uri`."""
    from fnpack.spec import Resources, Scaling

    resources = Resources.model_validate(spec.get("resources") or {})
    scaling = Scaling.model_validate(spec.get("scaling") or {})
    gpu = resources.gpu > 0
    annotations = {
        SHA256: sha256, ARCHIVE: archive_uri, CREATED: created_at, ACTOR: actor, NO_GC: "true",
        "autoscaling.knative.dev/min-scale": str(scaling.min),
        "autoscaling.knative.dev/max-scale": str(scaling.max),
        "autoscaling.knative.dev/target": str(scaling.target_concurrency),
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": f"{math.ceil(scaling.idle_timeout)}s",
        "serving.knative.dev/progress-deadline": f"{settings.deadline_for(gpu)}s",
    }
    env = {"FNPACK_FUNCTION": function, "FNPACK_MODEL_VERSION": str(number), "FNPACK_CACHE_DIR": CACHE_DIR,
           **storage.env, **settings.environment}
    requests: dict[str, str] = {"memory": f"{resources.memory}Mi"}
    limits: dict[str, str] = {"memory": f"{resources.memory}Mi"}
    if resources.cpu:
        requests["cpu"] = limits["cpu"] = f"{math.ceil(resources.cpu * 1000)}m"
    if gpu:
        limits["nvidia.com/gpu"] = str(resources.gpu)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image_for(runtime, gpu),
        "command": ["python", "-m", "fnpack.worker"],
        "args": ["--archive", archive_uri, "--sha256", sha256],
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "resources": {"requests": requests, "limits": limits},
        # No request reaches a pod before its model is loaded: the runtime answers only once it is.
        "readinessProbe": {"httpGet": {"path": READY_PATH}, "periodSeconds": 1, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if storage.secret:
        container["envFrom"] = [{"secretRef": {"name": storage.secret}}]
    if storage.mounts:
        container["volumeMounts"] = list(storage.mounts)
    pod: dict[str, Any] = {"containerConcurrency": scaling.target_concurrency,
                           "timeoutSeconds": max(1, math.ceil(resources.timeout)), "containers": [container]}
    if storage.volumes:
        pod["volumes"] = list(storage.volumes)
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in resources.tolerations]
    labels = {MANAGED_BY: "fnpack", FUNCTION: function, VERSION: str(number)}
    return {"metadata": {"name": revision_name(function, number), "labels": labels, "annotations": annotations},
            "spec": pod}


# --- traffic ----------------------------------------------------------------------------------------------


def percent(weight: float) -> int:
    """A canary weight as Knative's whole percent; a weight between two percents is refused."""
    share = weight * 100
    if abs(share - round(share)) > 1e-6:
        raise UsageError(f"Knative splits traffic in whole percents: a canary weight of {weight} ({share:g}%) "
                         "cannot be routed", hint=f"use {math.floor(share) / 100:g} or {math.ceil(share) / 100:g}")
    return round(share)


def alias_traffic(function: str, state: AliasState) -> list[dict[str, Any]]:
    """The untagged targets of an alias: the primary, then the canary with its share."""
    entries = [{"revisionName": revision_name(function, state.primary), "percent": 100 - percent(state.weight)}]
    if state.canary is not None:
        entries.append({"revisionName": revision_name(function, state.canary), "percent": percent(state.weight)})
    return entries


def state_of(function: str, traffic: Iterable[Mapping[str, Any]]) -> AliasState | None:
    """The alias a traffic block's untagged targets make; None when it is not one fnpack can say (another
    tool routed it: more than two revisions, a revision not named NAME-vN, `latestRevision`)."""
    split = [entry for entry in traffic if not entry.get("tag")]
    numbers = [version_of(function, str(entry.get("revisionName") or "")) for entry in split]
    if not 1 <= len(split) <= 2 or None in numbers or len(set(numbers)) != len(numbers):
        return None
    if len(split) == 1:
        return AliasState(int(numbers[0] or 0))
    return AliasState(int(numbers[0] or 0), int(numbers[1] or 0), int(split[1].get("percent") or 0) / 100)


def tagged_versions(function: str, traffic: Iterable[Mapping[str, Any]]) -> list[int]:
    return sorted(n for entry in traffic if entry.get("tag")
                  if (n := version_of(function, str(entry.get("revisionName") or ""))) is not None)


# --- the objects --------------------------------------------------------------------------------------------


def service_manifest(function: str, namespace: str, template: Mapping[str, Any], traffic: list[dict[str, Any]],
                     annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Service",
            "metadata": {"name": function, "namespace": namespace,
                         "labels": {MANAGED_BY: "fnpack", FUNCTION: function}, "annotations": dict(annotations)},
            "spec": {"template": dict(template), "traffic": traffic}}


def route_manifest(function: str, alias: str, namespace: str, state: AliasState,
                   annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Route",
            "metadata": {"name": route_name(function, alias), "namespace": namespace,
                         "labels": {MANAGED_BY: "fnpack", FUNCTION: function, ALIAS: alias},
                         "annotations": dict(annotations)},
            "spec": {"traffic": alias_traffic(function, state)}}


# --- history in an annotation ----------------------------------------------------------------------------


def history_of(obj: Mapping[str, Any] | None) -> list[AliasMove]:
    """The moves in an object's history annotation; a hand-edited one that is no history is a clear error."""
    from fnpack.targets.base import move_from_dict

    meta = (obj or {}).get("metadata") or {}
    text = (meta.get("annotations") or {}).get(HISTORY)
    if not text:
        return []
    try:
        entries = json.loads(text)
        if not isinstance(entries, list):
            raise TypeError("not a list of moves")
        moves = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("at", ""), str) or \
                    not isinstance(entry.get("undoes"), (int, type(None))) or isinstance(entry.get("undoes"), bool):
                raise TypeError(f"entry {index} is not a move")
            moves.append(move_from_dict(entry))
    except (ValueError, KeyError, TypeError, AttributeError, FnpackError) as exc:
        detail = exc.message if isinstance(exc, FnpackError) else str(exc)
        raise FnpackError(f"the {HISTORY} annotation of {meta.get('name')} is not an fnpack alias history "
                          f"({detail})", hint="fix or remove it with `kubectl annotate`, then try again") from None
    return moves


def history_text(moves: list[AliasMove]) -> str:
    """The moves as the annotation's JSON, the oldest dropped past MAX_MOVES or MAX_HISTORY_BYTES. Rollback
    indexes follow; a rollback of a dropped move keeps -1 (still a rollback, which a later rollback skips)."""
    dropped = max(0, len(moves) - MAX_MOVES)
    while True:
        kept = [replace(move, undoes=None if move.undoes is None else max(-1, move.undoes - dropped))
                for move in moves[dropped:]]
        text = json.dumps([asdict(move) for move in kept], separators=(",", ":"))
        if len(text) <= MAX_HISTORY_BYTES or len(kept) <= 1:
            return text
        dropped += max(1, len(kept) // 10)


def fnpack_annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """The annotations fnpack owns on an object (a rewrite keeps them; others' belong to their managers)."""
    found = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return {key: value for key, value in found.items() if key.startswith("fnpack.dev/")}


def last_version(service: Mapping[str, Any] | None) -> int:
    """The highest version number the Service has had (numbers are never reused, even after a delete)."""
    text = fnpack_annotations(service).get(LAST_VERSION, "0")
    return int(text) if text.isdigit() else 0


def live_state(function: str, service: Mapping[str, Any]) -> AliasState | None:
    """Where `live` points: the Service's untagged traffic, once live has been set (until then Knative
    routes the Service to the first version, which is no alias)."""
    if not history_of(service):
        return None
    return state_of(function, (service.get("spec") or {}).get("traffic") or [])


def service_update(function: str, namespace: str, service: Mapping[str, Any] | None, *,
                   template: Mapping[str, Any] | None = None, live: AliasState | None = None,
                   tag: int | None = None, untag: int | None = None,
                   annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Service fnpack applies, from the one read (None: a new one). What the change does not name is
    kept as read: the template, the untagged traffic (another tool's split included) unless `live` moves,
    every tag but the version tag `untag` drops (another tool's included), fnpack's annotations. `tag` adds
    version N's tag; a new Service routes all its traffic to its first version."""
    current = dict(service or {})
    spec = current.get("spec") or {}
    template = template if template is not None else spec.get("template")
    if template is None:
        raise FnpackError(f"the Knative Service {function} has no template", hint="was it made by fnpack?")
    traffic = list(spec.get("traffic") or [])
    untagged = [e for e in traffic if not e.get("tag")]
    tagged = [e for e in traffic if e.get("tag") and not (untag is not None and _is_version_tag(function, e, untag))]
    if live is not None:
        untagged = alias_traffic(function, live)
    elif not untagged:
        first = version_of(function, str((template.get("metadata") or {}).get("name") or ""))
        untagged = alias_traffic(function, AliasState(first or 1))
    if tag is not None and not any(_is_version_tag(function, e, tag) for e in tagged):
        tagged.append({"revisionName": revision_name(function, tag), "percent": 0, "tag": version_tag(tag)})
    return service_manifest(function, namespace, template, untagged + tagged,
                            {**fnpack_annotations(service), **(annotations or {})})


def _is_version_tag(function: str, entry: Mapping[str, Any], number: int) -> bool:
    return entry.get("tag") == version_tag(number) and entry.get("revisionName") == revision_name(function, number)


def referenced(function: str, objects: Iterable[Mapping[str, Any] | None]) -> set[int]:
    """The versions the objects' traffic sends requests to (their untagged targets)."""
    found = set()
    for obj in objects:
        for entry in ((obj or {}).get("spec") or {}).get("traffic") or []:
            number = version_of(function, str(entry.get("revisionName") or ""))
            if number is not None and not entry.get("tag"):
                found.add(number)
    return found


# What a revision's template carries over when it is made the Service's template again.
_TEMPLATE_ANNOTATIONS = ("fnpack.dev/", "autoscaling.knative.dev/", NO_GC, "serving.knative.dev/progress-deadline")


def template_of(revision: Mapping[str, Any]) -> dict[str, Any]:
    """The Service template that makes this revision (under its own name, so Knative makes nothing new)."""
    meta = revision.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k in (MANAGED_BY, FUNCTION, VERSION)}
    if not labels or "spec" not in revision:
        raise FnpackError(f"the revision {meta.get('name')} carries no fnpack template", hint="was it made by fnpack?")
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(_TEMPLATE_ANNOTATIONS)}
    return {"metadata": {"name": meta["name"], "labels": labels, "annotations": annotations}, "spec": revision["spec"]}


def deadline_of(revision: Mapping[str, Any] | None, default: int) -> int:
    """The revision's own progress deadline in seconds (its annotation), else `default`."""
    text = (((revision or {}).get("metadata") or {}).get("annotations") or {}).get(
        "serving.knative.dev/progress-deadline", "")
    return int(text[:-1]) if text.endswith("s") and text[:-1].isdigit() else default


# --- what Knative's webhook would refuse -----------------------------------------------------------------


def check(manifest: Mapping[str, Any]) -> None:
    """Refuse, before sending, what Knative's admission webhook refuses (the test server has none)."""
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    spec = manifest.get("spec") or {}
    problems: list[str] = []
    if kind == "Service":
        template = spec.get("template") or {}
        revision = (template.get("metadata") or {}).get("name", "")
        if revision and not revision.startswith(f"{name}-"):
            problems.append(f"its revision name {revision!r} does not start with {name + '-'!r}")
        for container in (template.get("spec") or {}).get("containers", []):
            reserved = sorted({e["name"] for e in container.get("env", [])} & KNATIVE_RESERVED_ENV)
            if reserved:
                problems.append(f"its environment sets {', '.join(reserved)}, which Knative reserves")
    pod = ((spec.get("template") or {}).get("spec") or {}) if kind == "Service" else {}
    if int(pod.get("timeoutSeconds") or 0) > MAX_TIMEOUT:
        problems.append(f"its timeoutSeconds {pod['timeoutSeconds']} is over Knative's default maximum of "
                        f"{MAX_TIMEOUT} (resources.timeout; a cluster may raise max-revision-timeout-seconds)")
    if int(pod.get("containerConcurrency") or 0) > MAX_CONCURRENCY:
        problems.append(f"its containerConcurrency {pod['containerConcurrency']} is over Knative's maximum of "
                        f"{MAX_CONCURRENCY} (scaling.target_concurrency)")
    traffic = spec.get("traffic") or []
    if traffic:
        total = sum(int(entry.get("percent") or 0) for entry in traffic)
        if total != 100:
            problems.append(f"its traffic percents sum to {total}, not 100")
        if any(not 0 <= int(entry.get("percent") or 0) <= 100 for entry in traffic):
            problems.append("a traffic percent is outside [0, 100]")
        tags = [entry["tag"] for entry in traffic if entry.get("tag")]
        if len(tags) != len(set(tags)):
            problems.append(f"its traffic tags are not unique: {sorted(tags)}")
        too_long = [tag for tag in tags if len(f"{tag}-{name}") > 63]
        if too_long:
            problems.append(f"the host label of tag {too_long[0]!r} would be over 63 characters")
    if problems:
        raise UsageError(f"the Knative {kind} {name} would be refused by Knative: {'; '.join(problems)}",
                         hint="this is fnpack's mistake or a hand-edited object: report it")


def to_yaml(manifests: Iterable[Mapping[str, Any]]) -> str:
    """Manifests as one YAML stream that `kubectl apply -f -` takes."""
    return yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False, default_flow_style=False)
