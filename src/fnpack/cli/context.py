"""`fnpack context list|use|show|set|remove` and `fnpack login`: the user's named contexts (`fnpack.config`)."""


import sys
from pathlib import Path
from typing import Optional

import typer

from fnpack.cli._app import app, emit, handle_errors, say

context_app = typer.Typer(help="Named places to deploy to (a platform, an AWS account): list, use, show, set, remove.",
                          no_args_is_help=True)
app.add_typer(context_app, name="context")


@context_app.command("list")
def context_list(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The contexts, the current one marked with *."""
    from fnpack.config import Config

    with handle_errors(as_json):
        config = Config.load()
    if as_json:
        emit({"config": str(config.path), "current": config.current,
               "contexts": {n: {"target": c.target, **c.shown()} for n, c in sorted(config.contexts.items())}})
        return
    if not config.contexts:
        say(f"no contexts yet ({config.path}): `fnpack serve` and `fnpack up` add the platform they start; "
            "`fnpack context set NAME --target ...` adds one")
        return
    say(f"{'':2}{'NAME':<20}{'TARGET':<12}WHERE")
    for name, context in sorted(config.contexts.items()):
        say(f"{'*' if name == config.current else '':<2}{name:<20}{context.target:<12}{context.where()}")


@context_app.command("use")
def context_use(name: str = typer.Argument(..., metavar="NAME", help="The context to make current."),
                as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Make a context the current one: commands without --target or --context use it."""
    from fnpack.config import Config

    with handle_errors(as_json):
        config = Config.load()
        config.get(name)
        config.current = name
        config.save()
    if as_json:
        emit({"current": name})
        return
    say(f"current context: {name}")


@context_app.command("show")
def context_show(name: Optional[str] = typer.Argument(None, metavar="NAME",
                                                      help="The context (default: the one in use)."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """A context's target and settings (tokens masked)."""
    from fnpack.config import Config
    from fnpack.errors import UsageError

    with handle_errors(as_json):
        config = Config.load()
        context = config.get(name) if name else config.chosen()
        if context is None:
            raise UsageError("no context is in use", hint="`fnpack context list` shows them; `fnpack context use NAME`")
    if as_json:
        emit({"name": context.name, "target": context.target, "current": context.name == config.current,
               "settings": context.shown()})
        return
    say(f"context  {context.name}{' (current)' if context.name == config.current else ''}")
    say(f"target   {context.target}")
    for key, value in context.shown().items():
        say(f"{key:<9}{value}")


@context_app.command("set")
def context_set(
    name: str = typer.Argument(..., metavar="NAME", help="The context to add or change."),
    target: Optional[str] = typer.Option(None, "--target", "-t", metavar="TARGET",
                                         help="local, aws-lambda, knative or openfaas (needed for a new one)."),
    url: Optional[str] = typer.Option(None, "--url", metavar="URL", help="local: the platform's address."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", metavar="DIR",
                                             help="local: the platform's state folder."),
    region: Optional[str] = typer.Option(None, "--region", metavar="REGION", help="aws-lambda: the AWS region."),
    role: Optional[str] = typer.Option(None, "--role", metavar="ARN", help="aws-lambda: the execution role ARN."),
    bucket: Optional[str] = typer.Option(None, "--bucket", metavar="BUCKET",
                                         help="aws-lambda: the artifacts and history bucket."),
    profile: Optional[str] = typer.Option(None, "--profile", metavar="PROFILE",
                                          help="aws-lambda: the AWS profile (credentials)."),
    kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", metavar="FILE",
                                              help="knative: the kubeconfig (default: KUBECONFIG, ~/.kube/config)."),
    kube_context: Optional[str] = typer.Option(None, "--kube-context", metavar="NAME",
                                               help="knative: the kubeconfig context."),
    namespace: Optional[str] = typer.Option(None, "--namespace", metavar="NAMESPACE", help="knative: the namespace."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URI",
                                          help="knative: model storage, s3://BUCKET[/PREFIX], http(s)://... or "
                                               "pvc://CLAIM[/PATH]."),
    ingress: Optional[str] = typer.Option(None, "--ingress", metavar="URL",
                                          help="knative: the cluster's ingress address for invocations."),
    image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", help="knative, openfaas: the runtime image."),
    gateway: Optional[str] = typer.Option(None, "--gateway", metavar="URL", help="openfaas: the gateway's URL."),
    edition: Optional[str] = typer.Option(None, "--edition", metavar="ce|pro", help="openfaas: the gateway's edition."),
    use: bool = typer.Option(False, "--use", help="Make it the current context too."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Add a context, or change some of its settings (the others are kept)."""
    from fnpack.config import Config, Context
    from fnpack.errors import UsageError
    from fnpack.targets.catalog import TARGETS, target_info

    with handle_errors(as_json):
        config = Config.load()
        existing = config.contexts.get(name)
        kind = target or (existing.target if existing else None)
        if kind is None:
            raise UsageError("a new context needs --target", hint=f"targets are: {', '.join(TARGETS)}")
        given = {"url": url, "state_dir": str(state_dir.resolve()) if state_dir else None, "region": region,
                 "role": role, "bucket": bucket, "profile": profile,
                 "kubeconfig": str(kubeconfig.resolve()) if kubeconfig else None, "kube_context": kube_context,
                 "namespace": namespace, "storage": storage, "ingress": ingress, "image": image, "gateway": gateway,
                 "edition": edition}
        model = target_info(kind).settings_model()
        foreign = sorted(k for k, v in given.items() if v is not None and k not in model.field_names())
        if foreign:
            raise UsageError(f"--{foreign[0].replace('_', '-')} is not a setting of the {kind} target",
                             hint="see `fnpack context set --help`: each option names its target")
        kept = existing.settings if existing and existing.target == kind else {}
        context = Context(name, kind, {**kept, **{k: v for k, v in given.items() if v is not None}})
        model.layer(context.settings, f"context {name}")  # refused now, not at the next command
        config.put(context, use=use)
        config.save()
    if as_json:
        emit({"name": name, "target": kind, "current": config.current == name, "settings": context.shown()})
        return
    say(f"context {name} ({kind}) saved in {config.path}" + (" and in use" if config.current == name else ""))


@context_app.command("remove")
def context_remove(name: str = typer.Argument(..., metavar="NAME", help="The context to remove."),
                   as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Forget a context (nothing deployed is touched)."""
    from fnpack.config import Config

    with handle_errors(as_json):
        config = Config.load()
        config.get(name)
        del config.contexts[name]
        if config.current == name:
            config.current = None
        config.save()
    if as_json:
        emit({"removed": name})
        return
    say(f"context {name} removed")


@app.command()
def login(
    url: str = typer.Argument(..., metavar="URL", help="The platform's address, e.g. https://fnpack.example.com."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="The context to save it as (default: the host)."),
    token: Optional[str] = typer.Option(None, "--token", metavar="TOKEN",
                                        help="The control token (prefer --password-stdin: "
                                                               "shell history keeps arguments)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the token from standard input."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Save a remote platform's URL and control token as a context, after checking the platform takes it."""
    from urllib.parse import urlsplit

    from fnpack.config import Config, Context, check_name
    from fnpack.errors import UsageError
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    with handle_errors(as_json):
        if password_stdin == (token is not None):
            raise UsageError("give the token with exactly one of --password-stdin or --token",
                             hint="e.g. cat token | fnpack login URL --password-stdin")
        secret = (sys.stdin.readline() if password_stdin else token or "").strip()
        if not secret:
            raise UsageError("the token is empty", hint="the platform's token is in STATE_DIR/token on its machine")
        settings = LocalSettings.layer({"url": url, "token": secret}, "the command line")
        with LocalTarget(settings) as remote:
            remote.preflight()  # reachable, and the token accepted (401: a usage error that says so)
        context_name = check_name(name or (urlsplit(settings.url).hostname or "remote").replace(":", "-"))
        config = Config.load()
        config.put(Context(context_name, "local", {"url": settings.url, "token": secret}), use=True)
        config.save()
    if as_json:
        emit({"name": context_name, "url": settings.url, "current": True})
        return
    say(f"logged in to {settings.url}; context {context_name} saved in {config.path} and in use")
