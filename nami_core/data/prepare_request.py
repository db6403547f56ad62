"""What `nami prepare-data` is asked for, checked before torch, a codec or a text encoder loads.

`PrepareRequest` owns the defaults and checks of the preparation itself; `open_prepare_source`
opens the source, refusing the shapes world's options for any other source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import (DEVICES, MAX_BATCH_SIZE, MAX_TEXT_TOKENS, check_fields, one_of, parse_int_list,
                      validate_resolutions, within)
from ..errors import NamiError

DEFAULT_MAX_TOKENS = {"minilm": 32}  # text length per text encoder kind
DEFAULT_TEXT_TOKENS = 256  # text length of any other encoder
MAX_SHARD_SIZE = 1_000_000  # source items of one work unit


@dataclass
class PrepareRequest:
    """`out`: the prepared-data folder; `stages`: the stage resolutions, low to high ("256,512,1024"
    is parsed); `codec` and `text_encoder` as `nami prepare-data --help` lists them."""

    out: Path | str
    stages: tuple[int, ...] | str
    codec: str = "pixel"
    text_encoder: str = "minilm"
    max_text_tokens: int | None = field(default=None, metadata={
        **within(1, MAX_TEXT_TOKENS), "shown": f"{DEFAULT_MAX_TOKENS['minilm']} for minilm, else {DEFAULT_TEXT_TOKENS}"})
    shard_size: int = field(default=1024, metadata=within(1, MAX_SHARD_SIZE))
    batch_size: int = field(default=32, metadata=within(1, MAX_BATCH_SIZE))
    device: str = field(default="auto", metadata=one_of(DEVICES))
    buckets: bool = False

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise NamiError("--out is empty; give the folder to write the prepared data to")
        self.out = Path(self.out)
        self.stages = parse_int_list(self.stages, "--stages")
        validate_resolutions(self.stages, "--stages")
        check_fields(self)
        from ..codecs.spec import parse_codec
        from ..text.spec import check_spec_paths

        parse_codec(self.codec, "--codec")
        check_spec_paths(self.text_encoder)

    def check_out(self, source) -> Path:
        """`out` may receive the prepared data of `source` (the output policy, `output_targets`):
        a new or empty folder, or prepared data to resume, and not the source nor inside or around it."""
        from ..output_targets import DATA, check_out_folder

        return check_out_folder(self.out, DATA, {"source": source.input_paths(),
                                                 "--images-dir": getattr(source, "images_dir", None)})

    def text_tokens(self) -> int:
        """The text length: `max_text_tokens`, or the encoder kind's default."""
        if self.max_text_tokens is not None:
            return self.max_text_tokens
        return DEFAULT_MAX_TOKENS.get(self.text_encoder.split(":")[0], DEFAULT_TEXT_TOKENS)


def open_prepare_source(spec: str, size: int, image_column: str | None = None, caption_column: str | None = None,
                        **scene_options):
    """The source `spec` names: "shapes" (the shapes world at final side `size`, with
    `scene_options`, the fields of `scene_settings.SceneSettings`), else `sources.open_source`; a scene
    option given for another source is refused."""
    from .sources import open_source, refuse_columns

    if spec == "shapes":
        from .scene_settings import SceneSettings

        refuse_columns(image_column, caption_column, "the shapes source")
        return SceneSettings(**{k: v for k, v in scene_options.items() if v is not None}).source(size)
    given = [name for name, value in scene_options.items() if value is not None]
    if given:
        raise NamiError(f"--{given[0].replace('_', '-')} applies to the shapes source only")
    return open_source(spec, image_column, caption_column)
