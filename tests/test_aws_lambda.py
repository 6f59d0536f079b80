"""The aws-lambda target against a real `moto_server` (Lambda, S3, IAM over HTTP), driven through the CLI.

moto stores alias routing weights but routes only to the primary, ignores UpdateAlias's RevisionId, and
cannot run code without Docker (its Invoke answers a function error saying so). So: the control plane is
checked here with boto3 against moto; the archive that was deployed is downloaded back, checked against
Lambda's CodeSha256 and run by AWS's runtime interface client (`fnpack run --as lambda`); the RevisionId
conflict is played by a botocore hook answering UpdateAlias as Lambda does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES, fnpack
from servers import free_port

REGION = "us-east-1"
ROLE_NAME = "fnpack-lambda"
ROLE = f"arn:aws:iam::123456789012:role/{ROLE_NAME}"
BUCKET = "fnpack-artifacts"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def aws(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every CLI call gets: moto's endpoint, test credentials, a region; no host AWS config."""
    import boto3

    home = tmp_path_factory.mktemp("home")
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_EC2_METADATA_DISABLED": "true",
           "FNPACK_LAMBDA_BUCKET": "", "FNPACK_LAMBDA_ROLE": "", "FNPACK_TARGET": ""}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "lambda.amazonaws.com"}}]}))
        boto3.client("s3").create_bucket(Bucket=BUCKET)
    return env


def client(aws: dict[str, str], service: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """build(name, variant=0) -> an aws-lambda archive of examples/iris named `name`; variants differ in bytes."""
    root = tmp_path_factory.mktemp("builds")
    made: dict[tuple[str, int], Path] = {}

    def make(name: str, variant: int = 0) -> Path:
        if (name, variant) not in made:
            folder = root / f"{name}-{variant}"
            shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
            spec = folder / "fnpack.yaml"
            spec.write_text(spec.read_text().replace("name: iris", f"name: {name}", 1))
            features = folder / "features.py"
            features.write_text(features.read_text() + f"\n# variant {variant}\n")
            done = fnpack("build", str(folder), "--target", "aws-lambda", "--json")
            assert done.code == 0, done.stdout + done.stderr
            made[(name, variant)] = Path(done.json()["archive"])
        return made[(name, variant)]

    yield make


def cli(aws: dict[str, str], *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return fnpack(*args, "--target", "aws-lambda", env={**aws, **(env or {})}, cwd=cwd)


def code_sha(archive: Path) -> str:
    return base64.b64encode(hashlib.sha256(archive.read_bytes()).digest()).decode()


def alias_of(aws: dict[str, str], name: str, alias: str = "live") -> tuple[str, dict[str, float]]:
    found = client(aws, "lambda").get_alias(FunctionName=name, Name=alias)
    return found["FunctionVersion"], (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


def published(aws: dict[str, str], name: str) -> list[str]:
    versions = client(aws, "lambda").list_versions_by_function(FunctionName=name)["Versions"]
    return [v["Version"] for v in versions if v["Version"] != "$LATEST"]


# --- deploy ----------------------------------------------------------------------------------------


def test_dry_run_create_idempotent_redeploy_update_through_s3_and_run_what_was_deployed(
        aws: dict[str, str], build: Any, tmp_path: Path) -> None:
    first, second = build("iris", 0), build("iris", 1)
    lam, s3 = client(aws, "lambda"), client(aws, "s3")

    dry = cli(aws, "deploy", str(first), "--role", ROLE, "--bucket", BUCKET, "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    plan = dry.json()["plan"]
    assert [s["action"] for s in plan["steps"]] == ["create", "publish", "set-alias"]
    assert plan["steps"][0]["details"]["Role"] == ROLE and plan["steps"][0]["details"]["Runtime"] == "python3.11"
    assert "iris" not in [f["FunctionName"] for f in lam.list_functions()["Functions"]]  # nothing was created
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)

    created = cli(aws, "deploy", str(first), "--role", ROLE, "--bucket", BUCKET, "--json")
    assert created.code == 0, created.stderr
    result = created.json()
    assert result["created"] is True and result["version"]["number"] == 1
    assert result["version"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    config = lam.get_function(FunctionName="iris")
    assert config["Configuration"]["CodeSha256"] == code_sha(first)
    assert config["Configuration"]["Handler"] == "fnpack_handler.handler"
    assert config["Configuration"]["Architectures"] == ["x86_64"]
    assert config["Tags"]["fnpack:bucket"] == BUCKET
    assert published(aws, "iris") == ["1"] and alias_of(aws, "iris") == ("1", {})

    again = cli(aws, "deploy", str(first), "--json")  # no flags: the function's tag names the bucket
    assert again.code == 0, again.stderr
    assert again.json()["created"] is False and again.json()["version"]["number"] == 1
    assert again.json()["move"] is None and published(aws, "iris") == ["1"]

    # Over the (lowered) direct upload limit, the code goes through the bucket.
    small = {"FNPACK_LAMBDA_DIRECT_UPLOAD_MAX": "1000000"}
    plan2 = cli(aws, "deploy", str(second), "--memory", "1024", "--dry-run", env=small)
    assert plan2.code == 0 and "s3-upload" in plan2.stdout and "UpdateFunctionCode" in plan2.stdout
    assert "MemorySize=1024" in plan2.stdout
    updated = cli(aws, "deploy", str(second), "--memory", "1024", "--reason", "new features", "--json", env=small)
    assert updated.code == 0, updated.stderr
    assert updated.json()["created"] is True and updated.json()["version"]["number"] == 2
    assert published(aws, "iris") == ["1", "2"] and alias_of(aws, "iris") == ("2", {})
    v2 = lam.get_function_configuration(FunctionName="iris", Qualifier="2")
    assert v2["CodeSha256"] == code_sha(second) and v2["MemorySize"] == 1024

    # The very archive Lambda runs: fetched back from the bucket, checked against CodeSha256, run as Lambda would.
    sha = hashlib.sha256(second.read_bytes()).hexdigest()
    got = tmp_path / "deployed.zip"
    got.write_bytes(s3.get_object(Bucket=BUCKET, Key=f"fnpack/iris/archives/{sha}.zip")["Body"].read())
    assert base64.b64encode(hashlib.sha256(got.read_bytes()).digest()).decode() == v2["CodeSha256"]
    ran = fnpack("run", str(got), "--as", "lambda", "--data", json.dumps(SETOSA))
    assert ran.code == 0, ran.stderr
    assert json.loads(ran.stdout)["label"] == "setosa"

    listed = cli(aws, "versions", "iris", "--json")
    assert [(v["number"], v["sha256"], v["aliases"]) for v in listed.json()["versions"]] == [
        (1, hashlib.sha256(first.read_bytes()).hexdigest(), []), (2, sha, ["live"])]
    assert cli(aws, "ls", "--json").json()["functions"][0]["name"] == "iris"


def test_function_url_per_alias(aws: dict[str, str], build: Any) -> None:
    done = cli(aws, "deploy", str(build("iris-url")), "--role", ROLE, "--bucket", BUCKET, "--function-url", "AWS_IAM")
    assert done.code == 0, done.stderr
    url = client(aws, "lambda").get_function_url_config(FunctionName="iris-url", Qualifier="live")
    assert url["AuthType"] == "AWS_IAM"
    assert f"invoke   {url['FunctionUrl']}" in done.stdout


# --- aliases: what only Lambda says, and races played by botocore hooks -------------------------------
# Canaries (RoutingConfig), rollback twice, the history shared between laptops through the function's tag and
# its S3 object, and refused moves that leave the alias as it was are the contract suite's (tests/targets/,
# for every target; its aws-lambda harness reads the alias and the history object straight from moto).


def test_rollback_of_an_unknown_function_names_it(aws: dict[str, str]) -> None:
    unknown = cli(aws, "rollback", "no-such-function", "live")
    assert unknown.code == 12 and "no function 'no-such-function'" in unknown.stderr


def _target(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str]) -> Any:
    from fnpack.targets.aws_lambda.target import AwsLambdaTarget

    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    return AwsLambdaTarget(progress=False)


def test_concurrent_moves_one_wins_and_the_other_changes_nothing(aws: dict[str, str], build: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fnpack.errors import ConflictError
    from fnpack.versions import AliasState

    name = "iris-race"
    for variant in (0, 1, 2):
        assert cli(aws, "deploy", str(build(name, variant)), "--role", ROLE, "--bucket", BUCKET).code == 0
    mine, theirs = _target(monkeypatch, aws), _target(monkeypatch, aws)

    # Their move lands between my reading the alias (after the history) and my writing the history.
    raced: list[bool] = []

    def their_move(**_: Any) -> None:
        if not raced:
            raced.append(True)
            theirs.set_alias(name, "live", AliasState(1), "theirs")

    mine.api.client("lambda").meta.events.register("after-call.lambda.GetAlias", their_move)
    with pytest.raises(ConflictError) as caught:
        mine.set_alias(name, "live", AliasState(2), "mine")
    assert "moved by someone else at the same time" in caught.value.message
    assert alias_of(aws, name) == ("1", {})  # theirs, untouched by mine
    assert [m.reason for m in theirs.history(name, "live")][-1] == "theirs"
    assert len(theirs.history(name, "live")) == 4

    # Lambda refusing UpdateAlias for a stale RevisionId (moto does not check it): nothing changes.
    class Refused:
        status_code = 412
        headers: dict[str, str] = {}

    def stale_revision(**_: Any) -> Any:
        return Refused(), {"Error": {"Code": "PreconditionFailedException",
                                     "Message": "The Revision Id provided does not match the latest Revision Id."}}

    mine.api.client("lambda").meta.events.register("before-call.lambda.UpdateAlias", stale_revision)
    with pytest.raises(ConflictError) as caught:
        mine.set_alias(name, "live", AliasState(3), "mine again")
    assert "RevisionId" in caught.value.message and "left as it was" in caught.value.message
    assert alias_of(aws, name) == ("1", {})
    assert [m.reason for m in mine.history(name, "live")][-1] == "theirs"  # the recorded move was taken out


def test_no_move_is_recorded_on_top_of_one_not_applied_yet(aws: dict[str, str], build: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fnpack.errors import ConflictError
    from fnpack.versions import AliasState

    name = "iris-race-late"
    for variant in (0, 1):
        assert cli(aws, "deploy", str(build(name, variant)), "--role", ROLE, "--bucket", BUCKET).code == 0
    mine, theirs = _target(monkeypatch, aws), _target(monkeypatch, aws)

    # I record my move; before Lambda moves the alias, they try theirs (the alias still reads v2), then
    # Lambda refuses my UpdateAlias (a stale RevisionId, played here: moto does not check it).
    class Refused:
        status_code = 412
        headers: dict[str, str] = {}

    refused: list[str] = []

    def they_try_first(**_: Any) -> Any:
        try:
            theirs.set_alias(name, "live", AliasState(1), "theirs")
        except ConflictError as exc:
            refused.append(exc.message)
        return Refused(), {"Error": {"Code": "PreconditionFailedException",
                                     "Message": "The Revision Id provided does not match the latest Revision Id."}}

    mine.api.client("lambda").meta.events.register("before-call.lambda.UpdateAlias", they_try_first)
    with pytest.raises(ConflictError):
        mine.set_alias(name, "live", AliasState(1, 2, 0.5), "mine")
    assert refused and "another move is under way" in refused[0]  # theirs did not write on top of mine
    assert alias_of(aws, name) == ("2", {})  # neither moved it
    assert [m.reason for m in theirs.history(name, "live")] == [None, None]  # and mine was taken out
    theirs.set_alias(name, "live", AliasState(1), "theirs, again")  # once nothing is under way, it goes
    assert alias_of(aws, name) == ("1", {})
    assert [m.reason for m in theirs.history(name, "live")] == [None, None, "theirs, again"]


# --- deploy errors ------------------------------------------------------------------------------------


def test_unknown_role_and_missing_settings(aws: dict[str, str], build: Any) -> None:
    archive = build("iris-role")
    nobody = "arn:aws:iam::123456789012:role/no-such-role"
    refused = cli(aws, "deploy", str(archive), "--role", nobody, "--bucket", BUCKET)
    assert refused.code == 2, refused.stderr
    assert nobody in refused.stderr and "cannot be assumed by Lambda" in refused.stderr
    assert "iris-role" not in [f["FunctionName"] for f in client(aws, "lambda").list_functions()["Functions"]]

    no_role = cli(aws, "deploy", str(archive), "--bucket", BUCKET)
    assert no_role.code == 2 and "needs an execution role" in no_role.stderr and "--role" in no_role.stderr
    no_bucket = cli(aws, "deploy", str(archive), "--role", ROLE)
    assert no_bucket.code == 2 and "shared alias history" in no_bucket.stderr and "--no-promote" in no_bucket.stderr
    bad_role = cli(aws, "deploy", str(archive), "--role", "fnpack-lambda")
    assert bad_role.code == 2 and "is not an IAM role ARN" in bad_role.stderr


@pytest.mark.parametrize("runtime, arch, expected", [
    ("python3.12", "x86_64", "its runtime is python3.12, the archive's is python3.11"),
    ("python3.11", "arm64", "its architecture is arm64, the archive's is x86_64"),
])
def test_function_with_another_runtime_or_arch_is_refused(aws: dict[str, str], build: Any, runtime: str, arch: str,
                                                          expected: str) -> None:
    name = f"iris-{runtime.replace('.', '')}-{arch.replace('_', '')}"
    archive = build(name)
    client(aws, "lambda").create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler="h.handler",
                                          Code={"ZipFile": archive.read_bytes()}, Architectures=[arch])
    refused = cli(aws, "deploy", str(archive), "--bucket", BUCKET)
    assert refused.code == 13, refused.stderr
    assert expected in refused.stderr
    assert published(aws, name) == []  # nothing published, nothing moved


def rewrite_manifest(source: Path, dest: Path, **changes: Any) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "fnpack.json":
                data = json.dumps({**json.loads(data), **changes}).encode()
            out.writestr(info, data)
    return dest


@pytest.mark.parametrize("changes, expected", [
    ({"target": "local"}, "built for the 'local' target, not aws-lambda"),
    ({"runtime": "python3.9"}, "is for runtime 'python3.9'"),
    ({"arch": "ppc64le"}, "is for architecture 'ppc64le'"),
])
def test_wrong_archives_are_refused_before_any_api_call(aws: dict[str, str], build: Any, tmp_path: Path,
                                                        changes: dict[str, str], expected: str) -> None:
    archive = rewrite_manifest(build("iris"), tmp_path / "other.zip", **changes)
    dead = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # any API call would fail to connect
    refused = cli(aws, "deploy", str(archive), "--role", ROLE, "--bucket", BUCKET, "--dry-run", env=dead)
    assert refused.code == 10, refused.stderr
    assert expected in refused.stderr and "cannot reach" not in refused.stderr


def test_over_250_mb_unzipped_is_refused_before_any_api_call(aws: dict[str, str], build: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fnpack.errors import BudgetError
    from fnpack.targets.aws_lambda import checks as aws_settings

    target = _target(monkeypatch, {**aws, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    monkeypatch.setattr(aws_settings, "LAMBDA_UNZIPPED", 1_000_000)  # instead of building a 250 MB archive
    with pytest.raises(BudgetError) as caught:
        target.plan_deploy(build("iris"))
    assert "over AWS Lambda's hard limit" in caught.value.message
    assert not target.api.clients_made  # no client was even made


def test_aws_region_is_read_and_an_unreachable_endpoint_is_one_line(aws: dict[str, str]) -> None:
    # AWS_REGION alone is enough, as for the AWS CLI v2 and the SDKs (boto3 reads only AWS_DEFAULT_REGION).
    only_aws_region = cli(aws, "versions", "iris-no-such", env={"AWS_DEFAULT_REGION": "", "AWS_REGION": REGION})
    assert "no AWS region" not in only_aws_region.stderr and only_aws_region.code in (0, 12), only_aws_region.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = cli(aws, "versions", "iris", env={"AWS_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "1"})
    assert unreachable.code == 11 and f"cannot reach AWS at {dead}" in unreachable.stderr
    assert "AWS_ENDPOINT_URL" in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 2  # error: and hint:


def test_no_credentials_or_region(aws: dict[str, str], build: Any) -> None:
    anonymous = cli(aws, "versions", "iris", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert anonymous.code == 2 and "no AWS credentials" in anonymous.stderr and "AWS_PROFILE" in anonymous.stderr
    nowhere = cli(aws, "versions", "iris", env={"AWS_DEFAULT_REGION": "", "AWS_REGION": ""})
    assert nowhere.code == 2 and "no AWS region" in nowhere.stderr and "--region" in nowhere.stderr
    assert "Traceback" not in anonymous.stderr + nowhere.stderr


# --- invoking ---------------------------------------------------------------------------------------------


def test_invoke_reports_the_functions_error_and_unknown_names(aws: dict[str, str], build: Any) -> None:
    assert cli(aws, "deploy", str(build("iris-invoke")), "--role", ROLE, "--bucket", BUCKET).code == 0
    # moto cannot run code without Docker: its Invoke answers with a function error, which fnpack must show.
    failed = cli(aws, "invoke", "iris-invoke:live", "--data", json.dumps(SETOSA))
    assert failed.code == 1, failed.stderr
    assert "iris-invoke:live raised an error (Handled)" in failed.stderr and "docker" in failed.stderr
    missing = cli(aws, "invoke", "no-such-fn:live", "--data", "{}")
    assert missing.code == 12 and "no-such-fn:live" in missing.stderr


def test_access_denied_names_the_missing_permission(aws: dict[str, str], build: Any) -> None:
    iam = client(aws, "iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["lambda:Get*", "lambda:List*"],
                                                "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    reset = f"{aws['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
    httpx.post(reset, content=b"0", trust_env=False).raise_for_status()  # moto checks IAM policies from now on
    try:
        denied = cli(aws, "invoke", "iris:live", "--data", "{}",
                     env={"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]})
    finally:
        httpx.post(reset, content=b"inf", trust_env=False).raise_for_status()
    assert denied.code == 2, denied.stderr
    assert "access denied" in denied.stderr and "lambda:InvokeFunction" in denied.stderr


def test_error_mapping_names_permissions_and_unwraps_xml() -> None:
    from botocore.exceptions import ClientError

    from fnpack.targets.aws_lambda.errors import AccessDeniedError, aws_error

    xml = ('<?xml version="1.0"?><ErrorResponse><Error><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/'
           'x is not authorized to perform: lambda:CreateFunction</Message></Error></ErrorResponse>')
    exc = ClientError({"Error": {"Code": "403", "Message": xml}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                      "CreateFunction")
    mapped = aws_error(exc, "lambda", "creating function iris")
    assert isinstance(mapped, AccessDeniedError) and mapped.permission == "lambda:CreateFunction"
    plain = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "PublishVersion")
    assert aws_error(plain).permission == "lambda:PublishVersion"  # type: ignore[attr-defined]


def test_default_target_from_the_spec(aws: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    (folder / "fnpack.yaml").write_text((folder / "fnpack.yaml").read_text() + "target: aws-lambda\n")
    listed = fnpack("ls", "--json", env=aws, cwd=folder)  # no --target: the spec's
    assert listed.code == 0, listed.stderr  # the local target would have found no platform (exit 11)
    assert isinstance(listed.json()["functions"], list)
