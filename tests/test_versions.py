"""The shared version and alias model: qualifiers, alias states, rollback and weighted routing."""

from __future__ import annotations

import pytest

from fnpack.errors import UsageError
from fnpack.versions import AliasError, AliasMove, AliasState, Qualifier, WeightedRouter, rollback_step


@pytest.mark.parametrize("text, expected", [
    ("iris", Qualifier("iris")),
    ("iris:live", Qualifier("iris", alias="live")),
    ("iris:canary-2", Qualifier("iris", alias="canary-2")),
    ("iris:12", Qualifier("iris", version=12)),
])
def test_qualifiers(text, expected):
    assert Qualifier.parse(text) == expected
    assert str(Qualifier.parse(text)) == text


@pytest.mark.parametrize("text, message", [
    ("Iris", "is not a function name"),
    ("../etc", "is not a function name"),
    ("", "is not a function name"),
    ("iris:", "neither a version number nor an alias"),
    ("iris:0", "versions start at 1"),
    ("iris:Live", "neither a version number nor an alias"),
    ("iris:a:b", "neither a version number nor an alias"),
    ("iris:../x", "neither a version number nor an alias"),
    ("iris:-1", "neither a version number nor an alias"),
])
def test_bad_qualifiers_are_refused_with_the_reason(text, message):
    with pytest.raises(UsageError) as caught:
        Qualifier.parse(text)
    assert message in caught.value.message and caught.value.exit_code == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"primary": 1, "canary": 2, "weight": 1.5}, "out of range"),
    ({"primary": 1, "canary": 2, "weight": -0.1}, "out of range"),
    ({"primary": 1, "weight": 0.1}, "needs a canary version"),
    ({"primary": 3, "canary": 3, "weight": 0.1}, "the canary is the primary"),
    ({"primary": 0}, "versions start at 1"),
])
def test_invalid_alias_states(kwargs, message):
    with pytest.raises(AliasError) as caught:
        AliasState(**kwargs)
    assert message in caught.value.message


def test_alias_state_describes_itself():
    assert str(AliasState(3)) == "v3" and AliasState(3).versions == (3,)
    assert str(AliasState(3, canary=4, weight=0.1)) == "v3 + v4 at 10%"


def move(before, after, undoes=None):
    return AliasMove(before=before, after=after, actor="test", at="2026-11-22T00:00:00Z", undoes=undoes)


def test_rollback_goes_one_further_back_each_time():
    v1, v2, v3 = AliasState(1), AliasState(2), AliasState(3)
    history = [move(None, v1), move(v1, v2), move(v2, v3)]
    index, state = rollback_step(history)
    assert (index, state) == (2, v2)
    history.append(move(v3, v2, undoes=2))
    index, state = rollback_step(history)
    assert (index, state) == (1, v1)
    history.append(move(v2, v1, undoes=1))
    with pytest.raises(AliasError, match="first state"):
        rollback_step(history)


def test_rollback_after_a_new_move_undoes_that_move_first():
    v1, v2, v3 = AliasState(1), AliasState(2), AliasState(3)
    history = [move(None, v1), move(v1, v2), move(v2, v1, undoes=1), move(v1, v3)]
    assert rollback_step(history) == (3, v1)
    history.append(move(v3, v1, undoes=3))
    with pytest.raises(AliasError):  # v1 was the first state; the rolled-back v2 move stays undone
        rollback_step(history)


def test_rollback_of_a_canary_restores_the_split():
    split = AliasState(1, canary=2, weight=0.1)
    history = [move(None, AliasState(1)), move(AliasState(1), split), move(split, AliasState(2))]
    assert rollback_step(history) == (2, split)
    with pytest.raises(AliasError, match="no moves"):
        rollback_step([])


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_router_share_is_exact_within_one_request_at_every_point(weight):
    router = WeightedRouter(AliasState(1, canary=2, weight=weight) if weight else AliasState(1))
    canary = 0
    for n in range(1, 10_001):
        canary += router.pick() == 2
        assert abs(canary - n * weight) <= 1, (n, canary)
    assert canary == round(10_000 * weight)


def test_router_is_deterministic():
    state = AliasState(5, canary=6, weight=0.3)
    first, second = WeightedRouter(state), WeightedRouter(state)
    assert [first.pick() for _ in range(100)] == [second.pick() for _ in range(100)]


def test_bare_names_and_alias_names():
    assert Qualifier.function_name("iris") == "iris"
    assert Qualifier.alias_name("iris", "staging") == "staging"
    with pytest.raises(UsageError, match="expected a function name, not a qualifier"):
        Qualifier.function_name("iris:live")
    with pytest.raises(UsageError, match="is a version number, not an alias name"):
        Qualifier.alias_name("iris", "3")  # NAME:3 always means version 3
    for spelled in ("v3", "V3"):  # as the CLI prints versions: NAME:v3 is version 3 too
        assert Qualifier.parse(f"iris:{spelled}") == Qualifier("iris", version=3)
        with pytest.raises(UsageError, match="is a version number, not an alias name"):
            Qualifier.alias_name("iris", spelled)
    assert Qualifier.parse("iris:v3x") == Qualifier("iris", alias="v3x")  # a word that starts like one is an alias
    with pytest.raises(UsageError, match="versions start at 1"):
        Qualifier.parse("iris:v0")
    with pytest.raises(UsageError, match="not a function name"):
        Qualifier.alias_name("Iris", "live")
