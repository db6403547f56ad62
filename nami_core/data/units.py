"""The work units of `nami prepare-data`: their file names, their markers, and whether a finished
unit is still whole.

A unit is `shard_size` consecutive source items. Its shards are written first and its marker
`shards/unit-NNNNNN.json` last: the marker is what makes the unit finished. The marker lists the
unit's shard files with their rows (`count`) and `bytes`, so a re-run checks them by their size
and header without reading any tensor, and redoes a unit whose shard went missing or damaged.
"""

from __future__ import annotations

import json
from pathlib import Path

from .shard_check import shard_problem, shard_state


def marker_path(shard_dir: Path, unit: int) -> Path:
    return shard_dir / f"unit-{unit:06d}.json"


def shard_name(unit: int, resolution: int, bucket: str | None = None) -> str:
    """`unit-000000-r0256.safetensors`, or with an aspect-ratio bucket `unit-000000-r0256-384x192.safetensors`."""
    tail = f"-{bucket}" if bucket is not None else ""
    return f"unit-{unit:06d}-r{resolution:04d}{tail}.safetensors"


def has_finished_units(shard_dir: Path) -> bool:
    return shard_dir.is_dir() and any(shard_dir.glob("unit-*.json"))


def finished_unit(out: Path, unit: int, items: int) -> tuple[dict | None, str | None]:
    """The marker of unit `unit` of the folder `out` if it is finished and whole: `(marker, None)`.
    `(None, None)` when it was never finished, `(None, WHY)` when it was but is damaged now or
    held other than its `items` source items."""
    path = marker_path(out / "shards", unit)
    if not path.is_file():
        return None, None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        files = [(str(f["file"]), f.get("count"), f.get("bytes")) for f in marker["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"its record {path.name} is unreadable"
    if marker.get("items") != items:
        return None, f"it held {marker.get('items')} source items, the source now gives {items}"
    for file, rows, size in files:
        problem = shard_problem(out / file, rows, size)
        if problem is not None:
            return None, shard_state(file, problem)
    return marker, None
