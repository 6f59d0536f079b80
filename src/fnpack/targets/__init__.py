"""Targets: where functions are deployed. The list is `catalog`; each target is a folder behind
`base.Target`, deploys through the shared skeleton of `deploy`, moves aliases with the protocol of
`history`, and is configured by one settings model (`settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fnpack.targets.catalog import AVAILABLE, TARGETS, deployable

if TYPE_CHECKING:
    from fnpack.targets.base import Target

__all__ = ["AVAILABLE", "TARGETS", "get_target"]


def get_target(name: str, context: Mapping[str, Any] | None = None, context_name: str = "",
               spec: Mapping[str, Any] | None = None, **flags: Any) -> Target:
    """The target called `name`, configured by its settings model from `flags` (None: not given; the
    names another target's model has are ignored), then its FNPACK_* variables, then the user's
    `context` (the settings of a context of this target), then the `spec` of the function at hand (its
    section for this target: `knative.namespace` is where `fnpack versions` looks, as `deploy` does)."""
    info = deployable(name)
    model = info.settings_model()
    settings = model.layered(flags, context=context, context_name=context_name)
    if spec:
        settings = settings.over(model.from_spec(spec))
    return info.target_class()(settings)
