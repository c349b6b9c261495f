"""The tutorial's last step on a user's own images: classify PNG or JPEG files.

Images of any size or colour are brought to what the model was trained on:
grayscale, white digit on black, the ink's bounding box scaled into 20x20 and
centred by its centre of mass in 28x28, as the MNIST images were made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks import gate, train

_BOX = 20
_SIZE = 28


class NotAnImage(ValueError):
    """A file that is not a readable PNG or JPEG image."""


def load_gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise NotAnImage(f"{path} is not an image PNG or JPEG can be read from: {err}") from err


def to_mnist(gray: np.ndarray, invert: Optional[bool] = None) -> np.ndarray:
    """A (28, 28, 1) float32 image in [0, 1], white ink on black, centred as MNIST's."""
    if invert is None:
        # The background is what the border shows; MNIST's is black.
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = float(np.median(border)) > 127
    ink = (255.0 - gray if invert else gray) / 255.0
    rows, cols = np.nonzero(ink > 0.2)
    if rows.size == 0:
        return np.zeros((_SIZE, _SIZE, 1), dtype=np.float32)
    ink = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    scale = _BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    ink = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS),
                     dtype=np.float32) / 255.0
    canvas = np.zeros((_SIZE, _SIZE), dtype=np.float32)
    total = ink.sum() or 1.0
    centre_row = (ink.sum(axis=1) * np.arange(ink.shape[0])).sum() / total
    centre_col = (ink.sum(axis=0) * np.arange(ink.shape[1])).sum() / total
    top = int(np.clip(round(_SIZE / 2 - centre_row), 0, _SIZE - ink.shape[0]))
    left = int(np.clip(round(_SIZE / 2 - centre_col), 0, _SIZE - ink.shape[1]))
    canvas[top: top + ink.shape[0], left: left + ink.shape[1]] = ink
    return canvas[..., np.newaxis]


def champion_model(artifacts_dir: str, dataset: str) -> Path:
    champion = gate.read_champion(artifacts_dir, dataset)
    if champion is None:
        raise FileNotFoundError(
            f"no {dataset} champion in {artifacts_dir}: no run has passed the quality gate yet "
            "(see `mnist-pipeline runs`); pass --model PATH, or run with a lower --accuracy-threshold"
        )
    return Path(champion["model_path"]) / train.MODEL


def classify(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) for (N, 28, 28, 1) images."""
    import keras

    model = keras.models.load_model(model_path, safe_mode=True)
    logits = model.predict(images, verbose=0)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
