"""Tokens and the state folder's ownership.

- The control token is created at the first start in `<state>/token` (mode 0600); the CLI
  reads it from there or from FNPACK_TOKEN. Every control call needs it.
- Invocations need a token only when `--invoke-token` is given; listening on anything but
  loopback without one is refused (functions would be open to the network).
- One `fnpack serve` per state folder (an exclusive lock): its caches are then the truth.
"""

from __future__ import annotations

import fcntl
import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import IO

from fnpack.errors import StartError, UsageError


def control_token(state_dir: Path) -> str:
    path = state_dir / "token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise StartError(f"{path} can be read by other users", hint=f"chmod 600 {path}") from None
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, invoke_token: str | None) -> None:
    if not is_loopback(host) and not invoke_token:
        raise UsageError(f"refusing to listen on {host} without an invoke token: every deployed function "
                         "would be open to the network",
                         hint="pass --invoke-token (or FNPACK_INVOKE_TOKEN), or listen on 127.0.0.1")


def bearer_matches(header: bytes | str | None, token: str) -> bool:
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold `<state>/serve.lock` for the life of the process; refuse a second server on one folder."""
    try:
        handle = open(state_dir / "serve.lock", "a+", encoding="utf-8")
    except OSError as exc:  # a read-only or full state folder: one clear line, not a traceback
        from fnpack.platform.storage import state_error

        raise state_error(exc, state_dir) or StartError(f"cannot open {state_dir / 'serve.lock'}: {exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise StartError(f"{state_dir} is already served by {owner}",
                         hint="stop it first, or use another --state-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"fnpack serve pid {os.getpid()}\n")
    handle.flush()
    return handle
