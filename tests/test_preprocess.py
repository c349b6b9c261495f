import numpy as np

from tasks import pixels, preprocess
from flows.stages import download_dataset, preprocess_dataset
from engine.store import ArtifactStore


def test_the_entry_keeps_uint8_pixels_with_a_channel_and_scaling_gives_the_tutorials_floats():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    kept = preprocess.reshape(images)
    assert kept.dtype == np.uint8 and kept.shape == (1, 2, 2, 1)
    scaled = pixels.scaled(kept)
    assert scaled.dtype == np.float32 and scaled.shape == (1, 2, 2, 1)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    # Bit for bit what the tutorial computes: x / 255.0 in float32.
    assert np.array_equal(scaled[..., 0], images.astype("float32") / 255.0)


def test_stage_writes_both_splits_and_nothing_the_report_draws(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    ref = preprocess_dataset.fn(store, raw, train_limit=50)
    entry = ArtifactStore(store).path(ref)
    x_train, y_train = ref.at(store).split("train")
    x_test, _ = ref.at(store).split("test")
    assert (ref.train_count, ref.test_count) == (50, 100)
    assert x_train.shape == (50, 28, 28, 1) and x_test.shape == (100, 28, 28, 1)
    assert x_train.dtype == np.uint8  # a quarter of float32's bytes
    assert len(y_train) == 50
    assert not list(entry.glob("*.png"))  # the sample grid is the report's: a figure's change trains nothing


def test_train_limit_changes_the_fingerprint(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    assert preprocess_dataset.fn(store, raw, 50).fingerprint != preprocess_dataset.fn(store, raw).fingerprint


def test_the_validation_split_is_the_last_share_of_training_and_holds_no_test_image(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    ref = preprocess_dataset.fn(store, raw, train_limit=200, validation_split=0.1).at(store)
    assert (ref.train_count, ref.validation_count, ref.test_count) == (180, 20, 100)
    assert ref.validated_on == "validation" and ref.test_sha256 == raw.test_sha256
    arrays = raw.at(store).arrays()
    x_train, _ = ref.split("train")
    x_val, y_val = ref.split("validation")
    x_test, _ = ref.split("test")
    # The held-out images are the last 20 of the 200 used, and training keeps the first 180.
    assert np.array_equal(x_val[..., 0], arrays["train_images"][180:200])
    assert np.array_equal(y_val, arrays["train_labels"][180:200])
    assert np.array_equal(x_train[..., 0], arrays["train_images"][:180])
    seen = {image.tobytes() for image in np.concatenate([x_train, x_val])}
    assert not [image for image in x_test if image.tobytes() in seen]


def test_no_validation_split_means_validating_on_test_as_the_tutorial(mirror, store):
    raw = download_dataset.fn(store, "mnist", str(mirror))
    ref = preprocess_dataset.fn(store, raw, validation_split=0.0)
    assert (ref.train_count, ref.validation_count, ref.validated_on) == (256, 0, "test")
    assert not (ArtifactStore(store).path(ref) / "validation_x.npy").exists()
    assert ref.fingerprint != preprocess_dataset.fn(store, raw, validation_split=0.1).fingerprint


def test_validation_size_keeps_at_least_one_image_on_each_side():
    assert [preprocess.validation_size(n, 0.1) for n in (0, 1, 2, 5, 10, 256)] == [0, 0, 1, 1, 1, 26]
    assert preprocess.validation_size(10, 0.99) == 9 and preprocess.validation_size(10, 0.0) == 0
