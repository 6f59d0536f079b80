"""Commands that deploy and manage functions on a target: serve, deploy, invoke, ls, versions, delete,
alias, rollback, logs, up. Each calls `fnpack.targets` and renders the result (or one JSON object)."""


import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fnpack.cli._app import app, build_progress, emit, err, escape, handle_errors, jsonable, out, say, say_err

alias_app = typer.Typer(help="Point aliases at versions, with an optional canary; list them; show their history.",
                        no_args_is_help=True)
app.add_typer(alias_app, name="alias")


def _target_option() -> Any:
    return typer.Option(None, "--target", "-t", metavar="TARGET", envvar="FNPACK_TARGET", show_envvar=False,
                        show_default=False, help="Where functions live: local, aws-lambda, knative or openfaas "
                                                 "(FNPACK_TARGET; "
                                                 "default: `target:` in fnpack.yaml, else the context's, else local).")


def _region_option() -> Any:
    return typer.Option(None, "--region", metavar="REGION", show_default=False,
                        help="aws-lambda: the AWS region (default: FNPACK_LAMBDA_REGION, the spec, AWS_REGION).")


def _namespace_option() -> Any:
    return typer.Option(None, "--namespace", metavar="NAMESPACE", show_default=False,
                        help="knative: the namespace (default: FNPACK_KNATIVE_NAMESPACE, the spec, the kubeconfig "
                             "context's).")


def _gateway_option() -> Any:
    return typer.Option(None, "--gateway", metavar="URL", show_default=False,
                        help="openfaas: the gateway's URL (default: FNPACK_OPENFAAS_GATEWAY, OPENFAAS_URL, "
                             "http://127.0.0.1:8080; its password: faas-cli login's, or FNPACK_OPENFAAS_PASSWORD).")


def _kube_context_option() -> Any:
    return typer.Option(None, "--kube-context", metavar="NAME", show_default=False,
                        help="knative: the kubeconfig context (default: FNPACK_KUBE_CONTEXT, its current-context).")


def _local_option(field: str, flag: str, metavar: str) -> Any:
    """An option of the local target's settings; its variable and default are the settings model's."""
    from fnpack.targets.local.settings import LocalSettings

    default, variable, description = LocalSettings.describe(field)
    shown = f", default {default}" if default is not None else ""
    return typer.Option(None, flag, metavar=metavar, show_default=False,
                        help=f"{description.rstrip('.')} ({variable}{shown}).")


def _url_option() -> Any:
    return _local_option("url", "--url", "URL")


def _state_option() -> Any:
    return _local_option("state_dir", "--state-dir", "DIR")


def _invoke_token_option() -> Any:
    return _local_option("invoke_token", "--invoke-token", "TOKEN")


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print one JSON object.")


def _context_option() -> Any:
    return typer.Option(None, "--context", metavar="NAME", show_default=False,
                        help="The context to use (see `fnpack context list`; default: FNPACK_CONTEXT, else the "
                             "current one).")


def _connect(target: Optional[str], url: Optional[str], state_dir: Optional[Path], invoke_token: Optional[str] = None,
             spec_path: Optional[Path] = None, context: Optional[str] = None, spec: Optional[dict[str, Any]] = None,
             **flags: Any) -> Any:
    """The target (see `_resolve_target`), configured from the flags (each target's settings model takes
    its own: url and state_dir are the local platform's, region, role, ... aws-lambda's), the variables,
    then the chosen context when it is one of that target. `spec`: the raw spec, when the caller read it
    already (else it is read from `spec_path`)."""
    from fnpack.config import Config
    from fnpack.targets import get_target

    chosen = Config.load().chosen(context)
    spec = spec if spec is not None else _read_spec(spec_path)
    name = _resolve_target(target, spec, chosen.target if chosen else None,
                           explicit=bool(context or os.environ.get("FNPACK_CONTEXT")))
    settings = chosen.settings if chosen and chosen.target == name else None
    return get_target(name, settings, chosen.name if chosen else "", spec=spec, url=url, state_dir=state_dir,
                      invoke_token=invoke_token, **flags)


def _read_spec(path: Optional[Path]) -> Optional[dict[str, Any]]:
    """The raw spec of a function folder, fnpack.yaml or archive (./fnpack.yaml by default); None when
    there is none or it cannot be read (the command reports a broken one itself)."""
    path = path if path is not None else Path(".")
    try:
        if path.is_file() and path.suffix == ".zip":
            from fnpack.targets.deploy import read_deployable

            spec = read_deployable(path).spec  # read once: the deploy's plan reads it again from memory
        else:
            import yaml  # not for an archive: its spec is JSON

            spec_file = path / "fnpack.yaml" if path.is_dir() else path
            spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else None
    except Exception:  # a broken spec or archive is reported by the command itself
        spec = None
    return spec if isinstance(spec, dict) else None


def _resolve_target(target: Optional[str], spec: Optional[dict[str, Any]] = None,
                    context_target: Optional[str] = None, explicit: bool = False) -> str:
    """Which target a command talks to, first wins: --target (FNPACK_TARGET); a context named with
    --context (FNPACK_CONTEXT); the spec's `target:` (of the deployed folder or archive, or of
    ./fnpack.yaml); the current context's; local."""
    if target:
        return target
    if explicit and context_target:
        return context_target
    value = (spec or {}).get("target")
    if isinstance(value, str) and value:
        return value
    return context_target or "local"


def _env_pairs(pairs: Optional[list[str]]) -> Optional[dict[str, str]]:
    """--env KEY=VALUE options as a mapping (None when none were given)."""
    from fnpack.errors import UsageError

    if not pairs:
        return None
    environment = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r} is not KEY=VALUE", hint="e.g. --env LOG_LEVEL=debug")
        environment[key] = value
    return environment


def _function_name(text: str) -> str:
    from fnpack.versions import Qualifier

    return Qualifier.function_name(text)


def _alias_name(name: str, alias: str) -> str:
    from fnpack.versions import Qualifier

    return Qualifier.alias_name(name, alias)


def _version_number(text: str, what: str = "VERSION") -> int:
    from fnpack.errors import UsageError
    from fnpack.versions import VERSION_SPELLING

    spelled = VERSION_SPELLING.fullmatch(text)  # not isdigit(): it takes "²", int() does not
    if not spelled or int(spelled.group(1)) < 1:
        raise UsageError(f"{what} {text!r} is not a version number", hint="versions are 1, 2, ... (or v1, v2, ...)")
    return int(spelled.group(1))


def _move_text(move: Any) -> str:
    before = str(move.before) if move.before else "(new)"
    extra = f"  ({move.reason})" if move.reason else ""
    return f"{before} -> {move.after}{extra}"


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS",
                             help="Address to listen on; other than loopback needs --invoke-token."),
    port: int = typer.Option(8080, "--port", metavar="N", help="Port to listen on."),
    state_dir: Path = typer.Option(Path(".fnpack"), "--state-dir", metavar="DIR", envvar="FNPACK_STATE_DIR",
                                   help="The platform's state folder (registry, archives, token, logs)."),
    invoke_token: Optional[str] = typer.Option(None, "--invoke-token", metavar="TOKEN", envvar="FNPACK_INVOKE_TOKEN",
                                               help="Bearer token invocations must carry."),
    log_level: str = typer.Option("info", "--log-level", metavar="LEVEL",
                                  help="debug, info, warning or error; warning silences the access log."),
) -> None:
    """Run the local platform: a gateway serving every deployed function, versions and aliases."""
    with handle_errors(False):
        from fnpack.config import register_platform
        from fnpack.platform.gateway import serve as run_gateway

        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        register_platform(f"http://{shown}:{port}", state_dir)  # so commands run elsewhere find it
        try:
            run_gateway(host, port, state_dir, invoke_token, log_level=log_level)
        except KeyboardInterrupt:
            pass


def _archive_for(path: Path, target: str, as_json: bool) -> tuple[Path, Any]:
    """(archive to deploy, build result or None): a folder or fnpack.yaml is built, a .zip deployed as is."""
    from fnpack.errors import UsageError

    if path.is_dir() or path.name in ("fnpack.yaml", "fnpack.yml"):
        from fnpack.build.pipeline import build as run_build

        with build_progress(enabled=not as_json) as progress:
            result = run_build(path, target=target, progress=progress)
        if not as_json:
            say_err(f"built    {result.archive}")
        return result.archive, result
    if path.is_file() and path.suffix == ".zip":
        return path, None
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="deploy a function folder (with fnpack.yaml) or a built .zip")
    raise UsageError(f"{path} is neither a function folder nor a .zip archive",
                     hint="deploy a function folder (with fnpack.yaml) or a built .zip")


@app.command()
def deploy(
    path: Path = typer.Argument(Path("."), metavar="PATH",
                                help="A function folder (built first) or a built .zip archive."),
    alias: str = typer.Option("live", "--alias", metavar="ALIAS", help="The alias to point at the deployed version."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Deploy the version; move no alias."),
    canary: bool = typer.Option(False, "--canary", help="Roll the new version out on the alias step by step "
                                                        "(`fnpack canary` with the spec's canary: settings)."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", metavar="URL", envvar="FNPACK_PROMETHEUS_URL",
                                             show_envvar=False, show_default=False,
                                             help="With --canary: the Prometheus server with the functions' "
                                                  "metrics (knative, openfaas)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT", help="Why, for the alias history."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    role: Optional[str] = typer.Option(None, "--role", metavar="ARN", show_default=False,
                                       help="aws-lambda: execution role ARN (default: FNPACK_LAMBDA_ROLE, the spec)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", metavar="BUCKET", show_default=False,
                                         help="aws-lambda: S3 bucket for big archives and the shared alias history "
                                              "(default: FNPACK_LAMBDA_BUCKET, the spec)."),
    function_url: Optional[str] = typer.Option(None, "--function-url", metavar="NONE|AWS_IAM", show_default=False,
                                               help="aws-lambda: give the alias a Function URL with this auth type, "
                                                    "NONE or AWS_IAM (--url is the local platform's address)."),
    memory: Optional[int] = typer.Option(None, "--memory", metavar="MB", show_default=False,
                                         help="aws-lambda: memory in MB (default: the spec's resources.memory)."),
    timeout: Optional[int] = typer.Option(None, "--timeout", metavar="SECONDS", show_default=False,
                                          help="aws-lambda: timeout in seconds (default: resources.timeout)."),
    env: Optional[list[str]] = typer.Option(None, "--env", metavar="KEY=VALUE", show_default=False,
                                            help="aws-lambda, knative, openfaas: an environment variable KEY=VALUE "
                                                 "(repeatable)."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URI", show_default=False,
                                          help="knative, openfaas: model storage for the archive, "
                                               "s3://BUCKET[/PREFIX], "
                                               "http(s)://... or pvc://CLAIM[/PATH] (FNPACK_KNATIVE_STORAGE)."),
    storage_path: Optional[Path] = typer.Option(None, "--storage-path", metavar="DIR", show_default=False,
                                                help="knative, pvc:// storage: where this machine sees the claim's "
                                                     "files."),
    image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", show_default=False,
                                        help="knative, openfaas: the runtime image."),
    storage_secret: Optional[str] = typer.Option(None, "--storage-secret", metavar="SECRET", show_default=False,
                                                 help="knative: a Secret whose keys become the pods' environment; "
                                                      "openfaas: a secret holding an AWS credentials file."),
    edition: Optional[str] = typer.Option(None, "--edition", metavar="ce|pro", show_default=False,
                                          help="openfaas: what the gateway honours (default ce: no scale to zero, "
                                               "no GPU profiles, at most 15 functions)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FORMAT", show_default=False,
                                         help="With --dry-run: yaml prints the manifests the target would apply "
                                              "(knative; openfaas: a stack.yml for faas-cli), for GitOps."),
    as_json: bool = _json_option(),
) -> None:
    """Deploy a function as a new version (the same archive again gives the existing one) and promote it.

    On aws-lambda, --function-url NONE|AWS_IAM gives the promoted alias a Function URL (printed after the
    deploy); it is a separate flag because --url already names the local platform's address.
    """
    from fnpack.errors import UsageError

    with handle_errors(as_json):
        if not no_promote:
            _alias_name("fn", alias)
        if output not in (None, "yaml"):
            raise UsageError(f"--output {output!r} is not a format deploy prints", hint="use -o yaml with --dry-run, "
                                                                                       "or --json")
        if canary and no_promote:
            raise UsageError("--canary rolls the version out on --alias; --no-promote moves no alias",
                             hint="use one of them")
        if output and not dry_run:
            raise UsageError("-o yaml prints what a deploy would apply: it needs --dry-run",
                             hint="fnpack deploy --dry-run -o yaml > manifests.yaml")
        flags = {"region": region, "role": role, "bucket": bucket, "function_url": function_url, "memory": memory,
                 "timeout": timeout, "environment": _env_pairs(env), "namespace": namespace,
                 "kube_context": kube_context, "storage": storage, "storage_path": storage_path, "image": image,
                 "storage_secret": storage_secret, "gateway": gateway, "edition": edition}
        spec = _read_spec(path)
        with _connect(target, url, state_dir, spec_path=path, context=context, spec=spec, **flags) as remote:
            remote.preflight(spec)  # a platform that is not there fails before the build
            archive, built = _archive_for(path, remote.name, as_json)
            plan = remote.plan_deploy(archive, None if no_promote or canary else alias, reason)
            rollout = canary and alias in plan.remote.aliases
            if canary and not rollout:  # nothing on the alias to compare with: a first version is promoted
                plan = remote.plan_deploy(archive, alias, reason)
            if dry_run:
                if output == "yaml":
                    sys.stdout.write(remote.export(plan))
                    return
                if as_json:
                    emit({"dry_run": True, "plan": plan.to_dict()})
                    return
                from fnpack.targets.deploy import describe

                for line in describe(plan):
                    say(line)
                return
            result = remote.execute(plan)
            notes = list(getattr(remote, "notes", []))  # e.g. the outcome checked after a dropped connection
            if canary and not rollout:
                notes.append(f"no version was on {alias} yet: v{result.version.number} was promoted at once, "
                             "with no canary")
            _print_deployed(plan, result, built, notes, as_json, rollout)
            if rollout:
                from fnpack.cli.canary import run_rollout

                run_rollout(remote, plan.function, alias, result.version.number, {}, path, prometheus, None, False,
                            as_json)


def _print_deployed(plan: Any, result: Any, built: Any, notes: list[str], as_json: bool, canary: bool) -> None:
    if as_json:
        emit({"dry_run": False, "plan": plan.to_dict(), **result.to_dict(),
               "build": {"archive": str(built.archive), "sha256": built.sha256} if built else None,
               **({"notes": notes} if notes else {})})
        return
    for note in notes:
        say_err(f"note     {note}")
    version = result.version
    say(f"deployed {version.function} v{version.number} " +
        ("(new version)" if result.created else "(this archive was already deployed)"))
    if result.alias is None:
        say("alias    none moved yet (--canary: the rollout moves it)" if canary else
            "alias    none moved (--no-promote)")
    elif result.move is None:
        say(f"alias    {result.alias} already at v{version.number}")
    else:
        say(f"alias    {result.alias}: {_move_text(result.move)}")
    say(f"invoke   {result.url}")


def _read_payload(data: Optional[str], file: Optional[Path]) -> Any:
    from fnpack.errors import UsageError

    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --file {file}: {exc.strerror}") from None
        where = f"--file {file}"
    else:
        text, where = data or "", "--data"
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where} is not JSON: {exc}", hint='e.g. --data \'{"x": 1}\'') from None


@app.command()
def invoke(
    qualifier: str = typer.Argument(..., metavar="QUALIFIER",
                                    help="NAME (its live alias), NAME:ALIAS or NAME:VERSION."),
    data: Optional[str] = typer.Option(None, "--data", "-d", metavar="JSON",
                                       help="The request: a JSON record or list of records."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", metavar="FILE",
                                        help="Read the request from a JSON file (- for standard input)."),
    batch: Optional[Path] = typer.Option(None, "--batch", metavar="FILE",
                                         help="Score a JSON Lines file (- for standard input), one request "
                                                               "a line."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                            help="--batch: where the answers go (JSON Lines; "
                                                                      "default: standard output)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", metavar="N", help="--batch: requests in flight at once."),
    invoke_token: Optional[str] = _invoke_token_option(),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    ingress: Optional[str] = typer.Option(None, "--ingress", metavar="URL", show_default=False,
                                          help="knative: the cluster's ingress http(s)://HOST[:PORT], sent the "
                                               "route's Host header (FNPACK_KNATIVE_INGRESS)."),
    as_json: bool = _json_option(),
) -> None:
    """Call a deployed function and print its answer; or score a file with --batch.

    The request is --data, --file, or standard input when it is not a terminal
    (`echo '{...}' | fnpack invoke iris`).

    With --batch, the answers are written to --out (else standard output) in input order, one line per
    input line, so that line N answers line N: a blank line is answered `null`, a failed record (not
    JSON, or refused by the function) {"error": ..., "line": n}, reported on stderr. The exit code is 1
    when any record failed, 0 when all were scored.
    """
    from fnpack.errors import UsageError
    from fnpack.versions import Qualifier

    with handle_errors(as_json):
        parsed = Qualifier.parse(qualifier)
        given = sum(x is not None for x in (data, file, batch))
        if given == 0 and not sys.stdin.isatty():
            file = Path("-")  # a request piped in, as faas-cli invoke reads it
        elif given != 1:
            raise UsageError("give exactly one of --data, --file or --batch (or pipe the request in)",
                             hint=f"e.g. fnpack invoke {parsed} --data '{{...}}'")
        if out_path is not None and batch is None:
            raise UsageError("--out goes with --batch", hint="--batch in.jsonl --out out.jsonl")
        if batch is not None:
            _invoke_batch(parsed, batch, out_path, concurrency, as_json,
                          _connect(target, url, state_dir, invoke_token, region=region, namespace=namespace,
                                   kube_context=kube_context, ingress=ingress, gateway=gateway,
                                   context=context))
            return
        payload = _read_payload(data, file)
        with _connect(target, url, state_dir, invoke_token, region=region, namespace=namespace,
                                   kube_context=kube_context, ingress=ingress, gateway=gateway,
                                   context=context) as remote:
            answer = remote.invoke(parsed, payload)
    if as_json:
        emit({"qualifier": str(parsed), "version": answer.version, "answer": answer.body})
    else:
        sys.stdout.write(json.dumps(answer.body, indent=2) + "\n")


def _invoke_batch(qualifier: Any, source: Path, out_path: Optional[Path], concurrency: int, as_json: bool,
                  remote: Any) -> None:
    from fnpack.invoke_batch import BatchError, count_records, score_file

    shown = 0

    def on_failure(line: int, message: str) -> None:
        nonlocal shown
        shown += 1
        if not as_json and shown <= 20:
            err.print(f"[red]line {line}:[/] {escape(message)}", highlight=False)

    with remote:
        if err.is_terminal and not as_json:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            total = count_records(source) if str(source) == "-" or source.is_file() else None
            with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=err.get(), transient=True) as bar:
                task = bar.add_task("scoring", total=total)
                summary = score_file(remote, qualifier, source, out_path, concurrency,
                                     on_record=lambda: bar.advance(task), on_failure=on_failure)
        else:
            summary = score_file(remote, qualifier, source, out_path, concurrency, on_failure=on_failure)
    if as_json:
        if out_path is None:  # standard output holds the answers: the summary goes beside them
            sys.stderr.write(json.dumps(summary.to_dict(), default=str) + "\n")
        else:
            emit(summary.to_dict())
        if summary.failed:
            raise typer.Exit(BatchError.exit_code)
        return
    if shown > 20:
        say_err(f"... and {shown - 20} more failed record(s)")
    rate = f", {summary.records / summary.seconds:.0f}/s" if summary.seconds else ""
    say_err(f"scored {summary.records} record(s) in {summary.seconds:.1f} s{rate}: {summary.ok} ok, "
            f"{summary.failed} failed -> {summary.out}")
    if summary.failed:
        raise BatchError(f"{summary.failed} of {summary.records} record(s) failed; their lines in {summary.out} "
                         "hold {\"error\", \"line\"}")


@app.command()
def describe(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Show a function: its URLs, versions (sha256, target), aliases with weights, what runs, recent errors."""
    with handle_errors(as_json):
        name = _function_name(name)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            found = remote.describe(name)
    if as_json:
        emit(found)
        return
    users = {v.number: sorted(a for a, s in found.aliases.items() if v.number in s.versions) for v in found.versions}
    say(f"function {found.function} on {found.target}")
    say("urls")
    for qualifier, where in found.urls.items():
        say(f"  {qualifier:<24}{where}")
    say("aliases" + ("" if found.aliases else "  none"))
    for alias, state in sorted(found.aliases.items()):
        say(f"  {alias:<16}{state}")
    say("versions")
    for v in found.versions:
        say(f"  v{v.number:<6}{v.sha256[:12]}  {v.target or '-':<11}{v.created_at:<26}"
            f"{', '.join(users[v.number]) or '-'}")
    if found.instances:
        say("instances")
        for unit in found.instances:
            if "workers" in unit:  # the local platform's pool of a version
                shown = ", ".join(f"pid {w['pid']} {w['state']}" for w in unit["workers"]) or "none (scaled to zero)"
                starting = f", {unit['starting']} starting" if unit.get("starting") else ""
                say(f"  v{unit['version']:<6}{shown}{starting}")
                continue
            label = unit.get("revision") or unit.get("function") or f"v{unit.get('version')}"  # a cluster's unit
            say(f"  {label:<24}" + ", ".join(f"{key} {value}" for key, value in unit.items()
                                             if key not in ("revision", "function") and value is not None))
    for key, value in found.details.items():
        say(f"{key:<9}{value}")
    say("recent errors" + ("" if found.recent_errors else "  none"))
    for line in found.recent_errors:
        say(f"  {line}")


@app.command("ls")
def list_functions(
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """List the deployed functions with their versions and aliases."""
    with handle_errors(as_json), _connect(target, url, state_dir, region=region, namespace=namespace,
            kube_context=kube_context, gateway=gateway, context=context) as remote:
        functions = remote.functions()
    if as_json:
        emit({"functions": functions})
        return
    if not functions:
        say("no functions deployed yet (fnpack deploy PATH)")
        return
    say(f"{'NAME':<24}{'VERSIONS':>9}{'LATEST':>8}  ALIASES")
    for f in functions:
        aliases = ", ".join(f"{a} -> {s}" for a, s in sorted(f.aliases.items())) or "-"
        say(f"{f.name:<24}{f.versions:>9}{'v' + str(f.latest):>8}  {aliases}")


@app.command()
def versions(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """List a function's versions: number, archive sha256, when, who, and the aliases using each."""
    with handle_errors(as_json):
        name = _function_name(name)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            found = remote.versions(name)
            aliases = remote.aliases(name)
    users = {v.number: sorted(a for a, s in aliases.items() if v.number in s.versions) for v in found}
    if as_json:
        emit({"function": name, "versions": [{**jsonable(v), "aliases": users[v.number]} for v in found]})
        return
    say(f"{'VERSION':<9}{'SHA256':<14}{'TARGET':<12}{'CREATED':<26}{'BY':<24}ALIASES")
    for v in found:
        say(f"{'v' + str(v.number):<9}{v.sha256[:12]:<14}{v.target or '-':<12}{v.created_at:<26}{v.actor:<24}"
            f"{', '.join(users[v.number]) or '-'}")


@app.command()
def delete(
    qualifier: str = typer.Argument(..., metavar="QUALIFIER",
                                    help="NAME (the function, its versions and aliases) or NAME:VERSION."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete a whole function without asking."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Delete a version (refused while an alias uses it) or a whole function (asks first, or --yes)."""
    from fnpack.errors import UsageError
    from fnpack.versions import Qualifier

    with handle_errors(as_json):
        parsed = Qualifier.parse(qualifier)
        if parsed.alias:
            raise UsageError(f"{qualifier!r}: delete takes NAME or NAME:VERSION, not an alias",
                             hint=f"`fnpack versions {parsed.name}` shows which version {parsed.alias} uses")
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            if parsed.version is None and not yes:
                _confirm_delete(remote, parsed.name, as_json)
            deleted = remote.delete(parsed.name, parsed.version)
    if as_json:
        emit({"deleted": deleted})
        return
    numbers = ", ".join(f"v{v.number}" for v in deleted)
    say(f"deleted {parsed.name} " + (numbers if parsed.version else f"(all versions: {numbers}, and its aliases)"))


def _confirm_delete(remote: Any, name: str, as_json: bool) -> None:
    """Ask before a whole function goes (its versions, the aliases serving them); without a terminal to
    ask on, refuse: `--yes` says it was meant, as SAM's delete --no-prompts does."""
    from fnpack.errors import UsageError

    versions = remote.versions(name)
    aliases = remote.aliases(name)
    what = (f"{name}: {len(versions)} version(s) ({', '.join(f'v{v.number}' for v in versions)})" +
            (f" and alias(es) {', '.join(f'{a} -> {s}' for a, s in sorted(aliases.items()))}" if aliases else ""))
    if as_json or not sys.stdin.isatty():
        raise UsageError(f"deleting the whole function removes {what}; nothing was deleted",
                         hint=f"add --yes to delete it (fnpack delete {name} --yes), or delete one version with "
                              f"{name}:VERSION")
    if not typer.confirm(f"delete {what}?", default=False, err=True):
        raise typer.Exit(1)


@alias_app.command("set")
def alias_set(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    alias: str = typer.Argument(..., metavar="ALIAS", help="The alias, e.g. live."),
    version: str = typer.Argument(..., metavar="VERSION", help="The primary version (3 or v3)."),
    canary: Optional[str] = typer.Option(None, "--canary", metavar="VERSION",
                                         help="A second version that gets --weight of traffic."),
    weight: Optional[float] = typer.Option(None, "--weight", metavar="FRACTION",
                                           help="The canary's share of traffic, in [0, 1]."),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT", help="Why, for the alias history."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Point an alias at a version, or split it between a primary and a canary version."""
    from fnpack.errors import UsageError
    from fnpack.versions import AliasState

    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        primary = _version_number(version)
        canary_number = _version_number(canary, "--canary") if canary is not None else None
        if canary_number is not None and weight is None:
            raise UsageError("--canary needs --weight", hint="e.g. --canary 3 --weight 0.1 sends 10% to v3")
        if canary_number is None and weight is not None:
            raise UsageError("--weight needs --canary", hint="e.g. --canary 3 --weight 0.1 sends 10% to v3")
        state = AliasState(primary, canary_number, weight or 0.0)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            move = remote.set_alias(name, alias, state, reason)
    if as_json:
        emit({"function": name, "alias": alias, "move": move})
        return
    say(f"{name}:{alias}  {_move_text(move)}")


@alias_app.command("list")
def alias_list(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """List a function's aliases and where each sends traffic."""
    with handle_errors(as_json):
        name = _function_name(name)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            aliases = remote.aliases(name)
    if as_json:
        emit({"function": name, "aliases": aliases})
        return
    if not aliases:
        say(f"{name} has no aliases (fnpack alias set {name} live VERSION)")
        return
    say(f"{'ALIAS':<16}SENDS TRAFFIC TO")
    for alias, state in sorted(aliases.items()):
        say(f"{alias:<16}{state}")


@alias_app.command("history")
def alias_history(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    alias: str = typer.Argument(..., metavar="ALIAS", help="The alias."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Every move of an alias, oldest first: when, who, from, to, why."""
    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            history = remote.history(name, alias)
    if as_json:
        emit({"function": name, "alias": alias, "history": history})
        return
    for index, move in enumerate(history):
        undoes = f"  (rollback of #{move.undoes})" if move.undoes is not None else ""
        say(f"#{index:<3}{move.at:<26}{move.actor:<24}{_move_text(move)}{undoes}")


@app.command()
def rollback(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    alias: str = typer.Argument("live", metavar="ALIAS", help="The alias to move back."),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT", help="Why, for the alias history."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Restore an alias to where it was before its last move; again to go one further back."""
    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            move = remote.rollback(name, alias, reason)
    if as_json:
        emit({"function": name, "alias": alias, "move": move})
        return
    say(f"{name}:{alias} rolled back: {_move_text(move)}")


@app.command()
def logs(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until interrupted."),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", metavar="N", show_default=False,
                                       help="Start with the last N lines (default: 100, or all with --since)."),
    since: Optional[str] = typer.Option(None, "--since", metavar="TIME", show_default=False,
                                        help="Only lines from this time on: a duration (30s, 10m, 2h, 1d) or an "
                                             "ISO 8601 time (2026-12-01T10:00:00Z)."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = _json_option(),
) -> None:
    """Print a function's logs: its workers' output and the platform's events about them.

    The platform's lines start with a UTC time (2026-12-01T10:00:00.000Z); a worker's own lines count
    as written when the last timed line before them was, for --since.
    """
    from fnpack.errors import UsageError

    with handle_errors(as_json):
        name = _function_name(name)
        if tail is not None and tail < 0:
            raise UsageError(f"--tail {tail}: expected 0 or more lines")
        if as_json and follow:
            raise UsageError("--json cannot be combined with --follow", hint="drop --json to stream the logs")
        keep = _SinceFilter(_since(since)) if since else None
        lines = tail if tail is not None else (1_000_000 if since else 100)
        with _connect(target, url, state_dir, region=region, namespace=namespace,
                kube_context=kube_context, gateway=gateway, context=context) as remote:
            chunks = remote.logs(name, lines, follow and not as_json)
            if keep is not None:
                chunks = keep(chunks)
            if as_json:
                emit({"function": name, "lines": "".join(chunks).splitlines()})
                return
            try:
                for chunk in chunks:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                pass


def _since(text: str) -> Any:
    """--since as an aware UTC datetime: 30s, 10m, 2h, 1d ago, or an ISO 8601 time (UTC if no zone)."""
    import re
    from datetime import datetime, timedelta, timezone

    from fnpack.errors import UsageError

    if match := re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text):
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a duration nor a time",
                         hint="e.g. --since 10m, --since 2h or --since 2026-12-01T10:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class _SinceFilter:
    """Keeps the log lines written at or after a time, across chunk boundaries."""

    def __init__(self, cutoff: Any) -> None:
        self.cutoff = cutoff
        self.keeping = False  # lines before the first timed one are older than anything known

    def __call__(self, chunks: Any) -> Any:
        from datetime import datetime

        partial = ""
        for chunk in chunks:
            partial += chunk
            *whole, partial = partial.split("\n")
            kept = []
            for line in whole:
                stamp = line.split(" ", 1)[0]
                if stamp[:4].isdigit() and "T" in stamp:
                    try:
                        self.keeping = datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= self.cutoff
                    except ValueError:
                        pass
                if self.keeping:
                    kept.append(line + "\n")
            if kept:
                yield "".join(kept)
        if partial and self.keeping:
            yield partial


@app.command()
def up(
    path: Path = typer.Argument(Path("."), metavar="PATH", help="The function folder (holding fnpack.yaml)."),
    invoke_token: Optional[str] = _invoke_token_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    as_json: bool = _json_option(),
) -> None:
    """Quickstart: build, start a platform if none answers, deploy as live, call the samples, show how to call it.

    It prints the invoke URL, a curl command and a Python snippet using the first sample.

    A platform it starts runs in the background: its output goes to STATE_DIR/gateway.log and its
    process id to STATE_DIR/gateway.pid (stop it with `fnpack down`).
    """
    import shlex

    from fnpack.build.smoke import subset
    from fnpack.versions import Qualifier

    with handle_errors(as_json):
        from fnpack.build.pipeline import load_samples
        from fnpack.platform.launch import ensure_platform
        from fnpack.build.pipeline import build as run_build
        from fnpack.spec import load_project

        project = load_project(path)
        samples = load_samples(project)
        with build_progress(enabled=not as_json) as progress:
            built = run_build(path, target="local", progress=progress)
        if not as_json:
            say(f"built     {built.archive}")
        with _connect("local", url, state_dir, invoke_token) as remote:
            invoke_token = remote.settings.invoke_token
            platform = ensure_platform(remote, remote.settings.state_dir, invoke_token,
                                       say=(lambda _: None) if as_json else say)
            from fnpack.config import register_platform

            platform["context"] = register_platform(remote.url, remote.settings.state_dir)
            result = remote.deploy(built.archive, "live", "fnpack up")
            if not as_json:
                moved = f"; live: {_move_text(result.move)}" if result.move else f"; live already at v{result.version.number}"
                say(f"deployed  {result.version.function} v{result.version.number} "
                    f"({'new version' if result.created else 'already deployed'}){moved}")
            answers = []
            for i, sample in enumerate(samples, 1):
                answer = remote.invoke(Qualifier(result.version.function), sample["data"])
                matches = sample.get("expect") is None or subset(sample["expect"], answer.body)
                answers.append({"sample": i, "request": sample["data"], "answer": answer.body,
                                "version": answer.version, "matches_expect": matches})
                if not as_json:
                    mark = "" if sample.get("expect") is None else ("  [green]ok[/]" if matches else
                                                                   "  [yellow]differs from expect[/]")
                    out.print(f"sample {i:<3}{escape(json.dumps(answer.body))}{mark}", highlight=False)
    invoke_url = result.url
    example = samples[0]["data"] if samples else {}
    auth = ["-H", f"Authorization: Bearer {invoke_token}"] if invoke_token else []
    curl = shlex.join(["curl", "-s", invoke_url, "-H", "Content-Type: application/json", *auth, "-d",
                       json.dumps(example)])
    headers = f", headers={{'Authorization': 'Bearer {invoke_token}'}}" if invoke_token else ""
    python = f"import httpx\nprint(httpx.post({invoke_url!r}, json={example!r}{headers}).json())"
    if as_json:
        emit({"build": {"archive": str(built.archive), "sha256": built.sha256}, "platform": platform,
               **result.to_dict(), "samples": answers, "invoke_url": invoke_url, "curl": curl, "python": python})
        return
    say(f"invoke    {invoke_url}\n\n  {curl}\n\n" + "\n".join(f"  {line}" for line in python.splitlines()) +
        "\n")
    if platform["started"]:
        say(f"the platform runs in the background (pid {platform['pid']}, log {platform['log']}); "
            f"stop it with: fnpack down --state-dir {remote.settings.state_dir}")
