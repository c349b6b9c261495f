"""Stage 2: reshape to (N, 28, 28, 1), hold out the validation split; the pixels stay uint8 (tasks/pixels.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.refs import DatasetRef, PreparedRef


def reshape(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) to uint8 (N, 28, 28, 1): the channel axis Conv2D expects."""
    return np.ascontiguousarray(images, dtype=np.uint8)[..., np.newaxis]


def validation_size(examples: int, validation_split: float) -> int:
    """How many of `examples` training images are held out: the share asked, at least one, never all."""
    if validation_split <= 0 or examples < 2:
        return 0
    return min(examples - 1, max(1, round(examples * validation_split)))


def preprocess_dataset(out: Path, raw: DatasetRef, train_limit: Optional[int] = None,
                       validation_split: float = 0.0) -> dict[str, Any]:
    """Reshape the splits, hold out the last `validation_split` of training."""
    arrays = raw.arrays()
    images, labels = arrays["train_images"][:train_limit], arrays["train_labels"][:train_limit]
    held_out = validation_size(len(labels), validation_split)
    kept = len(labels) - held_out
    splits = {"train": (images[:kept], labels[:kept]), "test": (arrays["test_images"], arrays["test_labels"])}
    if held_out:
        splits["validation"] = images[kept:], labels[kept:]
    for split, (x, y) in splits.items():
        x_file, y_file = PreparedRef.split_files(split)
        np.save(out / x_file, reshape(x))
        np.save(out / y_file, y.astype(np.int64))
    return {"train_count": kept, "validation_count": held_out, "test_count": len(arrays["test_labels"]),
            "test_sha256": raw.test_sha256}
