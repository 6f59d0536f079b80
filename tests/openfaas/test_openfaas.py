"""The openfaas target end to end, as a user drives it: the real CLI against the fake gateway
(`fake_openfaas`: every request checked against the gateway's OpenAPI spec, each function's replicas real
`python -m fnpack.worker` processes reading their archive from moto's S3), aliases as router functions
under load, what Community Edition ignores or refuses, stack.yml for faas-cli, mistakes."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import EXAMPLES, CliResult, fnpack
from servers import free_port

pytestmark = pytest.mark.timeout(900)

BUCKET = "faas-models"
PASSWORD = "s3cret-pass"
REQUEST = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}


@dataclass
class Gateway:
    fake: Any
    env: dict[str, str]
    root: Path

    def cli(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        return fnpack(*args, "--target", "openfaas", env={**self.env, **(env or {})})

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Any:
        done = self.cli(*args, "--json", env=env)
        assert done.code == 0, f"{args}: exit {done.code}\n{done.stdout}\n{done.stderr}"
        return done.json()

    def call(self, name: str, body: Any = REQUEST) -> httpx.Response:
        return httpx.post(f"{self.fake.url}/function/{name}", json=body, timeout=60, trust_env=False)


def start(moto_endpoint: str, root: Path, edition: str) -> Iterator[Gateway]:
    import boto3

    from fake_openfaas import FakeOpenFaaS

    aws = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(root / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials")}
    with FakeOpenFaaS(workdir=root / "gateway", password=PASSWORD, edition=edition, extra_env=aws) as fake, \
            pytest.MonkeyPatch.context() as patch:
        env = {**aws, "FNPACK_OPENFAAS_GATEWAY": fake.url, "FNPACK_OPENFAAS_PASSWORD": PASSWORD,
               "FNPACK_OPENFAAS_EDITION": edition, "FNPACK_OPENFAAS_STORAGE": f"s3://{BUCKET}/{edition}",
               "FNPACK_OPENFAAS_UPSTREAM": fake.url + "/function/{function}-v{version}", "OPENFAAS_URL": "",
               "OPENFAAS_CONFIG": str(root / "faas-cli"), "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""}
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield Gateway(fake, env, root)
        assert fake.violations == [], fake.violations  # nothing fnpack sent broke the gateway's OpenAPI spec


@pytest.fixture(scope="module")
def pro(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from start(moto_endpoint, tmp_path_factory.mktemp("faas-pro"), "pro")


@pytest.fixture
def ce(moto_endpoint: str, tmp_path: Path) -> Iterator[Gateway]:
    yield from start(moto_endpoint, tmp_path, "ce")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """examples/iris built by plain `fnpack build` (the local platform's archive), twice (a comment apart)."""
    built = []
    for variant in (0, 1):
        folder = tmp_path_factory.mktemp("iris") / "iris"
        shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        (folder / "features.py").write_text((folder / "features.py").read_text() + f"\n# variant {variant}\n")
        done = fnpack("build", str(folder), "--json")
        assert done.code == 0, done.stderr
        built.append(Path(done.json()["archive"]))
    return built


# --- aliases under load ------------------------------------------------------------------------------------


def test_an_alias_moves_and_rolls_back_under_200_requests_a_second_with_no_failure_and_exact_shares(
        pro: Gateway, iris: list[Path]) -> None:
    first = pro.ok("deploy", str(iris[0]))
    assert first["version"]["number"] == 1 and first["url"] == f"{pro.fake.url}/function/iris"
    pro.ok("deploy", str(iris[1]), "--no-promote")
    assert pro.call("iris").json()["label"] == "virginica"

    failures: list[str] = []
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:  # 200 requests a second, paced, over keep-alive connections
        with httpx.Client(base_url=pro.fake.url, timeout=30, trust_env=False) as client:
            started, sent = time.monotonic(), 0
            while not stop.is_set():
                sent += 1
                try:
                    answer = client.post("/function/iris", json=REQUEST)
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    versions[answer.headers.get("x-fnpack-version", "?")] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                time.sleep(max(0.0, started + sent / 100 - time.monotonic()))  # two threads: 200/s

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        pro.ok("alias", "set", "iris", "live", "1", "--canary", "2", "--weight", "0.25", "--reason", "canary")
        pro.ok("alias", "set", "iris", "live", "2", "--reason", "promote")
        pro.ok("rollback", "iris", "live", "--reason", "back")
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == [], failures[:5]
    assert sum(versions.values()) > 400 and set(versions) <= {"1", "2"}, versions

    # exact shares: the router's weighted round robin, sequentially through one router replica
    pro.ok("alias", "set", "iris", "live", "1", "--canary", "2", "--weight", "0.1")
    picked = Counter(pro.call("iris").headers["x-fnpack-version"] for _ in range(200))
    assert abs(picked["2"] - 20) <= 1, picked
    history = pro.ok("alias", "history", "iris", "live")["history"]
    assert [h["reason"] for h in history][1:4] == ["canary", "promote", "back"]


# --- Community Edition ---------------------------------------------------------------------------------------


def test_community_edition_is_told_what_it_ignores_and_its_function_limit_is_checked_first(
        ce: Gateway, iris: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    spec = yaml.safe_load((folder / "fnpack.yaml").read_text())
    spec["scaling"] = {"min": 0, "max": 8, "target_concurrency": 4, "idle_timeout": 120}
    spec["resources"] = {"memory": 1024, "gpu": 1, "node_selector": {"gpu": "a100"}}
    (folder / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    deployed = ce.cli("deploy", str(folder))
    assert deployed.code == 0, deployed.stdout + deployed.stderr
    for expected in ("scale to zero is an OpenFaaS Pro feature", "at most 5 replicas", "GPUs need an OpenFaaS Pro",
                     "CE ignores constraints"):
        assert expected in deployed.stderr, deployed.stderr
    sent = ce.fake.functions()["iris-v1"]
    assert sent["labels"]["com.openfaas.scale.min"] == "1" and sent["labels"]["com.openfaas.scale.max"] == "5"
    assert "com.openfaas.scale.zero" not in sent["labels"] and "constraints" not in sent
    assert ce.call("iris").status_code == 200

    # the 15-function limit: refused before anything is uploaded or deployed
    for n in range(13):  # the gateway holds 2 (iris-v1 and its live router): 13 more make CE's 15
        route = {"function": "x", "alias": "live", "primary": 1, "upstream": "http://127.0.0.1:1/{version}"}
        made = httpx.post(f"{ce.fake.url}/system/functions", auth=("admin", PASSWORD), timeout=30,
                          json={"service": f"filler-{n}", "image": "x", "labels": {"com.openfaas.scale.min": "1"},
                                "envVars": {"FNPACK_ROUTE": json.dumps(route)}})
        assert made.status_code == 202, made.text
    full = ce.cli("deploy", str(iris[1]))
    assert full.code == 2 and "at most 15 functions" in full.stderr, full.stderr
    assert "iris-v2" not in ce.fake.functions()


# --- stack.yml, credentials, failures, logs --------------------------------------------------------------------


def test_the_dry_run_exports_a_stack_yml_faas_cli_deploys_as_fnpack_would(pro: Gateway, iris: list[Path]) -> None:
    from fnpack.targets.openfaas.stack import deployments_of

    plan = pro.ok("deploy", str(iris[0]), "--dry-run")
    assert plan["dry_run"] is True
    exported = pro.cli("deploy", str(iris[0]), "--dry-run", "-o", "yaml")
    assert exported.code == 0, exported.stderr
    stack = yaml.safe_load(exported.stdout)
    assert stack["provider"] == {"name": "openfaas", "gateway": pro.fake.url}
    made = deployments_of(exported.stdout)
    assert all(d["image"] and d["service"] in stack["functions"] for d in made)


def test_credentials_as_faas_cli_login_keeps_them_and_a_wrong_password_is_named(pro: Gateway) -> None:
    wrong = pro.cli("ls", env={"FNPACK_OPENFAAS_PASSWORD": "nope"})
    assert wrong.code == 2 and "did not accept the credentials of user admin" in wrong.stderr, wrong.stderr
    config = Path(pro.env["OPENFAAS_CONFIG"])
    config.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    (config / "config.yml").write_text(yaml.safe_dump({"auths": [{"gateway": pro.fake.url, "auth": "basic",
                                                                  "token": token}]}))
    logged_in = pro.cli("ls", "--json", env={"FNPACK_OPENFAAS_PASSWORD": ""})
    assert logged_in.code == 0, logged_in.stderr
    nowhere = pro.cli("ls", env={"FNPACK_OPENFAAS_GATEWAY": f"http://127.0.0.1:{free_port()}"})
    assert nowhere.code == 11 and "cannot reach the OpenFaaS gateway" in nowhere.stderr


def test_a_version_that_never_gets_ready_is_removed_and_live_keeps_serving(pro: Gateway, iris: list[Path],
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "brittle"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    (folder / "fnpack.yaml").write_text((folder / "fnpack.yaml").read_text().replace("name: iris", "name: brittle", 1))
    assert pro.ok("deploy", str(folder))["version"]["number"] == 1
    (folder / "features.py").write_text((folder / "features.py").read_text() + "\n# v2\n")
    broken = pro.cli("deploy", str(folder), "--json",
                     env={"FNPACK_OPENFAAS_STORAGE_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert broken.code == 11, broken.stdout + broken.stderr
    error = json.loads(broken.stderr)
    assert "brittle-v2 cannot start" in error["message"] and "no alias was moved" in error["hint"], error
    assert "brittle-v2" not in pro.fake.functions()  # it never served: removed again
    assert pro.ok("alias", "list", "brittle")["aliases"]["live"]["primary"] == 1
    assert pro.call("brittle").status_code == 200
    logs = pro.cli("logs", "brittle", "--tail", "50")
    assert logs.code == 0 and "brittle" in logs.stdout, logs.stderr
    assert pro.ok("delete", "brittle", "--yes")["deleted"]
    assert not [n for n in pro.fake.functions() if n.startswith("brittle")]
