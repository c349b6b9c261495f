"""The flow end to end through Prefect: caching, partial reruns, recovery."""

import json
from pathlib import Path

import pytest

from flows.pipeline import mnist_pipeline
import numpy as np
from flows.config import TINY
from engine.store import ArtifactStore

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
STAGES = ["download", "preprocess", "train", "evaluate", "report"]


@pytest.fixture
def run(mirror, store):
    def run(**overrides):
        params = {"mirror": str(mirror), "artifacts_dir": store, **TINY, "train_limit": None, **overrides}
        return mnist_pipeline(**params)

    return run


def _states(summary):
    return [summary["stages"][stage]["state"] for stage in STAGES]


def test_second_run_is_served_entirely_from_cache(run):
    first = run()
    assert first["state"] == "Completed"
    assert _states(first) == ["Completed"] * 5
    second = run()
    assert _states(second) == ["Cached"] * 5
    assert second["metrics"] == first["metrics"]
    assert second["report"] == first["report"]
    assert [s["artifact"] for s in second["stages"].values()] == [s["artifact"] for s in first["stages"].values()]
    assert second["flow_run_id"] != first["flow_run_id"]


def test_changing_epochs_reruns_only_training_and_after(run):
    run(epochs=1)
    summary = run(epochs=2)
    assert _states(summary) == ["Cached", "Cached", "Completed", "Completed", "Completed"]
    assert summary["train"]["epochs_run"] == 2


def test_an_edit_reruns_what_it_changes_and_what_comes_out_different_only(run, monkeypatch, request):
    """Keys follow content: the stages after an edited one run again only if what it wrote changed."""
    from engine import caching

    request.addfinalizer(caching.source_digest.cache_clear)  # after monkeypatch's undo: the real sources again
    run()
    real = caching._source

    def edited(*modules):
        monkeypatch.setattr(caching, "_source", lambda name: real(name) + (b"\n# edited" if name in modules else b""))
        caching.source_digest.cache_clear()

    edited("tasks.plots")  # a figure's look: only the report draws figures
    assert _states(run()) == ["Cached", "Cached", "Cached", "Cached", "Completed"]
    edited("tasks.plots", "tasks.preprocess")  # an edit of preprocess that leaves its arrays as they were
    assert _states(run()) == ["Cached", "Completed", "Cached", "Cached", "Cached"]
    real_versions = caching.library_versions
    monkeypatch.setattr(caching, "library_versions", lambda names: {**real_versions(names), **(
        {"markdown": "99.0"} if "markdown" in names else {})})  # a library only the report uses, upgraded
    assert _states(run()) == ["Cached", "Cached", "Cached", "Cached", "Completed"]


def test_corrupted_entry_is_recomputed_not_served(run, store):
    first = run()
    entry = ArtifactStore(store).root / "preprocess" / first["stages"]["preprocess"]["artifact"].rsplit("/", 1)[1]
    intact = (entry / "train_x.npy").read_bytes()
    with open(entry / "train_x.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(bytes(255 - b for b in intact[-4:]))
    second = run()
    assert _states(second) == ["Cached", "Completed", "Cached", "Cached", "Cached"]
    assert (entry / "train_x.npy").read_bytes() == intact  # computed again, the same


def test_records_planted_in_the_store_are_never_read(run, store):
    # Prefect would deserialize a record with the serializer it names; here records are made from the entry.
    from tests.test_records import MARKER, Payload, _record

    from prefect.serializers import JSONSerializer, PickleSerializer

    first = run()
    MARKER.unlink(missing_ok=True)
    train = Path(first["stages"]["train"]["artifact"])
    evaluate = Path(first["stages"]["evaluate"]["artifact"])
    ref = ArtifactStore(store).load_ref("evaluate", evaluate.name)
    (train / "result.json").write_bytes(_record(ref, PickleSerializer(), Payload()))
    (evaluate / "result.json").write_bytes(_record(ref.model_copy(update={"test_accuracy": 0.999}), JSONSerializer()))
    second = run()
    assert _states(second) == ["Cached"] * 5
    assert second["metrics"] == first["metrics"]
    assert not MARKER.exists()


def test_summary_matches_the_contract(run, store):
    summary = run()
    assert set(summary) == {"flow_run_id", "state", "stages", "train", "metrics", "report", "gate", "run_report"}
    # CONTRACT.md's three, and the verdict in words that this project adds (README: the quality gate).
    assert set(summary["gate"]) == {"passed", "champion_accuracy", "reason", "verdict"}
    assert summary["gate"]["verdict"] in ("promoted to champion", "already the champion", "not promoted")
    for stage in STAGES:
        record = summary["stages"][stage]
        assert set(record) == {"state", "seconds", "attempts", "artifact"}
        assert record["attempts"] == 1
        assert record["artifact"].startswith(f"{store}/{stage}/")
    # The contract's fields, and which split each figure comes from (the README's extension).
    assert set(summary["train"]) == {"epochs_run", "epoch_seconds", "resumed_from_epoch", "device", "batch_size", "replicas", "notes",
                                     "train_count", "validation_count", "validated_on", "validation_accuracy",
                                     "validation_loss"}
    assert summary["train"]["validated_on"] == "validation"
    assert set(summary["metrics"]) == {"test_accuracy", "test_loss", "test_count", "test_sha256"}
    assert 0.0 <= summary["metrics"]["test_accuracy"] <= 1.0


def test_invalid_parameter_is_refused_before_any_stage(store):
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="greater than or equal to 1"):
        mnist_pipeline(epochs=0, artifacts_dir=store)
    assert not Path(store).exists()  # no stage wrote anything


def test_unwritable_store_fails_clearly_and_leaves_no_entry(mirror, tmp_path):
    from engine.store import StoreError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot write to the artifact store .*: Not a directory"):
        mnist_pipeline(mirror=str(mirror), artifacts_dir=str(blocker / "artifacts"), **TINY)


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system (tmpfs): room for the download entry (~290 KiB), not for preprocess (~390 KiB)."""
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_full_disk_fails_clearly_leaves_no_entry_and_recovers(mirror, small_disk):
    import subprocess

    from flows.runner import StageFailed

    store = small_disk / "artifacts"
    with pytest.raises(StageFailed, match=f"stage preprocess failed: the artifact store {store} is full: "
                                          "no space left on device while writing the preprocess entry") as failure:
        mnist_pipeline(mirror=str(mirror), artifacts_dir=str(store), **TINY)
    stages = failure.value.summary["stages"]
    assert stages["download"]["state"] == "Completed"
    assert stages["preprocess"]["attempts"] == 1  # a full disk stays full: not retried
    # Nothing of the failed stage is left: no entry, and no temporary folder.
    assert [p.name for p in (store / "preprocess").iterdir()] == []
    download = ArtifactStore(store).root / "download"
    (entry,) = download.iterdir()
    assert ArtifactStore(store).problem("download", entry.name) is None

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    summary = mnist_pipeline(mirror=str(mirror), artifacts_dir=str(store), **TINY)
    assert _states(summary)[:2] == ["Cached", "Completed"]
    assert summary["state"] == "Completed"


def test_deterministic_failure_is_not_retried(tmp_path, store):
    from tests.synthetic import write_mirror
    from flows.runner import StageFailed

    mirror = write_mirror(tmp_path / "mirror", gzipped=False)
    labels = mirror / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\0")  # longer than its header says: malformed, not in transit
    with pytest.raises(StageFailed, match="more than the 100 bytes of data its header promises") as failure:
        mnist_pipeline(mirror=str(mirror), artifacts_dir=store, **TINY)
    assert failure.value.summary["stages"]["download"]["attempts"] == 1
    # No record of the exception is left at the store's root.
    assert sorted(p.name for p in Path(store).iterdir()) == [".locks", "download"]


def test_gate_promotes_a_good_model_and_refuses_a_weak_one(run, store):
    from engine.champions import read_champion

    promoted = run(accuracy_threshold=0.5)
    assert promoted["gate"]["passed"] is True and promoted["gate"]["verdict"] == "promoted to champion"
    champion = read_champion(store, "mnist")
    assert champion.test_accuracy == promoted["metrics"]["test_accuracy"]
    # The same model again, every stage cached: already the champion, not promoted a second time.
    again = run(accuracy_threshold=0.5)
    assert again["gate"]["verdict"] == "already the champion" and again["gate"]["passed"] is True
    assert read_champion(store, "mnist") == champion

    state = run(accuracy_threshold=0.999, seed=1, return_state=True)
    assert state.is_completed() and state.name == "NotPromoted"
    refused = state.result()
    assert refused["gate"]["passed"] is False
    assert "under the threshold 0.9990" in refused["gate"]["reason"]
    assert read_champion(store, "mnist") == champion


def test_runs_are_logged_with_parameters_metrics_and_gate(run, store):
    from engine import runlog

    first = run(accuracy_threshold=0.5)
    second = run(accuracy_threshold=0.999, seed=1)  # another model: the first's own would be the champion already
    table = runlog.read(store)
    assert list(table["flow_run_id"]) == [first["flow_run_id"], second["flow_run_id"]]
    assert list(table["gate_passed"]) == [True, False]
    assert list(table["epochs"]) == [TINY["epochs"]] * 2
    assert table["test_accuracy"].iloc[0] == first["metrics"]["test_accuracy"]


def test_flow_run_publishes_its_artifacts(run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    earlier = run(accuracy_threshold=0.5, seed=1)
    summary = run(accuracy_threshold=0.5)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[summary["flow_run_id"]])))
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) >= {"mnist-report", "mnist-metrics", "mnist-report-html", "train-progress"}
    assert by_key["train-progress"].type == "progress" and by_key["train-progress"].data == 100.0
    assert by_key["mnist-metrics"].type == "table"
    markdown = by_key["mnist-report"].data
    assert "## Quality gate" in markdown and "## This run" in markdown
    page = Path(summary["run_report"]).read_text()
    for section in ("Dataset", "Metrics", "Quality gate", "This run", "Earlier runs"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") == 5
    assert f"the best of the 1 runs before it on the same test data: {earlier['metrics']['test_accuracy']:.4f}" \
        in markdown
    assert by_key["mnist-report-html"].data.startswith("[report.html](file://")  # no file server here
    assert markdown.startswith(f"**Test accuracy {summary['metrics']['test_accuracy']:.4f}** (test split)")


def test_runs_command_lists_what_ran(run, store, capsys):
    from prefect.client.orchestration import get_client

    from ops import cli

    summary = run(accuracy_threshold=0.5)
    assert cli.main(["runs", "--artifacts-dir", store, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["flow_run_id"] for r in listed] == [summary["flow_run_id"]]
    # By default one screen wide, the run by the name the Prefect UI gives it, recorded when it ran.
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(summary["flow_run_id"]).name
    assert listed[0]["run_name"] == name
    assert cli.main(["runs", "--artifacts-dir", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["when", "run", "dataset", "epochs", "batch", "lr", "test", "accuracy", "gate"]
    assert f" {name} " in lines[-1] and max(map(len, lines)) <= 120
    assert cli.main(["runs", "--artifacts-dir", store, "--all"]) == 0
    assert summary["flow_run_id"] in capsys.readouterr().out


def test_bad_lines_in_the_run_log_and_a_damaged_champion_block_nothing(run, store, capsys):
    from ops import cli

    run(accuracy_threshold=0.5)
    champion = Path(store) / "champions" / "mnist.json"
    champion.write_text(champion.read_text()[:20])  # cut short
    with open(Path(store) / "runs.jsonl", "a") as log:
        log.write('42\nnull\n{"flow_run_id": "x", "test_accuracy": "high"}\n')
    summary = run(accuracy_threshold=0.5, seed=1)
    assert summary["gate"]["passed"] and summary["gate"]["champion_accuracy"] is None
    assert len(list(champion.parent.glob("mnist.json.damaged-*"))) == 1  # the evidence, kept
    assert cli.main(["runs", "--artifacts-dir", store, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == 2


def test_a_full_disk_after_the_gate_leaves_the_previous_state(run, store, monkeypatch):
    import os

    from engine import store as store_module
    from engine.store import StoreError

    # A champion the next model beats: one epoch at a learning rate too small to learn anything.
    first = run(accuracy_threshold=0.0, epochs=1, learning_rate=1e-6)
    before = {name: (Path(store) / name).read_bytes() for name in ("champions/mnist.json", "runs.jsonl")}
    runs_before = sorted(p.name for p in (Path(store) / "runs").iterdir())
    real_replace = os.replace

    def full_at_the_champion(src, dst):
        if str(dst).endswith("champions/mnist.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(store_module.os, "replace", full_at_the_champion)
    monkeypatch.setattr(store_module.os, "statvfs", lambda path: Full)
    with pytest.raises(StoreError, match="the artifact store is full: no space left on device while writing .*mnist.json"):
        run(accuracy_threshold=0.5, seed=1)  # a new model that passes the gate
    monkeypatch.undo()
    assert {name: (Path(store) / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (Path(store) / "runs").iterdir()) == runs_before
    assert not [p for p in Path(store).rglob(".*") if p.is_file() and p.parent.name != ".locks"]
    assert first["gate"]["passed"]
