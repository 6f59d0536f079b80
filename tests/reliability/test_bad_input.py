"""Bad input is a 4xx or a clean exit, never a traceback or a 500 (issue 9, section 4).

- Crafted archives: central directories that zipfile rejects with more than BadZipFile, or that
  would cost it gigabytes; manifests nested 100,000 deep, huge, or of the wrong shape. `fnpack
  inspect` and `fnpack deploy` end with exit 10 and one message, in bounded memory; the gateway's
  upload answers 422 with a short body.
- Request bodies: JSON nested 100,000 deep (400), NaN and Infinity (422 naming the input), shapes
  only onnxruntime refuses (422), and an answer holding NaN (a clear 500 that is JSON).
- Names: nothing but the documented characters passes, through the CLI and the gateway: no
  trailing newline (Python's `$` matches before one) and no digits of other scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EXAMPLES, CliResult, fnpack
from servers import platform
from test_platform import Api, _build

pytestmark = pytest.mark.slow

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
MAX_BODY = 2000  # an error body or message a person can read, whatever the size of what was sent
CLI_MEMORY = 512 << 20  # address space for one CLI run: a forged archive must not need more


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bad-input")
    folder = tmp / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    return _build(folder, tmp / "out")


@pytest.fixture(scope="module")
def api(iris: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A platform with iris v1 behind the alias live."""
    state = tmp_path_factory.mktemp("platform") / "state"
    with platform(state) as url:
        api = Api(url, state)
        api.state_dir = state  # type: ignore[attr-defined]
        assert api.deploy(iris).status_code == 201
        assert api.alias("iris", 1).status_code == 200
        yield api


def limited_fnpack(*args: str) -> CliResult:
    """The real CLI with its address space capped, so that unbounded memory is a failure, not a slow pass."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CLI_MEMORY, CLI_MEMORY))

    done = subprocess.run([sys.executable, "-m", "fnpack", *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)
    return CliResult(done.returncode, done.stdout, done.stderr)


def assert_clean_exit(result: CliResult, code: int, lines: int = 2) -> None:
    """Exit `code` with `error:` and at most a `hint:` line (a spec's problems take a line each), short,
    and no traceback."""
    printed = result.stderr.strip().splitlines()
    assert result.code == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and printed and printed[0].startswith("error:"), result.stderr[-2000:]
    assert len(printed) <= lines and len(result.stderr) < 2 * MAX_BODY, result.stderr[:2000]


# --- crafted archives --------------------------------------------------------------------------------


def small_zip() -> bytearray:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fnpack.json", json.dumps({"files": {"a.py": {"size": 6, "sha256": "0" * 64}}}))
        archive.writestr("a.py", "x = 1\n")
    return bytearray(buffer.getvalue())


def directory(data: bytearray) -> tuple[int, int]:
    """(offset of the first central directory record, offset of the end record)."""
    end = data.rfind(b"PK\x05\x06")
    return struct.unpack_from("<I", data, end + 16)[0], end


def patched(offset: int, fmt: str, value: int) -> Callable[[], bytes]:
    """small_zip() with one field of its first central directory record overwritten."""

    def make() -> bytes:
        data = small_zip()
        start, _ = directory(data)
        struct.pack_into(fmt, data, start + offset, value)
        return bytes(data)

    return make


def bad_utf8_name() -> bytes:
    data = small_zip()
    start, _ = directory(data)
    struct.pack_into("<H", data, start + 8, 0x800)  # "the name is UTF-8"
    data[start + 46] = 0xFF  # which its first byte cannot be
    return bytes(data)


def header_offset_beyond_2_63() -> bytes:
    """The first record's local header offset, through a zip64 extra field, past what seek() takes."""
    data = small_zip()
    start, end = directory(data)
    name_length = struct.unpack_from("<H", data, start + 28)[0]
    record = data[start:start + 46 + name_length]
    struct.pack_into("<H", record, 30, 12)  # extra field length
    struct.pack_into("<I", record, 42, 0xFFFFFFFF)  # the offset is in the zip64 extra field
    record += struct.pack("<HHQ", 1, 8, 2**63)
    rest = data[start + 46 + name_length:end]
    tail = bytearray(data[end:])
    struct.pack_into("<I", tail, 12, len(record) + len(rest))
    return bytes(data[:start] + record + rest + tail)


def zip64_end_with_another_offset() -> bytes:
    """A zip64 end record whose directory offset disagrees with where the directory is: the entries'
    header offsets come out negative."""
    data = small_zip()
    start, end = directory(data)
    body = data[:end]
    size = end - start
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 2, 2, size, start + 1000)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(body + zip64_end + locator + classic)


def many_entries(count: int) -> Callable[[], bytes]:
    """`count` central directory records of 53 bytes, all naming one tiny local entry."""

    def make() -> bytes:
        local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
        records = b"".join(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0,
                                       0, 0) + b"%07d" % i for i in range(count))
        end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count & 0xFFFF, count & 0xFFFF, len(records),
                          len(local), 0)
        return local + records + end

    return make


def long_name() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fnpack.json", "{}")
        archive.writestr("a" * 60_000, "x")
    return buffer.getvalue()


ZIPS: dict[str, Callable[[], bytes]] = {
    "version-needed-99": patched(6, "<H", 99),  # NotImplementedError from zipfile
    "utf8-flag-bad-name": bad_utf8_name,  # UnicodeDecodeError
    "header-offset-2**63": header_offset_beyond_2_63,  # ValueError from seek()
    "negative-header-offset": zip64_end_with_another_offset,  # OSError from seek()
    "compression-method-99": patched(10, "<H", 99),  # zipfile's NotImplementedError, had it opened the entry
    "lzma-on-stored-bytes": patched(10, "<H", zipfile.ZIP_LZMA),
    "name-of-60000-characters": long_name,
    "a-million-entries": many_entries(1_000_000),  # 7 s and 700 MB for zipfile to list
    "30000-entries": many_entries(30_000),
}


CODE = b"x = 1\n"


def small_built_manifest(archive: str) -> dict[str, Any]:
    """iris's manifest, listing one small file instead of the real ones: an intact archive of two entries."""
    with zipfile.ZipFile(archive) as z:
        manifest = json.loads(z.read("fnpack.json"))
    manifest["files"] = {"code.py": {"size": len(CODE), "sha256": hashlib.sha256(CODE).hexdigest(),
                                     "owner": "(your code)"}}
    return manifest


def edited(edit: Callable[[dict[str, Any]], Any]) -> Callable[[str], bytes]:
    """The manifest after `edit(manifest)`, or what `edit` returns if it returns something."""

    def make(archive: str) -> bytes:
        manifest = small_built_manifest(archive)
        result = edit(manifest)
        if isinstance(result, bytes):
            return result
        return json.dumps(manifest if result is None else result).encode()

    return make


def _first_size_as_text(m: dict[str, Any]) -> None:
    first = next(iter(m["files"].values()))
    first["size"] = str(first["size"])


MANIFESTS: dict[str, Callable[[str], bytes]] = {
    "nested-100000-deep": edited(lambda m: b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "a-million-files": edited(lambda m: {**m, "files": {f"f/{i}": {"size": 0, "sha256": ""}
                                                         for i in range(1_000_000)}}),
    "20001-files": edited(lambda m: {**m, "files": {**m["files"], **{f"f/{i}": {"size": 0, "sha256": ""}
                                                                      for i in range(20_001)}}}),
    "not-an-object": edited(lambda m: [m]),
    "size-is-text": edited(_first_size_as_text),
    "size-is-negative": edited(lambda m: next(iter(m["files"].values())).update(size=-1)),
    "files-is-a-list": edited(lambda m: {**m, "files": list(m["files"])}),
    "file-entry-is-a-number": edited(lambda m: {**m, "files": {**m["files"], "fnpack_handler.py": 5}}),
    "handlers-missing": edited(lambda m: m.pop("handlers") and None),
    "handlers-is-text": edited(lambda m: {**m, "handlers": "fnpack_handler:app"}),
    "handler-is-a-number": edited(lambda m: m["handlers"].update(asgi=1)),
    "spec-missing": edited(lambda m: m.pop("spec") and None),
    "model-inputs-without-shape": edited(lambda m: m["model"].update(inputs=[{"name": "features"}])),
    "name-is-a-number": edited(lambda m: {**m, "name": 5}),
    "format-2": edited(lambda m: {**m, "format": 2}),
}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def crafted(case: str, iris: dict, folder: Path) -> Path:
    path = folder / f"{case}.zip"
    if case in ZIPS:
        path.write_bytes(ZIPS[case]())
        return path
    return write_zip(path, {"fnpack.json": MANIFESTS[case](iris["archive"]), "code.py": CODE})


@pytest.mark.parametrize("case", [*ZIPS, *MANIFESTS])
def test_crafted_archive_is_refused_by_inspect_deploy_and_the_gateway(case: str, iris: dict, api: Api,
                                                                    tmp_path: Path) -> None:
    path = crafted(case, iris, tmp_path)
    assert_clean_exit(limited_fnpack("inspect", str(path)), 10)
    assert_clean_exit(limited_fnpack("deploy", str(path), "--url", api.url, "--state-dir", str(api.state_dir)), 10)
    upload = api.http.post("/api/v1/functions/iris/versions", content=path.read_bytes(),
                           headers={"content-type": "application/zip"})
    assert upload.status_code == 422, upload.text[:2000]
    assert upload.json()["error"] == "archive" and len(upload.content) < MAX_BODY, upload.text[:2000]
    assert [v["number"] for v in api.http.get("/api/v1/functions/iris/versions").json()["versions"]] == [1]


def test_an_intact_archive_naming_no_valid_function_is_not_deployed(iris: dict, api: Api, tmp_path: Path) -> None:
    manifest = {**small_built_manifest(iris["archive"]), "name": "iris\n"}
    path = write_zip(tmp_path / "newline.zip", {"fnpack.json": json.dumps(manifest).encode(), "code.py": CODE})
    deploy = fnpack("deploy", str(path), "--url", api.url, "--state-dir", str(api.state_dir))
    assert_clean_exit(deploy, 10)
    assert "not a function name" in deploy.stderr
    upload = api.http.post("/api/v1/functions/iris%0A/versions", content=path.read_bytes())
    assert upload.status_code == 400 and "not a function name" in upload.json()["message"], upload.text
    assert [f["name"] for f in api.http.get("/api/v1/functions").json()["functions"]] == ["iris"]


@pytest.mark.parametrize("edit", [lambda spec: spec.setdefault("scaling", {}).update(min="x"),
                                  lambda spec: spec.setdefault("resources", {}).update(memory=10 ** 30),
                                  lambda spec: spec.update(batching=[])])
def test_an_intact_archive_with_a_crafted_spec_is_refused(iris: dict, api: Api, tmp_path: Path, edit: Any) -> None:
    """The platform reads scaling, resources and batching from the archive's spec: checked at deploy,
    not found broken at the first request (a 500 from the request path)."""
    manifest = small_built_manifest(iris["archive"])
    edit(manifest["spec"])
    path = write_zip(tmp_path / "spec.zip", {"fnpack.json": json.dumps(manifest).encode(), "code.py": CODE})
    upload = api.http.post("/api/v1/functions/iris/versions", content=path.read_bytes())
    assert upload.status_code == 422 and upload.json()["error"] == "archive", upload.text[:2000]
    assert "spec" in upload.json()["message"] and len(upload.content) < MAX_BODY
    assert_clean_exit(fnpack("deploy", str(path), "--url", api.url, "--state-dir", str(api.state_dir)), 10)
    assert [v["number"] for v in api.http.get("/api/v1/functions/iris/versions").json()["versions"]] == [1]


def test_names_from_an_archive_are_printed_not_read_as_markup(iris: dict, tmp_path: Path) -> None:
    # rich reads "[/]" as a closing tag: printed as markup, a file name like this one crashed inspect
    manifest = json.dumps(small_built_manifest(iris["archive"])).encode()
    path = write_zip(tmp_path / "markup.zip", {"fnpack.json": manifest, "code.py": CODE, "x[/]y.py": CODE})
    report = fnpack("inspect", str(path))
    assert report.code == 10 and "Traceback" not in report.stderr, report.stderr[-2000:]
    assert "x[/]y.py: in the archive but not listed" in report.stdout


def test_an_archive_of_other_tools_with_files_alone_is_inspected(tmp_path: Path) -> None:
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fnpack.json", json.dumps({"files": {"a.py": {"size": 6, "sha256": "0" * 64}}}))
        archive.writestr("a.py", "x = 1\n")
    report = fnpack("inspect", str(path))
    assert report.code == 10 and "Traceback" not in report.stderr, report.stderr[-2000:]
    assert "a.py: sha256" in report.stdout  # the one problem: the hash in the manifest is wrong


# --- request bodies ----------------------------------------------------------------------------------


def infer_body(data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": shape or [1, 4], "data": data}]}


def test_json_nested_100000_deep_is_a_400(api: Api) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/function/iris", "/v2/models/iris/infer"):
        for body in (deep, b'{"sepal_length": ' + deep + b"}"):
            answer = httpx.post(api.url + path, content=body, headers={"content-type": "application/json"},
                                timeout=60)
            assert answer.status_code == 400, (path, answer.text[:2000])
            assert "too deeply" in answer.json()["message"] and len(answer.content) < MAX_BODY
    assert api.invoke("iris").status_code == 200  # still serving


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_a_422_naming_the_input(api: Api, literal: str) -> None:
    record = json.dumps(SETOSA).replace("1.4", literal)
    one = httpx.post(f"{api.url}/function/iris", content=record, timeout=60)
    assert one.status_code == 422 and "'petal_length'" in one.json()["message"], one.text
    many = httpx.post(f"{api.url}/function/iris", content=f"[{json.dumps(SETOSA)}, {record}]", timeout=60)
    assert many.status_code == 422 and "[1]['petal_length']" in many.json()["message"], many.text
    tensor = json.dumps(infer_body([5.1, 3.5, 1.4, 0.2])).replace("1.4", literal)
    infer = httpx.post(f"{api.url}/v2/models/iris/infer", content=tensor, timeout=60)
    assert infer.status_code == 422 and "input 'features'" in infer.json()["message"], infer.text


def _strict_json(text: str) -> Any:
    def refuse(literal: str) -> None:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


SHAPES_MODEL_SPEC = {"name": "shapes", "model": "model.onnx", "score": "nan_score:score"}
NAN_SCORE = '''
import math


def score(outputs):
    y = outputs["y"].tolist()
    return {"y": y, "worst": math.nan if y and y[0][0] > 100 else 0.0}
'''


@pytest.fixture(scope="module")
def shapes_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """In process: y = (a + b) @ W, with a and b of declared shape [N, K], W 4x3; the score answers NaN
    when y's first value is over 100."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fnpack.runtime.function import Function
    from fnpack.runtime.http import create_app

    root = tmp_path_factory.mktemp("shapes")
    weights = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["y"])], "shapes",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "K"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, root / "model.onnx")
    (root / "nan_score.py").write_text(NAN_SCORE)
    tensors = [{"name": n, "dtype": "float32", "shape": [-1, -1]} for n in ("a", "b")]
    (root / "fnpack.json").write_text(json.dumps({"spec": SHAPES_MODEL_SPEC, "model": {
        "inputs": tensors, "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}]}}))
    return create_app(Function(root))


def call(app: Any, path: str, body: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn") as client:
            return await client.post(path, json=body)

    return asyncio.run(send())


def test_shapes_only_onnxruntime_refuses_are_a_422_naming_the_inputs(shapes_app: Any) -> None:
    ones = [[1.0] * 4] * 2
    assert call(shapes_app, "/invoke", {"a": ones, "b": ones}).json()["y"] == [[8.0] * 3] * 2
    inner = call(shapes_app, "/invoke", {"a": [[1.0] * 5] * 2, "b": [[1.0] * 5] * 2})  # MatMul: K is 4
    assert inner.status_code == 422 and "'a' [2, 5]" in inner.json()["message"], inner.text
    batch = call(shapes_app, "/invoke", {"a": ones, "b": [[1.0] * 4] * 3})
    assert batch.status_code == 422, batch.text
    assert "'N'" in batch.json()["message"] and "'a' 2, 'b' 3" in batch.json()["message"]
    v2 = call(shapes_app, "/v2/models/shapes/infer", {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 4], "data": [1.0] * 8},
        {"name": "b", "datatype": "FP32", "shape": [3, 4], "data": [1.0] * 12}]})
    assert v2.status_code == 422 and "'N'" in v2.json()["message"], v2.text
    listed = call(shapes_app, "/invoke", [{"a": ones, "b": ones}, {"a": [[1.0] * 5], "b": [[1.0] * 5]}])
    assert listed.status_code == 422 and listed.json()["message"].startswith("record 1:"), listed.text


def test_an_answer_with_nan_is_a_clear_500_in_json(shapes_app: Any) -> None:
    fine = call(shapes_app, "/invoke", {"a": [[1.0] * 4], "b": [[1.0] * 4]})
    assert fine.status_code == 200 and _strict_json(fine.text)["worst"] == 0.0
    nan = call(shapes_app, "/invoke", {"a": [[50.0] * 4], "b": [[1.0] * 4]})
    assert nan.status_code == 500, nan.text
    body = _strict_json(nan.text)  # the error itself is JSON, not a body with NaN in it
    assert body["error"] == "function_error" and "NaN" in body["message"]


# --- names -------------------------------------------------------------------------------------------


def test_names_with_a_newline_or_foreign_digits_are_refused_by_the_gateway(api: Api) -> None:
    before = api.http.get("/api/v1/functions/iris/aliases").json()
    for response, status in [
        (api.http.put("/api/v1/functions/iris/aliases/live%0A", json={"primary": 1}), 400),
        (api.http.put("/api/v1/functions/iris/aliases/staging%0A", json={"primary": 1}), 400),
        (api.http.get("/api/v1/functions/iris%0A/versions"), 400),
        (api.http.get("/api/v1/functions/iris/aliases/live%0A/history"), 400),
        (httpx.post(f"{api.url}/function/iris%0A", json=SETOSA, timeout=60), 400),
        (httpx.post(f"{api.url}/function/iris:live%0A", json=SETOSA, timeout=60), 400),
        (httpx.post(f"{api.url}/function/iris:%C2%B2", json=SETOSA, timeout=60), 400),  # "²".isdigit()
        (httpx.post(f"{api.url}/function/iris:%D9%A1", json=SETOSA, timeout=60), 400),  # Arabic-Indic 1
        (httpx.post(f"{api.url}/v2/models/iris/versions/%C2%B2/infer", json=infer_body([1, 2, 3, 4]),
                    timeout=60), 400),
    ]:
        assert response.status_code == status, (response.request.url, response.text[:2000])
    assert api.http.get("/api/v1/functions/iris/aliases").json() == before


def test_names_with_a_newline_or_foreign_digits_are_refused_by_the_cli(api: Api, tmp_path: Path) -> None:
    where = ("--url", api.url, "--state-dir", str(api.state_dir))
    assert_clean_exit(fnpack("alias", "set", "iris", "live\n", "1", *where), 2)
    assert_clean_exit(fnpack("alias", "set", "iris\n", "live", "1", *where), 2)
    assert_clean_exit(fnpack("alias", "set", "iris", "live", "²", *where), 2)
    assert_clean_exit(fnpack("invoke", "iris:live\n", "--data", json.dumps(SETOSA), *where), 2)
    assert_clean_exit(fnpack("versions", "iris\n", *where), 2)
    assert_clean_exit(fnpack("init", "demo\n", cwd=tmp_path), 2, lines=3)  # bad usage: exit 2
    assert list(tmp_path.iterdir()) == []
    assert set(api.http.get("/api/v1/functions/iris/aliases").json()["aliases"]) == {"live"}


@pytest.mark.parametrize("key, value", [
    ("name", "iris\n"), ("features", "features:extract\n"),
    ("aws_lambda.region", "eu-west-1\n"), ("aws_lambda.region", "eu-west-\u0661"),
    ("aws_lambda.bucket", "my-bucket\n"), ("aws_lambda.environment", {"LOG_LEVEL\n": "debug"}),
    ("aws_lambda.role", "arn:aws:iam::123456789012:role/fnpack\n"),
    ("aws_lambda.role", "arn:aws:iam::\u0661\u0662\u0663456789012:role/fnpack"),
])
def test_spec_names_accept_only_their_characters(key: str, value: Any) -> None:
    from fnpack.errors import SpecError, UsageError
    from fnpack.spec import parse_spec
    from fnpack.targets.aws_lambda.settings import LambdaSettings

    spec: dict[str, Any] = {"name": "iris", "model": "model.onnx"}
    section, _, field = key.partition(".")
    if field:
        spec[section] = {field: value}
    else:
        spec[section] = value
    with pytest.raises(SpecError):
        parse_spec(spec)
    if section == "aws_lambda" and isinstance(value, str) and field != "environment":  # the Lambda target's check
        with pytest.raises(UsageError):
            LambdaSettings.layer({field: value}, "the command line")
