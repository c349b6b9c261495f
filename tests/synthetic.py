"""Small learnable MNIST look-alikes, written as real IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import idx

# Class c lights a 6x6 square in cell c of a 2x5 grid; the rest is faint noise.
_CELLS = [(4 + 12 * (c // 5), 1 + 5 * (c % 5)) for c in range(10)]


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row, col = _CELLS[label]
        image[row : row + 6, col : col + 6] = rng.integers(180, 256, size=(6, 6))
    return images


def write_mirror(folder: Path, train: int = 256, test: int = 100, gzipped: bool = True, seed: int = 0) -> Path:
    """A mirror folder with the four IDX files of a tiny dataset."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        rng.shuffle(labels)
        images = make_images(labels, rng)
        if split == "test":
            # Every 25th test image is labelled one class off, so some are always misclassified.
            labels[::25] = (labels[::25] + 1) % 10
        idx.write(folder / _name(split, "images", gzipped), images, gzipped)
        idx.write(folder / _name(split, "labels", gzipped), labels, gzipped)
    return folder


def _name(split: str, role: str, gzipped: bool) -> str:
    return idx.FILES[f"{split}_{role}"] + (".gz" if gzipped else "")


def glyph(digit: int, size: int, rng: np.random.Generator, ink_on_paper: bool = False) -> np.ndarray:
    """A typed digit in a `size`x`size` grayscale image, shifted and scaled a little at random."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (size, size), 255 if ink_on_paper else 0)
    font = ImageFont.load_default(size=int(size * rng.uniform(0.5, 0.7)))
    offset = (size * rng.uniform(0.2, 0.4), size * rng.uniform(0.05, 0.2))
    ImageDraw.Draw(canvas).text(offset, str(digit), fill=0 if ink_on_paper else 255, font=font)
    return np.asarray(canvas)


def write_glyph_mirror(folder: Path, train: int = 600, test: int = 100, seed: int = 0) -> Path:
    """A mirror of typed digits, each brought to MNIST's form as `predict` does."""
    from tasks.predict import to_mnist

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.stack([(to_mnist(glyph(d, 64, rng).astype(np.float32))[..., 0] * 255).astype(np.uint8)
                           for d in labels])
        idx.write(folder / _name(split, "images", False), images)
        idx.write(folder / _name(split, "labels", False), labels)
    return folder
