"""Adaptive batching: records that arrive while the model is busy share its next call.

A record that finds the model idle and nobody queued goes at once, alone: an idle
model answers a lone request as fast as without batching, with no timer and no
wait for the next event-loop iteration. Records that arrive during a call queue
and go together when it ends, up to `max_batch_size`. If the queue has waited
`max_wait` while every runner is busy, a second runner takes it, so no record
waits on a long call for longer than the wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fnpack.runtime.function import Function
from fnpack.runtime.metrics import Histogram
from fnpack.runtime.watchdog import GuardedPool

RUNNERS = 2


class Batcher:
    def __init__(self, function: Function, max_batch_size: int, max_wait: float, pool: GuardedPool,
                 batch_sizes: Histogram) -> None:
        self.function = function
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.pool = pool
        self.batch_sizes = batch_sizes
        self.pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self.running = 0
        self.timer: asyncio.TimerHandle | None = None

    def submit(self, record: Any) -> asyncio.Future[Any]:
        """The future of the record's answer (the caller puts its timeout on it)."""
        loop = asyncio.get_running_loop()
        if self.running == 0 and not self.pending:  # idle, nobody queued: the plain call, as without batching
            self.running += 1
            self.batch_sizes.observe(1)
            alone: asyncio.Future[Any] = self.pool.submit(loop, self.function, record)
            alone.add_done_callback(self._alone_done)
            return alone
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((record, future))
        if len(self.pending) >= self.max_batch_size:
            self._flush()
        elif self.running and self.timer is None:
            self.timer = loop.call_later(self.max_wait, self._on_wait)
        return future

    def _alone_done(self, done: asyncio.Future[Any]) -> None:
        self.running -= 1
        self._flush(force=True)  # what queued during this call goes now

    def _on_wait(self) -> None:
        self.timer = None
        self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        if not self.pending or self.running >= RUNNERS or (self.running and not force and
                                                           len(self.pending) < self.max_batch_size):
            return
        batch, self.pending = self.pending[:self.max_batch_size], self.pending[self.max_batch_size:]
        if self.timer is not None and not self.pending:
            self.timer.cancel()
            self.timer = None
        self.running += 1
        self.batch_sizes.observe(len(batch))
        work = self.pool.submit(asyncio.get_running_loop(), self.function.call_many, [record for record, _ in batch])
        work.add_done_callback(lambda done: self._deliver(batch, done))

    def _deliver(self, batch: list[tuple[Any, asyncio.Future[Any]]], done: asyncio.Future[list[Any]]) -> None:
        self.running -= 1
        results = done.result() if done.exception() is None else [done.exception()] * len(batch)
        for (_, future), result in zip(batch, results):
            if future.done():  # its request timed out and stopped waiting
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._flush(force=True)  # what queued during this call goes now
