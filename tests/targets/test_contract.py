"""The contract every deployable target keeps, run against each harness of `conftest.py` (a real server per
target and module): deploys, idempotent redeploys, not promoting, canaries, rollbacks, the history shared
between clients, refused moves and deletes, concurrent moves and dry runs.

Tests use only the harness, the `Target` API and the real CLI. Each uses function names of its own, so they
are independent on the module's server; `native_alias` / `native_history` read what the target itself
recorded, so that a move is checked where traffic is really sent, not only through fnpack's client.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult
from targets.conftest import Harness

from fnpack.errors import ConflictError, NotFoundError
from fnpack.targets.base import Target
from fnpack.versions import AliasState, Qualifier

pytestmark = pytest.mark.timeout(600)


def numbers(target: Target, name: str) -> list[int]:
    return [v.number for v in target.versions(name)]


def snapshot(harness: Harness, target: Target, name: str) -> dict[str, Any]:
    """Everything a change could touch, read through the API and from the target itself."""
    return {"versions": target.versions(name), "aliases": target.aliases(name),
            "history": target.history(name, "live"), "native": harness.native_alias(name, "live"),
            "native history": harness.native_history(name, "live")}


def error_json(result: CliResult) -> Any:
    """The one JSON object a `--json` command that failed printed (on stderr; stdout before issue 10's CLI)."""
    return json.loads(result.stderr if not result.stdout.strip() else result.stdout)


def actions(plan: Any) -> list[str]:
    return [step.to_dict()["action"] for step in plan.steps]


# --- deploying ---------------------------------------------------------------------------------------------


def test_a_new_function_is_planned_reading_only_then_deployed_as_v1_at_live(harness: Harness) -> None:
    name = "c-deploy"
    target = harness.target()
    plan = target.plan_deploy(harness.archive(name), reason="first")
    assert actions(plan) == [*harness.create_actions, "set-alias"]
    assert plan.function == name and plan.target == harness.name
    assert plan.steps[-1].to_dict()["details"]["before"] is None
    assert not plan.remote.exists and plan.remote.versions == ()
    # planning made nothing
    assert name not in [f.name for f in target.functions()]
    with pytest.raises(NotFoundError):
        target.aliases(name)
    assert harness.cli("versions", name).code == 12
    assert harness.native_alias(name, "live") is None and harness.native_history(name, "live") == []

    done = harness.second().execute(plan)  # the plan carries what it needs: another object executes it
    assert done.created is True and done.version.number == 1 and done.version.function == name
    assert done.alias == "live" and done.url == harness.url(name)
    assert done.move is not None and done.move.before is None and done.move.after == AliasState(1)
    assert done.move.reason == "first" and "@" in done.move.actor
    assert numbers(target, name) == [1]
    assert target.aliases(name) == {"live": AliasState(1)}
    assert harness.native_alias(name, "live") == AliasState(1)
    assert [(m.before, m.after) for m in target.history(name, "live")] == [(None, AliasState(1))]
    assert len(harness.native_history(name, "live")) == 1
    (summary,) = [f for f in target.functions() if f.name == name]
    assert (summary.versions, summary.latest, summary.aliases) == (1, 1, {"live": AliasState(1)})


def test_the_same_archive_again_gives_the_same_version_and_moves_nothing(harness: Harness) -> None:
    name = "c-redeploy"
    archive = harness.archive(name)
    first = harness.target().deploy(archive)
    assert first.created is True
    target = harness.target()  # another object: nothing kept between them

    plan = target.plan_deploy(archive)
    assert "reuse-version" in actions(plan) and "keep-alias" in actions(plan), actions(plan)
    assert not set(actions(plan)) & {*harness.update_actions, "set-alias"}, actions(plan)
    again = target.execute(plan)
    assert (again.created, again.version, again.alias, again.move) == (False, first.version, "live", None)
    assert again.url == harness.url(name)

    cli = harness.ok("deploy", str(archive), *harness.deploy_args)  # the CLI: the same
    assert (cli["created"], cli["version"]["number"], cli["move"]) == (False, 1, None)
    assert numbers(target, name) == [1] and target.aliases(name) == {"live": AliasState(1)}
    assert len(target.history(name, "live")) == 1 and len(harness.native_history(name, "live")) == 1
    listed = harness.ok("versions", name)["versions"]
    assert [(v["number"], v["sha256"], v["aliases"]) for v in listed] == [(1, first.version.sha256, ["live"])]


def test_no_promote_makes_a_version_and_leaves_the_alias(harness: Harness) -> None:
    name = "c-no-promote"
    a, b = harness.archives(name, 2)
    target = harness.target()
    target.deploy(a)

    quiet = harness.ok("deploy", str(b), "--no-promote", *harness.deploy_args)
    assert quiet["created"] is True and quiet["version"]["number"] == 2
    assert quiet["alias"] is None and quiet["move"] is None and quiet["url"] == harness.url(name, "2")
    assert [s["action"] for s in quiet["plan"]["steps"]] == list(harness.update_actions)
    assert harness.ok("alias", "list", name)["aliases"] == {"live": {"primary": 1, "canary": None, "weight": 0.0}}
    assert harness.native_alias(name, "live") == AliasState(1)
    assert len(target.history(name, "live")) == 1

    staged = harness.ok("deploy", str(b), "--alias", "staging", *harness.deploy_args)
    assert staged["created"] is False and staged["version"]["number"] == 2
    assert staged["move"]["before"] is None and staged["move"]["after"]["primary"] == 2
    assert staged["url"] == harness.url(name, "staging")
    assert target.aliases(name) == {"live": AliasState(1), "staging": AliasState(2)}
    assert harness.native_alias(name, "staging") == AliasState(2)

    # through the API: alias=None, the first archive again: its version, no alias step, nothing moved
    plan = target.plan_deploy(a, alias=None)
    assert actions(plan) == ["reuse-version"]
    again = target.execute(plan)
    assert (again.created, again.version.number, again.alias, again.move) == (False, 1, None, None)
    assert again.url == harness.url(name, "1")
    assert numbers(target, name) == [1, 2]
    assert target.aliases(name) == {"live": AliasState(1), "staging": AliasState(2)}
    assert len(target.history(name, "live")) == 1 and len(target.history(name, "staging")) == 1


# --- aliases: canary, rollback, shared history -------------------------------------------------------------


def test_a_canary_is_set_and_read_back(harness: Harness) -> None:
    name = "c-canary"
    a, b = harness.archives(name, 2)
    target = harness.target()
    target.deploy(a)
    target.deploy(b)
    assert target.aliases(name) == {"live": AliasState(2)}

    move = target.set_alias(name, "live", AliasState(1, 2, 0.25), "canary v2")
    assert (move.before, move.after, move.reason) == (AliasState(2), AliasState(1, 2, 0.25), "canary v2")
    assert target.aliases(name) == {"live": AliasState(1, 2, 0.25)}
    assert harness.second().aliases(name) == {"live": AliasState(1, 2, 0.25)}
    assert harness.native_alias(name, "live") == AliasState(1, 2, 0.25)
    assert harness.ok("alias", "list", name)["aliases"] == {"live": {"primary": 1, "canary": 2, "weight": 0.25}}
    listed = harness.cli("alias", "list", name)
    assert listed.code == 0 and "v1 + v2 at 25%" in listed.stdout, listed.stdout + listed.stderr
    (summary,) = [f for f in target.functions() if f.name == name]
    assert (summary.versions, summary.latest, summary.aliases) == (2, 2, {"live": AliasState(1, 2, 0.25)})
    assert target.history(name, "live")[-1].after == AliasState(1, 2, 0.25)


def test_rollback_twice_then_there_is_nothing_to_roll_back_to(harness: Harness) -> None:
    name = "c-rollback"
    a, b = harness.archives(name, 2)
    target = harness.target()
    target.deploy(a)
    target.deploy(b, alias=None)

    moved = harness.ok("alias", "set", name, "live", "2", "--reason", "try v2")["move"]
    assert moved["before"]["primary"] == 1 and moved["after"]["primary"] == 2 and moved["reason"] == "try v2"
    canary = harness.ok("alias", "set", name, "live", "v1", "--canary", "2", "--weight", "0.5")["move"]
    assert canary["after"] == {"primary": 1, "canary": 2, "weight": 0.5}
    assert target.aliases(name) == {"live": AliasState(1, 2, 0.5)}
    assert "v1 + v2 at 50%" in harness.cli("alias", "list", name).stdout
    assert harness.native_alias(name, "live") == AliasState(1, 2, 0.5)

    history = target.history(name, "live")
    assert [m.after.primary for m in history] == [1, 2, 1]
    assert history[0].before is None and history[2].after.canary == 2
    assert all("@" in m.actor for m in history)

    first = harness.ok("rollback", name, "live", "--reason", "canary looks bad")["move"]
    assert first["after"] == {"primary": 2, "canary": None, "weight": 0.0} and first["undoes"] == 2
    assert first["before"] == {"primary": 1, "canary": 2, "weight": 0.5}
    assert harness.native_alias(name, "live") == AliasState(2)
    second = target.rollback(name, "live")
    assert (second.before, second.after, second.undoes) == (AliasState(2), AliasState(1), 1)
    assert harness.native_alias(name, "live") == AliasState(1)

    third = harness.cli("rollback", name, "live")
    assert third.code == 2 and "nothing to roll back to" in third.stderr, third.stderr
    assert target.aliases(name) == {"live": AliasState(1)} and harness.native_alias(name, "live") == AliasState(1)
    moves = target.history(name, "live")
    assert [m.undoes for m in moves] == [None, None, None, 2, 1]
    assert len(harness.native_history(name, "live")) == 5
    shown = harness.cli("alias", "history", name, "live")
    assert shown.code == 0 and "rollback of #2" in shown.stdout and "canary looks bad" in shown.stdout


def test_the_history_is_shared_by_a_second_client(harness: Harness, tmp_path: Path) -> None:
    name = "c-shared"
    mine = harness.target()
    for archive in harness.archives(name, 2):
        assert mine.deploy(archive).created is True
    assert harness.native_alias(name, "live") == AliasState(2)
    canary = harness.cli("alias", "set", name, "live", "2", "--canary", "1", "--weight", "0.25", "--reason", "try v1")
    assert canary.code == 0, canary.stderr
    assert harness.native_alias(name, "live") == AliasState(2, 1, 0.25)

    theirs = harness.second()  # another object, configured as another machine would be
    assert theirs.history(name, "live") == mine.history(name, "live")
    assert theirs.aliases(name) == {"live": AliasState(2, 1, 0.25)}

    # another machine's CLI: another folder, another state folder, another user
    laptop = tmp_path / "laptop-b"
    laptop.mkdir()
    moves = harness.ok("alias", "history", name, "live", second=True, cwd=laptop)["history"]
    assert [(m["before"] and m["before"]["primary"], m["after"]["primary"], m["after"]["canary"]) for m in moves] == [
        (None, 1, None), (1, 2, None), (2, 2, 1)]
    assert moves[2]["reason"] == "try v1" and "@" in moves[2]["actor"]
    assert moves == [asdict(m) for m in mine.history(name, "live")]
    assert harness.ok("alias", "list", name, second=True, cwd=laptop)["aliases"]["live"] == {
        "primary": 2, "canary": 1, "weight": 0.25}

    back = harness.ok("rollback", name, "live", second=True, cwd=laptop)["move"]  # from the other machine
    assert back["after"] == {"primary": 2, "canary": None, "weight": 0.0} and back["undoes"] == 2
    assert back["actor"].startswith("colleague@")
    assert harness.native_alias(name, "live") == AliasState(2)
    seen = mine.history(name, "live")  # the first client sees the other's move
    assert len(seen) == 4 and seen[-1].undoes == 2 and seen[-1].actor.startswith("colleague@")

    again = mine.rollback(name, "live", "v2 is bad too")  # and moves on from it
    assert (again.after, again.undoes, again.reason) == (AliasState(1), 1, "v2 is bad too")
    assert harness.native_alias(name, "live") == AliasState(1)
    assert [m.undoes for m in theirs.history(name, "live")] == [None, None, None, 2, 1]
    third = harness.cli("rollback", name, "live", second=True, cwd=laptop)
    assert third.code == 2 and "nothing to roll back to" in third.stderr, third.stderr
    assert harness.native_alias(name, "live") == AliasState(1)
    assert len(harness.native_history(name, "live")) == 5


# --- refused moves leave everything as it was --------------------------------------------------------------


def test_an_alias_to_a_missing_version_is_refused_and_changes_nothing(harness: Harness) -> None:
    name = "c-missing"
    target = harness.target()
    target.deploy(harness.archive(name))
    before = snapshot(harness, target, name)

    missing = harness.cli("alias", "set", name, "live", "7")
    assert missing.code == 12 and f"{name} has no version 7" in missing.stderr and "v1" in missing.stderr, \
        missing.stderr
    canary_missing = harness.cli("alias", "set", name, "live", "1", "--canary", "5", "--weight", "0.1")
    assert canary_missing.code == 12 and "no version 5" in canary_missing.stderr, canary_missing.stderr
    with pytest.raises(NotFoundError) as caught:
        target.set_alias(name, "live", AliasState(9), "nope")
    assert caught.value.exit_code == 12 and f"{name} has no version 9" in caught.value.message
    with pytest.raises(NotFoundError):
        target.set_alias(name, "staging", AliasState(1, 9, 0.5))
    weight = harness.cli("alias", "set", name, "live", "1", "--canary", "2", "--weight", "1.5")
    assert weight.code == 2 and "canary weight 1.5 is out of range" in weight.stderr and "[0, 1]" in weight.stderr

    assert snapshot(harness, target, name) == before
    assert target.aliases(name) == {"live": AliasState(1)}  # no staging alias made
    unknown = harness.cli("rollback", "no-such-function", "live")
    assert unknown.code == 12 and "no-such-function" in unknown.stderr, unknown.stderr


def test_concurrent_moves_from_one_state_one_wins_and_the_other_changes_nothing(harness: Harness) -> None:
    name = "c-race"
    setup = harness.target()
    for archive in harness.archives(name, 2):
        setup.deploy(archive, alias=None)
    setup.set_alias(name, "live", AliasState(1), "start")
    clients = [harness.target(), harness.second()]
    start = AliasState(1)
    assert [client.aliases(name)["live"] for client in clients] == [start, start]  # both read the same state
    for client in clients:
        client.history(name, "live")  # both connected before the race
    moves_before = setup.history(name, "live")

    # at once, from two threads: exactly one wins
    wanted = [AliasState(2), AliasState(1, 2, 0.5)]
    barrier = threading.Barrier(2)
    outcome: list[Any] = [None, None]

    def move(i: int) -> None:
        barrier.wait()
        try:
            outcome[i] = clients[i].set_alias(name, "live", wanted[i], f"client {i}", expect=start)
        except Exception as exc:  # the loser's error, checked below
            outcome[i] = exc

    threads = [threading.Thread(target=move, args=(i,)) for i in (0, 1)]
    with harness.lined_up(*clients):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    won = [i for i in (0, 1) if not isinstance(outcome[i], BaseException)]
    assert len(won) == 1, outcome
    (winner,), loser = won, 1 - won[0]
    assert isinstance(outcome[loser], ConflictError) and outcome[loser].exit_code == 13, outcome[loser]
    assert outcome[winner].before == start and outcome[winner].after == wanted[winner]
    assert setup.aliases(name) == {"live": wanted[winner]}
    assert harness.native_alias(name, "live") == wanted[winner]
    history = setup.history(name, "live")
    assert history[:-1] == moves_before and len(history) == len(moves_before) + 1
    assert (history[-1].before, history[-1].after, history[-1].reason) == (start, wanted[winner], f"client {winner}")
    assert len(harness.native_history(name, "live")) == len(history)

    # one after the other: the second's state is stale, and it changes nothing
    now = wanted[winner]
    mine, theirs = clients[loser], clients[winner]
    assert mine.aliases(name)["live"] == theirs.aliases(name)["live"] == now
    first = mine.set_alias(name, "live", AliasState(2, 1, 0.1), "mine", expect=now)
    assert (first.before, first.after) == (now, AliasState(2, 1, 0.1))
    after_mine = snapshot(harness, setup, name)
    with pytest.raises(ConflictError) as caught:
        theirs.set_alias(name, "live", AliasState(1, 2, 0.9), "theirs", expect=now)  # read before my move
    assert caught.value.exit_code == 13
    assert snapshot(harness, setup, name) == after_mine
    assert setup.aliases(name) == {"live": AliasState(2, 1, 0.1)}
    assert [m.reason for m in setup.history(name, "live")] == ["start", f"client {winner}", "mine"]

    # from the state it is at, the same move goes through; expect=None: only an alias not set yet
    moved = theirs.set_alias(name, "live", AliasState(1, 2, 0.9), "theirs", expect=AliasState(2, 1, 0.1))
    assert moved.before == AliasState(2, 1, 0.1) and harness.native_alias(name, "live") == AliasState(1, 2, 0.9)
    with pytest.raises(ConflictError):
        mine.set_alias(name, "live", AliasState(1), expect=None)
    assert setup.aliases(name) == {"live": AliasState(1, 2, 0.9)}
    made = mine.set_alias(name, "staging", AliasState(2), expect=None)
    assert made.before is None and setup.aliases(name)["staging"] == AliasState(2)


def test_ls_versions_and_delete_refused_while_aliased(harness: Harness) -> None:
    name = "c-delete"
    a, b = harness.archives(name, 2)
    target = harness.target()
    assert name not in [f.name for f in target.functions()]
    target.deploy(a)
    target.deploy(b, alias=None)
    (listed,) = [f for f in harness.ok("ls")["functions"] if f["name"] == name]
    assert (listed["versions"], listed["latest"]) == (2, 2) and listed["aliases"]["live"]["primary"] == 1
    human = harness.cli("ls")
    assert human.code == 0
    (line,) = [line for line in human.stdout.splitlines() if line.startswith(f"{name} ")]
    assert "live -> v1" in line

    refused = harness.cli("delete", f"{name}:1")
    assert refused.code == 13 and "live" in refused.stderr, refused.stderr
    with pytest.raises(ConflictError) as caught:
        target.delete(name, 1)
    assert caught.value.exit_code == 13
    assert numbers(target, name) == [1, 2] and harness.native_alias(name, "live") == AliasState(1)

    assert [d["number"] for d in harness.ok("delete", f"{name}:2")["deleted"]] == [2]
    assert numbers(target, name) == [1]
    again = harness.cli("delete", f"{name}:2")
    assert again.code == 12 and "no version 2" in again.stderr, again.stderr

    asked = harness.cli("delete", name)  # a whole function: only with --yes when there is no terminal to ask on
    assert asked.code == 2 and "--yes" in asked.stderr and "nothing was deleted" in asked.stderr, asked.stderr
    assert numbers(target, name) == [1] and target.aliases(name) == {"live": AliasState(1)}
    gone = harness.ok("delete", name, "--yes")["deleted"]
    assert [d["number"] for d in gone] == [1]
    assert name not in [f.name for f in target.functions()]
    unknown = harness.cli("versions", name)
    assert unknown.code == 12 and name in unknown.stderr
    as_json = harness.cli("versions", name, "--json")
    assert as_json.code == 12 and error_json(as_json)["exit_code"] == 12


# --- planning reads only -----------------------------------------------------------------------------------


def test_a_dry_run_changes_nothing(harness: Harness) -> None:
    name = "c-dry-run"
    a, b = harness.archives(name, 2)
    target = harness.target()
    target.deploy(a)
    before = snapshot(harness, target, name)

    plan = target.plan_deploy(b, reason="not yet")
    assert actions(plan) == [*harness.update_actions, "set-alias"]
    assert plan.function == name and plan.target == harness.name
    assert snapshot(harness, target, name) == before

    dry = harness.ok("deploy", str(b), "--dry-run", *harness.deploy_args)
    assert dry["dry_run"] is True
    steps = dry["plan"]["steps"]
    assert [s["action"] for s in steps] == [*harness.update_actions, "set-alias"]
    for step in steps:
        assert set(step) == {"action", "summary", "details"}, step
        assert step["summary"] and isinstance(step["summary"], str) and isinstance(step["details"], dict)
    human = harness.cli("deploy", str(b), "--dry-run", *harness.deploy_args)
    assert human.code == 0 and "nothing changed" in human.stdout, human.stdout + human.stderr
    assert all(action in human.stdout for action in harness.update_actions), human.stdout

    assert [(v["number"], v["aliases"]) for v in harness.ok("versions", name)["versions"]] == [(1, ["live"])]
    assert snapshot(harness, target, name) == before


def test_describe_shows_urls_versions_with_their_target_and_aliases(harness: Harness) -> None:
    name = "c-describe"
    target = harness.target()
    first, second = harness.archives(name, 2)
    target.deploy(first)
    target.deploy(second, alias=None)
    target.set_alias(name, "live", AliasState(1, 2, 0.1))
    about = harness.ok("describe", name)
    assert about["function"] == name and about["target"] == harness.name
    assert set(about["urls"]) == {f"{name}:live", f"{name}:1", f"{name}:2"}
    assert about["urls"][f"{name}:live"] == target.invoke_url(Qualifier(name, alias="live"))
    assert [(v["number"], v["target"], len(v["sha256"])) for v in about["versions"]] == [
        (1, harness.name, 64), (2, harness.name, 64)]
    assert about["aliases"] == {"live": {"primary": 1, "canary": 2, "weight": 0.1}}
    text = harness.cli("describe", name)
    assert text.code == 0 and "v1 + v2 at 10%" in text.stdout and f"{name}:2" in text.stdout
    missing = harness.cli("describe", "c-no-such-function")
    assert missing.code == 12, missing.stdout + missing.stderr
