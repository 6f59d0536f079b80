"""fnpack.archive.inspect, behind `fnpack inspect`: what an archive holds and whether it is intact, read with the safe reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fnpack.archive import MANIFEST_NAME, open_archive
from fnpack.build.budget import SizedFile, breakdown


def inspect_archive(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    with open_archive(path, expected_sha256=expected_sha256) as archive:
        manifest = archive.manifest()
        problems = archive.verify() if manifest else ["no fnpack.json manifest: not an fnpack archive"]
        listed = (manifest or {}).get("files", {})
        sizes = {name: len(archive.read(name)) if name not in listed else listed[name]["size"]
                 for name in archive.names()}
        # The compressed size as the zip's directory states it (the reader checked the directory).
        compressed = {name: archive._file(name).info.compress_size for name in sizes}
        sha256 = archive.sha256
    owners = {name: entry.get("owner", "(unlisted)") for name, entry in listed.items()}
    owners[MANIFEST_NAME] = "(fnpack runtime)"
    files = [SizedFile(name, owners.get(name, "(unlisted)"), size, compressed[name]) for name, size in sizes.items()]
    return {
        "path": str(path),
        "sha256": sha256,
        "intact": not problems,
        "problems": problems,
        "zipped_size": Path(path).stat().st_size,
        "unzipped_size": sum(sizes.values()),
        "files": len(sizes),
        "breakdown": breakdown(files),
        "manifest": {k: v for k, v in (manifest or {}).items() if k != "files"} or None,
    }
