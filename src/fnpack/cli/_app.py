"""The Typer app, the consoles and the helpers every command shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from fnpack.errors import FnpackError

app = typer.Typer(help="Package ONNX model functions into deterministic archives and serve them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# soft_wrap: long paths and hints stay on one line when piped (no 80-column wrapping).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def say(text: str) -> None:
    """One line of plain output: no markup, no highlighting (names and JSON print as they are)."""
    out.print(text, highlight=False, markup=False)


def say_err(text: str) -> None:
    err.print(text, highlight=False, markup=False)


def main() -> None:
    app()


@contextmanager
def handle_errors(as_json: bool) -> Iterator[None]:
    """FnpackError -> `error:` + `hint:` (or one JSON object) and its exit code; never a traceback."""
    try:
        yield
    except FnpackError as exc:
        if as_json:
            out.print_json(json.dumps(exc.to_dict()))
        else:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            report = getattr(exc, "report", None)
            if report:
                print_breakdown(report, err)
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


def print_breakdown(report: dict[str, Any], console: Console, top: int = 8) -> None:
    from fnpack.build.budget import human

    console.print("  largest  " + ", ".join(f"{p['name']} {human(p['size'])} ({p['share']:.0%})"
                                            for p in report.get("packages", [])[:top]), highlight=False,
                  markup=False)  # names from an archive may hold "[/]"
    if top > 3:
        for f in report.get("largest_files", [])[:top]:
            console.print(f"           {f['path']}  {human(f['size'])} ({f['share']:.0%})", highlight=False,
                          markup=False)
