"""The IDX file format of the original MNIST distribution, gzipped or raw."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.retries import PermanentError, TransientError
from engine.store import file_digest

# The four files of an MNIST-family mirror, by split and role.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# More examples than any dataset of the MNIST family holds (EMNIST's largest split: 698k).
MAX_COUNT = 1_000_000


class IdxError(PermanentError):
    """A mirror file that is missing or not the IDX file it should be."""


class IdxTruncated(IdxError, TransientError):
    """A file shorter than its header promises: damaged, or still being copied."""


class Header(NamedTuple):
    dims: tuple[int, ...]
    offset: int


def locate(mirror: Path, name: str) -> Path:
    """The file `name` in `mirror`, raw or gzipped."""
    for candidate in (mirror / name, mirror / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise IdxError(f"mirror {mirror} has no {name} (nor {name}.gz)")


def _open(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_header(path: Path, role: str) -> Header:
    """The header of `path`, checked as the file of `role`: magic number, shape and count."""
    try:
        with _open(path) as f:
            head = f.read(16)
    except EOFError as err:
        raise IdxTruncated(f"{path} ends before its gzip stream does: {err}") from err
    except (OSError, zlib.error) as err:
        raise IdxError(f"{path} cannot be read: {err}") from err
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != _UBYTE:
        raise IdxError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndims = head[3]
    end = 4 + 4 * ndims
    if ndims == 0 or len(head) < end:
        raise IdxError(f"{path} has a truncated IDX header")
    dims = struct.unpack(f">{ndims}I", head[4:end])
    if dims[0] > MAX_COUNT:
        raise IdxError(f"{path} holds {dims[0]} examples, more than the {MAX_COUNT} this pipeline takes")
    if role.endswith("images") and (len(dims) != 3 or dims[1:] != IMAGE_SHAPE):
        raise IdxError(f"{path} holds shape {dims}, expected (N, 28, 28) images")
    if role.endswith("labels") and len(dims) != 1:
        raise IdxError(f"{path} holds shape {dims}, expected (N,) labels")
    return Header(dims, end)


def check_mirror_headers(mirror: Path) -> dict[str, Path]:
    """The four files of `mirror`, their headers checked."""
    try:
        found = mirror.is_dir()
    except OSError as err:  # a name too long for the file system, say: named by its start
        raise IdxError(f"mirror {str(mirror)[:60]}... cannot be read: {err.strerror or err}") from None
    if not found:
        raise IdxError(f"mirror {mirror} is not a directory")
    paths = {role: locate(mirror, name) for role, name in FILES.items()}
    counts = {role: read_header(path, role).dims[0] for role, path in paths.items()}
    for split in ("train", "test"):
        images, labels = counts[f"{split}_images"], counts[f"{split}_labels"]
        if labels == 0:
            raise IdxError(f"mirror {mirror} holds no {split} images")
        if images != labels:
            raise IdxError(f"mirror {mirror}: {images} {split} images but {labels} labels")
    return paths


def _payload(path: Path, promised: int) -> bytes:
    """The IDX bytes of `path`, at most `promised` + 1 of them: a gzip bomb is never inflated."""
    with _open(path) as stream:
        chunks, size = [], 0
        while size <= promised and (chunk := stream.read(min(_CHUNK, promised + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


class IdxFile(NamedTuple):
    array: np.ndarray
    # SHA-256 of the file as stored (gzipped or raw), and of its IDX bytes (as gunzipped).
    sha256: str
    content_sha256: str


def read(path: Path, role: str) -> IdxFile:
    """The array stored in `path`, with the checksums of the file."""
    header = read_header(path, role)
    expected = math.prod(header.dims)
    try:
        data = _payload(path, header.offset + expected)
    except EOFError as err:
        raise IdxTruncated(f"{path} ends before its gzip stream does: {err}") from err
    except (OSError, zlib.error) as err:
        raise IdxError(f"{path} is not a readable gzip file: {err}") from err
    body = np.frombuffer(data, dtype=np.uint8, offset=header.offset)
    if body.size < expected:
        raise IdxTruncated(f"{path} holds {body.size} bytes of data, its header promises {expected}")
    if body.size != expected:
        raise IdxError(f"{path} holds more than the {expected} bytes of data its header promises")
    array = body.reshape(header.dims)
    if role.endswith("labels") and array.size and array.max() >= NUM_CLASSES:
        raise IdxError(f"{path} holds label {array.max()}, expected 0-{NUM_CLASSES - 1}")
    return IdxFile(array, file_digest(path), hashlib.sha256(data).hexdigest())


def write(path: Path, array: np.ndarray, gzipped: bool = False) -> Path:
    """Write a uint8 array as an IDX file (what test fixtures and mirrors use)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    # mtime=0: the same arrays always give the same bytes, whenever they are written.
    path.write_bytes(gzip.compress(payload, mtime=0) if gzipped else payload)
    return path
