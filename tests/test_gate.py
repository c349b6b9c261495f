import pytest

from tasks import gate
from tasks.refs import MetricsRef, ModelRef


def test_under_the_threshold_is_refused():
    result = gate.judge(0.95, threshold=0.97, champion_accuracy=None)
    assert not result.passed and "0.9500 is under the threshold 0.9700" in result.reason


def test_first_model_over_the_threshold_is_promoted():
    assert gate.judge(0.98, threshold=0.97, champion_accuracy=None).passed


def test_worse_than_the_champion_beyond_tolerance_is_refused():
    result = gate.judge(0.980, threshold=0.97, champion_accuracy=0.990)
    assert not result.passed and "under the champion's 0.9900" in result.reason
    assert result.champion_accuracy == 0.990


def test_within_tolerance_of_the_champion_is_promoted():
    assert gate.judge(0.990 - gate.TOLERANCE / 2, threshold=0.97, champion_accuracy=0.990).passed


def _refs(fingerprint: str, accuracy: float):
    model = ModelRef(stage="train", fingerprint=fingerprint, epochs_run=1, epoch_seconds=[1.0],
                     device="CPU", batch_size=32)
    return model, MetricsRef(stage="evaluate", fingerprint="e" + fingerprint, test_accuracy=accuracy, test_loss=0.1)


def test_champion_record_follows_the_gate(tmp_path):
    store = str(tmp_path)
    assert gate.gate_model.fn(store, "mnist", *_refs("aaa", 0.98), 0.97, "run-1").passed
    assert gate.read_champion(store, "mnist")["model"] == "aaa"
    assert not gate.gate_model.fn(store, "mnist", *_refs("bbb", 0.96), 0.97, "run-2").passed
    assert gate.read_champion(store, "mnist")["model"] == "aaa"
    assert gate.gate_model.fn(store, "mnist", *_refs("ccc", 0.99), 0.97, "run-3").passed
    champion = gate.read_champion(store, "mnist")
    assert (champion["model"], champion["flow_run_id"]) == ("ccc", "run-3")
    assert gate.read_champion(store, "fashion_mnist") is None


@pytest.mark.parametrize("dataset, default", [("mnist", 0.95), ("fashion_mnist", 0.80)])
def test_threshold_defaults_per_dataset(dataset, default):
    from tasks.config import PipelineConfig

    assert PipelineConfig(dataset=dataset).threshold == default
    assert PipelineConfig(dataset=dataset, accuracy_threshold=0.5).threshold == 0.5


def test_promotion_waits_for_another_runs_judgement(tmp_path):
    import fcntl
    import threading
    import time

    store = str(tmp_path)
    lock_path = gate.champion_path(store, "mnist").with_suffix(".lock")
    lock_path.parent.mkdir(parents=True)
    results = []
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run is judging right now
        judge = threading.Thread(
            target=lambda: results.append(gate.gate_model.fn(store, "mnist", *_refs("aaa", 0.98), 0.97, "run-1")))
        judge.start()
        time.sleep(0.5)
        assert results == [] and gate.read_champion(store, "mnist") is None
    judge.join(timeout=10)
    assert results[0].passed and gate.read_champion(store, "mnist")["model"] == "aaa"
