"""The prepared-data format: safetensors shards of latents + text embeddings, and `manifest.json`.

```
DIR/
  manifest.json            stages, codec, text encoder, counts per resolution, shards, skips, conversions
  prepare.json             the settings the folder was prepared with (checked on re-runs)
  null_text.safetensors    the empty prompt's embeddings (prompt dropout for guidance)
  shards/unit-000000.json  a finished work unit: its files, counts, skips and conversions
  shards/unit-000000-r0256.safetensors
      latents (n, C, h, w) float16   codec latents at resolution 256
      text    (n, T, D)    float16   text sequence embeddings
      mask    (n, T)       bool      text attention mask
      pooled  (n, P)       float16   pooled text embedding
      metadata: keys, captions (JSON lists)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import NamiError
from ..files import write_atomic
from ..text.embeddings import TextEmbeddings

FORMAT = "nami-latents"
VERSION = 1


def write_shard(path: Path, latents: torch.Tensor, text: TextEmbeddings, keys: list[str], captions: list[str]) -> None:
    """Write one shard atomically (temporary name, then rename)."""
    tensors = {
        "latents": latents.to(torch.float16).contiguous(),
        "text": text.sequence.to(torch.float16).contiguous(),
        "mask": text.mask.to(torch.bool).contiguous(),
        "pooled": text.pooled.to(torch.float16).contiguous(),
    }
    metadata = {"keys": json.dumps(keys), "captions": json.dumps(captions)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not Path(folder).is_dir():
        raise NamiError(f"data directory {folder} does not exist")
    if not path.is_file():
        raise NamiError(f"{folder} has no manifest.json; run `nami prepare-data` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NamiError(f"{path} is not valid JSON ({exc.msg})") from None
    if manifest.get("format") != FORMAT:
        raise NamiError(f"{path} is not a nami prepared-data manifest")
    return manifest


@dataclass
class LatentBatch:
    """Items of one resolution: latents (B, C, h, w) and their text embeddings, float32, or as
    stored (float16) from `fetch_raw`."""

    latents: torch.Tensor
    text: TextEmbeddings


class LatentStore:
    """Random access to a prepared folder, grouped by resolution.

    Shards are memory-mapped; `fetch(resolution, indices)` reads just the rows asked for.
    `preload=True` reads everything into memory once (small datasets, fastest steps).
    """

    def __init__(self, folder: str | Path, preload: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.stages = tuple(int(s) for s in self.manifest["stages"])
        self.by_resolution: dict[int, list[tuple[Path, int]]] = {}
        for shard in self.manifest["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise NamiError(f"shard {path} listed in the manifest is missing")
            self.by_resolution.setdefault(int(shard["resolution"]), []).append((path, int(shard["count"])))
        if not self.by_resolution:
            raise NamiError(f"{self.folder} holds no images (every source item was skipped)")
        self.offsets = {
            res: torch.tensor([0] + [n for _, n in shards]).cumsum(0) for res, shards in self.by_resolution.items()
        }
        self._handles: dict[Path, Any] = {}
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        if preload:
            for res in self.by_resolution:
                self._cache[res] = self._load_all(res)
        null = self.folder / self.manifest["null_text"]
        with safe_open(str(null), "pt") as f:
            self.null_text_raw = TextEmbeddings.from_host_mask(
                f.get_tensor("text"), f.get_tensor("mask").bool(), f.get_tensor("pooled")
            )
        raw = self.null_text_raw
        self.null_text = TextEmbeddings(raw.sequence.float(), raw.mask, raw.pooled.float(), raw.lengths)

    def count(self, resolution: int) -> int:
        return int(self.offsets[resolution][-1]) if resolution in self.offsets else 0

    def resolutions(self) -> list[int]:
        return sorted(self.by_resolution)

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), "pt")
        return self._handles[path]

    def _load_all(self, resolution: int) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"latents": [], "text": [], "mask": [], "pooled": []}
        for path, _ in self.by_resolution[resolution]:
            h = self._handle(path)
            for name in parts:
                parts[name].append(h.get_tensor(name))
        return {name: torch.cat(values) for name, values in parts.items()}

    def fetch(self, resolution: int, indices: list[int]) -> LatentBatch:
        """Rows `indices` of the items stored at `resolution`, in the given order, as float32."""
        raw = self.fetch_raw(resolution, indices)
        text = raw.text
        return LatentBatch(raw.latents.float(),
                           TextEmbeddings(text.sequence.float(), text.mask, text.pooled.float(), text.lengths))

    def fetch_raw(self, resolution: int, indices: list[int]) -> LatentBatch:
        """Rows `indices` of the items stored at `resolution`, in the given order, in their stored
        dtypes (float16 latents and text): half the bytes to move to a device."""
        if resolution in self._cache:
            data = self._cache[resolution]
            idx = torch.as_tensor(indices, dtype=torch.long)
            rows = {name: t[idx] for name, t in data.items()}
        else:
            offsets = self.offsets[resolution]
            shard_of = torch.searchsorted(offsets, torch.as_tensor(indices), right=True) - 1
            rows_list: dict[str, list[torch.Tensor]] = {"latents": [], "text": [], "mask": [], "pooled": []}
            for i, s in zip(indices, shard_of.tolist()):
                path, _ = self.by_resolution[resolution][s]
                local = i - int(offsets[s])
                h = self._handle(path)
                for name in rows_list:
                    rows_list[name].append(h.get_slice(name)[local : local + 1])
            rows = {name: torch.cat(v) for name, v in rows_list.items()}
        return LatentBatch(rows["latents"], TextEmbeddings.from_host_mask(rows["text"], rows["mask"].bool(), rows["pooled"]))
