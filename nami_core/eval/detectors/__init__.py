"""Object detectors for GenEval, by name: `get_detector("shapes")`, `get_detector("mask2former:PATH", clip=...)`.

A spec is `NAME` or `NAME:ARGUMENT` (for example a checkpoint path); each factory takes the
argument (None when absent) and the `DetectorOptions` (the CLIP colour model, the device) and
returns an object following `nami_core.eval.geneval.Detector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import NamiError
from ..geneval import Detector


@dataclass(frozen=True)
class DetectorOptions:
    """clip: folder of a transformers CLIP model that names object colours (None: the detector's own);
    device: torch device name for model-based detectors."""

    clip: str | None = None
    device: str = "cpu"


def _shapes(argument: str | None, options: DetectorOptions) -> Detector:
    if argument is not None:
        raise NamiError("the shapes detector takes no argument (use --detector shapes)")
    if options.clip is not None:
        raise NamiError("the shapes detector names colours itself; --clip is for the mask2former detector")
    from .shapes import ShapesDetector

    return ShapesDetector()


def _mask2former(argument: str | None, options: DetectorOptions) -> Detector:
    if not argument:
        raise NamiError("the mask2former detector needs its model folder: --detector mask2former:PATH")
    from ..clip_colors import ClipColorClassifier
    from .mask2former import Mask2FormerDetector

    colors = ClipColorClassifier(options.clip, options.device) if options.clip is not None else None
    return Mask2FormerDetector(argument, colors, options.device)


# name -> (factory, one-line description for help texts and errors)
DETECTORS: dict[str, tuple[Callable[[str | None, DetectorOptions], Detector], str]] = {
    "shapes": (_shapes, "the shapes world's circles, squares, triangles and diamonds"),
    "mask2former": (_mask2former, "GenEval's Mask2Former (COCO instance, transformers weights at PATH); "
                                  "colours by CLIP with --clip"),
}


def get_detector(spec: str, options: DetectorOptions | None = None) -> Detector:
    """The detector named by `spec` ("NAME" or "NAME:ARGUMENT"); NamiError listing the choices otherwise."""
    name, sep, argument = spec.strip().partition(":")
    if name not in DETECTORS:
        raise NamiError(f"unknown detector {name!r}; choices: {', '.join(DETECTORS)}")
    factory, _ = DETECTORS[name]
    return factory(argument if sep else None, options or DetectorOptions())
