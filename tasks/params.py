"""What shapes a trained model besides the data: the train stage's parameters, their bounds and defaults.

The stages import this module for their annotations only (under TYPE_CHECKING),
so it is no part of their keys: a key holds the values a run trained with, and
changing a default changes what later runs ask for, not what a stage computes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds too: a value TensorFlow or NumPy cannot take is refused here, not deep inside training.
Epochs = Annotated[int, Field(ge=1, le=1000)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]
LearningRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
# cosine: the learning rate falls from its peak to 0 over the training, step by step; constant: the tutorial's.
LrSchedule = Literal["cosine", "constant"]
# NumPy's and Keras's seeds are 32-bit.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class TrainParams(BaseModel):
    """Everything that shapes the trained model besides the data; the defaults are the default recipe's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The tutorial's 10 epochs reach about 99% on MNIST.
    epochs: Epochs = Field(10, description="Training epochs, 1 to 1000.")
    # Four times the tutorial's: with oneDNN's kernels, 10 epochs at 128 train in about two thirds
    # of the tutorial's time at its validation accuracy over three seeds (BENCHMARKS.md).
    batch_size: BatchSize = Field(128, description="Examples per training step, 1 to 65536.")
    # Six times Adam's default at the start, falling along a cosine to 0 (BENCHMARKS.md).
    learning_rate: LearningRate = Field(6e-3, description="Adam's learning rate, above 0 and at most 1; with the "
                                                          "cosine schedule, its value at the start.")
    lr_schedule: LrSchedule = Field("cosine", description="cosine falls from the learning rate to 0 over the "
                                                          "training; constant keeps it, as the tutorial does.")
    seed: Seed = Field(0, description="Seeds every random source, 0 to 4294967295.")
