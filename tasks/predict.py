"""The tutorial's last step on a user's own images: classify PNG or JPEG files of any size or colour, made
as the MNIST images were: grayscale, white digit on black, scaled into 20x20, centred by mass in 28x28."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.refs import ModelRef

_BOX = 20
_SIZE = 28
# More than a 50-megapixel photo is refused before it is decoded.
MAX_PIXELS = 50_000_000
# Decoded images are brought down to this before anything else: the digit ends up 20 pixels high.
_WORKING_SIZE = 1024
# Less difference than this between the darkest and the lightest pixel (of 255) is a blank image.
_LEAST_CONTRAST = 24
# Parts of the ink smaller than this share of its largest part are specks of dirt or noise, not strokes.
_LEAST_PART = 0.05
# A part that touches the image's edge and spans this share of its width or height is a table's edge, a shadow or
# the page's border, not a stroke (unless there is nothing else).
_EDGE_SPAN = 0.9
# Fewer pixels than this on a side cannot hold a digit.
_LEAST_SIDE = 8


class NotAnImage(ValueError):
    """A file that is not a readable PNG or JPEG image, or one with nothing to classify."""


class ModelUnreadable(ValueError):
    """A model file that is missing, or that Keras will not load safely."""


def load_gray(path: Path) -> np.ndarray:
    """The image as grayscale in 0..255: EXIF orientation applied, transparency flattened, 16 bits scaled."""
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block the read for ever
        raise NotAnImage(f"{path} is not a regular file")
    try:
        with warnings.catch_warnings():
            # Pillow warns of large images, or refuses them in words of its own: they are refused
            # just below instead, by their size. Opening reads the header only.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pillows_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                # PNG and JPEG only: Pillow's other decoders (TIFF's colour spaces and floats, EPS through
                # Ghostscript) are more to trust than a photo of a digit needs.
                opened = Image.open(path, formats=("PNG", "JPEG"))
            finally:
                Image.MAX_IMAGE_PIXELS = pillows_limit
        with opened as image:
            if image.width * image.height > MAX_PIXELS:
                raise NotAnImage(f"{path} has {image.width}x{image.height} pixels, more than the "
                                 f"{MAX_PIXELS:,} this command takes")
            if min(image.width, image.height) < _LEAST_SIDE:
                raise NotAnImage(f"{path} has {image.width}x{image.height} pixels, too few to hold a digit")
            image = ImageOps.exif_transpose(image)
            if image.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                image.thumbnail((_WORKING_SIZE, _WORKING_SIZE))
            gray = _gray(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise NotAnImage(f"{path} is not an image PNG or JPEG can be read from: {err}") from err
    if max(gray.shape) > _WORKING_SIZE:  # 16-bit grey, which Pillow does not shrink: brought down here
        size = _fit(gray.shape, _WORKING_SIZE)
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).resize((size[1], size[0]), Image.BOX), dtype=np.float32)
    return gray


def _gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        # 16-bit grey spans 0..65535.
        return values / 257.0 if image.mode.startswith("I;16") or values.max() > 255 else values
    if "A" not in image.mode and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32)
    gray, alpha = (np.asarray(band, dtype=np.float32) for band in image.convert("LA").split())
    alpha /= 255.0
    # Strokes on a transparent background: lay them on paper of the opposite shade.
    opaque = alpha > 0.5
    strokes_are_dark = opaque.any() and float(gray[opaque].mean()) < 128
    paper = 255.0 if strokes_are_dark else 0.0
    return gray * alpha + paper * (1.0 - alpha)


def to_mnist(gray: np.ndarray, invert: Optional[bool] = None) -> np.ndarray:
    """A (28, 28, 1) float32 image in [0, 1], white ink on black, centred as MNIST's.

    A photo of paper is not black and white: the paper has its own shade and a lighting gradient. The
    paper is estimated and divided out first (what is left is how much darker than its paper each pixel
    is), the ink is what Otsu's threshold sets apart from the paper, and specks far smaller than the
    digit are dropped; then MNIST's own preparation: the ink's box scaled into 20x20, centred by mass."""
    from skimage import filters, measure

    if float(gray.max() - gray.min()) < _LEAST_CONTRAST:
        raise NotAnImage("is blank: one shade throughout, nothing to classify")
    if invert is None:
        # The background is what the border shows; MNIST's is black.
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = float(np.median(border)) > 127
    lit = gray if invert else 255.0 - gray  # the paper light, the ink dark
    paper = _paper(lit)
    ink = filters.gaussian(np.clip((paper - lit) / np.maximum(paper, 1.0), 0.0, 1.0), sigma=max(lit.shape) / 400)
    if float(ink.max()) < _LEAST_CONTRAST / 255.0:
        raise NotAnImage("is blank: no ink on its background (try --invert)")
    parts = measure.label(ink > filters.threshold_otsu(ink))
    sizes = np.bincount(parts.ravel())[1:]
    edges = [part.label for part in measure.regionprops(parts) if _along_an_edge(part.bbox, parts.shape)]
    if len(edges) < sizes.size:
        sizes[np.asarray(edges, dtype=int) - 1] = 0
    kept = np.isin(parts, 1 + np.flatnonzero(sizes >= _LEAST_PART * sizes.max()))
    rows, cols = np.nonzero(kept)
    # Full strength where the strokes are solid, as MNIST's are; nothing outside the digit's parts.
    ink = np.clip(np.where(kept, ink, 0.0) / np.percentile(ink[kept], 90), 0.0, 1.0)
    ink = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    scale = _BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    ink = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS),
                     dtype=np.float32) / 255.0
    canvas = np.zeros((_SIZE, _SIZE), dtype=np.float32)
    total = ink.sum() or 1.0
    centre_row = (ink.sum(axis=1) * np.arange(ink.shape[0])).sum() / total
    centre_col = (ink.sum(axis=0) * np.arange(ink.shape[1])).sum() / total
    top = int(np.clip(round(_SIZE / 2 - centre_row), 0, _SIZE - ink.shape[0]))
    left = int(np.clip(round(_SIZE / 2 - centre_col), 0, _SIZE - ink.shape[1]))
    canvas[top: top + ink.shape[0], left: left + ink.shape[1]] = ink
    return canvas[..., np.newaxis]


def _along_an_edge(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> bool:
    """Whether a part with this bounding box touches the image's edge and spans most of its width or height."""
    top, left, bottom, right = box
    touches = top == 0 or left == 0 or bottom == shape[0] or right == shape[1]
    return touches and (bottom - top >= _EDGE_SPAN * shape[0] or right - left >= _EDGE_SPAN * shape[1])


def _paper(lit: np.ndarray) -> np.ndarray:
    """The paper's own shade under its lighting, ink taken away: a grey closing with a window wider than
    any stroke (a quarter of the image) fills the strokes in with the paper around them, and a blur as
    wide smooths what is left into the lighting's gradient. Worked out on a copy of at most 256 pixels."""
    from skimage import filters, morphology, transform

    small = transform.resize(lit, _fit(lit.shape, 256), anti_aliasing=True, preserve_range=True)
    window = max(3, max(small.shape) // 4)
    paper = morphology.closing(small, morphology.footprint_rectangle((window, window), decomposition="separable"))
    paper = filters.gaussian(paper, sigma=window / 2, mode="nearest", preserve_range=True)
    return transform.resize(paper, lit.shape, preserve_range=True)


def _fit(shape: tuple[int, ...], most: int) -> tuple[int, int]:
    scale = min(1.0, most / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def prepare(path: Path, invert: Optional[bool] = None) -> np.ndarray:
    """The image file as the model takes it: (28, 28, 1), white ink on black."""
    gray = load_gray(path)
    try:
        return to_mnist(gray, invert)
    except NotAnImage as blank:
        raise NotAnImage(f"{path} {blank}") from None


def champion_model(artifacts_dir: str, dataset: str) -> tuple[str, Path]:
    """The dataset's champion's fingerprint and model file, once its train entry has been verified."""
    from engine.champions import ChampionDamaged, read_champion
    from engine.store import ArtifactStore

    champion = read_champion(artifacts_dir, dataset)
    if champion is None:
        raise FileNotFoundError(
            f"no {dataset} champion in {artifacts_dir}: no run has passed the quality gate yet "
            "(see `mnist-pipeline runs`); pass --model PATH, or run with a lower --accuracy-threshold"
        )
    store = ArtifactStore(artifacts_dir)
    problem = store.problem("train", champion.model)
    if problem is not None:
        raise ChampionDamaged(f"the {dataset} champion's model cannot be trusted: {problem}")
    model: ModelRef = store.load_ref("train", champion.model)
    return champion.model, model.at(store.root).model_file


def load_model(model_path: Path):
    """The Keras model at `model_path`; safe_mode refuses one that would run code of its own."""
    from tasks.runtime import tensorflow

    if not model_path.is_file():  # before TensorFlow's import: a mistyped path is said at once
        raise ModelUnreadable(f"no model file at {model_path}")
    tensorflow()
    import keras

    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile errors ... for files it will not load
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelUnreadable(f"cannot load the model {model_path}: {reason}") from err
    inputs, outputs = (tuple(getattr(model, shape, None) or ())[1:] for shape in ("input_shape", "output_shape"))
    if (inputs, outputs) != ((28, 28, 1), (10,)):
        raise ModelUnreadable(f"the model {model_path} takes {inputs} and gives {outputs}, not 28x28x1 images "
                              "and 10 classes")
    return model


def classify(model, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) for (N, 28, 28, 1) images."""
    from tasks.evaluate import log_softmax

    return np.exp(log_softmax(model.predict(images, verbose=0)))
