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

import os
import signal
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from fnpack.runtime.function import CallTimedOut
from fnpack.runtime.logs import log

GRACE = float(os.environ.get("FNPACK_STUCK_GRACE", "2"))
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception)


class GuardedPool:
    """Threads that run model calls for an event loop, and know which thread runs which call, since when.

    A call's result goes back with one loop.call_soon_threadsafe onto an asyncio future: no
    concurrent.futures.Future (its lock, condition and callback chain) in between.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.running: dict[int, float] = {}  # thread id -> when its call started
        self.retiring = False
        self._queue: SimpleQueue[tuple[Callable[[Any], Any], Any, Any, Any] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Raising into a thread and that thread leaving its call exclude each other: an exception is
        # only ever raised into the call it was meant for, never into the pool's own code.
        self._lock = threading.Lock()
        self._raised: set[int] = set()  # threads with an exception raised into them, maybe not delivered

    def start(self) -> None:
        """Start the threads (once): before the first call, so that it does not pay for their start."""
        while len(self._threads) < self.max_workers:
            thread = threading.Thread(target=self._work, name=f"fnpack-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, loop: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        """An asyncio future of `loop` for fn(arg), run on one of the pool's threads."""
        if not self._threads:
            self.start()
        future = loop.create_future()
        self._queue.put((fn, arg, future, loop))
        return future

    def _work(self) -> None:
        get, lock, running = self._queue.get, self._lock, self.running
        while (item := get()) is not None:
            fn, arg, future, loop = item
            thread = threading.get_ident()
            try:
                with lock:
                    running[thread] = time.monotonic()
                try:
                    outcome: Outcome = (True, fn(arg))
                except CallTimedOut:
                    log().warning("a call that overran the timeout was stopped")
                    raise
                except BaseException as exc:  # the request's error, delivered to it
                    outcome = (False, exc)
                finally:
                    self._leave(thread)
            except CallTimedOut as exc:  # raised just before the call left, or in it
                self._leave(thread)
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits for it
                pass

    def _leave(self, thread: int) -> None:
        with self._lock:
            self.running.pop(thread, None)
            if thread in self._raised:  # not yet delivered, it must not hit the next call
                self._raised.discard(thread)
                _clear(thread)

    def overran(self, loop: Any, timeout: float) -> None:
        """A request timed out: stop the calls running for longer than `timeout`, check on them later."""
        now = time.monotonic()
        with self._lock:
            for thread, started in self.running.items():
                if now - started >= timeout * 0.99 and thread not in self._raised:  # one exception per call
                    _raise_in(thread)
                    self._raised.add(thread)
        loop.call_later(GRACE, self._check, timeout)

    def _check(self, timeout: float) -> None:
        now = time.monotonic()
        stuck = sum(1 for started in list(self.running.values()) if now - started >= timeout + GRACE)
        if stuck and not self.retiring:
            self.retiring = True
            retire(f"{stuck} call(s) overran the timeout of {timeout:g} s by more than {GRACE:g} s and cannot "
                   "be stopped (blocked outside Python)")


def _settle(future: Any, outcome: Outcome) -> None:
    if future.done():  # its request timed out and stopped waiting
        return
    if outcome[0]:
        future.set_result(outcome[1])
    else:
        future.set_exception(outcome[1])


def _raise_in(thread: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(CallTimedOut))


def _clear(thread: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)  # NULL: clears a pending one


def retire(reason: str) -> None:
    """Ask to be replaced: through the local platform's control channel, else by stopping the server."""
    log().error("this worker retires: %s", reason)
    control = os.environ.get("FNPACK_CONTROL_FD")
    if control:
        import json

        try:
            os.write(int(control), (json.dumps({"retiring": os.getpid(), "reason": reason[:300]}) + "\n").encode())
            return
        except (OSError, ValueError):
            pass
    os.kill(os.getpid(), signal.SIGTERM)
