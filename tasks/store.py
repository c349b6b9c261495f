"""The artifact store: one folder per stage output, complete or absent.

An entry is `<root>/<stage>/<fingerprint>/`. It is built in a temporary folder
beside it, sealed with a manifest of SHA-256 checksums, flushed to disk, and
only then renamed into place, so a crash can leave litter but never an entry
that looks complete. Every read verifies the manifest first.
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
from pathlib import Path
from typing import Iterator, Optional

from tasks.refs import EntryRef

MANIFEST = "manifest.json"
REF = "ref.json"
_CHUNK = 1 << 20
# Less free space than this, after a failed write, means the disk is full.
_NEARLY_FULL = 1 << 20


class StoreError(RuntimeError):
    """The store cannot be written or read."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    """Flush a file or folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(err: OSError, where: Path) -> bool:
    """Whether `err`, raised while writing under `where`, comes from the store's disk being full."""
    # NumPy reports a short write without an errno: "N requested and M written".
    no_space = err.errno in (errno.ENOSPC, errno.EDQUOT) or (
        err.errno is None and re.search(r"\d+ requested and \d+ written", str(err)) is not None)
    if not no_space:
        return False
    try:
        stats = os.statvfs(where)
    except OSError:
        return True
    # A quota or another disk (a temporary folder elsewhere) can be what is full.
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL or err.errno == errno.EDQUOT


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def open(self) -> "ArtifactStore":
        """Create the store's folder if needed; a clear error if it cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"cannot write to the artifact store {self.root}: {err.strerror or err}") from err
        return self

    def entry(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def path(self, ref: EntryRef) -> Path:
        """The folder of the entry that `ref` names."""
        return self.entry(ref.stage, ref.fingerprint)

    def problem(self, stage: str, fingerprint: str) -> Optional[str]:
        """Why the entry cannot be served, or None when it is complete and intact."""
        entry = self.entry(stage, fingerprint)
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
        for name, size, sha256 in checks:
            path = entry / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != size or sha256_file(path) != sha256:
                return f"{path} does not match its checksum"
        return None

    def content_digest(self, ref: EntryRef) -> Optional[str]:
        """SHA-256 of the entry's manifest, which names every file's checksum."""
        manifest = self.path(ref) / MANIFEST
        return sha256_file(manifest) if manifest.is_file() else None

    def exists(self, stage: str, fingerprint: str) -> bool:
        return self.entry(stage, fingerprint).exists()

    def evict(self, stage: str, fingerprint: str) -> None:
        """Remove an entry: first out of sight by rename, then from disk."""
        entry = self.entry(stage, fingerprint)
        doomed = entry.with_name(f".evicted-{fingerprint}-{uuid.uuid4().hex[:8]}")
        try:
            entry.rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def read_ref(self, stage: str, fingerprint: str) -> str:
        return (self.entry(stage, fingerprint) / REF).read_text()

    @contextmanager
    def writing(self, stage: str, fingerprint: str) -> Iterator[Path]:
        """A temporary folder to build the entry in; sealed and published on success."""
        final = self.entry(stage, fingerprint)
        # Left by a writer that died. Writers of one entry take turns (the flow locks
        # each stage's cache key), so no other writer is using them.
        for stale in final.parent.glob(f".tmp-{fingerprint}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".tmp-{fingerprint}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
        except OSError as err:
            raise StoreError(f"cannot write to the artifact store {self.root}: {err.strerror or err}") from err
        try:
            yield tmp
            self._seal(tmp, stage, fingerprint)
            self._publish(tmp, final, stage, fingerprint)
        except OSError as err:
            if _disk_full(err, tmp):
                raise StoreError(f"the artifact store {self.root} is full: no space left on device "
                                 f"while writing the {stage} entry") from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _seal(self, tmp: Path, stage: str, fingerprint: str) -> None:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync(path)
            files[path.relative_to(tmp).as_posix()] = {
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
            }
        manifest = {"stage": stage, "fingerprint": fingerprint, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        fsync(tmp / MANIFEST)
        fsync(tmp)

    def _publish(self, tmp: Path, final: Path, stage: str, fingerprint: str) -> None:
        if final.exists():
            if self.problem(stage, fingerprint) is None:
                return  # a concurrent run published the same entry first
            self.evict(stage, fingerprint)
        os.rename(tmp, final)
        fsync(final.parent)
