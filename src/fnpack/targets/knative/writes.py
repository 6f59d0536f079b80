"""fnpack's two kinds of writes to the cluster, each refusing to overwrite a change it has not seen.

- `apply_guarded`: a server-side apply guarded by the resourceVersion read. Knative's controllers write
  the status of what fnpack writes, and every status write changes the resourceVersion, so a conflict
  where only the status changed is retried with the new one; any change to the spec, the labels or
  fnpack's annotations (by fnpack elsewhere, kn or kubectl), or a deletion under way, stays a conflict.
- `create_owned`: an object that must not exist yet, created (AlreadyExists: a conflict, nothing
  changed), then its fields handed to fnpack's server-side-apply manager (as client-go's `csaupgrade`
  does), so that a later apply that leaves a field out removes it; a create alone would keep every field
  it set for ever, owned by an "Update" manager that no apply replaces.
"""

from __future__ import annotations

import time
from typing import Any

from fnpack.errors import ConflictError, FnpackError
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.kube import FIELD_MANAGER, KubeApi

ATTEMPTS = 10


def resource_version(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def _intent(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What fnpack's writes decide about an object: its spec, labels and fnpack's annotations (not its
    status), and whether it is being deleted."""
    meta = obj.get("metadata") or {}
    return obj.get("spec"), meta.get("labels"), m.fnpack_annotations(obj), meta.get("deletionTimestamp")


def _changed(kind: str, name: str) -> ConflictError:
    return ConflictError(f"the {kind} {name} changed since it was read (someone else moved, deployed or edited "
                         "it); nothing was changed", hint="see `fnpack describe NAME --target knative`, then try again")


def apply_guarded(kube: KubeApi, resource: str, body: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    """Apply `body` only if the object is still as `seen`, but for its status."""
    name = body["metadata"]["name"]
    if (seen.get("metadata") or {}).get("deletionTimestamp"):
        raise _changed(body["kind"], name)
    for attempt in range(ATTEMPTS):
        body["metadata"]["resourceVersion"] = resource_version(seen)
        try:
            return kube.apply(resource, body)
        except ConflictError:
            fresh = kube.get(resource, name)
            if fresh is None or _intent(fresh) != _intent(seen):
                raise _changed(body["kind"], name) from None
            seen = fresh
            time.sleep(0.01 * (attempt + 1))
    raise _changed(body["kind"], name)


def create_owned(kube: KubeApi, resource: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create `body` (ConflictError if it exists), its fields owned by fnpack's apply manager."""
    created = kube.create(resource, body)
    name = body["metadata"]["name"]
    for attempt in range(ATTEMPTS):
        fields = created["metadata"].get("managedFields") or []
        handed = [{**entry, "operation": "Apply"} if entry.get("manager") == FIELD_MANAGER else entry
                  for entry in fields]
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version(created)},
                 {"op": "replace", "path": "/metadata/managedFields", "value": handed}]
        try:
            return kube.patch(resource, name, patch)
        except FnpackError:  # the test failed (a status write in between, 422 or 409): read again
            fresh = kube.get(resource, name)
            if fresh is None or _intent(fresh) != _intent(created):
                raise _changed(body["kind"], name) from None
            created = fresh
            time.sleep(0.01 * (attempt + 1))
    raise _changed(body["kind"], name)
