"""The Open Inference Protocol codec against the spec and against the real tritonclient's encoder and decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from fnpack import __version__
from fnpack.runtime.function import RequestError
from fnpack.runtime.oip import (
    DATATYPES,
    InferRequest,
    datatype_of,
    decode_request,
    encode_response,
    error_body,
    model_metadata,
    server_metadata,
)

# The upstream spec lives in ../shared beside the repository (as in CI); tests that need it skip without it.
SPEC = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "open-inference-protocol-rest.yaml"
IRIS = {"features": {"name": "features", "dtype": "float32", "shape": [-1, 4]}}
MIXED = {
    "ids": {"name": "ids", "dtype": "int64", "shape": [-1]},
    "mask": {"name": "mask", "dtype": "bool", "shape": [2, -1]},
    "text": {"name": "text", "dtype": "string", "shape": [-1]},
}


def _json_request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _triton_request(arrays: dict[str, np.ndarray], binary: bool = True, outputs: list[Any] | None = None,
                    **kwargs: Any) -> tuple[bytes, int | None]:
    inputs = []
    for name, array in arrays.items():
        inp = httpclient.InferInput(name, list(array.shape), _triton_datatype(array))
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)


def _triton_datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def _triton_result(body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    length = dict(headers).get(b"inference-header-content-length")
    return httpclient.InferResult.from_response_body(body, header_length=int(length) if length else None)


# --- datatypes ----------------------------------------------------------------------------------------------------

def test_datatypes_match_tritonclient() -> None:
    from tritonclient.utils import triton_to_np_dtype

    for name, dtype in DATATYPES.items():
        assert np.dtype(triton_to_np_dtype(name)) == dtype, name
    assert datatype_of("float32") == "FP32" and datatype_of("int64") == "INT64"
    assert datatype_of("string") == "BYTES" and datatype_of("bool") == "BOOL" and datatype_of("float16") == "FP16"
    with pytest.raises(ValueError, match="seq"):
        datatype_of("seq(map(int64,tensor(float)))")


# --- JSON requests ------------------------------------------------------------------------------------------------

def test_json_fp32_multidim_flat_and_nested() -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    flat = decode_request(_json_request([{"name": "features", "shape": [2, 4], "datatype": "FP32",
                                          "data": [x for row in rows for x in row]}], id="42"), None, IRIS)
    nested = decode_request(_json_request([{"name": "features", "shape": [2, 4], "datatype": "FP32",
                                            "data": rows}]), None, IRIS)
    expected = np.array(rows, dtype=np.float32)
    for request in (flat, nested):
        assert request.inputs["features"].dtype == np.float32
        np.testing.assert_array_equal(request.inputs["features"], expected)
    assert flat.id == "42" and nested.id is None and flat.outputs == [] and flat.parameters == {}


def test_json_int64_bool_bytes() -> None:
    body = _json_request([
        {"name": "ids", "shape": [3], "datatype": "INT64", "data": [1, -2, 2**62]},
        {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [[True, False], [False, True]]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]},
    ], outputs=[{"name": "out"}], parameters={"binary_data_output": True})
    request = decode_request(body, None, MIXED)
    np.testing.assert_array_equal(request.inputs["ids"], np.array([1, -2, 2**62], dtype=np.int64))
    assert request.inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(request.inputs["mask"], np.array([[1, 0], [0, 1]], dtype=bool))
    assert request.inputs["mask"].dtype == np.bool_
    assert request.inputs["text"].dtype == object and request.inputs["text"].tolist() == ["héllo", ""]
    assert request.outputs == [{"name": "out"}] and request.parameters == {"binary_data_output": True}


def test_json_request_built_by_tritonclient() -> None:
    arrays = {"ids": np.array([7, 8], dtype=np.int64), "mask": np.ones((2, 3), dtype=bool),
              "text": np.array(["a", b"b\xc3\xa9"], dtype=object)}
    body, length = _triton_request(arrays, binary=False, request_id="r1")
    assert length is None  # no binary input: the whole body is JSON and no header length is sent
    request = decode_request(body, length, MIXED)
    assert request.id == "r1"
    np.testing.assert_array_equal(request.inputs["ids"], arrays["ids"])
    np.testing.assert_array_equal(request.inputs["mask"], arrays["mask"])
    assert request.inputs["text"].tolist() == ["a", "bé"]
    # no requested outputs: tritonclient asks for every output in binary at the request level
    assert request.parameters == {"binary_data_output": True}


# --- binary requests (Triton's binary tensor data extension) ---------------------------------------------------

def test_binary_request_built_by_tritonclient() -> None:
    arrays = {"ids": np.array([3, -1, 2**40], dtype=np.int64),
              "mask": np.array([[True, False], [False, False]]),
              "text": np.array([b"caf\xc3\xa9", "", "x" * 300], dtype=object)}
    outputs = [httpclient.InferRequestedOutput("out", binary_data=True)]
    body, length = _triton_request(arrays, outputs=outputs, request_id="7")
    assert isinstance(length, int) and length < len(body)
    request = decode_request(body, length, MIXED)
    np.testing.assert_array_equal(request.inputs["ids"], arrays["ids"])
    np.testing.assert_array_equal(request.inputs["mask"], arrays["mask"])
    assert request.inputs["ids"].dtype == np.int64 and request.inputs["mask"].dtype == np.bool_
    assert request.inputs["text"].tolist() == ["café", "", "x" * 300]  # str: onnxruntime needs str, not bytes
    assert request.outputs == [{"name": "out", "parameters": {"binary_data": True}}]
    assert request.id == "7"


def test_binary_fp32_iris_and_mixed_binary_json() -> None:
    features = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    body, length = _triton_request({"features": features})
    request = decode_request(body, length, IRIS)
    np.testing.assert_array_equal(request.inputs["features"], features)
    assert request.inputs["features"].flags.writeable and request.inputs["features"].flags.aligned

    inputs = [httpclient.InferInput("ids", [2], "INT64").set_data_from_numpy(np.array([1, 2]), binary_data=False),
              httpclient.InferInput("mask", [2, 1], "BOOL").set_data_from_numpy(np.array([[True], [False]])),
              httpclient.InferInput("text", [1], "BYTES").set_data_from_numpy(np.array(["z"], dtype=object))]
    body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = decode_request(body, length, MIXED)
    assert request.inputs["ids"].tolist() == [1, 2] and request.inputs["mask"].tolist() == [[True], [False]]
    assert request.inputs["text"].tolist() == ["z"]


def test_binary_fp16_and_empty_tensor() -> None:
    model = {"x": {"name": "x", "dtype": "float16", "shape": [-1, 2]}}
    for array in (np.array([[1.5, -2.0]], dtype=np.float16), np.zeros((0, 2), dtype=np.float16)):
        body, length = _triton_request({"x": array})
        out = decode_request(body, length, model).inputs["x"]
        assert out.dtype == np.float16 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


# --- validation -------------------------------------------------------------------------------------------------

def _fp32(data: Any = None, shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "features", "shape": shape or [1, 4], "datatype": "FP32", **extra}
    if data is not None:
        entry["data"] = data
    return entry


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b"{}", r"'inputs' must be a non-empty list of tensors; the model takes \['features'\]"),
    (json.dumps({"inputs": []}).encode(), "non-empty list"),
    (json.dumps({"inputs": {"features": [1]}}).encode(), "non-empty list"),
    (_json_request([[1, 2]]), r"inputs\[0\] must be an object"),
    (_json_request([{"shape": [1], "datatype": "FP32", "data": [1]}]), r"inputs\[0\] has no string 'name'"),
    (_json_request([_fp32([1, 2, 3, 4], name="petals")]),
     r"input 'petals' is not a model input; the model takes \['features'\]"),
    (_json_request([_fp32([1, 2, 3, 4], datatype="INT64")]), "input 'features': expected datatype FP32, got INT64"),
    (_json_request([{"name": "features", "shape": [1, 4], "data": [1, 2, 3, 4]}]),
     "input 'features': missing 'datatype', expected FP32"),
    (_json_request([{"name": "features", "datatype": "FP32", "data": [1, 2, 3, 4]}]),
     r"input 'features': 'shape' must be a list of non-negative integers, got None; expected \[-1, 4\]"),
    (_json_request([_fp32([1, 2, 3, 4], shape=[1, -4])]), "non-negative integers"),
    (_json_request([_fp32([1, 2, 3, 4], shape=[4])]), r"input 'features': expected shape \[-1, 4\] \(-1: any\), got \[4\]"),
    (_json_request([_fp32([1, 2, 3], shape=[1, 3])]), r"input 'features': expected shape \[-1, 4\] \(-1: any\), got \[1, 3\]"),
    (_json_request([_fp32([1, 2, 3])]), r"input 'features': shape \[1, 4\] needs 4 elements, 'data' has 3"),
    (_json_request([_fp32([[1, 2], [3, 4], [5, 6]], shape=[1, 4])]), "needs 4 elements, 'data' has 6"),
    (_json_request([_fp32([[1, 2, 3], [4]])]), "input 'features': nested 'data' is ragged"),
    (_json_request([_fp32(["1", "2", "3", "4"])]), "input 'features': FP32 data must be numbers"),
    (_json_request([_fp32([1, None, 3, 4])]), "FP32 data must be numbers"),
    (_json_request([_fp32("1,2,3,4")]), "'data' must be a list"),
    (_json_request([_fp32()]), "input 'features': expected 'data' or parameters.binary_data_size"),
    (_json_request([_fp32([1, 2, 3, 4]), _fp32([1, 2, 3, 4])]), "input 'features' is given twice"),
    (_json_request([_fp32([1, 2, 3, 4], parameters={"shared_memory_region": "r"})]), "shared memory"),
    (_json_request([_fp32([1, 2, 3, 4])], id=42), "'id' must be a string"),
    (_json_request([_fp32([1, 2, 3, 4])], parameters=[1]), "'parameters' must be a JSON object"),
    (_json_request([_fp32([1, 2, 3, 4])], outputs="label"), "'outputs' must be a list"),
    (_json_request([_fp32([1, 2, 3, 4])], outputs=[{"id": 1}]), r"outputs\[0\] must be an object with a string 'name'"),
    (_json_request([_fp32([1, 2, 3, 4])], outputs=[{"name": "l", "parameters": {"classification": 2}}]),
     "not supported"),
    (_json_request([_fp32(parameters={"binary_data_size": 16})]),
     "binary_data_size needs the Inference-Header-Content-Length"),
])
def test_validation_errors(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        decode_request(body, None, IRIS)


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "ids", "shape": [2], "datatype": "INT64", "data": [1.5, 2]}, "input 'ids': INT64 data must be integers"),
    ({"name": "ids", "shape": [2], "datatype": "INT64", "data": [True, False]}, "INT64 data must be integers"),
    ({"name": "ids", "shape": [1], "datatype": "INT64", "data": [2**64]}, "must be integers"),
    ({"name": "mask", "shape": [2, 1], "datatype": "BOOL", "data": [1, 0]}, "input 'mask': BOOL data must be true/false"),
    ({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}, "input 'text': BYTES data must be strings"),
    ({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}, r"shape \[2\] needs 2 elements, 'data' has 1"),
])
def test_validation_errors_by_type(entry: dict[str, Any], message: str) -> None:
    others = [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]},
              {"name": "mask", "shape": [2, 1], "datatype": "BOOL", "data": [True, False]},
              {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["t"]}]
    body = _json_request([entry, *[o for o in others if o["name"] != entry["name"]]])
    with pytest.raises(RequestError, match=message):
        decode_request(body, None, MIXED)


def test_out_of_range_integer() -> None:
    model = {"x": {"name": "x", "dtype": "uint8", "shape": [-1]}}
    with pytest.raises(RequestError, match=r"input 'x': values out of range for UINT8 \(0..255\)"):
        decode_request(_json_request([{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, 300]}]), None, model)


def test_missing_input() -> None:
    body = _json_request([{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}])
    with pytest.raises(RequestError, match=r"missing inputs \['mask', 'text'\]; the model takes \['ids', 'mask', 'text'\]"):
        decode_request(body, None, MIXED)


def test_binary_size_errors() -> None:
    features = np.ones((2, 4), dtype=np.float32)
    body, length = _triton_request({"features": features})
    assert length is not None
    with pytest.raises(RequestError, match="runs past the body"):
        decode_request(body[:-1], length, IRIS)
    with pytest.raises(RequestError, match="3 bytes after the JSON header that no input's binary_data_size accounts for"):
        decode_request(body + b"xyz", length, IRIS)
    with pytest.raises(RequestError, match="Inference-Header-Content-Length is 0"):
        decode_request(body, 0, IRIS)
    with pytest.raises(RequestError, match="Inference-Header-Content-Length is"):
        decode_request(body, len(body) + 1, IRIS)
    with pytest.raises(RequestError, match="not JSON"):
        decode_request(body, length - 1, IRIS)
    # a JSON-only request with extra bytes after it
    plain = _json_request([_fp32([1, 2, 3, 4])])
    with pytest.raises(RequestError, match="2 bytes after the JSON header"):
        decode_request(plain + b"\0\0", len(plain), IRIS)
    # size that is not a whole tensor
    header = json.dumps({"inputs": [_fp32(shape=[1, 4], parameters={"binary_data_size": 15})]}).encode()
    with pytest.raises(RequestError, match=r"input 'features': shape \[1, 4\] of FP32 needs 16 bytes, binary_data_size is 15"):
        decode_request(header + b"\0" * 15, len(header), IRIS)
    header = json.dumps({"inputs": [_fp32(shape=[1, 4], parameters={"binary_data_size": -1})]}).encode()
    with pytest.raises(RequestError, match="binary_data_size must be a non-negative integer"):
        decode_request(header, len(header), IRIS)
    header = json.dumps({"inputs": [_fp32([1, 2, 3, 4], parameters={"binary_data_size": 16})]}).encode()
    with pytest.raises(RequestError, match="has both 'data' and binary_data_size"):
        decode_request(header + b"\0" * 16, len(header), IRIS)


def test_binary_bytes_errors() -> None:
    model = {"text": {"name": "text", "dtype": "string", "shape": [-1]}}

    def body(raw: bytes, count: int) -> tuple[bytes, int]:
        header = json.dumps({"inputs": [{"name": "text", "shape": [count], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return header + raw, len(header)

    with pytest.raises(RequestError, match="element 0 has a truncated 4-byte length"):
        decode_request(*body(b"\1\0", 1), model)
    with pytest.raises(RequestError, match="element 0 says 9 bytes, only 2 left"):
        decode_request(*body(b"\x09\0\0\0ab", 1), model)
    with pytest.raises(RequestError, match="shape needs 2 BYTES elements, the binary data has 1"):
        decode_request(*body(b"\2\0\0\0ab", 2), model)
    with pytest.raises(RequestError, match="element 0 is not UTF-8"):
        decode_request(*body(b"\1\0\0\0\xff", 1), model)


# --- responses, decoded by the real tritonclient ----------------------------------------------------------------

OUTPUTS = {
    "label": np.array([0, 2, 1], dtype=np.int64),
    "probabilities": np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]], dtype=np.float32),
    "flags": np.array([[True, False]]),
    "names": np.array(["setosa", "virginica", "versicolor"], dtype=object),
    "half": np.array([1.5, -0.25], dtype=np.float16),
}
OUTPUT_META = {
    "label": {"name": "label", "dtype": "int64", "shape": [-1]},
    "probabilities": {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]},
    "flags": {"name": "flags", "dtype": "bool", "shape": [-1, 2]},
    "names": {"name": "names", "dtype": "string", "shape": [-1]},
    "half": {"name": "half", "dtype": "float16", "shape": [-1]},
}


def _request(outputs: list[dict[str, Any]] | None = None, **parameters: Any) -> InferRequest:
    return InferRequest(id="req-1", inputs={}, outputs=outputs or [], parameters=parameters)


def _check_all(result: Any, names: list[str]) -> None:
    for name in names:
        got = result.as_numpy(name)
        if name == "names":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.tolist()] == OUTPUTS[name].tolist()
        else:
            assert got.dtype == OUTPUTS[name].dtype, name
            np.testing.assert_array_equal(got, OUTPUTS[name])


def test_json_response_read_by_tritonclient() -> None:
    body, headers = encode_response("iris", "1", _request(), OUTPUTS, OUTPUT_META)
    assert headers == []
    response = json.loads(body)
    assert response["model_name"] == "iris" and response["model_version"] == "1" and response["id"] == "req-1"
    assert [o["name"] for o in response["outputs"]] == list(OUTPUTS)
    assert response["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [3, 3],
                                      "data": OUTPUTS["probabilities"].ravel().tolist()}
    result = _triton_result(body, headers)
    _check_all(result, list(OUTPUTS))
    assert result.as_numpy("names").tolist() == ["setosa", "virginica", "versicolor"]  # JSON BYTES come back as str


def test_binary_response_read_by_tritonclient() -> None:
    body, headers = encode_response("iris", None, _request(binary_data_output=True), OUTPUTS, OUTPUT_META)
    (name, value), = headers
    assert name == b"inference-header-content-length"
    header = json.loads(body[:int(value)])
    assert "model_version" not in header
    assert all("data" not in o and o["parameters"]["binary_data_size"] >= 0 for o in header["outputs"])
    result = _triton_result(body, headers)
    _check_all(result, list(OUTPUTS))
    assert result.as_numpy("names").tolist() == [b"setosa", b"virginica", b"versicolor"]  # binary BYTES: bytes


def test_requested_outputs_mixed_binary_and_json() -> None:
    request = _request([{"name": "names", "parameters": {"binary_data": True}}, {"name": "label"},
                        {"name": "probabilities", "parameters": {"binary_data": True}},
                        {"name": "flags", "parameters": {"binary_data": False}}], binary_data_output=True)
    body, headers = encode_response("iris", "1", request, OUTPUTS, OUTPUT_META)
    result = _triton_result(body, headers)
    got = result.get_response()["outputs"]
    assert [o["name"] for o in got] == ["names", "label", "probabilities", "flags"]
    # per-output binary_data wins; an output without it ("label") follows the request's binary_data_output
    assert ["data" in o for o in got] == [False, False, False, True]
    _check_all(result, ["names", "label", "probabilities", "flags"])
    assert result.as_numpy("half") is None


def test_response_via_tritonclient_request_end_to_end() -> None:
    # what a real client sends (binary in, binary out) through decode -> "model" -> encode -> tritonclient
    features = np.random.default_rng(1).random((3, 4), dtype=np.float32)
    body, length = _triton_request({"features": features}, request_id="abc",
                                   outputs=[httpclient.InferRequestedOutput("probabilities"),
                                            httpclient.InferRequestedOutput("names", binary_data=False)])
    request = decode_request(body, length, IRIS)
    body, headers = encode_response("iris", "1", request, OUTPUTS, OUTPUT_META)
    result = _triton_result(body, headers)
    assert result.get_response()["id"] == "abc"
    _check_all(result, ["probabilities", "names"])


def test_empty_and_nan_outputs() -> None:
    outputs = {"e": np.zeros((0, 3), dtype=np.float32), "n": np.array([np.nan, np.inf], dtype=np.float64),
               "s": np.array([], dtype=object)}
    for binary in (False, True):
        body, headers = encode_response("m", None, _request(binary_data_output=binary), outputs, {})
        result = _triton_result(body, headers)
        assert result.as_numpy("e").shape == (0, 3)
        np.testing.assert_array_equal(result.as_numpy("n"), outputs["n"])
        assert result.as_numpy("s").shape == (0,)


def test_unknown_and_non_tensor_outputs() -> None:
    outputs = {**OUTPUTS, "zipmap": [{0: 0.9, 1: 0.1}]}
    meta = {**OUTPUT_META, "zipmap": {"name": "zipmap", "dtype": "seq(map(int64,tensor(float)))", "shape": []}}
    with pytest.raises(RequestError, match=r"output 'nope' is not a model output; the model has \['flags', "):
        encode_response("m", None, _request([{"name": "nope"}]), outputs, meta)
    with pytest.raises(RequestError, match="output 'zipmap' is not a tensor"):
        encode_response("m", None, _request([{"name": "zipmap"}]), outputs, meta)
    body, _ = encode_response("m", None, _request(), outputs, meta)  # all outputs: the ZipMap is left out
    assert [o["name"] for o in json.loads(body)["outputs"]] == list(OUTPUTS)


def test_non_utf8_bytes_output() -> None:
    outputs = {"blob": np.array([b"\xff\x00"], dtype=object)}
    with pytest.raises(RequestError, match="request it with parameters.binary_data"):
        encode_response("m", None, _request(), outputs, {})
    body, headers = encode_response("m", None, _request([{"name": "blob", "parameters": {"binary_data": True}}]),
                                    outputs, {})
    assert _triton_result(body, headers).as_numpy("blob").tolist() == [b"\xff\x00"]


def test_unicode_id_header_length() -> None:
    body, length = _triton_request({"features": np.ones((1, 4), dtype=np.float32)}, request_id="ïd-✓")
    request = decode_request(body, length, IRIS)
    assert request.id == "ïd-✓"
    body, headers = encode_response("m", None, request, {"p": np.ones(2, dtype=np.float32)}, {})
    assert _triton_result(body, headers).get_response()["id"] == "ïd-✓"


# --- metadata and the conformance schemas -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is not here")
    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))["components"]["schemas"]


def _conforms(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A small OpenAPI-schema check: $ref, type, required, properties, items, anyOf (enough for this spec)."""
    if "$ref" in schema:
        return _conforms(value, schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return _conforms(value, option, schemas)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{value!r} matches none of {errors}")
    kind = schema.get("type")
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind:
        assert isinstance(value, python[kind]) and not (kind in ("integer", "number") and isinstance(value, bool)), \
            f"{value!r} is not {kind}"
    if kind == "object":
        for key in schema.get("required", []):
            assert key in value, f"missing {key!r} in {value!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _conforms(value[key], sub, schemas)
    if kind == "array" and "items" in schema:
        for item in value:
            _conforms(item, schema["items"], schemas)
    return None


def test_model_and_server_metadata(schemas: dict[str, Any]) -> None:
    meta = model_metadata("iris", ["1"], "onnxruntime_onnx", list(IRIS.values()),
                          [OUTPUT_META["label"], OUTPUT_META["probabilities"],
                           {"name": "zipmap", "dtype": "seq(map(int64,tensor(float)))", "shape": []}])
    assert meta == {"name": "iris", "versions": ["1"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}
    _conforms(meta, schemas["metadata_model_response"], schemas)

    server = server_metadata(["model_repository", "binary_tensor_data"])
    assert server == {"name": "fnpack", "version": __version__,
                      "extensions": ["model_repository", "binary_tensor_data"]}
    assert server_metadata([])["extensions"] == ["binary_tensor_data"]
    _conforms(server, schemas["metadata_server_response"], schemas)


def test_json_response_conforms(schemas: dict[str, Any]) -> None:
    body, _ = encode_response("iris", "1", _request(), OUTPUTS, OUTPUT_META)
    _conforms(json.loads(body), schemas["inference_response"], schemas)


def test_spec_example_request_decodes(schemas: dict[str, Any]) -> None:
    example = schemas["inference_request"]["x-examples"]["Example 1"]
    _conforms(example, schemas["inference_request"], schemas)
    model = {"input0": {"name": "input0", "dtype": "uint32", "shape": [2, 2]},
             "input1": {"name": "input1", "dtype": "bool", "shape": [-1]}}
    example = {**example, "inputs": [example["inputs"][0], {**example["inputs"][1], "shape": [1]}]}
    request = decode_request(json.dumps(example).encode(), None, model)  # the example's BOOL has shape 3, data 1
    assert request.inputs["input0"].dtype == np.uint32 and request.inputs["input0"].tolist() == [[1, 2], [3, 4]]
    assert request.id == "42" and request.outputs == [{"name": "output0"}]


# --- errors, as tritonclient reads them ---------------------------------------------------------------------

class _ErrorResponse:
    """What tritonclient.http's error decoder reads from a response: the status and the body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code, self._body = status, json.dumps(body).encode()

    def read(self) -> bytes:
        return self._body


def _triton_error(status: int, body: dict[str, Any]) -> Any:
    from tritonclient.http._utils import _get_error  # what every InferenceServerClient call raises with

    return _get_error(_ErrorResponse(status, body))


def test_error_body_puts_the_detail_where_tritonclient_reads_it() -> None:
    with pytest.raises(RequestError) as caught:
        decode_request(_json_request([_fp32([1, 2, 3], shape=[1, 3])]), None, IRIS)
    body = error_body({"error": "unprocessable", "message": str(caught.value)})
    assert body["kind"] == "unprocessable" and body["message"] == str(caught.value)  # fnpack's fields stay
    error = _triton_error(422, body)
    assert error.status() == "422"
    assert "input 'features'" in error.message() and "expected shape [-1, 4]" in error.message()
    assert "input 'features'" in str(error)

    crash = error_body({"error": "function_error", "type": "ZeroDivisionError", "message": "division by zero",
                        "request_id": "ab12"})
    assert crash["error"] == "ZeroDivisionError: division by zero (request id ab12)"
    assert crash["type"] == "ZeroDivisionError" and crash["request_id"] == "ab12"
    big = error_body({"error": "payload_too_large", "message": "the body is over 10 bytes", "hint": "send less"})
    assert big["error"] == "the body is over 10 bytes (hint: send less)"
    # before: the kind alone, all tritonclient could show
    assert _triton_error(422, {"error": "unprocessable", "message": "x"}).message() == "unprocessable"
