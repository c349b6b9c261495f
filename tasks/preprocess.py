"""Stage 2: scale pixels to [0, 1], reshape to (N, 28, 28, 1), draw 20 samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks import download, plots
from tasks.caching import StageCache, stage_task
from tasks.refs import DatasetRef, PreparedRef
from tasks.store import ArtifactStore

SPLITS = ("train", "test")
SAMPLES_PNG = "samples.png"
SAMPLE_COUNT = 20

CACHE = StageCache(stage="preprocess", module=__name__)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) to float32 (N, 28, 28, 1) in [0, 1], as the tutorial does."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def prepare(out: Path, raw_entry: Path, train_limit: Optional[int]) -> dict[str, Any]:
    arrays = download.load_arrays(raw_entry)
    if train_limit is not None:
        arrays["train_images"] = arrays["train_images"][:train_limit]
        arrays["train_labels"] = arrays["train_labels"][:train_limit]
    for split in SPLITS:
        np.save(out / f"{split}_x.npy", scale(arrays[f"{split}_images"]))
        np.save(out / f"{split}_y.npy", arrays[f"{split}_labels"].astype(np.int64))
    plots.image_grid(
        arrays["train_images"][:SAMPLE_COUNT],
        [str(label) for label in arrays["train_labels"][:SAMPLE_COUNT]],
        out / SAMPLES_PNG,
    )
    return {
        "train_count": len(arrays["train_labels"]),
        "test_count": len(arrays["test_labels"]),
    }


def load_split(entry: Path, split: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    mode = "r" if mmap else None
    return np.load(entry / f"{split}_x.npy", mmap_mode=mode), np.load(entry / f"{split}_y.npy")


@stage_task(CACHE)
def preprocess_dataset(
    artifacts_dir: str, raw: DatasetRef, train_limit: Optional[int] = None
) -> PreparedRef:
    """Scale and reshape both splits and draw the 20-image sample grid."""
    raw_entry = ArtifactStore(artifacts_dir).path(raw)
    return CACHE.produce(
        lambda out: prepare(out, raw_entry, train_limit),
        artifacts_dir,
        raw=raw,
        train_limit=train_limit,
    )
