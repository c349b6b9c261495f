"""The pipeline's parameters, declared once: the flow's signature and the CLI's options derive from them."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from engine import roots
from engine.text import shown
from engine.settings import env_name, settings
from tasks.params import BatchSize, LearningRate, Seed, TrainParams

# The TensorFlow Datasets names this pipeline knows: 28x28 grayscale, 10 classes.
DatasetName = Literal["mnist", "fashion_mnist"]

# Shared by the config and the flow's parameters, so Prefect refuses a bad value when a run is created.
TrainLimit = Annotated[Optional[int], Field(ge=1, le=2**31 - 1)]
# A folder: never empty (that would be the working directory itself).
Folder = Annotated[str, Field(min_length=1)]
# The flow's `mirror`: a text field in the UI's form, empty (or None) for download; the config takes None only.
Mirror = Annotated[Optional[str], WithJsonSchema({"type": "string"})]
AccuracyThreshold = Annotated[Optional[float], Field(ge=0, le=1)]
ValidationSplit = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]

# Every choice (recipe, gate) is made on validation figures; the test split is read once, by evaluate.
DEFAULT_VALIDATION_SPLIT = 0.1
# The quality gate's floor per dataset: below what a few thousand images reach in
# 3 epochs (Fashion-MNIST: 0.82-0.84 in BENCHMARKS.md); the champion rule does the rest.
DEFAULT_ACCURACY_THRESHOLD = {"mnist": 0.95, "fashion_mnist": 0.80}
# Relative to the working directory, like the rest of a run's paths.
DEFAULT_ARTIFACTS_DIR = "artifacts"


# `mnist-pipeline run --recipe NAME`: settings that stand in for the defaults; options given stand over them.
# The tutorial's: Adam's default 1e-3 throughout, batch 32, 10 epochs, the test split as validation.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "tutorial": {"epochs": 10, "batch_size": 32, "learning_rate": 1e-3, "lr_schedule": "constant",
                 "validation_split": 0.0},
}

# A few seconds of work end to end: what the tests and quick local checks run.
TINY = {"epochs": 1, "batch_size": 16, "train_limit": 256}


class DataSource(BaseModel):
    """Which data a run reads: the dataset, downloaded or from a mirror."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetName = Field("mnist", description="mnist or fashion_mnist, as TensorFlow Datasets names them.")
    mirror: Optional[Folder] = Field(None, description="A folder holding the dataset's four IDX files, read instead "
                                                       "of downloading; empty: download.")

    @field_validator("mirror")
    @classmethod
    def _mirror_holds_the_four_files(cls, mirror: Optional[str]) -> Optional[str]:
        # Headers only: a wrong or missing file is refused in milliseconds; the download stage checks every byte.
        if mirror is not None:
            from tasks import idx  # NumPy: only when there is a mirror to check

            roots.confine(mirror)
            idx.check_mirror_headers(Path(mirror))
        return mirror


class PipelineConfig(TrainParams, DataSource):
    """One run's settings, validated before any stage starts; each field a flow parameter and a `run` option."""

    train_limit: TrainLimit = Field(None, description="Train on the first N training images only; empty: all of them.")
    validation_split: ValidationSplit = Field(DEFAULT_VALIDATION_SPLIT, description="Share of the training images "
                                              "held out (the last ones) to validate each epoch; 0: validate on the "
                                              "test split, as the tutorial does.")
    artifacts_dir: Folder = Field(DEFAULT_ARTIFACTS_DIR, description="The artifact store, on the worker; a relative "
                                                                     "path starts in the project.")
    accuracy_threshold: AccuracyThreshold = Field(None, description="Least test accuracy to become the dataset's "
                                                  "champion; empty: 0.95 (mnist), 0.80 (fashion_mnist).")

    @field_validator("artifacts_dir")
    @classmethod
    def _store_inside_allowed_roots(cls, artifacts_dir: str) -> str:
        roots.confine_store(artifacts_dir)
        return artifacts_dir

    @property
    def threshold(self) -> float:
        """The quality gate's bar: as given, else the dataset's default."""
        return DEFAULT_ACCURACY_THRESHOLD[self.dataset] if self.accuracy_threshold is None else self.accuracy_threshold

    @property
    def train(self) -> TrainParams:
        return TrainParams(**self.model_dump(include=set(TrainParams.model_fields)))


def describe(error: ValidationError, as_option: bool = False) -> str:
    """The first problem of `error` in one line, naming the parameter as the UI does (or as a CLI option)."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # about the parameters together
        return message
    name = str(first["loc"][0])
    if not as_option and message.startswith(f"{name} "):  # it names the parameter itself (a mirror's files)
        return message
    if as_option:
        name = "--" + name.replace("_", "-")
    value = shown(first["input"])
    if message.startswith(f"{value} "):  # it names the value
        return f"{name} {message}"
    return f"{name} {value if len(value) <= 80 else value[:77] + '...'}: {message}"


def train_params(**overrides: Any) -> TrainParams:
    """The flow's default training parameters, with `overrides`."""
    return PipelineConfig(**overrides).train


def _fields(models: tuple[type[BaseModel], ...], exclude: frozenset[str]) -> list[tuple[type[BaseModel], str, Any]]:
    return [(model, name, field) for model in models or (PipelineConfig,) for name, field in model.model_fields.items()
            if name not in exclude]


def with_parameters(fn: Any, *models: type[BaseModel], exclude: frozenset[str] = frozenset()) -> Any:
    """`fn(**parameters)` given the fields of `models` (PipelineConfig's by default) as its signature and Args:
    Prefect reads both for the flow's parameters' types, bounds and defaults, and the form's descriptions."""
    parameters, args = [], []
    for _, name, field in _fields(models, exclude):
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        default = field.default
        if name == "mirror":  # a plain text field in the form, where empty means download
            annotation, default = Mirror, ""
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
        args.append(f"    {name}: {field.description}")
    fn.__signature__ = inspect.Signature(parameters, return_annotation=dict[str, Any])
    fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n" + "\n".join(args)
    return fn


def add_options(parser: Any, *models: type[BaseModel], exclude: frozenset[str] = frozenset()) -> None:
    """One option per field of `models` (PipelineConfig's by default), `--batch-size` for `batch_size`; a list field
    takes one or more values (`--seeds 0 1 2`)."""
    for model, name, field in _fields(models, exclude):
        schema = model.model_json_schema()["properties"][name]
        many = schema.get("type") == "array"
        element = schema.get("items", {}) if many else schema
        kinds = {choice.get("type") for choice in element.get("anyOf", [element])}
        kind = int if "integer" in kinds else float if "number" in kinds else str
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=field.default,
                            nargs="+" if many else None, help=field.description)


KeepRuns = Annotated[Optional[int], Field(ge=0, le=1_000_000)]
OlderThanDays = Annotated[Optional[float], Field(ge=0, le=36_500, allow_inf_nan=False)]


class GcPolicy(BaseModel):
    """What `mnist-pipeline gc` and the weekly clean-up keep: the rest of the store goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_runs: KeepRuns = Field(None, description="Keep the entries of the last N runs of each dataset; empty: "
                                                  "MNIST_PIPELINE_GC_KEEP_RUNS (5).")
    older_than_days: OlderThanDays = Field(None, description="Remove only what is at least this many days old; "
                                                             "empty: whatever its age.")

    @property
    def runs_kept(self) -> int:
        return settings().gc_keep_runs if self.keep_runs is None else self.keep_runs


_TRAIN = TrainParams.model_fields


class SweepGrid(BaseModel):
    """The grid of an `mnist-sweep` run: every combination is trained, as a cached task of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rates: list[LearningRate] = Field([_TRAIN["learning_rate"].default, 1e-3], min_length=1,
                                               description="Adam's learning rates to try.")
    batch_sizes: list[BatchSize] = Field([_TRAIN["batch_size"].default, 32], min_length=1,
                                         description="Batch sizes to try.")
    seeds: list[Seed] = Field([_TRAIN["seed"].default], min_length=1, description="Seeds to try each combination with.")

    @model_validator(mode="after")
    def _within_the_limit(self) -> "SweepGrid":
        # One request must not occupy the worker for hours.
        count = len(self.learning_rates) * len(self.batch_sizes) * len(self.seeds)
        limit = settings().sweep_max_combinations
        if count > limit:
            raise ValueError(f"the grid has {count} combinations, more than the {limit} one sweep may train "
                             f"(set {env_name('sweep_max_combinations')} to allow more)")
        return self

    def configs(self, **common: Any) -> dict[str, PipelineConfig]:
        """Each combination's run settings, by a label such as `lr=0.006 batch=32 seed=0`."""
        return {f"lr={lr:g} batch={batch} seed={seed}":
                PipelineConfig(**common, learning_rate=lr, batch_size=batch, seed=seed)
                for lr in self.learning_rates for batch in self.batch_sizes for seed in self.seeds}


# What the sweep's grid sets, and each run's settings leave out.
GRID_FIELDS = frozenset({"learning_rate", "batch_size", "seed"})
