"""`fnpack build`: spec -> checked model and code -> vendored packages -> deterministic archive -> smoke run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fnpack import __version__
from fnpack._resources import data_dir, runtime_package_dir
from fnpack.archive import MANIFEST_NAME, sha256_file
from fnpack.archive.reader import remember_verified
from fnpack.build.budget import (Size, SizedFile, breakdown, budget_limits, check_budget, inflate, parse_size,
                                 size_of)
from fnpack.build.globs import matches
from fnpack.build.interpreters import compile_tree, find_python
from fnpack.build.model_check import check_model
from fnpack.build.profile import BuildProfile, load_profile
from fnpack.build.smoke import smoke_run
from fnpack.build.user_code import check_callable
from fnpack.build.vendor import Layer, requirement_names, tree_entries, vendor
from fnpack.build.zipwriter import ZipEntry, compress, write_zip
from fnpack.errors import OutputError, SpecError, UsageError
from fnpack.spec import SPEC_FILE, Project, load_project

HANDLER_MODULE = "fnpack_handler"
HANDLERS = {"asgi": f"{HANDLER_MODULE}:app", "lambda": f"{HANDLER_MODULE}.handler"}
# Never packaged from the function folder: environments, outputs, caches, VCS data, tests.
DEFAULT_EXCLUDE = (".*", "**/.*", "**/__pycache__", "venv", "env", "node_modules", "dist", "build", "tests",
                   SPEC_FILE)
# Packages for training, not serving: bundled only when listed in `requirements:` by name.
TRAINING_STACK = frozenset({"scikit-learn", "scipy", "torch", "tensorflow", "skl2onnx", "onnx", "pandas",
                            "jax", "xgboost", "lightgbm"})

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    archive: Path
    sha256: str
    name: str
    target: str
    runtime: str
    arch: str
    zipped_size: int
    unzipped_size: int
    files: int
    upload: str | None
    smoke: dict[str, Any]
    dependencies: list[dict[str, str]]
    breakdown: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "archive": str(self.archive)}


def build(path: Path | str = ".", target: str = "local", out: Path | str | None = None,
          max_size: int | str | Size | None = None, progress: Progress = lambda _: None) -> BuildResult:
    """max_size: the zipped limit, as text ("45MB": the over-budget report is then in MB) or in bytes."""
    started = time.perf_counter()
    limit = _max_size(max_size)
    project = load_project(path)
    spec = project.spec
    profile = _with_overrides(load_profile(target, spec.runtime, spec.arch, gpu=spec.resources.gpu > 0), project,
                              limit.bytes if limit else None)
    out_dir = Path(out) if out else project.root / "dist"
    _check_writable(out_dir)

    progress("checking the model and code")
    model = check_model(project.root / spec.model, profile.onnx, spec.inputs, spec.runtime)
    for role in ("features", "score"):
        if getattr(spec, role):
            check_callable(project.root, getattr(spec, role), role)
    samples = load_samples(project)

    progress("vendoring packages")
    layers = vendor(profile, spec.requirements, progress)
    notes = _training_stack_notes(layers, spec.requirements)
    if find_python(profile.python_version) is None:
        notes.append(f"no bytecode precompiled: python{profile.python_version} is not installed here, so each "
                     f"cold start compiles it; install python{profile.python_version} and rebuild to precompile")

    progress("packaging")
    with tempfile.TemporaryDirectory(prefix="fnpack-build-") as tmp:
        files = _assemble(project, layers, _app_files(project, Path(tmp) / "app", profile))
        manifest = _manifest(project, profile, model.__dict__, layers, files)
        files.append(Packaged(compress(MANIFEST_NAME, manifest), "(fnpack runtime)", ""))
        files.sort(key=lambda p: p.entry.name)
        entries = [p.entry for p in files]
        sized = [p.sized() for p in files]
        unzipped = sum(e.size for e in entries)
        zipped = _zip_size(entries)
        by_name = {e.name: e for e in entries}
        upload, budget_notes = check_budget(
            profile.budget, zipped, unzipped, sized, spec.model, target=profile.target,
            limits=budget_limits(profile.budget, profile.target, max_size=limit, **_spec_budget(project)),
            requirements=requirement_names(spec.requirements), base=requirement_names(list(profile.packages)),
            read=lambda name: inflate(by_name[name].method, by_name[name].payload) if name in by_name else None)

        progress("writing the archive")
        handle, staged_name = tempfile.mkstemp(dir=out_dir, prefix=f".{spec.name}-", suffix=".zip.partial")
        os.close(handle)
        staged = Path(staged_name)
        try:
            write_zip(staged, entries)
            sha = sha256_file(staged)
            progress("smoke-running the samples")
            smoke = smoke_run(staged, profile, samples, spec.resources.timeout)
            final = out_dir / f"{spec.name}-{sha[:12]}.zip"
            os.chmod(staged, 0o666 & ~_umask())  # mkstemp made it private
            os.replace(staged, final)
            remember_verified(sha)  # written from the files the manifest lists: a deploy need not inflate it again
        finally:
            staged.unlink(missing_ok=True)
    if smoke["status"] == "skipped":
        notes.append(smoke["reason"])
    return BuildResult(
        archive=final, sha256=sha, name=spec.name, target=target, runtime=spec.runtime, arch=spec.arch,
        zipped_size=final.stat().st_size, unzipped_size=unzipped, files=len(entries), upload=upload,
        smoke=smoke, dependencies=[{"name": l.name, "version": l.version} for l in layers],
        breakdown=breakdown(sized, top=5), notes=notes + budget_notes,
        seconds=round(time.perf_counter() - started, 3),
    )


def _max_size(value: int | str | Size | None) -> Size | None:
    if value is None or isinstance(value, Size):
        return value
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise UsageError(f"--max-size {exc}", hint="e.g. --max-size 45MB") from None
    return size_of(value)  # bytes from a caller: reported in the unit they are a round number of


def _spec_budget(project: Project) -> dict[str, Size | None]:
    """The spec's `budget:` limits with the units they were written in ("0.05GB" is reported in GB), read
    again from fnpack.yaml (the spec model keeps bytes only); bytes, or a spelling parse_size does not
    take, are reported in the unit they are a round number of."""
    budget = project.spec.budget
    written: dict[str, Any] = {}
    try:
        raw = yaml.safe_load(project.spec_path.read_text(encoding="utf-8"))
        written = (raw.get("budget") or {}) if isinstance(raw, dict) else {}
    except (OSError, ValueError, yaml.YAMLError):
        pass
    sizes: dict[str, Size | None] = {}
    for measure in ("zipped", "unzipped"):
        value = getattr(budget, measure)
        size = size_of(int(value)) if value is not None else None
        text = written.get(measure) if isinstance(written, dict) else None
        if value is not None and isinstance(text, str):
            try:
                parsed = parse_size(text)
                size = Size(int(value), parsed.unit, parsed.unit_bytes)
            except ValueError:
                pass
        sizes[f"spec_{measure}"] = size
    return sizes


def _with_overrides(profile: BuildProfile, project: Project, max_size: int | None) -> BuildProfile:
    budget = project.spec.budget
    if max_size is None and budget.zipped is None and budget.unzipped is None:
        return profile
    if profile.target == "aws-lambda" and budget.unzipped and budget.unzipped > profile.budget.max_unzipped:
        raise SpecError(f"budget.unzipped {budget.unzipped} is over AWS Lambda's hard limit of "
                        f"{profile.budget.max_unzipped} bytes", hint="lower it or leave it out")
    return replace(profile, budget=replace(
        profile.budget,
        max_zipped=max_size if max_size is not None else (budget.zipped or profile.budget.max_zipped),
        max_unzipped=budget.unzipped or profile.budget.max_unzipped,
    ))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}",
                          hint="pass a writable folder with --out") from None


def load_samples(project: Project) -> list[dict[str, Any]]:
    samples = []
    for i, sample in enumerate(project.spec.samples, 1):
        data, source = sample.data, None
        if sample.file is not None:
            path = project.root / sample.file
            try:
                data, source = json.loads(path.read_text(encoding="utf-8")), sample.file
            except FileNotFoundError:
                raise SpecError(f"samples.{i - 1}.file: {sample.file} not found",
                                hint="paths are relative to fnpack.yaml") from None
            except ValueError as exc:
                raise SpecError(f"samples.{i - 1}.file: {sample.file} is not valid JSON: {exc}") from None
        samples.append({"data": data, "expect": sample.expect, "source": source})
    return samples


@dataclass(frozen=True)
class Packaged:
    """One file of the archive: its compressed entry, who brought it, its hash for the manifest."""

    entry: ZipEntry
    owner: str
    sha256: str

    def sized(self) -> SizedFile:
        return SizedFile(self.entry.name, self.owner, self.entry.size, len(self.entry.payload))


def _app_files(project: Project, stage: Path, profile: BuildProfile) -> list[Packaged]:
    """The user's files, the fnpack runtime and the handler, compiled like the packages."""
    spec = project.spec
    include = ("**/*.py", spec.model, *spec.include)
    exclude = (*DEFAULT_EXCLUDE, *spec.exclude)
    owners: dict[str, str] = {}
    for rel in _function_files(project.root, exclude):
        if matches(rel, include):
            _copy(project.root / rel, stage / rel)
            owners[rel] = "(model)" if rel == spec.model else "(your code)"
    runtime = runtime_package_dir()
    added = {"fnpack/" + p.relative_to(runtime).as_posix(): p
             for p in [runtime / "__init__.py", *sorted((runtime / "runtime").glob("*.py"))]}
    added[f"{HANDLER_MODULE}.py"] = data_dir("handlers") / f"{HANDLER_MODULE}.py"
    for rel, source in added.items():
        if rel in owners:
            raise SpecError(f"{rel} in the function folder clashes with a file fnpack adds to every archive",
                            hint=f"rename or exclude {rel}")
        owners[rel] = "(fnpack runtime)"
        _copy(source, stage / rel)
    python = find_python(profile.python_version)
    if python:
        compile_tree(python, str(stage))
    entries, records = tree_entries(stage)
    return [Packaged(e, owners.get(_source_of(e.name), "(your code)"), r.sha256) for e, r in zip(entries, records)]


def _function_files(root: Path, exclude: tuple[str, ...]) -> list[str]:
    """Relative paths of the files under root that no `exclude` glob matches.

    Excluded folders are not entered: a .venv or node_modules inside the function
    folder would otherwise be walked, file by file, on every build.
    """
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs if not matches(prefix + d, exclude))
        found += [prefix + f for f in sorted(files) if not matches(prefix + f, exclude)]
    return found


def _source_of(path: str) -> str:
    """features.py for __pycache__/features.cpython-311.pyc; the path itself otherwise."""
    folder, _, name = path.rpartition("/")
    if not name.endswith(".pyc") or not (folder == "__pycache__" or folder.endswith("/__pycache__")):
        return path
    parent = folder.removesuffix("__pycache__")
    return f"{parent}{name.split('.')[0]}.py"


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _assemble(project: Project, layers: list[Layer], app: list[Packaged]) -> list[Packaged]:
    """All files, with the spec's `exclude` applied to packages too; one path, one owner."""
    files = {p.entry.name: p for p in app}
    for layer in layers:
        hashes = {r.path: r.sha256 for r in layer.files}
        for entry in layer.entries():
            if matches(entry.name, project.spec.exclude):
                continue
            if entry.name in files:
                raise SpecError(f"{entry.name} is provided by both {layer.name} and {files[entry.name].owner}",
                                hint="rename your file, or drop one of the requirements")
            files[entry.name] = Packaged(entry, layer.name, hashes[entry.name])
    return [files[name] for name in sorted(files)]


def _manifest(project: Project, profile: BuildProfile, model: dict[str, Any], layers: list[Layer],
              files: list[Packaged]) -> bytes:
    spec = project.spec
    manifest = {
        "format": 1,
        "fnpack_version": __version__,
        "name": spec.name,
        "target": profile.target,
        "runtime": spec.runtime,
        "python": profile.python_version,
        "arch": spec.arch,
        "platform": {"glibc": profile.glibc, "machine": profile.machine, "onnxruntime": profile.onnx.onnxruntime},
        "handlers": HANDLERS,
        "spec": spec.model_dump(mode="json", by_alias=True),
        "model": {"path": spec.model, **model},
        "dependencies": [{"name": l.name, "version": l.version, "wheel": l.wheel, "sha256": l.wheel_sha256}
                         for l in layers],
        "files": {p.entry.name: {"size": p.entry.size, "sha256": p.sha256, "owner": p.owner} for p in files},
    }
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def _zip_size(entries: list[ZipEntry]) -> int:
    """The archive's exact size before writing it: headers (30 + 46 bytes + name twice) and payloads."""
    return sum(76 + 2 * len(e.name.encode()) + len(e.payload) for e in entries) + 22


def _training_stack_notes(layers: list[Layer], requirements: list[str]) -> list[str]:
    asked = requirement_names(requirements)
    return [f"{l.name} (a training package) is bundled because a requirement depends on it"
            for l in layers if l.name in TRAINING_STACK and l.name not in asked]
