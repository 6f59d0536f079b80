"""Deploying to the local platform through the shared skeleton: one upload makes the version.

When the connection drops during or after a change (the gateway restarted, the answer lost), the
deployer waits up to FNPACK_RECONNECT_WAIT seconds for the platform and asks it what happened before
saying anything: a committed deploy must not look failed, and doing it again is safe (the same archive
gives the same version, an alias already there is not moved).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnpack.errors import FnpackError, NotFoundError, StartError
from fnpack.targets.base import version_from_dict
from fnpack.targets.deploy import Deployable, Deployer, Plan, Progress, RemoteState, Step, Upload
from fnpack.targets.local.api import CutOff, q
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

if TYPE_CHECKING:
    from fnpack.targets.local.target import LocalTarget

# How long a deploy whose connection dropped waits for the platform to answer again, to learn the outcome.
RECONNECT_WAIT = float(os.environ.get("FNPACK_RECONNECT_WAIT", "30"))


class LocalDeployer(Deployer):
    target = "local"

    def __init__(self, remote: LocalTarget) -> None:
        self.remote = remote
        self.api = remote.api
        self.notes = remote.notes

    # --- planning (reads only) ------------------------------------------------------------------------

    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        try:
            versions = self.remote.versions(deployable.name)
        except NotFoundError:
            return RemoteState(), {}
        return RemoteState(True, tuple(versions), self.remote.aliases(deployable.name)), {}

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        from fnpack.build.budget import human

        size = deployable.size
        url = f"{self.api.url}/api/v1/functions/{deployable.name}/versions"
        return [Upload(f"upload {deployable.path.name} ({human(size)}) as a new version of {deployable.name}",
                       arguments={"function": deployable.name, "archive": str(deployable.path),
                                  "sha256": deployable.sha256, "size": size, "url": url})]

    # --- executing -----------------------------------------------------------------------------------

    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        if not isinstance(step, Upload):
            raise FnpackError(f"the local target has no step {step.kind!r}")
        done.version, done.created = self._upload_verified(plan)

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        done.version = next((v for v in self.remote.versions(plan.function) if v.sha256 == plan.sha256), None)
        if done.version is None:  # deleted since the plan was made: the same archive makes it again
            done.version, done.created = self._upload_verified(plan)

    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        return self.remote.aliases(plan.function)

    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str:
        return self.remote.invoke_url(qualifier)

    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        """Move an alias; when the connection drops, look at where it points before doing it again."""
        try:
            return self.remote.set_alias(plan.function, alias, state, reason)
        except CutOff as cut:
            self._wait_back(plan, cut, f"moving alias {alias}", f"whether alias {alias} moved to {state}")
            if self.remote.aliases(plan.function).get(alias) != state:
                return self.remote.set_alias(plan.function, alias, state, reason)
            self.notes.append(f"the connection dropped while moving alias {alias} ({cut.reason}); it points at "
                              f"{state}")
            history = self.remote.history(plan.function, alias)
            return history[-1] if history and history[-1].after == state else None

    def _upload_verified(self, plan: Plan) -> tuple[Version, bool]:
        """Upload; when the connection drops, ask the platform (once it answers) whether the version
        was made. Uploads again once when it was not."""
        for attempt in (1, 2):
            try:
                return self._upload(plan.archive, plan.function)
            except CutOff as cut:
                what = f"whether {plan.function} got a version with this archive"
                self._wait_back(plan, cut, "uploading the archive", what)
                try:
                    found = next((v for v in self.remote.versions(plan.function) if v.sha256 == plan.sha256), None)
                except NotFoundError:
                    found = None
                if found is not None:
                    self.notes.append(f"the connection dropped during the upload ({cut.reason}); the platform "
                                      f"has the version: {plan.function} v{found.number}, sha256 {plan.sha256[:12]}")
                    return found, True
                self.notes.append(f"the connection dropped during the upload ({cut.reason}) before the platform "
                                  f"made a version" + ("; uploaded again" if attempt == 1 else ""))
        raise FnpackError(f"the connection to {self.api.url} dropped during both uploads of {plan.archive.name}; "
                          f"{plan.function} has no version with this archive: nothing was deployed",
                          hint="check the platform's output (`fnpack serve`), then deploy again")

    def _wait_back(self, plan: Plan, cut: CutOff, doing: str, unknown: str) -> None:
        """Wait for the platform to answer again; if it does not, say that the outcome is unknown."""
        deadline = time.monotonic() + RECONNECT_WAIT
        while not self.api.healthy(timeout=2.0):
            if time.monotonic() >= deadline:
                raise StartError(
                    f"the connection to {self.api.url} dropped while {doing} ({cut.reason}) and the platform has "
                    f"not answered since ({RECONNECT_WAIT:g} s): {unknown} is unknown",
                    hint=f"once it is back, `fnpack versions {plan.function}` lists the version with sha256 "
                         f"{plan.sha256[:12]}... if it was made, and `fnpack alias list {plan.function}` shows the "
                         "aliases; deploying again is safe: the same archive gives the same version")
            time.sleep(0.5)

    def _upload(self, archive: Path, name: str) -> tuple[Version, bool]:
        size = archive.stat().st_size
        with open(archive, "rb") as f:  # streamed from the file, a block at a time
            data = self.api.json("POST", f"/api/v1/functions/{q(name)}/versions", content=f,
                                 headers={"Content-Type": "application/zip", "Content-Length": str(size)})
        return version_from_dict(data["version"]), bool(data.get("created"))
