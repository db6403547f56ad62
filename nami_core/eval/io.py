"""Result files written atomically, and images read with one-line errors.

Every benchmark writes its result files only after all scoring finished, each through a temporary
file in the same folder that is renamed into place, so an interrupted or failed run leaves no
partial result behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import NamiError
from .geneval import _atomic_write as atomic_write_text  # one implementation for every result file

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_write_jsonl",
           "read_rgb", "png_info", "save_png_atomic", "read_jsonl", "list_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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


def png_info(path: str | Path) -> dict:
    """The generation settings a nami PNG carries in its "nami" text chunk ({} when absent)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get("nami")
    except OSError:
        return {}
    if not text:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def save_png_atomic(image, path: str | Path, info: dict | None = None) -> None:
    """Save a PIL image as PNG (atomically) with `info` as JSON in a "nami" text chunk."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    chunk = PngInfo()
    if info is not None:
        chunk.add_text("nami", json.dumps(info, sort_keys=True))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=chunk)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
