"""A deterministic zip writer that can copy already-compressed entries.

Same entries in, same bytes out: fixed timestamps (SOURCE_DATE_EPOCH or 1980),
fixed permissions, no extra fields, entries in the order given (callers sort).
Entries are compressed once and cached (see vendor.py), so a rebuild copies
compressed bytes instead of deflating 100 MB again.
"""

from __future__ import annotations

import os
import struct
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

STORED, DEFLATED = 0, 8
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")
_ZIP64_LIMIT = 0xFFFFFFFF


@dataclass(frozen=True)
class ZipEntry:
    """One file: its compressed payload and what the headers need."""

    name: str
    size: int
    crc32: int
    method: int
    payload: bytes
    mode: int = 0o644


def compress(name: str, content: bytes, mode: int = 0o644, level: int = 9) -> ZipEntry:
    """Deflate `content` (raw deflate, as zip wants it); store it when deflate does not help."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    payload = packer.compress(content) + packer.flush()
    if len(payload) >= len(content):
        return ZipEntry(name, len(content), zlib.crc32(content), STORED, content, mode)
    return ZipEntry(name, len(content), zlib.crc32(content), DEFLATED, payload, mode)


def dos_timestamp(epoch: int | None = None) -> tuple[int, int]:
    """(time, date) in DOS format for SOURCE_DATE_EPOCH, or 1980-01-01 00:00 when unset."""
    if epoch is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
        epoch = int(value) if value and value.isdigit() else 315532800
    t = time.gmtime(max(epoch, 315532800))  # zip cannot express dates before 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def write_zip(path: Path, entries: Iterable[ZipEntry], timestamp: tuple[int, int] | None = None) -> None:
    dos_time, dos_date = timestamp or dos_timestamp()
    central: list[bytes] = []
    offset = 0
    with open(path, "wb") as out:
        for entry in entries:
            name = entry.name.encode("utf-8")
            flags = 0 if name.isascii() else 0x800  # bit 11: the name is UTF-8
            if offset > _ZIP64_LIMIT or len(entry.payload) > _ZIP64_LIMIT or entry.size > _ZIP64_LIMIT:
                raise ValueError("archive over 4 GiB: zip64 is not supported")
            out.write(_LOCAL.pack(b"PK\x03\x04", 20, flags, entry.method, dos_time, dos_date,
                                  entry.crc32, len(entry.payload), entry.size, len(name), 0))
            out.write(name)
            out.write(entry.payload)
            central.append(_CENTRAL.pack(b"PK\x01\x02", (3 << 8) | 20, 20, flags, entry.method, dos_time,
                                         dos_date, entry.crc32, len(entry.payload), entry.size, len(name),
                                         0, 0, 0, 0, (0o100000 | entry.mode) << 16, offset) + name)
            offset += _LOCAL.size + len(name) + len(entry.payload)
        if len(central) > 0xFFFF:
            raise ValueError(f"{len(central)} entries: zip64 is not supported")
        directory = b"".join(central)
        out.write(directory)
        out.write(_END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), offset, 0))


def read_entries(path: Path) -> Iterator[ZipEntry]:
    """The entries of a zip this module wrote, with their compressed payloads, not decompressed."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            raw.seek(info.header_offset)
            header = _LOCAL.unpack(raw.read(_LOCAL.size))
            raw.seek(header[-2] + header[-1], os.SEEK_CUR)  # skip name and extra field
            yield ZipEntry(info.filename, info.file_size, info.CRC, info.compress_type,
                           raw.read(info.compress_size), (info.external_attr >> 16) & 0o777)
