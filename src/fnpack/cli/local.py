"""Commands about the local platform's process on this machine: down (`fnpack up` and `fnpack serve`
are in platform.py)."""


import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fnpack.cli._app import app, handle_errors, say


@app.command()
def down(
    state_dir: Path = typer.Option(Path(".fnpack"), "--state-dir", envvar="FNPACK_STATE_DIR", show_default=False,
                                   help="The state folder of the platform to stop (FNPACK_STATE_DIR, default "
                                        ".fnpack)."),
    wait: Optional[float] = typer.Option(None, "--wait", show_default=False, min=0.0,
                                         help="Seconds to wait for it to exit after SIGTERM (default 15)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Stop the platform `fnpack up` started in the background, and remove its pid file.

    The process in STATE_DIR/gateway.pid gets SIGTERM only if it is `fnpack serve` for that state
    folder; a pid file naming nothing (a platform that died) is removed. Nothing to stop exits
    with code 11, as "no platform answers" does.
    """
    with handle_errors(as_json):
        from fnpack.platform.launch import STOP_WAIT, stop_platform

        result = stop_platform(state_dir, STOP_WAIT if wait is None else wait)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return
    say(f"stopped the platform of {result['state_dir']} (pid {result['pid']}) in {result['seconds']:g} s; "
        f"removed {result['pid_file']}")
