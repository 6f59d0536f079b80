"""The Typer app, the consoles and the helpers every command shares.

One output contract for every command: with `--json`, exactly one JSON object on one line on stdout
(`emit`), and an error as one JSON object holding its `exit_code` on stderr (`handle_errors`, and
`main` for the command-line parser's own errors), so that `fnpack ... --json | jq` never reads an
error as a result. Without `--json`, results go to stdout and `error:` / `hint:` lines to stderr.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Optional

import typer

from fnpack import __version__
from fnpack.errors import FnpackError

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich Console made at its first use: importing rich costs a command that prints JSON, or prints
    nothing, ~40 ms it does not need to spend."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


# soft_wrap: long paths and hints stay on one line when piped (no 80-column wrapping).
out = LazyConsole(soft_wrap=True)
err = LazyConsole(stderr=True, soft_wrap=True)


_TAG_START = re.compile(r"\[[a-z#/@]")  # how every rich tag starts: "[0, 1]" is no tag


def escape(text: str) -> str:
    """Text with what rich would read as markup escaped (rich.markup is imported only when needed)."""
    if not _TAG_START.search(text) and not text.endswith("\\"):  # nothing rich.markup.escape would change
        return text
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# The control characters rich's Text drops (bell, backspace, vertical tab, form feed, carriage return): plain
# lines drop them too, so that text from elsewhere (a name, a log line) cannot rewrite the terminal's line.
_CONTROL = dict.fromkeys((7, 8, 11, 12, 13))


def _line(stream: Any, text: str) -> None:
    stream.write(text.translate(_CONTROL) + "\n")
    stream.flush()


def say(text: str) -> None:
    """One line of plain output: no markup, no highlighting (names and JSON print as they are). Written as it is
    rather than through rich: a command whose output is plain lines need not import rich."""
    _line(sys.stdout, text)


def say_err(text: str) -> None:
    _line(sys.stderr, text)


# --- JSON output -------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists, paths to strings, all the way down."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def _one_line(data: Any) -> str:
    return json.dumps(jsonable(data), default=str, separators=(", ", ": "))


def emit(data: Any) -> None:
    """The result of a `--json` command: one JSON object on one line of stdout (safe to pipe into jq)."""
    sys.stdout.write(_one_line(data) + "\n")
    sys.stdout.flush()


def emit_error(data: dict[str, Any]) -> None:
    """An error under `--json`: one JSON object on one line of stderr, holding `exit_code`."""
    sys.stderr.write(_one_line(data) + "\n")
    sys.stderr.flush()


@contextmanager
def handle_errors(as_json: bool) -> Iterator[None]:
    """FnpackError -> `error:` + `hint:` on stderr (or one JSON object there) and its exit code; never a
    traceback."""
    try:
        yield
    except FnpackError as exc:
        if as_json:
            emit_error(exc.to_dict())
        else:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            report = getattr(exc, "report", None)
            if report:
                print_budget_report(report, err)
            if exc.hint:
                err.print(f"[bold]hint:[/] {escape(exc.hint)}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def build_progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on stderr (silent when disabled or not a terminal)."""
    if not enabled or not err.is_terminal:
        yield lambda _: None
        return
    with err.status("building") as status:
        yield lambda step: status.update(step)


# --- size reports ------------------------------------------------------------------------------------------


def print_breakdown(report: dict[str, Any], console: Console | LazyConsole, top: int = 8) -> None:
    """Where the bytes go: the largest owners, then (top > 3) the largest files, by the report's measure
    (zipped or unzipped, named on the line) and in its unit (binary units when it has none)."""
    from fnpack.build.budget import format_size

    measure, unit, unit_bytes = report.get("measure", "unzipped"), report.get("unit"), report.get("unit_bytes")
    key = "zipped" if measure == "zipped" else "size"

    def size(entry: dict[str, Any]) -> str:
        return format_size(entry.get(key, entry.get("size", 0)), unit, unit_bytes)

    label = f"  largest ({measure})"
    console.print(label + "  " + ", ".join(f"{p['name']} {size(p)} ({p['share']:.0%})"
                                           for p in report.get("packages", [])[:top]),
                  highlight=False, markup=False)  # names from an archive may hold "[/]"
    if top > 3:
        indent = " " * (len(label) + 2)
        for f in report.get("largest_files", [])[:top]:
            console.print(f"{indent}{f['path']}  {size(f)} ({f['share']:.0%})", highlight=False, markup=False)


def print_budget_report(report: dict[str, Any], console: Console | LazyConsole) -> None:
    """An over-budget build's report: one breakdown per limit exceeded, each in that limit's measure and
    unit (the message and hint are printed around it)."""
    for view in report.get("over") or [report]:
        print_breakdown(view, console)


# --- help texts --------------------------------------------------------------------------------------------


def _metavar(option: Any) -> str:
    """What an option's value is called in help: its choices, else its long name (`--state-dir STATE_DIR`)."""
    choices = getattr(getattr(option, "type", None), "choices", None)
    if choices:
        return "|".join(str(c) for c in choices)
    longest = max(option.opts, key=len).lstrip("-")
    return longest.upper().replace("-", "_")


def _plain_types() -> None:
    """Typer (0.28, with its own copy of click) shows each parameter's Python type in help: `--json <bool>`,
    `archive <path>`, `--target <str>`. Show nothing for flags and arguments (the name says it) and a
    metavar (`--out DIR`, or the option's name) for options that take a value. Typer has no setting for
    this: options get a metavar when they are made, and each argument's type a metavar of "" (the rich
    help prints `<TYPE>` only for a type whose metavar is None), once, for every command (the platform's too)."""
    core = typer.core
    option_init, argument_init = core.TyperOption.__init__, core.TyperArgument.__init__

    def option(self: Any, *args: Any, **kwargs: Any) -> None:
        option_init(self, *args, **kwargs)
        if not (self.is_flag or self.count or self.metavar):
            self.metavar = _metavar(self)

    def argument(self: Any, *args: Any, **kwargs: Any) -> None:
        argument_init(self, *args, **kwargs)
        self.type = _untyped(self.type)

    core.TyperOption.__init__, core.TyperArgument.__init__ = option, argument


def _untyped(param_type: Any) -> Any:
    """A copy of a click type whose metavar is "" (still an instance of its class: conversion is unchanged)."""
    untyped = copy.copy(param_type)
    untyped.__class__ = _untyped_class(type(param_type))
    return untyped


@functools.cache
def _untyped_class(cls: type) -> type:
    return type(cls.__name__, (cls,), {"get_metavar": lambda self, param, ctx=None: ""})


_plain_types()

_BREAK = re.compile(r"(?<=\S)[ \t]*\n[ \t]*(?=\S)")


def reflow(text: Optional[str]) -> Optional[str]:
    """Help text with each paragraph on one line, so that it wraps at the terminal's width: Typer's rich
    help keeps a docstring's line breaks, which breaks sentences mid-way. Paragraphs that start with
    click's no-rewrap marker (\\b) and lines that start a list item (`- `, `* `) keep their breaks."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    kept = []
    for paragraph in paragraphs:
        if paragraph.startswith("\b") or re.search(r"(?m)^\s*[-*] ", paragraph):
            kept.append(paragraph)
        else:
            kept.append(_BREAK.sub(" ", paragraph))
    return "\n\n".join(kept)


def _tidy(command: Any, rich_markup: bool) -> None:
    """Reflow the help of a command, its parameters and its subcommands; with rich markup, escape what rich
    would read as a tag (an option's help saying "[default: PATH/dist]" otherwise prints "Output folder ."). Once
    per command object: escaping twice would double the escapes."""
    if getattr(command, "_fnpack_tidy", False):
        return
    command._fnpack_tidy = True
    command.help = reflow(command.help)
    if rich_markup and command.help:
        command.help = escape(command.help)
    for param in getattr(command, "params", []):
        help_text = getattr(param, "help", None)
        if help_text:
            param.help = escape(reflow(help_text)) if rich_markup else reflow(help_text)
    for sub in (getattr(command, "commands", None) or {}).values():
        _tidy(sub, rich_markup)


def _tidy_before_help() -> None:
    """Tidy a command's help (and its subcommands': the root's help lists them) when it is about to be shown,
    not every command's at every start: escaping it imports rich, which a command run without --help skips."""
    for cls in (typer.core.TyperCommand, typer.core.TyperGroup):
        def format_help(self: Any, ctx: Any, formatter: Any, _shown: Any = cls.format_help) -> None:
            rich = bool(getattr(typer.core, "HAS_RICH", False)) and getattr(self, "rich_markup_mode", None) == "rich"
            _tidy(self, rich)
            _shown(self, ctx, formatter)

        cls.format_help = format_help


_tidy_before_help()

app = typer.Typer(help="Package ONNX model functions into deterministic archives and serve them.",
                  add_completion=True, rich_markup_mode="rich", pretty_exceptions_enable=False)


def _print_version(value: bool) -> None:
    if value:
        say(__version__)
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print fnpack's version and exit."),
) -> None:
    """Package ONNX model functions into deterministic archives and serve them."""
    if ctx.invoked_subcommand is None:  # bare `fnpack`: the help, and success (click's no_args_is_help exits 2)
        text = ctx.get_help()  # Typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        raise typer.Exit(0)


# --- the entry point ---------------------------------------------------------------------------------------


def _wants_json(args: list[str]) -> bool:
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


def _usage_error(exc: Any) -> dict[str, Any]:
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "fnpack"
    return {"error": "usage", "message": exc.format_message(), "hint": f"see `{path} --help`",
            "exit_code": exc.exit_code}


def main() -> None:
    """`fnpack`: run the app; the parser's own errors (unknown option, bad value, missing argument) exit 2,
    as one JSON object on stderr under `--json`, else as Typer shows them."""
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    abort = typer.Abort
    try:
        code = app(standalone_mode=False, prog_name="fnpack")  # the same name under `python -m fnpack`
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `fnpack alias`: its help is printed; as bare `fnpack`, 0
            sys.exit(0)
        if _wants_json(sys.argv[1:]):
            emit_error(_usage_error(exc))
        else:
            try:
                from typer import rich_utils

                rich_utils.rich_format_error(exc)
            except ImportError:  # pragma: no cover - typer without rich
                exc.show()
        sys.exit(exc.exit_code)
    except abort:
        err.print("Aborted.", highlight=False, markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
