"""The artifact store in S3, against a real S3 API on loopback (moto's server)."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from engine import remote
from engine.caching import EntryRecords  # imports Prefect, which sets up logging before caplog
from engine.layout import MANIFEST
from engine.store import ArtifactStore
from tests.prefect_homes import prefect_home

pytestmark = pytest.mark.e2e  # moto's S3 server: out of the fast lane


@pytest.fixture
def bucket(s3_settings, monkeypatch, tmp_path) -> str:
    """A fresh bucket, and the settings that reach it; this test's local copies under tmp_path."""
    for name, value in s3_settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "host-a"))
    name = f"mnist-{uuid.uuid4().hex[:12]}"
    remote.Remote(f"s3://{name}").fs.mkdir(name)
    return f"s3://{name}/team"


def _publish(store: ArtifactStore, fingerprint: str = "0123456789abcdef") -> None:
    with store.writing("evaluate", fingerprint) as folder:
        (folder / "metrics.json").write_text('{"test_accuracy": 0.5}')
        (folder / "ref.json").write_text(json.dumps({"stage": "evaluate", "fingerprint": fingerprint,
                                                     "test_accuracy": 0.5, "test_loss": 1.0, "test_count": 2,
                                                     "test_sha256": "a" * 64}))


def test_a_published_entry_is_in_the_bucket_and_another_host_fetches_and_verifies_it(bucket, tmp_path, monkeypatch):
    store = ArtifactStore(remote.local_root(bucket))
    _publish(store)
    objects = remote.Remote(bucket).fs.find(remote.bucket_path(bucket))
    assert sorted(key.rsplit("/", 1)[1] for key in objects) == [MANIFEST, "metrics.json", "ref.json"]

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "host-b"))  # a host that has never seen it
    elsewhere = ArtifactStore(remote.local_root(bucket))
    assert not elsewhere.entry("evaluate", "0123456789abcdef").exists()
    assert elsewhere.exists("evaluate", "0123456789abcdef")
    assert elsewhere.problem("evaluate", "0123456789abcdef") is None
    assert (elsewhere.entry("evaluate", "0123456789abcdef") / "metrics.json").read_text() == '{"test_accuracy": 0.5}'


def test_a_damaged_object_is_never_served_and_the_entry_leaves_the_bucket(bucket, tmp_path, monkeypatch):
    _publish(ArtifactStore(remote.local_root(bucket)))
    fs = remote.Remote(bucket).fs
    fs.pipe_file(f"{remote.bucket_path(bucket)}/evaluate/0123456789abcdef/metrics.json", b'{"test_accuracy": 1.0}')

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "host-b"))
    elsewhere = ArtifactStore(remote.local_root(bucket))
    assert "metrics.json does not match its checksum" in elsewhere.problem("evaluate", "0123456789abcdef")
    elsewhere.evict("evaluate", "0123456789abcdef")
    assert not elsewhere.exists("evaluate", "0123456789abcdef")
    assert not fs.exists(f"{remote.bucket_path(bucket)}/evaluate/0123456789abcdef/{MANIFEST}")


def test_an_entry_without_its_manifest_does_not_count(bucket):
    store = ArtifactStore(remote.local_root(bucket))
    fs = remote.Remote(bucket).fs
    fs.pipe_file(f"{remote.bucket_path(bucket)}/evaluate/0123456789abcdef/metrics.json", b"{}")  # an upload cut short
    assert not store.exists("evaluate", "0123456789abcdef")
    assert store.problem("evaluate", "0123456789abcdef").endswith(f"{MANIFEST} is missing")


@pytest.mark.parametrize("url", ["s3://", "s3://bucket/../other", "s3:///prefix"])
def test_an_address_without_a_bucket_is_refused(url):
    with pytest.raises(ValueError, match="is not an s3://bucket/prefix address"):
        remote.bucket_path(url)


def _run(tmp_path, store: str, cache: str, mirror, s3_settings):
    env = {**os.environ, **s3_settings, "PREFECT_HOME": str(prefect_home(tmp_path / "home")), remote.CACHE_ENV: str(tmp_path / cache)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "ops.cli", "run", "--mirror", str(mirror), "--epochs", "1",
                           "--batch-size", "16", "--artifacts-dir", store, "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {stage: r["state"] for stage, r in json.loads(done.stdout.strip().splitlines()[-1])["stages"].items()}


def test_a_run_on_s3_reruns_all_cached_from_another_hosts_copy_and_recomputes_a_damaged_object(
        bucket, tmp_path, mirror, s3_settings):
    assert set(_run(tmp_path, bucket, "host-a", mirror, s3_settings).values()) == {"Completed"}
    # Another host: an empty local copy, everything from the bucket.
    assert set(_run(tmp_path, bucket, "host-b", mirror, s3_settings).values()) == {"Cached"}
    fs = remote.Remote(bucket).fs
    model = next(key for key in fs.find(remote.bucket_path(bucket)) if "/train/" in key and key.endswith("/model.keras"))
    fs.pipe_file(model, b"not a model")
    states = _run(tmp_path, bucket, "host-c", mirror, s3_settings)
    assert (states["download"], states["preprocess"], states["train"]) == ("Cached", "Cached", "Completed")


@pytest.mark.usefixtures("prefect_harness")
def test_a_hosts_copy_uploads_each_entry_it_serves_that_the_bucket_lacks(bucket, mirror):
    from flows.config import TINY
    from flows.pipeline import mnist_pipeline

    from engine import inventory

    first = mnist_pipeline(mirror=str(mirror), artifacts_dir=bucket, **TINY)
    fs = remote.Remote(bucket).fs
    fs.rm(remote.bucket_path(bucket), recursive=True)  # a new or emptied bucket, the host's copy as it was
    assert not fs.find(remote.bucket_path(bucket))
    listed = inventory.inventory(remote.local_root(bucket))  # `store` shows them: in this host's copy only
    assert set(listed[listed["local_only"]]["stage"]) == set(first["stages"])
    second = mnist_pipeline(mirror=str(mirror), artifacts_dir=bucket, **TINY)
    assert {stage["state"] for stage in second["stages"].values()} == {"Cached"}
    in_bucket = {key.split("/")[-3]: key.split("/")[-2] for key in fs.find(remote.bucket_path(bucket))
                 if key.endswith(f"/{MANIFEST}")}
    assert in_bucket == {name: stage["artifact"].rsplit("/", 1)[1] for name, stage in first["stages"].items()}
    store = ArtifactStore(remote.local_root(bucket))
    assert all(store.in_bucket(name, fingerprint) for name, fingerprint in in_bucket.items())


def test_a_remote_file_planted_in_a_store_on_disk_is_refused_and_uploads_nothing(bucket, tmp_path, mirror, capsys):
    from ops import cli
    from engine.store import StoreError

    store = tmp_path / "store"
    store.mkdir()
    (store / remote.MARKER).write_text(f"{bucket}\n")  # not this host's copy of that bucket
    message = (f"{store} holds {store / remote.MARKER}, naming a bucket, but is not this host's copy of that bucket "
               f"(under {remote.CACHE_ENV}); a store's bucket comes from its s3:// address alone: remove the file")
    with pytest.raises(StoreError) as refused:
        _publish(ArtifactStore(store))
    assert str(refused.value) == message
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--mirror", str(mirror), "--artifacts-dir", str(store)])
    assert exit_info.value.code == cli.EXIT_INVALID
    assert capsys.readouterr().err == f"mnist-pipeline: error: --artifacts-dir {message}\n"
    assert not remote.Remote(bucket).fs.find(remote.bucket_path(bucket))


def test_an_upload_that_fails_is_one_line_and_the_entry_is_served_all_the_same(bucket, monkeypatch, caplog):
    store = ArtifactStore(remote.local_root(bucket))
    _publish(store)
    remote.Remote(bucket).fs.rm(remote.bucket_path(bucket), recursive=True)

    def refused(*args):
        raise PermissionError("Access Denied\nmore of the answer")

    monkeypatch.setattr(remote.Remote, "upload", refused)
    assert EntryRecords(basepath=str(store.root)).read_path("evaluate/0123456789abcdef/result.json")
    assert (f"The evaluate entry 0123456789abcdef may be missing from {bucket}, and could not be uploaded: "
            "Access Denied\n") in caplog.text
