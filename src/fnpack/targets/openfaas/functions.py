"""The OpenFaaS functions fnpack deploys, as FunctionDeployment dicts (the gateway's POST/PUT body), and how
it reads them back from the gateway alone (labels and annotations: a gateway returns no envVars).

- A version is a function `NAME-vN` running the runtime image on the archive in model storage
  (FNPACK_ARCHIVE and FNPACK_SHA256: a deployment has no arguments), labelled with its function and
  number, its sha256 and origin in annotations.
- An alias is a router function (`NAME` for live, so `/function/NAME` is live; `NAME-ALIAS` for others):
  the same image started with FNPACK_ROUTE, which splits requests between two versions by exact weights
  (`fnpack.router`). Its route is also in an annotation, with a revision number that every move raises.
- What Community Edition refuses or ignores (scale to zero, a scaling target, GPU profiles, node
  constraints, more than 5 replicas) is left out on CE and named in `ce_ignores`, for the deploy to say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fnpack.errors import FnpackError, UsageError
from fnpack.targets.openfaas.settings import DEFAULT_UPSTREAM, SECRETS_DIR, OpenFaaSSettings
from fnpack.versions import DEFAULT_ALIAS, AliasState, Version

FUNCTION = "com.fnpack.function"
VERSION = "com.fnpack.version"
ALIAS = "com.fnpack.alias"
KIND = "com.fnpack.kind"  # version or router
SHA256 = "com.fnpack.sha256"
ARCHIVE = "com.fnpack.archive"
CREATED = "com.fnpack.created-at"
ACTOR = "com.fnpack.actor"
ROUTE = "com.fnpack.route"
REVISION = "com.fnpack.revision"
CE_MAX_REPLICAS = 5  # the CE gateway clamps scaling to [1, 5] and refuses higher scale labels
CE_MAX_FUNCTIONS = 15  # faas-netes CE refuses the 16th function
CACHE_DIR = "/tmp/fnpack-cache"  # writable with readOnlyRootFilesystem (OpenFaaS mounts /tmp)


def version_name(function: str, number: int) -> str:
    return f"{function}-v{number}"


def router_name(function: str, alias: str) -> str:
    name = function if alias == DEFAULT_ALIAS else f"{function}-{alias}"
    if len(name) > 63:
        raise UsageError(f"alias {alias!r} of {function} would be the function {name!r}, over 63 characters",
                         hint="use a shorter alias name")
    return name


def _resources(spec: Mapping[str, Any]) -> dict[str, str]:
    from fnpack.spec import Resources

    resources = Resources.model_validate(spec.get("resources") or {})
    found = {"memory": f"{resources.memory}Mi"}
    if resources.cpu:
        found["cpu"] = f"{math.ceil(resources.cpu * 1000)}m"
    return found


def ce_ignores(spec: Mapping[str, Any]) -> list[str]:
    """The spec's settings an OpenFaaS Community Edition gateway does not honour, as sentences."""
    from fnpack.spec import Resources, Scaling

    resources = Resources.model_validate(spec.get("resources") or {})
    scaling = Scaling.model_validate(spec.get("scaling") or {})
    found = []
    if scaling.min == 0:
        found.append("scaling.min 0: scale to zero is an OpenFaaS Pro feature; CE keeps 1 replica")
    if scaling.max > CE_MAX_REPLICAS:
        found.append(f"scaling.max {scaling.max}: CE scales to at most {CE_MAX_REPLICAS} replicas")
    found.append(f"scaling.target_concurrency {scaling.target_concurrency}: CE's autoscaling has no per-function "
                 "target (Pro's com.openfaas.scale.target)")
    if resources.gpu:
        found.append(f"resources.gpu {resources.gpu}: GPUs need an OpenFaaS Pro profile (com.openfaas.profile); "
                     "CE runs the function without one")
    if resources.node_selector:
        found.append("resources.node_selector: CE ignores constraints")
    if resources.tolerations:
        found.append("resources.tolerations: tolerations need an OpenFaaS Pro profile")
    return found


def _scale_labels(spec: Mapping[str, Any], edition: str) -> dict[str, str]:
    from fnpack.spec import Resources, Scaling

    scaling = Scaling.model_validate(spec.get("scaling") or {})
    if edition != "pro":
        return {"com.openfaas.scale.min": str(min(max(1, scaling.min), CE_MAX_REPLICAS)),
                "com.openfaas.scale.max": str(min(max(1, scaling.max), CE_MAX_REPLICAS))}
    labels = {"com.openfaas.scale.min": str(max(1, scaling.min)), "com.openfaas.scale.max": str(scaling.max),
              "com.openfaas.scale.target": str(scaling.target_concurrency), "com.openfaas.scale.type": "capacity"}
    if scaling.min == 0:
        labels["com.openfaas.scale.zero"] = "true"
        labels["com.openfaas.scale.zero-duration"] = f"{max(1, math.ceil(scaling.idle_timeout / 60))}m"
    if Resources.model_validate(spec.get("resources") or {}).gpu:
        labels["com.openfaas.profile"] = "gpu"
    return labels


def version_deployment(*, function: str, number: int, sha256: str, archive_uri: str, spec: Mapping[str, Any],
                       runtime: str, settings: OpenFaaSSettings, storage_env: Mapping[str, str], created_at: str,
                       actor: str, edition: str) -> dict[str, Any]:
    from fnpack.spec import Resources

    resources = Resources.model_validate(spec.get("resources") or {})
    env = {"FNPACK_ARCHIVE": archive_uri, "FNPACK_SHA256": sha256, "FNPACK_FUNCTION": function,
           "FNPACK_MODEL_VERSION": str(number), "FNPACK_CACHE_DIR": CACHE_DIR, **storage_env,
           **settings.environment}
    deployment: dict[str, Any] = {
        "service": version_name(function, number),
        "image": settings.image_for(runtime, resources.gpu > 0),
        "envVars": env,
        "labels": {FUNCTION: function, VERSION: str(number), KIND: "version", **_scale_labels(spec, edition)},
        "annotations": {SHA256: sha256, ARCHIVE: archive_uri, CREATED: created_at, ACTOR: actor},
        "limits": _resources(spec), "requests": _resources(spec),
        "readOnlyRootFilesystem": True,
    }
    if settings.storage_secret:
        deployment["secrets"] = [settings.storage_secret]
        env["AWS_SHARED_CREDENTIALS_FILE"] = f"{SECRETS_DIR}/{settings.storage_secret}"
    if resources.node_selector and edition == "pro":
        deployment["constraints"] = [f"{key}={value}" for key, value in sorted(resources.node_selector.items())]
    if settings.namespace:
        deployment["namespace"] = settings.namespace
    return deployment


def router_deployment(*, function: str, alias: str, state: AliasState, revision: int, settings: OpenFaaSSettings,
                      runtime: str = "python3.11") -> dict[str, Any]:
    """The alias's router: FNPACK_ROUTE for the process, the same route in an annotation for fnpack."""
    route = {"function": function, "alias": alias, "primary": state.primary, "canary": state.canary,
             "weight": state.weight, "upstream": settings.upstream or DEFAULT_UPSTREAM}
    deployment: dict[str, Any] = {
        "service": router_name(function, alias),
        "image": settings.image_for(runtime, False),
        "envVars": {"FNPACK_ROUTE": json.dumps(route, separators=(",", ":"))},
        "labels": {FUNCTION: function, ALIAS: alias, KIND: "router",
                   "com.openfaas.scale.min": "1", "com.openfaas.scale.max": str(CE_MAX_REPLICAS)},
        "annotations": {ROUTE: json.dumps({"primary": state.primary, "canary": state.canary, "weight": state.weight}),
                        REVISION: str(revision)},
        "limits": {"memory": "128Mi"}, "requests": {"memory": "64Mi"},
        "readOnlyRootFilesystem": True,
    }
    if settings.namespace:
        deployment["namespace"] = settings.namespace
    return deployment


# --- reading back what the gateway says ---------------------------------------------------------------


def labels_of(status: Mapping[str, Any] | None) -> dict[str, str]:
    return dict((status or {}).get("labels") or {})


def annotations_of(status: Mapping[str, Any] | None) -> dict[str, str]:
    return dict((status or {}).get("annotations") or {})


def is_version(function: str, status: Mapping[str, Any]) -> bool:
    labels = labels_of(status)
    return labels.get(FUNCTION) == function and labels.get(KIND) == "version" and \
        str(labels.get(VERSION, "")).isdigit() and status.get("name") == version_name(function, int(labels[VERSION]))


def version_of(function: str, status: Mapping[str, Any]) -> Version:
    notes = annotations_of(status)
    return Version(function=function, number=int(labels_of(status)[VERSION]), sha256=notes.get(SHA256, ""),
                   created_at=notes.get(CREATED, ""), actor=notes.get(ACTOR, ""), target="openfaas")


def route_of(function: str, alias: str, status: Mapping[str, Any]) -> tuple[AliasState | None, int]:
    """(where the router sends traffic, its revision); a function of that name that is no router of this
    alias is refused (it would be overwritten)."""
    labels = labels_of(status)
    if (labels.get(FUNCTION), labels.get(ALIAS), labels.get(KIND)) != (function, alias, "router"):
        raise FnpackError(f"the OpenFaaS function {status.get('name')} exists but is not alias {alias} of {function}",
                          hint="pick another alias name, or delete that function")
    notes = annotations_of(status)
    try:
        data = json.loads(notes.get(ROUTE) or "null")
        state = AliasState(int(data["primary"]), data.get("canary"), float(data.get("weight") or 0.0)) if data \
            else None
        revision = int(notes.get(REVISION) or 0)
    except (ValueError, TypeError, KeyError, FnpackError) as exc:
        raise FnpackError(f"the route annotation of the OpenFaaS function {status.get('name')} is not fnpack's ({exc})",
                          hint="deploy the alias again with `fnpack alias set`") from None
    return state, revision
