"""File names derived from what users supply: `nami sample` images, and ids from benchmark files.

Every name made from outside text goes through `slug` or `safe_name`, so none holds a path
separator, `..` or a control character. `nami sample` names are readable, and never the same for
two different pictures:

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
NAME_LIMIT = 64  # characters of a name derived from an outside id, before its suffix
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def slug(text: str, limit: int = SLUG_LIMIT) -> str:
    """Lower-case ASCII letters and digits of `text` joined by "-" (at most `limit` characters), or "image"."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-")) or "image"


def safe_name(text: str, limit: int = NAME_LIMIT) -> str:
    """A file name for an id or prompt that comes from outside (a NAMI-1K id, a DPG-Bench item id):
    `text` itself when it is already a plain name (ASCII letters, digits, `.`, `_`, `-`; not
    starting with a dot or a dash, no `..`, at most `limit` characters), else its slug plus the first
    8 hex digits of its SHA-256 (`../../escape` -> `escape-5e1b...`), so the name never holds a
    separator, a control character or `..`, never names a hidden or temporary file, and two
    different ids never share a name."""
    text = str(text)
    if _SAFE_NAME.fullmatch(text) and ".." not in text and len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:KEY_DIGITS]
    return f"{slug(text, limit - KEY_DIGITS - 1)}-{digest}"


def settings_key(metadata: dict) -> str:
    """Short hash of an image's metadata without its seed: equal only for equal prompts and settings."""
    settings = {k: v for k, v in metadata.items() if k != "seed"}
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:KEY_DIGITS]


def sample_name(metadata: dict) -> str:
    """`<slug>-<key>-s<seed>.png` for an image whose metadata holds its prompt and seed."""
    return f"{slug(str(metadata['prompt']))}-{settings_key(metadata)}-s{metadata['seed']}.png"


def grid_name(metadata: dict) -> str:
    """`<slug>-<key>-grid.png`: the grid of a call's images (`nami sample --grid`), beside them."""
    return f"{slug(str(metadata['prompt']))}-{settings_key(metadata)}-grid.png"


def sidecar(path: Path) -> Path:
    """The `.json` written beside a PNG."""
    return path.with_suffix(".json")


def is_taken(path: Path) -> bool:
    """Whether writing the PNG `path` (and its sidecar) would replace anything."""
    return any(p.exists() or p.is_symlink() for p in (path, sidecar(path)))


def numbered(path: Path, copy: int) -> Path:
    """`path` itself for copy 0, else `<stem>-<copy>.png`."""
    return path if copy == 0 else path.with_name(f"{path.stem}-{copy}{path.suffix}")
