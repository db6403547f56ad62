"""`manifest.json` of a prepared-data folder (the format `store.py` describes), read and checked
without torch, so `nami train` can check its data before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import NamiError
from ..user_files import read_json

FORMAT = "nami-latents"
VERSION = 1


def load_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared folder, checked: the format, and counts that agree with each other
    (`check_counts`); one error line naming the file otherwise."""
    path = Path(folder) / "manifest.json"
    if not Path(folder).is_dir():
        raise NamiError(f"data directory {folder} does not exist" if not Path(folder).exists()
                        else f"data directory {folder} is a file, not a folder")
    if not path.is_file():
        raise NamiError(f"{folder} has no manifest.json; run `nami prepare-data` first")
    manifest = read_json(path, "data manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NamiError(f"{path} is not a nami prepared-data manifest")
    check_counts(manifest, path)
    return manifest


def check_counts(manifest: dict[str, Any], path: Path) -> None:
    """The manifest's shard records are well formed, and its `counts` per resolution and its `total`
    are what its shards hold (a hand-edited or mixed-up manifest is refused, not trained on)."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and _count(s.get("count"))
            and _count(s.get("resolution")) for s in shards):
        raise NamiError(f"{path}: shards must be a list of records with file, resolution and count (damaged?)")
    held: dict[str, int] = {}
    for shard in shards:
        held[str(shard["resolution"])] = held.get(str(shard["resolution"]), 0) + shard["count"]
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        for res, n in counts.items():
            if n != held.get(str(res), 0):
                raise NamiError(f"{path} says {n!r} images at {res}px, but its shards hold {held.get(str(res), 0)}; "
                                "the manifest contradicts itself (edited by hand?)")
    total = manifest.get("total")
    if total is not None and total != sum(held.values()):
        raise NamiError(f"{path} says total {total!r}, but its shards hold {sum(held.values())} images; "
                        "the manifest contradicts itself (edited by hand?)")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_data_stages(folder: Path, stages: Sequence[int]) -> dict:
    """The manifest of `folder`, after checking it was prepared for `stages`."""
    manifest = load_manifest(folder)
    prepared = manifest.get("stages")
    if not isinstance(prepared, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in prepared):
        raise NamiError(f"{Path(folder) / 'manifest.json'} lists no stage resolutions (damaged?)")
    if list(stages) != prepared:
        raise NamiError(
            f"--stages {','.join(map(str, stages))} differ from the data's stages "
            f"{','.join(map(str, prepared))} (see {Path(folder) / 'manifest.json'})"
        )
    return manifest
