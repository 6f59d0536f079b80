"""Checks on the model: it is ONNX, the target's onnxruntime can load it, it matches `inputs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnpack.build.profile import OnnxLimits
from fnpack.errors import ModelError
from fnpack.spec import TensorSpec

_ORT_TYPES = {
    "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(float16)": "float16", "tensor(float)": "float32",
    "tensor(double)": "float64", "tensor(string)": "string",
}


@dataclass
class ModelInfo:
    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)


def read_header(data: bytes) -> tuple[int, dict[str, int]]:
    """IR version and opset imports from a serialized ModelProto, read as raw protobuf.

    Only top-level fields are read: ir_version (1, varint), graph (7) and
    opset_import (8: domain = 1, version = 2). The onnx package is not needed.
    """
    ir_version, opsets, has_graph = 0, {}, False
    for number, value in _fields(data):
        if number == 1 and isinstance(value, int):
            ir_version = value
        elif number == 7 and isinstance(value, bytes):
            has_graph = True
        elif number == 8 and isinstance(value, bytes):
            entry = dict(_fields(value))
            domain = entry.get(1, b"")
            opsets[domain.decode() if isinstance(domain, bytes) else ""] = int(entry.get(2, 0))
    if not ir_version or not has_graph:
        raise ValueError("no ir_version or graph")
    return ir_version, opsets


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated")
            value, i = data[i:i + length], i + length
        elif wire in (1, 5):
            value, i = 0, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, value))
    if i != len(data):
        raise ValueError("truncated")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def check_model(path: Path, limits: OnnxLimits, declared: list[TensorSpec] | None, runtime: str) -> ModelInfo:
    if not path.is_file():
        raise ModelError(f"model file {path} not found", hint="set `model:` in fnpack.yaml to the .onnx file's path")
    data = path.read_bytes()
    try:
        ir_version, opsets = read_header(data)
    except ValueError:
        raise ModelError(f"{path} is not an ONNX model (it does not parse as a ModelProto)",
                         hint="export the model to ONNX (e.g. skl2onnx, torch.onnx.export, tf2onnx)") from None
    _check_limits(path, ir_version, opsets, limits, runtime)
    info = ModelInfo(ir_version, opsets)
    info.inputs, info.outputs = _load_signature(path, data)
    if declared is not None:
        _compare_inputs(path, declared, info.inputs)
        info.inputs = [t.model_dump() for t in declared]
    return info


def _check_limits(path: Path, ir_version: int, opsets: dict[str, int], limits: OnnxLimits, runtime: str) -> None:
    where = f"onnxruntime {limits.onnxruntime} (the {runtime} runtime for this target)"
    problems = []
    if ir_version > limits.max_ir_version:
        problems.append(f"IR version {ir_version} (at most {limits.max_ir_version})")
    if opsets.get("", 0) > limits.max_opset:
        problems.append(f"ai.onnx opset {opsets['']} (at most {limits.max_opset})")
    if opsets.get("ai.onnx.ml", 0) > limits.max_ml_opset:
        problems.append(f"ai.onnx.ml opset {opsets['ai.onnx.ml']} (at most {limits.max_ml_opset})")
    if problems:
        raise ModelError(
            f"{path.name} needs a newer onnxruntime than {where}: " + ", ".join(problems),
            hint=f"convert the model with target_opset={limits.max_opset} (and ai.onnx.ml {limits.max_ml_opset}), "
                 "or set `runtime:` to a newer Python whose runtime ships a newer onnxruntime",
        )


def _load_signature(path: Path, data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load {path.name}: {str(exc).strip()}",
                         hint="check the export; `python -c \"import onnx; onnx.checker.check_model(...)\"` "
                              "tells what is wrong") from None
    return [_describe(t) for t in session.get_inputs()], [_describe(t) for t in session.get_outputs()]


def _describe(arg: Any) -> dict[str, Any]:
    return {"name": arg.name, "dtype": _ORT_TYPES.get(arg.type, arg.type),
            "shape": [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]}


def _compare_inputs(path: Path, declared: list[TensorSpec], actual: list[dict[str, Any]]) -> None:
    by_name = {t["name"]: t for t in actual}
    problems = []
    for spec in declared:
        model = by_name.get(spec.name)
        if model is None:
            problems.append(f"input {spec.name!r} is not in the model (its inputs: {sorted(by_name)})")
            continue
        if spec.dtype != model["dtype"]:
            problems.append(f"input {spec.name!r}: fnpack.yaml says {spec.dtype}, the model takes {model['dtype']}")
        if len(spec.shape) != len(model["shape"]) or any(
                m != -1 and s != m for s, m in zip(spec.shape, model["shape"])):
            problems.append(f"input {spec.name!r}: fnpack.yaml says shape {spec.shape}, "
                            f"the model takes {model['shape']} (-1: dynamic)")
    missing = sorted(set(by_name) - {t.name for t in declared})
    if missing:
        problems.append(f"the model also needs {missing}, which fnpack.yaml does not list")
    if problems:
        raise ModelError(f"{path.name} does not match `inputs` in fnpack.yaml: " + "; ".join(problems),
                         hint="fix `inputs:` (or remove it: fnpack then reads the inputs from the model)")
