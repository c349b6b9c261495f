"""predict on photos of digits on paper: the champion of a short run on real digits reads them about as
well as it reads the same digits as clean 28x28 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.store import ArtifactStore
from flows.config import train_params
from flows.stages import download_dataset, preprocess_dataset, train_model
from tasks import idx, predict
from tests.photos import SIZES, photo

DIGITS = Path(__file__).resolve().parent.parent / "data" / "mnist"
PER_CLASS = 15


@pytest.fixture(scope="module")
def real_digits():
    if not (DIGITS / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{DIGITS} holds no real digits: `make data` fetches them (make test does it first)")
    return DIGITS


@pytest.fixture(scope="module")
def short_run_model(real_digits, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("photos") / "artifacts")
    raw = download_dataset.fn(store, "mnist", str(real_digits))
    data = preprocess_dataset.fn(store, raw)
    model = train_model.fn(store, data, train_params(epochs=3, batch_size=64))
    return predict.load_model(model.at(ArtifactStore(store).root).model_file)


def _test_digits() -> tuple[np.ndarray, np.ndarray]:
    images = idx.read(idx.locate(DIGITS, "t10k-images-idx3-ubyte"), "test_images").array
    labels = idx.read(idx.locate(DIGITS, "t10k-labels-idx1-ubyte"), "test_labels").array
    chosen = np.concatenate([np.flatnonzero(labels == digit)[:PER_CLASS] for digit in range(10)])
    return images[chosen], labels[chosen]


def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict.classify(model, images).argmax(axis=1) == labels).mean())


def test_photos_of_digits_on_paper_read_almost_as_well_as_the_clean_digits(short_run_model, tmp_path):
    digits, labels = _test_digits()
    rng = np.random.default_rng(25)
    files = []
    for number, digit in enumerate(digits):
        path = tmp_path / f"{number}.jpg"
        # A third of them with the table's edge beside the page, a third with a shadow across it.
        path.write_bytes(photo(digit, rng, SIZES[number % len(SIZES)], around=["", "table", "shadow"][number % 3]))
        files.append(path)
    clean = _accuracy(short_run_model, digits[..., np.newaxis].astype(np.float32) / 255, labels)
    photos = _accuracy(short_run_model, np.stack([predict.prepare(path) for path in files]), labels)
    assert photos >= 0.90, (photos, clean)
    assert photos >= 0.95 * clean, (photos, clean)
