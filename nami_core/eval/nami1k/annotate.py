"""Building the annotation page from folders of generated NAMI-1K images.

Each `--images` folder (written by `generate`, with its manifest) is one model, named after the
folder or by `NAME=DIR`. Images of all models are shuffled together (deterministically by `seed`)
and shown without model names, so annotators score blind. With `embed=True` (default) every image
is stored in the page as a JPEG data URI (quality 90, longest side at most `max_side`; 0 keeps the
PNG as it is), so the single file can be mailed to annotators; with `embed=False` the page refers
to the images by paths relative to the page, which must then travel with it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...config import check_fields, within
from ...errors import NamiError
from ...input_paths import check_distinct, check_input
from ...files import write_text_atomic
from ...output_targets import NAMI1K_IMAGES, check_out_file
from ..io import read_rgb
from .generate import read_manifest
from .page import render_page

DIMENSIONS = ("relevance", "coherence", "aesthetics", "realism")
MAX_SIDE = 768
MAX_SIDE_LIMIT = 16384  # the largest --max-side (JPEG takes sides up to 65,500 pixels)


def parse_model_folder(spec: str) -> tuple[str, Path]:
    """"NAME=DIR" or "DIR" (named after the folder) -> (name, folder), a folder `generate` wrote."""
    name, sep, folder = spec.partition("=")
    if not sep:
        folder, name = spec, Path(spec.rstrip("/\\")).name
    if not name.strip() or "/" in name or not folder.strip():
        raise NamiError(f"bad --images {spec!r}; use DIR or NAME=DIR")
    return name, check_input(folder, "--images", NAMI1K_IMAGES)


@dataclass
class PageRequest:
    """`nami eval nami1k annotate`: the image folders (`DIR` or `NAME=DIR`, each written by
    `generate`), the page to write (`out`, .html) and how images are shown (`write_page`)."""

    images: Sequence[str]
    out: str | Path
    embed: bool = True
    max_side: int = field(default=MAX_SIDE, metadata=within(0, MAX_SIDE_LIMIT))
    seed: int = 0
    title: str = "NAMI-1K annotation"

    def __post_init__(self) -> None:
        check_fields(self)
        self.models = [parse_model_folder(spec) for spec in self.images]
        check_distinct([folder for _, folder in self.models], "--images")  # one folder under two names
        self.out = check_page_path(self.out, self.models)


def check_page_path(out: str | Path, models: Sequence[tuple[str, Path]]) -> Path:
    """The page's path by the output policy: an .html file, not one of the image folders."""
    return check_out_file(out, (".html", ".htm"), "annotation page", {"--images": [folder for _, folder in models]})


def image_source(path: Path, page_dir: Path, embed: bool, max_side: int) -> str:
    """A data URI of the image (embed) or its path relative to the page's folder."""
    if not embed:
        return Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()
    if max_side <= 0:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    image = read_rgb(path)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def page_data(models: Sequence[tuple[str, Path]], page_path: str | Path, embed: bool = True,
              max_side: int = MAX_SIDE, seed: int = 0, title: str = "NAMI-1K annotation") -> dict:
    """The JSON the page carries: its id, the dimensions and the shuffled items."""
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise NamiError(f"two --images folders share the model name {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                        f"name them with NAME=DIR")
    page_dir = Path(page_path).parent
    items = []
    for name, folder in models:
        for line in read_manifest(folder):
            items.append({"key": f"{name}/{line['file']}", "model": name, "id": line["id"], "source": line["source"],
                          "topic": line["topic"], "prompt": line["prompt"],
                          "src": image_source(folder / line["file"], page_dir, embed, max_side)})
    random.Random(f"nami1k-page:{seed}").shuffle(items)
    page_id = hashlib.sha256("\n".join(i["key"] for i in items).encode()).hexdigest()[:16]
    return {"page": page_id, "title": title, "dimensions": list(DIMENSIONS), "items": items}


def write_page(models: Sequence[tuple[str, Path]], out: str | Path, embed: bool = True, max_side: int = MAX_SIDE,
               seed: int = 0, title: str = "NAMI-1K annotation") -> dict:
    """Write the page to `out` (atomically); returns its data."""
    out = check_page_path(out, models)
    data = page_data(models, out, embed, max_side, seed, title)
    write_text_atomic(out, render_page(data))
    return data
