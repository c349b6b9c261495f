from engine import runlog
from engine.layout import RUN_LOG


def test_runs_are_read_back_in_order(tmp_path):
    for n in range(3):
        runlog.append(str(tmp_path), {"flow_run_id": f"run-{n}", "dataset": "mnist", "test_accuracy": 0.9 + n / 100})
    table = runlog.read(str(tmp_path))
    assert list(table["flow_run_id"]) == ["run-0", "run-1", "run-2"]
    assert list(table.columns[: len(runlog.COLUMNS)]) == runlog.COLUMNS


def test_a_line_cut_short_is_skipped(tmp_path):
    runlog.append(str(tmp_path), {"flow_run_id": "run-0"})
    with open(tmp_path / RUN_LOG, "a") as log:
        log.write('{"flow_run_id": "run-1", "data')  # the disk filled up mid-line
    runlog.append(str(tmp_path), {"flow_run_id": "run-2"})
    assert list(runlog.read(str(tmp_path))["flow_run_id"]) == ["run-0", "run-2"]


def test_no_log_yet_is_an_empty_table(tmp_path):
    table = runlog.read(str(tmp_path))
    assert table.empty and list(table.columns) == runlog.COLUMNS


def test_runs_logged_before_the_schedule_setting_show_a_constant_rate(tmp_path):
    runlog.append(str(tmp_path), {"flow_run_id": "old", "learning_rate": 0.002})
    runlog.append(str(tmp_path), {"flow_run_id": "new", "learning_rate": 0.006, "lr_schedule": "cosine"})
    assert list(runlog.read(str(tmp_path))["lr_schedule"]) == ["constant", "cosine"]


def test_lines_that_are_not_runs_are_skipped_with_a_warning(tmp_path, caplog):
    runlog.append(str(tmp_path), {"flow_run_id": "run-0", "dataset": "mnist", "test_accuracy": 0.9})
    with open(tmp_path / RUN_LOG, "a") as log:
        log.write('42\nnull\n"text"\n{"flow_run_id": "run-x", "test_accuracy": "0.99"}\n[1, 2]\n')
    runlog.append(str(tmp_path), {"flow_run_id": "run-1", "dataset": "mnist", "test_accuracy": 0.95})
    table = runlog.read(str(tmp_path))
    assert list(table["flow_run_id"]) == ["run-0", "run-1"]
    assert list(table["test_accuracy"]) == [0.9, 0.95]
    assert caplog.text.count("is not a run record") == 5


def test_an_appended_line_can_be_taken_back(tmp_path):
    runlog.append(str(tmp_path), {"flow_run_id": "run-0"})
    before = (tmp_path / RUN_LOG).read_bytes()
    undo = runlog.append(str(tmp_path), {"flow_run_id": "run-1"})
    undo()
    assert (tmp_path / RUN_LOG).read_bytes() == before


def test_a_full_disk_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    import os

    import pytest

    from engine.store import StoreError

    runlog.append(str(tmp_path), {"flow_run_id": "run-0"})
    before = (tmp_path / RUN_LOG).read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(os, "write", half_then_full)
    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(StoreError, match="the artifact store is full: no space left on device while writing"):
        runlog.append(str(tmp_path), {"flow_run_id": "run-1"})
    monkeypatch.undo()
    assert (tmp_path / RUN_LOG).read_bytes() == before


def test_a_line_taken_back_never_takes_a_line_another_run_added_meanwhile(tmp_path):
    """An mnist run's finish fails after its line is in; a fashion_mnist run finishing then must keep its own."""
    import threading

    import pytest

    from engine.locking import FileLockManager

    def fashion_run_finishes() -> None:
        with runlog.added(str(tmp_path), {"flow_run_id": "fashion", "dataset": "fashion_mnist"},
                          FileLockManager(tmp_path / ".locks")):
            pass

    with pytest.raises(RuntimeError, match="promotion failed"):
        with runlog.added(str(tmp_path), {"flow_run_id": "mnist", "dataset": "mnist"},
                          FileLockManager(tmp_path / ".locks")):
            other = threading.Thread(target=fashion_run_finishes)
            other.start()
            other.join(timeout=1)  # it waits for the run log while this run's line may still be taken back
            raise RuntimeError("the promotion failed")
    other.join(timeout=10)
    assert [run["flow_run_id"] for run in runlog.records(str(tmp_path))] == ["fashion"]
