"""`python -m fnpack.worker --archive URI --sha256 HEX [--port N]`: serve one archive over HTTP.

The entrypoint of containers (Knative, OpenFaaS) and of the local platform's
workers: fetch the archive (file://, http(s)://, s3://), verify its hash,
unpack it with the safe reader, import its handler (which loads the model),
and only then listen, so that readiness means the model is loaded. Any failure
before that ends with one message and a non-zero exit: never a half-started server.

--archive and --sha256 default to $FNPACK_ARCHIVE and $FNPACK_SHA256 (an OpenFaaS
deployment has an environment but no arguments). With $FNPACK_ROUTE set instead, the
worker serves an alias's router (fnpack.router) rather than an archive. SIGTERM stops
it gracefully (requests in flight finish) and it then exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, StartError, UsageError


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

    server = uvicorn.Server(make_config(app, host=host, port=port))
    # uvicorn handles SIGTERM (stop accepting, let requests in flight finish: make_config sets no graceful
    # timeout), then restores the handler it found and raises the signal again: with this one found, a
    # graceful stop ends in exit 0 rather than death by SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    # Exit now: a thread stuck in a timed-out call (watchdog.py) would hold the interpreter's exit forever.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if server.started else 1)  # not started: the application's start-up failed (logged above)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnpack.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=os.environ.get("FNPACK_ARCHIVE") or None,
                        help="file://, http(s):// or s3:// URI, or a path (default: $FNPACK_ARCHIVE)")
    parser.add_argument("--sha256", default=os.environ.get("FNPACK_SHA256") or None,
                        help="the archive's expected sha256 (default: $FNPACK_SHA256)")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--cache-dir", type=Path, default=default_cache())
    args = parser.parse_args(argv)
    logging.Formatter.converter = time.gmtime  # UTC, the platform's and the logs' one time format
    logging.basicConfig(level=logging.INFO, datefmt="%Y-%m-%dT%H:%M:%S",
                        format="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s")
    route = os.environ.get("FNPACK_ROUTE")
    try:
        if route:
            if args.archive or args.sha256:
                raise UsageError("FNPACK_ROUTE is set, and so is an archive (--archive/--sha256 or "
                                 "FNPACK_ARCHIVE/FNPACK_SHA256): a worker serves one or the other",
                                 hint="unset FNPACK_ROUTE to serve the archive, or the archive to serve the router")
            from fnpack.router import create_router

            app = create_router(route)
        else:
            missing = [f"{variable} (--{flag})" for flag, variable, value in
                       (("archive", "FNPACK_ARCHIVE", args.archive), ("sha256", "FNPACK_SHA256", args.sha256))
                       if not value]
            if missing:
                raise UsageError(f"no archive to serve: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
                                 " not set", hint="set FNPACK_ARCHIVE=URI and FNPACK_SHA256=HEX, or pass --archive "
                                 "URI --sha256 HEX (FNPACK_ROUTE serves an alias's router instead)")
            app = load_app(prepare(args.archive, args.sha256, args.cache_dir))
    except FnpackError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
