import matplotlib.image
import numpy as np

from tasks import preprocess
from flows.stages import download_dataset, preprocess_dataset
from tasks.engine.refs import PreparedRef
from tasks.engine.store import ArtifactStore


def test_scale_gives_float32_in_unit_range_with_a_channel():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    scaled = preprocess.scale(images)
    assert scaled.dtype == np.float32
    assert scaled.shape == (1, 2, 2, 1)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.isclose(scaled[0, 1, 0, 0], 0.2)


def test_stage_writes_both_splits_and_the_sample_grid(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    ref = preprocess_dataset.fn(store, raw, train_limit=50)
    entry = ArtifactStore(store).path(ref)
    x_train, y_train = ref.at(store).split("train")
    x_test, _ = ref.at(store).split("test")
    assert (ref.train_count, ref.test_count) == (50, 100)
    assert x_train.shape == (50, 28, 28, 1) and x_test.shape == (100, 28, 28, 1)
    assert len(y_train) == 50
    grid = matplotlib.image.imread(entry / PreparedRef.SAMPLES)
    assert grid.shape[1] > 2 * grid.shape[0]  # two rows of ten


def test_train_limit_changes_the_fingerprint(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    assert preprocess_dataset.fn(store, raw, 50).fingerprint != preprocess_dataset.fn(store, raw).fingerprint
