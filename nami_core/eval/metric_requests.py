"""What `nami eval clipscore` and `nami eval fid` are asked for, checked before torch or a model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEVICES, at_least, check_fields, one_of


@dataclass(kw_only=True)
class MetricRequest:
    """A metric over image folders: the model's `device`, images per model call, and an optional
    JSON file (`json_out`) for the result."""

    json_out: Path | None = field(default=None, metadata={"option": "--json"})
    device: str = field(default="auto", metadata=one_of(DEVICES))
    batch_size: int = field(default=32, metadata=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.json_out is not None:
            from ..output_targets import check_file_target

            check_file_target(self.json_out, "--json")


@dataclass(kw_only=True)
class ClipScoreRequest(MetricRequest):
    """CLIPScore of the images under `images` with the CLIP model folder `clip`."""

    images: Path
    clip: str
    batch_size: int = field(default=16, metadata=at_least(1))


@dataclass(kw_only=True)
class FidRequest(MetricRequest):
    """FID between the folders `real` and `fake` with the Inception file `inception`."""

    real: Path
    fake: Path
    inception: str
