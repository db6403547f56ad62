"""PNG files with their generation settings: a "nami" text chunk holding JSON (and a "prompt"
chunk), optionally a sidecar `.json` beside the image. Written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from .files import write_atomic, write_json_atomic

METADATA_CHUNK = "nami"


def save_png(image, path: str | Path, metadata: dict | None = None, sidecar: bool = False) -> None:
    """Write the PIL `image` to `path` (creating its folder) with `metadata` in the "nami" chunk
    (sorted JSON) and its "prompt" in a chunk of its own; `sidecar` also writes `path` with
    suffix `.json`."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if metadata is not None:
        info.add_text(METADATA_CHUNK, json.dumps(metadata, sort_keys=True))
        if "prompt" in metadata:
            info.add_text("prompt", str(metadata["prompt"]))
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    if sidecar and metadata is not None:
        write_json_atomic(path.with_suffix(".json"), metadata, sort_keys=True)


def read_png_metadata(path: str | Path) -> dict:
    """The settings a PNG carries in its "nami" chunk ({} when absent or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get(METADATA_CHUNK)
    except OSError:
        return {}
    if not text:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}
