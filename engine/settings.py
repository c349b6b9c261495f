"""Every `MNIST_PIPELINE_*` setting, declared once with its type, default and meaning.

Read from the environment at each call of `settings()`, so a process sees the
value its environment has now. A bad value is refused in one line naming the
variable (SettingsError), never a traceback at import.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PREFIX = "MNIST_PIPELINE_"

Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]


class SettingsError(ValueError):
    """An MNIST_PIPELINE_* variable holds a value that cannot be used; the message names it."""


class Settings(BaseSettings):
    """The pipeline's settings from the environment, each `MNIST_PIPELINE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # On a worker (`make serve` sets it): the only folders, separated by ":", where runs
    # created from the UI or the API may read a mirror or keep an artifact store; s3://bucket/prefix too.
    allowed_roots: Annotated[list[str], NoDecode] = []
    # `gc`'s and the weekly clean-up's default: the last N runs of each dataset keep their entries.
    gc_keep_runs: Annotated[int, Field(ge=0, le=1_000_000)] = 5
    # Tries of a failing stage after the first, the waits before them, and how far each
    # wait may randomly stretch or shrink (0.5: +-50%), so that many runs do not retry in step.
    stage_retries: Annotated[int, Field(ge=0, le=100)] = 2
    retry_delays_s: Annotated[list[Seconds], NoDecode, Field(min_length=1)] = [1.0, 4.0]
    retry_jitter: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    # Locks across hosts: the Redis server's URL (may hold a password), and how long a
    # lock outlives its holder's last renewal (renewed three times as often).
    redis_url: Optional[str] = None
    redis_lock_ttl_s: Annotated[float, Field(ge=0.5, le=3600, allow_inf_nan=False)] = 30.0
    # Each host's local copy of stores in S3.
    s3_cache: Annotated[str, Field(min_length=1)] = ".s3-cache"
    # `mnist-sweep`: a Dask scheduler to use, else a local cluster of this many worker processes;
    # and the most combinations one sweep may train.
    dask_address: Optional[str] = None
    dask_workers: Annotated[int, Field(ge=1, le=256)] = 2
    # The local cluster's dashboard: off unless a port is given, then on 127.0.0.1 at that port (it needs bokeh).
    dask_dashboard_port: Optional[Annotated[int, Field(ge=1, le=65535)]] = Field(
        None, description="Port of the local Dask cluster's dashboard, on 127.0.0.1; unset: no dashboard.")
    sweep_max_combinations: Annotated[int, Field(ge=1, le=100_000)] = 64
    # Set by `make serve` for its worker: the reports server's address, and the store it serves.
    reports_url: Optional[str] = None
    reports_root: Optional[str] = None
    # The `nightly` deployment's parameters, a JSON object (checked by `make serve`).
    nightly: str = ""

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        # ":" separates the roots, so `s3://bucket/prefix` comes apart at its scheme: joined again here.
        if not isinstance(value, str):
            return value
        roots: list[str] = []
        for part in value.split(os.pathsep):
            if roots and roots[-1] == "s3" and part.startswith("//"):
                roots[-1] = f"s3:{part}"
            elif part:
                roots.append(part)
        return roots

    @field_validator("retry_delays_s", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value


def env_name(field: str) -> str:
    """The environment variable of a setting: `gc_keep_runs` is MNIST_PIPELINE_GC_KEEP_RUNS."""
    return PREFIX + field.upper()


def settings() -> Settings:
    """The settings as the environment has them now; SettingsError naming the first bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = env_name(str(first["loc"][0])) if first["loc"] else PREFIX + "*"
        value = os.environ.get(name, "")
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise SettingsError(f"{name}={shown!r}: {first['msg']}") from None
