from pathlib import Path

import pandas as pd
import pytest

from tasks import train
from tasks.store import ArtifactStore
from tests.stages import PARAMS, run_stages


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mirror):
    store = str(tmp_path_factory.mktemp("artifacts"))
    return store, run_stages(store, mirror, upto="train")["model"]


def test_model_is_the_tutorials_cnn():
    model = train.build_model()
    assert model.count_params() == 121_930
    assert [layer.__class__.__name__ for layer in model.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense",
    ]
    assert model.output_shape == (None, 10)


def test_training_learns_the_synthetic_classes(trained):
    store, ref = trained
    history = train.load_history(ArtifactStore(store).path(ref))
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["val_accuracy"].iloc[-1] >= 0.9  # 0.96 at most: 4 test labels are wrong
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_stage_records_model_times_and_device(trained):
    store, ref = trained
    entry = ArtifactStore(store).path(ref)
    assert ref.epochs_run == PARAMS.epochs == len(ref.epoch_seconds)
    assert ref.device in {"CPU", "GPU"}
    assert ref.resumed_from_epoch is None
    assert (entry / train.MODEL).stat().st_size > 0
    assert "121,930" in (entry / train.SUMMARY).read_text()


@pytest.mark.parametrize("schedule, done, share", [
    ("cosine", 0.0, 1.0), ("cosine", 0.5, 0.5), ("cosine", 1.0, 0.0), ("constant", 0.7, 1.0),
])
def test_learning_rate_schedule(schedule, done, share):
    params = PARAMS.model_copy(update={"learning_rate": 0.004, "lr_schedule": schedule})
    assert train.learning_rate_at(params, done) == pytest.approx(0.004 * share)


def test_training_follows_the_cosine_schedule_to_its_last_batch(trained, mirror):
    import keras

    store, ref = trained
    model = keras.models.load_model(ArtifactStore(store).path(ref) / train.MODEL, safe_mode=True)
    images = run_stages(store, mirror, upto="preprocess")["data"].train_count  # served from the store
    steps = -(-images // PARAMS.batch_size)
    last_batch = (PARAMS.epochs - 1 + (steps - 1) / steps) / PARAMS.epochs
    assert PARAMS.lr_schedule == "cosine"
    assert float(model.optimizer.learning_rate) == pytest.approx(train.learning_rate_at(PARAMS, last_batch), rel=1e-5)


def test_progress_line_per_epoch(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = run_stages(store, mirror, upto="preprocess")["data"]
    out = tmp_path / "out"
    out.mkdir()
    lines = []
    train.fit(out, ArtifactStore(store).path(data), PARAMS.model_copy(update={"epochs": 2}), lines.append,
              tmp_path / "checkpoints")
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in lines[0]


def test_a_diverging_training_fails_and_keeps_no_checkpoint(mirror, tmp_path):
    import numpy as np

    from tasks import checkpoint

    store = str(tmp_path / "artifacts")
    data = ArtifactStore(store).path(run_stages(store, mirror, upto="preprocess")["data"])
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    for name in ("train_y.npy", "test_x.npy", "test_y.npy"):
        (poisoned / name).write_bytes((data / name).read_bytes())
    x = np.load(data / "train_x.npy")
    x[:] = np.nan  # what an infinite learning rate makes of the weights
    np.save(poisoned / "train_x.npy", x)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(checkpoint.TrainingDiverged, match="training diverged: the loss is nan after epoch 1"):
        train.fit(out, poisoned, PARAMS, print, tmp_path / "checkpoints")
    assert checkpoint.latest(tmp_path / "checkpoints") is None
    assert not (out / train.MODEL).exists()


def test_history_is_a_csv_pandas_reads(trained):
    store, ref = trained
    table = pd.read_csv(ArtifactStore(store).path(ref) / train.HISTORY)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(table.columns)


def test_resumed_training_matches_an_uninterrupted_run(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = ArtifactStore(store).path(run_stages(store, mirror, upto="preprocess")["data"])
    params = PARAMS.model_copy(update={"epochs": 3})

    def fit(name, checkpoints, say=lambda line: None):
        (tmp_path / name).mkdir()
        return train.fit(tmp_path / name, data, params, say, checkpoints)

    class Crash(Exception):
        pass

    def crash_after_epoch_two(line):
        if line.startswith("epoch 2/3"):  # said once epoch 2's checkpoint is safe
            raise Crash

    whole = fit("whole", tmp_path / "ckpt-whole")
    # A run that dies after two epochs leaves its checkpoint; the next one picks it up.
    assert train.progress_at_start(params, tmp_path / "ckpt") == 0.0
    with pytest.raises(Crash):
        fit("crashed", tmp_path / "ckpt", say=crash_after_epoch_two)
    # The progress shown in the UI starts where the checkpoint leaves training, never back at 0.
    assert train.progress_at_start(params, tmp_path / "ckpt") == 66.7
    resumed = fit("resumed", tmp_path / "ckpt")

    assert (resumed["resumed_from_epoch"], resumed["epochs_run"]) == (2, 1)
    assert (whole["resumed_from_epoch"], whole["epochs_run"]) == (None, 3)
    a = train.load_history(tmp_path / "whole")
    b = train.load_history(tmp_path / "resumed")
    assert list(b["epoch"]) == [1, 2, 3]
    assert b["val_loss"].to_numpy() == pytest.approx(a["val_loss"].to_numpy(), rel=1e-4)


def test_gpu_out_of_memory_retries_with_half_the_batch(mirror, tmp_path, monkeypatch):
    import tensorflow as tf

    from tasks.retries import is_transient

    store = str(tmp_path / "artifacts")
    data = ArtifactStore(store).path(run_stages(store, mirror, upto="preprocess")["data"])
    real_order = train.epoch_order

    def tight_memory(dataset, size, seed, epoch, batch_size):
        if batch_size > 8:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_order(dataset, size, seed, epoch, batch_size)

    monkeypatch.setattr(train, "epoch_order", tight_memory)
    params = PARAMS.model_copy(update={"epochs": 1})
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception) as failure:
        train.fit(tmp_path / "out", data, params, lambda line: None, tmp_path / "ckpt")
    assert is_transient(failure.value) and "batch size 16; the next try uses 8" in str(failure.value)
    info = train.fit(tmp_path / "out", data, params, lambda line: None, tmp_path / "ckpt")
    assert info["batch_size"] == 8
    assert info["notes"] == ["batch size 16 ran out of GPU memory; trained with 8"]


def test_unreadable_checkpoint_means_starting_over(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = ArtifactStore(store).path(run_stages(store, mirror, upto="preprocess")["data"])
    params = PARAMS.model_copy(update={"epochs": 2})
    damaged = tmp_path / "ckpt" / "epoch-0001"
    damaged.mkdir(parents=True)
    (damaged / "model.keras").write_bytes(b"cut short by a power loss")
    (damaged / "state.json").write_text('{"history": [{"epoch": 1}]}')
    (tmp_path / "out").mkdir()
    lines = []
    info = train.fit(tmp_path / "out", data, params, lines.append, tmp_path / "ckpt")
    assert info["resumed_from_epoch"] is None and info["epochs_run"] == 2
    assert "is unreadable" in lines[0]


def test_a_checkpoint_that_fills_the_disk_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import os

    from tasks import checkpoint
    from tasks.store import StoreError

    class Model:
        def save(self, path):
            Path(path).write_bytes(b"half a model")
            raise OSError(28, "No space left on device")

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(StoreError, match="no space left on device while writing the checkpoint of epoch 1"):
        checkpoint.save(tmp_path / "checkpoints", Model(), [{"epoch": 1}])
    assert list((tmp_path / "checkpoints").iterdir()) == []
