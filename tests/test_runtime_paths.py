"""The runtime's fast paths, in process: list-taking extractors, a lone record on an idle batcher, and
Function URL events served without Mangum (the same answers as through Mangum) or asyncio."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
IRIS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4},
    {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5},
]
LABELS = ["setosa", "versicolor", "virginica"]

# A list-taking extractor that records how many records each call got; {"rows": n} returns n rows.
LISTED = '''
import numpy as np

FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CALLS = []


def extract(records):
    CALLS.append(len(records))
    rows = []
    for record in records:
        if "bad" in record:
            raise ValueError("a bad record")
        rows += [[record[f] for f in FIELDS]] * record.get("rows", 1)
    return {{"features": np.array(rows, dtype=np.float32)}}


extract.takes_list = True
'''


def function_root(folder: Path, name: str, spec: dict[str, Any] | None = None) -> Path:
    """An unpacked archive of the iris model with the LISTED extractor (module `{name}_features`)."""
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLES / "iris" / "model.onnx", folder / "model.onnx")
    shutil.copy(EXAMPLES / "iris" / "score.py", folder / f"{name}_score.py")
    (folder / f"{name}_features.py").write_text(LISTED.format(name=name))
    shutil.copy(REPO / "handlers" / "fnpack_handler.py", folder / "fnpack_handler.py")
    model = {"inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}],
             "outputs": [{"name": "label", "dtype": "int64", "shape": [-1]},
                         {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}]}
    (folder / "fnpack.json").write_text(json.dumps({"spec": {
        "name": name, "model": "model.onnx", "features": f"{name}_features:extract", "score": f"{name}_score:score",
        **(spec or {})}, "model": model}))
    return folder


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fnpack.runtime.function import Function

    return Function(function_root(tmp_path_factory.mktemp("listed") / "fn", "listed"))


def test_a_list_taking_extractor_is_called_once_per_batch(listed: Any) -> None:
    calls = sys.modules["listed_features"].CALLS
    calls.clear()
    results = listed.call_many([IRIS[i % 3] for i in range(5)])
    assert [r["label"] for r in results] == [LABELS[i % 3] for i in range(5)]
    assert calls == [5]
    calls.clear()
    assert listed(IRIS[2])["label"] == "virginica" and calls == [1]  # one record: a list of one


def test_a_bad_record_in_a_listed_batch_fails_only_itself(listed: Any) -> None:
    from fnpack.runtime.function import RequestError

    calls = sys.modules["listed_features"].CALLS
    calls.clear()
    results = listed.call_many([IRIS[0], {"bad": 1}, IRIS[1]])
    assert calls == [3, 1, 1, 1]  # the batch, then each on its own
    assert results[0]["label"] == "setosa" and results[2]["label"] == "versicolor"
    assert isinstance(results[1], RequestError) and "a bad record" in str(results[1])
    wrong = listed.call_many([{**IRIS[0], "rows": 2}])[0]  # two rows for one record
    assert isinstance(wrong, RequestError) and "takes_list" in str(wrong) and "one row per record" in str(wrong)


def test_a_lone_record_on_an_idle_batcher_goes_at_once_and_the_rest_wait_for_its_call() -> None:
    from fnpack.runtime.batching import Batcher
    from fnpack.runtime.metrics import BATCH_BUCKETS, Histogram

    class Pool:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, asyncio.Future[Any]]] = []

        def submit(self, loop: Any, fn: Any, records: Any) -> asyncio.Future[Any]:
            self.calls.append((records, loop.create_future()))
            return self.calls[-1][1]

    class Fn:
        def call_many(self, records: list[Any]) -> list[Any]:
            return records

    async def scenario() -> None:
        pool = Pool()
        batcher = Batcher(Fn(), 32, 3600.0, pool, Histogram(BATCH_BUCKETS))  # a wait no test would outlast
        first = batcher.submit("a")
        assert [records for records, _ in pool.calls] == ["a"]  # the plain call, sent before submit returned
        rest = [batcher.submit(r) for r in "bcd"]
        assert len(pool.calls) == 1  # queued while the model is busy
        pool.calls[0][1].set_result("A")
        assert await first == "A"
        await asyncio.sleep(0)  # the call's done callbacks run
        assert [records for records, _ in pool.calls] == ["a", ["b", "c", "d"]]  # together, once it is free
        pool.calls[1][1].set_result(["B", "C", "D"])
        assert [await f for f in rest] == ["B", "C", "D"]
        assert batcher.batch_sizes.counts[:3] == [1, 0, 1]  # one batch of 1, one of 3 (bucket <= 4)

    asyncio.run(scenario())


def test_a_lone_request_on_a_batching_app_is_not_held_for_max_wait(tmp_path: Path) -> None:
    from fnpack.runtime.function import Function
    from fnpack.runtime.http import create_app

    app = create_app(Function(function_root(tmp_path / "fn", "waiting",
                                            {"batching": {"max_batch_size": 8, "max_wait_ms": 3_600_000}})))

    async def lone() -> tuple[list[str], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fn", timeout=30) as client:
            labels = [(await client.post("/invoke", json=record)).json()["label"] for record in IRIS]
            return labels, (await client.get("/metrics")).text

    labels, metrics = asyncio.run(lone())
    assert labels == LABELS
    assert 'fnpack_batch_size_count{function="waiting"} 3' in metrics.splitlines()
    assert 'fnpack_batch_size_sum{function="waiting"} 3.0' in metrics.splitlines()


EVENTS = {
    "invoke": ("POST", "/invoke", {"content-type": "application/json"}, json.dumps(IRIS[0]).encode()),
    "list": ("POST", "/invoke", {"content-type": "application/json"}, json.dumps(IRIS).encode()),
    "bad json": ("POST", "/invoke", {"content-type": "application/json"}, b"{"),
    "health": ("GET", "/healthz", {"host": "abc.lambda-url.us-east-1.on.aws", "x-forwarded-proto": "https"}, b""),
    "metrics (text)": ("GET", "/metrics", {}, b""),
    "unknown route, quoted": ("GET", "/no%20such", {"Cookie": "x"}, b""),
    "method": ("DELETE", "/invoke", {}, b""),
    "oip": ("POST", "/v2/models/lurl/infer", {"content-type": "application/json"}, json.dumps({"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()),
}


def url_event(method: str, path: str, headers: dict[str, str], body: bytes, encode: bool) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "a=1&b=2",
        "headers": headers, "cookies": ["c=1", "d=2"],
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9",
                                    "userAgent": "test"}, "routeKey": "$default", "stage": "$default"},
        "isBase64Encoded": encode}
    if body:
        event["body"] = base64.b64encode(body).decode() if encode else body.decode()
    return event


@pytest.mark.parametrize("encode", [True, False])
@pytest.mark.parametrize("case", sorted(EVENTS))
def test_function_url_events_answer_as_through_mangum(tmp_path: Path, case: str, encode: bool) -> None:
    mangum = pytest.importorskip("mangum")
    from fnpack.runtime import lambda_url
    from fnpack.runtime.function import Function
    from fnpack.runtime.http import create_app

    app = create_app(Function(function_root(tmp_path / "fn", "lurl")), inline=True)
    event = url_event(*EVENTS[case], encode)
    ours = lambda_url.handle(app, event, None)
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        theirs = mangum.Mangum(app, lifespan="off")(event, None)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert ours == theirs


def test_binary_answers_go_base64_encoded() -> None:
    from fnpack.runtime.lambda_url import result_of

    result = result_of(200, [(b"content-type", b"application/octet-stream"), (b"Set-Cookie", b"a=1"),
                             (b"x-a", b"1"), (b"x-a", b"2")], b"\xff\x00")
    assert result == {"statusCode": 200, "body": "/wA=", "isBase64Encoded": True, "cookies": ["a=1"],
                      "headers": {"content-type": "application/octet-stream", "x-a": "1,2"}}


def test_a_function_url_event_needs_neither_asyncio_nor_mangum_nor_threads(tmp_path: Path) -> None:
    root = function_root(tmp_path / "fn", "lean")
    event = url_event(*EVENTS["invoke"], True)
    child = f"""
import json, sys, threading
sys.path[:0] = [{str(root)!r}, {str(REPO / "src")!r}]
import fnpack_handler
result = fnpack_handler.handler(json.loads(sys.argv[1]), None)
loaded = [m for m in ("asyncio", "mangum", "concurrent.futures", "fnpack.runtime.watchdog") if m in sys.modules]
print(json.dumps([result["statusCode"], json.loads(result["body"])["label"], loaded, threading.active_count()]))
"""
    done = subprocess.run([sys.executable, "-I", "-c", child, json.dumps(event)], capture_output=True, text=True,
                          cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [200, "setosa", [], 1]
