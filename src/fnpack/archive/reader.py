"""fnpack.archive.reader, the one reader for fnpack archives: `inspect`, the build's smoke run and the runtime server all open archives here.

Its public names are re-exported by `fnpack.archive`; import them from there.

`open_archive` rejects an unsafe archive before a single byte is extracted:
hostile names, escaping symlinks, zip bombs, encryption, unknown compression.
Entries are then decompressed by this module, not by `ZipFile.open`, so that
every call's output is capped and no entry may yield more bytes than its
header declares (zipfile trusts the headers and lets bzip2 expand a 4 KiB read
without bound). As the declared sizes were checked against the limits, that
cap enforces the limits on the actual bytes.

Imports stay light: stdlib only, plus zipfile_deflate64 when an entry needs it.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import json
import lzma
import os
import re
import reprlib
import stat
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from fnpack.errors import ArchiveError, OutputError

MANIFEST_NAME = "fnpack.json"

_CHUNK = 1 << 20  # output per decompress call, and the read size for hashing
_RAW_CHUNK = 64 << 10
_WRITERS = 4  # threads writing files out of one archive
_DEFLATE64_RAW_CHUNK = 1 << 10  # Deflate64 cannot cap its output; 1 KiB expands to at most ~30 MB
_RATIO_MIN_SIZE = 1 << 20  # small entries may compress very well without being bombs
_MAX_LINK_TARGET = 4096
_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    9: "deflate64",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra field lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DIRECTORY_RECORD = struct.Struct("<4s4xH18xHHH12x")  # signature, flags, name, extra and comment lengths
_ZIP64_END = 56 + 20  # the zip64 end record and its locator, which precede the classic end record
_RECORD_ALLOWANCE = 1024  # central directory bytes per allowed entry; real records take ~100
_MAX_NAME = 1024  # characters in an entry's path (and a manifest's); real ones stay far below
MAX_MANIFEST_SIZE = 16 << 20  # fnpack.json takes ~150 bytes per file: 3 MiB at the entry limit
_DRIVE = re.compile(r"[A-Za-z]:")
_REPR = reprlib.Repr()  # values quoted in messages: bounded in length and depth
_REPR.maxstring = _REPR.maxother = 100
_UNSAFE_HINT = "the archive is unsafe to unpack; rebuild it with `fnpack build` or get it from a trusted source"
_CORRUPT_HINT = "the archive is damaged or tampered with; rebuild it or download it again"


@dataclass(frozen=True)
class Limits:
    max_entries: int = 20_000
    max_total_size: int = 1 << 30  # total uncompressed bytes
    # Per entry over 1 MiB. Deflate tops out near 1032:1, reached only by runs of one byte; real
    # files stay below (auditwheel-padded libraries reach ~250:1, e.g. Pillow's libXau).
    max_ratio: float = 1000.0


@dataclass(frozen=True)
class _Entry:
    name: str  # as stored; a folder's name ends with "/"
    info: zipfile.ZipInfo
    kind: str  # "file", "dir" or "link"
    offset: int = 0  # where the compressed data starts
    target: str = ""  # a link's target


class _WriteFailed(Exception):
    """The destination failed while one entry was written (extract_all names it in its OutputError)."""

    def __init__(self, entry: _Entry, error: OSError) -> None:
        super().__init__(str(error))
        self.entry, self.error = entry, error


class _Decompressor(Protocol):
    """The interface of bz2.BZ2Decompressor and lzma.LZMADecompressor, which the others are adapted to."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


class Identical(NamedTuple):
    """A file believed to hold an entry's bytes, for `extract_all` to link instead of inflating: `path`, unpacked
    from entry `name` of `archive`, an archive verified before. `sealed`: the file cannot have changed since it
    was verified (root's, read-only to everyone else), so it is not hashed again."""

    path: Path
    archive: SafeArchive
    name: str
    sealed: bool = False


def open_archive(
    path: Path | str, expected_sha256: str | None = None, limits: Limits = Limits(), *, hashed: bool = True
) -> SafeArchive:
    """Open and check an archive; raise ArchiveError if it is not a zip, not the expected one, or unsafe.
    `hashed=False` takes `expected_sha256` as the archive's hash without reading it all: for a file of the
    caller's own that was hashed when it was stored (the platform's store names each archive by its hash)."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist or is not a file", hint="check the archive's path")
    if not hashed and expected_sha256 is None:
        raise ValueError("an archive opened without hashing it needs its expected sha256")
    fp = path.open("rb")
    try:
        return SafeArchive(path, fp, expected_sha256, limits, hashed)
    except BaseException:
        fp.close()
        raise


class SafeArchive:
    """An archive that passed every check made without extracting. Get one from `open_archive`."""

    def __init__(self, path: Path, fp: BinaryIO, expected_sha256: str | None, limits: Limits,
                 hashed: bool = True) -> None:
        self.path = path
        self.limits = limits
        self._fp = fp
        self._lock = threading.Lock()  # reads seek the shared handle
        # The bytes hashed are the bytes read: one handle serves both.
        self.sha256 = _sha256_stream(fp) if hashed or expected_sha256 is None else expected_sha256.lower()
        if expected_sha256 is not None:
            self.expect(expected_sha256)
        fp.seek(0)
        try:
            _count_entries(path, fp, limits)
            self._zip = zipfile.ZipFile(fp)
        # zipfile raises more than BadZipFile for a forged directory: NotImplementedError for a "version
        # needed to extract" it does not know, UnicodeDecodeError for names, OverflowError for offsets.
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError,
                OverflowError) as exc:
            raise ArchiveError(f"{path} is not a zip archive ({type(exc).__name__}: {str(exc)[:200]})",
                               hint="fnpack archives are zip files") from exc
        self._entries: list[_Entry] = []  # in archive order, folders included
        self._files: dict[str, _Entry] = {}  # file and link entries by name, in archive order
        self._manifest: dict[str, Any] | None = None
        self._check()

    def expect(self, sha256: str) -> None:
        """Raise ArchiveError unless this is the archive with that sha256."""
        if self.sha256 != sha256.lower():
            raise ArchiveError(
                f"{self.path}: sha256 mismatch: expected {sha256.lower()}, got {self.sha256}",
                hint="the archive is not the one expected; download it again or check the expected hash",
            )

    def __enter__(self) -> SafeArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._fp.close()

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> bytes:
        return b"".join(self._stream(self._file(name)))

    def manifest(self) -> dict[str, Any] | None:
        """fnpack.json, read once and checked against the shape every reader relies on (`_check_manifest`)."""
        if MANIFEST_NAME not in self._files:
            return None
        if self._manifest is None:
            size = self._files[MANIFEST_NAME].info.file_size
            if size > MAX_MANIFEST_SIZE:
                raise ArchiveError(f"entry {MANIFEST_NAME!r} is {size} bytes, over the limit of {MAX_MANIFEST_SIZE}",
                                   hint=_CORRUPT_HINT)
            try:
                data = json.loads(self.read(MANIFEST_NAME))
            except (ValueError, RecursionError) as exc:  # ValueError includes UnicodeDecodeError
                raise ArchiveError(f"entry {MANIFEST_NAME!r} is not valid JSON: {str(exc)[:200]}",
                                   hint=_CORRUPT_HINT) from exc
            self._manifest = _check_manifest(data, self.limits.max_entries)
        return self._manifest

    def verify(self) -> list[str]:
        """What differs between the manifest's `files` and the archive; [] when the archive is intact."""
        listed = self._listed()
        return self._problems(listed, {name: self._digest(self._files[name]) for name in listed if name in self._files})

    def _listed(self) -> dict[str, Any]:
        manifest = self.manifest()
        if manifest is None:
            raise ArchiveError(f"{self.path} has no {MANIFEST_NAME}", hint="only archives built by fnpack can be verified")
        listed = manifest.get("files")
        if listed is None:
            raise ArchiveError(
                f"entry {MANIFEST_NAME!r} has no 'files' object mapping paths to {{size, sha256}}", hint=_CORRUPT_HINT
            )
        return listed

    def _digest(self, entry: _Entry) -> str:
        digest = hashlib.sha256()
        for chunk in self._stream(entry):
            digest.update(chunk)
        return digest.hexdigest()

    def _problems(self, listed: dict[str, Any], digests: dict[str, str]) -> list[str]:
        """What differs between the manifest's `files` and the entries, given each listed entry's sha256."""
        problems = []
        for name, want in listed.items():
            if name not in self._files:
                problems.append(f"{name}: listed in {MANIFEST_NAME} but missing from the archive")
                continue
            entry = self._files[name]
            if want.get("size") != entry.info.file_size:  # _stream checked the actual size against it
                problems.append(f"{name}: {entry.info.file_size} bytes, {MANIFEST_NAME} says {want.get('size')}")
            if str(want.get("sha256")).lower() != digests[name]:
                problems.append(f"{name}: sha256 {digests[name]}, {MANIFEST_NAME} says {want.get('sha256')}")
        problems += [
            f"{name}: in the archive but not listed in {MANIFEST_NAME}"
            for name in self._files
            if name not in listed and name != MANIFEST_NAME
        ]
        return problems

    def extract_all(self, dest: Path, check: bool = False, same_as: Mapping[str, Identical] | None = None
                    ) -> list[str]:
        """Unpack under dest, overwriting nothing; on any error, remove what was unpacked.

        With `check`, each file is compared with the manifest as it is written: what `verify()` finds,
        in one pass over the archive instead of two; the problems are returned (the caller must not use
        `dest` unless there are none). Failures of the destination (it exists, it is not a folder, the
        disk is full) are OutputErrors, not ArchiveErrors: the archive is fine.

        `same_as` (with `check` only) names, for some entries, a file elsewhere believed to hold the same
        bytes: one unpacked from an earlier archive. It is hard-linked instead of inflated when this archive
        stores the entry byte for byte as that one does (so this archive is checked as surely as by
        inflating it) and the file is the platform's own, read-only to others, with the manifest's size and
        sha256 (hashed, unless sealed); otherwise the entry is inflated as usual. Comparing stored bytes and
        hashing cost a fraction of inflating, so a new version that changes one file unpacks in a fraction
        of the time.
        """
        dest = Path(dest)
        listed = self._listed() if check else {}
        same_as = same_as if check else None
        digests: dict[str, str] | None = {} if check else None
        created: list[Path] = []
        entry: _Entry | None = None
        try:
            for missing in reversed([p for p in (dest, *dest.parents) if not os.path.lexists(p)]):
                missing.mkdir()
                created.append(missing)
            if not dest.is_dir():
                raise OutputError(f"cannot extract to {dest}: not a folder", hint="extract into an empty or new folder")
            folders: set[Path] = set()
            files = []  # written once every folder and link is in place
            for entry in self._entries:
                path = self._place(entry, dest, created, folders)
                if entry.kind == "link":
                    os.symlink(entry.target, path)
                    created.append(path)
                    if digests is not None:
                        digests[entry.name] = self._digest(entry)
                elif entry.kind == "file":
                    files.append((entry, path))
            entry = None
            self._write_all(files, created, digests, listed, same_as or {})
        except BaseException as exc:
            if isinstance(exc, _WriteFailed):  # a file written on another thread
                entry, exc = exc.entry, exc.error
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        path.rmdir()
                    else:
                        path.unlink()
            if isinstance(exc, OSError):
                where = f"entry {entry.name!r}" if entry else str(dest)
                if isinstance(exc, FileExistsError):
                    problem, hint = f"{exc.filename} already exists", "extract into an empty or new folder"
                else:
                    problem, hint = str(exc), "check that the folder is writable and has free space"
                raise OutputError(f"cannot extract {where}: {problem}", hint=hint) from exc
            raise
        return self._problems(listed, digests) if digests is not None else []

    @staticmethod
    def _place(entry: _Entry, dest: Path, created: list[Path], folders: set[Path]) -> Path:
        """Where an entry goes, its folders made (a folder entry's own too)."""
        parts = entry.name.removesuffix("/").split("/")
        parent = _make_folders(dest, parts if entry.kind == "dir" else parts[:-1], created, folders)
        return parent if entry.kind == "dir" else parent / parts[-1]

    def _write_all(self, files: list[tuple[_Entry, Path]], created: list[Path], digests: dict[str, str] | None,
                   listed: dict[str, Any], same_as: Mapping[str, Identical]) -> None:
        """The files, largest first, on up to _WRITERS threads: inflating and hashing release the GIL, and one
        inflating thread is the bound of a deploy (78 MB for the iris function, half a second)."""
        files = sorted(files, key=lambda item: -item[0].info.file_size)
        writers = min(_WRITERS, os.cpu_count() or 1, len(files))

        def write(entry: _Entry, path: Path) -> None:
            source = same_as.get(entry.name)
            if source is None or digests is None or not self._link(entry, path, source, listed, created, digests):
                self._write(entry, path, created, digests)

        if writers <= 1:
            for entry, path in files:
                write(entry, path)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(writers, thread_name_prefix="fnpack-unpack")
        try:
            for future in [pool.submit(write, entry, path) for entry, path in files]:
                future.result()  # the first failure is raised; the files not started are cancelled below
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def stored_alike(self, name: str, other: SafeArchive, other_name: str) -> bool:
        """Whether entry `name` holds, byte for byte, the compressed data of `other`'s entry `other_name`, by the
        same method: then it inflates to the same bytes, and where those are known it need not be inflated."""
        mine, theirs = self._files.get(name), other._files.get(other_name)
        if mine is None or theirs is None or mine.kind != "file" or theirs.kind != "file":
            return False
        a, b = mine.info, theirs.info
        if (a.compress_type, a.compress_size, a.file_size, a.CRC, _executable(a)) != \
                (b.compress_type, b.compress_size, b.file_size, b.CRC, _executable(b)):
            return False
        try:  # the same method and size: both read in chunks of the same sizes
            return all(x == y for x, y in zip(self._raw(mine), other._raw(theirs)))
        except (ArchiveError, OSError):
            return False

    def _link(self, entry: _Entry, path: Path, source: Identical, listed: dict[str, Any], created: list[Path],
              digests: dict[str, str]) -> bool:
        """Hard-link `source` as the entry's file if the entry is stored as `source`'s entry is (the archive's own
        bytes are checked: a damaged one is refused, as it would be when inflated) and `source` is a regular
        file with the manifest's size and sha256."""
        want = listed.get(entry.name) or {}
        expected = str(want.get("sha256")).lower()
        if not self.stored_alike(entry.name, source.archive, source.name):
            return False
        try:
            info = os.lstat(source.path)
            # Ours, and writable by no one else: a file another user could still change is never shared.
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022 \
                    or not info.st_size == entry.info.file_size == want.get("size"):
                return False
            os.link(source.path, path, follow_symlinks=False)
        except OSError:  # another file system, too many links, a source just removed: inflate it instead
            return False
        created.append(path)
        digest = ""
        with contextlib.suppress(OSError):  # the inode linked must be the one looked at (and hashed)
            linked = os.lstat(path)
            if (linked.st_dev, linked.st_ino) == (info.st_dev, info.st_ino):
                digest = expected if source.sealed else _sha256_file_no_follow(path)
        if digest != expected:  # changed since its own tree was unpacked: inflate it
            try:
                path.unlink()
            except OSError as exc:
                raise _WriteFailed(entry, exc) from exc
            created.remove(path)
            return False
        digests[entry.name] = digest
        return True

    def _write(self, entry: _Entry, path: Path, created: list[Path], digests: dict[str, str] | None) -> None:
        """One file; with `digests`, its sha256 is recorded under its name."""
        digest = hashlib.sha256() if digests is not None else None
        try:
            with open(path, "xb") as f:  # "x": never overwrite, never write through a planted link
                created.append(path)
                for chunk in self._stream(entry):
                    f.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
            os.chmod(path, 0o755 if _executable(entry.info) else 0o644)
        except OSError as exc:
            raise _WriteFailed(entry, exc) from exc
        if digests is not None and digest is not None:
            digests[entry.name] = digest.hexdigest()

    def _file(self, name: str) -> _Entry:
        if name not in self._files:
            raise ArchiveError(f"entry {name!r} is not in {self.path}", hint="list the archive's entries with `fnpack inspect`")
        return self._files[name]

    def _check(self) -> None:
        """Every check that needs no decompression, then the symlinks' targets."""
        infos = self._zip.infolist()  # _count_entries checked their number
        entries: dict[str, _Entry] = {}  # by name without a folder's trailing "/", which collides on disk
        total = 0
        for info in infos:
            entry = _check_entry(info, self.limits)
            key = entry.name.removesuffix("/")
            if key in entries:
                raise ArchiveError(f"entry {entry.name!r} appears twice in the archive", hint=_UNSAFE_HINT)
            entries[key] = entry
            total += info.file_size
            if total > self.limits.max_total_size:
                raise ArchiveError(
                    f"entry {entry.name!r} brings the declared uncompressed size to {total} bytes, "
                    f"over the limit of {self.limits.max_total_size}",
                    hint=_UNSAFE_HINT,
                )
        for key, entry in entries.items():
            parts = key.split("/")
            for i in range(1, len(parts)):  # a file or link where a folder should be would redirect writes
                above = entries.get("/".join(parts[:i]))
                if above is not None and above.kind != "dir":
                    raise ArchiveError(
                        f"entry {entry.name!r} lies under {above.name!r}, a {above.kind} and not a folder",
                        hint=_UNSAFE_HINT,
                    )
        located = [self._locate(entry) for entry in entries.values()]
        self._check_overlaps(located)
        links = {e.name for e in located if e.kind == "link"}
        for entry in located:
            if entry.kind == "link":
                entry = replace(entry, target=self._link_target(entry, links))
            self._entries.append(entry)
            if entry.kind != "dir":
                self._files[entry.name] = entry

    def _locate(self, entry: _Entry) -> _Entry:
        """Find the entry's data through its local header, which must agree with the central directory."""
        if not 0 <= entry.info.header_offset < self._zip.start_dir:  # seek() fails on negative or 2**63
            raise ArchiveError(f"entry {entry.name!r}: its local header offset {entry.info.header_offset} is "
                               f"outside the archive's data (0 to {self._zip.start_dir})", hint=_CORRUPT_HINT)
        with self._lock:
            self._fp.seek(entry.info.header_offset)
            header = self._fp.read(_LOCAL_HEADER.size)
            signature, name_length, extra_length = (
                _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else (b"", 0, 0)
            )
            raw_name = self._fp.read(name_length)
        encoding = "utf-8" if entry.info.flag_bits & 0x800 else "cp437"
        if signature != _LOCAL_SIGNATURE or raw_name.decode(encoding, "replace") != entry.name:
            raise ArchiveError(
                f"entry {entry.name!r}: its local header is missing or names another file", hint=_CORRUPT_HINT
            )
        return replace(entry, offset=entry.info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)

    def _check_overlaps(self, entries: list[_Entry]) -> None:
        """Overlapping entries make the "non-recursive zip bomb"; zipfile checks for them only from 3.11.8 on."""
        ordered = sorted(entries, key=lambda e: e.info.header_offset)
        for entry, after in zip(ordered, [*ordered[1:], None]):
            end = after.info.header_offset if after else self._zip.start_dir
            if entry.offset + entry.info.compress_size > end:
                what = f"entry {after.name!r}" if after else "the central directory"
                raise ArchiveError(f"entry {entry.name!r} overlaps {what}", hint=_UNSAFE_HINT)

    def _link_target(self, entry: _Entry, links: set[str]) -> str:
        if entry.info.file_size > _MAX_LINK_TARGET:
            raise ArchiveError(f"symlink {entry.name!r} has a target over {_MAX_LINK_TARGET} bytes", hint=_UNSAFE_HINT)
        try:
            target = b"".join(self._stream(entry)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArchiveError(f"symlink {entry.name!r} has a target that is not UTF-8", hint=_UNSAFE_HINT) from exc
        problem = _link_problem(entry.name, target, links)
        if problem:
            raise ArchiveError(f"symlink {entry.name!r} {problem}; it must point inside the archive", hint=_UNSAFE_HINT)
        return target

    def _stream(self, entry: _Entry) -> Iterator[bytes]:
        """The entry's bytes, decompressed in capped chunks; never more than its header declares."""
        info = entry.info
        size, crc = 0, 0
        try:
            for chunk in _decompress(info.compress_type, self._raw(entry), info.file_size):
                size += len(chunk)
                if size > info.file_size:
                    raise ArchiveError(
                        f"entry {entry.name!r} decompresses to more than the {info.file_size} bytes its header declares",
                        hint="the archive's headers are forged (a zip bomb); do not use it",
                    )
                crc = zlib.crc32(chunk, crc)
                yield chunk
        except (zlib.error, lzma.LZMAError, OSError, ValueError, EOFError, struct.error) as exc:
            raise ArchiveError(f"entry {entry.name!r} is corrupt: {exc}", hint=_CORRUPT_HINT) from exc
        if size != info.file_size or crc != info.CRC:
            raise ArchiveError(
                f"entry {entry.name!r} is corrupt: {size} bytes with CRC {crc:08x}, "
                f"its header declares {info.file_size} bytes with CRC {info.CRC:08x}",
                hint=_CORRUPT_HINT,
            )

    def _raw(self, entry: _Entry) -> Iterator[bytes]:
        chunk = _DEFLATE64_RAW_CHUNK if entry.info.compress_type == 9 else _RAW_CHUNK
        position, left = entry.offset, entry.info.compress_size
        while left > 0:
            with self._lock:
                self._fp.seek(position)
                data = self._fp.read(min(chunk, left))
            if not data:
                raise ArchiveError(f"entry {entry.name!r} is truncated", hint=_CORRUPT_HINT)
            position += len(data)
            left -= len(data)
            yield data


def _count_entries(path: Path, fp: BinaryIO, limits: Limits) -> None:
    """Refuse too many entries before zipfile makes an object of each: a forged directory of a
    million 46-byte records costs it 7 s and 700 MB. Raises nothing when zipfile will say it is no zip."""
    end = zipfile._EndRecData(fp)  # zipfile's own reader of the end record, so that both see one directory
    if not end:
        return
    size = end[zipfile._ECD_SIZE]
    start = end[zipfile._ECD_LOCATION] - size - (_ZIP64_END if end[0] == zipfile.stringEndArchive64 else 0)
    if size > limits.max_entries * _RECORD_ALLOWANCE:
        raise ArchiveError(f"{path} has a central directory of {size} bytes, over the limit of "
                           f"{limits.max_entries * _RECORD_ALLOWANCE} for {limits.max_entries} entries",
                           hint=_UNSAFE_HINT)
    if start < 0:
        return
    fp.seek(start)
    directory = fp.read(size)
    count = position = 0
    first_over = ""
    while position + _DIRECTORY_RECORD.size <= len(directory):  # as zipfile walks it; it checks signatures
        _, flags, name_length, extra_length, comment_length = _DIRECTORY_RECORD.unpack_from(directory, position)
        if count == limits.max_entries:
            at = position + _DIRECTORY_RECORD.size
            name = directory[at:at + min(name_length, 100)]
            first_over = name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        count += 1
        position += _DIRECTORY_RECORD.size + name_length + extra_length + comment_length
    if count > limits.max_entries:
        raise ArchiveError(f"{path} has {count} entries, over the limit of {limits.max_entries} "
                           f"(first one over: {first_over!r})", hint=_UNSAFE_HINT)


# The keys of a built manifest that inspect, the targets, the platform and the runtime index, with their
# types, parents first; "a.b" is key b of the object at a.
_BUILT_MANIFEST: dict[str, type] = {
    "format": int, "name": str, "target": str, "runtime": str, "python": str, "arch": str, "fnpack_version": str,
    "handlers": dict, "handlers.asgi": str, "handlers.lambda": str,
    "spec": dict, "spec.name": str, "spec.model": str, "spec.resources": dict, "spec.scaling": dict,
    "model": dict, "model.path": str, "model.ir_version": int, "model.opsets": dict,
    "model.inputs": list, "model.outputs": list,
}
_MANIFEST_FORMAT = 1
_TENSOR_HINT = '{"name": a string, "dtype": a string, "shape": a list of integers}'


def _check_manifest(data: Any, max_files: int) -> dict[str, Any]:
    """fnpack.json, checked once so that no reader meets a missing key or a wrong type.

    A manifest may hold `files` alone (what verify() needs: an archive made with other tools);
    one with any key of a built manifest must have them all.
    """
    if not isinstance(data, dict):
        raise _manifest_error(f"must be a JSON object, got {type(data).__name__}")
    files = data.get("files", {})
    if not isinstance(files, dict):
        raise _manifest_error(f"'files' must be an object mapping paths to {{size, sha256}}, got {_short(files)}")
    if len(files) > max_files:
        raise _manifest_error(f"lists {len(files)} files, over the limit of {max_files} entries")
    for name, want in files.items():
        size = want.get("size") if isinstance(want, dict) else None
        if (len(name) > _MAX_NAME or not _is_int(size) or size < 0 or not isinstance(want.get("sha256"), str)
                or not isinstance(want.get("owner", ""), str)):
            raise _manifest_error(f"files[{_short(name)}] must be {{\"size\": an integer >= 0, \"sha256\": a "
                                  f"string}} for a path of at most {_MAX_NAME} characters, got {_short(want)}")
    if not any(key in data for key in _BUILT_MANIFEST if "." not in key):
        return data
    for path, kind in _BUILT_MANIFEST.items():
        *parents, key = path.split(".")
        node = data
        for parent in parents:
            node = node[parent]  # checked to be an object before its keys
        if key not in node:
            raise _manifest_error(f"has no {path!r}; expected {kind.__name__} (a manifest written by fnpack build)")
        value = node[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _manifest_error(f"{path!r} must be {kind.__name__}, got {_short(value)}")
        if kind is str and len(value) > _MAX_NAME:  # names and versions, which messages quote
            raise _manifest_error(f"{path!r} is {len(value)} characters long; expected at most {_MAX_NAME}")
    if data["format"] != _MANIFEST_FORMAT:
        raise ArchiveError(f"entry {MANIFEST_NAME!r} has format {data['format']}; this fnpack reads format "
                           f"{_MANIFEST_FORMAT}", hint="use the fnpack version that built the archive, or rebuild it")
    for key in ("inputs", "outputs"):
        for index, tensor in enumerate(data["model"][key]):
            if not (isinstance(tensor, dict) and isinstance(tensor.get("name"), str)
                    and isinstance(tensor.get("dtype"), str) and isinstance(tensor.get("shape"), list)
                    and all(_is_int(d) for d in tensor["shape"])):
                raise _manifest_error(f"'model.{key}[{index}]' must be {_TENSOR_HINT}, got {_short(tensor)}")
    return data


def _manifest_error(problem: str) -> ArchiveError:
    return ArchiveError(f"entry {MANIFEST_NAME!r} {problem}", hint=_CORRUPT_HINT)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """A value from the archive, quoted for a message: a crafted one may be megabytes long or deep."""
    return _REPR.repr(value)


def _check_entry(info: zipfile.ZipInfo, limits: Limits) -> _Entry:
    """The checks one central directory record allows: name, encryption, method, type, ratio."""
    name = info.orig_filename  # ZipInfo.filename is cut at the first NUL byte
    if len(name) > _MAX_NAME:  # before any message quotes it
        raise ArchiveError(f"entry {name[:100]!r}... has a name of {len(name)} characters; expected at most "
                           f"{_MAX_NAME}", hint=_UNSAFE_HINT)
    problem = _path_problem(name)
    if problem:
        raise ArchiveError(f"entry {name!r} {problem}", hint=_UNSAFE_HINT)
    if info.flag_bits & 0x41:  # traditional or strong encryption
        raise ArchiveError(f"entry {name!r} is encrypted; fnpack archives never are", hint=_UNSAFE_HINT)
    if info.compress_type not in _METHODS:
        raise ArchiveError(
            f"entry {name!r} uses compression method {info.compress_type}; "
            f"expected one of {', '.join(_METHODS.values())}",
            hint="repack the archive with deflate",
        )
    mode = info.external_attr >> 16
    if name.endswith("/"):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "link"
    elif stat.S_IFMT(mode) in (0, stat.S_IFREG):  # 0: made on a system without unix modes
        kind = "file"
    else:
        raise ArchiveError(
            f"entry {name!r} has unix file type {stat.S_IFMT(mode):o}; expected a regular file, folder or symlink",
            hint=_UNSAFE_HINT,
        )
    if info.file_size > _RATIO_MIN_SIZE and info.file_size / max(info.compress_size, 1) > limits.max_ratio:
        raise ArchiveError(
            f"entry {name!r} declares {info.file_size} bytes from {info.compress_size} compressed, "
            f"a ratio over the limit of {limits.max_ratio:g}: a zip bomb",
            hint=_UNSAFE_HINT,
        )
    return _Entry(name, info, kind)


def _path_problem(name: str) -> str | None:
    """Why a name cannot be extracted safely on any system, or None."""
    if not name:
        return "has an empty name"
    if "\x00" in name:
        return "has a NUL byte in its name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "is an absolute path; expected a path relative to the archive root"
    if "\\" in name:
        return "has a backslash in its name; expected '/' as the only separator"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "has a '..' component; expected a path inside the archive"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' component; expected a normalized path"
    return None


def _link_problem(link: str, target: str, links: set[str]) -> str | None:
    """Why a symlink's target is unsafe, or None. Resolved from the link's folder as the OS would."""
    if not target or "\x00" in target or "\\" in target:
        return f"has the target {target!r}, which is empty or has a NUL byte or a backslash"
    if target.startswith("/") or _DRIVE.match(target):
        return f"points to the absolute path {target!r}"
    here = link.split("/")[:-1]
    parts = target.split("/")
    for i, part in enumerate(parts):
        if part == "..":
            if not here:
                return f"points outside the archive ({target!r})"
            here.pop()
        elif part not in ("", "."):
            here.append(part)
            # The OS resolves '..' after a link from the link's target, not lexically as above.
            if "/".join(here) in links and ".." in parts[i + 1 :]:
                return f"has the target {target!r}, which goes through the symlink {'/'.join(here)!r} and back up"
    return None


def _make_folders(dest: Path, parts: list[str], created: list[Path], folders: set[Path]) -> Path:
    path = dest
    for part in parts:
        path = path / part
        if path in folders:
            continue
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            if not stat.S_ISDIR(path.lstat().st_mode):  # lstat: never follow a link already in dest
                raise
        folders.add(path)
    return path


def _decompress(method: int, raw: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Decompressed chunks of at most _CHUNK bytes (Deflate64: see _DEFLATE64_RAW_CHUNK)."""
    if method == zipfile.ZIP_STORED:
        yield from raw
        return
    decompressor = _decompressor(method, size)
    for data in raw:
        while True:
            out = decompressor.decompress(data, _CHUNK)
            data = b""
            if out:
                yield out
            if decompressor.eof:  # trailing bytes are ignored; Deflate64 would re-emit its last window
                return
            if decompressor.needs_input:
                break


def _decompressor(method: int, size: int) -> _Decompressor:
    if method == zipfile.ZIP_DEFLATED:
        return _Inflate()
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor()
    if method == zipfile.ZIP_LZMA:
        return _ZipLZMA(size)
    return _Deflate64()


class _Inflate:
    """zlib's raw inflate, whose unconsumed input is left to the caller."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._z.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._z.decompress(self._z.unconsumed_tail + data, max_length)
        self.needs_input = not self._z.unconsumed_tail and len(out) < max_length
        return out


class _ZipLZMA:
    """LZMA as zip stores it: a 4-byte version and size header, the filter properties, then a raw stream."""

    def __init__(self, size: int) -> None:
        self._size = size  # what the entry declares it decompresses to
        self._lzma: lzma.LZMADecompressor | None = None

    @property
    def eof(self) -> bool:
        return self._lzma is not None and self._lzma.eof

    @property
    def needs_input(self) -> bool:
        return self._lzma is None or self._lzma.needs_input

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._lzma is None:  # the first raw chunk holds the whole header unless the entry is corrupt
            (size,) = struct.unpack_from("<H", data, 2)
            lc_lp_pb, dict_size = struct.unpack_from("<BI", data, 4)  # the first 5 of `size` property bytes
            lp_pb, lc = divmod(lc_lp_pb, 9)
            pb, lp = divmod(lp_pb, 5)
            # liblzma allocates the declared dictionary (up to 4 GiB) at once; no match reaches further
            # back than the entry's own size, so that is all the dictionary it needs.
            dict_size = max(min(dict_size, self._size), 4096)
            lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
            self._lzma = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
            data = data[4 + size :]
        return self._lzma.decompress(data, max_length)


class _Deflate64:
    """zipfile_deflate64's decoder; it takes no output cap, so it is fed small chunks instead."""

    needs_input = True

    def __init__(self) -> None:
        # Importing it patches zipfile globally, so only archives that need it do.
        from zipfile_deflate64.deflate64 import Deflate64

        self._d = Deflate64()

    @property
    def eof(self) -> bool:
        return self._d.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(data)


def _executable(info: zipfile.ZipInfo) -> bool:
    return bool((info.external_attr >> 16) & 0o111)


def _sha256_file_no_follow(path: Path) -> str:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        return _sha256_stream(f)


def _sha256_stream(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


# --- archives verified before ----------------------------------------------------------------------------
# Verifying an archive inflates and hashes every file (half a second for a 27 MB one). Its sha256 names its
# bytes, so an archive whose sha256 was verified once (or that fnpack's build wrote) needs it no more: each
# use hashes the zip, then checks for a marker named by that hash in the cache.


def _marker(sha256: str) -> Path:
    from fnpack._resources import cache_dir

    return cache_dir() / "verified" / sha256


def verified_before(sha256: str) -> bool:
    return _marker(sha256).is_file()


def remember_verified(sha256: str) -> None:
    """Mark an archive's sha256 intact; a cache that cannot be written only costs the next verification."""
    try:
        marker = _marker(sha256)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass
