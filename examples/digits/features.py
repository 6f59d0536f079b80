"""Turn a request {"image": "<base64 PNG/JPEG>"} into the model's `pixels` tensor."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def extract(request: Any) -> dict[str, np.ndarray]:
    if not isinstance(request, dict) or not isinstance(request.get("image"), str):
        raise ValueError('expected a JSON object {"image": "<base64-encoded PNG or JPEG>"}')
    data = request["image"]
    if data.startswith("data:"):  # tolerate a data URL, as browsers produce
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"field 'image' is not valid base64: {exc}") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            # BOX averages non-overlapping blocks: how the digits set was made (32x32 -> 8x8 by 4x4 blocks).
            small = img.convert("L").resize((8, 8), Image.Resampling.BOX)
    except UnidentifiedImageError:
        raise ValueError(f"field 'image' decodes to {len(raw)} bytes that are not an image (expected PNG or JPEG)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, too large
        raise ValueError(f"field 'image' is not a readable image: {exc}") from None
    # Training scaled 0..16 to 0..1; here 0..255 maps to the same range. Light = ink, as in the data.
    pixels = np.asarray(small, dtype=np.float32).reshape(1, 64) / 255
    return {"pixels": pixels}
