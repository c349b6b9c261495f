"""The small typed references that stages pass on instead of data."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

StageName = Literal["download", "preprocess", "train", "evaluate", "report"]
# 16 hex digits: never a path separator nor `..`, so a reference cannot point outside its stage's folder.
Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class EntryRef(BaseModel):
    """Names one complete entry of the artifact store: `<stage>/<fingerprint>/`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: StageName
    fingerprint: Fingerprint


class DatasetRef(EntryRef):
    """The raw uint8 splits, as downloaded or read from a mirror."""

    dataset: str
    source: str
    train_count: int
    test_count: int
    # SHA-256 of each file read (TFDS's registered checksums on the download path).
    files_sha256: dict[str, str]
    # SHA-256 of the decoded arrays: equal for equal data, however it was stored.
    arrays_sha256: str
    # Doubts about the data, shown in the report: files whose checksums no registry knows.
    warnings: list[str] = []


class PreparedRef(EntryRef):
    """Scaled float32 images of shape (N, 28, 28, 1), with labels and the sample grid."""

    train_count: int
    test_count: int


class ModelRef(EntryRef):
    """A trained model with its per-epoch history."""

    epochs_run: int
    epoch_seconds: list[float]
    resumed_from_epoch: Optional[int] = None
    device: str
    # The batch size trained with: smaller than asked after GPU out-of-memory.
    batch_size: int
    notes: list[str] = []


class MetricsRef(EntryRef):
    """Test-set metrics and the tables behind them."""

    test_accuracy: float
    test_loss: float


class ReportRef(EntryRef):
    """The rendered report."""

    markdown: str
    html: str


# What each stage returns: the type its entry's ref.json is read back as.
REF_TYPES: dict[str, type[EntryRef]] = {
    "download": DatasetRef,
    "preprocess": PreparedRef,
    "train": ModelRef,
    "evaluate": MetricsRef,
    "report": ReportRef,
}
