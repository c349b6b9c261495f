"""The artifact store: one folder per stage output, complete or absent.

An entry is `<root>/<stage>/<fingerprint>/`. It is built in a temporary folder
beside it, sealed with a manifest of SHA-256 checksums, flushed to disk, and
only then renamed into place, so a crash can leave litter but never an entry
that looks complete. Every read verifies the manifest first. A store in S3
is used through a local copy (engine/remote.py): a published entry is
uploaded too, and one the copy lacks is fetched, then verified like any other.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from engine import layout, remote
from engine.layout import MANIFEST, REF
from engine.refs import EntryRef, ref_type

# Less free space than this, after a failed write, means the disk is full.
_NEARLY_FULL = 1 << 20
# Entries this process knows their bucket holds, `<bucket>/<prefix>/<stage>/<fingerprint>`: asked once.
_IN_BUCKET: set[str] = set()


class StoreError(RuntimeError):
    """The store cannot be written or read."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hashed once per version of it (size, mtime, inode, and ctime, which no one can set back)."""
    stat = path.stat()
    return _digest_of_version(str(path.resolve()), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@lru_cache(maxsize=256)
def _digest_of_version(path: str, version: tuple[int, int, int, int]) -> str:
    return sha256_file(Path(path))


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step; on failure the old file stays and no temporary file is left."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise_if_full(err, path.parent, str(path))
        raise


@contextmanager
def store_errors(failure: str) -> Iterator[None]:
    """An OSError in the block as StoreError(`failure: why`)."""
    try:
        yield
    except OSError as err:
        raise StoreError(f"{failure}: {err.strerror or err}") from err


def make_folder(path: Path) -> None:
    """`path` as a folder, made if missing: NotADirectoryError if something else is there."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
    path.mkdir(parents=True, exist_ok=True)


def fsync(path: Path) -> None:
    """Flush a file or folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raise_if_full(err: OSError, where: Path, writing: str, store: str = "the artifact store") -> None:
    """StoreError if `err`, raised while writing `writing` under `where`, comes from the store's disk being full."""
    # NumPy reports a short write without an errno: "N requested and M written".
    if err.errno not in (errno.ENOSPC, errno.EDQUOT) and (
            err.errno is not None or re.search(r"\d+ requested and \d+ written", str(err)) is None):
        return
    try:
        stats = os.statvfs(where)
    except OSError:
        stats = None
    # A quota or another disk (a temporary folder elsewhere) can be what is full.
    if stats is None or stats.f_bavail * stats.f_frsize < _NEARLY_FULL or err.errno == errno.EDQUOT:
        raise StoreError(f"{store} is full: no space left on device while writing {writing}") from err


class ArtifactStore:
    def __init__(self, root: Union[str, os.PathLike[str]]):
        """The store in the folder `root`: on disk, or the local copy of a bucket (see remote.local_root)."""
        self.root = Path(root)
        try:
            url = remote.copied_url(self.root)
        except ValueError as err:
            raise StoreError(str(err)) from None
        self.remote = remote.Remote(url) if url else None

    @property
    def identity(self) -> str:
        """What names this store to every host: its bucket's URL, or its folder's real path."""
        return f"s3://{self.remote.path}" if self.remote is not None else os.path.realpath(self.root)

    def open(self) -> "ArtifactStore":
        """Create the store's folder if needed; a clear error if it cannot be written."""
        with store_errors(f"cannot write to the artifact store {self.root}"):
            make_folder(self.root)
            probe = self.root / f"{layout.PROBE}{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        return self

    def entry(self, stage: str, fingerprint: str) -> Path:
        return layout.entry(self.root, stage, fingerprint)

    def path(self, ref: EntryRef) -> Path:
        return self.entry(ref.stage, ref.fingerprint)

    def problem(self, stage: str, fingerprint: str) -> Optional[str]:
        """Why the entry cannot be served, or None when it is complete and intact."""
        entry = self.entry(stage, fingerprint)
        if entry.is_symlink():
            return f"{entry} is a symbolic link"
        if self.remote is not None and not entry.exists():
            self._fetch(stage, fingerprint)
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except FileNotFoundError:
            return f"{entry / MANIFEST} is missing"
        except (OSError, ValueError) as err:
            return f"{entry / MANIFEST} is unreadable ({err})"
        try:
            files = dict(manifest["files"])
            checks = [(name, int(info["bytes"]), str(info["sha256"])) for name, info in files.items()]
        except (KeyError, TypeError, ValueError) as err:
            return f"{entry / MANIFEST} is malformed ({err!r})"
        if REF not in files or any(Path(name).is_absolute() or ".." in Path(name).parts for name in files):
            return f"{entry / MANIFEST} is malformed (no {REF}, or a file outside the entry)"
        for name, size, sha256 in checks:
            path = entry / name
            if not path.is_file():
                return f"{path} is missing"
            if path.is_symlink():
                return f"{path} is a symbolic link"
            if path.stat().st_size != size or file_digest(path) != sha256:
                return f"{path} does not match its checksum"
        try:
            self.load_ref(stage, fingerprint)
        except ValueError as err:
            return f"{entry / REF} does not name this entry ({str(err).splitlines()[0]})"
        return None

    def load_ref(self, stage: str, fingerprint: str) -> EntryRef:
        """The reference an entry's `ref.json` holds, as its stage's type, naming that very entry."""
        ref = ref_type(stage).model_validate_json((self.entry(stage, fingerprint) / REF).read_text())
        if (ref.stage, ref.fingerprint) != (stage, fingerprint):
            raise ValueError(f"{self.entry(stage, fingerprint) / REF} names {ref.stage}/{ref.fingerprint}")
        return ref

    def content_digest(self, ref: EntryRef) -> Optional[str]:
        """SHA-256 of what the entry holds: its files' checksums and its reference's fields, less its own name."""
        try:
            files = json.loads((self.path(ref) / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        held = {"files": {name: info["sha256"] for name, info in files.items() if name != REF},
                "ref": ref.model_dump(mode="json", exclude={"fingerprint"})}
        return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()

    def exists(self, stage: str, fingerprint: str) -> bool:
        return self.entry(stage, fingerprint).exists() or (
            self.remote is not None and self.remote.has(stage, fingerprint))

    def in_bucket(self, stage: str, fingerprint: str) -> bool:
        """Whether the bucket of a store in S3 holds the entry (its manifest): one request, none once known."""
        key = self.remote.key(stage, fingerprint)
        if key not in _IN_BUCKET and self.remote.has(stage, fingerprint):
            _IN_BUCKET.add(key)
        return key in _IN_BUCKET

    def share(self, stage: str, fingerprint: str) -> bool:
        """Upload an entry of the local copy that the bucket lacks (manifest last); True if it did."""
        if self.remote is None or self.in_bucket(stage, fingerprint):
            return False
        self.remote.upload(self.entry(stage, fingerprint), stage, fingerprint)
        _IN_BUCKET.add(self.remote.key(stage, fingerprint))
        return True

    def _fetch(self, stage: str, fingerprint: str) -> None:
        """The bucket's copy of an entry, into place in the local copy (unverified: problem() does that)."""
        final = self.entry(stage, fingerprint)
        tmp = layout.beside(final, layout.FETCH)
        tmp.mkdir(parents=True)
        try:
            if self.remote.fetch(stage, fingerprint, tmp) and not final.exists():
                os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def evict(self, stage: str, fingerprint: str, remote: bool = True) -> Optional[Path]:
        """Remove an entry: first out of sight by rename, then from disk; returns what is left on disk, if any.

        An entry that cannot be moved out of sight (immutable, a read-only
        disk) fails the stage: it must never be served, nor built over. With
        `remote`, the bucket's copy of a store in S3 goes first.
        """
        entry = self.entry(stage, fingerprint)
        if remote and self.remote is not None:
            self.remote.remove(stage, fingerprint)
            _IN_BUCKET.discard(self.remote.key(stage, fingerprint))
        if entry.is_symlink():
            entry.unlink()  # the link goes, never what it points at
            return None
        doomed = layout.beside(entry, layout.EVICTED)
        try:
            entry.rename(doomed)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"the {stage} entry {entry} cannot be removed ({err.strerror or err}); "
                             "remove it by hand") from err
        shutil.rmtree(doomed, ignore_errors=True)
        return doomed if os.path.lexists(doomed) else None

    @contextmanager
    def writing(self, stage: str, fingerprint: str, inputs: Sequence[str] = (),
                versions: Optional[dict[str, str]] = None) -> Iterator[Path]:
        """A temporary folder to build the entry in; sealed and published on success.

        Its manifest keeps `inputs`, the entries it is computed from (`<stage>/<fingerprint>`: gc's lineage
        of a champion), and the `versions` of the libraries that computed it.
        """
        final = self.entry(stage, fingerprint)
        # Left by a writer that died. Writers of one entry take turns (the flow locks
        # each stage's cache key), so no other writer is using them.
        for stale in final.parent.glob(f"{layout.TMP}{fingerprint}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = layout.beside(final, layout.TMP)
        with store_errors(f"cannot write to the artifact store {self.root}"):
            tmp.mkdir(parents=True)
        try:
            yield tmp
            self._seal(tmp, {"stage": stage, "fingerprint": fingerprint, "inputs": sorted(inputs),
                             "versions": versions or {}})
            self._publish(tmp, final, stage, fingerprint)
        except OSError as err:
            raise_if_full(err, tmp, f"the {stage} entry", store=f"the artifact store {self.root}")
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _seal(self, tmp: Path, about: dict[str, Any]) -> None:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync(path)
            files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        (tmp / MANIFEST).write_text(json.dumps({**about, "files": files}, indent=1, sort_keys=True))
        fsync(tmp / MANIFEST)
        fsync(tmp)

    def _publish(self, tmp: Path, final: Path, stage: str, fingerprint: str) -> None:
        if final.exists():
            if self.problem(stage, fingerprint) is None:
                return  # a concurrent run published the same entry first
            self.evict(stage, fingerprint)
        if self.remote is not None:
            # First into the bucket: an upload that fails leaves no local entry, and the retry uploads again.
            self.remote.upload(tmp, stage, fingerprint)
        os.rename(tmp, final)
        fsync(final.parent)
