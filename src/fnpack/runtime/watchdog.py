"""Calls that overrun the function's timeout: stopped where Python can stop them, else the worker retires.

A request over `resources.timeout` gets its 504 at once, but the thread running its call goes on:
Python cannot kill a thread, and two `time.sleep(1e5)` would hold every thread of the pool for
good. So, at the deadline, the call's thread gets an exception raised in it (this stops code
that runs Python bytecode: loops, user code), and if the call still runs `GRACE` seconds later
(it is blocked in C: a sleep, a long model call) the worker asks to be replaced: on the local
platform it tells the gateway, which stops sending it requests and stops it; anywhere else it
shuts its server down (SIGTERM: requests in flight finish), and the container runtime starts a
fresh one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

GRACE = float(os.environ.get("FNPACK_STUCK_GRACE", "2"))
log = logging.getLogger("fnpack.runtime")


class CallTimedOut(BaseException):
    """Raised inside a call that overran its timeout (BaseException: `except Exception` in user code
    does not swallow it)."""


class GuardedExecutor(ThreadPoolExecutor):
    """A thread pool that knows which thread runs which call, and since when."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers, thread_name_prefix="fnpack")
        self.running: dict[int, tuple[int, float]] = {}  # call id -> (thread id, started)
        self.retiring = False
        self._ids = itertools.count()
        # Raising into a thread and that thread leaving its call exclude each other: an exception is
        # only ever raised into the call it was meant for, never into the pool's own code.
        self._lock = threading.Lock()
        self._raised: set[int] = set()  # threads with an exception raised into them, maybe not delivered

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        call = next(self._ids)

        def run() -> Any:
            thread = threading.get_ident()
            with self._lock:
                self.running[call] = (thread, time.monotonic())
            try:
                return fn(*args, **kwargs)
            except CallTimedOut:
                log.warning("a call that overran the timeout was stopped")
                raise
            finally:
                with self._lock:
                    self.running.pop(call, None)
                    if thread in self._raised:  # not yet delivered, it must not hit the next call
                        self._raised.discard(thread)
                        _clear(thread)

        return super().submit(run)

    def overran(self, timeout: float) -> None:
        """A request timed out: stop the calls running for longer than `timeout`, check on them later."""
        now = time.monotonic()
        with self._lock:
            for thread, started in self.running.values():
                if now - started >= timeout * 0.99:
                    _raise_in(thread)
                    self._raised.add(thread)
        asyncio.get_running_loop().call_later(GRACE, self._check, timeout)

    def _check(self, timeout: float) -> None:
        now = time.monotonic()
        stuck = sum(1 for _, started in self.running.values() if now - started >= timeout + GRACE)
        if stuck and not self.retiring:
            self.retiring = True
            retire(f"{stuck} call(s) overran the timeout of {timeout:g} s by more than {GRACE:g} s and cannot "
                   "be stopped (blocked outside Python)")


def _raise_in(thread: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(CallTimedOut))


def _clear(thread: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)  # NULL: clears a pending one


def retire(reason: str) -> None:
    """Ask to be replaced: through the local platform's control channel, else by stopping the server."""
    log.error("this worker retires: %s", reason)
    control = os.environ.get("FNPACK_CONTROL_FD")
    if control:
        import json

        try:
            os.write(int(control), (json.dumps({"retiring": os.getpid(), "reason": reason[:300]}) + "\n").encode())
            return
        except (OSError, ValueError):
            pass
    os.kill(os.getpid(), signal.SIGTERM)
