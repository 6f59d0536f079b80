"""The local platform's behaviour behind the HTTP layer: deploys, alias moves, routing, workers.

One `fnpack serve` owns a state folder (a lock file makes sure of it), so the caches
here are the truth: an alias move updates the cache before it is acknowledged, and
every request resolved after that sees it. A request resolves its version once, at
arrival, and finishes on it even if the alias moves meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform as host
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnpack.archive import MANIFEST_NAME, SafeArchive, open_archive
from fnpack.archive.fetch import unpack_archive, unpacked_path, verify_unpacked
from fnpack.errors import ArchiveError, FnpackError, NotFoundError, OutputError, SpecError, StartError
from fnpack.platform.isolation import Isolation, remove_tree
from fnpack.platform.memory import MemoryLimits
from fnpack.platform.metrics import GatewayMetrics
from fnpack.platform.registry import Registry
from fnpack.platform.storage import mib, state_error
from fnpack.platform.workers import Scaling, VersionPool, WorkerPool, log_line
from fnpack.platform.zygote import dependency_key
from fnpack.spec import parse_spec
from fnpack.targets.history import ANY, Expect
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version, WeightedRouter


@dataclass(frozen=True)
class Route:
    """Where one request goes: a version's pool, and the alias it came through (for metrics)."""

    pool: VersionPool
    alias: str


class LocalPlatform:
    def __init__(self, state_dir: Path, run_dir: Path, isolation: Isolation | None = None,
                 memory: MemoryLimits | None = None) -> None:
        self.state_dir = state_dir
        self.registry = Registry(state_dir)
        self.unpacked = state_dir / "unpacked"
        self.incoming = state_dir / "incoming"
        self.logs = state_dir / "logs"
        for folder in (self.unpacked, self.incoming, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.isolation = isolation or Isolation(run_dir, separate_users=False)
        if self.isolation.separate_users:
            self._close_state_folder()
        self.metrics = GatewayMetrics()
        self.workers = WorkerPool(run_dir, self.logs, on_start=self._worker_started, on_change=self._workers_changed,
                                  memory=memory, prepare=self._prepare)
        self._trusted: dict[Path, asyncio.Future[None]] = {}  # trees verified and locked by this process
        self._verified: set[Path] = set()  # with users of their own: trees this process unpacked or checked
        self._routers: dict[tuple[str, str], WeightedRouter] = {}
        self._moves = asyncio.Lock()  # alias moves apply to the cache in commit order
        self._deploys = threading.Lock()  # one at a time: a failed deploy then removes only what it made
        self._targets: dict[str, str] = {}  # archive sha256 -> the target it was built for

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweep()
        self.workers.start_reaper()
        loop = asyncio.get_running_loop()
        for name in self.registry.functions():
            try:
                self._apply_min(name)
            except FnpackError as exc:  # e.g. an archive missing from the store: say so, serve the rest
                log_line(self.workers.log_path(name), f"{name}: cannot keep workers warm: {exc.message}")
            for number in {n for state in self.registry.aliases(name).values() for n in state.versions}:
                loop.create_task(self._prewarm(name, number))  # a restart keeps first requests fast

    async def stop(self) -> None:
        await self.workers.close()

    def _sweep(self) -> None:
        """Remove what a crash left: uploads cut short, partial copies into the store, and unpacked
        trees no version uses (half-unpacked `.<sha>.*.part` ones, those of refused or deleted deploys)."""
        for leftover in [*self.incoming.iterdir(), *self.registry.store.glob(".incoming-*")]:
            leftover.unlink(missing_ok=True)
        used = self.registry.archives()
        for tree in self.unpacked.iterdir():
            if tree.name in used:
                continue
            remove_tree(tree)  # locked or not; best effort: never a reason not to start

    # --- control -------------------------------------------------------------------------------

    async def deploy(self, name: str, upload: Path, actor: str) -> tuple[Version, bool]:
        """Verify and unpack an uploaded archive, then register it (the same bytes: the same version)."""
        try:
            version, created = await asyncio.to_thread(self._deploy, name, upload, actor)
        finally:
            upload.unlink(missing_ok=True)
        # Start its launcher now, so that the first request does not wait for the imports.
        asyncio.get_running_loop().create_task(self._prewarm(name, version.number))
        return version, created

    def _deploy(self, name: str, upload: Path, actor: str) -> tuple[Version, bool]:
        # Opened, and so hashed, once: the unpack and the store take this hash (the upload is the platform's file).
        with open_archive(upload) as reader:  # the zip's own checks; the files are verified when unpacked
            sha256, manifest = reader.sha256, reader.manifest()
            if manifest is None:
                raise ArchiveError("the archive has no fnpack manifest (fnpack.json)",
                                   hint="deploy archives built by `fnpack build --target local`")
            self._check_manifest(name, manifest)  # before unpacking: a refused archive writes nothing
            unpacked = sum(int(f.get("size", 0)) for f in manifest.get("files", {}).values())
            needed = f"this archive needs {mib(upload.stat().st_size)} to store and up to {mib(unpacked)} unpacked"
            with self._deploys:
                fresh = not unpacked_path(sha256, self.unpacked).is_dir()
                try:
                    self._unpack(reader, sha256, self._newest_trees(name))  # verifies every file
                    return self.registry.deploy(upload, name, manifest["spec"], actor, handed_over=sha256)
                except BaseException as exc:
                    if fresh:  # no version has it yet (an existing tree may serve one): take it back
                        self._remove_tree(unpacked_path(sha256, self.unpacked))
                    error = state_error(exc, self.state_dir, needed)
                    if error is None or error is exc:
                        raise
                    raise error from exc

    def _newest_trees(self, name: str, count: int = 3) -> list[tuple[Path, Path]]:
        """The unpacked trees of a function's newest versions, with their archives: what a new version most likely
        shares with them (its dependencies, its model). Only the function's own: another's files are never
        linked into it. With users of their own, only trees this process verified: a tree an earlier run left
        (perhaps one without root, whose user could still write it) is verified at its first start first."""
        try:
            versions = self.registry.versions(name)
        except NotFoundError:
            return []
        pairs = ((unpacked_path(v.sha256, self.unpacked), self.registry.archive_path(v.sha256))
                 for v in reversed(versions))
        usable = ((tree, archive) for tree, archive in pairs if tree.is_dir() and archive.is_file()
                  and (tree in self._verified or not self.isolation.separate_users))
        return list(itertools.islice(usable, count))

    @staticmethod
    def _check_manifest(name: str, manifest: dict[str, Any]) -> None:
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        problem = None
        if manifest.get("name") != name:
            problem = f"the archive is function {manifest.get('name')!r}, not {name!r}"
        elif manifest.get("python") != running:
            problem = f"the archive is built for Python {manifest.get('python')}; this platform runs Python {running}"
        elif manifest.get("arch") != host.machine().replace("aarch64", "arm64"):
            problem = f"the archive is built for {manifest.get('arch')}; this machine is {host.machine()}"
        elif _platform_of(manifest.get("target")) != _platform_of("local"):
            problem = (f"the archive is built for the {manifest.get('target')} target, whose packages are for "
                       "another platform: the local platform runs archives built for local, knative or openfaas")
        if problem:
            raise ArchiveError(problem, hint="build it for this machine with `fnpack build --target local`")
        try:  # the platform reads scaling, resources and batching from it: never trust a crafted one
            parse_spec(manifest["spec"], source=f"the spec in the archive's {MANIFEST_NAME}")
        except SpecError as exc:
            one_line = exc.message.replace(":\n  - ", ": ").replace("\n  - ", "; ")
            raise ArchiveError(one_line[:2000], hint="rebuild the archive with `fnpack build`") from None

    def archive_target(self, sha256: str) -> str:
        """The target an archive was built for, from its unpacked manifest ("" when unreadable)."""
        if sha256 not in self._targets:
            try:
                manifest = json.loads((unpacked_path(sha256, self.unpacked) / MANIFEST_NAME).read_text("utf-8"))
                self._targets[sha256] = str(manifest.get("target") or "")
            except (OSError, ValueError):
                return ""
        return self._targets[sha256]

    def describe(self, name: str) -> dict[str, Any]:
        """What runs for a function now: each version's workers (pid, requests in flight, idle time),
        starts under way, the last start failure, and the platform's recent error events from its log."""
        now = time.monotonic()
        versions = []
        for (function, number), pool in sorted(self.workers.pools.items()):
            if function != name:
                continue
            failure = pool.failure[0].message if pool.failure else None
            versions.append({"version": number, "starting": pool.starting, "min_warm": pool.min_warm,
                             "max": pool.scaling.max, "last_start_error": failure,
                             "workers": [{"pid": w.pid, "in_flight": w.in_flight, "state": "busy" if w.in_flight
                                          else "idle", "idle_seconds": round(now - w.last_used, 1)}
                                         for w in pool.workers]})
        return {"function": name, "instances": versions, "recent_errors": _recent_errors(
            self.workers.log_path(name))}

    def _close_state_folder(self) -> None:
        """Functions' users may traverse the state folder to their own trees, and reach nothing else
        in it, whatever modes an earlier run (or a person) left: trees open again once verified."""
        for folder in (self.state_dir, self.unpacked):
            folder.chmod(0o711)
        for folder in (self.registry.store, self.logs, self.incoming):
            folder.chmod(0o700)
        for path in self.state_dir.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o600)
        for tree in self.unpacked.iterdir():
            if tree.is_dir() and not tree.is_symlink():
                tree.chmod(0o700)

    def _unpack(self, archive: Path | SafeArchive, sha256: str, reuse: list[tuple[Path, Path]] | None = None
                ) -> Path:
        fresh = not unpacked_path(sha256, self.unpacked).is_dir()
        separate = self.isolation.separate_users
        # With users of their own, no function can change a tree (root's, read-only to them): one this process
        # verified is linked from without hashing its files again.
        # Its folder is root's alone (0700) from the moment it has its name until `_trust` opens it to its group.
        sealed = {tree for tree, _ in reuse or () if tree in self._verified} if separate else set()
        root = unpack_archive(archive, sha256, self.unpacked, reuse or (), sealed,  # an existing tree: as it is
                              mode=0o700 if separate else 0o755)
        if fresh and separate:  # without, every function can write every tree: it is verified at its first start
            self._verified.add(root)
        return root

    def _remove_tree(self, root: Path) -> None:
        self._verified.discard(root)
        remove_tree(root)

    async def _prewarm(self, name: str, number: int) -> None:
        try:
            pool = self.pool(name, number)
            await self._prepare(pool)
            await self.workers.zygote(pool)
        except Exception:  # noqa: BLE001 - a prewarm failure shows again, with its reason, at the first request
            pass

    async def _prepare(self, pool: VersionPool) -> None:
        """Before anything imports from a version's tree: verified once per process, then locked."""
        future = self._trusted.get(pool.root)
        if future is None or (future.done() and future.exception()):
            future = self._trusted[pool.root] = asyncio.ensure_future(asyncio.to_thread(self._trust, pool))
        await asyncio.shield(future)

    def _trust(self, pool: VersionPool) -> None:
        root, sha256 = pool.root, pool.root.name
        archive = self.registry.archive_path(sha256)
        if not archive.is_file():
            raise StartError(f"the archive of {pool.label} is missing from {self.registry.store}, so its unpacked "
                             "code cannot be verified", hint="deploy it again")
        # A tree this process unpacked with users of their own was verified file by file as it was written, and
        # no function can have changed it since: hashing it all again would only delay the first start.
        problems = [] if root in self._verified else verify_unpacked(root, archive, sha256)
        if problems:  # changed since it was unpacked: never import it, unpack the archive again
            log_line(pool.log, f"{pool.label}: its unpacked code changed on disk ({'; '.join(problems[:3])}); "
                               "unpacking it again from the archive")
            self._remove_tree(root)
            if os.path.lexists(root):  # unpacking "again" would give back the changed tree as it is
                raise StartError(f"the unpacked code of {pool.label} changed on disk and {root} cannot be removed",
                                 hint="check the state folder's permissions and free space, then restart fnpack serve")
            self._unpack(archive, sha256)
        self.isolation.lock_tree(root, pool.principal)
        if self.isolation.separate_users:
            self._verified.add(root)

    async def set_alias(self, name: str, alias: str, state: AliasState, actor: str, reason: str | None,
                        expect: AliasState | None | Expect = ANY) -> AliasMove:
        async with self._moves:
            move = await asyncio.to_thread(self.registry.set_alias, name, alias, state, actor, reason, expect)
            self._routers[(name, alias)] = WeightedRouter(move.after)
        self._apply_min(name)
        return move

    async def rollback(self, name: str, alias: str, actor: str, reason: str | None) -> AliasMove:
        async with self._moves:
            move = await asyncio.to_thread(self.registry.rollback, name, alias, actor, reason)
            self._routers[(name, alias)] = WeightedRouter(move.after)
        self._apply_min(name)
        return move

    async def delete(self, name: str, number: int | None) -> list[Version]:
        async with self._moves:
            deleted = await asyncio.to_thread(self.registry.delete, name, number)
            if number is None:
                for key in [k for k in self._routers if k[0] == name]:
                    del self._routers[key]
        self.workers.remove(name, number)
        self.metrics.forget(name)
        return deleted

    def _apply_min(self, name: str) -> None:
        """Keep `scaling.min` workers for the versions an alias sends traffic to; none for the others."""
        used = {n for state in self.registry.aliases(name).values() for n in state.versions}
        for number in used:
            pool = self.pool(name, number)
            pool.min_warm = pool.scaling.min
            pool.ensure_min()
        for (function, number), pool in self.workers.pools.items():
            if function == name and number not in used:
                pool.min_warm = 0

    # --- routing -------------------------------------------------------------------------------

    def route(self, qualifier: Qualifier) -> Route:
        if qualifier.version is not None:
            return Route(self.pool(qualifier.name, qualifier.version), "")
        alias = qualifier.alias or DEFAULT_ALIAS
        router = self._routers.get((qualifier.name, alias))
        if router is None:
            router = self._routers[(qualifier.name, alias)] = WeightedRouter(self.registry.resolve(
                Qualifier(qualifier.name, alias=alias)))
        return Route(self.pool(qualifier.name, router.pick()), alias)

    def pool(self, name: str, number: int) -> VersionPool:
        pool = self.workers.pools.get((name, number))
        if pool is not None:
            return pool
        version = self.registry.version(name, number)  # NotFoundError for unknown ones
        root = self.unpacked / version.sha256
        if not (root / "fnpack.json").is_file():  # e.g. a state folder restored without its cache
            archive = self.registry.archive_path(version.sha256)
            if not archive.is_file():
                raise NotFoundError(f"the archive of {name} v{number} is missing from {self.registry.store}",
                                    hint="deploy it again")
            self._remove_tree(root)
            try:
                root = self._unpack(archive, version.sha256)
            except OutputError as exc:  # a full or read-only state folder: 507 / 503, not 500
                error = state_error(exc, self.state_dir)
                if error is None:
                    raise
                raise error from exc
        manifest = json.loads((root / "fnpack.json").read_text(encoding="utf-8"))
        principal = self.isolation.principal(name)
        return self.workers.pool(name, number, root, dependency_key(manifest),
                                 Scaling.from_spec(self.registry.spec(name, number)), principal,
                                 self.isolation.function_dir(name, principal))

    # --- metrics -------------------------------------------------------------------------------

    def _worker_started(self, pool: VersionPool, seconds: float, reason: str) -> None:
        labels = (pool.function, str(pool.number))
        self.metrics.worker_starts.labels(*labels, reason).inc()
        self.metrics.start_seconds.labels(*labels).observe(seconds)
        if reason == "cold start":
            self.metrics.cold_starts.labels(*labels).inc()

    def _workers_changed(self, pool: VersionPool) -> None:
        self.metrics.workers.labels(pool.function, str(pool.number)).set(len(pool.workers))


_ERROR_WORDS = ("error", "failed", "exited", "killed", "memory", "timed out", "retir", "cannot")


def _recent_errors(log: Path, keep: int = 10, scan: int = 256 * 1024) -> list[str]:
    """The last platform events of a function's log that report a problem (from its last `scan` bytes)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - scan))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    found = [line for line in lines if " [platform] " in line and any(w in line.lower() for w in _ERROR_WORDS)]
    return found[-keep:]


def _platform_of(target: Any) -> str | None:
    """The platform a target's archives are built for (aws-lambda, container); None for an unknown one."""
    from fnpack.targets.catalog import CATALOG

    return next((info.platform for info in CATALOG if info.name == target), None)
