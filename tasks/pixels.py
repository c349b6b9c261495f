"""The tutorial's normalisation: pixels 0..255 to float32 in [0, 1].

The preprocess entry keeps the images as uint8, a quarter of float32's bytes;
the stages that feed a model scale them as they load them, with the same
arithmetic the tutorial applies once (`x / 255.0` in float32), so a model sees
the same numbers.
"""

from __future__ import annotations

import numpy as np


def scaled(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]; any shape."""
    return images.astype(np.float32) / np.float32(255.0)
