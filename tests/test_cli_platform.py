"""The platform commands end to end: the real CLI against a real `fnpack serve` gateway.

deploy (folder, archive, idempotent), invoke (--data, --file, pinned versions, aliases, a canary's
split, --batch), logs, the errors that must be clear (bad qualifier or canary option, missing token,
no gateway) and `fnpack up`. What every target does the same (deploy, --no-promote, --dry-run, ls /
versions / delete, aliases with a canary, history, rollback) is the contract suite's: tests/targets/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, CliResult, fnpack
from servers import free_port, platform, session_processes

pytestmark = pytest.mark.timeout(600)

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VERSICOLOR = {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4}
VIRGINICA = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}


def _build(folder: Path) -> Path:
    done = fnpack("build", str(folder), "--json")
    assert done.code == 0, done.stderr
    return Path(done.json()["archive"])


@pytest.fixture(scope="module")
def iris(tmp_path_factory) -> dict[str, Path]:
    """The iris example built twice: `a` as shipped, `b` with one changed file (another sha256)."""
    root = tmp_path_factory.mktemp("iris")
    folder_a, folder_b = root / "a" / "iris", root / "b" / "iris"
    for folder in (folder_a, folder_b):
        shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    with open(folder_b / "score.py", "a", encoding="utf-8") as f:
        f.write("\n# version b\n")
    return {"folder": folder_a, "a": _build(folder_a), "b": _build(folder_b)}


class Platform:
    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.state_dir = state_dir
        self.env = {"FNPACK_URL": url, "FNPACK_STATE_DIR": str(state_dir), "FNPACK_TOKEN": "",
                    "FNPACK_INVOKE_TOKEN": "", "FNPACK_TARGET": "local"}

    def __call__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        return fnpack(*args, env={**self.env, **(env or {})}, cwd=cwd)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> dict:
        done = self(*args, "--json", env=env)
        assert done.code == 0, f"{args}: {done.code}\n{done.stdout}\n{done.stderr}"
        return done.json()


@pytest.fixture
def gw(tmp_path) -> Platform:
    state_dir = tmp_path / "state"
    with platform(state_dir) as url:
        yield Platform(url, state_dir)


def _deploy(gw: Platform, archive: Path, *extra: str) -> dict:
    return gw.ok("deploy", str(archive), *extra)


def test_deploy_a_folder_then_its_archive_gives_the_same_version(gw, iris):
    first = _deploy(gw, iris["folder"])
    assert first["created"] is True and first["version"]["number"] == 1
    assert first["move"]["before"] is None and first["move"]["after"]["primary"] == 1
    assert first["url"] == f"{gw.url}/function/iris"
    assert first["build"]["sha256"] == first["version"]["sha256"]

    again = _deploy(gw, iris["a"])  # the folder's build is deterministic: the same archive
    assert (again["created"], again["version"]["number"], again["move"]) == (False, 1, None)

    human = gw("deploy", str(iris["a"]))
    assert human.code == 0, human.stderr
    assert "v1" in human.stdout and "already deployed" in human.stdout
    assert f"{gw.url}/function/iris" in human.stdout

    listed = gw.ok("versions", "iris")["versions"]
    assert [(v["number"], v["aliases"]) for v in listed] == [(1, ["live"])]
    assert len(gw.ok("alias", "history", "iris", "live")["history"]) == 1  # no-op redeploys move nothing


def test_invocations_follow_the_aliases_deploys_and_canaries_move(gw, iris):
    # What deploy --no-promote, --alias and a canary do to aliases and versions is the contract suite's
    # (tests/targets/test_contract.py, for every target); here: that invocations really go there.
    _deploy(gw, iris["a"])
    _deploy(gw, iris["b"], "--no-promote")
    assert gw.ok("invoke", "iris", "--data", json.dumps(SETOSA))["version"] == 1
    assert gw.ok("invoke", "iris:2", "--data", json.dumps(SETOSA))["version"] == 2
    _deploy(gw, iris["b"], "--alias", "staging")
    assert gw.ok("invoke", "iris:staging", "--data", json.dumps(SETOSA))["version"] == 2
    assert gw.ok("invoke", "iris", "--data", json.dumps(SETOSA))["version"] == 1

    gw.ok("alias", "set", "iris", "live", "v1", "--canary", "2", "--weight", "0.5")
    served = {gw.ok("invoke", "iris", "--data", json.dumps(SETOSA))["version"] for _ in range(6)}
    assert served == {1, 2}


def test_invoke_with_data_file_and_a_pinned_version(gw, iris, tmp_path):
    _deploy(gw, iris["a"])
    _deploy(gw, iris["b"], "--no-promote")
    plain = gw("invoke", "iris", "--data", json.dumps(SETOSA))
    assert plain.code == 0, plain.stderr
    assert json.loads(plain.stdout)["label"] == "setosa"

    request = tmp_path / "request.json"
    request.write_text(json.dumps(VIRGINICA))
    answer = gw.ok("invoke", "iris:live", "--file", str(request))
    assert answer["answer"]["label"] == "virginica" and answer["version"] == 1
    assert gw.ok("invoke", "iris:1", "--file", str(request))["version"] == 1
    assert gw.ok("invoke", "iris:2", "--data", json.dumps(VERSICOLOR))["answer"]["label"] == "versicolor"

    many = gw.ok("invoke", "iris", "--data", json.dumps([SETOSA, VIRGINICA]))["answer"]
    assert [r["label"] for r in many] == ["setosa", "virginica"]

    bad = gw("invoke", "iris", "--data", json.dumps({"sepal_length": 1}))
    assert bad.code == 1 and "sepal_width" in bad.stderr and "Traceback" not in bad.stderr
    not_json = gw("invoke", "iris", "--data", "{nope")
    assert not_json.code == 2 and "--data is not JSON" in not_json.stderr
    missing = gw("invoke", "iris:7", "--data", json.dumps(SETOSA))
    assert missing.code == 12 and "7" in missing.stderr
    unknown = gw("invoke", "nosuch", "--data", json.dumps(SETOSA))
    assert unknown.code == 12 and "nosuch" in unknown.stderr


def test_batch_keeps_order_and_reports_failed_lines(gw, iris, tmp_path):
    _deploy(gw, iris["a"])
    species = [(SETOSA, "setosa"), (VERSICOLOR, "versicolor"), (VIRGINICA, "virginica")]
    lines, expected = [], []
    for i in range(60):
        record, label = species[i % 3]
        lines.append(json.dumps(record))
        expected.append(label)
    lines[10] = ""                                    # line 11: blank, answered null in its place
    lines[20] = "{not json"                           # line 21
    lines[30] = json.dumps({"sepal_length": 5.0})     # line 31: refused by the function
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"

    done = gw("invoke", "iris", "--batch", str(source), "--out", str(out), "--concurrency", "6")
    assert done.code == 1, done.stderr
    assert "line 21:" in done.stderr and "line 31:" in done.stderr and "Traceback" not in done.stderr
    assert "59 record(s)" in done.stderr and "2 failed" in done.stderr
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == 60  # line N of the output answers line N of the input
    input_lines = list(range(1, 61))
    assert answers[10] is None
    for n, answer in zip(input_lines, answers):
        if n == 11:
            continue
        if n in (21, 31):
            assert answer["line"] == n and answer["error"]
        else:
            assert answer["label"] == expected[n - 1], n
    assert "not JSON" in answers[input_lines.index(21)]["error"]
    assert "sepal_width" in answers[input_lines.index(31)]["error"]

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r, _ in species) + "\n\n")
    summary = gw.ok("invoke", "iris:1", "--batch", str(good), "--out", str(out))
    assert (summary["records"], summary["ok"], summary["failed"]) == (3, 3, 0)
    assert [json.loads(x) and json.loads(x)["label"] for x in out.read_text().splitlines()] == [
        "setosa", "versicolor", "virginica", None]  # the file's last line is blank

    to_stdout = gw("invoke", "iris", "--batch", str(good))  # no --out: JSON Lines on stdout, the summary on stderr
    assert to_stdout.code == 0 and len(to_stdout.stdout.splitlines()) == 4 and "3 ok" in to_stdout.stderr
    alone = gw("invoke", "iris", "--out", str(out), "--data", "{}")
    assert alone.code == 2 and "--out goes with --batch" in alone.stderr


def test_logs_show_the_functions_output(gw, iris):
    _deploy(gw, iris["a"])
    assert gw("invoke", "iris", "--data", json.dumps({"nope": 1})).code == 1  # a user error is logged
    gw.ok("invoke", "iris", "--data", json.dumps(SETOSA))
    done = gw("logs", "iris", "--tail", "200")
    assert done.code == 0, done.stderr
    lines = gw.ok("logs", "iris", "--tail", "200")["lines"]
    assert lines == done.stdout.splitlines()
    assert lines, "a function that started and answered has log lines"
    assert len(gw.ok("logs", "iris", "--tail", "1")["lines"]) <= 1
    assert gw("logs", "nosuch").code == 12
    # SIGINT as a terminal's Ctrl-C sends it; restored to its default first, since a test run started in
    # the background (as CI may be) ignores SIGINT, and an ignored signal stays ignored across exec.
    follow = subprocess.Popen([sys.executable, "-m", "fnpack", "logs", "iris", "--follow", "--tail", "0"],
                              env={**os.environ, **gw.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(3)
        assert follow.poll() is None, "--follow keeps streaming"
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(15)


@pytest.mark.parametrize("args", [
    ("invoke", "Iris", "--data", "{}"),
    ("invoke", "iris:0", "--data", "{}"),
    ("invoke", "iris:Live", "--data", "{}"),
    ("invoke", "iris:a_b", "--data", "{}"),
    ("versions", "iris:2"),
    ("delete", "iris:live"),
    ("alias", "set", "iris", "42", "1"),
    ("alias", "history", "iris", "Bad"),
    ("rollback", "../x", "live"),
    ("logs", "iris/../x"),
])
def test_bad_qualifiers_fail_before_any_request(args, tmp_path):
    # Nothing listens at the URL: had a request been made, the error would be "no fnpack platform".
    env = {"FNPACK_URL": f"http://127.0.0.1:{free_port()}", "FNPACK_STATE_DIR": str(tmp_path),
           "FNPACK_TOKEN": "t"}
    done = fnpack(*args, env=env)
    assert done.code == 2, done.stderr
    assert "no fnpack platform" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("error:")


@pytest.mark.parametrize("args, words", [
    (("--canary", "2"), "--weight"),
    (("--weight", "0.1"), "--canary"),
    (("--canary", "2", "--weight", "1.5"), "out of range"),
    (("--canary", "1", "--weight", "0.1"), "canary is the primary"),
])
def test_bad_canary_options_fail_before_any_request(args, words, tmp_path):
    env = {"FNPACK_URL": f"http://127.0.0.1:{free_port()}", "FNPACK_STATE_DIR": str(tmp_path), "FNPACK_TOKEN": "t"}
    done = fnpack("alias", "set", "iris", "live", "1", *args, env=env)  # nothing listens: no request was made
    assert done.code == 2 and words in done.stderr, done.stderr
    assert "no fnpack platform" not in done.stderr


def test_missing_or_wrong_token_is_a_clear_error(gw, tmp_path):
    empty = tmp_path / "elsewhere"
    missing = gw("ls", env={"FNPACK_STATE_DIR": str(empty)})
    assert missing.code == 2
    assert "FNPACK_TOKEN" in missing.stderr and str(empty / "token") in missing.stderr
    wrong = gw("ls", env={"FNPACK_TOKEN": "not-the-token"})
    assert wrong.code == 2 and "refused the token" in wrong.stderr and "hint:" in wrong.stderr
    assert gw.ok("ls") == {"functions": []}
    right = gw("ls", "--json", env={"FNPACK_TOKEN": (gw.state_dir / "token").read_text().strip(),
                                    "FNPACK_STATE_DIR": str(empty)})
    assert right.code == 0, right.stderr


def test_invoke_token_is_required_when_the_platform_sets_one(iris, tmp_path):
    state_dir = tmp_path / "state"
    with platform(state_dir, "--invoke-token", "open-sesame") as url:
        gw = Platform(url, state_dir)
        _deploy(gw, iris["a"])
        refused = gw("invoke", "iris", "--data", json.dumps(SETOSA))
        assert refused.code == 2 and "invoke token" in refused.stderr and "FNPACK_INVOKE_TOKEN" in refused.stderr
        wrong = gw("invoke", "iris", "--data", json.dumps(SETOSA), "--invoke-token", "nope")
        assert wrong.code == 2
        answer = gw.ok("invoke", "iris", "--data", json.dumps(SETOSA), env={"FNPACK_INVOKE_TOKEN": "open-sesame"})
        assert answer["answer"]["label"] == "setosa"


def test_no_gateway_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    env = {"FNPACK_URL": url, "FNPACK_STATE_DIR": str(tmp_path), "FNPACK_TOKEN": "t"}
    done = fnpack("ls", env=env)
    assert done.code == 11
    assert f"no fnpack platform at {url}" in done.stderr and "fnpack serve" in done.stderr
    as_json = fnpack("invoke", "iris", "--data", "{}", "--json", env=env)
    assert as_json.code == 11 and json.loads(as_json.stderr)["error"] == "start"
    # a cluster target with no cluster configured: where fnpack looked and how to name one
    other = fnpack("ls", "--target", "knative", env={**env, "KUBECONFIG": "", "FNPACK_KUBECONFIG": "",
                                                     "HOME": str(tmp_path)})
    assert other.code == 2 and "no kubeconfig" in other.stderr and "--kubeconfig" in other.stderr, other.stderr


def test_up_builds_starts_deploys_and_shows_how_to_call(iris, tmp_path):
    folder = tmp_path / "iris"
    shutil.copytree(iris["folder"], folder, ignore=shutil.ignore_patterns("dist"))
    state_dir = tmp_path / "state"
    url = f"http://127.0.0.1:{free_port()}"
    env = {"FNPACK_URL": url, "FNPACK_STATE_DIR": str(state_dir), "FNPACK_TOKEN": "", "FNPACK_INVOKE_TOKEN": ""}
    pid = None
    try:
        done = fnpack("up", str(folder), "--json", env=env)
        pid_file = state_dir / "gateway.pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        assert done.code == 0, done.stderr
        result = done.json()
        assert result["platform"]["started"] is True and result["platform"]["pid"] == pid
        assert result["version"]["number"] == 1 and result["created"] is True
        assert [s["answer"]["label"] for s in result["samples"]] == ["setosa", "versicolor", "virginica"]
        assert all(s["matches_expect"] for s in result["samples"])
        assert result["invoke_url"] == f"{url}/function/iris"
        assert result["curl"].startswith(f"curl -s {url}/function/iris") and "sepal_length" in result["curl"]
        snippet = subprocess.run([sys.executable, "-c", result["python"]], capture_output=True, text=True, timeout=60)
        assert snippet.returncode == 0 and "setosa" in snippet.stdout, snippet.stderr
        curl = subprocess.run(["bash", "-c", result["curl"]], capture_output=True, text=True, timeout=60) \
            if shutil.which("curl") else None
        assert curl is None or "setosa" in curl.stdout
        assert (state_dir / "gateway.log").is_file()

        again = fnpack("up", str(folder), env=env)  # the platform is up: reuse it, same version
        assert again.code == 0, again.stderr
        assert "using the one at" in again.stdout and "already deployed" in again.stdout
        assert f"curl -s {url}/function/iris" in again.stdout and "import httpx" in again.stdout
    finally:
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while session_processes(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = session_processes(pid)
            if left:
                os.killpg(pid, signal.SIGKILL)
            assert not left, f"processes left after SIGTERM: {left}"
    assert pid is not None
