"""Result files written atomically, and images read with one-line errors (JSON lines are read by
`nami_core.user_files`).

Every benchmark writes its result files only after all scoring finished, each through a temporary
file in the same folder that is renamed into place, so an interrupted or failed run leaves no
partial result behind.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import NamiError

__all__ = ["read_rgb", "list_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Every .png / .jpg / .jpeg / .webp file under `folder` (recursively, hidden files skipped), in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NamiError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def read_rgb(path: str | Path):
    """An image file as an RGB PIL image with its EXIF orientation applied; NamiError if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as raw:
            return ImageOps.exif_transpose(raw).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NamiError(f"cannot read image {path}: {exc}") from None
