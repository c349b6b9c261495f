"""Photos of handwritten digits on paper, made from real MNIST digits: what a phone sees of a page."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageFilter

SIZES = ((400, 300), (640, 480), (1200, 900))


def photo(digit: np.ndarray, rng: np.random.Generator, size: tuple[int, int], around: str = "") -> bytes:
    """JPEG bytes: the 28x28 digit (white on black) as dark ink on paper of grey 150-230, lit unevenly
    (a gradient of up to a quarter of the paper's shade across the page), uneven and noisy, compressed.
    `around`: "table", the dark table beside the page along one side; "shadow", a shadow across one side."""
    width, height = size
    rows, cols = np.mgrid[0:height, 0:width] / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.25) * ((cols - cols.mean()) * np.cos(angle) + (rows - rows.mean()) * np.sin(angle))
    # The paper's own unevenness: a faint blotchy texture.
    blotches = Image.fromarray(rng.normal(128, 40, (height // 8, width // 8)).clip(0, 255).astype(np.uint8))
    texture = np.asarray(blotches.resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(4)), np.float32)
    page = (rng.uniform(150, 230) + (texture - 128) / 16) * light
    # The table beside the page: 8-15% of the width, on the left or the right.
    table = round(width * rng.uniform(0.08, 0.15)) if around == "table" else 0
    on_the_left = bool(rng.integers(2))
    # The digit (20 of the 28 pixels' box) drawn at 40-65% of the page's height, anywhere on the page.
    side = min(round(28 * rng.uniform(0.4, 0.65) * height / 20), width - table)
    stroke = np.asarray(Image.fromarray(digit).resize((side, side), Image.BICUBIC), np.float32) / 255
    top = rng.integers(0, height - side + 1)
    left = rng.integers(table, width - side + 1) if on_the_left else rng.integers(0, width - table - side + 1)
    ink = rng.uniform(15, 70)
    region = page[top: top + side, left: left + side]
    region[:] = region * (1 - stroke) + ink * light[top: top + side, left: left + side] * stroke
    if table:
        page[:, np.s_[:table] if on_the_left else np.s_[width - table:]] = rng.uniform(20, 60)
    if around == "shadow":  # a soft shadow over 15-25% of the height, at the top or the bottom
        band = round(height * rng.uniform(0.15, 0.25))
        fall = np.linspace(rng.uniform(0.45, 0.6), 1, band)[:, np.newaxis]
        if rng.integers(2):
            page[:band] *= fall
        else:
            page[height - band:] *= fall[::-1]
    page += rng.normal(0, rng.uniform(2, 6), page.shape)
    out = BytesIO()
    Image.fromarray(page.clip(0, 255).astype(np.uint8)).convert("RGB").save(out, "JPEG", quality=int(rng.integers(60, 90)))
    return out.getvalue()
