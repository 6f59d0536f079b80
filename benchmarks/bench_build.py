#!/usr/bin/env python3
"""Benchmark `fnpack build` on the iris example against a plain `pip install --target` + `zip -qr` bundle.

Measures, in one run: archive size (unzipped and zipped), warm rebuild wall time, and
byte-for-byte reproducibility across rebuilds that differ in folder, umask and mtimes.
Stdlib only; fnpack is driven through its CLI, as a user would.

    python benchmarks/bench_build.py [--rebuilds 10] [--json] [--cold]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "iris"
RUNTIME_TOML = REPO / "runtimes" / "python3.11" / "runtime.toml"
APP_FILES = ("features.py", "score.py", "model.onnx")  # what the plain bundle adds to the packages
UMASKS = (0o022, 0o077, 0o002)
TIMED_RUNS = 3
SLOW_TIMEOUT = 900  # seconds: pip install and the first (possibly downloading) build
FAST_TIMEOUT = 300  # seconds: any warm build or zip
MiB = 1024 * 1024

# name -> (limit, how the measured value is compared)
GOALS: dict[str, tuple[float, str]] = {
    "unzipped_ratio": (0.70, "<="),
    "zipped_ratio": (0.95, "<="),
    "warm_rebuild_ratio": (1.50, "<="),
    "identical_rebuilds": (1.0, "=="),  # as a fraction of --rebuilds
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fnpack_command() -> str:
    """The fnpack next to this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "fnpack"
    found = str(beside) if beside.is_file() else shutil.which("fnpack")
    if not found:
        sys.exit("fnpack not found: run this with the venv's python, or put fnpack on PATH")
    return found


def base_packages() -> tuple[str, list[str]]:
    """The runtime's Python version and the container platform's pinned packages (local target)."""
    config = tomllib.loads(RUNTIME_TOML.read_text(encoding="utf-8"))
    return config["python"], list(config["platforms"]["container"]["packages"])


def copy_example(dest: Path, umask: int = 0o022) -> Path:
    """A fresh copy of the example; copyfile (not copy2) so the umask, not the source, sets the modes."""
    old = os.umask(umask)
    try:
        shutil.copytree(EXAMPLE, dest, copy_function=shutil.copyfile,
                        ignore=shutil.ignore_patterns("__pycache__", "dist", ".*"))
    finally:
        os.umask(old)
    return dest


def scramble_mtimes(root: Path, rng: random.Random) -> None:
    """Give every file and folder a different arbitrary (seeded) access/modification time."""
    for path in sorted(root.rglob("*"), reverse=True) + [root]:  # children first: touching them bumps the dir
        stamp = rng.randint(946_684_800, 1_893_456_000)  # 2000 .. 2030
        os.utime(path, (stamp, stamp))


def build(fnpack: str, project: Path, out: Path, env: dict[str, str], umask: int = -1,
          timeout: int = FAST_TIMEOUT) -> tuple[dict[str, Any], float]:
    """Run `fnpack build --json`; (its JSON result, wall seconds of the whole CLI process)."""
    started = time.perf_counter()
    done = subprocess.run([fnpack, "build", str(project), "--out", str(out), "--json"], cwd=project,
                          env=env, umask=umask, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"fnpack build failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(done.stdout), wall


def zip_tree(tree: Path, archive: Path) -> float:
    """`zip -qr` the contents of tree into a new archive; wall seconds."""
    archive.unlink(missing_ok=True)  # zip -r would otherwise update an existing archive
    started = time.perf_counter()
    subprocess.run(["zip", "-qr", str(archive), "."], cwd=tree, check=True, timeout=FAST_TIMEOUT)
    return time.perf_counter() - started


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_bundle(root: Path, python_version: str, packages: list[str]) -> Path:
    """pip install --target of the pinned packages (with their dependencies, as pip does) + the app files."""
    tree = root / "plain"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
               "--target", str(tree)]
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python_version:
        # Pick the runtime's wheels even when this interpreter is another version.
        command += ["--python-version", python_version, "--only-binary=:all:"]
    subprocess.run(command + packages, check=True, timeout=SLOW_TIMEOUT)
    for name in APP_FILES:
        shutil.copyfile(EXAMPLE / name, tree / name)
    return tree


def run(rebuilds: int, cold: bool, seed: int) -> dict[str, Any]:
    fnpack = fnpack_command()
    python_version, packages = base_packages()
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    with tempfile.TemporaryDirectory(prefix="fnpack-bench-") as tmp:
        root = Path(tmp)
        if cold:
            env["FNPACK_CACHE_DIR"] = str(root / "cache")
        cache = env.get("FNPACK_CACHE_DIR") or str(Path.home() / ".cache" / "fnpack")

        log("first build (fills the cache; not timed as a rebuild)")
        project = copy_example(root / "warm" / "iris")
        first, first_wall = build(fnpack, project, root / "warm" / "out", env, timeout=SLOW_TIMEOUT)

        log(f"plain bundle: pip install --target {' '.join(packages)}")
        tree = plain_bundle(root, python_version, packages)
        plain_zip = root / "plain.zip"

        log(f"timing {TIMED_RUNS} warm fnpack builds and {TIMED_RUNS} zip -qr runs")
        fnpack_times = [build(fnpack, project, root / "warm" / "out", env)[1] for _ in range(TIMED_RUNS)]
        zip_times = [zip_tree(tree, plain_zip) for _ in range(TIMED_RUNS)]

        log(f"{rebuilds} rebuilds from fresh copies (folders, umasks, mtimes all differ)")
        rng = random.Random(seed)
        hashes: list[str] = []
        for i in range(rebuilds):
            umask = UMASKS[i % len(UMASKS)]
            here = Path(tempfile.mkdtemp(dir=root, prefix=f"rebuild{i}-"))
            copy = copy_example(here / f"iris-{i}", umask)
            scramble_mtimes(copy, rng)
            result, _ = build(fnpack, copy, here / f"out-{i}", env, umask=umask)
            hashes.append(sha256_of(Path(result["archive"])))

        sizes = {
            "fnpack_unzipped": first["unzipped_size"], "plain_unzipped": tree_size(tree),
            "fnpack_zipped": first["zipped_size"], "plain_zipped": plain_zip.stat().st_size,
        }
        plain_files = sum(1 for p in tree.rglob("*") if p.is_file())

    fnpack_median, zip_median = statistics.median(fnpack_times), statistics.median(zip_times)
    identical = sum(h == hashes[0] for h in hashes)
    figures: dict[str, Any] = {
        "example": "examples/iris", "target": "local", "packages": packages,
        "fnpack_dependencies": [f"{d['name']}=={d['version']}" for d in first["dependencies"]],
        "cache_dir": cache, "cold": cold,
        **sizes,
        "fnpack_files": first["files"], "plain_files": plain_files,
        "unzipped_ratio": sizes["fnpack_unzipped"] / sizes["plain_unzipped"],
        "zipped_ratio": sizes["fnpack_zipped"] / sizes["plain_zipped"],
        "first_build_s": first_wall,
        "fnpack_rebuild_s": fnpack_times, "zip_s": zip_times,
        "fnpack_rebuild_median_s": fnpack_median, "zip_median_s": zip_median,
        "warm_rebuild_ratio": fnpack_median / zip_median,
        "rebuilds": rebuilds, "identical_rebuilds": identical,
        "distinct_sha256": sorted(set(hashes)),
    }
    figures["goals"] = goals(figures)
    return figures


def goals(f: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, (limit, op) in GOALS.items():
        value = f[name] / f["rebuilds"] if name == "identical_rebuilds" else f[name]
        passed = value <= limit if op == "<=" else value == limit
        out.append({"goal": name, "limit": limit, "op": op, "value": value, "pass": passed})
    return out


def report(f: dict[str, Any]) -> str:
    def mib(n: int) -> str:
        return f"{n / MiB:.2f} MiB"

    n = f["rebuilds"]
    rows = [
        ("metric", "fnpack", "plain bundle", "ratio", "goal"),
        ("unzipped size", mib(f["fnpack_unzipped"]), mib(f["plain_unzipped"]), f"{f['unzipped_ratio']:.2f}x",
         "<= 0.70x"),
        ("zipped size", mib(f["fnpack_zipped"]), mib(f["plain_zipped"]), f"{f['zipped_ratio']:.2f}x", "<= 0.95x"),
        ("files", str(f["fnpack_files"]), str(f["plain_files"]), f"{f['fnpack_files'] / f['plain_files']:.2f}x", ""),
        (f"warm rebuild (median of {TIMED_RUNS})", f"{f['fnpack_rebuild_median_s']:.2f} s",
         f"{f['zip_median_s']:.2f} s", f"{f['warm_rebuild_ratio']:.2f}x", "<= 1.50x"),
        ("identical rebuilds", f"{f['identical_rebuilds']}/{n}", "-", "-", f"{n}/{n}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        f"fnpack build benchmark: {f['example']} (target {f['target']}), base {' '.join(f['packages'])}",
        f"fnpack bundled: {' '.join(f['fnpack_dependencies'])}; cache {f['cache_dir']}"
        f"{' (cold, dedicated)' if f['cold'] else ''}; first build {f['first_build_s']:.2f} s (untimed)",
        f"plain bundle: pip install --target (with dependencies) + {', '.join(APP_FILES)}, then zip -qr",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"fnpack runs: {', '.join(f'{t:.2f}' for t in f['fnpack_rebuild_s'])} s; "
                 f"zip runs: {', '.join(f'{t:.2f}' for t in f['zip_s'])} s")
    if len(f["distinct_sha256"]) > 1:
        lines.append(f"distinct archives: {len(f['distinct_sha256'])}")
    lines += ["", "goals"]
    for g in f["goals"]:
        if g["goal"] == "identical_rebuilds":
            value, limit = f"{f['identical_rebuilds']}/{n}", f"{n}/{n}"
        else:
            value, limit = f"{g['value']:.2f}x", f"{g['op']} {g['limit']:.2f}x"
        lines.append(f"  {g['goal']:<20} {limit:>9}  measured {value:>7}  {'PASS' if g['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuilds", type=int, default=10, help="rebuilds compared for reproducibility")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    parser.add_argument("--cold", action="store_true",
                        help="use a fresh FNPACK_CACHE_DIR under the temp root instead of the user's cache")
    parser.add_argument("--seed", type=int, default=20240, help="seed for the scrambled mtimes")
    args = parser.parse_args()
    if not 1 <= args.rebuilds <= 100:
        parser.error("--rebuilds must be between 1 and 100")
    if not shutil.which("zip"):
        sys.exit("zip not found: it makes the plain bundle")
    figures = run(args.rebuilds, args.cold, args.seed)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


if __name__ == "__main__":
    main()
