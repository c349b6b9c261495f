"""The pipeline's figures, drawn on matplotlib's Figure without pyplot (no global state, nothing to close).

matplotlib loads on the first figure: a run whose stages are all cached never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

_DPI = 100


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def image_grid(images: np.ndarray, captions: Sequence[str], path: Path, columns: int = 10) -> Path:
    """Images in rows of `columns` with a caption under each (the tutorial's 2x10 grid)."""
    rows = max(1, -(-len(images) // columns))
    fig = _figure(figsize=(columns, 1.25 * rows + 0.2))
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
        # "binary" draws ink dark on white, as in the tutorial.
        ax.imshow(np.squeeze(image), cmap="binary")
        ax.set_xlabel(caption, fontsize=9)
    return _save(fig, path)


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Loss and accuracy per epoch, training against validation."""
    fig = _figure(figsize=(10, 3.5))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(history["epoch"], history[metric], marker="o", label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label="validation")
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    return _save(fig, path)


def confusion_heatmap(confusion: pd.DataFrame, path: Path) -> Path:
    """Counts of true (rows) against predicted (columns) classes."""
    ax = _figure(figsize=(6, 5)).subplots()
    image = ax.imshow(confusion.to_numpy(), cmap="Blues")
    ax.set_xticks(range(len(confusion.columns)), confusion.columns)
    ax.set_yticks(range(len(confusion.index)), confusion.index)
    ax.set(xlabel="predicted", ylabel="true")
    threshold = confusion.to_numpy().max() / 2
    for (row, col), count in np.ndenumerate(confusion.to_numpy()):
        color = "white" if count > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.figure.colorbar(image, ax=ax)
    return _save(ax.figure, path)


def per_class_bars(per_class: pd.DataFrame, path: Path) -> Path:
    """Precision, recall and F1 of each class, side by side."""
    ax = _figure(figsize=(10, 3.5)).subplots()
    scores = per_class[["precision", "recall", "f1"]]
    scores.plot.bar(ax=ax, rot=0, width=0.8)
    ax.set_ylim(max(0.0, scores.to_numpy().min() - 0.05), 1.0)
    ax.set_xlabel("class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(ax.figure, path)


def sweep_bars(table: pd.DataFrame, path: Path) -> Path:
    """Validation accuracy of each combination of a sweep, the best on top."""
    ax = _figure(figsize=(7, 0.5 + 0.4 * len(table))).subplots()
    ordered = table.sort_values("validation_accuracy")
    ax.barh(ordered["combination"], ordered["validation_accuracy"])
    ax.set_xlim(max(0.0, ordered["validation_accuracy"].min() - 0.02), 1.0)
    ax.set_xlabel("validation accuracy (validation split)")
    return _save(ax.figure, path)
