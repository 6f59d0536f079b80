"""The local platform's registry: persistence, numbering, concurrency, crash safety, aliases."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from fnpack.errors import ArchiveError, ConflictError, NotFoundError
from fnpack.platform.registry import Registry
from fnpack.versions import AliasError, AliasState, Qualifier


def archive(tmp_path: Path, content: str) -> Path:
    path = tmp_path / f"{abs(hash(content))}.zip"
    path.write_text(content)
    return path


def test_versions_are_numbered_per_function_and_survive_a_restart(tmp_path):
    state = tmp_path / "state"
    registry = Registry(state)
    v1, created = registry.deploy(archive(tmp_path, "a"), "iris", {"name": "iris"}, "ana")
    v2, _ = registry.deploy(archive(tmp_path, "b"), "iris", {"name": "iris"}, "ana")
    other, _ = registry.deploy(archive(tmp_path, "a"), "digits", {"name": "digits"}, "ana")
    assert (v1.number, v2.number, other.number, created) == (1, 2, 1, True)
    registry.set_alias("iris", "live", AliasState(2), "ana")

    restarted = Registry(state)
    assert restarted.functions() == ["digits", "iris"]
    assert [v.number for v in restarted.versions("iris")] == [1, 2]
    assert restarted.resolve(Qualifier.parse("iris")) == AliasState(2)
    assert restarted.archive_path(v1.sha256).read_text() == "a"
    assert restarted.spec("iris", 1) == {"name": "iris"}


def test_the_same_archive_twice_is_the_same_version(tmp_path):
    registry = Registry(tmp_path / "state")
    first, created = registry.deploy(archive(tmp_path, "same"), "iris", {}, "ana")
    again, created_again = registry.deploy(archive(tmp_path, "same"), "iris", {}, "bo")
    assert first == again and (created, created_again) == (True, False)


def test_an_upload_handed_over_is_moved_into_the_store_and_the_same_bytes_again_keep_the_stored_copy(tmp_path):
    import hashlib

    registry = Registry(tmp_path / "state")
    upload = archive(tmp_path, "uploaded")
    sha256 = hashlib.sha256(b"uploaded").hexdigest()
    inode = upload.stat().st_ino
    version, created = registry.deploy(upload, "iris", {}, "ana", handed_over=sha256)
    stored = registry.archive_path(sha256)
    assert created and version.sha256 == sha256 and not upload.exists()
    assert stored.read_text() == "uploaded" and stored.stat().st_ino == inode  # moved, not copied
    again = archive(tmp_path, "uploaded")
    assert registry.deploy(again, "iris", {}, "bo", handed_over=sha256) == (version, False)
    assert again.exists() and stored.stat().st_ino == inode  # the stored copy is kept; the caller drops its own


def test_an_upload_on_another_file_system_is_copied_and_must_have_the_hash_it_came_with(tmp_path, monkeypatch):
    import errno
    import hashlib

    real_replace = os.replace

    def across(source, target):  # the upload's folder is another file system than the store
        if not Path(source).name.startswith(".incoming-"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", across)
    registry = Registry(tmp_path / "state")
    upload = archive(tmp_path, "over there")
    sha256 = hashlib.sha256(b"over there").hexdigest()
    version, created = registry.deploy(upload, "iris", {}, "ana", handed_over=sha256)
    assert created and registry.archive_path(sha256).read_text() == "over there"
    changed = archive(tmp_path, "changed since it was hashed")
    with pytest.raises(ArchiveError, match="changed while it was being stored"):
        registry.deploy(changed, "iris", {}, "ana", handed_over="ab" * 32)
    assert sorted(p.name for p in registry.store.iterdir()) == [f"{sha256}.zip"]  # nothing else kept
    assert [v.number for v in registry.versions("iris")] == [1]


def test_a_deploy_that_fails_after_its_upload_was_moved_keeps_no_archive(tmp_path, monkeypatch):
    import hashlib

    registry = Registry(tmp_path / "state")
    sha256 = hashlib.sha256(b"doomed").hexdigest()

    def broken(*args):
        raise RuntimeError("the registry broke")

    monkeypatch.setattr(Registry, "_version", broken)
    with pytest.raises(RuntimeError):
        registry.deploy(archive(tmp_path, "doomed"), "iris", {}, "ana", handed_over=sha256)
    monkeypatch.undo()
    assert not registry.archive_path(sha256).exists() and registry.functions() == []


def _deploy_many(state: str, folder: str, tag: str) -> None:
    registry = Registry(state)
    for i in range(10):
        path = Path(folder) / f"{tag}-{i}.zip"
        path.write_text(f"{tag}-{i}")
        registry.deploy(path, "iris", {}, tag)


def test_concurrent_deploys_from_two_processes_get_distinct_versions(tmp_path):
    state = tmp_path / "state"
    Registry(state)
    workers = [multiprocessing.get_context("spawn").Process(target=_deploy_many, args=(str(state), str(tmp_path), t))
               for t in ("x", "y")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    versions = Registry(state).versions("iris")
    assert [v.number for v in versions] == list(range(1, 21))
    assert len({v.sha256 for v in versions}) == 20


def _crash_after_storing(state: str, path: str) -> None:
    Registry(state)._store_archive(Path(path))
    os._exit(1)  # killed between storing the archive and committing its version


def test_a_deploy_killed_midway_leaves_no_version_and_the_next_one_completes(tmp_path):
    state = tmp_path / "state"
    path = archive(tmp_path, "half")
    crash = multiprocessing.get_context("spawn").Process(target=_crash_after_storing, args=(str(state), str(path)))
    crash.start()
    crash.join(60)
    assert crash.exitcode == 1
    registry = Registry(state)
    assert registry.functions() == []
    version, created = registry.deploy(path, "iris", {}, "ana")
    assert (version.number, created) == (1, True)


def test_aliases_history_and_rollback(tmp_path):
    registry = Registry(tmp_path / "state")
    for content in ("a", "b", "c"):
        registry.deploy(archive(tmp_path, content), "iris", {}, "ana")
    registry.set_alias("iris", "live", AliasState(1), "ana")
    registry.set_alias("iris", "live", AliasState(1, canary=2, weight=0.1), "ana", reason="canary v2")
    registry.set_alias("iris", "live", AliasState(2), "bo", reason="promote")
    assert registry.aliases("iris") == {"live": AliasState(2)}

    back = registry.rollback("iris", "live", "bo")
    assert back.after == AliasState(1, canary=2, weight=0.1) and back.undoes == 2
    assert registry.rollback("iris", "live", "bo").after == AliasState(1)
    history = registry.history("iris", "live")
    assert [(m.actor, m.reason) for m in history][:3] == [("ana", None), ("ana", "canary v2"), ("bo", "promote")]
    assert [str(m.after) for m in history] == ["v1", "v1 + v2 at 10%", "v2", "v1 + v2 at 10%", "v1"]
    with pytest.raises(AliasError):
        registry.rollback("iris", "live", "bo")


def test_bad_alias_moves_change_nothing(tmp_path):
    registry = Registry(tmp_path / "state")
    registry.deploy(archive(tmp_path, "a"), "iris", {}, "ana")
    registry.set_alias("iris", "live", AliasState(1), "ana")
    with pytest.raises(NotFoundError, match="iris has no version 7"):
        registry.set_alias("iris", "live", AliasState(1, canary=7, weight=0.5), "ana")
    with pytest.raises(NotFoundError, match="no function named 'nope'"):
        registry.set_alias("nope", "live", AliasState(1), "ana")
    with pytest.raises(NotFoundError, match="has no alias 'prod'"):
        registry.resolve(Qualifier.parse("iris:prod"))
    assert registry.resolve(Qualifier.parse("iris:1")) == AliasState(1)
    assert len(registry.history("iris", "live")) == 1 and registry.aliases("iris") == {"live": AliasState(1)}


def test_delete_refuses_versions_in_use_and_removes_unused_archives(tmp_path):
    registry = Registry(tmp_path / "state")
    v1, _ = registry.deploy(archive(tmp_path, "a"), "iris", {}, "ana")
    v2, _ = registry.deploy(archive(tmp_path, "b"), "iris", {}, "ana")
    registry.set_alias("iris", "live", AliasState(2, canary=1, weight=0.2), "ana")
    with pytest.raises(ConflictError, match="in use by alias live"):
        registry.delete("iris", 1)
    registry.set_alias("iris", "live", AliasState(2), "ana")
    registry.delete("iris", 1)
    assert not registry.archive_path(v1.sha256).exists() and registry.archive_path(v2.sha256).exists()
    registry.delete("iris")
    assert registry.functions() == [] and not registry.archive_path(v2.sha256).exists()
    with pytest.raises(NotFoundError):
        registry.versions("iris")


def test_a_version_number_is_never_given_twice(tmp_path):
    """Deleting the latest version, or the whole function, does not free its number: history,
    logs and rollback then never point at code that was never there."""
    registry = Registry(tmp_path / "state")
    for content in ("a", "b", "c"):
        registry.deploy(archive(tmp_path, content), "iris", {}, "ana")
    registry.delete("iris", 3)
    v4, _ = registry.deploy(archive(tmp_path, "d"), "iris", {}, "ana")
    assert v4.number == 4
    registry.delete("iris")
    again, created = registry.deploy(archive(tmp_path, "a"), "iris", {}, "ana")
    assert (again.number, created) == (5, True)
    restarted = Registry(tmp_path / "state")
    assert restarted.deploy(archive(tmp_path, "e"), "iris", {}, "ana")[0].number == 6
    assert restarted.deploy(archive(tmp_path, "e"), "digits", {}, "ana")[0].number == 1


def test_a_registry_without_counters_goes_on_from_its_highest_number(tmp_path):
    import sqlite3

    registry = Registry(tmp_path / "state")
    for content in ("a", "b"):
        registry.deploy(archive(tmp_path, content), "iris", {}, "ana")
    with sqlite3.connect(registry.db_path) as db:  # as written before the counters existed
        db.execute("DELETE FROM counters")
    assert registry.deploy(archive(tmp_path, "c"), "iris", {}, "ana")[0].number == 3


def test_a_read_only_registry_is_a_state_error_naming_the_folder(tmp_path):
    import subprocess

    from fnpack.errors import StateError

    state = tmp_path / "state"
    registry = Registry(state)
    registry.deploy(archive(tmp_path, "a"), "iris", {}, "ana")
    # A read-only bind mount over the folder: what a filesystem remounted read-only gives SQLite.
    mounted = subprocess.run(f"mount --bind {state} {state} && mount -o remount,bind,ro {state}", shell=True,
                             capture_output=True, text=True)
    if mounted.returncode:
        subprocess.run(["umount", str(state)], capture_output=True)
        pytest.skip(f"cannot mount a read-only bind mount here (root needed): {mounted.stderr.strip()}")
    try:
        with pytest.raises(StateError, match=f"the state folder {state} cannot be written: .*registry.db"):
            registry.versions("iris")
        with pytest.raises(StateError):  # and a write
            registry.set_alias("iris", "live", AliasState(1), "ana")
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert [v.number for v in registry.versions("iris")] == [1]  # writable again: back to work
