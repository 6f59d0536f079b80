"""Turn a JSON request into the model's `features` tensor. Only numpy: the archive is slim."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Column order the model was trained with (sklearn's iris feature order).
FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def extract(record: Any) -> dict[str, np.ndarray]:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object with fields {', '.join(FIELDS)}, got {type(record).__name__}")
    row = []
    for field in FIELDS:
        if field not in record:
            raise ValueError(f"missing field '{field}': expected a number (centimetres)")
        value = record[field]
        # bool is an int subclass; reject it rather than read true as 1.0.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"field '{field}' must be a finite number (centimetres), got {value!r}")
        row.append(float(value))
    return {"features": np.array([row], dtype=np.float32)}
