"""Grey-scale images from disk (PNG, TIFF, anything Pillow reads) for sample models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """The image as float32 in [0, 1] (colour is converted to luminance)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ParameterError(f"sample image not found: {p}")
    try:
        with Image.open(p) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise ParameterError(f"cannot read sample image {p}: {exc}") from None
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
