"""Commands that make and examine archives: build, inspect, run, init, schema, version."""


import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fnpack import __version__
from fnpack.cli._app import app, build_progress, emit, err, handle_errors, out, print_breakdown, say
from fnpack.errors import FnpackError, OutputError, SpecError, UsageError
from fnpack.targets.catalog import TARGETS

TEMPLATES = {"tabular": "iris", "image": "digits"}
RUN_MODES = ("http", "lambda")


def _json_option(what: str = "Print one JSON object on one line (errors: one on stderr).") -> Any:
    return typer.Option(False, "--json", help=what)


def parse_size(text: str) -> int:
    """A --max-size value in bytes; a usage error (exit 2) when it is not a size."""
    from fnpack.build.budget import parse_size as parse

    try:
        return parse(text).bytes
    except ValueError as exc:
        raise UsageError(f"--max-size {exc}", hint="e.g. --max-size 45MB") from None


def _choice(flag: str, value: str, choices: tuple[str, ...] | list[str], what: str) -> None:
    """A usage error (exit 2) naming the value, what was expected and the closest choice."""
    if value in choices:
        return
    import difflib

    close = difflib.get_close_matches(value, choices, n=1)
    hint = f"did you mean {close[0]}?" if close else None
    raise UsageError(f"unknown {what} {value!r} ({flag}); expected one of: {', '.join(choices)}", hint=hint)


@app.command()
def build(
    path: Path = typer.Argument(Path("."), metavar="PATH", show_default=False,
                                help="The function folder (holding fnpack.yaml) or its spec file; default: the "
                                     "current folder."),
    target: str = typer.Option("local", "--target", "-t", metavar="TARGET",
                               help=f"What to build for: {', '.join(TARGETS)}."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", show_default=False,
                                           help="Output folder; default: PATH/dist."),
    max_size: Optional[str] = typer.Option(None, "--max-size", metavar="SIZE", show_default=False,
                                           help="Fail if the zipped archive is larger, e.g. 45MB, 200MiB or a "
                                                "number of bytes; default: the target's limits."),
    as_json: bool = _json_option("Print one JSON result on one line instead of the report (errors: one JSON "
                                 "object on stderr)."),
) -> None:
    """Build a deterministic, size-checked archive and smoke-run its samples."""
    from fnpack.build.pipeline import build as run_build

    with handle_errors(as_json):
        _choice("--target", target, TARGETS, "target")
        if max_size is not None:
            parse_size(max_size)  # a bad value is a usage error before anything is read
        with build_progress(enabled=not as_json) as progress:
            result = run_build(path, target=target, out=out_dir, max_size=max_size, progress=progress)
    if as_json:
        emit(result.to_dict())
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
    archive: Path = typer.Argument(..., metavar="ARCHIVE", help="An archive built by fnpack."),
    sha256: Optional[str] = typer.Option(None, "--sha256", metavar="HEX",
                                         help="Fail unless the archive has this sha256."),
    as_json: bool = _json_option("Print the report as one JSON object on one line (errors: one on stderr)."),
) -> None:
    """Show an archive's manifest, handlers, model inputs and outputs, sizes, and whether it is intact.

    An archive that is not intact exits with code 10; its report is printed all the same.
    """
    from fnpack.archive.inspect import inspect_archive

    with handle_errors(as_json):
        report = inspect_archive(archive, expected_sha256=sha256)
    if as_json:
        emit(report)
    else:
        _print_inspection(report)
    if not report["intact"]:
        raise typer.Exit(10)


@app.command()
def run(
    archive: Path = typer.Argument(..., metavar="ARCHIVE", help="An archive built by fnpack."),
    as_: str = typer.Option("http", "--as", metavar="MODE",
                            help="http: serve it over HTTP; lambda: run it under AWS's runtime interface client."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS",
                             help="http: the address to listen on (lambda listens on loopback)."),
    port: Optional[int] = typer.Option(None, "--port", metavar="N", show_default=False,
                                       help="http: the port to listen on, default 8080; lambda: serve Function URL "
                                            "events on this port."),
    data: Optional[str] = typer.Option(None, "--data", metavar="JSON",
                                       help="lambda: a JSON request, sent as a direct invocation."),
    event: Optional[Path] = typer.Option(None, "--event", metavar="FILE",
                                         help="lambda: a JSON event file, sent as is."),
    as_json: bool = _json_option("lambda with --data or --event: print the answer as one JSON object on one "
                                 "line (errors: one on stderr)."),
) -> None:
    """Run an archive locally exactly as a target would: as an HTTP server, or under the Lambda runtime."""
    with handle_errors(as_json):
        _choice("--as", as_, RUN_MODES, "mode")
        if as_ == "http" and (data is not None or event is not None):
            raise UsageError("--data and --event are for --as lambda", hint="with --as http, POST to /invoke")
        given = [flag for flag, value in (("--data", data), ("--event", event), ("--port", port)) if value is not None]
        if as_ == "lambda" and len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise UsageError(f"give exactly one of --data, --event or --port{got}",
                             hint="--data JSON invokes once, --event FILE sends a Lambda event, --port N serves HTTP")
        if as_json and (as_ != "lambda" or port is not None):
            raise UsageError("--json needs --as lambda with one of --data or --event",
                             hint="a server has no single result to print")
        if as_json:
            emit(_invoke_lambda_once(archive, data, event))
            return
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


def _invoke_lambda_once(archive: Path, data: Optional[str], event_file: Optional[Path]) -> dict[str, Any]:
    """`run --as lambda --json`: one invocation; the answer as a dict, a function error as exit code 1."""
    from fnpack.targets.aws_lambda.emulator import LocalLambda

    if data is not None:
        text, what = data, "--data"
    else:
        try:
            text, what = Path(event_file).read_text(encoding="utf-8"), f"the event file {event_file}"
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the event file {event_file}: {exc}", hint="check the path") from None
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}", hint="pass a JSON value, e.g. '{\"x\": 1}'") from None
    with LocalLambda(archive, log_stream=sys.stderr) as local:
        result = local.invoke(request)
    if result.status != "ok":
        where = "init error" if result.status == "init_error" else "function error"
        failure = FnpackError(f"{where}: {result.error_type}: {result.error_message}")
        failure.kind = "init-error" if result.status == "init_error" else "function-error"
        raise failure
    return {"archive": str(archive), "status": result.status, "request_id": result.request_id,
            "duration_s": result.duration_s, "answer": result.payload}


@app.command()
def init(
    name: str = typer.Argument(..., metavar="NAME",
                               help="Function name: a lower-case DNS label; also the new folder's name."),
    template: str = typer.Option("tabular", "--template", metavar="TEMPLATE",
                                 help="tabular (an iris classifier) or image (a digits reader)."),
    directory: Optional[Path] = typer.Option(None, "--dir", metavar="DIR", show_default=False,
                                             help="Create it in this folder; default: ./NAME."),
    as_json: bool = _json_option(),
) -> None:
    """Scaffold a working function: spec, small model, features, score, sample requests."""
    from fnpack._resources import data_dir

    with handle_errors(as_json):
        _check_name(name)
        _choice("--template", template, list(TEMPLATES), "template")
        target = directory or Path(name)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UsageError(f"{target} already exists and is not an empty folder",
                             hint="pick another NAME, or another folder with --dir")
        source = data_dir("examples") / TEMPLATES[template]
        spec_text = (source / "fnpack.yaml").read_text(encoding="utf-8")
        try:
            shutil.copytree(source, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "dist", "*.pyc"))
            (target / "fnpack.yaml").write_text(re.sub(r"(?m)^name:.*$", f"name: {name}", spec_text, count=1),
                                                encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot create {target}: {exc.strerror or exc}",
                              hint="pick a folder you can write to with --dir") from None
    if as_json:
        emit({"created": str(target), "name": name, "template": template,
              "next": f"cd {target} && fnpack build"})
        return
    out.print(f"created {target}/ from the {template} template. Next:\n  cd {target} && fnpack build",
              highlight=False)


def _check_name(name: str) -> None:
    """NAME must be a valid function name (the spec's rule): a usage error (exit 2) naming it otherwise."""
    from fnpack.spec import parse_spec

    try:
        parse_spec({"name": name, "model": "model.onnx"}, source="NAME")
    except SpecError as exc:
        problem = exc.message.split("- name: ", 1)[-1]
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")
        fixed = re.sub(r"^[^a-z]+", "", fixed)
        hint = f"e.g. {fixed}" if fixed and fixed != name else "e.g. churn-model"
        raise UsageError(f"NAME {problem}", hint=hint) from None


@app.command()
def schema(as_json: bool = _json_option("Print the schema on one line.")) -> None:
    """Print the JSON Schema of fnpack.yaml."""
    from fnpack.spec import json_schema

    if as_json:
        emit(json_schema())
        return
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def version(as_json: bool = _json_option()) -> None:
    """Print fnpack's version (also `fnpack --version`)."""
    if as_json:
        emit({"version": __version__})
        return
    say(__version__)


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
            f"  model    {m['model']['path']} (IR {m['model']['ir_version']}, opsets {m['model']['opsets']})")
        for role in ("inputs", "outputs"):
            tensors = m["model"].get(role)
            if isinstance(tensors, list):
                say(f"  {role:<8} " + (", ".join(_tensor_text(t) for t in tensors) or "(none)"))
        say(f"  built by fnpack {m['fnpack_version']}")
    out.print(f"  size     {human(report['zipped_size'])} zipped, {human(report['unzipped_size'])} unzipped, "
              f"{report['files']} files", highlight=False)
    print_breakdown(report["breakdown"], out)


def _tensor_text(tensor: Any) -> str:
    """`features float32 [-1, 4]`: a tensor of the manifest, its shape as the model declares it (-1 or a
    name for a dimension of any size)."""
    if not isinstance(tensor, dict):
        return str(tensor)
    shape = tensor.get("shape")
    dims = f" [{', '.join(str(d) for d in shape)}]" if isinstance(shape, list) else ""
    return f"{tensor.get('name', '?')} {tensor.get('dtype', '?')}{dims}"
