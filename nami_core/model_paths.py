"""Where a model directory is: `--model DIR`, or the bundled model when none is given (no torch)."""

from __future__ import annotations

from pathlib import Path

from .errors import NamiError

DEFAULT_MODEL_NAME = "nami-shapes"


def bundled_model_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / DEFAULT_MODEL_NAME


def resolve_model_dir(model: str | Path | None) -> Path:
    """A model directory from `--model`; None or "default" means the bundled model."""
    if model is None or str(model) == "default":
        path = bundled_model_dir()
        if not (path / "model_index.json").is_file():
            raise NamiError(
                f"the bundled default model is not installed ({path}); pass --model DIR"
            )
        return path
    path = Path(model)
    if not path.exists():
        raise NamiError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise NamiError(f"--model must be a model directory, {path} is a file")
    return path
