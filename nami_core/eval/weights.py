"""Loading evaluation models (detectors, CLIP, VQA) from local folders with one-line errors.

Weights are never downloaded: every evaluator takes a local path. A missing folder, a folder
without `config.json` or weights, and a corrupt checkpoint each end in a `NamiError` that says
what was expected and where it comes from (`hint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NamiError, first_line

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def check_model_folder(path: str | Path | None, what: str, hint: str) -> Path:
    """The folder of a transformers model saved with `save_pretrained`, or NamiError.

    what: the flag and the model it names ("--clip (a CLIP model)"); hint: where to get it.
    """
    if path is None or not str(path).strip():
        raise NamiError(f"{what} is required; {hint}")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise NamiError(f"{what}: {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise NamiError(f"{what}: {folder} is a file, expected a model folder with config.json; {hint}")
    if not (folder / "config.json").is_file():
        raise NamiError(f"{what}: {folder} has no config.json; {hint}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise NamiError(f"{what}: {folder} has no weights (model.safetensors or pytorch_model.bin); {hint}")
    return folder


def load_pretrained(loader: Any, folder: Path, what: str, hint: str, **kwargs):
    """`loader.from_pretrained(folder)` in eval mode, with any loading failure as one NamiError line."""
    from ..modeldir import quiet_loading

    quiet_loading()
    try:
        model = loader.from_pretrained(str(folder), **kwargs)
    except NamiError:
        raise
    except Exception as exc:  # corrupt files raise anything from OSError to safetensors' own error
        raise NamiError(f"{what}: cannot load {folder} ({first_line(exc)}); {hint}") from None
    if hasattr(model, "eval"):
        model.eval()
    return model
