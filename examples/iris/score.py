"""Turn the model's outputs into a readable answer. Only numpy/stdlib."""

from __future__ import annotations

import numpy as np

# Class order of load_iris().target_names, which the model's label indices follow.
CLASSES = ("setosa", "versicolor", "virginica")


def score(outputs: dict[str, np.ndarray]) -> dict:
    label = int(outputs["label"][0])  # one row per request
    probs = outputs["probabilities"][0]
    return {
        "label": CLASSES[label],
        "probabilities": {name: round(float(p), 4) for name, p in zip(CLASSES, probs)},
    }
