"""Commands that make and examine archives: build, inspect, run, init, schema, version."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fnpack import __version__
from fnpack.cli._app import app, build_progress, err, handle_errors, out, print_breakdown, say
from fnpack.errors import SpecError

TEMPLATES = {"tabular": "iris", "image": "digits"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size; expected e.g. 45MB, 200MiB or 1000000")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


@app.command()
def build(
    path: Path = typer.Argument(Path("."), help="Function folder (holding fnpack.yaml) or the spec file."),
    target: str = typer.Option("local", "--target", "-t", help="local, aws-lambda, knative or openfaas."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder [default: PATH/dist]."),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Fail if the zipped archive is larger (45MB)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON result instead of the report."),
) -> None:
    """Build a deterministic, size-checked archive and smoke-run its samples."""
    from fnpack.build.pipeline import build as run_build

    limit = parse_size(max_size) if max_size else None
    with handle_errors(as_json), build_progress(enabled=not as_json) as progress:
        result = run_build(path, target=target, out=out_dir, max_size=limit, progress=progress)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    from fnpack.build.budget import human

    out.print(f"[bold green]built[/] {result.archive}", highlight=False)
    out.print(f"  sha256   {result.sha256}\n  target   {result.target} ({result.runtime}, {result.arch})\n"
              f"  size     {human(result.zipped_size)} zipped, {human(result.unzipped_size)} unzipped, "
              f"{result.files} files" + (f", upload: {result.upload}" if result.upload else ""), highlight=False)
    smoke = result.smoke
    out.print(f"  smoke    {smoke['samples']} sample(s) passed" if smoke["status"] == "passed" else
              "  smoke    [yellow]skipped[/]", highlight=False)
    print_breakdown(result.breakdown, out, top=3)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


@app.command()
def inspect(
    archive: Path = typer.Argument(..., help="An archive built by fnpack."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Fail unless the archive has this sha256."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show an archive's manifest, handler, sizes and whether it is intact."""
    from fnpack.archive.inspect import inspect_archive

    with handle_errors(as_json):
        report = inspect_archive(archive, expected_sha256=sha256)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        _print_inspection(report)
    if not report["intact"]:
        raise typer.Exit(10)


@app.command()
def run(
    archive: Path = typer.Argument(..., help="An archive built by fnpack."),
    as_: str = typer.Option("http", "--as", help="http: serve it; lambda: run it under AWS's runtime client."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (http; lambda serves on loopback)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port [http: 8080; lambda: serve Function URL "
                                                            "events on this port]."),
    data: Optional[str] = typer.Option(None, "--data", help="lambda: a JSON request, sent as a direct invocation."),
    event: Optional[Path] = typer.Option(None, "--event", help="lambda: a JSON event file, sent as is."),
) -> None:
    """Run an archive locally exactly as a target would: as an HTTP server, or under the Lambda runtime."""
    if as_ not in ("http", "lambda"):
        raise typer.BadParameter(f"{as_!r}: expected http or lambda", param_hint="--as")
    with handle_errors(False):
        if as_ == "lambda":
            from fnpack.targets.aws_lambda.emulator import run_lambda

            raise typer.Exit(run_lambda(archive, data=data, event_file=event, port=port))
        from fnpack import worker
        from fnpack.archive import sha256_file

        if not archive.is_file():
            from fnpack.errors import ArchiveError

            raise ArchiveError(f"{archive} not found", hint="build one with `fnpack build`")
        app_ = worker.load_app(worker.prepare(str(archive.resolve()), sha256_file(archive), worker.default_cache()))
    err.print(f"serving {archive.name} on http://{host}:{port or 8080} (POST /invoke, /v2, /metrics)",
              highlight=False)
    worker.serve(app_, host, port or 8080)


@app.command()
def init(
    name: str = typer.Argument(..., help="Function name: a lower-case DNS label; also the new folder's name."),
    template: str = typer.Option("tabular", "--template", help="tabular (iris classifier) or image (digits)."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="Create it here [default: ./NAME]."),
) -> None:
    """Scaffold a working function: spec, small model, features, score, sample requests."""
    from fnpack._resources import data_dir
    from fnpack.spec import parse_spec

    with handle_errors(False):
        if template not in TEMPLATES:
            raise SpecError(f"unknown template {template!r}", hint=f"choose one of: {', '.join(TEMPLATES)}")
        target = directory or Path(name)
        if target.exists() and any(target.iterdir()):
            raise SpecError(f"{target} already exists and is not empty", hint="pick another name or --dir")
        source = data_dir("examples") / TEMPLATES[template]
        spec_text = (source / "fnpack.yaml").read_text(encoding="utf-8")
        parse_spec({"name": name, "model": "model.onnx"}, source="NAME")  # checks the name before writing
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "dist", "*.pyc"))
        (target / "fnpack.yaml").write_text(re.sub(r"(?m)^name:.*$", f"name: {name}", spec_text, count=1),
                                            encoding="utf-8")
    out.print(f"created {target}/ from the {template} template. Next:\n  cd {target} && fnpack build",
              highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of fnpack.yaml."""
    from fnpack.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def version() -> None:
    """Print fnpack's version."""
    out.print(__version__)


def _print_inspection(report: dict[str, Any]) -> None:
    from rich.markup import escape

    from fnpack.build.budget import human

    m = report.get("manifest") or {}
    out.print(f"[bold]{escape(report['path'])}[/]", highlight=False)
    out.print(f"  sha256   {report['sha256']}\n  intact   {'yes' if report['intact'] else '[red]no[/]'}",
              highlight=False)
    for problem in report["problems"][:20]:  # escape(): names from the archive may hold "[/]", which is markup
        out.print(f"           [red]{escape(problem)}[/]", highlight=False)
    if "handlers" in m:  # a built manifest, whose keys the safe reader checked; one of `files` alone has none
        say(f"  function {m['name']} ({m['target']}, {m['runtime']}, {m['arch']})\n"
            f"  handlers asgi {m['handlers']['asgi']}, lambda {m['handlers']['lambda']}\n"
            f"  model    {m['model']['path']} (IR {m['model']['ir_version']}, opsets {m['model']['opsets']})\n"
            f"  built by fnpack {m['fnpack_version']}")
    out.print(f"  size     {human(report['zipped_size'])} zipped, {human(report['unzipped_size'])} unzipped, "
              f"{report['files']} files", highlight=False)
    print_breakdown(report["breakdown"], out)
