"""The local platform's behaviour behind the HTTP layer: deploys, alias moves, routing, workers.

One `fnpack serve` owns a state folder (a lock file makes sure of it), so the caches
here are the truth: an alias move updates the cache before it is acknowledged, and
every request resolved after that sees it. A request resolves its version once, at
arrival, and finishes on it even if the alias moves meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import platform as host
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fnpack.errors import ArchiveError, FnpackError, NotFoundError
from fnpack.fetch import unpack_archive
from fnpack.platform.metrics import GatewayMetrics
from fnpack.platform.registry import Registry
from fnpack.platform.workers import Scaling, VersionPool, WorkerPool, log_line
from fnpack.platform.zygote import dependency_key
from fnpack.versions import DEFAULT_ALIAS, AliasMove, AliasState, Qualifier, Version, WeightedRouter


@dataclass(frozen=True)
class Route:
    """Where one request goes: a version's pool, and the alias it came through (for metrics)."""

    pool: VersionPool
    alias: str


class LocalPlatform:
    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir = state_dir
        self.registry = Registry(state_dir)
        self.unpacked = state_dir / "unpacked"
        self.incoming = state_dir / "incoming"
        self.logs = state_dir / "logs"
        for folder in (self.unpacked, self.incoming, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.metrics = GatewayMetrics()
        self.workers = WorkerPool(run_dir, self.logs, on_start=self._worker_started, on_change=self._workers_changed)
        self._routers: dict[tuple[str, str], WeightedRouter] = {}
        self._moves = asyncio.Lock()  # alias moves apply to the cache in commit order

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for leftover in self.incoming.iterdir():  # uploads cut short by a crash
            leftover.unlink(missing_ok=True)
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
        from fnpack.archive import sha256_file

        sha256 = sha256_file(upload)
        root = unpack_archive(upload, sha256, self.unpacked)  # verifies every file against the manifest
        manifest = json.loads((root / "fnpack.json").read_text(encoding="utf-8"))
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        problem = None
        if manifest.get("name") != name:
            problem = f"the archive is function {manifest.get('name')!r}, not {name!r}"
        elif manifest.get("python") != running:
            problem = f"the archive is built for Python {manifest.get('python')}; this platform runs Python {running}"
        elif manifest.get("arch") != host.machine().replace("aarch64", "arm64"):
            problem = f"the archive is built for {manifest.get('arch')}; this machine is {host.machine()}"
        if problem:
            raise ArchiveError(problem, hint="build it for this machine with `fnpack build --target local`")
        return self.registry.deploy(upload, name, manifest["spec"], actor)

    async def _prewarm(self, name: str, number: int) -> None:
        try:
            pool = self.pool(name, number)
            await self.workers.zygote(pool.key, pool.root)
        except Exception:  # noqa: BLE001 - a prewarm failure shows again, with its reason, at the first request
            pass

    async def set_alias(self, name: str, alias: str, state: AliasState, actor: str,
                        reason: str | None) -> AliasMove:
        async with self._moves:
            move = await asyncio.to_thread(self.registry.set_alias, name, alias, state, actor, reason)
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
            shutil.rmtree(root, ignore_errors=True)
            root = unpack_archive(archive, version.sha256, self.unpacked)
        manifest = json.loads((root / "fnpack.json").read_text(encoding="utf-8"))
        return self.workers.pool(name, number, root, dependency_key(manifest),
                                 Scaling.from_spec(self.registry.spec(name, number)))

    # --- metrics -------------------------------------------------------------------------------

    def _worker_started(self, pool: VersionPool, seconds: float, reason: str) -> None:
        labels = (pool.function, str(pool.number))
        self.metrics.worker_starts.labels(*labels, reason).inc()
        self.metrics.start_seconds.labels(*labels).observe(seconds)
        if reason == "cold start":
            self.metrics.cold_starts.labels(*labels).inc()

    def _workers_changed(self, pool: VersionPool) -> None:
        self.metrics.workers.labels(pool.function, str(pool.number)).set(len(pool.workers))
