"""Turn requests {"image": "<base64 PNG/JPEG>"} into the model's `pixels` tensor.

`extract` takes a list of records (`takes_list = True`): with batching on, the runtime calls it once
per batch, and a batch's pixels are converted and scaled as one array.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def extract(records: list[Any]) -> dict[str, np.ndarray]:
    small = np.stack([_small(record) for record in records])
    # Training scaled 0..16 to 0..1; here 0..255 maps to the same range. Light = ink, as in the data.
    return {"pixels": small.reshape(len(records), 64).astype(np.float32) / 255}


extract.takes_list = True  # type: ignore[attr-defined]


def _small(record: Any) -> np.ndarray:
    """One record's image, grayscale, shrunk to 8x8 (uint8)."""
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError('expected a JSON object {"image": "<base64-encoded PNG or JPEG>"}')
    data = record["image"]
    if data.startswith("data:"):  # tolerate a data URL, as browsers produce
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"field 'image' is not valid base64: {exc}") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            gray = img.convert("L")
            width, height = gray.size
            # BOX averages non-overlapping blocks: how the digits set was made (32x32 -> 8x8 by 4x4 blocks).
            # reduce() is that same box average when the size is a multiple of 8, without resize's set-up.
            divisible = width % 8 == 0 and height % 8 == 0
            small = gray.reduce((width // 8, height // 8)) if divisible else gray.resize((8, 8), Image.Resampling.BOX)
            return np.asarray(small)
    except UnidentifiedImageError:
        raise ValueError(f"field 'image' decodes to {len(raw)} bytes that are not an image "
                         "(expected PNG or JPEG)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, too large
        raise ValueError(f"field 'image' is not a readable image: {exc}") from None
