"""The rollout loop, for every target: move the alias to a canary of the new version at each step, observe a
window, judge it, advance or roll back; promote after the last step.

Every step is an alias move in the shared history (`Target.set_alias`, with `expect=` the state the rollout
itself left), its reason saying why (`canary v3 25%: errors 0.2% (max 1%), p99 120 ms ...`), so that
`fnpack alias history` tells the whole story and `fnpack rollback` still works. That is also what makes a
rollout safe to interrupt and to lose:

- the alias is always at a recorded step: Ctrl-C (deferred while a move is being made) and a crash leave it
  there; `status` reads where a rollout stands from the alias and its history; running the same rollout
  again resumes at that step (it observes the current step's window again first); `abort` rolls it back;
- a second rollout of the same alias on this machine is refused at once (a lock file); one on another machine,
  or anybody moving the alias by hand, makes the next move's `expect` fail: the rollout then stops and leaves
  the alias where the other one put it (it also checks the alias at every poll, to stop sooner).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fnpack.canary.analysis import Verdict, judge
from fnpack.canary.observer import Figures, Observer
from fnpack.canary.policy import Policy
from fnpack.errors import ConflictError, FnpackError, NotFoundError, UsageError
from fnpack.versions import AliasMove, AliasState, Qualifier

PREFIX = "canary"  # every move a rollout makes has a reason starting "canary vN"
Report = Callable[[dict[str, Any]], None]


class CanaryFailed(FnpackError):
    """The canary was rolled back (a threshold failed, too little traffic, or aborted): the alias is on its
    primary version again."""

    exit_code = 14
    kind = "canary-failed"

    def __init__(self, message: str, hint: str | None = None, outcome: Outcome | None = None) -> None:
        super().__init__(message, hint)
        self.outcome = outcome


class MovedElsewhere(ConflictError):
    """Someone else moved the alias during the rollout: it stopped and left the alias as it found it."""


@dataclass
class Outcome:
    """How a rollout ended: promoted, rolled-back (or halted: too little traffic), or already (nothing to do)."""

    outcome: str
    function: str
    alias: str
    version: int
    primary: int | None
    reason: str
    state: AliasState
    seconds: float
    steps: list[dict[str, Any]] = field(default_factory=list)


class Rollout:
    """One rollout of `version` on `function:alias`. `report` gets one dict per event: start, step (a move),
    progress (each poll), window (a verdict), end. `load`: synthetic traffic told each step's weight."""

    def __init__(self, target: Any, function: str, alias: str, version: int, policy: Policy, observer: Observer,
                 report: Report | None = None, load: Any = None, poll: float | None = None) -> None:
        self.target, self.function, self.alias, self.version = target, function, alias, version
        self.policy, self.observer, self.load = policy, observer, load
        self.report = report or (lambda event: None)
        self.poll = poll if poll is not None else max(0.2, min(getattr(observer, "poll", 1.0), policy.interval / 4))
        self.expected: AliasState | None = None
        self.primary = 0
        self.began = time.monotonic()
        self.steps: list[dict[str, Any]] = []

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> Outcome:
        with hold_lock(self.target, self.function, self.alias, self.version):
            state = self._current()
            if state.canary is None and state.primary == self.version:
                return self._end("already", f"{self.function}:{self.alias} is already at v{self.version}", state)
            if state.canary not in (None, self.version):
                raise ConflictError(f"{self.function}:{self.alias} has another canary (v{state.canary} at "
                                    f"{state.weight:.0%}): one rollout at a time; it was left as it was",
                                    hint=f"finish that one, or `fnpack canary abort {self.function}`")
            if self.version not in {v.number for v in self.target.versions(self.function)}:
                raise NotFoundError(f"{self.function} has no version {self.version}: nothing was moved",
                                    hint=f"deploy it first with `fnpack deploy --no-promote`, see "
                                         f"`fnpack versions {self.function}`")
            if self.policy.interval < self.observer.min_interval:
                raise UsageError(f"--interval {self.policy.interval:g}s is too short for {self.observer.name}: its "
                                 f"figures need windows of at least {self.observer.min_interval:g} s",
                                 hint=f"use --interval {self.observer.min_interval:g}s or more")
            self.primary, self.expected = state.primary, state
            resumed = round(state.weight * 100) if state.canary == self.version else None
            self.report({"event": "start", "function": self.function, "alias": self.alias, "version": self.version,
                         "primary": self.primary, "policy": self.policy.to_dict(), "resumed_at": resumed,
                         "observer": self.observer.name})
            if self.load is not None:
                self.load.start()
            try:
                if resumed is not None:
                    self._judge(resumed)
                for step in (s for s in self.policy.windows if resumed is None or s > resumed):
                    first = resumed is None and step == self.policy.windows[0]
                    reason = (f"started: {self.policy.describe()}" if first else self._last_verdict)
                    self._move(AliasState(self.primary, self.version, step / 100), f"{step}%: {reason}", step)
                    self._judge(step)
                self._move(AliasState(self.version), f"promoted: {self._last_verdict}", 100)
                return self._end("promoted", self._last_verdict, self.expected)
            finally:
                if self.load is not None:
                    self.load.stop()

    _last_verdict = "no window judged"

    def _judge(self, step: int) -> None:
        """Observe the window at `step` until its verdict; a failure (or too little traffic for too long)
        rolls back and raises CanaryFailed."""
        if self.load is not None:
            self.load.weight = step / 100
        window = self._observe(self.observer.open, self.function, self.alias, (self.primary, self.version),
                               self.policy.quantile)
        opened = window.start
        due = window.start + self.policy.interval + self.observer.delay
        limit = window.start + max(self.policy.wait_limit, self.policy.interval) + self.observer.delay
        while True:
            left = due - time.time()
            time.sleep(self.poll if left <= 0 else min(self.poll, left))  # waking at `due` exactly, then polling
            self._still_ours()
            figures = self._observe(self.observer.read, window)
            canary, primary = figures.get(self.version, Figures()), figures.get(self.primary)
            if _went_down(canary) or (primary is not None and _went_down(primary)):
                # a counter went down (the platform restarted): count from here on, as increase() does, rather
                # than judge differences that hide errors (fewer errors than at the start: a 0% error rate)
                window = self._observe(self.observer.open, self.function, self.alias,
                                       (self.primary, self.version), self.policy.quantile)
                verdict = Verdict("wait", "counters went down (a restart?): counting again from then", usable=False)
            else:
                verdict = judge(self.policy, canary, primary)
            now = time.time()
            self.report({"event": "progress", "weight": step, "canary": canary.to_dict(),
                         "primary": primary.to_dict() if primary else None, "verdict": verdict.outcome,
                         "text": verdict.text, "next_in": round(max(0.0, due - now), 1)})
            if verdict.outcome == "fail":  # failing on enough requests: at once, not at the window's end
                self._window(step, verdict, canary, primary)
                self._roll_back(step, "rolled-back", verdict.text)
            if now < due:
                continue
            if verdict.outcome == "pass":
                self._window(step, verdict, canary, primary)
                self._last_verdict = f"{verdict.text} at {step}%"
                return
            if now >= limit:
                self._window(step, verdict, canary, primary)
                if not verdict.usable:
                    self._roll_back(step, "halted", f"no usable figures: {verdict.text} after "
                                                    f"{now - opened:.0f} s in {self.observer.name}")
                self._roll_back(step, "halted", f"too little traffic: {verdict.text} after "
                                                f"{now - opened:.0f} s in {self.observer.name} "
                                                "(--min-requests, --max-wait; --load samples sends synthetic "
                                                "traffic)")

    def _observe(self, call: Callable[..., Any], *args: Any) -> Any:
        """An observer's call; what it raises that is no FnpackError (a page its parser chokes on) named as
        the observer's."""
        try:
            return call(*args)
        except FnpackError:
            raise
        except Exception as exc:  # noqa: BLE001 - a source answering garbage is the source's error
            raise FnpackError(f"{self.observer.name} answered figures that cannot be read: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from exc

    def _window(self, step: int, verdict: Verdict, canary: Figures, primary: Figures | None) -> None:
        event = {"event": "window", "weight": step, "verdict": verdict.outcome, "text": verdict.text,
                 "canary": canary.to_dict(), "primary": primary.to_dict() if primary else None}
        self.steps.append(event)
        self.report(event)

    def _roll_back(self, step: int, outcome: str, why: str) -> None:
        word = "rolled back" if outcome == "rolled-back" else "halted"
        self._move(AliasState(self.primary), f"{word} at {step}%: {why}", 0)
        raise CanaryFailed(f"canary v{self.version} of {self.function}:{self.alias} {word} at {step}%: {why}; "
                           f"{self.alias} is on v{self.primary} again",
                           hint=f"`fnpack alias history {self.function} {self.alias}` shows every step",
                           outcome=self._end(outcome, why, self.expected))

    def _move(self, state: AliasState, reason: str, step: int) -> AliasMove:
        text = f"{PREFIX} v{self.version} {reason}"
        try:
            with deferred_interrupt():
                move = self.target.set_alias(self.function, self.alias, state, text, expect=self.expected)
        except ConflictError:
            raise self._moved_elsewhere() from None
        self.expected = state
        self.report({"event": "step", "weight": step, "state": str(state), "reason": text, "at": move.at})
        return move

    def _still_ours(self) -> None:
        if self._current(missing_ok=True) != self.expected:  # deleted is moved too
            raise self._moved_elsewhere()

    def _moved_elsewhere(self) -> MovedElsewhere:
        now = self._current(missing_ok=True)
        return MovedElsewhere(f"{self.function}:{self.alias} was moved by someone else during the rollout (to "
                              f"{now or '(not set)'}, not {self.expected}): the rollout stopped and left it there",
                              hint=f"`fnpack alias history {self.function} {self.alias}` says who moved it")

    def _current(self, missing_ok: bool = False) -> AliasState | None:
        if missing_ok:
            return self.target.aliases(self.function).get(self.alias)
        return alias_state(self.target, self.function, self.alias, rollout=True)

    def _end(self, outcome: str, reason: str, state: AliasState | None) -> Outcome:
        result = Outcome(outcome, self.function, self.alias, self.version, self.primary or None, reason,
                         state or AliasState(self.version), round(time.monotonic() - self.began, 3), self.steps)
        self.report({"event": "end", "outcome": outcome, "reason": reason, "state": str(result.state),
                     "seconds": result.seconds})
        return result


def _went_down(figures: Figures) -> bool:
    return figures.requests < 0 or figures.errors < 0


# --- status and abort ----------------------------------------------------------------------------------


def alias_state(target: Any, function: str, alias: str, rollout: bool = False) -> AliasState:
    """Where the alias points; NotFoundError when it is not set (`rollout`: saying a canary needs a primary)."""
    state = target.aliases(function).get(alias)
    if state is None and rollout:
        raise NotFoundError(f"{function} has no alias {alias!r}: a canary needs a primary version",
                            hint=f"deploy a first version with `fnpack deploy` (it sets {alias})")
    if state is None:
        raise NotFoundError(f"{function} has no alias {alias!r}", hint=f"`fnpack alias list {function}` lists them")
    return state


def status(target: Any, function: str, alias: str) -> dict[str, Any]:
    """Where a rollout on `function:alias` stands, from the alias and its history (and this machine's lock)."""
    state = alias_state(target, function, alias)
    moves = target.history(function, alias)
    last = next((m for m in reversed(moves) if (m.reason or "").startswith(f"{PREFIX} v")), None)
    under_way = (state.canary is not None and last is not None and last.after == state
                 and (last.reason or "").startswith(f"{PREFIX} v{state.canary} "))
    return {"function": function, "alias": alias, "state": str(state), "under_way": under_way,
            "version": state.canary if under_way else None,
            "weight": round(state.weight * 100) if under_way else None,
            "last": None if last is None else {"reason": last.reason, "at": last.at, "actor": last.actor},
            "running_here": lock_holder(target, function, alias)}


def abort(target: Any, function: str, alias: str, reason: str | None = None) -> AliasMove:
    """Roll a rollout back: the alias on its primary alone (a running rollout sees the move and stops)."""
    state = alias_state(target, function, alias)
    if state.canary is None:
        raise UsageError(f"{function}:{alias} has no canary to abort: it is at {state}",
                         hint=f"`fnpack rollback {function} {alias}` undoes its last move")
    why = f"{PREFIX} v{state.canary} aborted at {state.weight:.0%}" + (f": {reason}" if reason else "")
    return target.set_alias(function, alias, AliasState(state.primary), why, expect=state)


# --- one rollout per alias on this machine --------------------------------------------------------------


def _lock_path(target: Any, function: str, alias: str) -> Any:
    from fnpack._resources import cache_dir

    where = target.invoke_url(Qualifier(function, alias=alias))
    return cache_dir() / "canary" / f"{hashlib.sha256(f'{target.name} {where}'.encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def hold_lock(target: Any, function: str, alias: str, version: int) -> Iterator[None]:
    path = _lock_path(target, function, alias)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise FnpackError(f"cannot write the rollout lock {path}: {exc.strerror or exc}",
                          hint="set FNPACK_CACHE_DIR to a writable folder") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(target, function, alias) or {}
            raise ConflictError(f"a rollout of {function}:{alias} is already running on this machine "
                                f"(pid {holder.get('pid', '?')}, v{holder.get('version', '?')}, since "
                                f"{holder.get('since', '?')}): one rollout per alias at a time",
                                hint=f"`fnpack canary status {function}` says where it stands") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "version": version, "function": function, "alias": alias,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(target: Any, function: str, alias: str) -> dict[str, Any] | None:
    """Who holds this machine's lock on the alias's rollouts (None: nobody)."""
    path = _lock_path(target, function, alias)
    try:
        with open(path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                text = handle.read()
                try:
                    found = json.loads(text) if text else {}
                except ValueError:
                    return {}
                return found if isinstance(found, dict) else {}  # garbage in it: held all the same
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    except OSError:
        return None


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) while a move is being made takes effect once it is made, so that the history and the
    alias agree."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = {number: signal.signal(number, lambda *args: caught.append(args))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, `kill`) stops a rollout as Ctrl-C does: at a recorded step, said so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
