"""`python -m fnpack.worker --archive URI --sha256 HEX [--port N]`: serve one archive over HTTP.

The entrypoint of containers (Knative, OpenFaaS) and of the local platform's
workers: fetch the archive (file://, http(s)://, s3://), verify its hash,
unpack it with the safe reader, import its handler (which loads the model),
and only then listen, so that readiness means the model is loaded. Any failure
before that ends with one message and a non-zero exit: never a half-started server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, StartError


def default_cache() -> Path:
    from fnpack._resources import cache_dir

    return cache_dir() / "archives"


def prepare(uri: str, sha256: str, cache_dir: Path) -> Path:
    """Fetch, verify and unpack; the unpacked archive's folder."""
    from fnpack.archive.fetch import fetch_archive, unpack_archive, unpacked_path

    unpacked = unpacked_path(sha256, cache_dir / "unpacked")
    if unpacked.is_dir():  # a start that follows the first: no fetch, no hashing of the zip
        return unpacked
    archive = fetch_archive(uri, sha256, cache_dir / "zips")
    return unpack_archive(archive, sha256, cache_dir / "unpacked")


def load_app(root: Path) -> Any:
    """Import the archive's ASGI app (named in its manifest), its own packages first on sys.path."""
    manifest = json.loads((root / "fnpack.json").read_text(encoding="utf-8"))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != running:
        raise StartError(f"the archive is built for Python {manifest['python']}, this is Python {running}",
                         hint=f"run it with python{manifest['python']}, or rebuild with runtime: python{running}")
    module_name, _, attr = manifest["handlers"]["asgi"].partition(":")
    sys.path.insert(0, str(root))
    # `fnpack` is imported already (this module is in it), so its subpackages would come from the
    # installed fnpack: put the archive's copy first so that the runtime it was built with serves it.
    import fnpack

    fnpack.__path__.insert(0, str(root / "fnpack"))
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        logging.getLogger("fnpack.worker").exception("importing %s failed", module_name)
        raise StartError(f"the function {manifest['name']!r} failed to start: {type(exc).__name__}: {exc}",
                         hint="the traceback above shows where; `fnpack build` smoke-runs the same import") from None


def serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    from fnpack.http_server import make_config

    uvicorn.Server(make_config(app, host=host, port=port)).run()
    # Exit now: a thread stuck in a timed-out call (watchdog.py) would hold the interpreter's exit forever.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnpack.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="file://, http(s):// or s3:// URI, or a path")
    parser.add_argument("--sha256", required=True, help="the archive's expected sha256")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--cache-dir", type=Path, default=default_cache())
    args = parser.parse_args(argv)
    logging.Formatter.converter = time.gmtime  # UTC, the platform's and the logs' one time format
    logging.basicConfig(level=logging.INFO, datefmt="%Y-%m-%dT%H:%M:%S",
                        format="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s")
    try:
        app = load_app(prepare(args.archive, args.sha256, args.cache_dir))
    except FnpackError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
