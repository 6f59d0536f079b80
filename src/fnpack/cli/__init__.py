"""The `fnpack` command: parse, call the library, render. Errors end as one message and an exit code."""

from fnpack.cli import build, canary, context, local, platform  # noqa: F401 - importing them registers their commands
from fnpack.cli._app import app, main

__all__ = ["app", "main"]
