"""The options of `nami prepare-data shapes`, checked without numpy: how many scenes, their seed,
the mix of scene kinds and what captions leave open (`SceneStyle`). `shapes.py` draws the scenes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MAX_WEIGHT, bound_text, check_fields, list_items, within
from ..errors import NamiError

SCENE_KIND_NAMES = ("relation", "objects", "pair", "count")  # the order fixes how one uniform draw picks a kind
DEFAULT_SCENE_MIX = {"relation": 1.0, "objects": 3.0}
MAX_SCENES = 10_000_000  # scenes of one prepared set


@dataclass(frozen=True)
class SceneStyle:
    """What a scene's caption leaves open and the generator decides.

    usual_color: chance that an object whose caption names no colour is drawn in its class's usual
        colour (`shapes.USUAL_COLORS`) instead of a random one; 0 keeps every such colour random.
    gap: least distance between two objects' boxes, in pixels of a 64 px image.
    """

    usual_color: float = 0.0
    gap: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.usual_color <= 1.0:
            raise NamiError(f"--usual-color must be between 0 and 1, got {self.usual_color:g}")
        if not 0.0 <= self.gap <= 8.0:
            raise NamiError(f"--gap must be between 0 and 8 pixels, got {self.gap:g}")


DEFAULT_STYLE = SceneStyle()


def parse_scene_mix(text: str) -> dict[str, float]:
    """'objects:3,relation:1' -> {kind: weight}; every kind must be one of SCENE_KIND_NAMES."""
    if not text.strip():
        raise NamiError("--scene-mix is empty; leave it out for the default (relation:1,objects:3)")
    mix: dict[str, float] = {}
    for part in list_items(text, "--scene-mix"):
        kind, sep, weight = part.partition(":")
        if not sep or kind not in SCENE_KIND_NAMES:
            raise NamiError(f"--scene-mix: {part.strip()!r} is not KIND:WEIGHT with KIND one of {', '.join(SCENE_KIND_NAMES)}")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not (value >= 0 and math.isfinite(value)):
            raise NamiError(f"--scene-mix: the weight of {kind!r} must be a number >= 0, got {weight!r}")
        if value > MAX_WEIGHT:
            raise NamiError(f"--scene-mix: the weights are relative, each at most {bound_text(MAX_WEIGHT)}, "
                            f"got {weight!r} for {kind!r}")
        if kind in mix:
            raise NamiError(f"--scene-mix gives {kind!r} twice; give each kind once")
        mix[kind] = value
    if sum(mix.values()) <= 0:
        raise NamiError("--scene-mix: at least one weight must be above 0")
    return mix


@dataclass
class SceneSettings:
    """The options of `nami prepare-data shapes`: `n` scenes from `seed` (also written as PNGs to
    `images_dir` when given), their kinds drawn by `scene_mix` ("relation:2,objects:2" is parsed)
    and what captions leave open by `usual_color` and `gap` (`SceneStyle`)."""

    n: int = field(default=10000, metadata=within(1, MAX_SCENES))
    seed: int = 0
    images_dir: Path | None = None
    scene_mix: dict[str, float] | str | None = field(
        default=None, metadata={"shown": ",".join(f"{k}:{v:g}" for k, v in DEFAULT_SCENE_MIX.items())})
    usual_color: float = DEFAULT_STYLE.usual_color
    gap: float = DEFAULT_STYLE.gap

    def __post_init__(self) -> None:
        if isinstance(self.scene_mix, str):
            self.scene_mix = parse_scene_mix(self.scene_mix)
        check_fields(self)
        self.style = SceneStyle(usual_color=self.usual_color, gap=self.gap)

    def source(self, size: int):
        """The scenes at final side `size` in pixels, a `shapes.ShapesSource` (creates `images_dir`)."""
        from .shapes import ShapesSource

        return ShapesSource(self.n, self.seed, size, self.images_dir, self.scene_mix, self.style)
