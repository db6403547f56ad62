"""File names of `nami sample` images in an output folder: readable, and never the same for two
different pictures.

An image is named `<slug>-<key>-s<seed>.png`: `slug` is the prompt's Latin letters and digits
("a-red-circle"; "image" when it has none, as "猫" has), `key` the first 8 hex digits of the
SHA-256 of everything else its metadata records that changes the picture (the exact prompt,
negative prompt, prompt style, model, dtype, steps, cfg, mode, resolution, timestep rounding), so
"A cat" and "a cat!", or 猫 and 犬, or the same prompt at another cfg, get different names. The
key is computed from the metadata the PNG and its sidecar `.json` carry (`settings_key`), so a
file's name can be checked against its contents. A name already taken (by the PNG or its sidecar)
is numbered: `<name>-1.png`, `<name>-2.png`, ...
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

KEY_DIGITS = 8
SLUG_LIMIT = 48


def slug(text: str, limit: int = SLUG_LIMIT) -> str:
    """Lower-case ASCII letters and digits of `text` joined by "-" (at most `limit` characters), or "image"."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-")) or "image"


def settings_key(metadata: dict) -> str:
    """Short hash of an image's metadata without its seed: equal only for equal prompts and settings."""
    settings = {k: v for k, v in metadata.items() if k != "seed"}
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_DIGITS]


def sample_name(metadata: dict) -> str:
    """`<slug>-<key>-s<seed>.png` for an image whose metadata holds its prompt and seed."""
    return f"{slug(str(metadata['prompt']))}-{settings_key(metadata)}-s{metadata['seed']}.png"


def sidecar(path: Path) -> Path:
    """The `.json` written beside a PNG."""
    return path.with_suffix(".json")


def is_taken(path: Path) -> bool:
    """Whether writing the PNG `path` (and its sidecar) would replace anything."""
    return any(p.exists() or p.is_symlink() for p in (path, sidecar(path)))


def numbered(path: Path, copy: int) -> Path:
    """`path` itself for copy 0, else `<stem>-<copy>.png`."""
    return path if copy == 0 else path.with_name(f"{path.stem}-{copy}{path.suffix}")
