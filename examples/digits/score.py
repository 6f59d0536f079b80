"""Turn the model's outputs into {"digit", "confidence"}. Only numpy/stdlib."""

from __future__ import annotations

import numpy as np


def score(outputs: dict[str, np.ndarray]) -> dict:
    digit = int(outputs["label"][0])  # one image per request; labels are the digits 0..9
    return {"digit": digit, "confidence": round(float(outputs["probabilities"][0][digit]), 4)}
