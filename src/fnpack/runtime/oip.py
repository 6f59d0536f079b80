"""Open Inference Protocol v2 (KServe / Triton) REST data plane: request decoding, response encoding, metadata.

Pure functions, stdlib + numpy only: this module is imported on every cold start.
Also speaks Triton's binary tensor data extension (what `tritonclient.http` sends by default): the body is a
JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors, in input order.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fnpack import __version__
from fnpack.runtime.function import RequestError, loads

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_FROM_SPEC = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "string": "BYTES",
}
HEADER_LENGTH = b"inference-header-content-length"  # ASGI wants lower-case header names
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[dict[str, Any]] = field(default_factory=list)  # requested outputs; empty: all of them
    parameters: dict[str, Any] = field(default_factory=dict)


def datatype_of(dtype_name: str) -> str:
    """fnpack spec dtype ("float32", "string", ...) -> OIP datatype ("FP32", "BYTES", ...)."""
    try:
        return _FROM_SPEC[dtype_name]
    except KeyError:
        raise ValueError(f"{dtype_name!r} is not a tensor type the Open Inference Protocol can carry") from None


def _datatype_or_none(dtype_name: str) -> str | None:
    return _FROM_SPEC.get(dtype_name)


def _datatype_of_array(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":  # onnxruntime returns strings as object arrays; numpy may give <U/|S
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


# --- requests ---------------------------------------------------------------------------------------------------

def decode_request(body: bytes, header_length: int | None, inputs: dict[str, dict[str, Any]]) -> InferRequest:
    """Parse and check an inference request against the model's inputs; every problem is a RequestError."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise RequestError(f"Inference-Header-Content-Length is {header_length}, "
                               f"expected 1 to {len(body)} (the body's size)")
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    # NaN and Infinity are refused per input, in _from_json, where the message can name it.
    header = loads(header_bytes, what="the inference request", finite=False)
    if not isinstance(header, dict):
        raise RequestError(f"the inference request must be a JSON object, got {type(header).__name__}")

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = _object(header.get("parameters"), "the request's 'parameters'")
    outputs = _requested_outputs(header.get("outputs"))

    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError(f"'inputs' must be a non-empty list of tensors; the model takes {sorted(inputs)}")

    arrays: dict[str, np.ndarray] = {}
    offset = 0  # binary tensors follow the JSON header back to back, in input order
    for index, entry in enumerate(entries):
        name, datatype, shape, params = _tensor_header(entry, index, inputs)
        if name in arrays:
            raise RequestError(f"input {name!r} is given twice")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in entry:
                raise RequestError(f"input {name!r}: has both 'data' and binary_data_size; expected one of them")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise RequestError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if header_length is None:
                raise RequestError(f"input {name!r}: binary_data_size needs the Inference-Header-Content-Length "
                                   "HTTP header (the JSON header's size)")
            if offset + size > len(binary):
                raise RequestError(f"input {name!r}: binary_data_size {size} runs past the body: only "
                                   f"{len(binary) - offset} binary bytes left after the earlier inputs")
            arrays[name] = _from_binary(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in entry:
            arrays[name] = _from_json(name, datatype, shape, entry["data"])
        else:
            raise RequestError(f"input {name!r}: expected 'data' or parameters.binary_data_size")
    if offset != len(binary):
        raise RequestError(f"the body has {len(binary) - offset} bytes after the JSON header that no input's "
                           f"binary_data_size accounts for (binary inputs: {offset} bytes, "
                           f"binary part: {len(binary)} bytes)")
    missing = [n for n in inputs if n not in arrays]
    if missing:
        raise RequestError(f"missing inputs {missing}; the model takes {sorted(inputs)}")
    return InferRequest(id=request_id, inputs=arrays, outputs=outputs, parameters=parameters)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _requested_outputs(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"'outputs' must be a list of {{\"name\": ...}} objects, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(f"outputs[{index}] must be an object with a string 'name', got {item!r}")
        params = _object(item.get("parameters"), f"output {item['name']!r}'s 'parameters'")
        unsupported = [p for p in (*_SHARED_MEMORY, "classification") if p in params]
        if unsupported:
            raise RequestError(f"output {item['name']!r}: parameters {unsupported} are not supported "
                               "(no shared memory or classification extension)")
    return value


def _tensor_header(entry: Any, index: int, inputs: dict[str, dict[str, Any]]
                   ) -> tuple[str, str, list[int], dict[str, Any]]:
    if not isinstance(entry, dict):
        raise RequestError(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = entry.get("name")
    if not isinstance(name, str):
        raise RequestError(f"inputs[{index}] has no string 'name'; the model takes {sorted(inputs)}")
    if name not in inputs:
        raise RequestError(f"input {name!r} is not a model input; the model takes {sorted(inputs)}")
    model = inputs[name]
    expected = datatype_of(model["dtype"])
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise RequestError(f"input {name!r}: missing 'datatype', expected {expected}")
    if datatype != expected:
        raise RequestError(f"input {name!r}: expected datatype {expected}, got {datatype}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}; "
                           f"expected {model['shape']} (-1: any)")
    want = model["shape"]
    if len(shape) != len(want) or any(w != -1 and w != d for w, d in zip(want, shape)):
        raise RequestError(f"input {name!r}: expected shape {want} (-1: any), got {shape}")
    params = _object(entry.get("parameters"), f"input {name!r}'s 'parameters'")
    if any(p in params for p in _SHARED_MEMORY):
        raise RequestError(f"input {name!r}: shared memory is not supported; send 'data' or binary data")
    return name, datatype, shape, params


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise RequestError(f"input {name!r}: 'data' must be a list (flat or nested), got {type(data).__name__}")
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(x, str) for x in flat):
            raise RequestError(f"input {name!r}: BYTES data must be strings")
        if len(flat) != count:
            raise RequestError(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {len(flat)}")
        return np.array(flat, dtype=np.object_).reshape(shape)
    try:
        array = np.asarray(data)  # flat or nested; numpy rejects ragged nesting
    except ValueError:
        raise RequestError(f"input {name!r}: nested 'data' is ragged; expected a flat list or shape {shape}") from None
    if array.size != count:
        raise RequestError(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {array.size}")
    kinds = "b" if datatype == "BOOL" else "iu" if datatype[0] in "IU" else "iuf"
    if array.size and array.dtype.kind not in kinds:  # numpy would happily cast "1.5" or 2.7 -> int
        what = {"b": "true/false", "iu": "integers", "iuf": "numbers"}[kinds]
        raise RequestError(f"input {name!r}: {datatype} data must be {what}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # json reads NaN and Infinity (and 1e999)
        raise RequestError(f"input {name!r}: 'data' holds NaN or Infinity, which are not JSON numbers; "
                           f"expected finite {datatype} numbers")
    target = DATATYPES[datatype]
    if array.size and target.kind in "iu":
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:  # astype would wrap around silently
            raise RequestError(f"input {name!r}: values out of range for {datatype} ({info.min}..{info.max})")
    return array.astype(target).reshape(shape)


def _flatten(data: list[Any]) -> Any:
    stack = [iter(data)]  # iterative: data may nest as deep as the JSON parser allows
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _from_binary(name: str, datatype: str, shape: list[int], chunk: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return np.array(_split_bytes(name, chunk, count), dtype=np.object_).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")  # the extension is little-endian
    if len(chunk) != count * dtype.itemsize:
        raise RequestError(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                           f"binary_data_size is {len(chunk)}")
    # copy: the slice may be unaligned and is read-only; a copy also frees the request body sooner
    return np.frombuffer(chunk, dtype=dtype).astype(DATATYPES[datatype]).reshape(shape)


def _split_bytes(name: str, chunk: memoryview, count: int) -> list[str]:
    items, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise RequestError(f"input {name!r}: BYTES element {len(items)} has a truncated 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise RequestError(f"input {name!r}: BYTES element {len(items)} says {length} bytes, "
                               f"only {len(chunk) - offset} left")
        try:  # onnxruntime turns a bytes object into the text "b'...'", so strings must be str
            items.append(str(chunk[offset:offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r}: BYTES element {len(items)} is not UTF-8 text") from None
        offset += length
    if len(items) != count:
        raise RequestError(f"input {name!r}: shape needs {count} BYTES elements, the binary data has {len(items)}")
    return items


# --- responses --------------------------------------------------------------------------------------------------

def encode_response(model_name: str, model_version: str | None, request: InferRequest,
                    outputs: dict[str, np.ndarray], output_meta: dict[str, dict[str, Any]]
                    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Build the inference response body and its extra HTTP headers (the header length when any output is binary)."""
    binary_default = request.parameters.get("binary_data_output") is True
    if request.outputs:
        wanted = []
        for item in request.outputs:
            name = item["name"]
            if name not in outputs:
                raise RequestError(f"output {name!r} is not a model output; the model has {sorted(outputs)}")
            if _tensor_datatype(name, outputs[name], output_meta) is None:
                raise RequestError(f"output {name!r} is not a tensor ({output_meta[name]['dtype']}); the "
                                   "Open Inference Protocol only carries tensors")
            binary = (item.get("parameters") or {}).get("binary_data", binary_default)
            wanted.append((name, binary is True))
    else:  # all outputs, minus what OIP cannot carry (e.g. a ZipMap's sequence of maps)
        wanted = [(n, binary_default) for n in outputs if _tensor_datatype(n, outputs[n], output_meta) is not None]

    tensors, chunks = [], []
    for name, binary in wanted:
        datatype = _tensor_datatype(name, outputs[name], output_meta)
        assert datatype is not None
        array = np.asarray(outputs[name])
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_binary(datatype, array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _to_json(name, datatype, array)
        tensors.append(tensor)

    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = tensors
    # ensure_ascii keeps characters == bytes; allow_nan: Triton and tritonclient (rapidjson) take NaN/Infinity
    header = json.dumps(response, separators=(",", ":")).encode("ascii")
    if not chunks:
        return header, []
    return b"".join([header, *chunks]), [(HEADER_LENGTH, str(len(header)).encode("ascii"))]


def _tensor_datatype(name: str, value: Any, output_meta: dict[str, dict[str, Any]]) -> str | None:
    meta = output_meta.get(name)
    if meta is not None and "dtype" in meta:
        return _datatype_or_none(meta["dtype"])
    if not isinstance(value, np.ndarray):
        return None
    try:
        return _datatype_of_array(value)
    except ValueError:
        return None


def _to_json(name: str, datatype: str, array: np.ndarray) -> list[Any]:
    if datatype != "BYTES":
        return array.astype(DATATYPES[datatype], copy=False).ravel().tolist()  # row-major, flat
    out = []
    for item in array.ravel().tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"output {name!r} holds bytes that are not UTF-8; "
                                   "request it with parameters.binary_data = true") from None
        out.append(item if isinstance(item, str) else str(item))
    return out


def _to_binary(datatype: str, array: np.ndarray) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=DATATYPES[datatype].newbyteorder("<")).tobytes()
    parts = []
    for item in array.ravel().tolist():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)


# --- metadata ---------------------------------------------------------------------------------------------------

def model_metadata(model_name: str, versions: list[str], platform: str,
                   inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Model metadata response; tensors given in spec spelling ({"name","dtype","shape"}), -1 for dynamic dims."""
    return {"name": model_name, "versions": list(versions), "platform": platform,
            "inputs": _tensors_metadata(inputs), "outputs": _tensors_metadata(outputs)}


def _tensors_metadata(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # non-tensor outputs (sequence of maps) are left out: no OIP client can ask for them
    return [{"name": t["name"], "datatype": _datatype_or_none(t["dtype"]), "shape": list(t["shape"])}
            for t in tensors if _datatype_or_none(t["dtype"]) is not None]


EXTENSIONS = ("binary_tensor_data",)  # what this codec speaks; the platform's gateway reports the same


def server_metadata(extensions: list[str]) -> dict[str, Any]:
    names = list(dict.fromkeys([*extensions, *EXTENSIONS]))
    return {"name": "fnpack", "version": __version__, "extensions": names}


# --- errors -----------------------------------------------------------------------------------------------------

def error_body(body: dict[str, Any]) -> dict[str, Any]:
    """An fnpack error body (`{"error": kind, "message": ..., ...}`) as Open Inference Protocol clients read it.

    `error` holds the human detail: KServe answers `{"error": "..."}`, and tritonclient's
    InferenceServerException takes its message from that field (without it, a client shows only the status).
    fnpack's own fields stay: `message`, the rest as they were, and the kind under `kind`.
    """
    rest = dict(body)
    kind, message = rest.pop("error", None), str(rest.pop("message", "") or "")
    detail = message or str(kind or "error")
    if rest.get("type"):  # an exception in user code: say which
        detail = f"{rest['type']}: {detail}"
    if rest.get("expected"):
        detail += f"; expected {rest['expected']}"
    if rest.get("hint"):
        detail += f" (hint: {rest['hint']})"
    if rest.get("request_id"):
        detail += f" (request id {rest['request_id']})"
    return {"error": detail, "kind": kind, "message": message, **rest}
