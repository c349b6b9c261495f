"""A reference to one entry of the artifact store: what stages pass on instead of data.

The stages' own reference types (tasks/refs.py) add the fields each entry's
`ref.json` holds. Located in a store (`ref.at(root)`, which the cache does for
every input), a reference reads its entry's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

from engine import layout

# 16 hex digits: never a path separator nor `..`, so a reference cannot point outside its stage's folder.
Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class EntryRef(BaseModel):
    """Names one complete entry of the artifact store: `<stage>/<fingerprint>/`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Annotated[str, Field(pattern=r"^[a-z]+$")]
    fingerprint: Fingerprint
    # Where its files are read from, once located in a store: never stored, never part of a key.
    located_in: Optional[Path] = Field(None, exclude=True, repr=False)

    def at(self, root: layout.Root) -> "EntryRef":
        """This reference, reading its files from the store at `root`."""
        return self.model_copy(update={"located_in": layout.entry(root, self.stage, self.fingerprint)})

    @property
    def folder(self) -> Path:
        if self.located_in is None:
            raise ValueError(f"{self.stage}/{self.fingerprint} is not located in a store: use .at(root)")
        return self.located_in

    @property
    def name(self) -> str:
        """`<stage>/<fingerprint>`, as manifests and the run log name the entry."""
        return f"{self.stage}/{self.fingerprint}"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        # Each stage's reference type names its stage (`stage: Literal["train"] = "train"`): registered by it.
        stage = cls.model_fields["stage"].default
        if isinstance(stage, str):
            _TYPES[stage] = cls


_TYPES: dict[str, type[EntryRef]] = {}


def ref_type(stage: str) -> type[EntryRef]:
    """The reference type of `stage`'s entries, as its stage module declared it."""
    try:
        return _TYPES[stage]
    except KeyError:
        raise ValueError(f"no stage is named {stage!r}") from None


def stages() -> list[str]:
    """The stages whose reference types are declared, in the order they were."""
    if not _TYPES:
        raise RuntimeError("no stage's reference type is declared: import the stages' (tasks.refs) first")
    return list(_TYPES)
