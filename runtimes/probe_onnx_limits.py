"""Measure what the installed onnxruntime can load: the `onnx` limits in runtime.toml.

Run it with the runtime's pinned onnxruntime installed next to `onnx`:
    python runtimes/probe_onnx_limits.py
"""

import onnxruntime as ort
from onnx import TensorProto, helper


def _loads(node: helper.NodeProto, opsets: list[tuple[str, int]], ir: int) -> bool:
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


relu = helper.make_node("Relu", ["x"], ["y"])
normalizer = helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")
max_ir = max(ir for ir in range(3, 16) if _loads(relu, [("", 13)], ir))
print(f"onnxruntime = {ort.__version__!r}")
print(f"max_ir_version = {max_ir}")
print(f"max_opset = {max(v for v in range(7, 40) if _loads(relu, [('', v)], max_ir))}")
print(f"max_ml_opset = {max(v for v in range(1, 10) if _loads(normalizer, [('', 13), ('ai.onnx.ml', v)], 8))}")
