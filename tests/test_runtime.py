"""The runtime served by `python -m fnpack.worker`: real archives, a real server, real clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from conftest import EXAMPLES, fnpack
from servers import free_port, wait_ready, worker

IRIS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4},
    {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5},
]
LABELS = ["setosa", "versicolor", "virginica"]

# A features module with hooks that let tests make one record slow or crash.
HOOKS = '''
import time
from features_orig import extract as _extract


def extract(record):
    if record.get("sleep"):
        time.sleep(record["sleep"])
    if record.get("crash"):
        raise RuntimeError("boom: " + str(record["crash"]))
    return _extract({k: v for k, v in record.items() if k not in ("sleep", "crash")})
'''


def build_archive(folder: Path) -> dict:
    result = fnpack("build", str(folder), "--json")
    assert result.code == 0, result.stdout + result.stderr
    return result.json()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("runtime")
    plain = root / "iris"
    shutil.copytree(EXAMPLES / "iris", plain)
    hooked = root / "iris-hooks"
    shutil.copytree(EXAMPLES / "iris", hooked)
    (hooked / "features.py").rename(hooked / "features_orig.py")
    (hooked / "features.py").write_text(HOOKS)
    spec = yaml.safe_load((hooked / "fnpack.yaml").read_text())
    spec.update(name="iris-hooks", batching={"max_batch_size": 16, "max_wait_ms": 5},
                resources={"timeout": 1})
    (hooked / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    return {"plain": build_archive(plain), "hooks": build_archive(hooked), "cache": root / "cache"}


@pytest.fixture(scope="module")
def plain(archives):
    a = archives["plain"]
    with worker(a["archive"], a["sha256"], archives["cache"], env={"FNPACK_MAX_BODY": "4096"}) as url:
        yield url


@pytest.fixture(scope="module")
def hooks(archives):
    a = archives["hooks"]
    with worker(a["archive"], a["sha256"], archives["cache"]) as url:
        yield url


def test_invoke_one_record_and_a_list(plain):
    answer = httpx.post(f"{plain}/invoke", json=IRIS[0]).json()
    assert answer["label"] == "setosa" and set(answer["probabilities"]) == set(LABELS)
    answers = httpx.post(f"{plain}/invoke", json=IRIS).json()
    assert [a["label"] for a in answers] == LABELS


def test_curl(plain):
    done = subprocess.run(["curl", "-sS", "-X", "POST", f"{plain}/invoke", "-H", "content-type: application/json",
                           "-d", json.dumps(IRIS[2])], capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout)["label"] == "virginica"


def test_bad_requests(plain):
    not_json = httpx.post(f"{plain}/invoke", content=b"{not json")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
    missing = httpx.post(f"{plain}/invoke", json={"sepal_length": 1.0})
    assert missing.status_code == 422 and "sepal_width" in missing.json()["message"]
    bad_record = httpx.post(f"{plain}/invoke", json=[IRIS[0], {"sepal_length": "x"}])
    assert bad_record.status_code == 422 and bad_record.json()["message"].startswith("record 1:")
    too_big = httpx.post(f"{plain}/invoke", json=[IRIS[0]] * 100)
    assert too_big.status_code == 413 and "4096 bytes" in too_big.json()["message"]
    assert httpx.get(f"{plain}/invoke").status_code == 405
    assert httpx.get(f"{plain}/nope").status_code == 404
    assert httpx.post(f"{plain}/invoke", json=IRIS[1]).status_code == 200  # still serving


def test_health_routes(plain):
    for path in ("/healthz", "/_/health", "/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready",
                 "/v2/models/iris/versions/1/ready"):
        assert httpx.get(plain + path).status_code == 200, path


def test_open_inference_protocol_metadata(plain):
    server = httpx.get(f"{plain}/v2").json()
    assert server["name"] == "fnpack" and "binary_tensor_data" in server["extensions"]
    model = httpx.get(f"{plain}/v2/models/iris").json()
    assert model["name"] == "iris" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in model["outputs"]} == {"label", "probabilities"}
    assert httpx.get(f"{plain}/v2/models/other").status_code == 404
    assert httpx.get(f"{plain}/v2/models/iris/versions/7").status_code == 404


def test_open_inference_protocol_json_infer(plain):
    body = {"id": "r1", "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                                    "data": [5.1, 3.5, 1.4, 0.2]}]}
    answer = httpx.post(f"{plain}/v2/models/iris/infer", json=body).json()
    assert answer["id"] == "r1" and answer["model_name"] == "iris"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == [0] and outputs["probabilities"]["shape"] == [1, 3]
    wrong = httpx.post(f"{plain}/v2/models/iris/infer",
                       json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 5], "data": [1] * 5}]})
    assert wrong.status_code == 422 and "features" in wrong.json()["message"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient(plain, binary):
    tritonclient = pytest.importorskip("tritonclient.http")
    client = tritonclient.InferenceServerClient(url=plain.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("iris")
    batch = np.array([[r[k] for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
                      for r in IRIS], dtype=np.float32)
    tensor = tritonclient.InferInput("features", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [tritonclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("iris", [tensor], outputs=outputs)
    expected = ort.InferenceSession(str(EXAMPLES / "iris" / "model.onnx")).run(None, {"features": batch})
    assert result.as_numpy("label").tolist() == expected[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)


def test_tritonclient_shows_what_was_wrong(plain):
    tritonclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(url=plain.removeprefix("http://"))
    for binary in (True, False):
        tensor = tritonclient.InferInput("features", [2, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("iris", [tensor])
        assert caught.value.status() == "422"
        assert "input 'features'" in caught.value.message() and "expected shape [-1, 4]" in caught.value.message()
    wrong_type = tritonclient.InferInput("features", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
    with pytest.raises(InferenceServerException, match="input 'features': expected datatype FP32, got FP64"):
        client.infer("iris", [wrong_type])
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404" and "no model nope" in caught.value.message()
    # fnpack's own fields are still there; /invoke keeps its {"error": kind, "message"} bodies
    body = httpx.post(f"{plain}/v2/models/iris/infer", json={"inputs": []}).json()
    assert body["kind"] == "unprocessable" and body["error"] == body["message"] and "'inputs'" in body["error"]
    assert httpx.post(f"{plain}/invoke", json={"sepal_length": 1.0}).json()["error"] == "unprocessable"


def test_metrics(plain):
    httpx.post(f"{plain}/invoke", json=IRIS[0])
    text = httpx.get(f"{plain}/metrics").text
    assert 'fnpack_requests_total{function="iris",route="/invoke",code="200"}' in text
    assert 'fnpack_errors_total{function="iris",route="/invoke",error="unprocessable"}' in text
    assert 'fnpack_request_duration_seconds_bucket{function="iris",route="/invoke",le="+Inf"}' in text
    load = [line for line in text.splitlines() if line.startswith("fnpack_model_load_seconds{")]
    assert load and float(load[0].split()[-1]) > 0


def test_crash_in_user_code_is_a_500_and_the_server_keeps_serving(hooks):
    crash = httpx.post(f"{hooks}/invoke", json={**IRIS[0], "crash": "on purpose"})
    assert crash.status_code == 500
    body = crash.json()
    assert body["type"] == "RuntimeError" and "boom: on purpose" in body["message"] and len(body["request_id"]) == 16
    assert httpx.post(f"{hooks}/invoke", json=IRIS[0]).json()["label"] == "setosa"


def test_timeout_is_a_504(hooks):
    slow = httpx.post(f"{hooks}/invoke", json={**IRIS[0], "sleep": 1.5}, timeout=10)
    assert slow.status_code == 504 and "timeout of 1 s" in slow.json()["message"]
    assert httpx.post(f"{hooks}/invoke", json=IRIS[1], timeout=10).json()["label"] == "versicolor"


def test_adaptive_batching_combines_concurrent_requests_and_isolates_failures(hooks):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = client.post(f"{hooks}/invoke", json={**IRIS[0], "sleep": 0.3})  # keeps the model busy
            rest = [client.post(f"{hooks}/invoke", json=IRIS[i % 3] if i != 7 else {**IRIS[0], "crash": 7})
                    for i in range(24)]
            return await asyncio.gather(first, *rest)

    before = _batch_histogram(hooks)
    responses = asyncio.run(burst())
    assert responses[0].json()["label"] == "setosa"
    for i, response in enumerate(responses[1:]):
        if i == 7:
            assert response.status_code == 500 and "boom: 7" in response.json()["message"]
        else:
            assert response.json()["label"] == LABELS[i % 3], i
    after = _batch_histogram(hooks)
    calls, records = after[0] - before[0], after[1] - before[1]
    assert records == 25 and calls < records  # some requests shared a model call


def _batch_histogram(url: str) -> tuple[int, float]:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    count = next(line for line in lines if line.startswith("fnpack_batch_size_count"))
    total = next(line for line in lines if line.startswith("fnpack_batch_size_sum"))
    return int(count.split()[-1]), float(total.split()[-1])


def test_worker_refuses_a_wrong_hash_without_listening(archives, tmp_path):
    a = archives["plain"]
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "fnpack.worker", "--archive", a["archive"], "--sha256", "0" * 64,
                           "--port", str(port), "--host", "127.0.0.1", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 10 and "sha256" in done.stderr and "0" * 64 in done.stderr


def test_worker_refuses_an_unreachable_archive(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fnpack.worker", "--archive", str(tmp_path / "missing.zip"),
                           "--sha256", "a" * 64, "--port", str(free_port()), "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "missing.zip" in done.stderr and "Traceback" not in done.stderr


def test_fnpack_run_as_http(archives):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "fnpack", "run", archives["plain"]["archive"], "--as", "http",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)
        assert httpx.post(f"http://127.0.0.1:{port}/invoke", json=IRIS[1]).json()["label"] == "versicolor"
    finally:
        process.terminate()
        process.wait(10)


def test_the_archives_own_runtime_serves_it(archives, tmp_path):
    from fnpack import worker

    root = worker.prepare(archives["plain"]["archive"], archives["plain"]["sha256"], tmp_path)
    probe = ("import sys; from pathlib import Path; from fnpack import worker; worker.load_app(Path(sys.argv[1])); "
             "print(sys.modules['fnpack.runtime.http'].__file__); print(sys.modules['numpy'].__file__)")
    done = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True, text=True, timeout=60)
    runtime_file, numpy_file = done.stdout.split()
    assert runtime_file.startswith(str(root)) and numpy_file.startswith(str(root)), done.stdout


def test_identity_function_with_several_inputs_and_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    folder = tmp_path / "pair"
    folder.mkdir()
    nodes = [helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["a", "b_float"], ["product"]),
             helper.make_node("ReduceSum", ["a"], ["total"], keepdims=0)]
    graph = helper.make_graph(nodes, "pair",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
                               helper.make_tensor_value_info("b", TensorProto.INT64, [None, 1])],
                              [helper.make_tensor_value_info("product", TensorProto.FLOAT, [None, 2]),
                               helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "fnpack.yaml").write_text(yaml.safe_dump({
        "name": "pair", "model": "model.onnx",
        "samples": [{"data": {"a": [[1, 2]], "b": [[3]]}, "expect": {"product": [[3.0, 6.0]], "total": 3.0}}]}))
    built = build_archive(folder)
    with worker(built["archive"], built["sha256"], tmp_path / "cache") as url:
        answer = httpx.post(f"{url}/invoke", json={"a": [[1, 2], [3, 4]], "b": [[2], [10]]}).json()
        assert answer == {"product": [[2.0, 4.0], [30.0, 40.0]], "total": 10.0}
        wrong_type = httpx.post(f"{url}/invoke", json={"a": [[1, 2]], "b": [["x"]]})
        assert wrong_type.status_code == 422 and "input 'b'" in wrong_type.json()["message"]
        body = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                           {"name": "b", "datatype": "INT64", "shape": [1, 1], "data": [5]}],
                "outputs": [{"name": "product"}]}
        result = httpx.post(f"{url}/v2/models/pair/infer", json=body).json()
        assert [o["name"] for o in result["outputs"]] == ["product"] and result["outputs"][0]["data"] == [5.0, 10.0]


def test_a_second_start_serves_the_unpacked_archive_without_fetching_it(archives, tmp_path):
    from fnpack import worker

    a = archives["plain"]
    first = worker.prepare(a["archive"], a["sha256"], tmp_path)
    # Neither the source nor an intact cached zip is left: only the verified unpacked folder is.
    (tmp_path / "zips" / f"{a['sha256']}.zip").write_bytes(b"damaged")
    second = worker.prepare(str(tmp_path / "gone.zip"), a["sha256"], tmp_path)
    assert first == second and (first / "fnpack.json").is_file()
