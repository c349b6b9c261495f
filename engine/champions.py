"""Each dataset's champion record: which entry holds its model, and the bar later models are held to.

`champions/<dataset>.json` in the store, replaced atomically, read and written
under the champion's lock (flows/gate.py decides who becomes champion).
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, ContextManager, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine import layout
from engine.locking import held
from engine.refs import Fingerprint
from engine.store import store_errors, write_atomically

Accuracy = Annotated[float, Field(ge=0, le=1, strict=True)]


class Champion(BaseModel):
    """A dataset's champion: the fingerprint of its model's entry, and how well it scored."""

    model_config = ConfigDict(extra="ignore")

    model: Fingerprint
    test_accuracy: Accuracy
    flow_run_id: str
    # The model's entry relative to the store, for people reading the record (absolute in older records).
    model_path: str = ""
    # SHA-256 of the test split its accuracy was measured on (None in records from before it was kept).
    test_sha256: Optional[str] = None
    # The best test accuracy ever promoted, per test data (by SHA-256): the bar, which never falls.
    best: dict[str, Accuracy] = {}

    def bar(self, test_sha256: str) -> Optional[float]:
        """The best accuracy promoted on this test data, None if none was measured on it."""
        found = [self.best.get(test_sha256), self.test_accuracy if self.test_sha256 == test_sha256 else None]
        return max((a for a in found if a is not None), default=None)


class ChampionDamaged(ValueError):
    """A champion record that cannot be read: reported, kept as evidence, never trusted."""


def read_champion(artifacts_dir: layout.Root, dataset: str) -> Optional[Champion]:
    """The dataset's champion, None if there is none; ChampionDamaged if its record is unreadable."""
    path = layout.champion(artifacts_dir, dataset)
    try:
        return Champion.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as err:
        reason = str(err).splitlines()[0] if isinstance(err, OSError) else err.errors()[0]["msg"]
        raise ChampionDamaged(f"the {dataset} champion record {path} is damaged ({reason})") from err


def read_for_update(artifacts_dir: layout.Root, dataset: str) -> Optional[Champion]:
    """read_champion(), a damaged record moved aside first (kept as evidence) and read as none."""
    try:
        return read_champion(artifacts_dir, dataset)
    except ChampionDamaged:
        path = layout.champion(artifacts_dir, dataset)
        with store_errors(f"cannot write the {dataset} champion record {path}"):
            os.replace(path, path.with_name(f"{path.name}{layout.DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}"))
        return None


def write_champion(artifacts_dir: layout.Root, dataset: str, champion: Champion) -> None:
    path = layout.champion(artifacts_dir, dataset)
    with store_errors(f"cannot write the {dataset} champion record {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, champion.model_dump_json(indent=1))


def champion_lock(locks: Any, dataset: str) -> ContextManager[None]:
    """Held from judging to promotion: two runs finishing together take turns."""
    return held(locks, f"champion/{dataset}")
