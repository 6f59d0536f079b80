"""Where the files that ship with fnpack are (handlers, runtime definitions, examples), and its cache.

An installed wheel carries them under `fnpack/_data/`; an editable install or a
source checkout reads them from the repository's top-level folders.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent.parent


def data_dir(name: str) -> Path:
    """The folder `handlers`, `runtimes` or `examples`."""
    for candidate in (_PACKAGE / "_data" / name, _CHECKOUT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fnpack's {name!r} folder is missing from this install; reinstall fnpack")


def runtime_package_dir() -> Path:
    """The `fnpack` package folder whose `__init__.py` and `runtime/` go into every archive."""
    return _PACKAGE


def cache_dir() -> Path:
    """fnpack's cache: FNPACK_CACHE_DIR, else ~/.cache/fnpack."""
    return Path(os.environ.get("FNPACK_CACHE_DIR") or Path.home() / ".cache" / "fnpack")
