"""What `nami eval clipscore` and `nami eval fid` are asked for, checked before torch or a model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import DEVICES, MAX_BATCH_SIZE, check_fields, one_of, within
from ..errors import NamiError
from ..input_paths import FOLDER, check_reads, reads
from .weights import clip_folder, inception_file


@dataclass(kw_only=True)
class MetricRequest:
    """A metric over image folders: the model's `device`, images per model call, and an optional
    JSON file (`json_out`) for the result, checked by the output policy (`output_targets`): a
    .json file, never the model it is computed with."""

    json_out: Path | None = field(default=None, metadata={"option": "--json"})
    device: str = field(default="auto", metadata=one_of(DEVICES))
    batch_size: int = field(default=32, metadata=within(1, MAX_BATCH_SIZE))
    json_holds: ClassVar[str] = "JSON result"  # what an error calls the --json file

    def __post_init__(self) -> None:
        check_fields(self)
        if self.json_out is not None:
            from ..output_targets import check_out_file

            check_out_file(self.json_out, (".json",), self.json_holds, self.inputs(), flag="--json")
        check_reads(self)

    def inputs(self) -> dict[str, Any]:
        """The model file or folder the --json file may not be (`output_targets`)."""
        return {}


@dataclass(kw_only=True)
class ClipScoreRequest(MetricRequest):
    """CLIPScore of the images under `images` with the CLIP model folder `clip`."""

    images: Path = field(metadata=reads(FOLDER, "IMAGES"))
    clip: str = field(metadata=reads(clip_folder))
    batch_size: int = field(default=16, metadata=within(1, MAX_BATCH_SIZE))
    json_holds: ClassVar[str] = "JSON scores"

    def inputs(self) -> dict[str, Any]:
        return {"--clip": self.clip}


@dataclass(kw_only=True)
class FidRequest(MetricRequest):
    """FID between the folders `real` and `fake` with the Inception file `inception`."""

    real: Path = field(metadata=reads(FOLDER, "REAL"))
    fake: Path = field(metadata=reads(FOLDER, "FAKE"))
    inception: str = field(metadata=reads(inception_file))

    def __post_init__(self) -> None:
        super().__post_init__()
        if Path(self.real).resolve() == Path(self.fake).resolve():
            raise NamiError(f"REAL and FAKE are the same folder ({self.real}); FID compares two sets of images")

    def inputs(self) -> dict[str, Any]:
        return {"--inception": self.inception}
