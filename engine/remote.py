"""An artifact store in S3 (`s3://bucket/prefix`), used through a local copy (docs/multi-host.md, S3).

Entries live in the bucket under the layout they have on disk, uploaded file
by file with the manifest last: an entry without its manifest does not count.
The stages read and write the host's copy as a store on disk; the store
verifies what is fetched, so a damaged object is never served. The connection
comes from the standard AWS settings.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from engine import layout
from engine.layout import MANIFEST
from engine.settings import env_name, settings

SCHEME = "s3://"
CACHE_ENV = env_name("s3_cache")
MARKER = layout.REMOTE


def bucket_path(url: str) -> str:
    """`bucket/prefix` of `s3://bucket/prefix/`; refused when it has no bucket or climbs with `..`."""
    rest = url[len(SCHEME):]
    path = rest.strip("/")
    parts = PurePosixPath(path).parts
    if rest.startswith("/") or not parts or ".." in parts:
        raise ValueError(f"{url} is not an s3://bucket/prefix address")
    return "/".join(parts)  # one spelling of each address: `team//mnist/./x` is `team/mnist/x`


def copy_path(url: str) -> Path:
    """Where this host keeps its local copy of the store at `url`."""
    return Path(settings().s3_cache) / bucket_path(url)


def local_root(url: str) -> Path:
    """The local copy of the store at `url`, created and marked on first use."""
    root, address = copy_path(url), SCHEME + bucket_path(url)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.is_file() or marker.read_text().strip() != address:
        marker.write_text(f"{address}\n")
    return root


def copied_url(root: Path) -> Optional[str]:
    """The bucket whose local copy the folder `root` is, or None: a store on disk.

    A store's bucket comes from its address alone: MARKER counts only where this
    host keeps that bucket's copy, and anywhere else is a ValueError.
    """
    marker = root / MARKER
    if not marker.is_file():
        return None
    url = marker.read_text(errors="replace").strip()
    with suppress(ValueError):  # not a bucket's address
        if url.startswith(SCHEME) and os.path.realpath(copy_path(url)) == os.path.realpath(root):
            return url
    raise ValueError(f"{root} holds {marker}, naming a bucket, but is not this host's copy of that bucket "
                     f"(under {CACHE_ENV}); a store's bucket comes from its s3:// address alone: remove the file")


def store_root(artifacts_dir: str) -> str:
    """Where a run reads and writes the store `artifacts_dir`: itself, or the local copy of a bucket."""
    return str(local_root(artifacts_dir)) if artifacts_dir.startswith(SCHEME) else artifacts_dir


class Remote:
    """The bucket side of a store: entries uploaded, fetched and removed, the manifest marking them whole."""

    def __init__(self, url: str):
        import s3fs

        self.path = bucket_path(url)
        # No listing cache: another host may have written an entry a moment ago.
        self.fs: Any = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)

    def key(self, stage: str, fingerprint: str, name: str = "") -> str:
        return f"{self.path}/{stage}/{fingerprint}" + (f"/{name}" if name else "")

    def has(self, stage: str, fingerprint: str) -> bool:
        return self.fs.exists(self.key(stage, fingerprint, MANIFEST))

    def upload(self, folder: Path, stage: str, fingerprint: str) -> None:
        """Every file of the entry `folder`, then its manifest: whole, or not counted."""
        files = json.loads((folder / MANIFEST).read_text())["files"]
        for name in files:
            self.fs.put_file(str(folder / name), self.key(stage, fingerprint, name))
        self.fs.put_file(str(folder / MANIFEST), self.key(stage, fingerprint, MANIFEST))

    def fetch(self, stage: str, fingerprint: str, into: Path) -> bool:
        """The entry's manifest and the files it names, into the empty folder `into`; False if it has none."""
        try:
            manifest = self.fs.cat_file(self.key(stage, fingerprint, MANIFEST))
        except FileNotFoundError:
            return False
        (into / MANIFEST).write_bytes(manifest)
        try:
            names = list(json.loads(manifest)["files"])
        except (ValueError, KeyError, TypeError):
            return True  # a malformed manifest: verification says so, and the entry is evicted
        for name in names:
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                return True  # a file outside the entry: refused by verification, never fetched
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with suppress(FileNotFoundError):  # verification names the missing file
                self.fs.get_file(self.key(stage, fingerprint, name), str(target))
        return True

    def remove(self, stage: str, fingerprint: str) -> None:
        """The manifest first (the entry stops counting), then the rest."""
        for key in (self.key(stage, fingerprint, MANIFEST), self.key(stage, fingerprint)):
            with suppress(FileNotFoundError):
                self.fs.rm(key, recursive=True)
