"""Regenerate model.onnx from scikit-learn's bundled iris data (offline, deterministic).

Run from anywhere: `python examples/iris/train.py`. Needs scikit-learn, skl2onnx and onnx,
which the packaged function does not (train.py is excluded from the archive).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent


def main() -> None:
    iris = load_iris()
    x = iris.data.astype(np.float32)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(x, iris.target)

    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 3]))],
        options={id(model): {"zipmap": False}},  # plain tensors, not a list of dicts
        # Opset 15 / ML 3 keeps IR version 8, so onnxruntime 1.16 loads it too.
        target_opset={"": 15, "ai.onnx.ml": 3},
    )
    # Pin the metadata so that every run writes the same bytes.
    onx.producer_name, onx.producer_version, onx.doc_string = "fnpack-example", "1", ""
    onx.graph.name = "iris"
    # skl2onnx collects opset imports in a set: sort them, or the order follows hash seeding.
    opsets = sorted(((o.domain, o.version) for o in onx.opset_import))
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    out = HERE / "model.onnx"
    out.write_bytes(onx.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size} bytes), train accuracy {model.score(x, iris.target):.3f}")


if __name__ == "__main__":
    main()
