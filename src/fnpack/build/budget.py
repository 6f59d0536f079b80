"""The size budget: check an archive against its target's limits and explain where the bytes go."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fnpack.build.profile import SizeBudget
from fnpack.errors import BudgetError


@dataclass(frozen=True)
class SizedFile:
    path: str
    owner: str  # a package name, "(model)", "(your code)" or "(fnpack runtime)"
    size: int
    compressed: int


def breakdown(files: list[SizedFile], top: int = 8) -> dict[str, Any]:
    total = sum(f.size for f in files) or 1
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for f in files:
        group = groups[f.owner]
        group[0] += f.size
        group[1] += f.compressed
        group[2] += 1
    owners = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))
    largest = sorted(files, key=lambda f: (-f.size, f.path))[:top]
    return {
        "packages": [{"name": n, "size": s, "compressed": c, "files": k, "share": round(s / total, 4)}
                     for n, (s, c, k) in owners[:top]],
        "largest_files": [{"path": f.path, "owner": f.owner, "size": f.size, "share": round(f.size / total, 4)}
                          for f in largest],
    }


def check_budget(budget: SizeBudget, zipped: int, unzipped: int, files: list[SizedFile],
                 model_path: str) -> tuple[str | None, list[str]]:
    """Raise BudgetError when a hard limit is exceeded; else (upload mode, notes)."""
    over = []
    if budget.max_unzipped is not None and unzipped > budget.max_unzipped:
        over.append(f"unzipped {human(unzipped)} is over the limit of {human(budget.max_unzipped)}")
    if budget.max_zipped is not None and zipped > budget.max_zipped:
        over.append(f"zipped {human(zipped)} is over the limit of {human(budget.max_zipped)}")
    if over:
        report = breakdown(files)
        raise BudgetError("the archive is too large: " + "; ".join(over),
                          hint=" ".join(_hints(report, model_path)), report=report)
    upload = None
    if budget.direct_upload is not None:
        upload = "direct" if zipped <= budget.direct_upload else "s3"
    notes = []
    if upload == "s3":
        notes.append(f"zipped {human(zipped)} is over {human(budget.direct_upload)}: "
                     "AWS Lambda takes it through S3 (fnpack deploy does that)")
    return upload, notes


def _hints(report: dict[str, Any], model_path: str) -> list[str]:
    hints = []
    biggest = report["packages"][0] if report["packages"] else None
    if biggest and biggest["name"] == "(model)":
        hints.append(f"The model is {biggest['share']:.0%} of it: move {model_path} to model storage "
                     "(S3/PVC) instead of the archive, or quantize it.")
    packages = [p for p in report["packages"] if not p["name"].startswith("(")]
    if packages:
        names = ", ".join(f"{p['name']} {human(p['size'])} ({p['share']:.0%})" for p in packages[:3])
        hints.append(f"Largest packages: {names}. Drop unused requirements, or leave files out with "
                     f"`exclude:` globs in fnpack.yaml (e.g. '{packages[0]['name']}/some_unused_folder').")
    hints.append("Or raise the limit: `--max-size` / `budget:` in fnpack.yaml (targets other than aws-lambda).")
    return hints


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
