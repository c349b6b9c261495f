import socket

import numpy as np
import pytest

from tasks import download
from flows.stages import download_dataset
from tasks.download import DownloadUnavailable
from engine.store import ArtifactStore
from tests.synthetic import write_mirror


def test_mirror_is_read_checked_and_stored(mirror, store):
    ref = download_dataset.fn(store, "mnist", str(mirror))
    arrays = ref.at(store).arrays()
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
    arrays = ref.at(store).arrays()
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


def test_the_family_checksums_come_from_tfds_and_the_measured_table():
    known = download.known_checksums()
    assert known["440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"] == "mnist"
    assert known["3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"] == "fashion_mnist"
    assert {known[sha] for sha in download.CONTENT_SHA256} == {"fashion_mnist"}


@pytest.mark.parametrize("gzipped", [True, False])
def test_another_datasets_files_are_refused_naming_it(tmp_path, store, monkeypatch, gzipped):
    # The synthetic files play Fashion-MNIST's: their checksums are made the registered ones.
    from tasks import idx

    mirror = write_mirror(tmp_path / "mirror", gzipped=gzipped)
    images = mirror / ("train-images-idx3-ubyte" + (".gz" if gzipped else ""))
    content = idx.read(images, "train_images").content_sha256
    monkeypatch.setitem(download.CONTENT_SHA256, content, "fashion_mnist")
    with pytest.raises(idx.IdxError, match=f"mirror {mirror} holds fashion_mnist, not mnist: {images.name} has "
                                           "the checksum of fashion_mnist's; pass --dataset fashion_mnist"):
        download_dataset.fn(store, "mnist", str(mirror))
    # As fashion_mnist it passes; its three other files are unknown, and said so.
    assert "are not registered for fashion_mnist" in download_dataset.fn(store, "fashion_mnist", str(mirror)).warnings[0]


def test_unknown_checksums_are_a_warning_in_the_reference(mirror, store):
    ref = download_dataset.fn(store, "mnist", str(mirror))
    assert len(ref.warnings) == 1
    assert "are not registered for mnist: the data may not be mnist" in ref.warnings[0]
    assert "train-images-idx3-ubyte.gz" in ref.warnings[0]
