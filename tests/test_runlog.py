from tasks import runlog


def test_runs_are_read_back_in_order(tmp_path):
    for n in range(3):
        runlog.append(str(tmp_path), {"flow_run_id": f"run-{n}", "dataset": "mnist", "test_accuracy": 0.9 + n / 100})
    table = runlog.read(str(tmp_path))
    assert list(table["flow_run_id"]) == ["run-0", "run-1", "run-2"]
    assert list(table.columns[: len(runlog.COLUMNS)]) == runlog.COLUMNS


def test_a_line_cut_short_is_skipped(tmp_path):
    runlog.append(str(tmp_path), {"flow_run_id": "run-0"})
    with open(tmp_path / runlog.RUNS, "a") as log:
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
