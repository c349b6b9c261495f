"""Bytes and loading time of the preprocess entry's images, stored four ways.

    PYTHONPATH=. python benchmarks/lean_entries.py --mirror /usr/share/datasets/fashion-mnist

Each way stores the training and test images of the mirror; loading means
reading them back and making the float32 [0, 1] arrays the model is fed.
Timed alternately, `--repeats` times each, from the page cache (the store's
usual case right after a run) and after dropping it (a cold store), when
the process may (root).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks import idx
from tasks.pixels import scaled


def _save(way: str, folder: Path, images: dict[str, np.ndarray]) -> None:
    for split, x in images.items():
        if way == "float32 (before)":
            np.save(folder / f"{split}.npy", (x.astype(np.float32) / 255.0)[..., None])
        elif way == "float16":
            np.save(folder / f"{split}.npy", (x.astype(np.float32) / 255.0).astype(np.float16)[..., None])
        elif way == "uint8 (now)":
            np.save(folder / f"{split}.npy", x[..., None])
        else:  # uint8, compressed
            np.savez_compressed(folder / f"{split}.npz", x=x[..., None])


def _load(way: str, folder: Path, splits: list[str]) -> list[np.ndarray]:
    out = []
    for split in splits:
        if way == "uint8, compressed npz":
            with np.load(folder / f"{split}.npz") as data:
                out.append(scaled(data["x"]))
        elif way == "uint8 (now)":
            out.append(scaled(np.load(folder / f"{split}.npy")))
        else:
            out.append(np.load(folder / f"{split}.npy").astype(np.float32))
    return out


def _drop_caches() -> bool:
    done = subprocess.run(["sh", "-c", "sync && echo 1 > /proc/sys/vm/drop_caches"], capture_output=True)
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = {"train": idx.read(args.mirror / "train-images-idx3-ubyte.gz", "train_images").array,
              "test": idx.read(args.mirror / "t10k-images-idx3-ubyte.gz", "test_images").array}
    ways = ["float32 (before)", "float16", "uint8 (now)", "uint8, compressed npz"]
    root = Path(tempfile.mkdtemp(prefix="lean-"))
    rows = {way: {"bytes": 0, "warm": [], "cold": []} for way in ways}
    reference = None
    for way in ways:
        (root / way).mkdir()
        _save(way, root / way, images)
        rows[way]["bytes"] = sum(p.stat().st_size for p in (root / way).iterdir())
        loaded = _load(way, root / way, list(images))
        if reference is None:
            reference = loaded
        rows[way]["max_abs_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(loaded, reference))
    cold = _drop_caches()
    for repeat in range(args.repeats):
        for way in (ways if repeat % 2 == 0 else ways[::-1]):
            for kind in (("cold", "warm") if cold else ("warm",)):
                if kind == "cold":
                    _drop_caches()
                start = time.perf_counter()
                _load(way, root / way, list(images))
                rows[way][kind].append(time.perf_counter() - start)
    table = pd.DataFrame([{"images stored as": way, "MB": r["bytes"] / 1e6,
                           "vs before": r["bytes"] / rows[ways[0]]["bytes"],
                           "load s (warm)": statistics.median(r["warm"]),
                           "load vs before (warm)": statistics.median(r["warm"]) / statistics.median(rows[ways[0]]["warm"]),
                           **({"load s (cold)": statistics.median(r["cold"]),
                               "load vs before (cold)": statistics.median(r["cold"]) / statistics.median(rows[ways[0]]["cold"])}
                              if cold else {}),
                           "max abs difference": r["max_abs_diff"]} for way, r in rows.items()])
    print(f"{args.mirror}: {sum(len(x) for x in images.values())} images; medians of {args.repeats}, alternated")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
