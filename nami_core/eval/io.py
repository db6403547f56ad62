"""Result files written atomically, and images read with one-line errors.

Every benchmark writes its result files only after all scoring finished, each through a temporary
file in the same folder that is renamed into place, so an interrupted or failed run leaves no
partial result behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NamiError

__all__ = ["read_rgb", "read_jsonl", "list_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_jsonl(path: str | Path, what: str = "file") -> list[dict]:
    """JSON objects, one per non-blank line; NamiError naming `path:line` for a bad line."""
    path = Path(path)
    if not path.is_file():
        raise NamiError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise NamiError(f"{what} {path} is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NamiError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise NamiError(f"{path}:{number}: each line must be a JSON object")
        records.append(record)
    return records


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
