"""The size budget: check an archive against its limits and explain where the bytes go.

An over-budget report compares like with like: a zipped limit against zipped sizes (each file's
compressed bytes and its zip headers), an unzipped limit against unzipped sizes, in the unit the limit
was given in (`--max-size 45MB` or `budget:` in fnpack.yaml: MB; AWS Lambda's limits: MB as AWS counts
them, 2**20 bytes; the container targets' 1 GiB: GiB). Its hints come from the archive at hand: the model
when it is the largest part, the spec's own requirements, and the largest folders that can be left out
with `exclude:`, by their real names.
"""

from __future__ import annotations

import ast
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fnpack.build.profile import SizeBudget
from fnpack.errors import BudgetError

# Decimal and binary units, spelled as the user may write them (case does not matter when parsing).
UNITS: dict[str, int] = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_BY_LOWER = {name.lower(): name for name in UNITS}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)?\s*$")
AWS_MB = 2**20  # AWS documents Lambda's limits (50 MB, 250 MB) in MB of 2**20 bytes
ZIP_ENTRY_OVERHEAD = 76  # bytes per file besides its payload and its name twice: local header 30, central record 46
ZIP_END = 22  # the end-of-central-directory record
_NATIVE = re.compile(r"\.(so(\.\d+)*|pyd|dylib)$")


@dataclass(frozen=True)
class SizedFile:
    path: str
    owner: str  # a package name, "(model)", "(your code)" or "(fnpack runtime)"
    size: int  # unzipped
    compressed: int  # the compressed payload

    @property
    def zipped(self) -> int:
        """What the file adds to the archive: its payload, its two headers, its name in each."""
        return self.compressed + ZIP_ENTRY_OVERHEAD + 2 * len(self.path.encode())


@dataclass(frozen=True)
class Size:
    """A size as written: its bytes and the unit to report it in (unit_bytes: what one unit is)."""

    bytes: int
    unit: str
    unit_bytes: int


def parse_size(text: str) -> Size:
    """"45MB", "200MiB", "1.5 GB", "1000000" (bytes); ValueError for anything else."""
    match = _SIZE.match(text)
    unit = _BY_LOWER.get((match.group(2) or "B").lower()) if match else None
    if not match or unit is None:
        raise ValueError(f"{text!r} is not a size; expected e.g. 45MB, 200MiB or 1000000 (bytes)")
    return Size(int(float(match.group(1)) * UNITS[unit]), unit, UNITS[unit])


def size_of(n: int) -> Size:
    """A byte count given without its unit (a spec's `budget:`, already parsed): the unit it is a round
    number of ("45MB" -> MB, "200MiB" -> MiB, 1.5 GB -> GB), else MB."""
    for unit in ("GiB", "GB", "MiB", "MB", "KiB", "KB"):
        value = n / UNITS[unit]
        if value >= 1 and abs(value * 100 - round(value * 100)) < 1e-6:  # at most two decimals
            return Size(n, unit, UNITS[unit])
    return Size(n, "MB", UNITS["MB"])


_SMALLER = {"GB": "MB", "MB": "KB", "KB": "B", "GiB": "MiB", "MiB": "KiB", "KiB": "B"}


def format_size(n: int | None, unit: str | None = None, unit_bytes: int | None = None, decimals: int = 1,
                step_down: bool = True) -> str:
    """n bytes in `unit` ("26.3 MB"), or in the next smaller unit of its family when it would read 0.0
    (430 bytes: "0.4 KB", not "0.0 MB"); in binary units picked by size when no unit is given."""
    if n is None:
        return "-"
    if unit is None:
        return human(n)
    factor = unit_bytes or UNITS[unit]
    while step_down and factor > 1 and abs(n) < factor / 10:
        unit = "KiB" if factor == AWS_MB and unit == "MB" else _SMALLER[unit]  # AWS's MB are binary
        factor = UNITS[unit]
    if factor == 1:
        return f"{n:,} B"
    return f"{n / factor:.{decimals}f} {unit}"


def _limit_text(n: int, unit: str, unit_bytes: int) -> str:
    """A limit as it was written: "45 MB", "1.5 GB", "1 GiB" (no trailing zeros)."""
    if unit_bytes == 1:
        return f"{n:,} B"
    return f"{n / unit_bytes:.2f}".rstrip("0").rstrip(".") + f" {unit}"


def _over_text(n: int, limit: int, unit: str, unit_bytes: int) -> str:
    """A size over a limit, with enough decimals that it does not read as equal to the limit."""
    for decimals in (1, 2, 3):
        text = format_size(n, unit, unit_bytes, decimals, step_down=False)
        if float(text.split()[0].replace(",", "")) * unit_bytes > limit or unit_bytes == 1:
            return text
    return f"{n:,} bytes"


@dataclass(frozen=True)
class Limit:
    """One hard limit of a build: what it measures, its bytes and unit, where it comes from, how to raise it."""

    measure: str  # "zipped" or "unzipped"
    bytes: int
    unit: str
    unit_bytes: int
    source: str  # for the message: "--max-size", "budget.zipped in fnpack.yaml", "AWS Lambda's limit"
    raise_with: str | None  # how to raise it; None for a limit that cannot be raised

    @property
    def text(self) -> str:
        return _limit_text(self.bytes, self.unit, self.unit_bytes)


def budget_limits(budget: SizeBudget, target: str, *, max_size: Size | None = None,
                  spec_zipped: Size | int | None = None, spec_unzipped: Size | int | None = None) -> list[Limit]:
    """The build's hard limits (`budget`: the profile's, overrides applied) with the units to report them in:
    --max-size's own, the spec's as written (a Size; bytes alone: the unit they are a round number of),
    AWS's MB for aws-lambda's defaults, else the unit the default is a round number of (1 GiB)."""

    def unit_of(given: Size | int, n: int) -> Size:
        return Size(n, given.unit, given.unit_bytes) if isinstance(given, Size) else size_of(n)

    limits = []
    if budget.max_zipped is not None:
        if max_size is not None:
            size, source, how = unit_of(max_size, budget.max_zipped), "--max-size", "pass a larger --max-size"
        elif spec_zipped is not None:
            size, source, how = (unit_of(spec_zipped, budget.max_zipped), "budget.zipped in fnpack.yaml",
                                 "raise budget.zipped in fnpack.yaml")
        else:
            size, source, how = (_default_size(budget.max_zipped, target), f"the {target} target's limit",
                                 "set budget.zipped in fnpack.yaml")
        limits.append(Limit("zipped", budget.max_zipped, size.unit, size.unit_bytes, source, how))
    if budget.max_unzipped is not None:
        if spec_unzipped is not None:
            size = unit_of(spec_unzipped, budget.max_unzipped)
            how = "raise budget.unzipped in fnpack.yaml" + (
                " (up to AWS Lambda's 250 MB)" if target == "aws-lambda" else "")
            limits.append(Limit("unzipped", budget.max_unzipped, size.unit, size.unit_bytes,
                                "budget.unzipped in fnpack.yaml", how))
        elif target == "aws-lambda":
            limits.append(Limit("unzipped", budget.max_unzipped, "MB", AWS_MB, "AWS Lambda's limit", None))
        else:
            size = _default_size(budget.max_unzipped, target)
            limits.append(Limit("unzipped", budget.max_unzipped, size.unit, size.unit_bytes,
                                f"the {target} target's limit", "set a larger budget.unzipped in fnpack.yaml"))
    return limits


def _default_size(n: int, target: str) -> Size:
    return Size(n, "MB", AWS_MB) if target == "aws-lambda" else size_of(n)


def breakdown(files: list[SizedFile], top: int = 8, measure: str = "unzipped") -> dict[str, Any]:
    """The largest owners and files by `measure` ("unzipped": file sizes; "zipped": what each adds to the
    archive), with shares of that measure's total; both sizes are given for every entry."""
    key: Callable[[SizedFile], int] = (lambda f: f.zipped) if measure == "zipped" else (lambda f: f.size)
    total = sum(key(f) for f in files) + (ZIP_END if measure == "zipped" else 0)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for f in files:
        group = groups[f.owner]
        group[0] += f.size
        group[1] += f.compressed
        group[2] += f.zipped
        group[3] += 1
    index = 2 if measure == "zipped" else 0
    owners = sorted(groups.items(), key=lambda kv: (-kv[1][index], kv[0]))
    largest = sorted(files, key=lambda f: (-key(f), f.path))[:top]
    share = (lambda n: round(n / total, 4)) if total else (lambda n: 0.0)
    return {
        "measure": measure,
        "total": total,
        "packages": [{"name": n, "size": s, "compressed": c, "zipped": z, "files": k, "share": share(g[index])}
                     for n, g in owners[:top] for s, c, z, k in [g]],
        "largest_files": [{"path": f.path, "owner": f.owner, "size": f.size, "compressed": f.compressed,
                           "zipped": f.zipped, "share": share(key(f))} for f in largest],
    }


def check_budget(budget: SizeBudget, zipped: int, unzipped: int, files: list[SizedFile], model_path: str, *,
                 limits: list[Limit] | None = None, target: str = "local", requirements: Iterable[str] = (),
                 base: Iterable[str] = (), read: Callable[[str], bytes | None] | None = None
                 ) -> tuple[str | None, list[str]]:
    """Raise BudgetError when a hard limit is exceeded; else (upload mode, notes).

    limits: the budget's limits with their units and sources (default: from `budget` alone);
    requirements: the names the spec's `requirements:` asks for; base: the runtime's own packages (numpy,
    onnxruntime), in every archive; read: a file's content by archive path
    (the hints read packages' `__init__.py` to tell the folders importing them loads)."""
    limits = limits if limits is not None else budget_limits(budget, target, max_size=None, spec_zipped=None,
                                                             spec_unzipped=None)
    measured = {"zipped": zipped, "unzipped": unzipped}
    over = [limit for limit in limits if measured[limit.measure] > limit.bytes]
    if over:
        views = []
        for limit in over:
            view = breakdown(files, measure=limit.measure)
            view.update(unit=limit.unit, unit_bytes=limit.unit_bytes, limit=limit.bytes,
                        actual=measured[limit.measure], source=limit.source)
            views.append(view)
        folders = excludable_folders(files, over[0].measure, read)
        hints = _hints(views[0], over, model_path, files, set(requirements), set(base), folders)
        message = "the archive is too large: " + "; ".join(
            f"{limit.measure} {_over_text(measured[limit.measure], limit.bytes, limit.unit, limit.unit_bytes)} "
            f"is over {_source_text(limit)}" for limit in over)
        if any(limit.unit_bytes == AWS_MB and limit.unit == "MB" for limit in over):
            message += " (AWS's MB: 1,048,576 bytes)"
        report = {**views[0], "over": views,
                  "excludable": [{"exclude": g, "size": s, "zipped": z} for g, s, z in folders], "hints": hints}
        raise BudgetError(message, hint=" ".join(hints), report=report)
    upload = None
    if budget.direct_upload is not None:
        upload = "direct" if zipped <= budget.direct_upload else "s3"
    notes = []
    if upload == "s3":
        notes.append(f"zipped {format_size(zipped, 'MB', AWS_MB)} is over AWS Lambda's "
                     f"{_limit_text(budget.direct_upload, 'MB', AWS_MB)} for a direct upload (AWS's MB: "
                     "1,048,576 bytes): AWS Lambda takes it through S3 (fnpack deploy does that)")
    return upload, notes


def _source_text(limit: Limit) -> str:
    if limit.source == "--max-size":
        return f"the limit of {limit.text} (--max-size)"
    if limit.source.startswith("budget."):
        return f"the limit of {limit.text} ({limit.source})"
    return f"{limit.source} of {limit.text}"


def _hints(view: dict[str, Any], over: list[Limit], model_path: str, files: list[SizedFile],
           requirements: set[str], base: set[str], folders: list[tuple[str, int, int]]) -> list[str]:
    measure, unit, unit_bytes = view["measure"], view["unit"], view["unit_bytes"]
    key = "zipped" if measure == "zipped" else "size"

    def size(n: int) -> str:
        return format_size(n, unit, unit_bytes)

    hints = []
    biggest = view["packages"][0] if view["packages"] else None
    if biggest and biggest["name"] == "(model)":
        hints.append(f"The model ({model_path}) is {biggest['share']:.0%} of it ({size(biggest[key])} {measure}): "
                     "load it from storage (S3, a volume) when the function starts instead of packaging it, or "
                     "quantize it.")
    owners: dict[str, int] = defaultdict(int)
    for f in files:
        owners[f.owner] += f.zipped if measure == "zipped" else f.size
    asked = sorted(((n, s) for n, s in owners.items() if n in requirements), key=lambda kv: (-kv[1], kv[0]))
    if asked:
        listed = ", ".join(f"{name} {size(n)}" for name, n in asked[:3])
        hints.append(f"Drop the requirements the function does not use ({measure}: {listed}).")
    if folders:
        globs = ", ".join(f'"{glob}"' for glob, _, _ in folders)
        sizes = ", ".join(f"{glob.removesuffix('/**')} {size(z if measure == 'zipped' else s)}"
                          for glob, s, z in folders)
        hints.append(f"Leave out what the function does not load: exclude: [{globs}] in fnpack.yaml "
                     f"({measure}: {sizes}); the build's smoke run checks that the samples still work.")
    runtime = sorted(((n, s) for n, s in owners.items() if n in base), key=lambda kv: (-kv[1], kv[0]))
    if runtime and sum(s for _, s in runtime) >= view["total"] / 2:
        listed = " and ".join(f"{name} {size(n)}" for name, n in runtime)
        hints.append(f"{listed} {measure} are the model runtime every archive carries.")
    raisable = [limit for limit in over if limit.raise_with]
    if raisable:
        text = "; or ".join(f"{limit.raise_with} (now {limit.text} {limit.measure})" for limit in raisable) + "."
        hints.append(f"Or {text}" if hints else text[0].upper() + text[1:])
    for limit in over:
        if limit.raise_with is None:
            hints.append(f"{limit.source} of {limit.text} {limit.measure} cannot be raised.")
    return hints


def excludable_folders(files: list[SizedFile], measure: str, read: Callable[[str], bytes | None] | None = None,
                       top: int = 3) -> list[tuple[str, int, int]]:
    """The largest parts `exclude:` can leave out, by real name, as (glob, unzipped, zipped):

    - your own files that are not Python code, at the top (`weights.bin`) or as folders with no Python code
      in them (`data/**`): data you `include:`d;
    - a package's subfolders (`numpy/polynomial/**`) holding no native library, that importing the package
      does not load: not imported at module level by its `__init__.py`, nor by what that imports, and so on
      (read from the archive's sources; without `read`, no package folder is offered).
    Bytecode caches and `.dist-info` folders are never offered; a part under 1% of the total is not worth it.
    """
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    blocked: set[str] = set()
    packages: dict[str, list[str]] = defaultdict(list)  # top-level package -> its .py files
    for f in files:
        parts = f.path.split("/")
        if f.owner in ("(model)", "(fnpack runtime)"):
            continue
        if f.owner == "(your code)":
            glob = f.path if len(parts) == 1 else f"{parts[0]}/**"
            if f.path.endswith((".py", ".pyc")) or "__pycache__" in parts:
                blocked.add(glob)
        else:
            if f.path.endswith(".py"):
                packages[parts[0]].append(f.path)
            if len(parts) < 3:
                continue
            glob = f"{parts[0]}/{parts[1]}/**"
            if _NATIVE.search(parts[-1]):
                blocked.add(glob)
        if "__pycache__" in glob.split("/") or parts[0].endswith((".dist-info", ".data")):
            blocked.add(glob)
        sizes[glob][0] += f.size
        sizes[glob][1] += f.zipped
    for package, sources in packages.items():
        if read is None:
            blocked.update(glob for glob in sizes if glob.startswith(package + "/"))
            continue
        blocked.update(f"{package}/{sub}/**" for sub in _loaded_subpackages(package, sources, read))
    index = 1 if measure == "zipped" else 0
    total = sum(f.zipped if measure == "zipped" else f.size for f in files) or 1
    found = [(glob, s, z) for glob, (s, z) in sizes.items()
             if glob not in blocked and (z if measure == "zipped" else s) >= total / 100]
    found.sort(key=lambda item: (-item[1 + index], item[0]))
    return found[:top]


def _loaded_subpackages(package: str, sources: list[str], read: Callable[[str], bytes | None]) -> set[str]:
    """The subpackages of `package` that `import package` loads, following module-level imports of its
    Python sources from `package/__init__.py` (imports inside functions are lazy: not followed)."""
    available = set(sources)
    loaded: set[str] = set()
    queue = [f"{package}/__init__.py"]
    seen: set[str] = set()
    while queue:
        path = queue.pop()
        if path in seen or path not in available:
            continue
        seen.add(path)
        parts = path.split("/")
        if len(parts) > 2:
            loaded.add(parts[1])
        content = read(path)
        for module in _module_imports(content, parts) if content is not None else ():
            if module[0] != package:
                continue
            if len(module) > 1:
                loaded.add(module[1])
            for end in range(2, len(module) + 1):
                base = "/".join(module[:end])
                queue += [f"{base}.py", f"{base}/__init__.py"]
    return loaded


def _module_imports(content: bytes, path_parts: list[str]) -> list[list[str]]:
    """Dotted names (as lists) that a module's top level imports, relative imports resolved; for
    `from X import a, b`, X.a and X.b too (they may be modules)."""
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError):
        return []
    package = path_parts[:-1]  # the package a module (or an __init__.py) belongs to
    found: list[list[str]] = []
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    continue
                base = package[: len(package) - (node.level - 1)]
            else:
                base = []
            module = base + (node.module.split(".") if node.module else [])
            if module:
                found.append(module)
                found += [module + [alias.name] for alias in node.names if alias.name != "*"]
        else:  # if/try/with/for bodies run at import too; `except` and `case` bodies may
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    statements.append(child)
                elif isinstance(child, (ast.excepthandler, ast.match_case)):
                    statements += child.body
    return found


def inflate(method: int, payload: bytes) -> bytes:
    """A zip entry's content from its payload (stored or raw deflate)."""
    return zlib.decompress(payload, -15) if method == 8 else payload


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
