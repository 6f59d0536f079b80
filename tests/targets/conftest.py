"""The harnesses of the contract suite (`test_contract.py`): one per deployable target, each against a real
server started here for the whole module (`fnpack serve` for local, `moto_server` for aws-lambda).

A harness is what the contract needs to know about a target and nothing else: how to make a configured
`Target` object (and a second one, as another machine would have it), how to build an archive for it,
how to run the real CLI against it, and how to read what the target itself recorded (not through fnpack's
client), so that a test can check that a move really happened there.

Adding a target (Knative, OpenFaaS next) is one subclass of `Harness` and one module-scoped fixture that
starts whatever it talks to and yields the harness, named in `HARNESSES`: every contract test then runs
against it too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES, CliResult, fnpack
from servers import platform

from fnpack.targets import get_target
from fnpack.targets.base import Target
from fnpack.versions import AliasState


class Harness:
    """One deployable target, configured against a server the fixture started. A subclass sets the class
    attributes and implements the methods under "what each target says" (`lined_up` only when its clients
    write a shared store); making Target objects, building archives and running the CLI are shared."""

    name: str = ""  # the target's name, as `--target` takes it
    # Plan actions (Step.to_dict()["action"]) that make the first version of a function that does not exist
    # yet, and a new version of one that does; the planner adds `set-alias` after them when promoting.
    create_actions: tuple[str, ...] = ()
    update_actions: tuple[str, ...] = ()
    deploy_args: tuple[str, ...] = ()  # CLI flags a deploy that may create the function needs

    def __init__(self, builds: Path, env: dict[str, str], second_env: dict[str, str]) -> None:
        self.builds = builds
        self.env = env  # every CLI call gets it (with --target NAME)
        self.second_env = second_env  # over `env`: a CLI call from another machine (another user, state folder)
        self._built: dict[tuple[str, int], Path] = {}
        self._opened: list[Target] = []

    # --- what each target says -----------------------------------------------------------------------

    def flags(self) -> dict[str, Any]:
        """`get_target` flags of the client that deploys (everything a deploy may need)."""
        raise NotImplementedError

    def second_flags(self) -> dict[str, Any]:
        """`get_target` flags of a second client: what another machine would configure, no more."""
        raise NotImplementedError

    def url(self, function: str, qualifier: str | None = None) -> str:
        """Where a deploy says `function` is invoked (`qualifier`: an alias other than live, or a version)."""
        raise NotImplementedError

    def native_alias(self, function: str, alias: str) -> AliasState | None:
        """Where the alias sends traffic, as the target itself records it (None: no such alias)."""
        raise NotImplementedError

    def native_history(self, function: str, alias: str) -> list[dict[str, Any]]:
        """The alias's moves as the target itself stores them ([] when none)."""
        raise NotImplementedError

    def lined_up(self, *clients: Target) -> contextlib.AbstractContextManager[None]:
        """While inside, concurrent moves by these clients start from the same reading: none writes before
        each has read the alias and its history. A target whose server makes moves one at a time needs
        nothing here (the default); one whose clients write a shared store holds them after their read."""
        return contextlib.nullcontext()

    # --- shared ------------------------------------------------------------------------------------------

    def target(self) -> Target:
        """A fresh Target object, configured as the deploying client."""
        return self._open(self.flags())

    def second(self) -> Target:
        """Another fresh Target object, configured as a second machine would be (see `second_flags`)."""
        return self._open(self.second_flags())

    def _open(self, flags: dict[str, Any]) -> Target:
        made = get_target(self.name, **flags)
        self._opened.append(made)
        return made

    def close(self) -> None:
        for made in self._opened:
            made.close()

    def archive(self, function: str, variant: int = 0) -> Path:
        """examples/iris named `function`, built for this target by `fnpack build`; variants differ in bytes
        (a comment in features.py). Built once per module."""
        if (function, variant) not in self._built:
            self._built[(function, variant)] = self._build(function, variant)
        return self._built[(function, variant)]

    def archives(self, function: str, count: int) -> list[Path]:
        """Variants 0 .. count-1 of `function`'s archive (see `archive`); those not built yet are built
        side by side (two builds take about as long as one on two cores)."""
        missing = [v for v in range(count) if (function, v) not in self._built]
        with ThreadPoolExecutor(max_workers=2) as pool:
            for variant, archive in zip(missing, pool.map(lambda v: self._build(function, v), missing)):
                self._built[(function, variant)] = archive
        return [self._built[(function, v)] for v in range(count)]

    def _build(self, function: str, variant: int) -> Path:
        folder = self.builds / f"{function}-{variant}"
        shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        spec = folder / "fnpack.yaml"
        spec.write_text(spec.read_text().replace("name: iris", f"name: {function}", 1))
        features = folder / "features.py"
        features.write_text(features.read_text() + f"\n# variant {variant}\n")
        done = fnpack("build", str(folder), "--target", self.name, "--json")
        assert done.code == 0, done.stdout + done.stderr
        return Path(done.json()["archive"])

    def cli(self, *args: str, second: bool = False, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> CliResult:
        """The real CLI with `--target NAME`; `second`: as run on another machine."""
        full = {**self.env, **(self.second_env if second else {}), **(env or {})}
        return fnpack(*args, "--target", self.name, env=full, cwd=cwd)

    def ok(self, *args: str, second: bool = False, cwd: Path | None = None) -> Any:
        """`cli(*args, "--json")`, which must succeed; its JSON."""
        done = self.cli(*args, "--json", second=second, cwd=cwd)
        assert done.code == 0, f"{args}: exit {done.code}\n{done.stdout}\n{done.stderr}"
        return done.json()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _state(data: dict[str, Any] | None) -> AliasState | None:
    if data is None:
        return None
    return AliasState(int(data["primary"]), data.get("canary"), float(data.get("weight") or 0.0))


# --- local: a real `fnpack serve` -----------------------------------------------------------------------


class LocalHarness(Harness):
    name = "local"
    create_actions = ("upload",)
    update_actions = ("upload",)

    def __init__(self, builds: Path, url: str, state_dir: Path, token: str, elsewhere: Path) -> None:
        super().__init__(builds,
                         env={"FNPACK_URL": url, "FNPACK_STATE_DIR": str(state_dir), "FNPACK_TOKEN": "",
                              "FNPACK_INVOKE_TOKEN": "", "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""},
                         # another machine: no state folder of the platform's, the token given instead
                         second_env={"FNPACK_STATE_DIR": str(elsewhere), "FNPACK_TOKEN": token,
                                     "USER": "colleague", "LOGNAME": "colleague"})
        self.base = url
        self.state_dir = state_dir
        self.token = token
        self.raw = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                                trust_env=False)

    def flags(self) -> dict[str, Any]:
        return {"url": self.base, "state_dir": self.state_dir, "token": self.token}

    def second_flags(self) -> dict[str, Any]:
        return {"url": self.base, "token": self.token}

    def url(self, function: str, qualifier: str | None = None) -> str:
        return f"{self.base}/function/{function}" + (f":{qualifier}" if qualifier else "")

    def native_alias(self, function: str, alias: str) -> AliasState | None:
        answer = self.raw.get(f"/api/v1/functions/{function}/aliases")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return _state(answer.json()["aliases"].get(alias))

    def native_history(self, function: str, alias: str) -> list[dict[str, Any]]:
        answer = self.raw.get(f"/api/v1/functions/{function}/aliases/{alias}/history")
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        return answer.json()["history"]

    def close(self) -> None:
        super().close()
        self.raw.close()


@pytest.fixture(scope="module")
def local_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHarness]:
    root = tmp_path_factory.mktemp("local")
    state_dir = root / "state"
    elsewhere = root / "laptop-b"
    elsewhere.mkdir()
    (root / "builds").mkdir()
    with platform(state_dir) as url:
        harness = LocalHarness(root / "builds", url, state_dir, (state_dir / "token").read_text().strip(), elsewhere)
        try:
            yield harness
        finally:
            harness.close()


# --- aws-lambda: a real `moto_server` -------------------------------------------------------------------

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
ROLE_NAME = "fnpack-lambda"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
BUCKET = "fnpack-contract"


class LambdaHarness(Harness):
    name = "aws-lambda"
    create_actions = ("create", "publish")
    update_actions = ("update-code", "publish")
    deploy_args = ("--role", ROLE, "--bucket", BUCKET)

    def __init__(self, builds: Path, env: dict[str, str], elsewhere: Path) -> None:
        # another machine: no bucket, no role (the function's tag names the history's bucket)
        super().__init__(builds, env, second_env={"FNPACK_STATE_DIR": str(elsewhere), "USER": "colleague",
                                                  "LOGNAME": "colleague"})
        import boto3

        options = {"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": REGION, "aws_access_key_id": "testing",
                   "aws_secret_access_key": "testing"}
        self.lam = boto3.client("lambda", **options)
        self.s3 = boto3.client("s3", **options)
        self._turn = threading.Lock()

    def flags(self) -> dict[str, Any]:
        return {"region": REGION, "role": ROLE, "bucket": BUCKET}

    def second_flags(self) -> dict[str, Any]:
        return {"region": REGION}

    def url(self, function: str, qualifier: str | None = None) -> str:
        # no Function URL asked for: the qualified ARN, for the Invoke API
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}:{qualifier or 'live'}"

    def native_alias(self, function: str, alias: str) -> AliasState | None:
        try:
            found = self.lam.get_alias(FunctionName=function, Name=alias)
        except self.lam.exceptions.ResourceNotFoundException:
            return None
        weights = (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        assert len(weights) <= 1, weights
        canary = next(iter(weights.items()), None)
        return AliasState(int(found["FunctionVersion"]), int(canary[0]) if canary else None,
                          float(canary[1]) if canary else 0.0)

    def _open(self, flags: dict[str, Any]) -> Target:
        """moto checks an S3 conditional write (If-Match) and then makes it, in two steps of a request
        handler, so two concurrent ones could both pass; S3's own is atomic. The harness's clients take
        turns for PutObject, so that each conditional write is atomic as on S3 (which one wins is the race's)."""
        made = super()._open(flags)
        events = made.api.client("s3").meta.events  # type: ignore[attr-defined]
        events.register("before-call.s3.PutObject", self._take_turn)
        events.register("after-call.s3.PutObject", self._end_turn)
        events.register("after-call-error.s3.PutObject", self._end_turn)
        return made

    def _take_turn(self, **_: Any) -> None:
        assert self._turn.acquire(timeout=60), "another PutObject never ended"

    def _end_turn(self, **_: Any) -> None:
        self._turn.release()

    @contextlib.contextmanager
    def lined_up(self, *clients: Target) -> Iterator[None]:
        """Each client waits, once it has read the alias and then its history object (the only GetObject of
        a move), until all have: then they write (in turns, see `_open`) from the same ETag, and exactly one
        gets through. Left to chance, a client can read the alias before another moved it and the history
        after that one wrote it: moto, which ignores UpdateAlias's RevisionId, then lets both win (3 to 8
        races in 150 here), and Lambda would refuse the second but keep its entry (the xfail in
        tests/test_aws_lambda.py)."""
        barrier = threading.Barrier(len(clients), timeout=60)

        def wait(**_: Any) -> None:
            barrier.wait()

        events = [client.api.client("s3").meta.events for client in clients]  # type: ignore[attr-defined]
        for emitter in events:
            emitter.register("after-call.s3.GetObject", wait)
        try:
            yield
        finally:
            for emitter in events:
                emitter.unregister("after-call.s3.GetObject", wait)

    def native_history(self, function: str, alias: str) -> list[dict[str, Any]]:
        try:
            raw = self.s3.get_object(Bucket=BUCKET, Key=f"fnpack/{function}/aliases/{alias}/history.json")
        except self.s3.exceptions.NoSuchKey:
            return []
        return json.loads(raw["Body"].read())["moves"]


@pytest.fixture(scope="module")
def lambda_harness(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LambdaHarness]:
    """moto's endpoint, test credentials and a region for the CLI and for Target objects made here (boto3
    reads them from the environment: set for the module), an execution role in IAM and a bucket in S3."""
    import boto3

    root = tmp_path_factory.mktemp("aws-lambda")
    for folder in ("home", "builds", "laptop-b"):
        (root / folder).mkdir()
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(root / "home" / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(root / "home" / "credentials"), "AWS_EC2_METADATA_DISABLED": "true",
           "FNPACK_LAMBDA_BUCKET": "", "FNPACK_LAMBDA_ROLE": "", "FNPACK_LAMBDA_REGION": "", "FNPACK_LAMBDA_PROFILE": "",
           "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)  # the CLI's environment is this one, over os.environ
        boto3.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "lambda.amazonaws.com"}}]}))
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        harness = LambdaHarness(root / "builds", env, root / "laptop-b")
        try:
            yield harness
        finally:
            harness.close()


# --- knative: a real Kubernetes API server, the test controller, moto's S3 as model storage -----------------

KNATIVE_NAMESPACE = "contract"
KNATIVE_BUCKET = "fnpack-models"


class KnativeHarness(Harness):
    name = "knative"
    create_actions = ("upload", "publish")
    update_actions = ("upload", "publish")

    def __init__(self, builds: Path, env: dict[str, str], elsewhere: Path, kube: httpx.Client) -> None:
        # another machine: the same kubeconfig and namespace, no model storage (it only reads and moves)
        super().__init__(builds, env, second_env={"FNPACK_KNATIVE_STORAGE": "", "FNPACK_STATE_DIR": str(elsewhere),
                                                  "USER": "colleague", "LOGNAME": "colleague"})
        self.kube = kube

    def flags(self) -> dict[str, Any]:
        return {"kubeconfig": self.env["FNPACK_KUBECONFIG"], "namespace": KNATIVE_NAMESPACE,
                "storage": f"s3://{KNATIVE_BUCKET}/contract"}

    def second_flags(self) -> dict[str, Any]:
        return {"kubeconfig": self.env["FNPACK_KUBECONFIG"], "namespace": KNATIVE_NAMESPACE}

    def url(self, function: str, qualifier: str | None = None) -> str:
        if qualifier and qualifier.isdigit():
            return f"http://v{qualifier}-{function}.{KNATIVE_NAMESPACE}.example.com"
        host = f"{function}-{qualifier}" if qualifier else function
        return f"http://{host}.{KNATIVE_NAMESPACE}.example.com"

    def _object(self, function: str, alias: str) -> dict[str, Any] | None:
        kind, name = ("services", function) if alias == "live" else ("routes", f"{function}-{alias}")
        answer = self.kube.get(f"/apis/serving.knative.dev/v1/namespaces/{KNATIVE_NAMESPACE}/{kind}/{name}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()

    def native_alias(self, function: str, alias: str) -> AliasState | None:
        """The untagged traffic targets of the alias's object (live: only once it was set, see manifests)."""
        found = self._object(function, alias)
        if found is None or (alias == "live" and not self.native_history(function, alias)):
            return None
        split = [t for t in found["spec"]["traffic"] if not t.get("tag")]
        assert 1 <= len(split) <= 2, split
        numbers = [int(t["revisionName"].rsplit("-v", 1)[1]) for t in split]
        return AliasState(numbers[0], numbers[1] if len(split) == 2 else None,
                          split[1]["percent"] / 100 if len(split) == 2 else 0.0)

    def native_history(self, function: str, alias: str) -> list[dict[str, Any]]:
        found = self._object(function, alias)
        text = ((found or {}).get("metadata", {}).get("annotations") or {}).get("fnpack.dev/history")
        return json.loads(text) if text else []


@pytest.fixture(scope="module")
def knative_harness(kube_cluster: Any, moto_endpoint: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnativeHarness]:
    """The session's API server with the test controller reconciling the module's namespace, and moto's S3 as
    model storage (a bucket made here); the CLI and Target objects get the kubeconfig through the settings."""
    import boto3

    from fake_knative import FakeKnative

    root = tmp_path_factory.mktemp("knative")
    for folder in ("home", "builds", "laptop-b", "controller"):
        (root / folder).mkdir()
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(root / "home" / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(root / "home" / "credentials"), "AWS_EC2_METADATA_DISABLED": "true",
           "FNPACK_KUBECONFIG": str(kube_cluster.kubeconfig), "FNPACK_KNATIVE_NAMESPACE": KNATIVE_NAMESPACE,
           "FNPACK_KNATIVE_STORAGE": f"s3://{KNATIVE_BUCKET}/contract", "KUBECONFIG": "", "FNPACK_KUBE_CONTEXT": "",
           "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""}
    with pytest.MonkeyPatch.context() as patch, \
            FakeKnative(kube_cluster.kubeconfig, workdir=root / "controller", namespaces=[KNATIVE_NAMESPACE]) as fake:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        boto3.client("s3").create_bucket(Bucket=KNATIVE_BUCKET)
        harness = KnativeHarness(root / "builds", env, root / "laptop-b", kube_cluster.client())
        try:
            yield harness
        finally:
            harness.close()
            harness.kube.close()
        assert fake.violations == []  # nothing fnpack sent is what Knative's webhook would refuse


# --- openfaas: the fake gateway running each function as real processes, moto's S3 as model storage ---------

FAAS_BUCKET = "fnpack-faas"
FAAS_PASSWORD = "contract-secret"


class OpenFaaSHarness(Harness):
    name = "openfaas"
    create_actions = ("upload", "publish")
    update_actions = ("upload", "publish")

    def __init__(self, builds: Path, env: dict[str, str], elsewhere: Path, gateway: str) -> None:
        # another machine: the gateway and its password only (the history's bucket is found from the gateway)
        super().__init__(builds, env, second_env={"FNPACK_OPENFAAS_STORAGE": "", "FNPACK_STATE_DIR": str(elsewhere),
                                                  "USER": "colleague", "LOGNAME": "colleague"})
        import boto3

        self.gateway = gateway
        self.raw = httpx.Client(base_url=gateway, auth=("admin", FAAS_PASSWORD), timeout=60, trust_env=False)
        self.s3 = boto3.client("s3")

    def flags(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "password": FAAS_PASSWORD, "edition": "pro",
                "storage": f"s3://{FAAS_BUCKET}/contract", "upstream": self.env["FNPACK_OPENFAAS_UPSTREAM"]}

    def second_flags(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "password": FAAS_PASSWORD, "edition": "pro",
                "upstream": self.env["FNPACK_OPENFAAS_UPSTREAM"]}

    def url(self, function: str, qualifier: str | None = None) -> str:
        if qualifier and qualifier.isdigit():
            return f"{self.gateway}/function/{function}-v{qualifier}"
        return f"{self.gateway}/function/{function}" + (f"-{qualifier}" if qualifier else "")

    def native_alias(self, function: str, alias: str) -> AliasState | None:
        """The route in the alias's router function, as the gateway reads it back."""
        answer = self.raw.get(f"/system/function/{function if alias == 'live' else f'{function}-{alias}'}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return _state(json.loads(answer.json()["annotations"]["com.fnpack.route"]))

    def native_history(self, function: str, alias: str) -> list[dict[str, Any]]:
        try:
            raw = self.s3.get_object(Bucket=FAAS_BUCKET, Key=f"contract/{function}/aliases/{alias}/history.json")
        except self.s3.exceptions.NoSuchKey:
            return []
        return json.loads(raw["Body"].read())["moves"]

    def close(self) -> None:
        super().close()
        self.raw.close()


@pytest.fixture(scope="module")
def openfaas_harness(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenFaaSHarness]:
    """The fake gateway (Pro: CE holds 15 functions, fewer than the suite makes; CE's own limits are tested in
    tests/openfaas), its functions' replicas real worker processes reading moto's S3."""
    import boto3

    from fake_openfaas import FakeOpenFaaS

    root = tmp_path_factory.mktemp("openfaas")
    for folder in ("home", "builds", "laptop-b", "gateway"):
        (root / folder).mkdir()
    aws = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(root / "home" / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(root / "home" / "credentials"), "AWS_EC2_METADATA_DISABLED": "true"}
    # the functions' storage credentials: the gateway's environment stands in for the mounted secret
    with FakeOpenFaaS(workdir=root / "gateway", password=FAAS_PASSWORD, edition="pro", extra_env=aws) as gateway, \
            pytest.MonkeyPatch.context() as patch:
        env = {**aws, "FNPACK_OPENFAAS_GATEWAY": gateway.url, "FNPACK_OPENFAAS_PASSWORD": FAAS_PASSWORD,
               "FNPACK_OPENFAAS_EDITION": "pro", "FNPACK_OPENFAAS_STORAGE": f"s3://{FAAS_BUCKET}/contract",
               "FNPACK_OPENFAAS_UPSTREAM": gateway.url + "/function/{function}-v{version}",
               "OPENFAAS_URL": "", "OPENFAAS_CONFIG": str(root / "home"), "FNPACK_TARGET": "", "FNPACK_CONTEXT": ""}
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=FAAS_BUCKET)
        harness = OpenFaaSHarness(root / "builds", env, root / "laptop-b", gateway.url)
        try:
            yield harness
        finally:
            harness.close()
        assert gateway.violations == []  # every request fnpack sent conformed to the gateway's OpenAPI spec


# --- the parametrized fixture every contract test takes --------------------------------------------------

HARNESSES = {"local": "local_harness", "aws-lambda": "lambda_harness", "knative": "knative_harness",
             "openfaas": "openfaas_harness"}  # target name -> its fixture


@pytest.fixture(scope="module", params=list(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return request.getfixturevalue(HARNESSES[request.param])
