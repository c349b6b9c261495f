"""The stages' references: what each entry's `ref.json` holds; located, a reference reads its entry's files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from engine.refs import EntryRef

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class DatasetRef(EntryRef):
    """The raw uint8 splits, as downloaded or read from a mirror."""

    stage: Literal["download"] = "download"

    ARRAYS: ClassVar[str] = "data.npz"

    dataset: str
    source: str
    train_count: int
    test_count: int
    # SHA-256 of each file read (TFDS's registered checksums on the download path).
    files_sha256: dict[str, str]
    # SHA-256 of the decoded arrays: equal for equal data, however it was stored.
    arrays_sha256: str
    # The same, of the test split alone: which test data a model's test accuracy was measured on.
    test_sha256: str
    # Doubts about the data, shown in the report: files whose checksums no registry knows.
    warnings: list[str] = []

    def arrays(self) -> dict[str, "np.ndarray"]:
        """train_images, train_labels, test_images, test_labels."""
        import numpy as np

        with np.load(self.folder / self.ARRAYS) as data:
            return {name: data[name] for name in data.files}


class PreparedRef(EntryRef):
    """The splits `train`, `validation` (the training split's last part; none when validation_count is 0, and
    training validates on `test`, as the tutorial does) and `test`, which only evaluate reads."""

    stage: Literal["preprocess"] = "preprocess"

    train_count: int
    validation_count: int
    test_count: int
    test_sha256: str

    @property
    def validated_on(self) -> Literal["validation", "test"]:
        return "validation" if self.validation_count else "test"

    @staticmethod
    def split_files(split: str) -> tuple[str, str]:
        return f"{split}_x.npy", f"{split}_y.npy"

    def split(self, split: str, mmap: bool = False) -> tuple["np.ndarray", "np.ndarray"]:
        """Images (uint8, N x 28 x 28 x 1) and labels of a split; the images memory-mapped if asked."""
        import numpy as np

        images, labels = self.split_files(split)
        return np.load(self.folder / images, mmap_mode="r" if mmap else None), np.load(self.folder / labels)


class ModelRef(EntryRef):
    """A trained model with its per-epoch history."""

    stage: Literal["train"] = "train"

    MODEL: ClassVar[str] = "model.keras"
    HISTORY: ClassVar[str] = "history.csv"
    SUMMARY: ClassVar[str] = "model_summary.txt"
    INFO: ClassVar[str] = "train.json"
    # Keras's TensorBoard logs: train/ and validation/ event files, a scalar per epoch (the model's graph too).
    TENSORBOARD: ClassVar[str] = "tensorboard"

    epochs_run: int
    epoch_seconds: list[float]
    resumed_from_epoch: Optional[int] = None
    device: str
    # Per replica: the batch of a step is batch_size x replicas (a MirroredStrategy's devices).
    batch_size: int
    replicas: int = 1
    notes: list[str] = []
    # The images it trained and validated on; the split of the per-epoch validation figures, and the last epoch's.
    train_count: int
    validation_count: int
    validated_on: Literal["validation", "test"]
    validation_accuracy: float
    validation_loss: float

    @property
    def model_file(self) -> Path:
        return self.folder / self.MODEL

    def load(self) -> Any:
        """The Keras model; safe_mode refuses a file that would run code of its own."""
        import keras

        return keras.models.load_model(self.model_file, safe_mode=True)

    def history(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.read_csv(self.folder / self.HISTORY)

    def summary(self) -> str:
        return (self.folder / self.SUMMARY).read_text()


class MetricsRef(EntryRef):
    """Test-set metrics and the tables behind them."""

    stage: Literal["evaluate"] = "evaluate"

    METRICS: ClassVar[str] = "metrics.json"
    # Table name: its file, and whether its first column is the index.
    TABLES: ClassVar[dict[str, tuple[str, bool]]] = {
        "confusion": ("confusion.csv", True),
        "per_class": ("per_class.csv", True),
        "misclassified": ("misclassified.csv", False),
        "first_predictions": ("predictions.csv", True),
    }

    test_accuracy: float
    test_loss: float
    # The test split these figures come from: its size and SHA-256.
    test_count: int
    test_sha256: str

    def tables(self) -> dict[str, "pd.DataFrame"]:
        import pandas as pd

        return {name: pd.read_csv(self.folder / file, index_col=0 if indexed else None)
                for name, (file, indexed) in self.TABLES.items()}

    def per_class_rows(self) -> list[dict[str, Any]]:
        """The per-class table as rows of numbers, floats to 4 places, read without pandas."""
        with open(self.folder / self.TABLES["per_class"][0], newline="") as f:
            rows = [{k: json.loads(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


class ReportRef(EntryRef):
    """The rendered report."""

    stage: Literal["report"] = "report"

    markdown: str
    html: str

