"""`mnist-pipeline store` and `gc`: what the store holds, and a clean-up that keeps what matters."""

import json
import subprocess
from pathlib import Path

import pytest

from flows import cli
from flows.config import TINY
from tests.prefect_homes import prefect_home
from tasks.engine import gate, inventory
from tasks.engine.caching import record_key
from tasks.engine.locking import FileLockManager
from tasks.engine.store import ArtifactStore

STAGES = ["download", "preprocess", "train", "evaluate", "report"]


def _du(path) -> int:
    return int(subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _entries(store) -> set[str]:
    return {f"{stage}/{p.name}" for stage in STAGES if (Path(store) / stage).is_dir()
            for p in (Path(store) / stage).iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def history(prefect_harness, mirror, tmp_path_factory):
    """Five runs on one store: seeds 0-3 at one train limit, then seed 0 at another."""
    from flows.pipeline import mnist_pipeline

    store = str(tmp_path_factory.mktemp("gc") / "artifacts")
    for params in RUNS:
        params["summary"] = mnist_pipeline(mirror=str(mirror), artifacts_dir=store, **_params(params))
    return store, [params["summary"] for params in RUNS]


RUNS = [{"seed": seed, "train_limit": limit} for seed, limit in [(0, 200), (1, 200), (2, 200), (3, 200), (0, 150)]]


def _params(run: dict) -> dict:
    return {**TINY, "train_limit": run["train_limit"], "seed": run["seed"], "accuracy_threshold": 0.0}


def _copy(store, tmp_path) -> str:
    copy = tmp_path / "artifacts"
    subprocess.run(["cp", "-a", store, str(copy)], check=True)
    return str(copy)


def _used(summary) -> set[str]:
    return {f"{stage}/{Path(record['artifact']).name}" for stage, record in summary["stages"].items()}


@pytest.mark.e2e
def test_store_adds_up_to_the_bytes_on_disk_and_names_what_keeps_each_entry(history, capsys):
    store, summaries = history
    assert cli.main(["store", "--artifacts-dir", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(row["bytes"] for row in rows) == _du(store)
    champion = gate.read_champion(store, "mnist")
    by_entry = {f"{r['stage']}/{r['fingerprint']}": r for r in rows if r["kind"] == "entry"}
    assert by_entry[champion.model_path]["champion"] == "mnist"
    last = summaries[-1]
    assert by_entry[f"train/{Path(last['stages']['train']['artifact']).name}"]["last_run"] == last["flow_run_id"]
    assert cli.main(["store", "--artifacts-dir", store]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"total: {_du(store)} bytes")


@pytest.mark.e2e
def test_dry_run_changes_nothing(history, tmp_path, capsys):
    store = _copy(history[0], tmp_path)
    before, size = _entries(store), _du(store)
    assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "1"]) == 0
    assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "1", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().err
    assert _entries(store) == before and _du(store) == size


@pytest.mark.e2e
def test_gc_keeps_the_champions_lineage_and_the_last_runs_and_a_rerun_of_them_is_all_cached(
        history, tmp_path, mirror, capsys):
    from flows.pipeline import mnist_pipeline

    store = _copy(history[0], tmp_path)
    summaries = history[1]
    champion = gate.read_champion(store, "mnist")
    promoted = next(s for s in summaries if s["flow_run_id"] == champion.flow_run_id)
    kept = _used(promoted) | _used(summaries[-1]) | _used(summaries[-2])
    leftover = Path(store) / "train" / ".tmp-0123456789abcdef-deadbeef"
    leftover.mkdir()
    assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "2", "--yes", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert _entries(store) == kept
    assert result["freed_bytes"] > 0 and result["skipped"] == 0
    assert not leftover.exists()
    # The champion's parameters, run again: every stage still from the store.
    run = next(run for run in RUNS if run["summary"] is promoted)
    again = mnist_pipeline(mirror=str(mirror), artifacts_dir=store, **_params(run))
    assert {r["state"] for r in again["stages"].values()} == {"Cached"}


@pytest.mark.e2e
def test_an_entry_in_use_is_skipped_and_a_run_after_gc_computes_what_went(history, tmp_path, mirror, capsys):
    from flows.pipeline import mnist_pipeline

    store = _copy(history[0], tmp_path)
    doomed = {f"{r['stage']}/{r['fingerprint']}" for _, r in
              inventory.plan(inventory.inventory(Path(store), keep_runs=1)).iterrows() if r["kind"] == "entry"}
    busy = sorted(e for e in doomed if e.startswith("train/"))[0]
    locks = FileLockManager(Path(store) / ".locks")  # a run computing that very entry holds its lock
    assert locks.acquire_lock(record_key(*busy.split("/")), "a-run")
    try:
        assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "1", "--yes"]) == 0
    finally:
        locks.release_lock(record_key(*busy.split("/")), "a-run")
    assert "in use by a run" in capsys.readouterr().err
    assert busy in _entries(store) and not (doomed - {busy}) & _entries(store)
    # Seed 1's run, again: what gc left is served, what it removed is computed again, and the run completes.
    left = _entries(store)
    rerun = mnist_pipeline(mirror=str(mirror), artifacts_dir=store, **_params(RUNS[1]))
    before = RUNS[1]["summary"]["stages"]
    assert rerun["state"] == "Completed"
    assert [rerun["stages"][s]["state"] for s in STAGES[:3]] == [
        "Cached" if f"{s}/{Path(before[s]['artifact']).name}" in left else "Completed" for s in STAGES[:3]]
    assert "Completed" in [rerun["stages"][s]["state"] for s in STAGES[:3]]


def test_a_link_in_the_store_is_removed_as_a_link_and_its_target_left_alone(tmp_path):
    store, outside = tmp_path / "artifacts", tmp_path / "precious"
    (store / "train").mkdir(parents=True)
    outside.mkdir()
    (outside / "model.keras").write_text("not the store's")
    (store / "train" / "0123456789abcdef").symlink_to(outside)
    table = inventory.inventory(store)
    assert sum(table["bytes"]) == _du(store)
    freed, skipped = inventory.collect(store, inventory.plan(table), FileLockManager(store / ".locks"))
    assert skipped == [] and not (store / "train" / "0123456789abcdef").exists()
    assert (outside / "model.keras").read_text() == "not the store's"
    assert not [p for p in (store / "train").iterdir() if p.is_symlink()]


def test_a_folder_that_is_not_a_store_is_refused_before_anything_is_touched(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "holiday-photos").mkdir()
    with pytest.raises(SystemExit) as exit:
        cli.main(["gc", "--artifacts-dir", str(tmp_path), "--yes"])
    assert exit.value.code == cli.EXIT_INVALID
    assert "does not look like an artifact store: it holds holiday-photos" in capsys.readouterr().err
    assert (tmp_path / "holiday-photos").is_dir() and (tmp_path / "train").is_dir()


@pytest.mark.e2e
def test_the_scheduled_clean_up_flow_applies_the_default_policy(history, tmp_path):
    from flows.maintenance import store_gc

    store = _copy(history[0], tmp_path)
    expected = {f"{r['stage']}/{r['fingerprint']}" for _, r in
                inventory.plan(inventory.inventory(Path(store), keep_runs=2)).iterrows() if r["kind"] == "entry"}
    summary = store_gc(artifacts_dir=store, keep_runs=2)
    assert summary["removed"] >= len(expected) > 0 and summary["store_bytes"] == _du(store)
    assert not expected & _entries(store)


@pytest.mark.e2e
def test_a_run_started_during_gc_completes(history, tmp_path, mirror, capsys):
    """gc after gc, keeping nothing but the champion, while a run goes: whatever the interleaving, the run
    finds each entry whole or computes it again, and completes."""
    import os
    import sys
    import time

    store = _copy(history[0], tmp_path)
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(tmp_path / "home"))}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--mirror", str(mirror), "--epochs", "1",
                            "--batch-size", "16", "--train-limit", "200", "--seed", "1", "--accuracy-threshold", "0",
                            "--artifacts-dir", store, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    freed, refused = 0, 0
    while run.poll() is None:
        code = cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "0", "--yes", "--json"])
        captured = capsys.readouterr()
        if code == 0:
            freed += json.loads(captured.out)["freed_bytes"]
        else:  # the run holds the store: gc waits for its end
            assert code == cli.EXIT_FAILED and "a run is in progress in this store" in captured.err
            refused += 1
        time.sleep(0.2)
    out, err = run.communicate()
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "Completed" and Path(summary["run_report"]).is_file()
    assert refused > 0  # gc met the run in progress
    # What the run used is whole: its lineage went into the run log before the store was let go.
    for stage, record in summary["stages"].items():
        assert ArtifactStore(store).problem(stage, Path(record["artifact"]).name) is None


@pytest.mark.e2e
def test_gc_removes_nothing_while_a_run_is_in_progress(history, tmp_path, capsys):
    from tasks.engine import locking

    store = _copy(history[0], tmp_path)
    before = _entries(store)
    with locking.run_in_progress(FileLockManager(Path(store) / ".locks").open(), ArtifactStore(store).identity):
        assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "0", "--yes"]) == cli.EXIT_FAILED
    assert "a run is in progress in this store: gc removes nothing until it ends" in capsys.readouterr().err
    assert _entries(store) == before
    assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "0", "--yes"]) == 0
    assert _entries(store) < before
