import pytest

from tasks.refs import PreparedRef
from engine.store import MANIFEST, REF, ArtifactStore, StoreError

FP = "0123456789abcdef"


def _publish(store: ArtifactStore, content: bytes = b"weights") -> None:
    with store.writing("preprocess", FP) as folder:
        (folder / REF).write_text(PreparedRef(stage="preprocess", fingerprint=FP, train_count=1, validation_count=0, test_count=1, test_sha256="0" * 64)
                                  .model_dump_json())
        (folder / "model.bin").write_bytes(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "history.csv").write_text("epoch\n1\n")


def test_entry_appears_complete_with_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store)
    assert store.problem("preprocess", FP) is None
    assert (store.entry("preprocess", FP) / MANIFEST).is_file()
    assert [p.name for p in (tmp_path / "preprocess").iterdir()] == [FP]


def test_failed_build_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing("preprocess", FP) as folder:
            (folder / "model.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not store.exists("preprocess", FP)
    assert list((tmp_path / "preprocess").iterdir()) == []


def test_corrupted_file_is_named(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store)
    (store.entry("preprocess", FP) / "model.bin").write_bytes(b"weighty")
    assert "model.bin does not match its checksum" in store.problem("preprocess", FP)


def test_same_size_corruption_is_caught_by_checksum(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store)
    (store.entry("preprocess", FP) / "model.bin").write_bytes(b"WEIGHTS")
    assert "does not match its checksum" in store.problem("preprocess", FP)


def test_missing_file_and_manifest_are_problems(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store)
    (store.entry("preprocess", FP) / "sub" / "history.csv").unlink()
    assert "history.csv is missing" in store.problem("preprocess", FP)
    (store.entry("preprocess", FP) / MANIFEST).unlink()
    assert "manifest.json is missing" in store.problem("preprocess", FP)


def test_evict_removes_the_entry(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store)
    store.evict("preprocess", FP)
    assert not store.exists("preprocess", FP)
    assert list((tmp_path / "preprocess").iterdir()) == []


def test_unwritable_store_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot write to the artifact store"):
        _publish(ArtifactStore(blocker))


def test_half_written_entry_of_a_dead_writer_is_cleared(tmp_path):
    store = ArtifactStore(tmp_path)
    stale = tmp_path / "preprocess" / f".tmp-{FP}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"half")
    _publish(store)
    assert not stale.exists()
    assert store.problem("preprocess", FP) is None


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), OSError("200704 requested and 186336 written")])
def test_full_disk_is_named_and_leaves_nothing_behind(tmp_path, monkeypatch, error):
    # A short write without an errno (NumPy's) counts as a full disk only when the disk is full.
    import os

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    store = ArtifactStore(tmp_path)
    with pytest.raises(StoreError, match=f"artifact store {tmp_path} is full: .* while writing the preprocess entry"):
        with store.writing("preprocess", FP) as folder:
            (folder / "model.bin").write_bytes(b"half")
            raise error
    assert list((tmp_path / "preprocess").iterdir()) == []


@pytest.mark.parametrize("error", [OSError("200704 requested and 186336 written"), OSError(28, "No space left")])
def test_no_space_elsewhere_is_not_called_a_full_store(tmp_path, error):
    store = ArtifactStore(tmp_path)  # pytest's temporary folder has room
    with pytest.raises(OSError, match="requested and|No space"):  # passed on as it was, not a StoreError
        with store.writing("preprocess", FP):
            raise error


def test_other_errors_without_errno_are_not_called_a_full_disk(tmp_path, monkeypatch):
    import os

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(TimeoutError):
        with ArtifactStore(tmp_path).writing("preprocess", FP):
            raise TimeoutError("the download timed out")


def test_a_store_path_that_is_a_file_is_not_a_directory(tmp_path):
    blocker = tmp_path / "artifacts"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=f"cannot write to the artifact store {blocker}: Not a directory"):
        ArtifactStore(blocker).open()


def test_a_locks_folder_that_is_a_file_is_refused_not_ignored(tmp_path):
    from engine.locking import FileLockManager

    (tmp_path / ".locks").write_text("")
    with pytest.raises(StoreError, match=f"cannot keep locks in {tmp_path / '.locks'}: Not a directory"):
        FileLockManager(tmp_path / ".locks").open()


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    import os

    from engine.store import write_atomically

    target = tmp_path / "champion.json"
    target.write_text("old")

    class Full:
        f_bavail, f_frsize = 3, 4096

    def no_room(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_room)
    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(StoreError, match=f"no space left on device while writing {target}"):
        write_atomically(target, "new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["champion.json"] and target.read_text() == "old"


def _add_to_manifest(entry, name: str, like) -> None:
    """A manifest entry for `name` with the size and checksum of the file `like`: right, but for its name."""
    import json

    from engine.store import sha256_file

    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_file(like), "bytes": like.stat().st_size}
    (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../../../secret.txt", "sub/../../../../secret.txt", "ABSOLUTE"])
def test_a_manifest_that_names_a_file_outside_its_entry_is_refused(tmp_path, name):
    store = ArtifactStore(tmp_path / "store")
    _publish(store)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the store")
    entry = store.entry("preprocess", FP)
    _add_to_manifest(entry, str(secret) if name == "ABSOLUTE" else name, secret)
    assert "a file outside the entry" in store.problem("preprocess", FP)


def test_a_file_replaced_by_a_link_to_the_same_bytes_is_refused(tmp_path):
    import shutil

    store = ArtifactStore(tmp_path / "store")
    _publish(store)
    entry = store.entry("preprocess", FP)
    shutil.copy(entry / "model.bin", tmp_path / "elsewhere.bin")
    (entry / "model.bin").unlink()
    (entry / "model.bin").symlink_to(tmp_path / "elsewhere.bin")
    assert store.problem("preprocess", FP) == f"{entry / 'model.bin'} is a symbolic link"


def test_an_entry_that_is_a_link_to_a_whole_entry_elsewhere_is_refused(tmp_path):
    elsewhere = ArtifactStore(tmp_path / "elsewhere")
    _publish(elsewhere)
    assert elsewhere.problem("preprocess", FP) is None
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "store" / "preprocess").mkdir(parents=True)
    store.entry("preprocess", FP).symlink_to(elsewhere.entry("preprocess", FP))
    assert store.problem("preprocess", FP) == f"{store.entry('preprocess', FP)} is a symbolic link"


# A store in S3, against an in-memory bucket (conftest's memory_bucket): what the store does with its bucket, in
# milliseconds. tests/test_s3.py tries the same against a real S3 API (moto), end to end.

_WHOLE = sorted(f"{FP}/{name}" for name in (MANIFEST, REF, "model.bin", "sub/history.csv"))


def _objects(fs) -> list:
    return sorted(key.split("/preprocess/", 1)[1] for key in fs.find("team/mnist"))


def test_a_published_entry_is_uploaded_and_another_host_fetches_and_verifies_it(memory_bucket, monkeypatch):
    fs, host = memory_bucket
    a = host("host-a")
    assert a.identity == "s3://team/mnist" and a.remote.path == "team/mnist"
    _publish(a)
    assert _objects(fs) == _WHOLE
    b = host("host-b")  # a host that has never seen the entry, nor the stage's folder
    assert not (b.root / "preprocess").exists()
    assert b.exists("preprocess", FP) and not b.exists("preprocess", "f" * 16)
    fetched_into = []
    fetch = type(b.remote).fetch
    monkeypatch.setattr(type(b.remote), "fetch", lambda self, stage, fp, into: fetched_into.append(into.name) or fetch(
        self, stage, fp, into))
    assert b.problem("preprocess", FP) is None
    assert fetched_into[0].startswith(f".fetch-{FP}-")  # a name gc knows for a leftover, never an entry's
    assert (b.entry("preprocess", FP) / "model.bin").read_bytes() == b"weights"
    assert [p.name for p in (b.root / "preprocess").iterdir()] == [FP]  # no `.fetch-` folder left
    assert b.problem("preprocess", "f" * 16) == f"{b.entry('preprocess', 'f' * 16) / MANIFEST} is missing"
    assert [p.name for p in (b.root / "preprocess").iterdir()] == [FP]


def test_an_upload_that_fails_publishes_nothing_locally(memory_bucket, monkeypatch):
    fs, host = memory_bucket
    a = host("host-a")

    def unreachable(*args, **kwargs):
        raise ConnectionError("the bucket is unreachable")

    monkeypatch.setattr(fs, "put_file", unreachable)
    with pytest.raises(ConnectionError):
        _publish(a)
    assert not a.entry("preprocess", FP).exists() and list((a.root / "preprocess").iterdir()) == []


def test_an_entry_the_bucket_lacks_is_uploaded_once(memory_bucket, monkeypatch):
    fs, host = memory_bucket
    a = host("host-a")
    _publish(a)
    fs.rm("team/mnist/preprocess", recursive=True)  # an emptied bucket
    asked = []
    has = type(a.remote).has
    monkeypatch.setattr(type(a.remote), "has", lambda self, *entry: asked.append(entry) or has(self, *entry))
    assert not a.in_bucket("preprocess", FP)
    assert a.share("preprocess", FP) is True
    assert _objects(fs) == _WHOLE
    assert a.in_bucket("preprocess", FP) and a.share("preprocess", FP) is False
    assert asked == [("preprocess", FP), ("preprocess", FP)]  # known to be there from then on: not asked again
    assert ArtifactStore(a.root.parent.parent / "on-disk").share("preprocess", FP) is False  # a store on disk


def test_an_entry_evicted_leaves_the_bucket_too_unless_pruned_in_this_hosts_copy_only(memory_bucket):
    fs, host = memory_bucket
    a = host("host-a")
    _publish(a)
    assert a.in_bucket("preprocess", FP)
    assert a.evict("preprocess", FP, remote=False) is None
    assert not a.entry("preprocess", FP).exists() and a.exists("preprocess", FP) and a.in_bucket("preprocess", FP)
    assert a.problem("preprocess", FP) is None  # fetched back
    assert a.evict("preprocess", FP) is None
    assert _objects(fs) == [] and not a.exists("preprocess", FP)
    assert not a.in_bucket("preprocess", FP)


def test_a_file_changed_after_it_was_verified_is_caught_next_time(tmp_path):
    """Checksums are remembered per version of a file (its inode, size and times), never per name alone."""
    store = ArtifactStore(tmp_path)
    _publish(store)
    assert store.problem("preprocess", FP) is None
    (store.entry("preprocess", FP) / "model.bin").write_bytes(b"WEIGHTS")  # the same size
    assert store.problem("preprocess", FP) == f"{store.entry('preprocess', FP) / 'model.bin'} does not match its checksum"


def test_an_entry_that_is_not_there_is_named_missing(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "preprocess").mkdir()
    assert store.problem("preprocess", FP) == f"{store.entry('preprocess', FP) / MANIFEST} is missing"
    assert list((tmp_path / "preprocess").iterdir()) == []


@pytest.mark.parametrize("manifest, why", [("{", "is unreadable (Expecting property name"),
                                           ('{"files": 42}', "is malformed (TypeError("),
                                           ('{"files": {"ref.json": {"bytes": 1}}}', "is malformed (KeyError('sha256')")])
def test_a_manifest_that_cannot_be_read_is_named(tmp_path, manifest, why):
    store = ArtifactStore(tmp_path)
    _publish(store)
    (store.entry("preprocess", FP) / MANIFEST).write_text(manifest)
    assert store.problem("preprocess", FP).startswith(f"{store.entry('preprocess', FP) / MANIFEST} {why}")


def test_a_ref_that_names_another_entry_is_named(tmp_path):
    import json

    from engine.store import sha256_file

    store = ArtifactStore(tmp_path)
    _publish(store)
    entry = store.entry("preprocess", FP)
    ref = json.loads((entry / REF).read_text())
    (entry / REF).write_text(json.dumps({**ref, "fingerprint": "f" * 16}))
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"][REF] = {"sha256": sha256_file(entry / REF), "bytes": (entry / REF).stat().st_size}
    (entry / MANIFEST).write_text(json.dumps(manifest))
    assert store.problem("preprocess", FP) == (f"{entry / REF} does not name this entry "
                                               f"({entry / REF} names preprocess/{'f' * 16})")


def test_opening_a_store_makes_its_folder_and_leaves_nothing_else(tmp_path):
    root = tmp_path / "new" / "artifacts"
    store = ArtifactStore(root)
    assert store.open() is store and root.is_dir() and list(root.iterdir()) == []
    assert store.open() is store and list(root.iterdir()) == []  # again: the folder is there already


def test_a_disk_full_of_exactly_one_mebibyte_free_is_not_called_full_and_an_unmeasurable_one_is(tmp_path,
                                                                                                monkeypatch):
    import os

    from engine.store import raise_if_full

    class Exactly:
        f_bavail, f_frsize = 256, 4096  # 1 MiB free: room, though a write failed

    monkeypatch.setattr(os, "statvfs", lambda path: Exactly)
    raise_if_full(OSError(28, "No space left on device"), tmp_path, "x")  # not a StoreError

    def unmeasurable(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "statvfs", unmeasurable)
    with pytest.raises(StoreError, match="^the artifact store is full: no space left on device while writing x$"):
        raise_if_full(OSError(28, "No space left on device"), tmp_path, "x")


def test_a_write_that_fails_before_its_file_exists_is_named_as_the_full_disk_it_is(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from engine.store import write_atomically

    class Full:
        f_bavail, f_frsize = 3, 4096

    measured = []
    monkeypatch.setattr(os, "statvfs", lambda path: measured.append(Path(path)) or Full)

    def no_room(self, text):
        raise OSError(28, "No space left on device")  # before the file is made

    monkeypatch.setattr(Path, "write_text", no_room)
    target = tmp_path / "champion.json"
    with pytest.raises(StoreError, match=f"no space left on device while writing {target}$"):
        write_atomically(target, "new")
    assert measured == [tmp_path]  # the disk the file is on


def test_an_entry_only_partly_removed_is_left_out_of_sight_for_the_next_gc(tmp_path, monkeypatch):
    import shutil

    store = ArtifactStore(tmp_path)
    _publish(store)
    rmtree = shutil.rmtree

    def partly(path, ignore_errors=False, **kwargs):
        if not ignore_errors:
            raise PermissionError(13, "Permission denied")
        (Path(path) / "model.bin").unlink()  # some of it goes

    from pathlib import Path

    monkeypatch.setattr("engine.store.shutil.rmtree", partly)
    left = store.evict("preprocess", FP)
    monkeypatch.setattr("engine.store.shutil.rmtree", rmtree)
    assert left is not None and left.name.startswith(f".evicted-{FP}-") and left.is_dir()
    assert not store.exists("preprocess", FP)


def test_a_writer_that_finds_the_entry_published_keeps_it_or_replaces_it_if_broken(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store, b"first")
    _publish(store, b"second")  # a concurrent run published the same entry first: it stays
    entry = store.entry("preprocess", FP)
    assert (entry / "model.bin").read_bytes() == b"first" and store.problem("preprocess", FP) is None
    (entry / "model.bin").write_bytes(b"broken")
    _publish(store, b"third")  # a broken one is evicted and replaced
    assert (entry / "model.bin").read_bytes() == b"third" and store.problem("preprocess", FP) is None
    assert [p.name for p in (tmp_path / "preprocess").iterdir()] == [FP]


def test_a_remote_file_planted_in_a_store_on_disk_is_refused_by_name(tmp_path, monkeypatch):
    from engine import remote

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / ".remote").write_text("s3://other/stolen\n")
    with pytest.raises(StoreError) as refused:
        ArtifactStore(tmp_path / "store")
    assert str(refused.value) == (
        f"{tmp_path / 'store'} holds {tmp_path / 'store' / '.remote'}, naming a bucket, but is not this host's copy of "
        f"that bucket (under {remote.CACHE_ENV}); a store's bucket comes from its s3:// address alone: remove the file")
