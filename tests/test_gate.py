from pathlib import Path

import pytest

from engine import champions, layout
from flows import gate
from engine.locking import FileLockManager
from engine.store import StoreError
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
    assert result.passed and result.verdict == gate.ALREADY and result.champion_accuracy == 0.98
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


def test_the_bar_is_the_best_promoted_on_the_same_test_data_the_record_itself_included():
    older = champions.Champion(model="a" * 16, test_accuracy=0.97, flow_run_id="r", test_sha256=TEST_DATA)
    assert older.bar(TEST_DATA) == 0.97  # a record from before `best` was kept
    assert older.bar("o" * 64) is None
    champion = older.model_copy(update={"best": {TEST_DATA: 0.99, "o" * 64: 0.95}})
    assert (champion.bar(TEST_DATA), champion.bar("o" * 64), champion.bar("n" * 64)) == (0.99, 0.95, None)
    assert older.model_copy(update={"best": {TEST_DATA: 0.96}}).bar(TEST_DATA) == 0.97


def test_the_gates_reasons_word_for_word():
    assert gate.judge(0.98, threshold=0.97, bar=None).reason == "test accuracy 0.9800 reaches the threshold 0.9700"
    beats = gate.judge(0.995, threshold=0.97, bar=0.99)
    assert beats.reason == ("test accuracy 0.9950 reaches the threshold 0.9700 and beats 0.9900, the best "
                            "promoted on the same test data") and beats.champion_accuracy == 0.99
    tie = gate.judge(0.99, threshold=0.97, bar=0.99)
    assert tie.reason == ("test accuracy 0.9900 ties with 0.9900, the best promoted on the same test data (within "
                          "0.005), and does not beat it: the champion stays") and tie.champion_accuracy == 0.99
    alone = gate.judge(0.97, threshold=0.95, bar=None, other_data=True)
    assert alone.reason == ("test accuracy 0.9700 reaches the threshold 0.9500; the champion was measured on other "
                            "test data, so it was judged against the threshold alone")
    under = gate.judge(0.95, threshold=0.97, bar=0.99)
    assert under.reason == "test accuracy 0.9500 is under the threshold 0.9700" and under.champion_accuracy == 0.99
    below = gate.judge(0.98, threshold=0.97, bar=0.99)
    assert below.reason == ("test accuracy 0.9800 is more than 0.005 under 0.9900, the best promoted on the same "
                            "test data")


def test_the_best_of_every_test_data_is_kept_through_promotions(tmp_path):
    store = str(tmp_path)
    data = {name: name * 64 for name in "abc"}
    # An older record: no `best`, its accuracy measured on a.
    champions.write_champion(store, "mnist", champions.Champion(model="0" * 16, test_accuracy=0.98,
                                                                flow_run_id="old", test_sha256=data["a"]))
    for fingerprint, accuracy, test_data in (("1" * 16, 0.975, data["b"]), ("2" * 16, 0.971, data["c"])):
        assert _decide(store, fingerprint, accuracy, f"run-{fingerprint}", test_data).passed
    assert champions.read_champion(store, "mnist").best == {data["a"]: 0.98, data["b"]: 0.975, data["c"]: 0.971}


def test_a_champion_record_that_cannot_be_read_names_why(tmp_path):
    store = str(tmp_path)
    path = layout.champion(store, "mnist")
    path.parent.mkdir(parents=True)
    path.mkdir()  # a folder where the record should be
    with pytest.raises(champions.ChampionDamaged) as damaged:
        champions.read_champion(store, "mnist")
    assert str(damaged.value) == f"the mnist champion record {path} is damaged ([Errno 21] Is a directory: '{path}')"
    path.rmdir()
    path.write_text('{"model": "' + "a" * 16 + '", "test_accuracy": 2, "flow_run_id": "r"}')
    with pytest.raises(champions.ChampionDamaged) as damaged:
        champions.read_champion(store, "mnist")
    assert str(damaged.value) == (f"the mnist champion record {path} is damaged "
                                  "(Input should be less than or equal to 1)")


def test_a_damaged_record_is_moved_aside_with_the_time_in_its_name_or_the_failure_is_named(tmp_path, monkeypatch):
    import os
    import re

    store = str(tmp_path)
    path = layout.champion(store, "mnist")
    path.parent.mkdir(parents=True)
    path.write_text("42")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StoreError) as refused:
        champions.read_for_update(store, "mnist")
    assert str(refused.value) == f"cannot write the mnist champion record {path}: Permission denied"
    monkeypatch.undo()
    assert champions.read_for_update(store, "mnist") is None
    [evidence] = path.parent.iterdir()
    assert re.fullmatch(r"mnist\.json\.damaged-\d{8}T\d{6}", evidence.name), evidence.name


def test_a_champion_record_is_written_into_a_new_store_and_rewritten(tmp_path):
    store = str(tmp_path / "new" / "artifacts")
    record = champions.Champion(model="a" * 16, test_accuracy=0.9, flow_run_id="r")
    champions.write_champion(store, "mnist", record)
    champions.write_champion(store, "mnist", record.model_copy(update={"flow_run_id": "s"}))
    assert champions.read_champion(store, "mnist").flow_run_id == "s"
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError) as refused:
        champions.write_champion(str(tmp_path / "file"), "mnist", record)
    assert str(refused.value) == (f"cannot write the mnist champion record {tmp_path / 'file' / 'champions' / 'mnist.json'}"
                                  ": Not a directory")


def test_a_promotion_never_lowers_the_best_kept_for_its_test_data(tmp_path):
    """promote() keeps the best accuracy per test data whatever it is given: the gate's bar never falls."""
    store = str(tmp_path)
    with champions.champion_lock(FileLockManager(tmp_path / ".locks"), "mnist"):
        gate.promote(store, "mnist", *_refs("a" * 16, 0.99), "run-1")
        gate.promote(store, "mnist", *_refs("b" * 16, 0.97), "run-2")  # as a record from an older rule might
    champion = champions.read_champion(store, "mnist")
    assert (champion.model, champion.best) == ("b" * 16, {TEST_DATA: 0.99})


def test_the_best_on_its_test_data_takes_the_title_back_from_a_champion_measured_on_other_data(tmp_path):
    """A weak model measured on a few test images becomes champion (other data: the threshold alone); the model
    that was best on the full test data, run again, equals its own bar there and takes the title back."""
    store = str(tmp_path)
    full, few = "f" * 64, "s" * 64
    assert _decide(store, "a" * 16, 0.9850, "run-1", test_data=full).verdict == gate.PROMOTED
    assert _decide(store, "b" * 16, 0.975, "run-2", test_data=few).verdict == gate.PROMOTED
    back = _decide(store, "a" * 16, 0.9850, "run-3", test_data=full)
    assert back.verdict == gate.PROMOTED and back.reason.endswith(
        "and equals 0.9850, the best promoted on the same test data; the champion was measured on other test data")
    assert champions.read_champion(store, "mnist").model == "a" * 16
    # On the same test data, equal is still a tie.
    assert _decide(store, "c" * 16, 0.9850, "run-4", test_data=full).verdict == gate.NOT_PROMOTED
