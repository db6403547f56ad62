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
CLIP_HINT = ("save a transformers CLIP model there, e.g. CLIPModel and CLIPProcessor of "
             "openai/clip-vit-large-patch14 via save_pretrained(PATH) on a machine with internet")
VQA_HINT = ("save a transformers VQA model and its processor there, e.g. Salesforce/blip-vqa-base "
            "(BlipForQuestionAnswering + BlipProcessor) via save_pretrained(PATH)")
INCEPTION_HINT = ("download inception-2015-12-05.pt (the TorchScript FID Inception used by StyleGAN2-ADA and "
                  "clean-fid) on a machine with internet and pass its path with --inception")


def existing_path(path: str | Path | None, what: str, hint: str) -> Path:
    """`path` given and present (`~` expanded), or NamiError naming `what` with `hint`."""
    if path is None or not str(path).strip():
        raise NamiError(f"{what} is required; {hint}")
    path = Path(path).expanduser()
    if not path.exists():
        raise NamiError(f"{what}: {path} does not exist; {hint}")
    return path


def check_model_folder(path: str | Path | None, what: str, hint: str) -> Path:
    """The folder of a transformers model saved with `save_pretrained`, or NamiError.

    what: the flag and the model it names ("--clip (a CLIP model)"); hint: where to get it.
    """
    folder = existing_path(path, what, hint)
    if not folder.is_dir():
        raise NamiError(f"{what}: {folder} is a file, expected a model folder with config.json; {hint}")
    if not (folder / "config.json").is_file():
        raise NamiError(f"{what}: {folder} has no config.json; {hint}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise NamiError(f"{what}: {folder} has no weights (model.safetensors or pytorch_model.bin); {hint}")
    return folder


def clip_folder(path: str | Path | None, flag: str = "--clip") -> Path:
    """The folder of a CLIP model (`check_model_folder`), checked before torch loads."""
    return check_model_folder(path, f"{flag} (a CLIP model)", CLIP_HINT)


def vqa_folder(path: str | Path | None, flag: str = "--vqa") -> Path:
    """The folder of a VQA model (`check_model_folder`), checked before torch loads."""
    return check_model_folder(path, f"{flag} (a VQA model)", VQA_HINT)


def inception_file(path: str | Path | None, flag: str = "--inception") -> Path:
    """The FID Inception's TorchScript file, checked before torch loads."""
    path = existing_path(path, flag, INCEPTION_HINT)
    if not path.is_file():
        raise NamiError(f"{flag}: {path} is a folder, expected the .pt file; {INCEPTION_HINT}")
    return path


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
