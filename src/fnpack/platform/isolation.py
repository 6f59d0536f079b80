"""What keeps a function from reaching another function, or the platform (README: "Security model").

- Users: when the platform runs as root, each function runs as a Unix user of its own (uid = gid =
  FIRST_ID + a number allocated once per state folder and function in a machine-wide table,
  IDS_DB, and never reused: two platforms on one machine never share a user), with no
  supplementary groups and `no_new_privs`. Everything that imports a function's code (its zygote
  and its workers) runs as that user, so a function never runs code of another one.
- Files: the state folder's token, registry, archives and logs are the platform's (0600/0700);
  a function's unpacked trees are owned by root and readable by its group only, writable by nobody.
  A tree found on disk at start is verified against its archive's manifest before anything imports
  from it (a function of an earlier run could have changed it, were the platform not root).
- Environment: workers get an allowlist of the platform's variables (no tokens, no cloud
  credentials), plus the names listed in FNPACK_WORKER_ENV; HOME, TMPDIR and the working directory
  are a folder of their own, removed when they exit.
Without root none of the per-user parts can be given: `limitations()` says which, and `fnpack serve`
prints them at start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FIRST_ID = 2_000_000_000  # far above the users a system or a user namespace hands out
IDS_DB = Path(os.environ.get("FNPACK_IDS_DB", "/var/lib/fnpack/ids.db"))
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "SOURCE_DATE_EPOCH")
PASSED_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class Principal:
    """The Unix identity a function runs as; None: the platform's own (it is not root)."""

    uid: int | None = None
    gid: int | None = None


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a function's processes see: an allowlist, never the platform's secrets."""
    environ = dict(os.environ if environ is None else environ)
    extra = {name.strip() for name in environ.get("FNPACK_WORKER_ENV", "").split(",") if name.strip()}
    return {name: value for name, value in environ.items()
            if name in PASSED_ENV or name.startswith(PASSED_PREFIXES) or name in extra}


class Isolation:
    """The platform's side of isolation: identities, folders and file modes for each function."""

    def __init__(self, run_dir: Path, state_dir: Path | None = None, separate_users: bool | None = None) -> None:
        self.run_dir = run_dir
        self.state_dir = Path(state_dir).resolve() if state_dir is not None else None
        self.obstacle = _obstacle(state_dir) if separate_users is None else None
        self.separate_users = self.obstacle is None if separate_users is None else separate_users
        self._principals: dict[str, Principal] = {}

    def principal(self, function: str) -> Principal:
        """The identity a function runs as: its own user, the same at every start."""
        if not self.separate_users:
            return Principal()
        principal = self._principals.get(function)
        if principal is None:
            number = machine_id(str(self.state_dir), function)
            principal = self._principals[function] = Principal(FIRST_ID + number, FIRST_ID + number)
        return principal

    def function_dir(self, function: str, principal: Principal) -> Path:
        """`RUN/<function>`: its workers' sockets and working folders; only it (and root) may enter."""
        folder = self.run_dir / function
        folder.mkdir(mode=0o700, exist_ok=True)
        if principal.uid is not None:
            os.chown(folder, principal.uid, principal.gid or 0)
        return folder

    def lock_tree(self, root: Path, principal: Principal) -> None:
        """Make an unpacked tree read-only, and readable by its function's group only (root: owner)."""
        group = principal.gid
        dir_mode, file_mode = (0o550, 0o440) if group is not None else (0o555, 0o444)
        for folder, dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                if group is not None:
                    os.chown(path, 0, group, follow_symlinks=False)
                if not os.path.islink(path):  # a link's own mode means nothing (and cannot be set)
                    os.chmod(path, file_mode)
            if group is not None:
                os.chown(folder, 0, group)
            os.chmod(folder, dir_mode)

    def limitations(self) -> list[str]:
        """The guarantees this platform cannot give, in words, for the start message."""
        if self.separate_users:
            return []
        why = self.obstacle or "per-function users are off"
        power = " (root: full control of this machine)" if os.geteuid() == 0 else ""
        return [f"{why}, so every function runs as {_user_name()}, the platform's own user{power}: a function can read "
                "the control token, the registry, the archives and the unpacked code of every other function, "
                "and could change them (trees are verified against their manifest at each start, but not while "
                "serving). Workers still get a scrubbed environment and a working folder of their own. "
                + ("Fix that for per-function users." if power else
                   "Run `fnpack serve` as root for per-function users.")]


def machine_id(state_dir: str, function: str, db_path: Path | None = None) -> int:
    """A number for (state folder, function), given once on this machine and never again: AUTOINCREMENT
    in a root-only SQLite file, so that platforms sharing the machine never share a user."""
    import sqlite3

    db_path = db_path or IDS_DB
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS ids (id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL, "
                   "function TEXT NOT NULL, UNIQUE (state, function))")
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT id FROM ids WHERE state = ? AND function = ?", (state_dir, function)).fetchone()
        if row is None:  # not INSERT OR IGNORE: an ignored insert still uses up an AUTOINCREMENT id
            row = db.execute("INSERT INTO ids (state, function) VALUES (?, ?) RETURNING id",
                             (state_dir, function)).fetchone()
        db.execute("COMMIT")
        return int(row[0])
    finally:
        db.close()


def remove_tree(root: Path) -> None:
    """Remove an unpacked tree, locked or not (a locked folder's entries cannot be unlinked, but by root)."""
    if root.is_symlink() or not root.is_dir():
        with contextlib.suppress(OSError):
            root.unlink(missing_ok=True)
        return
    for folder, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def _obstacle(state_dir: Path | None) -> str | None:
    """Why functions cannot run as users of their own here, or None when they can: the platform must be
    root, and an unprivileged user must be able to run this Python and to reach the state folder."""
    if os.geteuid() != 0:
        return "the platform is not running as root"
    if state_dir is not None:
        for folder in Path(state_dir).resolve().parents:  # the state folder itself is the platform's to open
            if folder.exists() and not folder.stat().st_mode & 0o001:
                return (f"{folder} cannot be traversed by other users (chmod o+x {folder}), and the state folder "
                        "is inside it")
    try:
        done = subprocess.run([sys.executable, "-c", "import fnpack.platform.zygote"], user=FIRST_ID, group=FIRST_ID,
                              extra_groups=[], env={}, cwd="/", capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{sys.executable} cannot run as another user ({exc})"
    if done.returncode != 0:
        return f"{sys.executable} cannot run as another user: " + \
            (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1][:300]
    return None


def _user_name() -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"
