"""The local platform end to end: a real `fnpack serve`, real workers, real sockets, httpx as the client.

Reliability cases from the issue: restart, a worker killed under load, two deploys at once,
the gateway killed in the middle of a deploy, a flood to a cold function, bad control requests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES, fnpack
from servers import all_gone, free_port, platform, platform_process, worker_pids

pytestmark = pytest.mark.slow

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# A function whose score can be slowed down or made to fail at import through the environment of the
# platform (workers inherit it), so one archive serves the scaling and start-failure cases.
TUNABLE_SCORE = '''
import os, time
if os.environ.get("TUNABLE_FAIL_IMPORT"):
    raise RuntimeError("TUNABLE_FAIL_IMPORT is set")
from score import score as _score
def score(outputs):
    time.sleep(float(os.environ.get("TUNABLE_SLEEP", "0")))
    return _score(outputs)
'''


def _build(folder: Path, out: Path) -> dict:
    result = fnpack("build", str(folder), "--out", str(out), "--json")
    assert result.code == 0, result.stderr + result.stdout
    return result.json()


def _variant(tmp: Path, name: str, spec_edit: dict[str, str], score_module: str | None = None) -> Path:
    folder = tmp / name
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    spec = (folder / "fnpack.yaml").read_text()
    for old, new in spec_edit.items():
        assert old in spec, old
        spec = spec.replace(old, new, 1)
    if score_module:
        (folder / "tunable.py").write_text(TUNABLE_SCORE)
        spec = spec.replace("score: score:score", f"score: {score_module}")
    (folder / "fnpack.yaml").write_text(spec)
    return folder


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """iris twice (two versions of one function), a fast-idling iris and a tunable function."""
    tmp = tmp_path_factory.mktemp("archives")
    spec = (EXAMPLES / "iris" / "fnpack.yaml").read_text()
    assert "score: score:score" in spec and "name: iris" in spec
    built = {
        "v1": _build(_variant(tmp, "a", {}), tmp / "out-a"),
        "v2": _build(_variant(tmp, "b", {"name: iris": "name: iris\nresources:\n  timeout: 29"}), tmp / "out-b"),
        "idle": _build(_variant(tmp, "c", {"name: iris": "name: brief\nscaling:\n  idle_timeout: 1\n  min: 0"}),
                       tmp / "out-c"),
        "tunable": _build(_variant(tmp, "d", {"name: iris": "name: tunable\nscaling:\n  max: 3\n"
                                                             "  target_concurrency: 1\n  idle_timeout: 300"},
                                   score_module="tunable:score"), tmp / "out-d"),
    }
    assert built["v1"]["sha256"] != built["v2"]["sha256"]
    return built


class Api:
    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.token = (state_dir / "token").read_text().strip()
        self.http = httpx.Client(base_url=url, timeout=60, headers={"authorization": f"Bearer {self.token}"})

    def deploy(self, archive: dict, name: str | None = None) -> httpx.Response:
        name = name or archive["name"]
        with open(archive["archive"], "rb") as body:
            return self.http.post(f"/api/v1/functions/{name}/versions", content=body.read(),
                                  headers={"content-type": "application/zip", "x-fnpack-actor": "tests"})

    def alias(self, name: str, primary: int, canary: int | None = None, weight: float = 0.0,
              alias: str = "live") -> httpx.Response:
        return self.http.put(f"/api/v1/functions/{name}/aliases/{alias}",
                             json={"primary": primary, "canary": canary, "weight": weight, "reason": "test"})

    def invoke(self, qualifier: str, body: object = SETOSA) -> httpx.Response:
        return httpx.post(f"{self.url}/function/{qualifier}", json=body, timeout=60)

    def state(self, name: str) -> dict:
        return {"versions": self.http.get(f"/api/v1/functions/{name}/versions").json(),
                "aliases": self.http.get(f"/api/v1/functions/{name}/aliases").json(),
                "history": self.http.get(f"/api/v1/functions/{name}/aliases/live/history").json()}


def test_deploy_alias_invoke_and_oip(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        first = api.deploy(archives["v1"])
        assert first.status_code == 201 and first.json()["version"]["number"] == 1
        again = api.deploy(archives["v1"])
        assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
        assert api.deploy(archives["v2"]).json()["version"]["number"] == 2

        no_alias = api.invoke("iris")
        assert no_alias.status_code == 404 and "no alias 'live'" in no_alias.json()["message"]
        assert api.alias("iris", 1).status_code == 200

        answer = api.invoke("iris")
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] == "setosa" and answer.headers["x-fnpack-version"] == "1"
        assert api.invoke("iris:2").headers["x-fnpack-version"] == "2"
        assert api.invoke("iris:live").headers["x-fnpack-version"] == "1"
        batch = api.invoke("iris:2", [SETOSA, SETOSA])
        assert batch.status_code == 200 and len(batch.json()) == 2

        bad = api.invoke("iris", {"sepal_length": "x"})
        assert bad.status_code == 422, bad.text  # the function's own error comes through as it is

        oip = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
        for path, version in (("/v2/models/iris/infer", "1"), ("/v2/models/iris/versions/2/infer", "2"),
                              ("/v2/models/iris/versions/live/infer", "1")):
            reply = httpx.post(url + path, json=oip)
            assert reply.status_code == 200, (path, reply.text)
            assert reply.json()["model_version"] == version and reply.headers["x-fnpack-version"] == version
        assert httpx.get(f"{url}/v2/models/iris/versions/2/ready").status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200

        listed = api.http.get("/api/v1/functions").json()["functions"]
        assert listed == [{"name": "iris", "versions": 2, "latest": 2,
                           "aliases": {"live": {"primary": 1, "canary": None, "weight": 0.0}}}]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'fnpack_requests_total{alias="live",code="200",function="iris",version="1"}' in metrics
        assert 'fnpack_cold_starts_total{function="iris",version="1"} 1.0' in metrics
        assert 'fnpack_workers{function="iris",version="2"} 1.0' in metrics
        logs = api.http.get("/api/v1/functions/iris/logs", params={"tail": 50}).text
        assert "iris v1: worker pid" in logs and "ready in" in logs


def test_canary_share_is_exact_and_moves_apply_at_once(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.deploy(archives["v2"])
        assert api.alias("iris", 1, canary=2, weight=0.1).status_code == 200
        with httpx.Client(base_url=url) as client:
            seen = Counter(client.post("/function/iris", json=SETOSA).headers["x-fnpack-version"]
                           for _ in range(1000))
            assert abs(seen["2"] - 100) <= 1, seen
            pinned = {client.post("/function/iris:1", json=SETOSA).headers["x-fnpack-version"] for _ in range(50)}
            assert pinned == {"1"}
            for primary in (2, 1, 2):
                assert api.alias("iris", primary).status_code == 200
                after = {client.post("/function/iris", json=SETOSA).headers["x-fnpack-version"] for _ in range(20)}
                assert after == {str(primary)}
        history = api.http.get("/api/v1/functions/iris/aliases/live/history").json()["history"]
        assert [h["after"]["primary"] for h in history] == [1, 2, 1, 2]
        assert history[0]["after"] == {"primary": 1, "canary": 2, "weight": 0.1}
        assert all(h["actor"] == "api" and h["reason"] == "test" for h in history)
        back = api.http.post("/api/v1/functions/iris/aliases/live/rollback", json={})
        assert back.json()["move"]["after"]["primary"] == 1
        assert api.invoke("iris").headers["x-fnpack-version"] == "1"


def test_bad_control_requests_are_refused_and_change_nothing(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.alias("iris", 1)
        before = api.state("iris")
        assert os.stat(state / "token").st_mode & 0o777 == 0o600

        assert httpx.get(f"{url}/api/v1/functions").status_code == 401
        wrong = httpx.get(f"{url}/api/v1/functions", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["message"]

        cases = [
            (api.http.get("/api/v1/functions/nope/versions"), 404, "no function named 'nope'"),
            (api.http.get("/api/v1/functions/Bad_Name/versions"), 400, "not a function name"),
            (api.http.get("/api/v1/functions/..%2F..%2Fetc/versions"), 404, "no route GET"),
            (api.http.get("/api/v1/functions/%2E%2E/versions"), 400, "not a function name"),
            (api.alias("iris", 1, canary=1, weight=0.5), 400, "the canary is the primary"),
            (api.alias("iris", 1, canary=1, weight=1.5), 400, "out of range"),
            (api.alias("iris", 7), 404, "iris has no version 7"),
            (api.http.put("/api/v1/functions/iris/aliases/live", json={"primary": "x"}), 422, "primary"),
            (api.http.put("/api/v1/functions/iris/aliases/9bad", json={"primary": 1}), 400, "alias"),
            (api.http.put("/api/v1/functions/iris/aliases/3", json={"primary": 1}), 400, "is a version number"),
            (api.http.delete("/api/v1/functions/iris/versions/1"), 409, "in use by alias live"),
            (api.http.post("/api/v1/functions/iris/aliases/live/rollback", json={}), 400, "first state"),
            (api.deploy(archives["v1"], name="other"), 422, "not 'other'"),
        ]
        for response, status, message in cases:
            assert response.status_code == status, (message, response.text)
            assert message in response.json()["message"], response.text

        damaged = bytearray(Path(archives["v2"]["archive"]).read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        refused = api.http.post("/api/v1/functions/iris/versions", content=bytes(damaged),
                                headers={"content-type": "application/zip"})
        assert refused.status_code == 422 and refused.json()["error"] == "archive", refused.text
        assert api.http.post("/api/v1/functions/iris/versions", content=b"").status_code == 400

        assert api.state("iris") == before
        assert list((state / "incoming").iterdir()) == []
        assert api.invoke("iris").status_code == 200


def test_restart_keeps_functions_versions_aliases_and_history(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.deploy(archives["v2"])
        api.alias("iris", 1)
        api.alias("iris", 1, canary=2, weight=0.25)
        api.alias("iris", 2, alias="stable")
        before = api.state("iris")
        stable = api.http.get("/api/v1/functions/iris/aliases/stable/history").json()
    with platform(state) as url:
        api = Api(url, state)
        assert api.state("iris") == before
        assert api.http.get("/api/v1/functions/iris/aliases/stable/history").json() == stable
        assert api.invoke("iris:stable").headers["x-fnpack-version"] == "2"
        seen = Counter(api.invoke("iris").headers["x-fnpack-version"] for _ in range(40))
        assert seen == {"1": 30, "2": 10}
        assert api.http.post("/api/v1/functions/iris/aliases/live/rollback", json={}).json()["move"]["after"] == \
            {"primary": 1, "canary": None, "weight": 0.0}


def test_second_server_on_one_state_folder_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state):
        second = fnpack("serve", "--port", str(free_port()), "--state-dir", str(state))
        assert second.code == 11 and "already served by fnpack serve pid" in second.stderr


def test_exposure_without_invoke_token_is_refused_and_invoke_token_is_checked(archives: dict,
                                                                               tmp_path: Path) -> None:
    open_to_all = fnpack("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--state-dir", str(tmp_path / "x"))
    assert open_to_all.code == 2 and "without an invoke token" in open_to_all.stderr
    assert not (tmp_path / "x").exists()
    state = tmp_path / "state"
    with platform(state, "--invoke-token", "s3cret") as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.alias("iris", 1)
        assert api.invoke("iris").status_code == 401
        ok = httpx.post(f"{url}/function/iris", json=SETOSA, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["label"] == "setosa"


def test_flood_to_a_cold_function_all_succeed_then_it_scales_to_zero(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["idle"], name="brief")
        api.alias("brief", 1)
        with ThreadPoolExecutor(32) as pool:
            statuses = Counter(pool.map(lambda _: api.invoke("brief").status_code, range(200)))
        assert statuses == {200: 200}
        pids = worker_pids(state, "brief")
        assert 1 <= len(set(pids))  # 32 clients over target_concurrency 8: scaled up, idle ones stopped
        assert all_gone(pids), "idle workers should stop after idle_timeout (1 s)"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'fnpack_workers{function="brief",version="1"} 0.0' in metrics
        assert "stopping worker pid" in (state / "logs" / "brief.log").read_text()
        # A scale-up the flood asked for can still be starting when the others stop (a loaded machine):
        # the next request would take that worker, no cold start. Wait until none is running or
        # starting for longer than the idle timeout (1 s), then it must be a cold start.
        settled = _brief_starts(url)
        for _ in range(20):
            time.sleep(1.5)
            now = _brief_starts(url)
            if now == settled and 'fnpack_workers{function="brief",version="1"} 0.0' in httpx.get(f"{url}/metrics").text:
                break
            settled = now
        cold = _brief_starts(url, "cold start")
        assert api.invoke("brief").status_code == 200  # and it starts again, from zero
        assert _brief_starts(url, "cold start") == cold + 1


def _brief_starts(url: str, reason: str | None = None) -> float:
    """The gateway's count of worker starts of brief v1 (all reasons, or one)."""
    lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
             if line.startswith('fnpack_worker_starts_total{function="brief",') and 'version="1"' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if reason is None or f'reason="{reason}"' in line)


def test_worker_killed_under_load_is_replaced(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.alias("iris", 1)
        assert api.invoke("iris").status_code == 200
        [victim] = worker_pids(state, "iris")
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/function/iris", json=SETOSA)
                    results.append((time.monotonic(), r.status_code, r.text))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        failed = [r for r in results if r[1] != 200]
        assert all(status == 502 and "stopped before it answered" in text for _, status, text in failed), failed[:3]
        assert len(failed) <= 8  # at most the requests the worker held
        later = [r for r in results if r[0] > killed_at + 0.5]
        assert later and all(status == 200 for _, status, _ in later)
        log = (state / "logs" / "iris.log").read_text()
        assert f"worker pid {victim} exited: killed by signal 9 (SIGKILL)" in log
        assert len(worker_pids(state, "iris")) >= 2


def test_scale_up_under_concurrency_and_a_failing_start(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state, env={"TUNABLE_SLEEP": "0.3", "FNPACK_WORKER_ENV": "TUNABLE_SLEEP"}) as url:
        api = Api(url, state)
        api.deploy(archives["tunable"], name="tunable")
        api.alias("tunable", 1)
        with ThreadPoolExecutor(6) as pool:
            for _ in range(3):
                assert set(pool.map(lambda _: api.invoke("tunable").status_code, range(6))) == {200}
        metrics = httpx.get(f"{url}/metrics").text
        assert 'fnpack_workers{function="tunable",version="1"} 3.0' in metrics  # scaling.max
    with platform(tmp_path / "state2", env={"TUNABLE_FAIL_IMPORT": "1", "FNPACK_WORKER_ENV": "TUNABLE_FAIL_IMPORT"}) as url:
        api = Api(url, tmp_path / "state2")
        api.deploy(archives["tunable"], name="tunable")
        api.deploy(archives["v1"])
        api.alias("tunable", 1)
        api.alias("iris", 1)
        failed = api.invoke("tunable")
        assert failed.status_code == 503
        assert "failed to start: RuntimeError: TUNABLE_FAIL_IMPORT is set" in failed.json()["message"]
        assert api.invoke("iris").status_code == 200  # the platform keeps serving the others
        assert "TUNABLE_FAIL_IMPORT is set" in api.http.get("/api/v1/functions/tunable/logs").text


def test_two_deploys_at_once_get_distinct_versions(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(api.deploy, [archives["v1"], archives["v2"]]))
        assert sorted(a.json()["version"]["number"] for a in answers) == [1, 2]
        assert {a.json()["version"]["sha256"] for a in answers} == {archives["v1"]["sha256"], archives["v2"]["sha256"]}
        for number in (1, 2):
            assert api.invoke(f"iris:{number}").status_code == 200


def test_gateway_killed_during_deploys_leaves_complete_or_absent_versions(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    payload = Path(archives["v1"]["archive"]).read_bytes()
    for delay in (None, 0.0, 0.05, 0.15, 0.4):
        with platform_process(state, port=port) as (url, process):
            token = (state / "token").read_text().strip()

            def upload() -> None:
                def chunks():
                    for start in range(0, len(payload), 1 << 20):
                        yield payload[start:start + (1 << 20)]
                        if delay is None and start > len(payload) // 2:
                            process.kill()  # in the middle of the upload
                try:
                    httpx.post(f"{url}/api/v1/functions/iris/versions", content=chunks(), timeout=30,
                               headers={"authorization": f"Bearer {token}", "content-type": "application/zip"})
                except httpx.HTTPError:
                    pass

            sender = threading.Thread(target=upload)
            sender.start()
            if delay is not None:
                time.sleep(0.3 + delay)  # after the upload, somewhere in verify / unpack / commit
                process.kill()
            sender.join()
            process.wait()
        with platform(state) as url:
            api = Api(url, state)
            listed = api.http.get("/api/v1/functions").json()["functions"]
            if listed:
                assert listed[0]["versions"] == 1
                version = api.http.get("/api/v1/functions/iris/versions").json()["versions"][0]
                assert version["sha256"] == archives["v1"]["sha256"]
                # numbers are never reused: after an earlier round's delete, this version is not v1
                assert api.invoke(f"iris:{version['number']}").json()["label"] == "setosa"
                api.http.delete("/api/v1/functions/iris")
            assert list((state / "incoming").iterdir()) == []


def test_no_worker_outlives_a_killed_gateway(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform_process(state) as (url, process):
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.alias("iris", 1)
        assert api.invoke("iris").status_code == 200
        pids = worker_pids(state, "iris")
        process.kill()
        process.wait()
    assert all_gone(pids)
    zygotes = subprocess.run(["pgrep", "-f", f"fnpack.platform.zygote --root {state}"], capture_output=True, text=True)
    assert zygotes.stdout.strip() == ""


def test_delete_stops_workers_and_frees_the_name(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.deploy(archives["v1"])
        api.deploy(archives["v2"])
        api.alias("iris", 1)
        assert api.invoke("iris:2").status_code == 200
        [pid] = worker_pids(state, "iris")
        deleted = api.http.delete("/api/v1/functions/iris/versions/2")
        assert deleted.status_code == 200 and deleted.json()["deleted"][0]["number"] == 2
        assert all_gone([pid])
        gone = api.invoke("iris:2")
        assert gone.status_code == 404 and "no version 2" in gone.json()["message"]
        assert api.http.delete("/api/v1/functions/iris").status_code == 200
        assert api.invoke("iris").status_code == 404
        assert api.http.get("/api/v1/functions").json() == {"functions": []}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
