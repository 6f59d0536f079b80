"""The aws-lambda target's canary observer (CloudWatch's AWS/Lambda metrics) and whole rollouts through it,
against a real `moto_server`.

moto runs no function code and writes no metrics, so the tests play Lambda: they write with PutMetricData
what Lambda writes for each invocation through an alias (Invocations, Errors and Duration under the three
dimension sets {FunctionName}, {FunctionName, Resource=NAME:ALIAS} and {..., ExecutedVersion=N}); for the
rollouts a traffic thread reads alias live's RoutingConfig from moto every 50 ms and writes the metrics of
invocations split by its weights, each version behaving as the test says (errors, slowness).

moto oddities the tests live with: its GetMetricData fails (500) on a percentile statistic once there is
data (so the latencies here are the observer's Maximum fallback), and it matches dimensions in the order
they were written (its Dimension sorts wrongly): the metrics are written in the order Lambda's documentation
and the observer list them.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES, fnpack

REGION = "us-east-1"
ROLE_NAME = "fnpack-cloudwatch"
ROLE = f"arn:aws:iam::123456789012:role/{ROLE_NAME}"
BUCKET = "fnpack-cloudwatch"
FUNCTION = "cw-canary"  # v1 (live), v2 (good), v3 (bad), v4 (slow)
DURATIONS = (80.0, 90.0, 100.0, 110.0, 120.0)  # ms, in turn: a healthy version's Duration


@pytest.fixture(scope="module")
def aws(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's endpoint, test credentials and a region for the module (boto3 reads them from the environment),
    an execution role and the alias history's bucket."""
    import boto3

    home = tmp_path_factory.mktemp("cw-home")
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_EC2_METADATA_DISABLED": "true",
           "FNPACK_LAMBDA_BUCKET": "", "FNPACK_LAMBDA_ROLE": "", "FNPACK_LAMBDA_REGION": "",
           "FNPACK_LAMBDA_PROFILE": "", "FNPACK_TARGET": "", "FNPACK_CONTEXT": "",
           "FNPACK_CLOUDWATCH_DELAY": "0", "FNPACK_CLOUDWATCH_POLL": "0.5"}  # figures show at once on moto
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        boto3.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "lambda.amazonaws.com"}}]}))
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env


def client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def target() -> Any:
    from fnpack.targets import get_target

    return get_target("aws-lambda", region=REGION, role=ROLE, bucket=BUCKET)


def stamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def put_invocations(cw: Any, function: str, alias: str, version: int, durations: list[float], errors: int,
                    at: float | None = None) -> None:
    """What Lambda writes for `len(durations)` invocations of `function:alias` that ran `version`, `errors`
    of them failing: each metric under each of its three dimension sets."""
    if not durations:
        return
    base = [{"Name": "FunctionName", "Value": function}]
    resource = [*base, {"Name": "Resource", "Value": f"{function}:{alias}"}]
    executed = [*resource, {"Name": "ExecutedVersion", "Value": str(version)}]
    when = stamp(time.time() if at is None else at)
    fine = len(durations) - errors
    counts = [(value, count) for value, count in ((0.0, fine), (1.0, errors)) if count]
    data = []
    for dimensions in (base, resource, executed):
        data += [{"MetricName": "Invocations", "Dimensions": dimensions, "Timestamp": when, "Unit": "Count",
                  "Values": [1.0], "Counts": [float(len(durations))]},
                 {"MetricName": "Errors", "Dimensions": dimensions, "Timestamp": when, "Unit": "Count",
                  "Values": [v for v, _ in counts], "Counts": [float(c) for _, c in counts]},
                 {"MetricName": "Duration", "Dimensions": dimensions, "Timestamp": when, "Unit": "Milliseconds",
                  "Values": list(durations)}]
    cw.put_metric_data(Namespace="AWS/Lambda", MetricData=data)


def observer(**kwargs: Any) -> Any:
    from fnpack.targets.aws_lambda.api import LambdaApi
    from fnpack.targets.aws_lambda.observer import CloudWatchObserver

    return CloudWatchObserver(LambdaApi(REGION), **kwargs)


def stats_asked(made: Any) -> list[str]:
    """Records the Duration statistic of each GetMetricData the observer sends (the list it returns)."""
    asked: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        asked.extend(q["MetricStat"]["Stat"] for q in params["MetricDataQueries"]
                     if q["MetricStat"]["Metric"]["MetricName"] == "Duration")

    made.client.meta.events.register("provide-client-params.cloudwatch.GetMetricData", record)
    return asked


# --- the observer ----------------------------------------------------------------------------------------


def test_figures_per_version_exclude_other_windows_versions_aliases_and_functions(aws: dict[str, str]) -> None:
    from fnpack.canary.observer import Figures, Window

    cw, name, now = client("cloudwatch"), "cw-figures", time.time()
    put_invocations(cw, name, "live", 1, [100.0, 140.0, 90.0] * 10, errors=3, at=now - 2)
    put_invocations(cw, name, "live", 2, [200.0, 250.0] * 5, errors=0, at=now - 1)
    put_invocations(cw, name, "live", 2, [900.0] * 7, errors=7, at=now - 400)  # before the window's minute
    put_invocations(cw, name, "live", 3, [999.0] * 50, errors=50, at=now - 2)  # a version not in the window
    put_invocations(cw, name, "beta", 1, [999.0] * 50, errors=50, at=now - 2)  # another alias
    put_invocations(cw, "cw-other", "live", 1, [999.0] * 50, errors=50, at=now - 2)  # another function
    cw.put_metric_data(Namespace="AWS/Lambda", MetricData=[  # the function's total only: not per version
        {"MetricName": "Invocations", "Dimensions": [{"Name": "FunctionName", "Value": name}], "Value": 500.0,
         "Timestamp": stamp(now - 2), "Unit": "Count"}])

    made = observer()
    asked = stats_asked(made)
    assert made.name == f"CloudWatch AWS/Lambda in {REGION}" and made.delay == 0 and made.poll == 0.5
    window = Window(name, "live", (1, 2, 5), 0.99, start=now - 5)
    figures = made.read(window)
    assert figures[1] == Figures(30, 3, 0.140, "max") and figures[1].error_rate == pytest.approx(0.1)
    assert figures[2] == Figures(10, 0, 0.250, "max")
    assert figures[5] == Figures()  # no traffic: no latency either
    # moto has no percentiles: p99 was asked for first, then the Maximum, which is remembered
    assert asked[0] == "p99" and asked[-1] == "Maximum" and made.latency_stat == "Maximum"
    assert "Maximum" in made.latency_note and "p99" in made.fallback_reason
    asked.clear()
    put_invocations(cw, name, "live", 2, [300.0], errors=1)
    assert made.read(window)[2] == Figures(11, 1, 0.300, "max")
    assert set(asked) == {"Maximum"}  # one query per version, none of them p99 any more


def test_the_query_is_one_aligned_period_with_lambdas_dimensions_and_the_quantiles_statistic(
        aws: dict[str, str]) -> None:
    """CloudWatch's answer played by a hook (moto has no percentiles): the request's shape, and p99.9 used
    as it is when CloudWatch has it."""
    from fnpack.canary.observer import Figures, Window
    from fnpack.targets.aws_lambda.observer import CloudWatchObserver

    assert CloudWatchObserver.span(125.0, 130.0) == (120, 180)
    assert CloudWatchObserver.span(125.0, 180.0) == (120, 240)  # the current minute, whole
    assert CloudWatchObserver.span(60.0, 299.5) == (60, 300)
    sent: list[dict[str, Any]] = []

    class Answer:
        status_code = 200
        headers: dict[str, str] = {}

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(params)

    def answer(**_: Any) -> Any:
        values = {"inv": [40.0, 2.0], "err": [1.0], "lat": [420.0]}  # counts in two datapoints add up
        return Answer(), {"MetricDataResults": [{"Id": q["Id"], "Values": values[q["Id"][:3]],
                                                 "StatusCode": "Complete"} for q in sent[-1]["MetricDataQueries"]]}

    made = observer(delay=75, poll=3)
    assert (made.delay, made.poll) == (75, 3)
    made.client.meta.events.register("provide-client-params.cloudwatch.GetMetricData", record)
    made.client.meta.events.register("before-call.cloudwatch.GetMetricData", answer)
    window = Window("fn", "prod", (4,), 0.999, start=time.time() - 70)
    assert made.read(window) == {4: Figures(42, 1, 0.420)}
    assert made.latency_stat == "p99.9" and made.latency_note is None
    params = sent[0]
    start, end = params["StartTime"].timestamp(), params["EndTime"].timestamp()
    assert start % 60 == 0 and end % 60 == 0 and start <= window.start and end > time.time() - 1
    stats = {q["Id"]: (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"], q["MetricStat"]["Period"])
             for q in params["MetricDataQueries"]}
    assert stats == {"inv4": ("Invocations", "Sum", end - start), "err4": ("Errors", "Sum", end - start),
                     "lat4": ("Duration", "p99.9", end - start)}
    for query in params["MetricDataQueries"]:
        metric = query["MetricStat"]["Metric"]
        assert metric["Namespace"] == "AWS/Lambda"
        assert {d["Name"]: d["Value"] for d in metric["Dimensions"]} == {
            "FunctionName": "fn", "Resource": "fn:prod", "ExecutedVersion": "4"}


def test_settings_prometheus_and_access_denied(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from fnpack.canary.observer import Window
    from fnpack.errors import AccessDeniedError, UsageError

    # FNPACK_PROMETHEUS_URL, set for the other targets, does not turn Lambda's observer into another one
    assert target().observer("http://prometheus:9090").name.startswith("CloudWatch AWS/Lambda in")
    monkeypatch.delenv("FNPACK_CLOUDWATCH_DELAY")
    monkeypatch.delenv("FNPACK_CLOUDWATCH_POLL")
    made = target().observer()
    assert 60 <= made.delay <= 120 and made.poll == 10  # real Lambda's figures show a minute or more late
    monkeypatch.setenv("FNPACK_CLOUDWATCH_DELAY", "soon")
    with pytest.raises(UsageError, match="FNPACK_CLOUDWATCH_DELAY"):
        observer()
    monkeypatch.setenv("FNPACK_CLOUDWATCH_DELAY", "0")

    iam = client("iam")
    iam.create_user(UserName="cw-reader")
    iam.put_user_policy(UserName="cw-reader", PolicyName="lambda-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["lambda:*"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="cw-reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    denied = observer()
    reset = f"{aws['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
    httpx.post(reset, content=b"0", trust_env=False).raise_for_status()  # moto checks IAM policies from now on
    try:
        with pytest.raises(AccessDeniedError) as refused:
            denied.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5))
    finally:
        httpx.post(reset, content=b"inf", trust_env=False).raise_for_status()
    assert refused.value.permission == "cloudwatch:GetMetricData"
    assert "access denied" in refused.value.message and "fn:live" in refused.value.message
    assert "cloudwatch:GetMetricData" in (refused.value.hint or "")


# --- whole rollouts: a real LambdaTarget on moto, the traffic played here ---------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a version answers: every `error_every`-th invocation fails (0: none); Duration times `slowdown`."""

    error_every: int = 0
    slowdown: float = 1.0


class Traffic(threading.Thread):
    """Lambda behind alias live: every tick, `per_tick` invocations split by the alias's RoutingConfig as moto
    has it (fractions carried over, so the split is exact over time), written as Lambda's metrics."""

    def __init__(self, function: str, behaviours: dict[int, Behaviour], per_tick: int = 8,
                 tick: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.function, self.behaviours, self.per_tick, self.tick = function, behaviours, per_tick, tick
        self.lam, self.cw = client("lambda"), client("cloudwatch")
        self.halt = threading.Event()
        self.carried: dict[int, float] = {}
        self.count: dict[int, itertools.count[int]] = {}
        self.seen: list[tuple[str, dict[str, float]]] = []  # each RoutingConfig read, when it changed
        self.sent: dict[int, int] = {}
        self.failures: list[BaseException] = []

    def run(self) -> None:
        while not self.halt.wait(self.tick):
            try:
                self._tick()
            except BaseException as exc:  # noqa: BLE001 (reported by stop())
                self.failures.append(exc)
                return

    def _tick(self) -> None:
        alias = self.lam.get_alias(FunctionName=self.function, Name="live")
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        if not self.seen or self.seen[-1] != (alias["FunctionVersion"], weights):
            self.seen.append((alias["FunctionVersion"], dict(weights)))
        shares = {int(alias["FunctionVersion"]): 1.0 - sum(weights.values()),
                  **{int(v): w for v, w in weights.items()}}
        for version, share in shares.items():
            self.carried[version] = self.carried.get(version, 0.0) + self.per_tick * share
            calls = int(self.carried[version] + 1e-9)
            self.carried[version] -= calls
            if calls:
                self._invoke(version, calls)

    def _invoke(self, version: int, calls: int) -> None:
        behaviour = self.behaviours.get(version, Behaviour())
        counter = self.count.setdefault(version, itertools.count(1))
        numbers = [next(counter) for _ in range(calls)]
        durations = [DURATIONS[n % len(DURATIONS)] * behaviour.slowdown for n in numbers]
        errors = sum(1 for n in numbers if behaviour.error_every and n % behaviour.error_every == 0)
        put_invocations(self.cw, self.function, "live", version, durations, errors)
        self.sent[version] = self.sent.get(version, 0) + calls

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        assert not self.failures, self.failures


@pytest.fixture(scope="module")
def canary_function(aws: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """FUNCTION deployed four times (examples/iris, variants that differ in bytes): live on v1, v2 to v4
    published and not promoted."""
    import shutil

    root = tmp_path_factory.mktemp("cw-builds")

    def build(variant: int) -> Path:
        folder = root / f"{FUNCTION}-{variant}"
        shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        spec = folder / "fnpack.yaml"
        spec.write_text(spec.read_text().replace("name: iris", f"name: {FUNCTION}", 1))
        (folder / "features.py").write_text((folder / "features.py").read_text() + f"\n# variant {variant}\n")
        done = fnpack("build", str(folder), "--target", "aws-lambda", "--json")
        assert done.code == 0, done.stdout + done.stderr
        return Path(done.json()["archive"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        archives = list(pool.map(build, range(4)))
    deployer = target()
    for number, archive in enumerate(archives, start=1):
        made = deployer.deploy(archive, alias="live" if number == 1 else None)
        assert made.version.number == number
    return FUNCTION


@pytest.fixture
def on_v1(canary_function: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh target with FUNCTION:live on v1 alone (where an earlier test may have left it elsewhere); the
    rollout's lock in a cache folder of the test's own."""
    from fnpack.versions import AliasState

    monkeypatch.setenv("FNPACK_CACHE_DIR", str(tmp_path / "cache"))
    made = target()
    if made.aliases(canary_function)["live"] != AliasState(1):
        made.set_alias(canary_function, "live", AliasState(1), "test: back to v1")
    return made


def roll_out(made: Any, version: int, behaviour: Behaviour, **policy: Any) -> tuple[Any, Traffic, list[Any]]:
    """A rollout of `version` with traffic running; (the outcome or the CanaryFailed, the traffic, the events)."""
    from fnpack.canary.policy import Policy
    from fnpack.canary.rollout import CanaryFailed, Rollout

    events: list[dict[str, Any]] = []
    watcher = made.observer()
    traffic = Traffic(FUNCTION, {version: behaviour})
    traffic.start()
    try:
        result: Any = Rollout(made, FUNCTION, "live", version,
                              Policy(steps=(10, 50, 100), interval=2.0, min_requests=20, **policy), watcher,
                              report=events.append).run()
    except CanaryFailed as exc:
        result = exc
    finally:
        traffic.stop()
    assert any(e["event"] == "start" and e["observer"] == f"CloudWatch AWS/Lambda in {REGION}" for e in events)
    return result, traffic, events


def alias_now() -> tuple[str, dict[str, float]]:
    found = client("lambda").get_alias(FunctionName=FUNCTION, Name="live")
    return found["FunctionVersion"], (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


def test_a_good_version_is_promoted_through_every_step(on_v1: Any) -> None:
    from fnpack.canary.rollout import Outcome
    from fnpack.versions import AliasState

    before = len(on_v1.history(FUNCTION, "live"))
    outcome, traffic, events = roll_out(on_v1, 2, Behaviour(), max_regression=1.5)
    assert isinstance(outcome, Outcome) and outcome.outcome == "promoted", outcome
    assert alias_now() == ("2", {})
    moves = on_v1.history(FUNCTION, "live")[before:]
    assert [m.after for m in moves] == [AliasState(1, 2, 0.1), AliasState(1, 2, 0.5), AliasState(2)]
    assert all(m.reason.startswith("canary v2 ") for m in moves), [m.reason for m in moves]
    assert moves[0].reason.startswith("canary v2 10%: started: steps 10,50,100 every 2s")
    assert moves[1].reason.startswith("canary v2 50%: errors 0% (max 1%)") and "at 10%" in moves[1].reason
    assert moves[2].reason.startswith("canary v2 promoted: errors 0%") and "at 50%" in moves[2].reason
    assert "x the primary's" in moves[2].reason  # the regression was judged against v1's latency
    # the traffic followed the alias through the steps, and the windows saw it
    assert [s for s in traffic.seen if s[1]] == [("1", {"2": 0.1}), ("1", {"2": 0.5})]
    windows = [e for e in events if e["event"] == "window"]
    assert [(w["weight"], w["verdict"]) for w in windows] == [(10, "pass"), (50, "pass")]
    assert all(w["canary"]["requests"] >= 20 and w["canary"]["latency_ms"] == 120.0 for w in windows)


def test_a_version_with_errors_is_rolled_back(on_v1: Any) -> None:
    from fnpack.canary.rollout import CanaryFailed

    failed, traffic, events = roll_out(on_v1, 3, Behaviour(error_every=5))
    assert isinstance(failed, CanaryFailed) and failed.exit_code == 14, failed
    assert "rolled back at 10%" in failed.message and "live is on v1 again" in failed.message
    assert alias_now() == ("1", {})
    last = on_v1.history(FUNCTION, "live")[-1]
    # 1 in 5 fails: 20%, or a little less when read a few invocations after the last failure
    assert re.match(r"canary v3 rolled back at 10%: errors (1[5-9]|20)\.[0-9]% \(max 1%\) over 2[0-9] requests",
                    last.reason), last.reason
    assert failed.outcome is not None and failed.outcome.outcome == "rolled-back"
    assert traffic.sent.get(3, 0) >= 20


def test_a_slower_version_is_rolled_back_on_the_regression(on_v1: Any) -> None:
    from fnpack.canary.rollout import CanaryFailed

    failed, _, events = roll_out(on_v1, 4, Behaviour(slowdown=3.0), max_regression=1.5)
    assert isinstance(failed, CanaryFailed) and failed.exit_code == 14, failed
    assert alias_now() == ("1", {})
    last = on_v1.history(FUNCTION, "live")[-1]
    assert last.reason.startswith("canary v4 rolled back at 10%: max 360 ms, 3.00x the primary's 120 ms (max 1.5x)")
    window = next(e for e in events if e["event"] == "window")
    assert window["verdict"] == "fail" and window["canary"]["errors"] == 0
