"""The tutorial's normalisation, `x / 255.0` in float32, applied as a stage loads the preprocess entry's uint8 pixels
(a quarter of float32's bytes on disk), so a model sees the numbers the tutorial gives it."""

from __future__ import annotations

import numpy as np


def scaled(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]; any shape."""
    return images.astype(np.float32) / np.float32(255.0)
