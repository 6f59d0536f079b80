"""`resources.memory`, enforced per worker.

- With a memory cgroup the platform can create (cgroup v2 with the memory controller delegated,
  or cgroup v1's memory hierarchy; both need root), each worker gets its own, limited to
  `resources.memory`: the kernel stops a worker that goes over it. The worker is put in its cgroup
  right after fork, before it loads anything (it waits, stopped, until then), so what it shares
  with its zygote is not counted and everything it allocates is.
- Otherwise a watchdog in the gateway reads each worker's private memory (pages no other process
  maps: what it allocated itself) every quarter second and stops a worker that is over the limit.
  It is coarser: a worker can overshoot for that long.
Either way the worker is replaced, and the request it held gets a 5xx that names the limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


class CgroupLimits:
    """One memory cgroup per worker, under a folder of this platform's."""

    def __init__(self, base: Path, version: int) -> None:
        self.base = base
        self.version = version
        self.kind = f"cgroup v{version}"

    @classmethod
    def create(cls) -> CgroupLimits | None:
        """A cgroup folder of this platform's with a working memory limit, or None where there is none."""
        for version, parent in _own_cgroups():
            _remove_stale(parent)
            base = parent / f"fnpack-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                if version == 2:
                    (base / "cgroup.subtree_control").write_text("+memory")
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                limits = cls(base, version)
                limits._limit(probe, 256 << 20)
                probe.rmdir()
                return limits
            except OSError:
                with contextlib.suppress(OSError):
                    (base / "probe").rmdir()
                    base.rmdir()
        return None

    def attach(self, name: str, pid: int, limit: int) -> Path:
        group = self.base / name
        group.mkdir(exist_ok=True)
        self._limit(group, limit)
        (group / "cgroup.procs").write_text(str(pid))
        return group

    def _limit(self, group: Path, limit: int) -> None:
        if self.version == 2:
            (group / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")  # over the limit means stopped, not swapped
        else:
            (group / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit))

    def exceeded(self, group: Path | None) -> bool:
        """Whether the kernel stopped a process of this group for memory."""
        if group is None:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def remove(self, group: Path | None) -> None:
        if group is not None:
            _empty(group)
            with contextlib.suppress(OSError):
                group.rmdir()

    def close(self) -> None:
        for group in self.base.glob("*/"):
            self.remove(group)
        with contextlib.suppress(OSError):
            self.base.rmdir()


class MemoryLimits:
    """The gateway's one place for memory limits: a cgroup per worker where it can, else the watchdog."""

    def __init__(self, cgroups: CgroupLimits | None) -> None:
        self.cgroups = cgroups
        self.kind = cgroups.kind if cgroups else "watchdog (private memory read every 0.25 s)"

    @classmethod
    def detect(cls) -> MemoryLimits:
        return cls(CgroupLimits.create() if os.geteuid() == 0 else None)

    @property
    def hold_at_fork(self) -> bool:
        """Workers wait, stopped, after fork until `attach` has put them in their cgroup."""
        return self.cgroups is not None

    def attach(self, name: str, pid: int, limit: int) -> Path | None:
        """Put a stopped, freshly forked worker under its limit, then let it go on."""
        group = None
        try:
            if self.cgroups:
                group = self.cgroups.attach(name, pid, limit)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return group

    def exceeded(self, pid: int, group: Path | None, limit: int) -> bool:
        """Whether the worker is (or was stopped for being) over its limit."""
        if self.cgroups:
            return self.cgroups.exceeded(group)
        return private_memory(pid) > limit

    def release(self, group: Path | None) -> None:
        if self.cgroups:
            self.cgroups.remove(group)

    def close(self) -> None:
        if self.cgroups:
            self.cgroups.close()


def private_memory(pid: int) -> int:
    """Bytes of memory only this process maps (Private_Clean + Private_Dirty); 0 if it is gone."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _own_cgroups() -> list[tuple[int, Path]]:
    """The memory cgroups this process is in, v2 first: (version, folder)."""
    found: list[tuple[int, Path]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "" and "memory" in _read(CGROUP_FS / "cgroup.controllers").split():
            found.insert(0, (2, CGROUP_FS / relative))
        elif "memory" in controllers.split(","):
            found.append((1, CGROUP_FS / "memory" / relative))
    return found


def _remove_stale(parent: Path) -> None:
    """The cgroups of platforms that ended without removing theirs (killed): their processes are gone."""
    for base in parent.glob("fnpack-*"):
        pid = base.name.removeprefix("fnpack-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for group in base.glob("*/"):
                _empty(group)
                with contextlib.suppress(OSError):
                    group.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def _empty(group: Path) -> None:
    """Stop what is left in a worker's cgroup: processes its code started outlive it, and hold the group."""
    for pid in _read(group / "cgroup.procs").split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
