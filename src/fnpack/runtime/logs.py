"""The runtime's logger, imported on first use: logging's import is a few ms of every Lambda cold start,
and a function that logs nothing (the common case) never needs it."""

from __future__ import annotations

import sys
from typing import Any


def log() -> Any:
    import logging

    return logging.getLogger("fnpack.runtime")


def info(message: str, *args: Any) -> None:
    """An INFO line, only where logging is in use already (a server configured it): where nothing imported
    logging, nothing configured a handler either, and the record would be dropped anyway."""
    if "logging" in sys.modules:
        log().info(message, *args)
