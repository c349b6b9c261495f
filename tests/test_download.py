import socket

import numpy as np
import pytest

from tasks import download
from tasks.download import DownloadUnavailable, download_dataset
from tasks.store import ArtifactStore
from tests.synthetic import write_mirror


def test_mirror_is_read_checked_and_stored(mirror, store):
    ref = download_dataset.fn(store, "mnist", str(mirror))
    arrays = download.load_arrays(ArtifactStore(store).path(ref))
    assert (ref.train_count, ref.test_count) == (256, 100)
    assert arrays["train_images"].shape == (256, 28, 28)
    assert arrays["train_images"].dtype == np.uint8
    assert set(ref.files_sha256) == {p.name for p in mirror.iterdir()}
    assert ref.arrays_sha256 == download.arrays_sha256(arrays)


def test_raw_and_gzipped_mirrors_give_the_same_arrays(tmp_path, store):
    raw = download_dataset.fn(store, "mnist", str(write_mirror(tmp_path / "raw", gzipped=False)))
    gz = download_dataset.fn(store, "mnist", str(write_mirror(tmp_path / "gz", gzipped=True)))
    assert raw.arrays_sha256 == gz.arrays_sha256
    assert raw.files_sha256 != gz.files_sha256


def test_mirror_fingerprint_follows_content_not_path(tmp_path, store):
    first = download_dataset.fn(store, "mnist", str(write_mirror(tmp_path / "a", seed=1)))
    same = download_dataset.fn(store, "mnist", str(write_mirror(tmp_path / "b", seed=1)))
    other = download_dataset.fn(store, "mnist", str(write_mirror(tmp_path / "c", seed=2)))
    assert first.fingerprint == same.fingerprint != other.fingerprint


def test_truncated_mirror_file_fails_the_stage(tmp_path, store):
    mirror = write_mirror(tmp_path, gzipped=False)
    images = mirror / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-784])
    with pytest.raises(ValueError, match="header promises"):
        download_dataset.fn(store, "mnist", str(mirror))
    assert not (ArtifactStore(store).root / "download").exists() or not any(
        p for p in (ArtifactStore(store).root / "download").iterdir() if not p.name.startswith(".")
    )


def test_tfds_path_through_mock_data(store, monkeypatch):
    import tensorflow_datasets as tfds

    # The reachability probe is the only network call; mock_data stands in for the rest.
    monkeypatch.setattr(download, "check_reachable", lambda urls, dataset: None)
    with tfds.testing.mock_data(num_examples=16):
        ref = download_dataset.fn(store, "mnist")
    arrays = download.load_arrays(ArtifactStore(store).path(ref))
    assert ref.source == "tfds"
    assert arrays["train_images"].shape == (16, 28, 28)
    assert arrays["test_labels"].max() < 10
    assert ref.files_sha256["train-images-idx3-ubyte.gz"].startswith("440fcabf")


def test_offline_download_fails_fast_naming_mirror(store, monkeypatch):
    def unreachable(address, timeout):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(DownloadUnavailable, match="storage.googleapis.com is unreachable.*--mirror"):
        download_dataset.fn(store, "mnist")


def test_registered_urls_come_from_tfds():
    urls = download.registered_urls("fashion_mnist")
    assert len(urls) == 4
    assert all(url.endswith(".gz") for url in urls)
