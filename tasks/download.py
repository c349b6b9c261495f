"""Stage 1: the raw uint8 splits, through TensorFlow Datasets or from a mirror of IDX files."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import numpy as np

from tasks import idx
from tasks.refs import DatasetRef
from engine.retries import TransientError
from engine.store import file_digest
from engine.text import shown

_CONNECT_TIMEOUT_S = 5
_READ_BATCH = 10_000


class DownloadUnavailable(TransientError):
    """The dataset's download server cannot be reached."""


def mirror_checksums(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    # A mirror is identified by what its files hold, not by where they lie.
    mirror = inputs.get("mirror")
    if mirror is None:
        return {}
    return {"mirror": {role: file_digest(path) for role, path in idx.check_mirror_headers(Path(mirror)).items()}}


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


# The datasets whose registered files a mirror may hold: the IDX files of the MNIST family.
FAMILY = ("mnist", "fashion_mnist", "kmnist")
# SHA-256 of the gunzipped IDX files, for mirrors gzipped anew (TFDS registers the
# checksums of the original .gz files only). Measured on Debian's
# dataset-fashion-mnist 0.0~git20200523.55506a9-1, which holds the original data.
CONTENT_SHA256 = {
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": "fashion_mnist",
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34": "fashion_mnist",
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": "fashion_mnist",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": "fashion_mnist",
}


def known_checksums() -> dict[str, str]:
    """Which dataset a file of this SHA-256 belongs to, as TFDS registers them, or as measured here."""
    return {**CONTENT_SHA256, **{sha: name for name in FAMILY for sha in registered_urls(name).values()}}


def read_mirror(mirror: Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """The four IDX files of `mirror`: arrays, SHA-256 of each file, and a warning if no registry knows one."""
    known = known_checksums()
    arrays, checksums, unknown = {}, {}, []
    for role, path in idx.check_mirror_headers(mirror).items():
        arrays[role], checksums[path.name], content = idx.read(path, role)
        owner = known.get(checksums[path.name]) or known.get(content)
        if owner is None:
            unknown.append(path.name)
        elif owner != dataset:
            raise idx.IdxError(f"mirror {mirror} holds {owner}, not {dataset}: {path.name} has the checksum "
                               f"of {owner}'s; pass --dataset {owner}, or a mirror of {dataset}")
    warnings = [f"the checksums of {', '.join(unknown)} are not registered for {dataset}: "
                f"the data may not be {dataset}"] if unknown else []
    return arrays, checksums, warnings


def registered_urls(dataset: str) -> dict[str, str]:
    """TFDS's registered download URLs and SHA-256, read without importing TensorFlow."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DownloadUnavailable("tensorflow-datasets is not installed")
    table = Path(spec.submodule_search_locations[0]) / "url_checksums" / f"{dataset}.txt"
    rows = (line.split("\t") for line in table.read_text().splitlines() if line.strip())
    return {url: sha256 for url, _size, sha256, *_ in rows}


def check_reachable(urls: list[str], dataset: str) -> None:
    """Fail within seconds when the download servers cannot be reached at all."""
    hosts = {(u.hostname or "", u.port or (443 if u.scheme == "https" else 80)) for u in map(urlsplit, urls)}
    for host, port in sorted(hosts):
        # Name resolution ignores socket timeouts, so bound the whole attempt.
        pool = ThreadPoolExecutor(max_workers=1)
        attempt = pool.submit(socket.create_connection, (host, port), _CONNECT_TIMEOUT_S)
        pool.shutdown(wait=False)
        try:
            attempt.result(timeout=_CONNECT_TIMEOUT_S).close()
        except (OSError, FutureTimeout) as err:
            reason = str(err) or f"no answer within {_CONNECT_TIMEOUT_S} s"
            raise DownloadUnavailable(
                f"cannot download {dataset} through TensorFlow Datasets: "
                f"{host} is unreachable ({reason}); to run offline, give a mirror of the dataset's four "
                "IDX files (--mirror DIR, or the mirror parameter in the UI; `make data` writes one to data/mnist)"
            ) from err


def load_tfds(dataset: str, data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Download and prepare `dataset` with TensorFlow Datasets, then read both splits."""
    urls = registered_urls(dataset)
    if not any(data_dir.glob(f"{dataset}/*/dataset_info.json")):  # not prepared yet
        check_reachable(list(urls), dataset)
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=str(data_dir))
    builder.download_and_prepare()
    arrays = {}
    for split in ("train", "test"):
        # Batched reads: batch_size=-1 aborts TensorFlow on datasets of unknown size.
        batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH)))
        images = np.concatenate([batch["image"] for batch in batches])
        arrays[f"{split}_images"] = images.astype(np.uint8).reshape(-1, *idx.IMAGE_SHAPE)
        arrays[f"{split}_labels"] = np.concatenate([b["label"] for b in batches]).astype(np.uint8)
    return arrays, {urlsplit(url).path.rsplit("/", 1)[-1]: sha for url, sha in urls.items()}


def download_dataset(out: Path, dataset: str, mirror: Optional[str] = None, *, downloads: Path,
                     log: Any) -> dict[str, Any]:
    """Fetch the raw uint8 train and test splits into the artifact store."""
    warnings: list[str] = []
    if mirror is not None:
        arrays, checksums, warnings = read_mirror(Path(mirror), dataset)
        source = f"mirror:{Path(mirror).resolve()}"
    else:
        arrays, checksums = load_tfds(dataset, downloads)
        source = "tfds"
    for warning in warnings:
        log.warning("mirror %s: %s", shown(mirror), shown(warning))
    np.savez(out / DatasetRef.ARRAYS, **arrays)
    return {
        "dataset": dataset,
        "source": source,
        "train_count": len(arrays["train_labels"]),
        "test_count": len(arrays["test_labels"]),
        "files_sha256": checksums,
        "arrays_sha256": arrays_sha256(arrays),
        "test_sha256": arrays_sha256({name: arrays[name] for name in ("test_images", "test_labels")}),
        "warnings": warnings,
    }
