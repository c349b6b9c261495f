"""What shapes a trained model besides the data: the train stage's parameters and their bounds.

The defaults are the flow's (flows/config.py): changing one changes what a run
asks for, not what this stage computes.
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
    """Everything that shapes the trained model besides the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Epochs
    batch_size: BatchSize
    learning_rate: LearningRate
    lr_schedule: LrSchedule
    seed: Seed
