"""Offline scoring: `fnpack invoke QUALIFIER --batch in.jsonl --out out.jsonl`.

Each input line is one request (a JSON record, or a list of records) sent through a target with
bounded concurrency. The output has one JSON line per input line, in input order, so that line N of
the output answers line N of the input: the function's answer, `null` for a blank line, or
`{"error": message, "line": n}` for a record that failed (a line that is not JSON, or a 4xx/5xx
answer). The input may be standard input (`-`) and the output standard output (None). Input is
read lazily and at most a few times `concurrency` records are held at once, so a file of any
length scores in constant memory.

A failed record does not stop the batch. Errors that would fail every record (no platform at the
URL, a refused token, an unknown function) stop it at once and raise their own FnpackError.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnpack.errors import FnpackError, OutputError, UsageError
from fnpack.targets.base import InvokeError, Target
from fnpack.versions import Qualifier

MAX_CONCURRENCY = 256
_KEPT_FAILURES = 100


class BatchError(FnpackError):
    """Some records of a batch failed (exit code 1); the others were scored and written."""

    exit_code = 1
    kind = "batch"


@dataclass
class BatchSummary:
    source: str
    out: str
    records: int = 0  # lines that held a request (blank ones are answered `null` and not counted)
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first 100: {"line", "error"}

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "records_per_second": round(self.records / self.seconds, 1) if self.seconds else None}


def count_records(source: Path) -> int | None:
    """Non-blank lines: the batch's size, for a progress bar (None for standard input)."""
    if str(source) == "-":
        return None
    with open(source, "rb") as f:
        return sum(1 for line in f if line.strip())


def score_file(target: Target, qualifier: Qualifier, source: Path, out: Path | None, concurrency: int = 8,
               on_record: Callable[[], None] | None = None,
               on_failure: Callable[[int, str], None] | None = None) -> BatchSummary:
    """Score every line of `source` into `out`; `on_record` after each record, `on_failure(line, error)`
    after each failed one. Returns the summary; the caller decides what a failed record means."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {concurrency} is out of range", hint=f"use 1 to {MAX_CONCURRENCY}")
    from_stdin = str(source) == "-"
    if not from_stdin and not source.is_file():
        raise UsageError(f"{source} does not exist or is not a file",
                         hint="--batch takes a JSON Lines file (- for standard input)")
    summary = BatchSummary("<stdin>" if from_stdin else str(source), "<stdout>" if out is None else str(out))
    started = time.perf_counter()

    def call(payload: Any) -> tuple[bool, Any]:
        try:
            return True, target.invoke(qualifier, payload).body
        except InvokeError as exc:  # this record's problem; anything else stops the batch
            return False, exc.message

    def write(line_no: int, future: Future[tuple[bool, Any]] | None, sink: Any) -> None:
        if future is None:  # a blank line
            sink.write("null\n")
            return
        ok, result = future.result()
        summary.records += 1
        if ok:
            summary.ok += 1
            sink.write(json.dumps(result, separators=(",", ":")) + "\n")
        else:
            summary.failed += 1
            if len(summary.failures) < _KEPT_FAILURES:
                summary.failures.append({"line": line_no, "error": result})
            sink.write(json.dumps({"error": result, "line": line_no}) + "\n")
            if on_failure:
                on_failure(line_no, result)
        if on_record:
            on_record()

    try:
        sink = sys.stdout if out is None else open(out, "w", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror}", hint="choose another --out") from None
    window: deque[tuple[int, Future[tuple[bool, Any]] | None]] = deque()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fnpack-batch")
    try:
        with (contextlib.nullcontext(sink) if out is None else sink,
              contextlib.nullcontext(sys.stdin.buffer) if from_stdin else open(source, "rb") as lines):
            for line_no, raw in enumerate(lines, 1):
                if not raw.strip():  # answered `null` in its place, in order with the others
                    window.append((line_no, None))
                    continue
                try:
                    payload = json.loads(raw)
                except ValueError as exc:  # includes bad UTF-8
                    future: Future[tuple[bool, Any]] = Future()
                    future.set_result((False, f"not JSON: {exc}"))
                else:
                    future = pool.submit(call, payload)
                window.append((line_no, future))
                # Write finished records in order; block on the oldest once the window is full.
                while window and (len(window) >= 4 * concurrency or window[0][1] is None or window[0][1].done()):
                    write(*window.popleft(), sink)
            while window:
                write(*window.popleft(), sink)
            sink.flush()
    finally:
        for _, pending in window:
            if pending is not None:
                pending.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
