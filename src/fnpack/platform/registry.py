"""The local platform's registry: functions, versions, aliases and alias history in SQLite (WAL),
beside a content-addressed store of archives.

Crash safety: an archive is copied into the store (temp file, fsync, rename),
or an upload moved there (fsync, rename), before the row that names it is
committed, so after a crash a version is either complete or absent; an archive
without a row is never served and is reused by the next deploy of the same
bytes. Every change is one `BEGIN IMMEDIATE` transaction: concurrent deploys get distinct numbers and
alias moves are atomic. A version number is never given twice, even after its
version or its function is deleted: a number names one archive forever.
A read-only or full state folder is a StateError (503/507), not a bare SQLite error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from fnpack.archive import sha256_file
from fnpack.errors import ArchiveError, ConflictError, NotFoundError, StateError
from fnpack.platform.storage import state_error
from fnpack.targets.history import ANY, AliasRouter, Expect, HistoryStore, move_alias, rollback_alias
from fnpack.versions import AliasMove, AliasState, Qualifier, Version

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL, number INTEGER NOT NULL, sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL, actor TEXT NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (function, number), UNIQUE (function, sha256));
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL, alias TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (function, alias));
CREATE TABLE IF NOT EXISTS alias_history (
    function TEXT NOT NULL, alias TEXT NOT NULL, position INTEGER NOT NULL, move TEXT NOT NULL,
    PRIMARY KEY (function, alias, position));
-- The last version number given per function; kept when versions (or the function) are deleted.
CREATE TABLE IF NOT EXISTS counters (function TEXT PRIMARY KEY, last INTEGER NOT NULL);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state(text: str | None) -> AliasState | None:
    return AliasState(**json.loads(text)) if text else None


def _move(text: str) -> AliasMove:
    data = json.loads(text)
    before = AliasState(**data["before"]) if data["before"] else None
    return AliasMove(**{**data, "before": before, "after": AliasState(**data["after"])})


class Registry:
    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.store = self.state_dir / "archives"
        self.store.mkdir(parents=True, exist_ok=True)
        self.db_path = self.state_dir / "registry.db"
        try:
            db = sqlite3.connect(self.db_path, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection uses it
                db.executescript(SCHEMA)
            finally:
                db.close()
        except sqlite3.Error as exc:
            self._raise_state_error(exc)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # One connection per transaction: safe across threads and processes, and WAL lets
        # readers go on while one writer holds the lock.
        try:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA synchronous=FULL")  # a committed deploy survives a power cut
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                        db.execute("ROLLBACK")
                    raise
            finally:
                db.close()
        except sqlite3.Error as exc:
            self._raise_state_error(exc)

    def _raise_state_error(self, exc: sqlite3.Error) -> NoReturn:
        error = state_error(exc, self.state_dir)
        if error is None:
            raise exc
        raise error from exc

    # --- archives and versions -----------------------------------------------------------------

    def archive_path(self, sha256: str) -> Path:
        return self.store / f"{sha256}.zip"

    def deploy(self, archive: Path, name: str, spec: dict, actor: str, *, handed_over: str | None = None
               ) -> tuple[Version, bool]:
        """Store the archive and bind it to a new version; the same archive again gives the existing one.

        `handed_over` is the sha256 of an archive that is the platform's own file (an upload it wrote
        and hashed, in the state folder): it is moved into the store, not copied and hashed again."""
        sha256 = self._store_archive(archive) if handed_over is None else self._move_archive(archive, handed_over)
        try:
            with self._transaction() as db:
                row = db.execute("SELECT number FROM versions WHERE function = ? AND sha256 = ?",
                                 (name, sha256)).fetchone()
                if row:
                    return self._version(db, name, row[0]), False
                # A registry from before the counters starts from its highest number.
                db.execute("INSERT OR IGNORE INTO counters SELECT ?, COALESCE(MAX(number), 0) FROM versions "
                           "WHERE function = ?", (name, name))
                number = db.execute("UPDATE counters SET last = last + 1 WHERE function = ? RETURNING last",
                                    (name,)).fetchone()[0]
                db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                           (name, number, sha256, _now(), actor, json.dumps(spec, sort_keys=True)))
                return self._version(db, name, number), True
        except Exception:
            self.drop_unused(sha256)  # a full disk wants its space back; no archive is kept without its row
            raise

    def drop_unused(self, sha256: str) -> None:
        """Delete a stored archive that no version names (best effort: the registry may be unreadable)."""
        try:
            with self._transaction() as db:
                if db.execute("SELECT 1 FROM versions WHERE sha256 = ?", (sha256,)).fetchone():
                    return
        except StateError:
            return
        self.archive_path(sha256).unlink(missing_ok=True)

    def _store_archive(self, archive: Path) -> str:
        sha256 = sha256_file(archive)
        if self._stored_intact(sha256):
            return sha256
        target = self.archive_path(sha256)
        with tempfile.NamedTemporaryFile(dir=self.store, prefix=".incoming-", delete=False) as tmp:
            try:
                with open(archive, "rb") as source:
                    shutil.copyfileobj(source, tmp, 1 << 20)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:  # a full disk: leave no partial copy behind
                os.unlink(tmp.name)
                raise
        if sha256_file(Path(tmp.name)) != sha256:  # the source changed while we copied it
            os.unlink(tmp.name)
            raise ArchiveError(f"{archive} changed while it was being stored", hint="deploy it again")
        os.replace(tmp.name, target)
        _fsync_folder(self.store)
        return sha256

    def _stored_intact(self, sha256: str) -> bool:
        """The store holds these bytes already (a damaged copy is replaced by the one coming in)."""
        target = self.archive_path(sha256)
        return target.is_file() and sha256_file(target) == sha256

    def _move_archive(self, archive: Path, sha256: str) -> str:
        if self._stored_intact(sha256):
            return sha256
        target = self.archive_path(sha256)
        with open(archive, "rb") as written:
            os.fsync(written.fileno())  # on disk before its name is: a crash never leaves a short archive stored
        try:
            os.replace(archive, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # the store is on another file system: copy it there
                raise
            stored = self._store_archive(archive)
            if stored != sha256:
                self.drop_unused(stored)
                raise ArchiveError(f"{archive} changed while it was being stored", hint="deploy it again") from None
            return sha256
        _fsync_folder(self.store)  # the name itself, before the row that needs it commits
        return sha256

    def archives(self) -> set[str]:
        """The sha256 of every version's archive."""
        with self._transaction() as db:
            return {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM versions")}

    def functions(self) -> list[str]:
        with self._transaction() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT function FROM versions ORDER BY function")]

    def versions(self, name: str) -> list[Version]:
        with self._transaction() as db:
            rows = db.execute("SELECT number FROM versions WHERE function = ? ORDER BY number", (name,)).fetchall()
            if not rows:
                raise self._unknown_function(name)
            return [self._version(db, name, r[0]) for r in rows]

    def version(self, name: str, number: int) -> Version:
        with self._transaction() as db:
            return self._version(db, name, number)

    def spec(self, name: str, number: int) -> dict:
        with self._transaction() as db:
            self._version(db, name, number)
            row = db.execute("SELECT spec FROM versions WHERE function = ? AND number = ?", (name, number)).fetchone()
            return json.loads(row[0])

    def _version(self, db: sqlite3.Connection, name: str, number: int) -> Version:
        row = db.execute("SELECT function, number, sha256, created_at, actor FROM versions "
                         "WHERE function = ? AND number = ?", (name, number)).fetchone()
        if row is None:
            if not db.execute("SELECT 1 FROM versions WHERE function = ?", (name,)).fetchone():
                raise self._unknown_function(name)
            raise NotFoundError(f"{name} has no version {number}", hint=f"`fnpack versions {name}` lists them")
        return Version(*row)

    def _unknown_function(self, name: str) -> NotFoundError:
        return NotFoundError(f"no function named {name!r}", hint="`fnpack ls` lists the deployed functions")

    def delete(self, name: str, number: int | None = None) -> list[Version]:
        """Delete a version, or the whole function with its aliases; never a version an alias uses."""
        with self._transaction() as db:
            doomed = ([self._version(db, name, number)] if number is not None else
                      [self._version(db, name, r[0]) for r in db.execute(
                          "SELECT number FROM versions WHERE function = ?", (name,))])
            if not doomed:
                raise self._unknown_function(name)
            if number is not None:
                users = [alias for alias, state in self._aliases(db, name).items() if number in state.versions]
                if users:
                    raise ConflictError(f"{name} version {number} is in use by alias {', '.join(sorted(users))}",
                                        hint=f"move the alias first (`fnpack alias set {name} {users[0]} VERSION`)")
                db.execute("DELETE FROM versions WHERE function = ? AND number = ?", (name, number))
            else:
                for table in ("versions", "aliases", "alias_history"):
                    db.execute(f"DELETE FROM {table} WHERE function = ?", (name,))
            still_used = {r[0] for r in db.execute("SELECT sha256 FROM versions")}
        for version in doomed:  # after the commit: a crash in between leaves only an unused file
            if version.sha256 not in still_used:
                self.archive_path(version.sha256).unlink(missing_ok=True)
        return doomed

    # --- aliases -------------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, AliasState]:
        with self._transaction() as db:
            self._versions_exist(db, name)
            return self._aliases(db, name)

    def _aliases(self, db: sqlite3.Connection, name: str) -> dict[str, AliasState]:
        return {alias: AliasState(**json.loads(state)) for alias, state in db.execute(
            "SELECT alias, state FROM aliases WHERE function = ? ORDER BY alias", (name,))}

    def _versions_exist(self, db: sqlite3.Connection, name: str, *numbers: int) -> None:
        """The function exists, and so does each version named."""
        if not db.execute("SELECT 1 FROM versions WHERE function = ?", (name,)).fetchone():
            raise self._unknown_function(name)
        for number in numbers:
            self._version(db, name, number)

    def resolve(self, qualifier: Qualifier, default_alias: str = "live") -> AliasState:
        """The versions a qualifier sends traffic to: a pinned version, or an alias's state."""
        with self._transaction() as db:
            if qualifier.version is not None:
                return AliasState(self._version(db, qualifier.name, qualifier.version).number)
            alias = qualifier.alias or default_alias
            row = db.execute("SELECT state FROM aliases WHERE function = ? AND alias = ?",
                             (qualifier.name, alias)).fetchone()
            if row is None:
                self._versions_exist(db, qualifier.name)
                raise NotFoundError(f"{qualifier.name} has no alias {alias!r}",
                                    hint=f"`fnpack alias list {qualifier.name}` lists them")
            return AliasState(**json.loads(row[0]))

    def set_alias(self, name: str, alias: str, state: AliasState, actor: str, reason: str | None = None,
                  expect: AliasState | None | Expect = ANY) -> AliasMove:
        with self._transaction() as db:
            self._versions_exist(db, name)
            return move_alias(*_moves(db), name, alias, state, versions=self._numbers(db, name), actor=actor,
                              reason=reason, expect=expect, at=_now())

    def rollback(self, name: str, alias: str, actor: str, reason: str | None = None) -> AliasMove:
        with self._transaction() as db:
            self._versions_exist(db, name)
            return rollback_alias(*_moves(db), name, alias, versions=self._numbers(db, name), actor=actor,
                                  reason=reason or "rollback", at=_now())

    def _numbers(self, db: sqlite3.Connection, name: str) -> list[int]:
        return [row[0] for row in db.execute("SELECT number FROM versions WHERE function = ?", (name,))]

    def history(self, name: str, alias: str) -> list[AliasMove]:
        """Every move of an alias; an alias never set is unknown, as it is to a rollback."""
        with self._transaction() as db:
            history = self._history(db, name, alias)
            if not history:
                self._versions_exist(db, name)
                raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"`fnpack alias list {name}` lists them")
            return history

    def _history(self, db: sqlite3.Connection, name: str, alias: str) -> list[AliasMove]:
        return _Aliases(db).read(name, alias)[0]


class _Aliases(HistoryStore, AliasRouter):
    """The history and the aliases tables inside one registry transaction, for the alias-move protocol of
    `targets.history`. The transaction (BEGIN IMMEDIATE) is the compare-and-swap: nothing else writes
    between the read and the write, so the history's token is only how many moves were read."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def read(self, function: str, alias: str) -> tuple[list[AliasMove], int]:
        moves = [_move(r[0]) for r in self.db.execute(
            "SELECT move FROM alias_history WHERE function = ? AND alias = ? ORDER BY position", (function, alias))]
        return moves, len(moves)

    def write(self, function: str, alias: str, moves: list[AliasMove], token: int) -> int:
        kept = min(token, len(moves))  # the moves read are unchanged: only what follows them is written
        self.db.execute("DELETE FROM alias_history WHERE function = ? AND alias = ? AND position >= ?",
                        (function, alias, kept))
        self.db.executemany("INSERT INTO alias_history VALUES (?, ?, ?, ?)",
                            [(function, alias, i, json.dumps(asdict(m))) for i, m in enumerate(moves) if i >= kept])
        return len(moves)

    def current(self, function: str, alias: str) -> tuple[AliasState | None, None]:
        row = self.db.execute("SELECT state FROM aliases WHERE function = ? AND alias = ?",
                              (function, alias)).fetchone()
        return _state(row[0] if row else None), None

    def apply(self, function: str, alias: str, state: AliasState, revision: None) -> None:
        self.db.execute("INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT (function, alias) DO UPDATE SET state = "
                        "excluded.state", (function, alias, json.dumps(asdict(state))))


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _moves(db: sqlite3.Connection) -> tuple[_Aliases, _Aliases]:
    aliases = _Aliases(db)
    return aliases, aliases
