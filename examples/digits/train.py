"""Regenerate model.onnx and samples/*.json from scikit-learn's bundled digits (offline, deterministic).

Run from anywhere: `python examples/digits/train.py`. Needs scikit-learn, skl2onnx, onnx and
pillow; train.py is excluded from the archive, so the function itself needs none but pillow.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from features import extract  # noqa: E402  (samples are checked through the real request path)

SAMPLE_DIGITS = (3, 5, 8)


def to_png(image: np.ndarray) -> bytes:
    """An 8x8 digit (0..16) as a 32x32 grayscale PNG: 4x4 blocks, 0..16 -> 0..255."""
    pixels = np.rint(image * 255 / 16).astype(np.uint8)
    big = np.kron(pixels, np.ones((4, 4), dtype=np.uint8))  # nearest-neighbour upscale
    buf = io.BytesIO()
    Image.fromarray(big, mode="L").save(buf, format="PNG", optimize=True)  # no timestamps: same bytes
    return buf.getvalue()


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)  # 0..1, as features.py scales requests
    x_train, x_test, y_train, y_test, _, img_test = train_test_split(
        x, digits.target, digits.images, test_size=0.25, random_state=0, stratify=digits.target)
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=0).fit(x_train, y_train)

    onx = to_onnx(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 10]))],
        options={id(model): {"zipmap": False}},  # plain tensors, not a list of dicts
        # Opset 15 / ML 3 keeps IR version 8, so onnxruntime 1.16 loads it too.
        target_opset={"": 15, "ai.onnx.ml": 3},
    )
    # Pin the metadata, and sort opset imports (skl2onnx keeps them in a set), for identical bytes.
    onx.producer_name, onx.producer_version, onx.doc_string = "fnpack-example", "1", ""
    onx.graph.name = "digits"
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    (HERE / "model.onnx").write_bytes(onx.SerializeToString())

    # One sample request per digit: the first test image that the model gets clearly right
    # (probability >= 0.9) through the PNG request path, so the sample checks stay stable.
    for digit in SAMPLE_DIGITS:
        for image, target in zip(img_test, y_test):
            if target != digit:
                continue
            request = {"image": base64.b64encode(to_png(image)).decode("ascii")}
            if model.predict_proba(extract(request)["pixels"])[0][digit] >= 0.9:
                (HERE / "samples" / f"{digit}.json").write_text(json.dumps(request) + "\n")
                break
        else:
            raise SystemExit(f"no test image of {digit} classified with probability >= 0.9")

    print(f"wrote model.onnx ({(HERE / 'model.onnx').stat().st_size} bytes) and samples {SAMPLE_DIGITS}; "
          f"test accuracy {model.score(x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
