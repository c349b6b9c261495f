import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import train
from tasks.refs import ModelRef
from engine.store import ArtifactStore
from tests.stages import PARAMS, run_stages


class _Log:
    def __init__(self, say=lambda line: None):
        self.info = self.warning = say


def fit(out, data, params, say=lambda line: None, checkpoints=None, progress=lambda percent: None):
    """The train stage's plain function, as the stage decorator calls it."""
    Path(out).mkdir(parents=True, exist_ok=True)
    return train.train_model(out, data, params, work=checkpoints, log=_Log(say), progress=progress)


def _prepared(store, mirror):
    return run_stages(store, mirror, upto="preprocess")["data"].at(store)


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
    history = ref.at(store).history()
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["val_accuracy"].iloc[-1] >= 0.9  # 0.96 at most: 4 test labels are wrong
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_stage_records_model_times_and_device(trained):
    store, ref = trained
    entry = ArtifactStore(store).path(ref)
    assert ref.epochs_run == PARAMS.epochs == len(ref.epoch_seconds)
    assert ref.device in {"CPU", "GPU"}
    assert ref.resumed_from_epoch is None
    assert (entry / ModelRef.MODEL).stat().st_size > 0
    assert "121,930" in ref.at(store).summary()


def test_the_cosine_schedule_falls_to_zero_over_every_step_and_constant_stays(trained, mirror):
    import keras
    import tensorflow as tf

    store, ref = trained
    model = keras.models.load_model(ref.at(store).model_file, safe_mode=True)
    images = run_stages(store, mirror, upto="preprocess")["data"].train_count  # served from the store
    steps = PARAMS.epochs * -(-images // PARAMS.batch_size)
    assert PARAMS.lr_schedule == "cosine" and int(model.optimizer.iterations) == steps
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # after the last step
    for schedule, halfway in (("cosine", 0.5), ("constant", 1.0)):
        optimizer = train._compiled_model(PARAMS.model_copy(update={"lr_schedule": schedule}), steps, None,
                                          tf.distribute.get_strategy()).optimizer
        assert float(optimizer.learning_rate) == pytest.approx(PARAMS.learning_rate)  # at the first step
        optimizer.iterations.assign(steps // 2)
        assert float(optimizer.learning_rate) == pytest.approx(PARAMS.learning_rate * halfway, rel=0.05)


def test_progress_line_per_epoch(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    lines = []
    fit(tmp_path / "out", _prepared(store, mirror), PARAMS.model_copy(update={"epochs": 2}), lines.append,
        tmp_path / "checkpoints")
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in lines[0]


def test_a_diverging_training_fails_and_keeps_no_checkpoint(mirror, tmp_path, monkeypatch):
    import numpy as np

    from tasks import checkpoint

    store = str(tmp_path / "artifacts")
    data = _prepared(store, mirror)
    built = train.build_model

    def diverged(layer):
        """What an infinite learning rate makes of the weights: NaN, here in one layer's bias."""
        def build():
            model = built()
            model.layers[layer].bias.assign(np.full(model.layers[layer].bias.shape, np.nan, np.float32))
            return model
        return build

    # NaN in the logits' layer makes the loss NaN; NaN in the first convolution need not, as
    # oneDNN's fused convolution and ReLU turn NaN into 0: the weights are checked too.
    for layer, reason in ((-1, "the loss is nan"), (0, "the weights are not all finite")):
        monkeypatch.setattr(train, "build_model", diverged(layer))
        out = tmp_path / f"out{layer}"
        with pytest.raises(checkpoint.TrainingDiverged, match=f"training diverged: {reason} after epoch 1"):
            fit(out, data, PARAMS, print, tmp_path / f"checkpoints{layer}")
        assert checkpoint.latest(tmp_path / f"checkpoints{layer}") is None
        assert not (out / ModelRef.MODEL).exists()


def test_history_is_a_csv_pandas_reads(trained):
    store, ref = trained
    table = pd.read_csv(ArtifactStore(store).path(ref) / ModelRef.HISTORY)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(table.columns)


def test_resumed_training_matches_an_uninterrupted_run(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = _prepared(store, mirror)
    params = PARAMS.model_copy(update={"epochs": 3})

    def fit_into(name, checkpoints, say=lambda line: None, progress=lambda percent: None):
        return fit(tmp_path / name, data, params, say, checkpoints, progress=progress)

    class Crash(Exception):
        pass

    def crash_after_epoch_two(line):
        if line.startswith("epoch 2/3"):  # said once epoch 2's checkpoint is safe
            raise Crash

    shown = []
    whole = fit_into("whole", tmp_path / "ckpt-whole", progress=shown.append)
    assert shown[0] == 0.0 and shown[-1] == 100.0
    # A run that dies after two epochs leaves its checkpoint; the next one picks it up.
    with pytest.raises(Crash):
        fit_into("crashed", tmp_path / "ckpt", say=crash_after_epoch_two)
    # The progress shown in the UI starts where the checkpoint leaves training, never back at 0.
    shown = []
    resumed = fit_into("resumed", tmp_path / "ckpt", progress=shown.append)
    assert shown[0] == pytest.approx(200 / 3) and shown == sorted(shown)

    assert (resumed["resumed_from_epoch"], resumed["epochs_run"]) == (2, 1)
    assert (whole["resumed_from_epoch"], whole["epochs_run"]) == (None, 3)
    a = pd.read_csv(tmp_path / "whole" / ModelRef.HISTORY)
    b = pd.read_csv(tmp_path / "resumed" / ModelRef.HISTORY)
    assert list(b["epoch"]) == [1, 2, 3]
    assert b["val_loss"].to_numpy() == pytest.approx(a["val_loss"].to_numpy(), rel=1e-4)
    # Epoch 3 saw the batches, in the order, an uninterrupted run sees: the same training loss and weights.
    assert b["loss"].iloc[-1] == pytest.approx(a["loss"].iloc[-1], rel=1e-4)
    import keras

    # TensorBoard's curves go on where they stopped: one point per epoch, none twice, as uninterrupted.
    for run in ("whole", "resumed"):
        assert sorted(_tensorboard_points(tmp_path / run / ModelRef.TENSORBOARD)[("validation", "epoch_accuracy")]) \
            == [0, 1, 2], run
    weights = [keras.models.load_model(tmp_path / run / ModelRef.MODEL).get_weights() for run in ("whole", "resumed")]
    for left, right in zip(*weights):
        np.testing.assert_allclose(right, left, rtol=1e-3, atol=1e-5)


def test_unreadable_checkpoint_means_starting_over(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = _prepared(store, mirror)
    params = PARAMS.model_copy(update={"epochs": 2})
    damaged = tmp_path / "ckpt" / "epoch-0001"
    damaged.mkdir(parents=True)
    (damaged / "model.keras").write_bytes(b"cut short by a power loss")
    (damaged / "state.json").write_text('{"history": [{"epoch": 1}]}')
    lines = []
    info = fit(tmp_path / "out", data, params, lines.append, tmp_path / "ckpt")
    assert info["resumed_from_epoch"] is None and info["epochs_run"] == 2
    assert "is unreadable" in lines[0]


def test_a_checkpoint_that_fills_the_disk_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import os

    from tasks import checkpoint
    from engine.store import StoreError

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


@pytest.mark.parametrize("gpus, tf_config, name", [
    (0, None, "default"), (1, None, "default"), (2, None, "MirroredStrategy"), (8, "", "MirroredStrategy"),
    (1, '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}',
     "MultiWorkerMirroredStrategy"),
])
def test_strategy_follows_the_gpus_and_tf_config(gpus, tf_config, name):
    from tasks import runtime

    assert runtime.strategy_name(gpus, tf_config) == name


def _steps_taken(model_file) -> int:
    import keras

    return int(keras.models.load_model(model_file).optimizer.iterations.numpy())


def test_training_runs_inside_the_distribution_strategy(tmp_path, trained, mirror, monkeypatch):
    """The path several GPUs take, on CPU with a one-device strategy: the model is built in its scope."""
    import tensorflow as tf

    store, _ = trained
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    built_under = []
    build = train.build_model
    monkeypatch.setattr(train, "distribution", lambda: strategy)
    monkeypatch.setattr(train, "build_model", lambda: built_under.append(tf.distribute.get_strategy()) or build())
    info = fit(tmp_path / "out", _prepared(store, mirror), PARAMS.model_copy(update={"epochs": 1}),
               checkpoints=tmp_path / "work")
    assert built_under == [strategy]
    assert info["replicas"] == 1
    assert _steps_taken(tmp_path / "out" / ModelRef.MODEL) == math.ceil(info["train_count"] / PARAMS.batch_size)


_TWO_REPLICAS = """
import json, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tasks import train
from tests.test_train import fit
from tasks.refs import PreparedRef
train.distribution = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
data = PreparedRef.model_validate_json(sys.argv[1]).at(sys.argv[2])
from tasks.params import TrainParams
params = TrainParams.model_validate_json(sys.argv[5])
print(json.dumps(fit(Path(sys.argv[3]), data, params, checkpoints=Path(sys.argv[4]))))
"""


@pytest.mark.e2e
def test_two_replicas_split_a_global_batch_of_twice_the_batch_size(tmp_path, trained, mirror):
    """A MirroredStrategy over two logical CPUs: each step takes batch_size images per replica."""
    store, _ = trained
    data = _prepared(store, mirror)
    params = PARAMS.model_copy(update={"epochs": 1})
    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, data.model_dump_json(), store, str(tmp_path / "out"),
                           str(tmp_path / "work"), params.model_dump_json()], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["replicas"] == 2 and info["batch_size"] == params.batch_size
    assert _steps_taken(tmp_path / "out" / ModelRef.MODEL) == math.ceil(data.train_count / (2 * params.batch_size))


def test_several_replicas_make_another_training_and_one_device_changes_no_key(monkeypatch):
    from flows.stages import train_model
    from tasks.refs import PreparedRef
    from tests.stages import PARAMS

    data = PreparedRef(stage="preprocess", fingerprint="0" * 16, train_count=10, validation_count=1, test_count=5,
                       test_sha256="a" * 64)
    key = lambda: train_model.cache_policy.fingerprint({"artifacts_dir": "a", "data": data, "params": PARAMS})
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(train, "visible_gpus", lambda: 0)
    on_cpu = key()
    monkeypatch.setattr(train, "visible_gpus", lambda: 1)
    assert key() == on_cpu
    monkeypatch.setattr(train, "visible_gpus", lambda: 4)
    assert key() != on_cpu


@pytest.mark.parametrize("listed, chosen, visible", [
    (4, None, 4), (4, "0,1", 2), (4, "", 0), (4, "-1", 0), (2, "0,1,2,3", 2), (0, "0", 0), (4, "1,-1,2", 1),
])
def test_visible_gpus_follows_the_driver_and_cuda_visible_devices(listed, chosen, visible, monkeypatch, tmp_path):
    from tasks import runtime

    monkeypatch.setattr(runtime.os, "listdir", lambda path: [f"gpu{i}" for i in range(listed)] if listed
                        else (_ for _ in ()).throw(FileNotFoundError(path)))
    if chosen is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", chosen)
    assert runtime.visible_gpus() == visible


_ONEDNN_ON = """
from tasks.runtime import tensorflow
tensorflow()
from tensorflow.python.util import _pywrap_util_port
print(_pywrap_util_port.IsMklEnabled())
"""


def test_the_stages_train_with_onednn_kernels_unless_the_environment_says_otherwise():
    """TensorFlow leaves oneDNN off on CPUs without AVX-512; the stages turn it on, and a caller's 0 stands."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", _ONEDNN_ON], capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
    kept = subprocess.run([sys.executable, "-c", "import os, tasks; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"],
                          capture_output=True, text=True, cwd=root, env={**env, "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert kept.stdout.strip() == "0", kept.stderr[-3000:]


def _tensorboard_points(folder: Path) -> dict[tuple[str, str], list[int]]:
    """Each (train|validation, tag)'s steps, from the event files Keras's TensorBoard callback wrote."""
    import tensorflow as tf

    points: dict[tuple[str, str], list[int]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                points.setdefault((events.parent.name, value.tag), []).append(event.step)
    return points


def test_the_train_entry_holds_tensorboard_curves_a_point_per_epoch(trained):
    store, ref = trained
    points = _tensorboard_points(ArtifactStore(store).path(ref) / ModelRef.TENSORBOARD)
    epochs = list(range(ref.epochs_run))
    for split, tag in [("train", "epoch_loss"), ("train", "epoch_accuracy"), ("train", "epoch_learning_rate"),
                       ("validation", "epoch_loss"), ("validation", "epoch_accuracy")]:
        assert sorted(points[(split, tag)]) == epochs, (split, tag, points)
