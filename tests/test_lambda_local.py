"""`fnpack.targets.aws_lambda.emulator` end to end: real archives built by the CLI, run by AWS's awslambdaric."""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES, fnpack
from fnpack.errors import ArchiveError, UsageError
from fnpack.targets.aws_lambda.emulator import (
    InvokeResult,
    LocalLambda,
    run_lambda,
    serve_http,
    url_event,
    url_response,
)

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
NO_PETAL_WIDTH = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}
WAIT = 60  # seconds: a bound on every wait, far above what any step takes

# A handler that reports where its imports come from, and can crash or hang on demand;
# everything else goes to the archive's real handler.
PROBE = b'''
import importlib.util, os, sys, time
from fnpack_handler import handler as real_handler

def handler(event, context):
    action = event.get("probe") if isinstance(event, dict) else None
    if action == "paths":
        import awslambdaric, fnpack, mangum, numpy, onnxruntime
        return {
            "modules": {m.__name__: m.__file__ for m in (awslambdaric, fnpack, mangum, numpy, onnxruntime)},
            "visible": {name: importlib.util.find_spec(name) is not None for name in ("httpx", "pytest", "yaml")},
            "sys_path": sys.path,
            "env": {k: os.environ.get(k) for k in ("LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "_HANDLER",
                    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                    "AWS_REGION", "VIRTUAL_ENV")},
            "arn": context.invoked_function_arn,
            "request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "task_root_mode": os.stat(os.environ["LAMBDA_TASK_ROOT"]).st_mode & 0o777,
        }
    if action == "sleep":
        time.sleep(event["seconds"])
        return {"slept": event["seconds"]}
    if action == "exit":
        print("exiting on purpose", flush=True)
        os._exit(event["code"])
    return real_handler(event, context)
'''


def rewrite_zip(source: Path, dest: Path, replace: dict[str, bytes | None]) -> Path:
    """Copy a zip entry by entry; `replace` maps names to new bytes (None: drop it); new names are added."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename not in replace:
                out.writestr(info, src.read(info))
            elif (data := replace[info.filename]) is not None:
                out.writestr(info, data)
        for name, data in replace.items():
            if data is not None and name not in src.namelist():
                out.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return dest


def edit_manifest(archive: Path, **changes: object) -> bytes:
    with zipfile.ZipFile(archive) as z:
        manifest = json.loads(z.read("fnpack.json"))
    for key, value in changes.items():
        target, *path = key.split("__")
        node = manifest
        for part in [target, *path][:-1]:
            node = node[part]
        node[[target, *path][-1]] = value
    return json.dumps(manifest).encode()


def build_iris(folder: Path, *args: str) -> Path:
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    result = fnpack("build", str(folder), "--out", str(folder / "dist"), "--json", *args)
    assert result.code == 0, result.stdout + result.stderr
    return Path(result.json()["archive"])


@pytest.fixture(scope="module")
def lambda_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_iris(tmp_path_factory.mktemp("lambda") / "iris", "--target", "aws-lambda")


@pytest.fixture(scope="module")
def iris(lambda_archive: Path) -> Iterator[LocalLambda]:
    with LocalLambda(lambda_archive) as local:
        yield local


@pytest.fixture(scope="module")
def probe(lambda_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLambda]:
    archive = rewrite_zip(lambda_archive, tmp_path_factory.mktemp("probe") / "probe.zip", {
        "probe.py": PROBE, "fnpack.json": edit_manifest(lambda_archive, handlers__lambda="probe.handler")})
    with LocalLambda(archive) as local:
        yield local


def url_body(result: InvokeResult) -> tuple[int, Any]:
    assert result.status == "ok", result
    status, _, body = url_response(result)
    return status, json.loads(body)


def test_direct_invocation(iris: LocalLambda) -> None:
    result = iris.invoke(SETOSA, timeout=WAIT)
    assert result.status == "ok", result
    assert result.payload["label"] == "setosa"
    assert set(result.payload["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert result.duration_s < WAIT and result.request_id
    assert f"REPORT RequestId: {result.request_id}" in iris.logs()


def test_function_url_event(iris: LocalLambda) -> None:
    event = url_event("POST", "/invoke?debug=1", [("Content-Type", "application/json"), ("Host", "x.lambda-url")],
                      json.dumps(SETOSA).encode())
    assert event["isBase64Encoded"] and event["requestContext"]["http"]["method"] == "POST"
    result = iris.invoke(event, timeout=WAIT)
    assert result.payload["statusCode"] == 200
    status, body = url_body(result)
    assert status == 200 and body["label"] == "setosa"


def test_api_gateway_rest_event(iris: LocalLambda) -> None:
    event = {
        "resource": "/invoke", "path": "/invoke", "httpMethod": "POST",
        "headers": {"Content-Type": "application/json", "Host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {"resourcePath": "/invoke", "httpMethod": "POST", "path": "/prod/invoke", "stage": "prod",
                           "identity": {"sourceIp": "203.0.113.7"}, "requestId": "rest-1", "accountId": "123456789012"},
        "body": json.dumps(SETOSA), "isBase64Encoded": False,
    }
    result = iris.invoke(event, timeout=WAIT)
    assert result.status == "ok", result
    assert result.payload["statusCode"] == 200
    assert json.loads(result.payload["body"])["label"] == "setosa"


def test_bad_request_is_422_over_http_and_an_error_when_invoked_directly(iris: LocalLambda) -> None:
    event = url_event("POST", "/invoke", [("content-type", "application/json")], json.dumps(NO_PETAL_WIDTH).encode())
    status, body = url_body(iris.invoke(event, timeout=WAIT))
    assert status == 422 and "petal_width" in body["message"]

    result = iris.invoke(NO_PETAL_WIDTH, timeout=WAIT)
    assert result.status == "error"
    assert result.error_type == "RequestError"
    assert "petal_width" in result.error_message
    assert result.payload["stackTrace"]  # as Lambda returns it
    assert iris.invoke(SETOSA, timeout=WAIT).payload["label"] == "setosa"  # the environment survives


def test_the_function_sees_only_the_archive_and_awslambdaric(probe: LocalLambda) -> None:
    result = probe.invoke({"probe": "paths"}, timeout=WAIT)
    assert result.status == "ok", result
    info = result.payload
    task_root, runtime_dir = info["env"]["LAMBDA_TASK_ROOT"], info["env"]["LAMBDA_RUNTIME_DIR"]
    assert task_root == str(probe.task_root)
    for name in ("numpy", "onnxruntime", "mangum", "fnpack"):  # the archive's, not the venv's
        assert info["modules"][name].startswith(task_root + os.sep), info["modules"]
    assert info["modules"]["awslambdaric"].startswith(runtime_dir + os.sep)
    assert info["visible"] == {"httpx": False, "pytest": False, "yaml": False}  # the venv's site-packages is not there
    assert not [p for p in info["sys_path"] if "site-packages" in p], info["sys_path"]
    assert info["sys_path"].index(task_root) < info["sys_path"].index(runtime_dir)
    assert info["env"]["_HANDLER"] == "probe.handler"
    assert info["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "iris"
    assert info["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert info["env"]["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert info["env"]["AWS_REGION"] == "us-east-1"
    assert info["env"]["VIRTUAL_ENV"] is None  # the caller's environment is not passed on
    assert info["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:iris"
    assert info["request_id"] == result.request_id
    assert 0 < info["remaining_ms"] <= WAIT * 1000
    assert info["task_root_mode"] & 0o222 == 0  # read-only, as /var/task (root may still write)

    assert probe.invoke(SETOSA, timeout=WAIT).payload["label"] == "setosa"  # the real handler behind the probe


def test_a_timeout_stops_the_environment_and_the_next_call_gets_a_fresh_one(probe: LocalLambda) -> None:
    started = time.monotonic()
    result = probe.invoke({"probe": "sleep", "seconds": 30}, timeout=1)
    assert time.monotonic() - started < 10
    assert result.status == "error" and result.error_type == "Sandbox.Timedout"
    assert "timed out after 1.00 seconds" in result.error_message
    assert probe.invoke(SETOSA, timeout=WAIT).payload["label"] == "setosa"


def test_a_crash_during_an_invocation_is_an_error_not_a_hang(probe: LocalLambda) -> None:
    result = probe.invoke({"probe": "exit", "code": 3}, timeout=WAIT)
    assert result.status == "error" and result.error_type == "Runtime.ExitError"
    assert "exit status 3" in result.error_message
    assert "exiting on purpose" in probe.logs()
    assert probe.invoke(SETOSA, timeout=WAIT).payload["label"] == "setosa"


def test_serve_http_with_a_real_client(iris: LocalLambda) -> None:
    # The runtime's long-polling connection has a thread of its own: let it exist before counting.
    assert iris.wait_ready(WAIT)
    before = set(threading.enumerate())
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    server = threading.Thread(target=serve_http, args=(iris, "127.0.0.1", 0),
                              kwargs={"on_ready": urls.put, "stop": stop})
    server.start()
    try:
        url = urls.get(timeout=WAIT)
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            answer = client.post("/invoke", json=SETOSA)
            assert answer.status_code == 200 and answer.json()["label"] == "setosa"
            assert answer.headers["content-type"] == "application/json"
            answer = client.post("/invoke", json=NO_PETAL_WIDTH)
            assert answer.status_code == 422 and "petal_width" in answer.json()["message"]
            answer = client.post("/invoke", content=b"not json", headers={"content-type": "application/json"})
            assert answer.status_code == 400
            assert client.get("/healthz").json() == {"status": "ok", "function": "iris"}
            assert client.get("/nowhere", params={"a": "1"}).status_code == 404
    finally:
        stop.set()
        server.join(timeout=WAIT)
    assert not server.is_alive()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - before == set()


def test_a_local_archive_is_refused(tmp_path: Path) -> None:
    archive = build_iris(tmp_path / "iris")  # the default target: local
    with pytest.raises(ArchiveError, match="built for the target 'local', not 'aws-lambda'") as caught:
        LocalLambda(archive).start()
    assert "--target aws-lambda" in (caught.value.hint or "")


def test_an_archive_for_another_python_is_refused(lambda_archive: Path, tmp_path: Path) -> None:
    manifest = edit_manifest(lambda_archive, python="3.99")
    archive = rewrite_zip(lambda_archive, tmp_path / "py399.zip", {"fnpack.json": manifest})
    local = LocalLambda(archive)
    with pytest.raises(ArchiveError, match=r"built for Python 3\.99"):
        local.start()
    assert local._tmp is None  # nothing left behind


def test_an_init_error_is_reported_quickly(lambda_archive: Path, tmp_path: Path) -> None:
    # The build's smoke run refuses a broken scorer, so break it after building. The archive's
    # bytecode is unchecked (deterministic builds), so the stale .pyc must go too or it would still load.
    with zipfile.ZipFile(lambda_archive) as z:
        assert "__pycache__/score.cpython-311.pyc" in z.namelist()
    archive = rewrite_zip(lambda_archive, tmp_path / "broken.zip", {
        "score.py": b"raise RuntimeError('the scorer is broken on purpose')\n",
        "__pycache__/score.cpython-311.pyc": None,
    })
    started = time.monotonic()
    with LocalLambda(archive) as local:
        assert local.wait_ready(WAIT) is False
        result = local.invoke(SETOSA, timeout=WAIT)
        assert result.status == "init_error"
        assert result.error_type == "RuntimeError"
        assert "the scorer is broken on purpose" in result.error_message
        again = local.invoke(SETOSA, timeout=WAIT)  # a fresh environment fails its init again
        assert again.status == "init_error" and again.error_type == "RuntimeError"
        assert "the scorer is broken on purpose" in local.logs()
    assert time.monotonic() - started < 30


def test_nothing_outlives_close(lambda_archive: Path) -> None:
    before = set(threading.enumerate())
    with LocalLambda(lambda_archive) as local:
        assert local.invoke(SETOSA, timeout=WAIT).status == "ok"
        assert local._runtime is not None
        process, task_root = local._runtime.proc, local.task_root
    assert process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    assert not task_root.exists()
    assert set(threading.enumerate()) - before == set()


def test_url_response_follows_function_url_rules() -> None:
    ok = InvokeResult("ok", {"statusCode": 201, "headers": {"x-a": "1"}, "cookies": ["a=1", "b=2"],
                             "body": "aGk=", "isBase64Encoded": True}, 0.1, "r")
    assert url_response(ok) == (201, [("x-a", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")], b"hi")
    plain = InvokeResult("ok", {"label": "setosa"}, 0.1, "r")  # no statusCode: the JSON is the body of a 200
    assert url_response(plain) == (200, [("content-type", "application/json")], b'{"label": "setosa"}')
    failed = InvokeResult("error", {"errorType": "ValueError", "errorMessage": "x"}, 0.1, "r")
    assert url_response(failed)[0] == 502

    event = url_event("GET", "/p?a=1&a=2&b=", [("Cookie", "c=1; d=2"), ("X-Multi", "1"), ("x-multi", "2")])
    assert event["rawPath"] == "/p" and event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["cookies"] == ["c=1", "d=2"] and "cookie" not in event["headers"]
    assert event["headers"]["x-multi"] == "1,2"
    assert "body" not in event and event["isBase64Encoded"] is False


def test_run_lambda_for_the_cli(lambda_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_lambda(lambda_archive, data=json.dumps(SETOSA)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] == "setosa"
    assert "REPORT RequestId" in err  # the function's logs go to stderr

    assert run_lambda(lambda_archive, data=json.dumps(NO_PETAL_WIDTH)) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["errorType"] == "RequestError"
    assert "error: function error: RequestError:" in err and "petal_width" in err

    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(url_event("POST", "/invoke", [], json.dumps(SETOSA).encode())))
    assert run_lambda(lambda_archive, event_file=event_file) == 0
    assert json.loads(capsys.readouterr().out)["statusCode"] == 200

    with pytest.raises(UsageError, match="exactly one"):
        run_lambda(lambda_archive)
    with pytest.raises(UsageError, match="--data is not JSON"):
        run_lambda(lambda_archive, data="{")


def test_fnpack_run_as_lambda_through_the_cli(lambda_archive):
    from conftest import fnpack

    record = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
    result = fnpack("run", str(lambda_archive), "--as", "lambda", "--data", json.dumps(record))
    assert result.code == 0, result.stderr
    assert result.json()["label"] == "virginica"
    bad = fnpack("run", str(lambda_archive), "--as", "lambda", "--data", "{not json")
    assert bad.code == 2 and "JSON" in bad.stderr


def test_a_json_array_invoked_directly_is_a_batch_as_on_invoke(lambda_archive: Path, iris: LocalLambda) -> None:
    virginica = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
    records = [SETOSA, virginica, SETOSA]
    done = fnpack("run", str(lambda_archive), "--as", "lambda", "--data", json.dumps(records))
    assert done.code == 0, done.stderr
    answers = done.json()
    assert [a["label"] for a in answers] == ["setosa", "virginica", "setosa"]  # an array, in the same order

    bad = fnpack("run", str(lambda_archive), "--as", "lambda", "--data", json.dumps([SETOSA, NO_PETAL_WIDTH]))
    assert bad.code == 1
    error = bad.json()
    assert error["errorType"] == "RequestError"
    assert error["errorMessage"].startswith("record 1:") and "petal_width" in error["errorMessage"]

    # the same answers /invoke gives for the same array, through a Function URL event
    event = url_event("POST", "/invoke", [("content-type", "application/json")], json.dumps(records).encode())
    status, body = url_body(iris.invoke(event, timeout=WAIT))
    assert status == 200 and body == answers
    direct = iris.invoke(records, timeout=WAIT)
    assert direct.status == "ok" and direct.payload == answers
    assert iris.invoke([], timeout=WAIT).payload == []
