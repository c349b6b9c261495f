"""What the benchmarks that train in their own process share: the data and the model as the train stage has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import idx
from tasks.pixels import scaled
from tasks.train import build_model


def training_split(mirror: str) -> tuple[np.ndarray, np.ndarray]:
    """A mirror's training images as the model sees them (28x28x1 float32 in [0, 1]), and their labels."""
    x, y = (idx.read(idx.locate(Path(mirror), idx.FILES[role]), role).array
            for role in ("train_images", "train_labels"))
    return scaled(x.reshape(-1, 28, 28, 1)), y.astype("int64")


def tutorial_model():
    """The tutorial's CNN compiled as it compiles it (Adam 1e-3, sparse cross-entropy on logits), seed 0."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
