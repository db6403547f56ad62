"""Activation checkpointing: which blocks recompute their activations in backward, per stage window.

* `none`: no block; `full`: every block of every window;
* `last-stage`: the blocks of the model's last stage module (from `stage_ends[-2]`) wherever they run;
* `auto`: every block, but only in the full-resolution (last) window, whose activations dominate;
  the low-resolution windows keep theirs.

No torch here: `nami info --train-memory` plans with the same rule the training loop runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import CHECKPOINTING, check_choice


@dataclass(frozen=True)
class CheckpointPolicy:
    """`granularity` (one of `CHECKPOINTING`) for a model with `stage_ends` (its stage modules)
    trained on a plan whose full-resolution window is `last_window`."""

    granularity: str
    stage_ends: tuple[int, ...]
    last_window: int

    def __post_init__(self) -> None:
        check_choice("--grad-checkpointing", self.granularity, CHECKPOINTING)
        object.__setattr__(self, "stage_ends", tuple(int(e) for e in self.stage_ends))

    def recompute_from(self, window: int) -> int | None:
        """The first block window `window` recomputes, or None."""
        if self.granularity == "full":
            return 0
        if self.granularity == "last-stage":
            return self.stage_ends[-2] if len(self.stage_ends) > 1 else 0
        if self.granularity == "auto" and window == self.last_window:
            return 0
        return None
