"""`fnpack canary` attacked as a hostile or careless party would: a metrics source answering garbage, NaN,
huge or endless bodies; counters that go down; written values that are not numbers; booleans in the spec;
a lock in a folder that cannot be written, or held with garbage in it; two rollouts at once; SIGTERM.

Unit-level attacks use a fake target (in memory) and fake HTTP servers on loopback; the rest drive the real
CLI against the package's `fnpack serve` (tests/canary/conftest.py)."""

from __future__ import annotations

import fcntl
import http.server
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from canary.conftest import NAME
from fnpack.canary.analysis import judge
from fnpack.canary.observer import Figures
from fnpack.canary.policy import CanarySettings, Policy, parse_duration, parse_factor
from fnpack.canary.rollout import CanaryFailed, Rollout
from fnpack.errors import ConflictError, FnpackError, StartError, UsageError
from fnpack.versions import AliasState

V1 = {"primary": 1, "canary": None, "weight": 0.0}


# --- a fake HTTP server on loopback, answering as a test says -----------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        server: Any = self.server
        server.paths.append(self.path)
        answer = server.config if self.path.startswith("/api/v1/status/config") else server.query
        answer(self)


def json_answer(body: Any, status: int = 200) -> Callable[[Any], None]:
    return raw_answer(json.dumps(body).encode(), "application/json", status)


def raw_answer(body: bytes, ctype: str = "application/json", status: int = 200) -> Callable[[Any], None]:
    def answer(handler: Any) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def huge_answer(size: int) -> Callable[[Any], None]:
    def answer(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(size // len(chunk)):
                handler.wfile.write(chunk)
        except OSError:
            pass  # the client gave up: as it should

    return answer


def trickle_answer(handler: Any) -> None:
    """Headers at once, then a byte every 0.1 s, for ever: no read ever times out."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    try:
        while not handler.server.stopping.wait(0.1):
            handler.wfile.write(b" ")
            handler.wfile.flush()
    except OSError:
        pass


def hang_answer(handler: Any) -> None:
    handler.server.stopping.wait(30)


CONFIG_1S = json_answer({"status": "success", "data": {"yaml": "global:\n  scrape_interval: 1s\n"}})


def vector(value: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]}}


@contextmanager
def fake_prometheus(query: Callable[[Any], None], config: Callable[[Any], None] = CONFIG_1S) -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.query, server.config, server.paths = query, config, []
    server.stopping = threading.Event()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def in_time(call: Callable[[], Any], seconds: float) -> Any:
    """call() in a thread; fails the test (instead of hanging it) when it does not end in time."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    began = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it would hang the rollout for ever"
    result["seconds"] = time.monotonic() - began
    return result


# --- a fake target, in memory --------------------------------------------------------------------------------


class FakeTarget:
    name = "fake"

    def __init__(self, state: AliasState | None = None) -> None:
        self.state = {"live": state or AliasState(1)}
        self.moves: list[tuple[Any, AliasState, str]] = []

    def aliases(self, function: str) -> dict[str, AliasState]:
        return dict(self.state)

    def versions(self, function: str) -> list[Any]:
        return [SimpleNamespace(number=1), SimpleNamespace(number=2)]

    def set_alias(self, function: str, alias: str, state: AliasState, reason: str, expect: Any = None) -> Any:
        if expect is not None and self.state.get(alias) != expect:
            raise ConflictError("moved")
        before, self.state[alias] = self.state.get(alias), state
        self.moves.append((before, state, reason))
        return SimpleNamespace(before=before, after=state, at="now", reason=reason)

    def history(self, function: str, alias: str) -> list[Any]:
        return [SimpleNamespace(before=b, after=a, reason=r, at="now", actor="test") for b, a, r in self.moves]

    def invoke_url(self, qualifier: Any) -> str:
        return f"fake://{id(self)}/{qualifier}"


class ScriptedObserver:
    """An observer whose reads are the given figures in turn (the last one repeated)."""

    name = "scripted"
    delay = 0.0
    min_interval = 0.0

    def __init__(self, reads: list[dict[int, Figures]]) -> None:
        self.reads, self.opened = reads, 0

    def open(self, function: str, alias: str, versions: Any, quantile: float) -> Any:
        from fnpack.canary.observer import Window

        self.opened += 1
        return Window(function, alias, tuple(versions), quantile)

    def read(self, window: Any) -> dict[int, Figures]:
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]

    def close(self) -> None:
        pass


FAST_POLICY = dict(steps=(50, 100), interval=0.2, min_requests=10, max_wait=1.5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FNPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def rollout(target: FakeTarget, observer: Any, **policy: Any) -> Rollout:
    return Rollout(target, "fn", "live", 2, Policy(**{**FAST_POLICY, **policy}), observer, poll=0.05)


# --- written values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("parse, value", [
    (parse_duration, float("nan")), (parse_duration, float("inf")), (parse_duration, "1" + "0" * 400 + "s"),
    (parse_duration, "nan"), (parse_factor, "nan"), (parse_factor, "inf"), (parse_factor, float("nan")),
])
def test_a_value_that_is_not_a_finite_number_is_refused(parse, value):
    # a NaN interval never ends a window without traffic (nan >= limit is never true); a NaN regression
    # factor silently turns the latency check off (ratio > nan is never true)
    with pytest.raises(UsageError):
        parse(value)


@pytest.mark.parametrize("section, key", [
    ({"interval": True}, "interval"), ({"steps": [True, 50]}, "steps"), ({"min_requests": True}, "min_requests"),
    ({"max_wait": False}, "max_wait"), ({"interval": [1]}, "interval"), ({"steps": {"a": 1}}, "steps"),
    ({"interval": float("nan")}, "interval"), ({"max_wait": float("inf")}, "max_wait"),
    ({"max_regression": "nan"}, "max_regression"), ({"min_requests": 0}, "min_requests"),
])
def test_the_specs_canary_section_with_wrong_types_is_refused_naming_the_key(section, key):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        CanarySettings.model_validate(section)
    assert key in str(raised.value)


def test_odd_but_fair_spellings_still_parse():
    assert CanarySettings.model_validate({"steps": [10, 20], "interval": 1.5, "min_requests": 3}).policy() == Policy(
        steps=(10, 20), interval=1.5, min_requests=3)
    assert parse_duration("0.001s") == 0.001 and parse_factor("1.5X") == 1.5


# --- the analysis never passes on figures that are not counts ------------------------------------------------


@pytest.mark.parametrize("canary", [
    Figures(requests=math.nan, errors=5), Figures(requests=100, errors=math.nan), Figures(requests=math.inf),
    Figures(requests=100, errors=-40), Figures(requests=-5, errors=-10), Figures(requests=100, errors=150),
])
def test_figures_that_are_not_counts_are_never_a_pass(canary):
    verdict = judge(Policy(min_requests=10), canary, Figures(1000, 0))
    assert verdict.outcome != "pass", verdict


@pytest.mark.parametrize("latency", [math.nan, math.inf])
def test_a_latency_that_is_not_a_number_is_never_a_pass(latency):
    verdict = judge(Policy(min_requests=10, max_latency=0.3), Figures(100, 0, latency), None)
    assert verdict.outcome == "fail", verdict
    # a NaN (or zero) primary latency is no baseline: the regression cannot be judged against it
    verdict = judge(Policy(min_requests=10, max_regression=1.5), Figures(100, 0, 5.0), Figures(100, 0, math.nan))
    assert "no primary baseline" in verdict.text, verdict


def test_a_canary_with_no_requests_beside_a_busy_primary_waits():
    verdict = judge(Policy(min_requests=10, max_regression=1.5), Figures(0, 0, None), Figures(10_000, 3, 0.01))
    assert verdict.outcome == "wait" and "0 of 10" in verdict.text


# --- counters that go down mid-window (a platform restart) -------------------------------------------------


class RestartingGateway:
    """The local gateway's /metrics text: v2 had 100 good and 100 failed requests, then the platform restarted
    (counters from 0) and it answers 5 in 6 requests well, 1 in 6 with a 5xx: 16.7 % errors."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: str, path: str, control: bool = True) -> Any:
        n, self.calls = self.calls, self.calls + 1
        ok, failed = (100, 100) if n == 0 else (250 + 50 * n, 50 + 10 * n)
        lines = ["# TYPE fnpack_requests_total counter"]
        for code, count in (("200", ok), ("500", failed)):
            lines.append(f'fnpack_requests_total{{function="fn",alias="live",version="2",code="{code}"}} {count}')
        return SimpleNamespace(text="\n".join(lines) + "\n")


def test_a_counter_reset_mid_window_does_not_hide_the_canarys_errors(cache):
    from fnpack.targets.local.observer import GatewayObserver

    target = FakeTarget()
    done = in_time(rollout(target, GatewayObserver(RestartingGateway())).run, 10)
    # errors went from 100 to 60 while requests grew: a negative error count is no 0 % error rate
    assert isinstance(done.get("error"), CanaryFailed), done
    assert "rolled back at 50%: errors" in done["error"].message, done["error"].message
    assert target.state["live"] == AliasState(1)
    assert not any("promoted" in reason for _, _, reason in target.moves), target.moves


def test_nan_figures_from_the_gateway_halt_the_rollout_instead_of_promoting(cache):
    from fnpack.targets.local.observer import GatewayObserver

    class NanGateway:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            return SimpleNamespace(text='# TYPE fnpack_requests_total counter\n'
                                        'fnpack_requests_total{function="fn",alias="live",version="2",code="200"} '
                                        'NaN\n')

    assert math.isnan(GatewayObserver(NanGateway())._counts("fn", "live")[2][0])  # the page is read
    target = FakeTarget()
    done = in_time(rollout(target, GatewayObserver(NanGateway())).run, 10)
    assert isinstance(done.get("error"), CanaryFailed), done
    assert "no usable figures" in done["error"].message, done["error"].message
    assert target.state["live"] == AliasState(1)


def test_a_malformed_gateway_metrics_page_is_a_named_error_and_the_alias_stays_at_its_step(cache):
    from fnpack.targets.local.observer import GatewayObserver

    class Malformed:
        def __init__(self) -> None:
            self.calls = 0

        def request(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                return SimpleNamespace(text="")
            return SimpleNamespace(text='fnpack_requests_total{function="fn",alias="live",version="two"} 1\n{{{\n')

    target = FakeTarget()
    done = in_time(rollout(target, GatewayObserver(Malformed())).run, 10)
    assert isinstance(done.get("error"), FnpackError), done  # not a traceback
    assert "the local gateway" in done["error"].message, done["error"].message
    assert target.state["live"] == AliasState(1, 2, 0.5) == target.moves[-1][1]  # a recorded step


# --- a Prometheus answering garbage -----------------------------------------------------------------------


@pytest.mark.parametrize("answer, text", [
    (raw_answer(b"<html><body>Grafana login</body></html>", "text/html"), "refused"),
    (json_answer([]), "Prometheus"),
    (json_answer("success"), "Prometheus"),
    (json_answer({"status": "success"}), "Prometheus"),
    (json_answer({"status": "success", "data": []}), "Prometheus"),
    (json_answer({"status": "success", "data": {"result": [1, "5"]}}), "Prometheus"),
    (json_answer(vector("lots")), "Prometheus"),
    (json_answer({"status": "success", "data": {"result": [{"value": None}]}}), "Prometheus"),
    (json_answer({"status": "error", "errorType": "bad_data", "error": "parse error at char 7"}, 400),
     "parse error at char 7"),
    (raw_answer(b"\xff\xfe\x00garbage"), "Prometheus"),
])
def test_a_prometheus_answering_garbage_is_a_named_error_not_a_traceback(answer, text):
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    with fake_prometheus(answer) as server:
        observer = PrometheusObserver(server.url, local_queries())
        assert observer.delay == 1.0
        with pytest.raises(FnpackError) as raised:
            observer.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5))
        observer.close()
    assert text in raised.value.message, raised.value.message


@pytest.mark.parametrize("value, requests", [("NaN", 0.0), ("+Inf", 0.0), ("-Inf", 0.0), ("12", 12.0)])
def test_nan_and_inf_from_prometheus_are_no_figures(value, requests):
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    with fake_prometheus(json_answer(vector(value))) as server:
        observer = PrometheusObserver(server.url, local_queries())
        figures = observer.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5))
        observer.close()
    assert figures[2].requests == requests
    assert figures[2].latency is None or math.isfinite(figures[2].latency)


@pytest.mark.parametrize("config", [
    json_answer({"status": "success"}), json_answer({"status": "success", "data": None}),
    json_answer({"status": "success", "data": {"yaml": "global: [1, 2]"}}),
    json_answer({"status": "success", "data": {"yaml": "global:\n  scrape_interval: 1" + "0" * 400 + "s\n"}}),
    json_answer({"status": "success", "data": {"yaml": ": : :\n\t["}}), raw_answer(b"<html></html>", "text/html", 404),
])
def test_a_server_without_a_readable_configuration_gets_the_default_scrape_interval(config):
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    with fake_prometheus(json_answer(vector("1")), config=config) as server:
        observer = PrometheusObserver(server.url, local_queries())
        observer.close()
    assert observer.delay == 15.0 and observer.min_interval == 30.0


def test_a_prometheus_that_never_answers_times_out(monkeypatch):
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    monkeypatch.setattr(PrometheusObserver, "timeout", 1.0)
    with fake_prometheus(hang_answer) as server:
        observer = PrometheusObserver(server.url, local_queries())
        done = in_time(lambda: observer.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5)), 8)
        observer.close()
    assert isinstance(done.get("error"), StartError) and done["seconds"] < 5, done


def test_a_prometheus_trickling_its_answer_byte_by_byte_times_out(monkeypatch):
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    monkeypatch.setattr(PrometheusObserver, "timeout", 1.0)
    with fake_prometheus(trickle_answer) as server:
        observer = PrometheusObserver(server.url, local_queries())
        done = in_time(lambda: observer.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5)), 8)
        observer.close()
    assert isinstance(done.get("error"), StartError) and "answer" in done["error"].message, done


def test_a_prometheus_sending_a_huge_body_is_cut_off():
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    with fake_prometheus(huge_answer(256 << 20)) as server:
        observer = PrometheusObserver(server.url, local_queries())
        done = in_time(lambda: observer.read(Window("fn", "live", (1, 2), 0.99, start=time.time() - 5)), 8)
        observer.close()
    assert isinstance(done.get("error"), FnpackError) and "MB" in done["error"].message, done


def test_a_rollout_whose_prometheus_hangs_mid_window_ends_with_the_alias_at_a_recorded_step(cache, monkeypatch):
    from fnpack.canary.prometheus import PrometheusObserver, local_queries

    monkeypatch.setattr(PrometheusObserver, "timeout", 1.0)
    with fake_prometheus(trickle_answer) as server:
        target = FakeTarget()
        observer = PrometheusObserver(server.url, local_queries())
        done = in_time(rollout(target, observer, interval=2.0).run, 10)
        observer.close()
    assert isinstance(done.get("error"), StartError), done
    assert target.state["live"] == AliasState(1, 2, 0.5) == target.moves[-1][1]


def test_label_values_with_quotes_backslashes_and_newlines_are_matched_exactly_and_cannot_inject(tmp_path):
    """A real Prometheus scraping an exporter whose label values hold ", \\ and a newline: the observer's
    quoting finds exactly that series, and a name written as PromQL finds nothing."""
    from fnpack.canary.observer import Window
    from fnpack.canary.prometheus import PrometheusObserver, local_queries
    from prometheus_server import PrometheusServer, Scrape

    weird = 'a"b\\c\nd} or vector(1000) #'
    escaped = weird.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    page = (f'# TYPE fnpack_requests_total counter\nfnpack_requests_total{{function="{escaped}",alias="live",'
            f'version="2",code="200"}} 7\n').encode()
    with fake_prometheus(raw_answer(page, "text/plain; version=0.0.4")) as exporter:
        address = exporter.url.removeprefix("http://")
        with PrometheusServer(tmp_path / "prometheus", [Scrape("weird", address)]) as prometheus:
            assert prometheus.wait_for("fnpack_requests_total")
            observer = PrometheusObserver(prometheus.url, local_queries())
            start = time.time() - 30
            exact = observer.read(Window(weird, "live", (2,), 0.99, start=start))
            injected = observer.read(Window('x"} or vector(1000) or fnpack_requests_total{function="x', "live",
                                            (2,), 0.99, start=start))
            observer.close()
    assert exact[2].requests == 7, exact
    assert injected[2].requests == 0, injected


# --- the lock ----------------------------------------------------------------------------------------------


def test_a_lock_held_with_garbage_in_it_is_still_a_conflict_not_a_traceback(cache):
    from fnpack.canary.rollout import _lock_path, hold_lock, lock_holder

    target = FakeTarget()
    path = _lock_path(target, "fn", "live")
    path.parent.mkdir(parents=True)
    with open(path, "w") as held:
        held.write("[1, 2]")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        assert lock_holder(target, "fn", "live") == {}
        with pytest.raises(ConflictError) as raised:
            with hold_lock(target, "fn", "live", 2):
                pass
    assert "already running on this machine (pid ?" in raised.value.message
    with hold_lock(target, "fn", "live", 2):  # garbage in a lock nobody holds: taken over
        assert lock_holder(target, "fn", "live")["version"] == 2
    assert lock_holder(target, "fn", "live") is None


# --- load ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_a_load_rate_that_is_no_positive_number_is_refused(rate):
    # 0: every worker dies dividing by it; -1, nan, inf: the pacing is gone and the workers flood the function
    from fnpack.canary.load import SampleLoad

    with pytest.raises(UsageError):
        SampleLoad(FakeTarget(), SimpleNamespace(), [{}], 10, 1.0, rate)


# --- through the CLI, against `fnpack serve` ---------------------------------------------------------------


@pytest.mark.parametrize("args, text", [
    (("--steps", "0"), "increasing percents"), (("--steps", "-5"), "increasing percents"),
    (("--steps", "1e2"), "not a list of percents"), (("--steps", "50,50"), "increasing percents"),
    (("--steps", "100"), "a step below 100"),
    (("--max-error-rate", "nan"), "out of range"), (("--max-error-rate", "inf"), "out of range"),
    (("--max-error-rate", "-1%"), "out of range"),
    (("--interval", "1e9"), "not a duration"), (("--interval", "nan"), "not a duration"),
    (("--interval", "1" + "0" * 400), "--interval"),
    (("--max-regression", "nan"), "--max-regression"), (("--min-requests", "0"), "at least 1"),
    (("--load", "samples", "--load-rate", "-1"), "--load-rate"), (("--load", "samples", "--load-rate", "nan"),
                                                                  "--load-rate"),
])
def test_bad_written_values_through_the_cli_are_usage_errors_and_nothing_moves(local, args, text):
    local.reset()
    done = local("canary", NAME, "2", *args, "--spec", str(local.folders[2]))
    assert done.code == 2, done.stdout + done.stderr
    assert text in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert local.alias() == V1


def test_spaces_around_steps_are_fine(local):
    local.reset()
    done = local.ok("canary", NAME, "2", "--steps", " 10 , 20 ", "--dry-run")
    assert done["moves"] == ["v1 + v2 at 10%", "v1 + v2 at 20%", "v2"]


@pytest.mark.parametrize("args", [
    ("canary", 'ca"naried', "2"), ("canary", NAME, "2", "--alias", 'li"ve'), ("canary", NAME, "2", "--alias",
                                                                                 "live\n"),
    ("canary", "status", "a}b"), ("canary", "abort", NAME, "--alias", "x\\y"), ("canary", NAME, "0"),
    ("canary", NAME, "v-1"), ("canary", NAME, "1e2"),
])
def test_names_and_versions_that_are_not_dns_labels_are_refused_on_every_path(local, args):
    done = local(*args)
    assert done.code == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_status_and_abort_of_an_unknown_function_or_alias_are_not_found(local):
    for args in (("status", "nosuchfn"), ("abort", "nosuchfn"), ("status", NAME, "--alias", "nosuch"),
                 ("abort", NAME, "--alias", "nosuch")):
        done = local("canary", *args)
        assert done.code == 12, (args, done.stdout + done.stderr)


def test_abort_of_an_alias_with_no_canary_is_refused_and_changes_nothing(local):
    local.reset()
    before = len(local.history())
    done = local("canary", "abort", NAME)
    assert done.code == 2 and "no canary to abort" in done.stderr, done.stderr
    assert local.alias() == V1 and len(local.history()) == before


def test_a_lock_folder_that_cannot_be_written_refuses_before_any_move(local, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    local.reset()
    done = fnpack_env(local, {"FNPACK_CACHE_DIR": str(blocker)}, "canary", NAME, "2", "--interval", "1s")
    assert done.code == 1 and "cannot write the rollout lock" in done.stderr and "None" not in done.stderr, done.stderr
    assert local.alias() == V1


def fnpack_env(local: Any, env: dict[str, str], *args: str) -> Any:
    from conftest import fnpack

    return fnpack(*args, env={**local.env, **env})


def test_a_huge_min_requests_halts_and_rolls_back(local):
    local.reset()
    done = local("canary", NAME, "2", "--steps", "50", "--interval", "0.3s", "--max-wait", "1s", "--min-requests",
                 str(10**12), "--load", "samples", "--spec", str(local.folders[2]))
    assert done.code == 14 and "too little traffic" in done.stderr, done.stderr
    assert local.alias() == V1


def test_a_tiny_interval_still_judges_enough_requests(local):
    local.reset()
    done = local("canary", NAME, "2", "--steps", "50", "--interval", "1ms", "--min-requests", "5", "--load",
                 "samples", "--load-rate", "50", "--spec", str(local.folders[2]), "--json")
    assert done.code == 0, done.stderr
    windows = [json.loads(line) for line in done.stdout.splitlines() if '"window"' in line]
    assert windows and all(w["canary"]["requests"] >= 5 for w in windows), windows
    local.reset()


def test_a_prometheus_answering_garbage_mid_rollout_says_where_the_alias_stays(local):
    local.reset()
    with fake_prometheus(json_answer([])) as server:
        done = local("canary", NAME, "2", "--steps", "25,100", "--interval", "2s", "--prometheus", server.url)
    try:
        assert done.code not in (0, 14) and "Traceback" not in done.stderr, done.stderr
        assert f"Prometheus at {server.url}" in done.stderr, done.stderr
        assert "stays at v1 + v2 at 25%" in done.stderr and "abort" in done.stderr, done.stderr
        assert local.alias() == {"primary": 1, "canary": 2, "weight": 0.25}
        assert local.ok("canary", "status", NAME)["under_way"]
    finally:
        local.ok("canary", "abort", NAME)


def test_two_rollouts_started_at_once_only_one_runs(local):
    local.reset()
    args = (NAME, "2", "--steps", "25,100", "--interval", "30s", "--min-requests", "5", "--spec",
            str(local.folders[2]))
    first, second = local.start(*args), local.start(*args)
    try:
        deadline = time.monotonic() + 30
        while first.poll() is None and second.poll() is None:
            assert time.monotonic() < deadline, "neither rollout was refused"
            time.sleep(0.05)
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        _, stderr = loser.communicate(timeout=10)
        assert loser.returncode == 13 and "already running on this machine" in stderr, stderr
        local.wait_for_weight(0.25)
        assert winner.poll() is None and local.ok("canary", "status", NAME)["running_here"]["pid"] == winner.pid
        local.ok("canary", "abort", NAME)
        winner.communicate(timeout=30)
        assert winner.returncode == 13
    finally:
        first.kill()
        second.kill()
    moves = [m for m in local.history() if (m["reason"] or "").startswith("canary v2")]
    assert [m["reason"].split(":")[0] for m in moves[-2:]] == ["canary v2 25%", "canary v2 aborted at 25%"]
    assert local.alias() == V1


def test_sigterm_leaves_the_alias_at_a_recorded_step_that_a_rerun_resumes(local):
    local.reset()
    running = local.start(NAME, "2", "--steps", "25,100", "--interval", "30s", "--min-requests", "5", "--load",
                          "samples", "--spec", str(local.folders[2]))
    try:
        local.wait_for_weight(0.25)
        running.send_signal(signal.SIGTERM)
        _, stderr = running.communicate(timeout=30)
    finally:
        running.kill()
    assert running.returncode == 130 and "stays at v1 + v2 at 25%" in stderr and "resumes it" in stderr, stderr
    assert local.alias() == {"primary": 1, "canary": 2, "weight": 0.25} == local.history()[-1]["after"]
    status = local.ok("canary", "status", NAME)
    assert status["under_way"] and status["weight"] == 25 and status["running_here"] is None, status
    again = local("canary", NAME, "2", "--steps", "25,100", "--interval", "0.5s", "--min-requests", "5", "--load",
                  "samples", "--load-rate", "60", "--spec", str(local.folders[2]), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[0])["resumed_at"] == 25
    assert local.alias() == {"primary": 2, "canary": None, "weight": 0.0}
    local.reset()


def test_an_alias_deleted_mid_rollout_stops_it_as_moved_elsewhere(cache):
    from fnpack.canary.rollout import MovedElsewhere

    target = FakeTarget()

    class Deleting(ScriptedObserver):
        def read(self, window: Any) -> dict[int, Figures]:
            target.state.pop("live", None)
            return super().read(window)

    done = in_time(rollout(target, Deleting([{2: Figures(0, 0)}])).run, 10)
    assert isinstance(done.get("error"), MovedElsewhere) and "(not set)" in done["error"].message, done
    assert "live" not in target.state  # left as the other party left it: nothing recreated
