import gzip

import numpy as np
import pytest

from tasks import idx
from tests.synthetic import write_mirror


@pytest.mark.parametrize("gzipped", [False, True])
def test_write_then_read_round_trips(tmp_path, gzipped):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    path = idx.write(tmp_path / "images", images, gzipped)
    read, sha256, _ = idx.read(path, "train_images")
    assert np.array_equal(read, images)
    assert len(sha256) == 64


def test_gzipped_write_does_not_depend_on_the_clock(tmp_path, monkeypatch):
    # Mirrors are fingerprinted by their bytes: writing the same arrays a
    # second later must give the same file, or a cached run would recompute.
    labels = np.arange(10, dtype=np.uint8)
    first = idx.write(tmp_path / "a.gz", labels, gzipped=True).read_bytes()
    monkeypatch.setattr(gzip.time, "time", lambda: 2_000_000_000.0)
    assert idx.write(tmp_path / "b.gz", labels, gzipped=True).read_bytes() == first


def test_mirror_headers_find_raw_and_gzipped_files(tmp_path):
    write_mirror(tmp_path / "raw", gzipped=False)
    write_mirror(tmp_path / "gz", gzipped=True)
    assert idx.check_mirror_headers(tmp_path / "raw")["test_labels"].name == "t10k-labels-idx1-ubyte"
    assert idx.check_mirror_headers(tmp_path / "gz")["test_labels"].name == "t10k-labels-idx1-ubyte.gz"


def test_missing_file_is_named(tmp_path):
    mirror = write_mirror(tmp_path)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(idx.IdxError, match="t10k-labels-idx1-ubyte"):
        idx.check_mirror_headers(mirror)


def test_bad_magic_number_is_refused(tmp_path):
    mirror = write_mirror(tmp_path, gzipped=False)
    (mirror / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(idx.IdxError, match="bad magic number"):
        idx.check_mirror_headers(mirror)


def test_labels_and_images_must_agree_in_count(tmp_path):
    mirror = write_mirror(tmp_path, gzipped=False)
    idx.write(mirror / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(idx.IdxError, match="256 train images but 7 labels"):
        idx.check_mirror_headers(mirror)


def test_images_must_be_28_by_28(tmp_path):
    path = idx.write(tmp_path / "images", np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(idx.IdxError, match=r"expected \(N, 28, 28\)"):
        idx.read(path, "train_images")


def test_truncated_data_is_refused(tmp_path):
    path = idx.write(tmp_path / "images", np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(idx.IdxTruncated, match="header promises 3136"):
        idx.read(path, "train_images")


def test_truncated_gzip_is_refused(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x05" + bytes(5))[:-10])
    with pytest.raises(idx.IdxTruncated, match="ends before its gzip stream does"):
        idx.read(path, "train_labels")


def test_labels_must_be_digits(tmp_path):
    path = idx.write(tmp_path / "labels", np.array([1, 2, 10], dtype=np.uint8))
    with pytest.raises(idx.IdxError, match="label 10"):
        idx.read(path, "test_labels")


def test_a_gzip_bomb_is_never_inflated(tmp_path):
    # 5 labels promised, 200 MB of zeros behind them; only 5 + 1 bytes may be inflated.
    import tracemalloc

    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x08\x01\0\0\0\x05")
        for _ in range(200):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(idx.IdxError, match="holds more than the 5 bytes of data its header promises"):
            idx.read(path, "train_labels")
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_a_header_promising_more_examples_than_any_dataset_is_refused(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\0\0\x08\x01" + (idx.MAX_COUNT + 1).to_bytes(4, "big"))
    with pytest.raises(idx.IdxError, match="more than the 1000000 this pipeline takes"):
        idx.read(path, "train_labels")


def test_a_corrupt_gzip_stream_names_its_file(tmp_path):
    path = tmp_path / "labels.gz"
    good = gzip.compress(b"\0\0\x08\x01\0\0\0\x05" + bytes(5))
    path.write_bytes(good[:10] + b"\xff" * 20)  # a deflate block of the reserved type
    with pytest.raises(idx.IdxError, match=f"{path} (is not a readable gzip file|cannot be read)"):
        idx.read(path, "train_labels")
