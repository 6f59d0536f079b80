"""`fnpack canary`: progressive delivery of a version on any target (`fnpack.canary`), its status and abort.

`fnpack canary NAME VERSION` is short for `fnpack canary start NAME VERSION`. Settings come from the options,
then the spec's `canary:` section (./fnpack.yaml, or --spec), then the defaults. Output: one line per step and
verdict, a live line on a terminal; with --json, one JSON object per event (start, step, window, end).
"""


import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from fnpack.cli._app import app, emit, handle_errors, say
from fnpack.errors import FnpackError
from fnpack.cli.platform import (_alias_name, _connect, _context_option, _function_name, _gateway_option,
                                 _kube_context_option, _namespace_option, _read_spec, _region_option,
                                 _state_option, _target_option, _url_option, _version_number)


class _DefaultStart(typer.core.TyperGroup):
    """`fnpack canary NAME VERSION` runs `start`: a first argument that is no subcommand is a function name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


canary_app = typer.Typer(cls=_DefaultStart, no_args_is_help=True,
                         help="Progressive delivery: move an alias to a version step by step, judged by the target's "
                              "metrics, promoted or rolled back by itself. `fnpack canary NAME VERSION` starts one.")
app.add_typer(canary_app, name="canary")


def _prometheus_option() -> Any:
    return typer.Option(None, "--prometheus", metavar="URL", envvar="FNPACK_PROMETHEUS_URL", show_envvar=False,
                        show_default=False, help="A Prometheus server that scrapes the functions' metrics (knative, "
                                                 "openfaas; local: instead of the gateway's own /metrics) "
                                                 "(FNPACK_PROMETHEUS_URL).")


def _alias_option() -> Any:
    return typer.Option("live", "--alias", metavar="ALIAS", help="The alias the rollout moves.")


@canary_app.command("start")
def canary_start(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    version: str = typer.Argument(..., metavar="VERSION", help="The version to roll out (3 or v3)."),
    alias: str = _alias_option(),
    steps: Optional[str] = typer.Option(None, "--steps", metavar="PERCENTS", show_default=False,
                                        help="Canary weights in percent; promotion after the last (default "
                                             "5,25,50,100)."),
    interval: Optional[str] = typer.Option(None, "--interval", metavar="DURATION", show_default=False,
                                           help="Time each step is observed, e.g. 1m or 30s (default 1m)."),
    max_error_rate: Optional[str] = typer.Option(None, "--max-error-rate", metavar="RATE", show_default=False,
                                                 help="The canary's most 5xx answers, e.g. 1% (default 1%)."),
    max_latency: Optional[str] = typer.Option(None, "--max-latency", metavar="pNN=DURATION", show_default=False,
                                              help="The canary's latency limit, e.g. p99=300ms."),
    max_regression: Optional[str] = typer.Option(None, "--max-regression", metavar="FACTOR", show_default=False,
                                                 help="The canary's latency at most FACTOR times the primary's, "
                                                      "e.g. 1.5x."),
    min_requests: Optional[int] = typer.Option(None, "--min-requests", metavar="N", show_default=False,
                                               help="Canary requests a window needs before it is judged "
                                                    "(default 50)."),
    max_wait: Optional[str] = typer.Option(None, "--max-wait", metavar="DURATION", show_default=False,
                                           help="How long a window waits for --min-requests before the rollout "
                                                "halts and rolls back (default 10 intervals, at least 30 s)."),
    load: Optional[str] = typer.Option(None, "--load", metavar="none|samples", show_default=False,
                                       help="samples: send the spec's samples through the alias as synthetic "
                                            "traffic."),
    load_rate: Optional[float] = typer.Option(None, "--load-rate", metavar="PER_SECOND", show_default=False,
                                              help="--load's requests per second (default: enough for "
                                                   "--min-requests at each step)."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", metavar="PATH", show_default=False,
                                             help="The fnpack.yaml (or its folder) with the canary: section and "
                                                  "samples (default ./fnpack.yaml)."),
    prometheus: Optional[str] = _prometheus_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what the rollout would do; change nothing."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per event (start, step, window, end)."),
) -> None:
    """Roll VERSION out on an alias: a canary at each step, judged after each interval; promoted after the last,
    rolled back at once when a threshold fails. Running it again resumes an interrupted rollout."""
    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        number = _version_number(version)
        options = {"steps": steps, "interval": interval, "max_error_rate": max_error_rate,
                   "max_latency": max_latency, "max_regression": max_regression, "min_requests": min_requests,
                   "max_wait": max_wait, "load": load}
        with _connect(target, url, state_dir, spec_path=spec_path, context=context, region=region,
                      namespace=namespace, kube_context=kube_context, gateway=gateway) as remote:
            run_rollout(remote, name, alias, number, options, spec_path, prometheus, load_rate, dry_run, as_json)


@canary_app.command("status")
def canary_status(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    alias: str = _alias_option(),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Where a rollout on the alias stands: its step, its last verdict, and whether it runs on this machine."""
    from fnpack.canary.rollout import status

    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        with _connect(target, url, state_dir, context=context, region=region, namespace=namespace,
                      kube_context=kube_context, gateway=gateway) as remote:
            found = status(remote, name, alias)
    if as_json:
        emit(found)
        return
    if found["under_way"]:
        say(f"{name}:{alias}  rollout of v{found['version']} at {found['weight']}% ({found['state']})")
    else:
        say(f"{name}:{alias}  no rollout under way ({found['state']})")
    if found["last"]:
        last = found["last"]
        say(f"last     {last['reason']}  ({last['actor']}, {last['at']})")
    holder = found["running_here"]
    if holder is not None:
        say(f"running  on this machine, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}")
    elif found["under_way"]:
        say(f"stopped  nothing runs it here: `fnpack canary {name} {found['version']}` resumes it, "
            f"`fnpack canary abort {name}` rolls it back")


@canary_app.command("abort")
def canary_abort(
    name: str = typer.Argument(..., metavar="NAME", help="The function."),
    alias: str = _alias_option(),
    reason: Optional[str] = typer.Option(None, "--reason", metavar="TEXT", help="Why, for the alias history."),
    target: Optional[str] = _target_option(),
    context: Optional[str] = _context_option(),
    url: Optional[str] = _url_option(),
    state_dir: Optional[Path] = _state_option(),
    region: Optional[str] = _region_option(),
    namespace: Optional[str] = _namespace_option(),
    kube_context: Optional[str] = _kube_context_option(),
    gateway: Optional[str] = _gateway_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Roll a rollout back: the alias on its primary version alone (a running rollout sees it and stops)."""
    from fnpack.canary.rollout import abort

    with handle_errors(as_json):
        name, alias = _function_name(name), _alias_name(name, alias)
        with _connect(target, url, state_dir, context=context, region=region, namespace=namespace,
                      kube_context=kube_context, gateway=gateway) as remote:
            move = abort(remote, name, alias, reason)
    if as_json:
        emit({"function": name, "alias": alias, "move": move})
        return
    say(f"aborted  {name}:{alias}  {move.before} -> {move.after}")


def run_rollout(remote: Any, name: str, alias: str, version: int, options: dict[str, Any],
                spec_path: Optional[Path], prometheus: Optional[str], load_rate: Optional[float], dry_run: bool,
                as_json: bool) -> None:
    """A rollout with the CLI's rendering (also `fnpack deploy --canary`); exits 14 when rolled back."""
    from fnpack.canary.load import SampleLoad
    from fnpack.canary.rollout import CanaryFailed, Rollout, terminate_as_interrupt
    from fnpack.errors import ConflictError, UsageError
    from fnpack.versions import Qualifier

    spec = _read_spec(spec_path)
    settings = _canary_settings(spec)
    policy = settings.policy(**{k: v for k, v in options.items() if k != "load"})
    load = options.get("load") or settings.load or "none"
    if load not in ("none", "samples"):
        raise UsageError(f"--load {load!r} is not a kind of load", hint="none, or samples (the spec's samples)")
    traffic = None
    if load == "samples":
        samples = _samples(spec, spec_path)
        traffic = SampleLoad(remote, Qualifier(name, alias=alias), samples, policy.min_requests, policy.interval,
                             load_rate)
    observer = remote.observer(prometheus)
    try:
        if dry_run:
            _print_plan(remote, name, alias, version, policy, observer, load, as_json)
            return
        render = _Renderer(as_json)
        rollout = Rollout(remote, name, alias, version, policy, observer, render, traffic)
        try:
            with terminate_as_interrupt():
                outcome = rollout.run()
        except (CanaryFailed, ConflictError):
            render.finish()
            raise
        except FnpackError as exc:  # the observer failing mid-rollout (no answer, garbage): say where it stands
            render.finish()
            _where_it_stays(exc, remote, name, alias, version)
            raise
        except KeyboardInterrupt:
            render.finish()
            state = remote.aliases(name).get(alias)
            raise CanaryInterrupted(f"interrupted: {name}:{alias} stays at {state or '(not set)'}, a recorded step",
                                    hint=_resume_hint(name, version)) from None
        render.finish()
    finally:
        observer.close()
    if not as_json:
        if outcome.outcome == "already":
            say(f"canary   nothing to do: {outcome.reason}")
        else:
            say(f"promoted {name}:{alias} -> v{version} in {outcome.seconds:.1f} s ({outcome.reason})")


def _where_it_stays(exc: FnpackError, remote: Any, name: str, alias: str, version: int) -> None:
    """An error that stopped a rollout at a canary step says so, and how to resume or abort it."""
    try:
        state = remote.aliases(name).get(alias)
    except Exception:  # noqa: BLE001 - the platform itself may be what failed: the error says enough then
        return
    if state is not None and state.canary == version:
        exc.message = f"{exc.message}; {name}:{alias} stays at {state}, a recorded step"
        exc.hint = (f"{exc.hint}; " if exc.hint else "") + _resume_hint(name, version)


def _resume_hint(name: str, version: int) -> str:
    return f"`fnpack canary {name} {version}` resumes it, `fnpack canary abort {name}` rolls it back"


def _canary_settings(spec: Optional[dict[str, Any]]) -> Any:
    from pydantic import ValidationError

    from fnpack.canary.policy import CanarySettings
    from fnpack.errors import SpecError

    section = (spec or {}).get("canary") or {}
    try:
        return CanarySettings.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(f"canary.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"fnpack.yaml: {problems}", hint="see `fnpack schema` for the canary: section") from None


def _samples(spec: Optional[dict[str, Any]], spec_path: Optional[Path]) -> list[Any]:
    """The spec's samples' request bodies, read as the build reads them (a `file:` one relative to the spec)."""
    from fnpack.build.pipeline import load_samples
    from fnpack.errors import UsageError
    from fnpack.spec import Project, parse_spec

    if not (spec or {}).get("samples"):
        raise UsageError("--load samples needs the spec's samples, and there are none",
                         hint="run it in the function's folder (or pass --spec PATH) whose fnpack.yaml has samples:")
    base = Path(spec_path or ".")
    root = (base if base.is_dir() else base.parent).resolve()
    return [sample["data"] for sample in load_samples(Project(root, parse_spec(spec or {})))]


def _print_plan(remote: Any, name: str, alias: str, version: int, policy: Any, observer: Any, load: str,
                as_json: bool) -> None:
    from fnpack.canary.rollout import alias_state

    state = alias_state(remote, name, alias, rollout=True)
    primary = state.primary
    moves = [f"v{primary} + v{version} at {step}%" for step in policy.windows] + [f"v{version}"]
    if as_json:
        emit({"dry_run": True, "function": name, "alias": alias, "version": version, "now": str(state),
              "moves": moves, "policy": policy.to_dict(), "observer": observer.name, "load": load})
        return
    say(f"canary   {name}:{alias} at {state}: v{version} ({policy.describe()})")
    say(f"figures  from {observer.name}" + (", with the spec's samples as traffic" if load == "samples" else ""))
    for move in moves:
        say(f"move     {move}")
    say("dry run: nothing was changed")


class CanaryInterrupted(FnpackError):
    """Ctrl-C: the alias stays at the step it was at (exit 130, as a shell reports SIGINT)."""

    exit_code = 130
    kind = "interrupted"


class _Renderer:
    """Events as lines (a live one on a terminal) or, with --json, as one JSON object each (progress left out)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.live = not as_json and sys.stderr.isatty()
        self.pending = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if self.as_json:
            if kind != "progress":
                emit({**event, "time": round(time.time(), 3)})
            return
        if kind == "progress":
            if self.live:
                sys.stderr.write("\r\x1b[K" + _progress_text(event))
                sys.stderr.flush()
                self.pending = True
            return
        self.finish()
        if kind == "start":
            resumed = f", resuming at {event['resumed_at']}%" if event["resumed_at"] is not None else ""
            say(f"canary   {event['function']}:{event['alias']} v{event['primary']} -> v{event['version']}{resumed} "
                f"(figures from {event['observer']})")
        elif kind == "step":
            say(f"step     {event['weight']:>3}%  {event['state']}")
        elif kind == "window":
            say(f"window   {event['weight']:>3}%  {event['verdict']}: {event['text']}")

    def finish(self) -> None:
        if self.pending:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.pending = False


def _progress_text(event: dict[str, Any]) -> str:
    def figures(label: str, f: Optional[dict[str, Any]]) -> str:
        if not f:
            return f"{label}: -"
        latency = f" {f['latency_ms']:.0f} ms" if f.get("latency_ms") is not None else ""
        return f"{label}: {f['requests']:.0f} req {f['error_rate']:.1%} err{latency}"

    return (f"{event['weight']:>3}%  {figures('canary', event['canary'])} | {figures('primary', event['primary'])}"
            f"  | next in {event['next_in']:.0f} s")
