"""Object detectors for GenEval, by name: `get_detector("shapes")`.

A spec is `NAME` or `NAME:ARGUMENT` (for example a checkpoint path); each factory takes the
argument (None when absent) and returns an object following `nami_core.eval.geneval.Detector`.
"""

from __future__ import annotations

from typing import Callable

from ...errors import NamiError
from ..geneval import Detector


def _shapes(argument: str | None) -> Detector:
    if argument is not None:
        raise NamiError("the shapes detector takes no argument (use --detector shapes)")
    from .shapes import ShapesDetector

    return ShapesDetector()


# name -> (factory, one-line description for help texts and errors)
DETECTORS: dict[str, tuple[Callable[[str | None], Detector], str]] = {
    "shapes": (_shapes, "the shapes world's circles, squares, triangles and diamonds"),
}


def detector_names() -> list[str]:
    return list(DETECTORS)


def get_detector(spec: str) -> Detector:
    """The detector named by `spec` ("NAME" or "NAME:ARGUMENT"); NamiError listing the choices otherwise."""
    name, sep, argument = spec.strip().partition(":")
    if name not in DETECTORS:
        raise NamiError(f"unknown detector {name!r}; choices: {', '.join(DETECTORS)}")
    factory, _ = DETECTORS[name]
    return factory(argument if sep else None)
