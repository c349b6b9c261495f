"""Stage 2: scale pixels to [0, 1], reshape to (N, 28, 28, 1), draw 20 samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks import plots
from tasks.engine.refs import DatasetRef, PreparedRef

SPLITS = ("train", "test")
SAMPLE_COUNT = 20


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) to float32 (N, 28, 28, 1) in [0, 1], as the tutorial does."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def preprocess_dataset(out: Path, raw: DatasetRef, train_limit: Optional[int] = None) -> dict[str, Any]:
    """Scale and reshape both splits and draw the 20-image sample grid."""
    arrays = raw.arrays()
    if train_limit is not None:
        arrays["train_images"] = arrays["train_images"][:train_limit]
        arrays["train_labels"] = arrays["train_labels"][:train_limit]
    for split in SPLITS:
        images, labels = PreparedRef.split_files(split)
        np.save(out / images, scale(arrays[f"{split}_images"]))
        np.save(out / labels, arrays[f"{split}_labels"].astype(np.int64))
    plots.image_grid(
        arrays["train_images"][:SAMPLE_COUNT],
        [str(label) for label in arrays["train_labels"][:SAMPLE_COUNT]],
        out / PreparedRef.SAMPLES,
    )
    return {
        "train_count": len(arrays["train_labels"]),
        "test_count": len(arrays["test_labels"]),
    }
