"""`mnist-pipeline store` and `gc`: what the store holds, and a clean-up that keeps what matters."""

import json
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
