"""The one alias-move protocol of every target: record the move, then apply it; a conflict changes nothing.

Two small interfaces, one per concern (as Flagger's router and observer are):

- a `HistoryStore` keeps each alias's moves and writes them with compare-and-swap on a token it handed
  out when they were read (an S3 ETag for aws-lambda, the registry's transaction for the local platform;
  a Kubernetes resourceVersion or an object of fnpack's own on OpenFaaS next);
- an `AliasRouter` is where traffic is really sent (a Lambda alias, the local platform's aliases table, a
  Knative route), read with its own revision and applied only if that revision is still current.

`move_alias` is the protocol, written once:

1. read the alias's history (and its token), then where the alias points (and its revision); refuse a
   move to a version that does not exist, one made from a state other than the one the caller saw
   (`expect`), and any move while the last recorded one is not applied yet (another move under way: its
   `after` is not where the alias points, and it is younger than PENDING_WINDOW);
2. write the history with the move appended, if its token is unchanged: of two concurrent moves exactly
   one gets past this point, the other gets a ConflictError and has changed nothing;
3. apply the move, if the router's revision is unchanged; if that fails, write the history back as it was
   (conditionally again) and re-raise: the alias is left as it was.

The history is written first because it is the one lock both sides honour; a process killed between 2
and 3 leaves a recorded move that did not happen, whose `before` is the alias's real state, so rolling it
back is harmless.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from fnpack.errors import ConflictError, FnpackError, NotFoundError
from fnpack.versions import AliasMove, AliasState, rollback_step


class Expect(enum.Enum):
    """`expect=Expect.ANY`: move from wherever the alias is now."""

    ANY = "any"


ANY = Expect.ANY
# How long a recorded move whose alias does not show it yet counts as under way (a move takes seconds).
PENDING_WINDOW = 60.0


class HistoryStore(ABC):
    """Where an alias's moves are kept; `write` is compare-and-swap on the token `read` gave."""

    @abstractmethod
    def read(self, function: str, alias: str) -> tuple[list[AliasMove], Any]:
        """(moves, token); ([], a token meaning "none yet") for an alias never moved."""

    @abstractmethod
    def write(self, function: str, alias: str, moves: list[AliasMove], token: Any) -> Any:
        """Replace the moves if the token is still current; the new token. Else ConflictError."""

    def where(self, function: str, alias: str) -> str:
        """Where the history lives, for messages and plans."""
        return "the alias history"


class AliasRouter(ABC):
    """Where an alias really sends traffic; `apply` is compare-and-swap on the revision `current` gave."""

    @abstractmethod
    def current(self, function: str, alias: str) -> tuple[AliasState | None, Any]:
        """(state, revision); state None when the alias does not exist (or points where fnpack cannot say)."""

    @abstractmethod
    def apply(self, function: str, alias: str, state: AliasState, revision: Any) -> None:
        """Point the alias at `state` if its revision is unchanged, else ConflictError."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def move_alias(store: HistoryStore, router: AliasRouter, function: str, alias: str, state: AliasState, *,
               versions: Iterable[int], actor: str, reason: str | None = None, undoes: int | None = None,
               expect: AliasState | None | Expect = ANY, at: str | None = None,
               read: tuple[list[AliasMove], Any] | None = None) -> AliasMove:
    """Move `function:alias` to `state` by the protocol above; the move recorded. `versions` are the
    function's version numbers; `read` is the history when the caller has read it already (a rollback)."""
    known = sorted(versions)
    for number in state.versions:
        if number not in known:
            raise NotFoundError(f"{function} has no version {number}: alias {alias} was not moved",
                                hint=f"its versions are: {', '.join(f'v{n}' for n in known) or 'none'}")
    # The history first, then the alias: a move recorded but not applied yet is then seen for what it is.
    moves, token = read if read is not None else store.read(function, alias)
    before, revision = router.current(function, alias)
    if moves and moves[-1].after != before and _recent(moves[-1].at):
        pending = moves[-1]
        raise ConflictError(f"{function}:{alias} has a move recorded but not applied yet ({pending.before or '(new)'} "
                            f"-> {pending.after}, by {pending.actor} at {pending.at}): another move is under way; "
                            "it was left as it was", hint="try again in a moment")
    if expect is not ANY and before != expect:
        raise ConflictError(f"{function}:{alias} is at {before or '(not set)'}, not at {expect or '(not set)'} as "
                            "expected: someone moved it since it was read; it was left as it was",
                            hint=f"see `fnpack alias history {function} {alias}`, then try again")
    move = AliasMove(before, state, actor, at or now(), reason, undoes)
    written = store.write(function, alias, [*moves, move], token)  # ConflictError: someone else moved it
    try:
        router.apply(function, alias, state, revision)
    except BaseException:
        try:
            store.write(function, alias, moves, written)  # the move did not happen: take it out again
        except FnpackError:
            pass  # someone wrote since; the entry's `before` is the real state, so it stays harmless
        raise
    return move


def _recent(at: str) -> bool:
    """Whether a recorded move is young enough to be still under way (older: it failed, or the alias was
    moved outside fnpack, and moving on from the alias's real state is right)."""
    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds() < PENDING_WINDOW


def rollback_alias(store: HistoryStore, router: AliasRouter, function: str, alias: str, *,
                   versions: Iterable[int], actor: str, reason: str | None = None, at: str | None = None) -> AliasMove:
    """Move the alias back to its state before its last move not yet rolled back (again: one further back)."""
    moves, token = store.read(function, alias)
    if not moves:
        raise NotFoundError(f"{function} has no alias {alias!r}", hint=f"`fnpack alias list {function}` lists them")
    index, state = rollback_step(moves)
    return move_alias(store, router, function, alias, state, versions=versions, actor=actor, reason=reason,
                      undoes=index, at=at, read=(moves, token))
