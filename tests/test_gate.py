from pathlib import Path

import pytest

from engine import champions, layout
from flows import gate
from engine.locking import FileLockManager
from tasks.refs import MetricsRef, ModelRef


TEST_DATA = "t" * 64


def test_under_the_threshold_is_refused():
    result = gate.judge(0.95, threshold=0.97, bar=None)
    assert not result.passed and "0.9500 is under the threshold 0.9700" in result.reason


def test_first_model_over_the_threshold_is_promoted():
    assert gate.judge(0.98, threshold=0.97, bar=None).passed


def test_worse_than_the_best_on_the_same_test_data_beyond_tolerance_is_refused():
    result = gate.judge(0.980, threshold=0.97, bar=0.990)
    assert not result.passed and "under 0.9900, the best promoted on the same test data" in result.reason
    assert result.champion_accuracy == 0.990


def test_within_tolerance_of_the_best_is_a_tie_and_the_champion_stays():
    result = gate.judge(0.990 - gate.TOLERANCE / 2, threshold=0.97, bar=0.990)
    assert not result.passed and result.verdict == gate.NOT_PROMOTED
    assert "ties with 0.9900, the best promoted on the same test data (within 0.005), and does not beat it" in result.reason


@pytest.mark.parametrize("bar", [0.990, 0.9715, 0.5])
def test_only_a_better_model_replaces_the_champion_to_the_last_bit(bar):
    import math

    assert gate.judge(math.nextafter(bar, 1.0), threshold=0.0, bar=bar).verdict == gate.PROMOTED
    assert "beats" in gate.judge(math.nextafter(bar, 1.0), threshold=0.0, bar=bar).reason
    # Equal is a tie; the tolerance's edge still a tie, one bit under it worse: neither replaces the champion.
    edge = bar - gate.TOLERANCE
    for accuracy, words in ((bar, "ties with"), (edge, "ties with"), (math.nextafter(edge, 0.0), "more than 0.005 under")):
        result = gate.judge(accuracy, threshold=0.0, bar=bar)
        assert not result.passed and words in result.reason, (accuracy, result.reason)
    assert gate.judge(bar, threshold=bar, bar=None).passed
    assert not gate.judge(math.nextafter(bar, 0.0), threshold=bar, bar=None).passed


def test_the_champions_own_model_is_already_the_champion_whatever_its_score():
    result = gate.judge(0.98, threshold=0.97, bar=0.98, already=True)
    assert result.passed and result.verdict == gate.ALREADY
    assert result.reason == "this model is the champion already, at test accuracy 0.9800"


def _refs(fingerprint: str, accuracy: float, test_data: str = TEST_DATA):
    model = ModelRef(stage="train", fingerprint=fingerprint, epochs_run=1, epoch_seconds=[1.0], device="CPU",
                     batch_size=32, train_count=1, validation_count=1, validated_on="validation",
                     validation_accuracy=accuracy, validation_loss=0.1)
    return model, MetricsRef(stage="evaluate", fingerprint="e" * 16, test_accuracy=accuracy, test_loss=0.1,
                             test_count=100, test_sha256=test_data)


def _decide(store: str, fingerprint: str, accuracy: float, run_id: str,
            test_data: str = TEST_DATA) -> gate.GateResult:
    """The gate's steps as a run takes them: judge, then promote if passed, under the champion's lock."""
    model, metrics = _refs(fingerprint, accuracy, test_data)
    with champions.champion_lock(FileLockManager(Path(store) / ".locks"), "mnist"):
        verdict = gate.gate_model(store, "mnist", model, metrics, 0.97)
        if verdict.verdict == gate.PROMOTED:
            gate.promote(store, "mnist", model, metrics, run_id)
    return verdict


def test_champion_record_follows_the_gate(tmp_path):
    store = str(tmp_path)
    assert _decide(store, "a" * 16, 0.98, "run-1").passed
    assert champions.read_champion(store, "mnist").model == "a" * 16
    assert not _decide(store, "b" * 16, 0.96, "run-2").passed
    assert champions.read_champion(store, "mnist").model == "a" * 16
    assert _decide(store, "c" * 16, 0.99, "run-3").passed
    champion = champions.read_champion(store, "mnist")
    assert (champion.model, champion.flow_run_id, champion.model_path) == ("c" * 16, "run-3", "train/" + "c" * 16)
    # The same model again (a cached rerun): already the champion; the record keeps the run that promoted it.
    assert _decide(store, "c" * 16, 0.99, "run-4").verdict == gate.ALREADY
    assert champions.read_champion(store, "mnist").flow_run_id == "run-3"
    # A model as good as the champion, or a little worse (a 2-epoch model within the tolerance), never replaces it.
    assert _decide(store, "d" * 16, 0.99, "run-5").verdict == gate.NOT_PROMOTED
    assert _decide(store, "e" * 16, 0.99 - gate.TOLERANCE / 2, "run-6").verdict == gate.NOT_PROMOTED
    assert champions.read_champion(store, "mnist").model == "c" * 16
    assert champions.read_champion(store, "fashion_mnist") is None


@pytest.mark.parametrize("record", ['{"model": "aaaa', "42", "null", '{"model": "../../x", "test_accuracy": 0.99}',
                                    '{"model": "aaaaaaaaaaaaaaaa", "test_accuracy": "0.99", "flow_run_id": "r"}'])
def test_a_damaged_champion_record_is_judged_as_none_and_kept_as_evidence(tmp_path, caplog, record):
    store = str(tmp_path)
    path = layout.champion(store, "mnist")
    path.parent.mkdir(parents=True)
    path.write_text(record)
    with pytest.raises(champions.ChampionDamaged, match=f"the mnist champion record {path} is damaged"):
        champions.read_champion(store, "mnist")
    verdict = _decide(store, "d" * 16, 0.98, "run-4")
    assert verdict.passed and verdict.champion_accuracy is None
    assert f"the mnist champion record {path} is damaged" in caplog.text
    assert champions.read_champion(store, "mnist").model == "d" * 16
    [evidence] = path.parent.glob("mnist.json.damaged-*")
    assert evidence.read_text() == record


@pytest.mark.parametrize("dataset, default", [("mnist", 0.95), ("fashion_mnist", 0.80)])
def test_threshold_defaults_per_dataset(dataset, default):
    from flows.config import PipelineConfig

    assert PipelineConfig(dataset=dataset).threshold == default
    assert PipelineConfig(dataset=dataset, accuracy_threshold=0.5).threshold == 0.5


def test_promotion_waits_for_another_runs_judgement(tmp_path):
    import threading
    import time

    store = str(tmp_path)
    results = []
    # Another run (another lock manager: its own open file) is judging right now.
    with champions.champion_lock(FileLockManager(tmp_path / ".locks"), "mnist"):
        judge = threading.Thread(target=lambda: results.append(_decide(store, "a" * 16, 0.98, "run-1")))
        judge.start()
        time.sleep(0.5)
        assert results == [] and champions.read_champion(store, "mnist") is None
    judge.join(timeout=10)
    assert results[0].passed and champions.read_champion(store, "mnist").model == "a" * 16



def test_a_run_on_other_test_data_is_judged_against_the_threshold_alone(tmp_path):
    store = str(tmp_path)
    assert _decide(store, "a" * 16, 0.9764, "run-1", test_data="1" * 64).passed
    # Measured on another mirror's test images: 0.9700 is not "under the champion's 0.9764".
    verdict = _decide(store, "b" * 16, 0.9700, "run-2", test_data="2" * 64)
    assert verdict.passed and verdict.champion_accuracy is None
    assert "measured on other test data, so it was judged against the threshold alone" in verdict.reason
    champion = champions.read_champion(store, "mnist")
    assert (champion.model, champion.test_sha256) == ("b" * 16, "2" * 64)
    # Back on the first test data, the bar is still what was promoted there.
    refused = _decide(store, "c" * 16, 0.9700, "run-3", test_data="1" * 64)
    assert not refused.passed and refused.champion_accuracy == 0.9764


def test_promotions_cannot_ratchet_down():
    import tempfile

    store = tempfile.mkdtemp()
    # Five runs, each 0.004 under the last: within the tolerance of the last one every time, better never.
    accuracies = [0.990 - 0.004 * i for i in range(5)]
    passed = [_decide(store, f"{i:016x}", accuracy, f"run-{i}").passed for i, accuracy in enumerate(accuracies)]
    assert passed == [True, False, False, False, False]
    assert champions.read_champion(store, "mnist").best == {TEST_DATA: 0.990}
