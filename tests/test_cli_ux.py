"""The CLI as a new user meets it (issue 10), through the real CLI and real platforms: contexts across
folders and platforms, login, checks before the build, describe, stdin, JSON Lines to stdout, delete
confirmation, vN qualifiers, logs --since, and archives for another platform refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES, fnpack
from servers import free_port, platform

pytestmark = pytest.mark.timeout(600)

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# No platform named by the environment: what a user with only a configuration file has.
BARE = {"FNPACK_URL": "", "FNPACK_STATE_DIR": "", "FNPACK_TOKEN": "", "FNPACK_INVOKE_TOKEN": "", "FNPACK_TARGET": "",
        "FNPACK_CONTEXT": ""}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("iris") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    done = fnpack("build", str(folder), "--json")
    assert done.code == 0, done.stderr
    return Path(done.json()["archive"])


@pytest.fixture
def two(tmp_path: Path, own_config: Path) -> Iterator[tuple[str, str]]:
    """Two platforms, started in this order (each registers itself in the test's configuration)."""
    with platform(tmp_path / "a" / "state") as first, platform(tmp_path / "b" / "state") as second:
        yield first, second


def cli(*args: str, cwd: Path, **kwargs: str) -> object:
    return fnpack(*args, cwd=cwd, env=BARE, **kwargs)


def contexts(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_contexts_across_two_folders_and_two_platforms(two: tuple[str, str], archive: Path, tmp_path: Path,
                                                      own_config: Path) -> None:
    first, second = two
    port_a, port_b = first.rsplit(":", 1)[1], second.rsplit(":", 1)[1]
    saved = contexts(own_config)
    assert saved["current"] == f"local-{port_a}"  # the first platform registered became current
    assert saved["contexts"][f"local-{port_b}"]["url"] == second
    assert (own_config.stat().st_mode & 0o777) == 0o600

    elsewhere = tmp_path / "my-function-folder"  # not where either platform's state folder is
    elsewhere.mkdir()
    deployed = cli("deploy", str(archive), "--json", cwd=elsewhere)
    assert deployed.code == 0, deployed.stderr
    assert json.loads(deployed.stdout)["url"].startswith(first)
    assert cli("invoke", "iris", "--data", json.dumps(SETOSA), cwd=elsewhere).code == 0

    assert cli("context", "use", f"local-{port_b}", cwd=elsewhere).code == 0
    assert json.loads(cli("ls", "--json", cwd=elsewhere).stdout)["functions"] == []  # the second one is empty
    on_first = json.loads(cli("ls", "--json", "--context", f"local-{port_a}", cwd=elsewhere).stdout)
    assert [f["name"] for f in on_first["functions"]] == ["iris"]
    listed = cli("context", "list", cwd=elsewhere)
    assert f"* local-{port_b}" in listed.stdout and second in listed.stdout

    # Flags and variables still win over the context.
    flagged = json.loads(cli("ls", "--json", "--url", first, "--state-dir", str(tmp_path / "a" / "state"),
                             cwd=elsewhere).stdout)
    assert [f["name"] for f in flagged["functions"]] == ["iris"]
    unknown = cli("ls", "--context", "nowhere", cwd=elsewhere)
    assert unknown.code == 2 and "no context named 'nowhere'" in unknown.stderr


def test_login_checks_the_token_before_saving_it(tmp_path: Path, own_config: Path) -> None:
    state = tmp_path / "remote"
    with platform(state) as url:
        own_config.unlink()  # as on another machine: only what login saves
        token = (state / "token").read_text().strip()
        wrong = cli("login", url, "--password-stdin", "--name", "remote", cwd=tmp_path, input="not-the-token\n")
        assert wrong.code == 2 and "refused the token" in wrong.stderr
        assert not own_config.exists()
        right = cli("login", url, "--password-stdin", "--name", "remote", cwd=tmp_path, input=token + "\n")
        assert right.code == 0, right.stderr
        saved = contexts(own_config)
        assert saved["current"] == "remote" and saved["contexts"]["remote"]["token"] == token
        assert cli("ls", cwd=tmp_path).code == 0  # no state folder here: the context's token is used
        shown = cli("context", "show", "--json", cwd=tmp_path)
        assert json.loads(shown.stdout)["settings"]["token"] == "***" and token not in shown.stdout


def test_deploy_checks_the_platform_before_building(tmp_path: Path) -> None:
    folder = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = fnpack("deploy", str(folder), "--url", nowhere, cwd=tmp_path, env={**BARE, "FNPACK_TOKEN": "t"})
    assert done.code == 11 and f"no fnpack platform at {nowhere}" in done.stderr
    assert not (folder / "dist").exists()  # nothing was built
    state = tmp_path / "state"
    with platform(state) as url:
        no_token = fnpack("deploy", str(folder), "--url", url, "--state-dir", str(tmp_path / "empty"), cwd=tmp_path,
                          env=BARE)
        assert no_token.code == 2 and "no control token" in no_token.stderr
        assert not (folder / "dist").exists()


def test_describe_stdin_batch_to_stdout_delete_confirmation_and_v_qualifiers(archive: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        env = {**BARE, "FNPACK_URL": url, "FNPACK_STATE_DIR": str(state)}
        assert fnpack("deploy", str(archive), env=env).code == 0

        piped = fnpack("invoke", "iris:v1", "--json", env=env, input=json.dumps(SETOSA))
        assert piped.code == 0, piped.stderr
        assert json.loads(piped.stdout)["answer"]["label"] == "setosa" and json.loads(piped.stdout)["version"] == 1

        lines = f"{json.dumps(SETOSA)}\n\nnot json\n{json.dumps(SETOSA)}\n"
        batch = fnpack("invoke", "iris", "--batch", "-", env=env, input=lines)
        assert batch.code == 1
        answers = batch.stdout.splitlines()
        assert len(answers) == 4  # line N answers line N
        assert json.loads(answers[0])["label"] == "setosa" and answers[1] == "null"
        assert json.loads(answers[2])["line"] == 3 and json.loads(answers[3])["label"] == "setosa"
        assert "1 failed" in batch.stderr

        described = fnpack("describe", "iris", "--json", env=env)
        assert described.code == 0, described.stderr
        about = json.loads(described.stdout)
        assert about["urls"]["iris:live"] == f"{url}/function/iris:live" and about["urls"]["iris:1"]
        assert about["versions"][0]["target"] == "local" and len(about["versions"][0]["sha256"]) == 64
        assert about["aliases"] == {"live": {"primary": 1, "canary": None, "weight": 0.0}}
        (pool,) = about["instances"]
        assert pool["version"] == 1 and pool["workers"] and pool["workers"][0]["pid"] > 0
        text = fnpack("describe", "iris", env=env).stdout
        assert "urls" in text and "instances" in text and "pid " in text

        refused_alias = fnpack("alias", "set", "iris", "v2", "1", env=env)
        assert refused_alias.code == 2 and "is a version number, not an alias name" in refused_alias.stderr
        assert fnpack("delete", "iris:v1", env=env).code == 13  # live uses it: v1 is the version, not an alias

        asked = fnpack("delete", "iris", env=env)
        assert asked.code == 2 and "--yes" in asked.stderr and "nothing was deleted" in asked.stderr
        assert fnpack("versions", "iris", env=env).code == 0
        gone = fnpack("delete", "iris", "--yes", "--json", env=env)
        assert gone.code == 0 and [v["number"] for v in json.loads(gone.stdout)["deleted"]] == [1]
        assert fnpack("versions", "iris", env=env).code == 12


def test_logs_since(archive: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        env = {**BARE, "FNPACK_URL": url, "FNPACK_STATE_DIR": str(state)}
        assert fnpack("deploy", str(archive), env=env).code == 0
        assert fnpack("invoke", "iris", "--data", json.dumps(SETOSA), env=env).code == 0
        recent = json.loads(fnpack("logs", "iris", "--since", "1h", "--json", env=env).stdout)["lines"]
        assert any("[platform]" in line for line in recent)
        future = json.loads(fnpack("logs", "iris", "--since", "2099-01-01T00:00:00Z", "--json", env=env).stdout)
        assert future["lines"] == []
        bad = fnpack("logs", "iris", "--since", "yesterday", env=env)
        assert bad.code == 2 and "neither a duration nor a time" in bad.stderr


def test_an_archive_for_another_platform_is_refused_by_the_local_platform(tmp_path: Path) -> None:
    from targets.test_planner import make_archive

    lambda_archive = make_archive(tmp_path, target="aws-lambda")
    state = tmp_path / "state"
    with platform(state) as url:
        env = {**BARE, "FNPACK_URL": url, "FNPACK_STATE_DIR": str(state)}
        done = fnpack("deploy", str(lambda_archive), env=env)
        assert done.code == 10 and "built for the aws-lambda target" in done.stderr
        assert fnpack("ls", "--json", env=env).json()["functions"] == []
