"""`mnist-pipeline store` and `gc`: what the store holds, and a clean-up that keeps what matters."""

import json
import shutil
import os
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from ops import cli
from flows.config import TINY
from tests.prefect_homes import prefect_home
from engine import champions, inventory
from tasks import refs  # noqa: F401  the stages, whose entries gc looks after
from engine.caching import record_key
from engine.locking import FileLockManager
from engine.store import ArtifactStore

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
    champion = champions.read_champion(store, "mnist")
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
    champion = champions.read_champion(store, "mnist")
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
    # No champion yet: the run's model becomes it (gc keeps nothing else with --keep-runs 0).
    shutil.rmtree(Path(store) / "champions")
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(tmp_path / "home"))}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--mirror", str(mirror), "--epochs", "1",
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
            assert code == cli.EXIT_FAILED and "a run (or another gc) is in progress in this store" in captured.err
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
    from engine import locking

    store = _copy(history[0], tmp_path)
    before = _entries(store)
    with locking.run_in_progress(FileLockManager(Path(store) / ".locks").open(), ArtifactStore(store).identity):
        assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "0", "--yes"]) == cli.EXIT_FAILED
    assert "a run (or another gc) is in progress in this store: gc removes nothing until it ends" in capsys.readouterr().err
    assert _entries(store) == before
    assert cli.main(["gc", "--artifacts-dir", store, "--keep-runs", "0", "--yes"]) == 0
    assert _entries(store) < before


# A store made by hand, in milliseconds: entries with their manifests' inputs, run-log lines, champions.

def _entry(store: Path, stage: str, inputs: tuple = (), bytes_: int = 5000) -> str:
    import secrets

    fingerprint = secrets.token_hex(8)
    with ArtifactStore(store).writing(stage, fingerprint, inputs) as folder:
        (folder / "data.bin").write_bytes(b"x" * bytes_)
    return f"{stage}/{fingerprint}"


def _logged_run(store: Path, dataset: str = "mnist", run_id: str = "", with_entries: bool = True,
                reuse: Optional[dict] = None) -> dict:
    """A run's five entries (each computed from the ones before it, as the pipeline's are) and its run-log line."""
    import uuid

    from engine import runlog

    entries = dict(reuse or {})
    entries.setdefault("download", _entry(store, "download"))
    entries.setdefault("preprocess", _entry(store, "preprocess", (entries["download"],)))
    entries.setdefault("train", _entry(store, "train", (entries["preprocess"],)))
    entries.setdefault("evaluate", _entry(store, "evaluate", (entries["train"], entries["preprocess"])))
    entries.setdefault("report", _entry(store, "report", tuple(entries.values())))
    run_id = run_id or str(uuid.uuid4())
    line = {"flow_run_id": run_id, "dataset": dataset, "test_accuracy": 0.9}
    runlog.append(str(store), {**line, "entries": entries} if with_entries else line)
    return {"flow_run_id": run_id, **entries}


def _crown(store: Path, run: dict, dataset: str = "mnist", **record) -> None:
    folder = store / "champions"
    folder.mkdir(exist_ok=True)
    (folder / f"{dataset}.json").write_text(json.dumps(
        {"model": run["train"].split("/")[1], "test_accuracy": 0.99, "flow_run_id": run["flow_run_id"],
         "model_path": run["train"], "test_sha256": "a" * 64, **record}))


def _five(run: dict) -> set:
    return {run[stage] for stage in STAGES}


def test_the_champions_whole_lineage_stays_though_newer_runs_beat_it_to_the_keep_list(tmp_path):
    store = tmp_path / "artifacts"
    champion = _logged_run(store)
    later = [_logged_run(store) for _ in range(3)]  # newer, not promoted
    _crown(store, champion)
    inventory.clean(store, keep_runs=1)
    assert _entries(store) == _five(champion) | _five(later[-1])


def test_an_old_champion_record_and_run_log_keep_the_model_and_what_it_was_made_from(tmp_path):
    # The record's model_path absolute, as written before it became relative; run-log lines without entries.
    store = tmp_path / "artifacts"
    champion = _logged_run(store, with_entries=False)
    other = _logged_run(store, with_entries=False)
    _crown(store, champion, model_path=f"/somewhere/else/{champion['train']}")
    inventory.clean(store, keep_runs=5)
    # What the model was computed from, by the manifests; the evaluate and report entries no line names.
    assert _entries(store) == {champion["download"], champion["preprocess"], champion["train"]}
    assert not _five(other) & _entries(store)


@pytest.mark.parametrize("record", ["42", "[1, 2]", '{"model": "0123456789abcdef", "test_accuracy": 0.99, '
                                                    '"flow_run_id": ["a"]}', '{"model": "01234', "\xff\xfe"])
def test_a_champion_record_gc_cannot_read_makes_it_remove_nothing(tmp_path, record, capsys):
    store = tmp_path / "artifacts"
    runs = [_logged_run(store) for _ in range(3)]
    (store / "champions").mkdir()
    (store / "champions" / "mnist.json").write_text(record, errors="surrogateescape")
    before = _entries(store)
    with pytest.raises(inventory.CannotJudge, match="champion record .* is damaged"):
        inventory.clean(store, keep_runs=0)
    for dry_or_not in ([], ["--yes"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "0", *dry_or_not])
        assert exit.value.code == cli.EXIT_FAILED
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "gc removes nothing until it is repaired or moved aside" in err
    assert _entries(store) == before == set().union(*map(_five, runs))
    # `store` lists it all the same, and says why no champion is shown.
    assert cli.main(["store", "--artifacts-dir", str(store)]) == 0
    assert "warning: the mnist champion record" in capsys.readouterr().err


def test_gc_takes_the_store_before_it_reads_so_a_run_that_finishes_meanwhile_loses_nothing(tmp_path, monkeypatch):
    """A run that starts and finishes while gc walks the store promotes a model gc must not remove."""
    import threading

    from engine import locking

    store = tmp_path / "artifacts"
    old = _logged_run(store)
    _crown(store, old)
    done: dict = {}

    def a_run_meanwhile() -> None:
        with locking.run_in_progress(FileLockManager(store / ".locks").open(), ArtifactStore(store).identity):
            done["run"] = _logged_run(store)
            _crown(store, done["run"])

    walk = inventory._rows

    def slow_walk(root):
        racer = threading.Thread(target=a_run_meanwhile)
        racer.start()
        racer.join(timeout=2)  # the run goes through, unless gc holds the store
        yield from walk(root)

    monkeypatch.setattr(inventory, "_rows", slow_walk)
    inventory.clean(store, keep_runs=0)
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while "run" not in done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _five(done["run"]) <= _entries(store)
    assert champions.read_champion(str(store), "mnist").model == done["run"]["train"].split("/")[1]


def test_gc_removes_only_names_an_entry_or_a_leftover_can_have(tmp_path, capsys):
    store = tmp_path / "artifacts"
    _logged_run(store)
    foreign = [store / "train" / "keep-me" / "model-v1.keras", store / "train" / "NOTES.txt",
               store / "train" / ".work" / "notes.txt", store / "report" / "0123456789ABCDEF" / "x",
               store / "evaluate" / os.fsdecode(b"caf\xe9-\x1b[31m") / "x"]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    leftovers = [store / "train" / ".tmp-0123456789abcdef-0badcafe",
                 store / "train" / ".evicted-0123456789abcdef-12345678",
                 store / "preprocess" / ".fetch-0123456789abcdef-abcdef01",
                 store / "train" / ".work" / "0123456789abcdef"]
    for path in leftovers:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "file").write_bytes(b"y" * 100)
    assert cli.main(["store", "--artifacts-dir", str(store), "--all"]) == 0
    listing = capsys.readouterr().out
    assert "\x1b" not in listing and "caf\\xe9-\\x1b[31m" in listing
    assert cli.main(["store", "--artifacts-dir", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(row["kind"] == "foreign" for row in rows) == 5
    for _ in range(2):
        assert cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "1", "--yes", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == 0
    assert all(path.read_text() == "the user's" for path in foreign)
    assert not [path for path in leftovers if os.path.lexists(path)]
    assert json.loads(cli.main(["gc", "--artifacts-dir", str(store), "--yes", "--json"]) or
                      capsys.readouterr().out)["removed"] == 0


def test_a_leftover_that_cannot_be_removed_is_skipped_not_counted(tmp_path, monkeypatch, capsys):
    store = tmp_path / "artifacts"
    _logged_run(store)
    stuck = store / "train" / ".evicted-0123456789abcdef-12345678"
    stuck.mkdir(parents=True)
    (stuck / "file").write_text("z")
    monkeypatch.setattr(inventory.shutil, "rmtree", lambda path, onerror: onerror(
        os.unlink, str(path / "file"), (PermissionError, PermissionError(1, "Operation not permitted"), None)))
    assert cli.main(["gc", "--artifacts-dir", str(store), "--yes", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"removed": 0, "skipped": 1, "freed_bytes": 0}
    assert "cannot be removed: Operation not permitted" in captured.err


def test_older_than_removes_only_what_is_that_old(tmp_path):
    store = tmp_path / "artifacts"
    old, new = _logged_run(store, with_entries=False), _logged_run(store, with_entries=False)
    month_ago = time.time() - 30 * 86400
    for name in _five(old):
        os.utime(store / name, (month_ago, month_ago))
    inventory.clean(store, keep_runs=0, older_than_days=7)
    assert _entries(store) == _five(new)


def test_keep_runs_counts_per_dataset_and_defaults_to_the_setting(tmp_path, monkeypatch, capsys):
    store = tmp_path / "artifacts"
    data = {"download": _entry(store, "download")}
    mnist = [_logged_run(store, "mnist", reuse=data) for _ in range(7)]
    fashion = [_logged_run(store, "fashion_mnist") for _ in range(2)]
    assert cli.main(["gc", "--artifacts-dir", str(store), "--yes"]) == 0  # 5 of each, by default
    assert _entries(store) == set().union(*map(_five, mnist[-5:] + fashion))
    monkeypatch.setenv("MNIST_PIPELINE_GC_KEEP_RUNS", "1")
    assert cli.main(["gc", "--artifacts-dir", str(store), "--yes"]) == 0
    assert _entries(store) == _five(mnist[-1]) | _five(fashion[-1])
    assert cli.main(["gc", "--artifacts-dir", str(store), "--yes", "--keep-runs", "0"]) == 0
    assert _entries(store) == set()


@pytest.mark.parametrize("options, message", [
    (["--keep-runs", "99999999999999999999"],
     "--keep-runs 99999999999999999999: Input should be less than or equal to 1000000"),
    (["--keep-runs", "-1"], "--keep-runs -1: Input should be greater than or equal to 0"),
    (["--older-than", "-5"], "--older-than-days -5.0: Input should be greater than or equal to 0"),
    (["--older-than", "nan"], "--older-than-days nan: Input should be a finite number"),
    (["--older-than-days", "inf"], "--older-than-days inf: Input should be a finite number"),
])
@pytest.mark.parametrize("command", ["gc", "store"])
def test_bad_gc_options_are_one_line(tmp_path, options, message, command, capsys):
    store = tmp_path / "artifacts"
    _logged_run(store)
    before = _entries(store)
    if command == "store" and "--keep-runs" not in options:
        return
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--artifacts-dir", str(store), *options, "--yes"][:None if command == "gc" else -1])
    assert exit.value.code == cli.EXIT_INVALID
    assert capsys.readouterr().err == f"mnist-pipeline: error: {message}\n"
    assert _entries(store) == before


def test_run_log_lines_and_records_that_are_not_what_they_claim_never_stop_store_or_gc(tmp_path, capsys):
    store = tmp_path / "artifacts"
    kept = _logged_run(store)
    with open(store / "runs.jsonl", "a") as log:
        log.write('{"flow_run_id": "x", "dataset": "mnist", "entries": {"train": ["a"]}}\n'
                  '{"flow_run_id": "y", "dataset": "mnist", "entries": {"train": "../../etc"}}\n')
    for command in (["store"], ["store", "--all"], ["store", "--json"], ["gc"], ["gc", "--yes", "--keep-runs", "1"]):
        assert cli.main([command[0], "--artifacts-dir", str(store), *command[1:]]) == 0
    assert _entries(store) == _five(kept)


@pytest.mark.parametrize("how", ["champions a file", "champions a link to nothing", "record a link to nothing",
                                 "run log a link to nothing", "run log a folder"])
def test_champion_records_or_a_run_log_that_cannot_be_read_make_gc_remove_nothing(tmp_path, how, capsys):
    store = tmp_path / "artifacts"
    runs = [_logged_run(store) for _ in range(3)]
    _crown(store, runs[0])
    if how == "champions a file":
        (store / "champions" / "mnist.json").unlink()
        (store / "champions").rmdir()
        (store / "champions").write_text("not a folder")
    elif how == "champions a link to nothing":
        (store / "champions" / "mnist.json").rename(tmp_path / "mnist.json")
        (store / "champions").rmdir()
        (store / "champions").symlink_to(tmp_path / "offline-disk")
    elif how == "record a link to nothing":
        (store / "champions" / "mnist.json").unlink()
        (store / "champions" / "mnist.json").symlink_to(tmp_path / "offline-disk" / "mnist.json")
    else:
        (store / "runs.jsonl").rename(tmp_path / "runs.jsonl")
        if how == "run log a folder":
            (store / "runs.jsonl").mkdir()
        else:
            (store / "runs.jsonl").symlink_to(tmp_path / "offline-disk" / "runs.jsonl")
    before = _entries(store)
    with pytest.raises(SystemExit) as exit:
        cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "0", "--yes"])
    assert exit.value.code == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gc removes nothing until" in err, err
    assert _entries(store) == before
    assert cli.main(["store", "--artifacts-dir", str(store)]) == 0  # listed all the same, with a warning
    assert "warning:" in capsys.readouterr().err


def test_an_entry_that_cannot_be_moved_out_of_sight_is_skipped_and_gc_goes_on(tmp_path, monkeypatch, capsys):
    from pathlib import Path as RealPath

    store = tmp_path / "artifacts"
    old, new = _logged_run(store), _logged_run(store)
    stuck = store / old["preprocess"]
    rename = RealPath.rename

    def refuse(self, target):
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(RealPath, "rename", refuse)
    assert cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "1", "--yes", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["removed"] == 4 and json.loads(captured.out)["skipped"] == 1
    assert f"skipped {stuck} (cannot be removed:" in captured.err and "Permission denied" in captured.err
    assert _entries(store) == _five(new) | {old["preprocess"]}


def test_an_entry_only_partly_removed_is_not_counted_as_freed(tmp_path, monkeypatch, capsys):
    store = tmp_path / "artifacts"
    old, _ = _logged_run(store), _logged_run(store)
    monkeypatch.setattr("engine.store.shutil.rmtree", lambda path, ignore_errors=False: None)  # removes nothing
    assert cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "1", "--yes", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"removed": 0, "skipped": 5, "freed_bytes": 0}
    assert "part of it is left in .evicted-" in captured.err


def _listing(store: Path, **options) -> dict:
    """inventory()'s rows by path relative to the store (`.` for the store itself)."""
    return {os.fsdecode(os.path.relpath(row["path"], store)): row
            for row in inventory.inventory(store, **options).to_dict("records")}


def _folder_only(path: Path) -> int:
    return path.lstat().st_blocks * 512


def test_the_store_lists_every_path_once_with_its_bytes_and_what_keeps_it(tmp_path):
    store = tmp_path / "artifacts"
    champion = _logged_run(store)
    newer = _logged_run(store)
    fashion = _logged_run(store, "fashion_mnist", reuse={"download": champion["download"]})
    _crown(store, champion)
    _crown(store, fashion, dataset="fashion_mnist")
    report = store / "runs" / newer["flow_run_id"] / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text("# a run")
    (store / "runs" / os.fsdecode(b"r\xff")).mkdir()
    checkpoint = store / "train" / ".work" / "0123456789abcdef"
    checkpoint.mkdir(parents=True)
    (checkpoint / "ckpt.keras").write_bytes(b"c" * 3000)
    (store / "train" / ".work" / "notes").write_text("the user's")
    leftover = store / "train" / ".tmp-fedcba9876543210-0badcafe"
    leftover.mkdir()
    (store / "train" / "NOTES.txt").write_text("the user's")
    aged = store / newer["train"]
    now = time.time()
    os.utime(aged, (now - 1.23456 * 86400, now - 1.23456 * 86400))

    rows = _listing(store, keep_runs=1)
    assert sum(row["bytes"] for row in rows.values()) == _du(store)
    assert list(inventory.inventory(store).columns) == ["kind", "stage", "fingerprint", "bytes", "age_days",
                                                        "last_run", "last_run_name", "champion", "recent_run",
                                                        "local_only", "flow_run_id", "path"]
    kinds = {name: (row["kind"], row["stage"], row["fingerprint"]) for name, row in rows.items()}
    entries = {f"{stage}/{fingerprint}" for kind, stage, fingerprint in kinds.values() if kind == "entry"}
    assert entries == _entries(store) - {"train/NOTES.txt"} > _five(champion) | _five(newer) | _five(fashion)
    assert all(kinds[entry] == ("entry", *entry.split("/")) for entry in entries)
    assert {name: kind for name, kind in kinds.items() if name not in entries} == {
        ".": ("store", "", ""), "runs.jsonl": ("store", "", ""), "champions": ("store", "", ""),
        "runs": ("store", "", ""), f"runs/{newer['flow_run_id']}": ("run report", "", ""),
        os.fsdecode(b"runs/r\xff"): ("run report", "", ""),
        **{stage: ("store", stage, "") for stage in STAGES},
        "train/.work": ("store", "train", ""), "train/.work/0123456789abcdef": ("checkpoint", "train", "0123456789abcdef"),
        "train/.work/notes": ("foreign", "train", ""), "train/.tmp-fedcba9876543210-0badcafe":
            ("leftover", "train", "fedcba9876543210"), "train/NOTES.txt": ("foreign", "train", "")}
    # A folder's own block for the store's folders, the whole of it for everything else.
    for name in (".", "runs", "train", "train/.work", *STAGES):
        assert rows[name]["bytes"] == _folder_only(store / name), name
    for name in ("champions", "train/.work/0123456789abcdef", newer["train"], f"runs/{newer['flow_run_id']}"):
        assert rows[name]["bytes"] == _du(store / name) > _folder_only(store / name), name
    assert rows[os.fsdecode(b"runs/r\xff")]["flow_run_id"] == "r\\xff"
    assert rows[f"runs/{newer['flow_run_id']}"]["flow_run_id"] == newer["flow_run_id"]
    assert rows[newer["train"]]["age_days"] == 1.23 and rows[newer["preprocess"]]["age_days"] == 0.0
    # What keeps each entry: the champions' lineages (and their runs), the last run of each dataset.
    assert rows[champion["download"]]["champion"] == "fashion_mnist, mnist"
    assert {rows[entry]["champion"] for entry in _five(champion) - {champion["download"]}} == {"mnist"}
    assert {rows[entry]["champion"] for entry in _five(newer)} == {""}
    assert {entry for entry in entries if rows[entry]["recent_run"]} == _five(newer) | _five(fashion)
    # The last run that used each entry.
    assert rows[champion["download"]]["last_run"] == fashion["flow_run_id"]
    assert {rows[entry]["last_run"] for entry in _five(champion) - {champion["download"]}} == {champion["flow_run_id"]}
    assert {rows[entry]["last_run"] for entry in _five(newer)} == {newer["flow_run_id"]}
    assert rows["train/.work/0123456789abcdef"]["last_run"] == "" and not any(r["local_only"] for r in rows.values())
    # ... by the name the UI shows (a line logged without one: its id's first 8 characters); none used it: empty.
    assert rows["train/.work/0123456789abcdef"]["last_run_name"] == ""
    assert {rows[entry]["last_run_name"] for entry in _five(newer)} == {newer["flow_run_id"][:8]}
    assert {name for name, row in rows.items() if row["flow_run_id"] == row["flow_run_id"] and row["flow_run_id"]} == {
        f"runs/{newer['flow_run_id']}", os.fsdecode(b"runs/r\xff")}
    # keep_runs: the last 5 of each dataset by default.
    assert all(_listing(store)[entry]["recent_run"] for entry in _five(champion) | _five(newer) | _five(fashion))


def test_an_entry_in_a_hosts_copy_that_its_bucket_lacks_is_local_only(memory_bucket):
    from engine.refs import ref_type

    fs, host = memory_bucket
    copy = host("host-a")
    names = []
    for fingerprint in ("0123456789abcdef", "fedcba9876543210"):
        with copy.writing("evaluate", fingerprint) as folder:
            (folder / "ref.json").write_text(ref_type("evaluate")(
                stage="evaluate", fingerprint=fingerprint, test_accuracy=0.5, test_loss=1.0, test_count=2,
                test_sha256="a" * 64).model_dump_json())
        names.append(f"evaluate/{fingerprint}")
    leftover = copy.root / "evaluate" / ".tmp-0123456789abcdef-0badcafe"
    leftover.mkdir()
    fs.rm("team/mnist/evaluate/fedcba9876543210", recursive=True)
    from engine import store as store_module

    store_module._IN_BUCKET.clear()  # a new process: what the bucket holds is asked again
    rows = _listing(copy.root)
    assert {name for name, row in rows.items() if row["local_only"]} == {"evaluate/fedcba9876543210"}
    assert rows["evaluate/.tmp-0123456789abcdef-0badcafe"]["kind"] == "leftover"


def test_clean_says_what_it_removed_and_freed_and_a_dry_run_removes_nothing(tmp_path):
    store = tmp_path / "artifacts"
    old, new = _logged_run(store), _logged_run(store)
    assert inventory.clean(store, keep_runs=2)[1]["removed"] == 0  # both runs kept; the store's lock file made
    leftover = store / "train" / ".evicted-0123456789abcdef-12345678"
    leftover.mkdir()
    (leftover / "file").write_bytes(b"z" * 5000)
    before, size, paths = _entries(store), _du(store), sorted(store.rglob("*"))
    doomed, summary = inventory.clean(store, keep_runs=1, remove=False)
    assert summary == {"removed": 0, "skipped": 0, "freed_bytes": 0, "store_bytes": size, "skipped_paths": []}
    assert sorted(store.rglob("*")) == paths and _du(store) == size  # a dry run takes no lock, writes nothing
    assert {f"{r['stage']}/{r['fingerprint']}" for _, r in doomed.iterrows()} == _five(old) | {
        "train/0123456789abcdef"}
    planned = int(doomed["bytes"].sum())
    doomed, summary = inventory.clean(store, keep_runs=1)
    assert summary == {"removed": 6, "skipped": 0, "freed_bytes": planned, "store_bytes": size - planned,
                       "skipped_paths": []}
    assert _entries(store) == _five(new) and not leftover.exists()
    assert inventory.clean(store, keep_runs=1)[1]["removed"] == 0


def test_gc_skips_an_entry_a_run_holds_and_lets_go_of_each_lock(tmp_path):
    store = tmp_path / "artifacts"
    old, new = _logged_run(store), _logged_run(store)
    busy = old["download"]  # the first gc comes to: the rest still go
    locks = FileLockManager(store / ".locks")
    assert locks.acquire_lock(record_key(*busy.split("/")), "a-run")
    try:
        doomed, summary = inventory.clean(store, keep_runs=1)
    finally:
        locks.release_lock(record_key(*busy.split("/")), "a-run")
    assert summary["removed"] == 4 and summary["skipped_paths"] == [f"{store / busy} (in use by a run)"]
    assert _entries(store) == _five(new) | {busy}
    # Every lock gc took is free again: a run takes them at once.
    for name in _five(new) | {busy}:
        assert locks.acquire_lock(record_key(*name.split("/")), "a-run", acquire_timeout=0)
        locks.release_lock(record_key(*name.split("/")), "a-run")
    assert inventory.clean(store, keep_runs=1)[1]["removed"] == 1


def test_leftovers_are_removed_a_link_as_a_link_and_what_stays_says_why(tmp_path, monkeypatch, capsys):
    store = tmp_path / "artifacts"
    _logged_run(store)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the store's")
    link = store / "train" / ".evicted-0123456789abcdef-12345678"
    link.symlink_to(outside)
    half_written = store / "train" / ".tmp-0123456789abcdef-0badcafe"
    half_written.write_text("a file, not a folder")
    assert inventory.clean(store, keep_runs=1)[1]["removed"] == 2
    assert not os.path.lexists(link) and not half_written.exists() and (outside / "keep.txt").exists()
    # A file that cannot be removed says why, in the words of the system; a folder that stays, that it did.
    stuck = store / "train" / ".tmp-0123456789abcdef-00000001"
    stuck.write_text("z")
    from pathlib import Path as RealPath

    unlink = RealPath.unlink

    def refuse(self, missing_ok=False):
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(RealPath, "unlink", refuse)
    assert inventory.clean(store, keep_runs=1)[1]["skipped_paths"] == [f"{stuck} (cannot be removed: Permission denied)"]
    monkeypatch.undo()
    stuck.unlink()
    stays = store / "train" / ".tmp-0123456789abcdef-00000002"
    stays.mkdir()
    monkeypatch.setattr(inventory.shutil, "rmtree", lambda path, onerror: None)  # reports nothing, removes nothing
    assert inventory.clean(store, keep_runs=1)[1]["skipped_paths"] == [f"{stays} (cannot be removed: still there)"]


def test_a_lineage_follows_every_input_its_manifests_name_and_only_entry_names(tmp_path):
    store = tmp_path / "artifacts"
    run = _logged_run(store)
    report = run["report"].split("/")[1]
    assert inventory.lineage(store, "report", report) == _five(run)  # inputs met twice on the way
    # An input gone (evicted a moment ago) ends its own branch only.
    import shutil

    shutil.rmtree(store / run["download"])
    assert inventory.lineage(store, "report", report) == _five(run)
    # Names that are not `<stage>/<fingerprint>` are never followed.
    manifest = json.loads((store / run["report"] / "manifest.json").read_text())
    manifest["inputs"] = ["../../etc", 42, run["evaluate"]]
    (store / run["report"] / "manifest.json").write_text(json.dumps(manifest))
    assert inventory.lineage(store, "report", report) == _five(run)


@pytest.mark.parametrize("how", ["champions a file", "record a link to nothing"])
def test_what_gc_cannot_judge_is_named(tmp_path, how):
    store = tmp_path / "artifacts"
    _crown(store, _logged_run(store))
    folder = store / "champions"
    if how == "champions a file":
        (folder / "mnist.json").unlink()
        folder.rmdir()
        folder.write_text("")
        message = f"the champion records in {folder} cannot be listed (Not a directory); gc removes nothing until they can"
    else:
        (folder / "mnist.json").unlink()
        (folder / "mnist.json").symlink_to(tmp_path / "offline" / "mnist.json")
        message = (f"the mnist champion record {folder / 'mnist.json'} cannot be opened; gc removes nothing until it "
                   "is repaired or moved aside")
    with pytest.raises(inventory.CannotJudge) as refused:
        inventory.clean(store, keep_runs=0)
    assert str(refused.value) == message


def test_a_champion_record_removed_while_gc_reads_leaves_the_others_judged(tmp_path, monkeypatch):
    store = tmp_path / "artifacts"
    fashion, mnist = _logged_run(store, "fashion_mnist"), _logged_run(store)
    _crown(store, fashion, dataset="fashion_mnist")
    _crown(store, mnist)
    read = inventory.read_champion
    from engine import layout

    def removed_meanwhile(root, dataset):
        if dataset == "fashion_mnist":  # listed, then removed before it was read
            layout.champion(root, dataset).unlink()
        return read(root, dataset)

    monkeypatch.setattr(inventory, "read_champion", removed_meanwhile)
    inventory.clean(store, keep_runs=0)
    assert _entries(store) == _five(mnist)


def test_older_than_never_takes_what_a_champion_or_a_recent_run_keeps_and_counts_the_day_itself(tmp_path):
    store = tmp_path / "artifacts"
    champion, old, recent = _logged_run(store), _logged_run(store), _logged_run(store)
    _crown(store, champion)
    week_ago = time.time() - 7 * 86400
    for name in _entries(store):
        os.utime(store / name, (week_ago, week_ago))
    inventory.clean(store, keep_runs=1, older_than_days=7)
    assert _entries(store) == _five(champion) | _five(recent)
    assert not _five(old) & _entries(store)


def test_gc_of_a_hosts_copy_of_a_bucket_prunes_the_copy_only(memory_bucket):
    fs, host = memory_bucket
    copy = host("host-a")
    store = copy.root
    old, new = _logged_run(store), _logged_run(store)
    inventory.clean(store, keep_runs=1)
    assert _entries(store) == _five(new)
    assert {f"{stage}/{fingerprint}" for stage, fingerprint in (
        key.strip("/").split("/")[2:4] for key in fs.find("team/mnist"))} == _five(old) | _five(new)


def test_an_entry_gc_cannot_remove_says_why_in_the_systems_words(tmp_path, monkeypatch):
    from pathlib import Path as RealPath

    store, outside = tmp_path / "artifacts", tmp_path / "elsewhere"
    (store / "train").mkdir(parents=True)
    outside.mkdir()
    link = store / "train" / "0123456789abcdef"
    link.symlink_to(outside)
    unlink = RealPath.unlink

    def refuse(self, missing_ok=False):
        if self == link:
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(RealPath, "unlink", refuse)
    assert inventory.clean(store, keep_runs=0)[1]["skipped_paths"] == [f"{link} (cannot be removed: Permission denied)"]


def test_gc_during_a_run_removes_nothing_and_says_so(tmp_path):
    from engine import locking

    store = tmp_path / "artifacts"
    _logged_run(store)
    before = _entries(store)
    with locking.run_in_progress(FileLockManager(store / ".locks").open(), ArtifactStore(store).identity):
        with pytest.raises(inventory.RunsInProgress) as refused:
            inventory.clean(store, keep_runs=0)
    assert str(refused.value) == "a run (or another gc) is in progress in this store: gc removes nothing until it ends"
    assert _entries(store) == before


def test_a_dry_run_makes_no_locks_folder(tmp_path):
    store = tmp_path / "artifacts"
    _logged_run(store)
    inventory.clean(store, keep_runs=0, remove=False)
    assert not (store / ".locks").exists()


def test_bytes_of_what_a_run_removes_meanwhile_count_as_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "gone").write_bytes(b"x" * 5000)
    (folder / "kept").write_bytes(b"y" * 5000)
    assert inventory.allocated(tmp_path / "missing") == 0
    lstat = os.lstat
    monkeypatch.setattr(inventory.os, "lstat", lambda path: (_ for _ in ()).throw(FileNotFoundError(path))
                        if str(path).endswith("gone") else lstat(path))
    assert inventory.allocated(folder) == _du(folder) - _du(folder / "gone")


def test_only_a_folder_that_looks_like_a_store_is_taken_for_one(tmp_path):
    store = tmp_path / "artifacts"
    _logged_run(store)
    (tmp_path / "link").symlink_to(store)
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "link", tmp_path / "file", tmp_path / "missing"):
        with pytest.raises(inventory.NotAStore) as refused:
            inventory.check(path)
        assert str(refused.value) == f"{path} is not a folder"
    for name in ("f", "e", "d", "c", "b", "a"):
        (store / name).mkdir()
    with pytest.raises(inventory.NotAStore) as refused:
        inventory.check(store)
    assert str(refused.value) == f"{store} does not look like an artifact store: it holds a, b, c, d, e"


def test_the_last_five_runs_of_a_dataset_keep_their_entries_by_default_and_ages_count_in_days(tmp_path):
    store = tmp_path / "artifacts"
    runs = [_logged_run(store) for _ in range(6)]
    rows = _listing(store)
    assert {name for name, row in rows.items() if row["recent_run"]} == set().union(*map(_five, runs[1:]))
    long_ago = time.time() - 1000.004 * 86400
    os.utime(store / runs[0]["train"], (long_ago, long_ago))
    assert _listing(store)[runs[0]["train"]]["age_days"] == 1000.0


def test_a_path_gone_while_the_store_is_listed_is_left_out_and_the_rest_listed(tmp_path, monkeypatch):
    store = tmp_path / "artifacts"
    run = _logged_run(store)
    rows = inventory._rows

    def one_gone_first(root):
        yield inventory._row("entry", root / "train" / "0123456789abcdef", "train", "0123456789abcdef")
        yield from rows(root)

    monkeypatch.setattr(inventory, "_rows", one_gone_first)
    listed = _listing(store)
    assert "train/0123456789abcdef" not in listed and _five(run) <= set(listed)


def test_store_lists_one_line_per_entry_and_a_total_and_gc_what_would_go_without_nan(tmp_path, capsys):
    store = tmp_path / "artifacts"
    champion, old, new = _logged_run(store), _logged_run(store), _logged_run(store)
    _crown(store, champion)
    (store / "train" / ".tmp-0123456789abcdef-0badcafe").mkdir()
    assert cli.main(["store", "--artifacts-dir", str(store), "--keep-runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["stage", "fingerprint", "size", "age", "last", "run", "kept", "by"]
    listed = {tuple(line.split()[:2]) for line in lines[1:-2]}
    assert listed == {tuple(name.split("/")) for run in (champion, old, new) for name in _five(run)}
    assert len(lines) == 1 + 15 + 2 and max(map(len, lines)) <= cli.PIPED_WIDTH and "NaN" not in "".join(lines)
    by_fingerprint = {line.split()[1]: line for line in lines[1:-2]}
    assert by_fingerprint[champion["train"].split("/")[1]].endswith("champion mnist")
    assert by_fingerprint[new["train"].split("/")[1]].endswith("recent run")
    assert by_fingerprint[old["train"].split("/")[1]].endswith("nothing: gc removes it")
    # The last run by its name; a line logged before runs had names, by its id's first characters.
    assert f" {old['flow_run_id'][:8]} " in by_fingerprint[old["train"].split("/")[1]]
    assert lines[-2].startswith("besides: the store's own folders and files (") and "1 leftover gc removes" in lines[-2]
    assert lines[-1].startswith(f"total: {_du(store)} bytes")

    assert cli.main(["gc", "--artifacts-dir", str(store), "--keep-runs", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["kind", "stage", "fingerprint", "size", "age", "last", "run"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["entry"] * 5 + ["leftover"]
    assert "NaN" not in captured.out and max(map(len, lines)) <= cli.PIPED_WIDTH
    assert "would free" in captured.err
    assert cli.main(["gc", "--artifacts-dir", str(store), "--json"]) == 0
    assert "NaN" not in capsys.readouterr().out
