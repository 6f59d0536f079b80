"""The deterministic zip writer, checked with Python's own zip reader."""

from __future__ import annotations

import zipfile

from fnpack.build.zipwriter import STORED, compress, dos_timestamp, read_entries, write_zip


def test_written_archive_reads_back(tmp_path):
    entries = [compress("a.txt", b"hello " * 1000), compress("b/c.bin", bytes(range(256))),
               compress("d/é.txt", b"unicode name", mode=0o755)]
    path = tmp_path / "x.zip"
    write_zip(path, entries, dos_timestamp(1_700_000_000))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert z.read("a.txt") == b"hello " * 1000
        assert z.read("d/é.txt") == b"unicode name"
        assert [i.date_time for i in z.infolist()] == [(2023, 11, 14, 22, 13, 20)] * 3
        assert [i.external_attr >> 16 for i in z.infolist()] == [0o100644, 0o100644, 0o100755]
        assert z.getinfo("b/c.bin").compress_type == STORED  # incompressible: stored, not inflated


def test_copying_entries_gives_the_same_bytes(tmp_path):
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    write_zip(first, [compress("x.py", b"print('x')\n" * 50), compress("y/z.so", b"\x7fELF" + bytes(5000))])
    write_zip(second, read_entries(first))
    assert first.read_bytes() == second.read_bytes()


def test_timestamps_before_1980_are_clamped():
    assert dos_timestamp(0) == dos_timestamp(315532800) == (0, (0 << 9) | (1 << 5) | 1)


def test_source_date_epoch_is_honoured(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert dos_timestamp() == dos_timestamp(1_700_000_000)
