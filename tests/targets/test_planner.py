"""The deploy skeleton and each target's planner, without servers: a fake remote state behind the
`Deployer` hooks, the local planner behind an in-process transport, the Lambda planner behind botocore's
Stubber. Planning must only read; executing runs the steps in order; a plan carries its own context."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fnpack.errors import ArchiveError, ConflictError, UsageError
from fnpack.targets import deploy
from fnpack.targets.deploy import (Call, Deployable, Deployer, KeepAlias, Plan, Progress, Publish, RemoteState,
                                   ReuseVersion, SetAlias, Step, Upload)
from fnpack.versions import AliasMove, AliasState, Qualifier, Version


def make_archive(folder: Path, name: str = "iris", target: str = "local", variant: int = 0,
                 spec: dict[str, Any] | None = None) -> Path:
    """A small intact fnpack archive (manifest listing every file's size and sha256)."""
    files = {"score.py": f"def score(outputs):\n    return {{}}  # {variant}\n".encode()}
    manifest = {"format": 1, "name": name, "target": target, "runtime": "python3.11", "python": "3.11",
                "arch": "x86_64", "fnpack_version": "0", "spec": {"model": "model.onnx", "resources": {},
                                                                   "scaling": {}, "name": name, **(spec or {})},
                "handlers": {"asgi": "fnpack_handler:app", "lambda": "fnpack_handler.handler"},
                "model": {"path": "model.onnx", "ir_version": 9, "opsets": {}, "inputs": [], "outputs": []},
                "files": {path: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                          for path, data in files.items()}}
    path = folder / f"{name}-{target}-{variant}.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fnpack.json", json.dumps(manifest))
        for entry, data in files.items():
            archive.writestr(entry, data)
    path.write_bytes(buffer.getvalue())
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeRemote(Deployer):
    """A target kept in memory; every change is logged in `changes`, every read in `reads`."""

    target = "fake"

    def __init__(self, versions: list[Version] | None = None, aliases: dict[str, AliasState] | None = None) -> None:
        self.versions = list(versions or [])
        self.alias_states = dict(aliases or {})
        self.changes: list[str] = []
        self.reads = 0

    def remote_state(self, deployable: Deployable) -> tuple[RemoteState, dict[str, Any]]:
        self.reads += 1
        mine = tuple(v for v in self.versions if v.function == deployable.name)
        return RemoteState(bool(mine), mine, dict(self.alias_states)), {"bucket": "seen-at-plan-time"}

    def new_version(self, deployable: Deployable, remote: RemoteState, context: Mapping[str, Any]) -> list[Step]:
        return [Upload("upload", name="upload", arguments={"size": deployable.size}),
                Call("configure", name="configure", arguments={"bucket": context["bucket"]}),
                Publish("publish", arguments={}, number=remote.next_number)]

    def run(self, plan: Plan, step: Step, done: Progress) -> None:
        self.changes.append(f"{step.kind} {plan.context['bucket']}")
        if isinstance(step, Publish):
            done.version = Version(plan.function, step.number or 0, plan.sha256, "now", "me")
            done.created = True
            self.versions.append(done.version)

    def find_version(self, plan: Plan, number: int, done: Progress) -> None:
        done.version = next((v for v in self.versions if v.number == number), None)
        if done.version is None:
            raise ConflictError("gone")

    def aliases(self, plan: Plan) -> dict[str, AliasState]:
        return dict(self.alias_states)

    def move_alias(self, plan: Plan, alias: str, state: AliasState, reason: str | None) -> AliasMove | None:
        self.changes.append(f"move {alias} {state}")
        move = AliasMove(self.alias_states.get(alias), state, "me", "now", reason)
        self.alias_states[alias] = state
        return move

    def invoke_url(self, plan: Plan, qualifier: Qualifier) -> str:
        return f"fake://{qualifier}"


def test_a_new_archive_is_uploaded_published_and_promoted_in_order(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    remote = FakeRemote([Version("iris", 4, "0" * 64, "then", "you")], {"live": AliasState(4)})
    plan = deploy.plan(remote, archive, "live", "why")
    assert remote.changes == [] and remote.reads == 1  # planning only reads
    assert [s.kind for s in plan.steps] == ["upload", "configure", "publish", "set-alias"]
    promote = plan.steps[-1]
    assert isinstance(promote, SetAlias) and promote.before == AliasState(4) and promote.version is None
    assert promote.reason == "why" and "v5 (the new version)" in promote.summary
    assert plan.remote.versions[0].number == 4 and plan.sha256 == sha256(archive)

    done = deploy.execute(remote, plan)
    assert remote.changes == ["upload seen-at-plan-time", "configure seen-at-plan-time",
                              "publish seen-at-plan-time", "move live v5"]
    assert done.version.number == 5 and done.created and done.alias == "live" and done.url == "fake://iris"
    assert done.move is not None and done.move.before == AliasState(4)


def test_the_same_archive_is_reused_and_an_alias_already_there_is_kept(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    remote = FakeRemote([Version("iris", 2, sha256(archive), "then", "you")], {"live": AliasState(2)})
    plan = deploy.plan(remote, archive)
    assert [type(s) for s in plan.steps] == [ReuseVersion, KeepAlias]
    done = deploy.execute(remote, plan)
    assert remote.changes == [] and not done.created and done.move is None and done.version.number == 2


def test_not_promoting_moves_no_alias_and_the_url_names_the_version(tmp_path: Path) -> None:
    remote = FakeRemote()
    plan = deploy.plan(remote, make_archive(tmp_path), alias=None)
    assert not any(isinstance(s, (SetAlias, KeepAlias)) for s in plan.steps)
    done = deploy.execute(remote, plan)
    assert done.alias is None and done.url == "fake://iris:1" and remote.alias_states == {}


def test_an_alias_moved_since_the_plan_is_moved_again_and_one_already_there_is_not(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    remote = FakeRemote([Version("iris", 1, sha256(archive), "then", "you"), Version("iris", 2, "1" * 64, "", "")],
                        {"live": AliasState(2)})
    plan = deploy.plan(remote, archive)
    assert isinstance(plan.steps[-1], SetAlias)
    remote.alias_states["live"] = AliasState(1)  # someone else did it meanwhile
    assert deploy.execute(remote, plan).move is None and remote.changes == []


def test_a_plan_is_executed_by_another_object_with_its_own_context(tmp_path: Path) -> None:
    planner = FakeRemote()
    plan = deploy.plan(planner, make_archive(tmp_path))
    executor = FakeRemote()
    deploy.execute(executor, plan)
    assert executor.changes[0] == "upload seen-at-plan-time" and planner.changes == []


def test_every_step_has_one_shape_for_display_and_json(tmp_path: Path) -> None:
    plan = deploy.plan(FakeRemote([], {"live": AliasState(1)}), make_archive(tmp_path))
    shown = plan.to_dict()
    assert [set(step) for step in shown["steps"]] == [{"action", "summary", "details"}] * 4
    assert shown["steps"][-1]["details"] == {"alias": "live", "before": {"primary": 1, "canary": None, "weight": 0.0},
                                             "version": None, "reason": None}
    lines = deploy.describe(plan)
    assert lines[0] == "plan for iris on fake (dry run: nothing changed)"
    assert [line.split()[0] for line in lines[1:]] == ["upload", "configure", "publish", "set-alias"]


@pytest.mark.parametrize("alias, expected", [("3", "is a version number"), ("Live", "neither a version"),
                                             ("live\n", "neither a version")])
def test_a_bad_alias_is_refused_before_the_target_is_asked(tmp_path: Path, alias: str, expected: str) -> None:
    remote = FakeRemote()
    with pytest.raises(UsageError, match=expected):
        deploy.plan(remote, make_archive(tmp_path), alias)
    assert remote.reads == 0


def test_an_archive_that_is_not_intact_is_refused_before_the_target_is_asked(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    data = archive.read_bytes().replace(b"return {}", b"return []")
    archive.write_bytes(data)
    remote = FakeRemote()
    with pytest.raises(ArchiveError, match="corrupt|not intact"):
        deploy.plan(remote, archive)
    assert remote.reads == 0


# --- the local planner behind an in-process transport ----------------------------------------------


def _platform(versions: list[dict[str, Any]], aliases: dict[str, Any], seen: list[str]) -> Any:
    from fnpack.targets.local.wire import Request, Response

    def reply(status: int, body: dict[str, Any]) -> Response:
        return Response(status, json.dumps(body).encode(), {"content-type": "application/json"})

    def answer(request: Request) -> Response:
        seen.append(f"{request.method} {request.path}")
        if request.method != "GET":
            return reply(500, {"message": "a planner changed something"})
        if request.path.endswith("/versions"):
            return reply(200, {"versions": versions}) if versions else reply(
                404, {"error": "not-found", "message": "no function named 'iris'", "exit_code": 12})
        return reply(200, {"aliases": aliases})

    return answer


def test_the_local_planner_only_reads_the_platform(tmp_path: Path) -> None:
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    archive = make_archive(tmp_path)
    seen: list[str] = []
    settings = LocalSettings.layer({"url": "http://platform.test", "token": "t"}, "the test")
    with LocalTarget(settings, _platform([], {}, seen)) as target:
        plan = target.plan_deploy(archive)
    assert seen == ["GET /api/v1/functions/iris/versions"]
    assert [s.kind for s in plan.steps] == ["upload", "set-alias"]
    assert plan.steps[0].details()["url"] == "http://platform.test/api/v1/functions/iris/versions"

    seen.clear()
    versions = [{"function": "iris", "number": 3, "sha256": sha256(archive), "created_at": "", "actor": ""}]
    with LocalTarget(settings, _platform(versions, {"live": {"primary": 3}}, seen)) as target:
        plan = target.plan_deploy(archive)
    assert [s.kind for s in plan.steps] == ["reuse-version", "keep-alias"]
    assert all(call.startswith("GET ") for call in seen)


def _recording_platform(versions: list[dict[str, Any]], aliases: dict[str, Any], seen: list[tuple[str, int]]) -> Any:
    """A platform that answers reads, alias moves and uploads, recording each request with its body's size."""
    from fnpack.targets.local.wire import Request, Response

    def answer(request: Request) -> Response:
        body = request.body
        size = len(body) if isinstance(body, bytes) else (len(body.read()) if body is not None else 0)
        seen.append((f"{request.method} {request.path}", size))
        if request.method == "GET":
            data = {"versions": versions} if request.path.endswith("/versions") else {"aliases": aliases}
        elif request.method == "PUT":
            state = json.loads(body)
            data = {"move": {"before": aliases.get("live"), "after": state, "actor": "me", "at": ""}}
            aliases["live"] = state
        else:
            data = {"version": {"function": "iris", "number": 4, "sha256": "0" * 64}, "created": True}
        return Response(200, json.dumps(data).encode())

    return answer


@pytest.mark.parametrize("live, moves", [(3, False), (2, True)])
def test_an_unchanged_archive_is_never_uploaded_again(tmp_path: Path, live: int, moves: bool) -> None:
    """Asked by sha256 first: a version with the archive's sha256 is reused, and not a byte of it is sent."""
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    archive = make_archive(tmp_path)
    versions = [{"function": "iris", "number": 3, "sha256": sha256(archive), "created_at": "", "actor": ""}]
    seen: list[tuple[str, int]] = []
    settings = LocalSettings.layer({"url": "http://platform.test", "token": "t"}, "the test")
    with LocalTarget(settings, _recording_platform(versions, {"live": {"primary": live}}, seen)) as target:
        result = target.deploy(archive)
    assert (result.version.number, result.created) == (3, False)
    assert not any(call.startswith("POST ") for call, _ in seen), seen
    assert sum(size for _, size in seen) < 200  # an alias move's JSON at most: no archive bytes
    assert any(call.startswith("PUT ") for call, _ in seen) is moves


def test_a_new_archive_is_uploaded_whole_once(tmp_path: Path) -> None:
    from fnpack.targets.local.settings import LocalSettings
    from fnpack.targets.local.target import LocalTarget

    archive = make_archive(tmp_path)
    seen: list[tuple[str, int]] = []
    settings = LocalSettings.layer({"url": "http://platform.test", "token": "t"}, "the test")
    versions = [{"function": "iris", "number": 3, "sha256": "f" * 64, "created_at": "", "actor": ""}]
    with LocalTarget(settings, _recording_platform(versions, {"live": {"primary": 3}}, seen)) as target:
        target.deploy(archive)
    assert [size for call, size in seen if call.startswith("POST ")] == [archive.stat().st_size]


# --- the Lambda planner behind botocore's Stubber -------------------------------------------------------


@pytest.fixture
def offline_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
                       "AWS_EC2_METADATA_DISABLED": "true", "FNPACK_LAMBDA_BUCKET": "", "FNPACK_LAMBDA_ROLE": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


ROLE = "arn:aws:iam::123456789012:role/fnpack-lambda"


def test_the_lambda_planner_reads_and_makes_no_change(tmp_path: Path, offline_aws: None) -> None:
    from botocore.stub import Stubber

    from fnpack.targets.aws_lambda.settings import LambdaSettings
    from fnpack.targets.aws_lambda.target import AwsLambdaTarget

    archive = make_archive(tmp_path, target="aws-lambda",
                           spec={"aws_lambda": {"memory": 1024}, "resources": {"timeout": 9}})
    target = AwsLambdaTarget(LambdaSettings.layer({"role": ROLE, "bucket": "fnpack-artifacts"}, "the test"),
                             progress=False)
    with Stubber(target.api.client("lambda")) as stub:  # any call not expected here fails the test
        stub.add_client_error("get_function", "ResourceNotFoundException", expected_params={"FunctionName": "iris"})
        plan = target.plan_deploy(archive, "live", "first")
        stub.assert_no_pending_responses()
    assert [s.kind for s in plan.steps] == ["create", "publish", "set-alias"]
    create = plan.steps[0].details()
    assert create["Role"] == ROLE and create["MemorySize"] == 1024 and create["Timeout"] == 9
    assert create["Tags"] == {"fnpack:bucket": "fnpack-artifacts"}
    assert "s3://fnpack-artifacts/fnpack/iris/aliases/live/history.json" in plan.steps[-1].summary
    assert target.settings.memory is None  # the archive's spec did not change the target's settings


def test_the_lambda_planner_refuses_what_it_cannot_do_before_any_call(tmp_path: Path, offline_aws: None) -> None:
    from fnpack.targets.aws_lambda.settings import LambdaSettings
    from fnpack.targets.aws_lambda.target import AwsLambdaTarget

    target = AwsLambdaTarget(LambdaSettings.layer({"role": ROLE}, "the test"), progress=False)
    with pytest.raises(ArchiveError, match="built for the 'local' target"):
        target.plan_deploy(make_archive(tmp_path, target="local"))
    bad = make_archive(tmp_path, target="aws-lambda", variant=1, spec={"aws_lambda": {"role": "x"}})
    with pytest.raises(UsageError, match="the archive's fnpack.yaml: role"):
        target.plan_deploy(bad)
    assert not target.api.clients_made
