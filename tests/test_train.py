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


def test_progress_line_per_epoch(mirror, tmp_path):
    store = str(tmp_path / "artifacts")
    data = run_stages(store, mirror, upto="preprocess")["data"]
    out = tmp_path / "out"
    out.mkdir()
    lines = []
    train.fit(out, ArtifactStore(store).path(data), PARAMS.model_copy(update={"epochs": 2}), lines.append)
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in lines[0]


def test_history_is_a_csv_pandas_reads(trained):
    store, ref = trained
    table = pd.read_csv(ArtifactStore(store).path(ref) / train.HISTORY)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(table.columns)
