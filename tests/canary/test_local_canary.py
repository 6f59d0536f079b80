"""`fnpack canary` on the local platform, through the real CLI against `fnpack serve` (tests/canary/conftest.py):
the gateway's own metrics judge each window, with the spec's samples as synthetic traffic (`--load samples`)
unless a test is about the lack of traffic."""

from __future__ import annotations

import json
import re
import signal

import httpx
import pytest

from canary.conftest import FAST, NAME, build_variant, events

def test_a_good_version_is_promoted_through_every_step_and_the_history_tells_it(local):
    local.reset()
    done = local("canary", NAME, "2", *FAST, "--spec", str(local.folders[2]), "--json")
    assert done.code == 0, done.stderr
    seen = events(done.stdout)
    assert [e["event"] for e in seen] == ["start", "step", "window", "step", "window", "step", "end"]
    assert [e["weight"] for e in seen if e["event"] == "step"] == [25, 50, 100]
    assert all(e["verdict"] == "pass" and e["canary"]["requests"] >= 20 for e in seen if e["event"] == "window")
    assert seen[-1]["outcome"] == "promoted" and local.alias() == {"primary": 2, "canary": None, "weight": 0.0}
    reasons = [m["reason"] for m in local.history()[-3:]]
    assert reasons[0].startswith("canary v2 25%: started: steps 25,50,100 every 2s")
    assert reasons[1].startswith("canary v2 50%: errors 0% (max 1%)") and "at 25%" in reasons[1]
    assert reasons[2].startswith("canary v2 promoted: errors 0% (max 1%)") and "at 50%" in reasons[2]
    back = local.ok("rollback", NAME)  # every step is a move: a rollback undoes the promotion
    assert back["move"]["after"] == {"primary": 1, "canary": 2, "weight": 0.5}


def test_a_version_failing_a_fifth_of_its_requests_is_rolled_back_at_the_first_step(local):
    local.reset()
    done = local("canary", NAME, "3", *FAST, "--spec", str(local.folders[3]), "--json")
    assert done.code == 14, done.stdout + done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])
    rate = re.search(r"errors ([0-9.]+)% \(max 1%\)", error["message"])
    assert "rolled back at 25%" in error["message"] and rate and float(rate.group(1)) >= 10, error
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}
    assert [e["weight"] for e in events(done.stdout) if e["event"] == "step"] == [25, 0]
    last = local.history()[-1]
    assert last["reason"].startswith("canary v3 rolled back at 25%: errors") and last["after"]["primary"] == 1


def test_a_version_three_times_slower_is_rolled_back_on_latency(local):
    local.reset()
    done = local("canary", NAME, "4", *FAST, "--max-regression", "1.5x", "--spec", str(local.folders[4]))
    assert done.code == 14, done.stdout + done.stderr
    assert "the primary's" in done.stderr and "max 1.5x" in done.stderr, done.stderr
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


def test_no_traffic_is_not_success_the_rollout_halts_and_rolls_back(local):
    local.reset()
    done = local("canary", NAME, "2", "--steps", "50", "--interval", "1s", "--max-wait", "3s",
                 "--min-requests", "5")
    assert done.code == 14, done.stdout + done.stderr
    assert "halted at 50%: too little traffic: 0 of 5 requests needed" in done.stderr, done.stderr
    assert "--load samples" in done.stderr
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


def test_a_killed_rollout_stays_at_its_step_says_so_and_resumes(local):
    local.reset()
    spec = ("--spec", str(local.folders[2]))
    first = local.start(NAME, "2", *FAST[:3], "30s", *FAST[4:], *spec)
    try:
        local.wait_for_weight(0.25)
        first.kill()
        first.wait()
    finally:
        first.kill()
    status = local.ok("canary", "status", NAME)
    assert status["under_way"] and status["version"] == 2 and status["weight"] == 25, status
    assert status["running_here"] is None
    assert "resumes it" in local("canary", "status", NAME).stdout
    again = local("canary", NAME, "2", *FAST, *spec, "--json")
    assert again.code == 0, again.stderr
    seen = events(again.stdout)
    assert seen[0]["resumed_at"] == 25 and [e["weight"] for e in seen if e["event"] == "step"] == [50, 100]
    assert local.alias() == {"primary": 2, "canary": None, "weight": 0.0}


def test_an_aborted_rollout_rolls_back_and_the_running_one_stops(local):
    local.reset()
    running = local.start(NAME, "2", *FAST[:3], "30s", *FAST[4:], "--spec", str(local.folders[2]))
    try:
        local.wait_for_weight(0.25)
        second = local("canary", NAME, "2", *FAST, "--spec", str(local.folders[2]))
        assert second.code == 13 and "already running on this machine" in second.stderr, second.stderr
        assert local.ok("canary", "status", NAME)["running_here"]["pid"] == running.pid
        aborted = local.ok("canary", "abort", NAME, "--reason", "looks wrong")
        assert aborted["move"]["after"] == {"primary": 1, "canary": None, "weight": 0.0}
        _, stderr = running.communicate(timeout=30)
    finally:
        running.kill()
    assert running.returncode == 13 and "moved by someone else" in stderr, stderr
    assert local.history()[-1]["reason"] == "canary v2 aborted at 25%: looks wrong"
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


def test_a_manual_move_during_a_rollout_stops_it_where_the_person_put_it(local):
    local.reset()
    running = local.start(NAME, "2", *FAST[:3], "30s", *FAST[4:], "--spec", str(local.folders[2]))
    try:
        local.wait_for_weight(0.25)
        local.ok("alias", "set", NAME, "live", "2", "--canary", "1", "--weight", "0.1")
        _, stderr = running.communicate(timeout=30)
    finally:
        running.kill()
    assert running.returncode == 13 and "moved by someone else" in stderr, stderr
    assert local.alias() == {"primary": 2, "canary": 1, "weight": 0.1}


def test_ctrl_c_leaves_the_alias_at_its_recorded_step(local):
    local.reset()
    running = local.start(NAME, "2", *FAST[:3], "30s", *FAST[4:], "--spec", str(local.folders[2]))
    try:
        local.wait_for_weight(0.25)
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=30)
    finally:
        running.kill()
    assert running.returncode == 130 and "resumes it" in stderr, stderr
    assert local.alias() == {"primary": 1, "canary": 2, "weight": 0.25}
    assert local.ok("canary", "status", NAME)["under_way"]
    local.ok("canary", "abort", NAME)


def test_deploy_canary_rolls_out_with_the_specs_canary_section(local, tmp_path):
    local.reset()
    folder, archive = build_variant(tmp_path, 2, canary={"steps": [50], "interval": "1s", "min_requests": 10,
                                                         "load": "samples"})
    # another sha256 than v2's (the spec differs): a new version, rolled out from v1
    done = local("deploy", str(folder), "--canary")
    assert done.code == 0, done.stderr
    assert "none moved yet (--canary" in done.stdout and "step      50%" in done.stdout
    assert "promoted canaried:live -> v5" in done.stdout, done.stdout
    assert local.alias() == {"primary": 5, "canary": None, "weight": 0.0}


def test_dry_run_says_every_move_and_changes_nothing(local):
    local.reset()
    done = local.ok("canary", NAME, "2", "--steps", "10,50", "--dry-run")
    assert done["moves"] == ["v1 + v2 at 10%", "v1 + v2 at 50%", "v2"] and done["observer"].startswith("the local")
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


@pytest.mark.parametrize("args, code, text", [
    (("2", "--steps", "50,10"), 2, "steps are increasing percents"),
    (("2", "--max-error-rate", "150%"), 2, "out of range"),
    (("2", "--interval", "0s"), 2, "must be more than 0"),
    (("2", "--max-latency", "p100=1s"), 2, "between p0 and p100"),
    (("2", "--max-regression", "0.5x"), 2, "at least 1x"),
    (("2", "--load", "lots"), 2, "not a kind of load"),
    (("9",), 12, "has no version 9"),
    (("1",), 0, "nothing to do"),
])
def test_bad_input_is_named_and_nothing_moves(local, args, code, text):
    local.reset()
    done = local("canary", NAME, *args, "--interval", "1s") if "--interval" not in args else local("canary", NAME,
                                                                                                   *args)
    assert done.code == code, done.stdout + done.stderr
    assert text in done.stdout + done.stderr
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}


def test_another_canary_on_the_alias_is_a_conflict(local):
    local.ok("alias", "set", NAME, "live", "1", "--canary", "3", "--weight", "0.1")
    done = local("canary", NAME, "2", "--interval", "1s")
    assert done.code == 13 and "another canary (v3 at 10%)" in done.stderr, done.stderr
    local.reset()


def test_the_gateway_observer_counts_one_versions_traffic_exactly(local):
    """The observer directly against the gateway: a window's figures are exactly the requests sent."""
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    local.ok("alias", "set", NAME, "live", "1", "--canary", "3", "--weight", "0.5")
    with LocalTarget(LocalSettings.layered({"url": local.url, "token": local.token})) as target:
        observer = target.observer()
        window = observer.open(NAME, "live", (1, 3), 0.5)
        with httpx.Client(base_url=local.url) as client:
            codes = [client.post(f"/function/{NAME}", json={"x": [[1.0]]}).status_code for _ in range(40)]
            client.post(f"/function/{NAME}:3", json={"x": [[1.0]]})  # not through the alias: not counted
        figures = observer.read(window)
    assert figures[1].requests == 20 and figures[1].errors == 0
    assert figures[3].requests == 20 and figures[3].errors == codes.count(500) == 4
    assert 0.01 < figures[1].latency < 0.05  # the median of 20 ms sleeps, within its histogram bucket
    local.reset()


def test_a_bad_canary_section_is_a_spec_error_naming_the_key(local, tmp_path):
    from fnpack.errors import SpecError
    from fnpack.spec import parse_spec

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "fnpack.yaml").write_text("name: canaried\nmodel: m.onnx\ncanary:\n  steps: [50, 10]\n  interval: soon\n")
    with pytest.raises(SpecError) as raised:
        parse_spec({"name": "canaried", "model": "m.onnx", "canary": {"steps": [50, 10]}})
    assert "canary.steps" in raised.value.message and "increasing percents" in raised.value.message
    done = local("canary", NAME, "2", "--spec", str(folder))
    assert done.code == 3 and "canary.steps" in done.stderr and "canary.interval" in done.stderr, done.stderr
    assert local.alias() == {"primary": 1, "canary": None, "weight": 0.0}
