"""The prepared-data format: safetensors shards of latents + text embeddings, and `manifest.json`.

```
DIR/
  manifest.json            stages, codec, text encoder, counts per resolution, shards, skips, conversions
  prepare.json             the settings the folder was prepared with (checked on re-runs)
  null_text.safetensors    the empty prompt's embeddings (prompt dropout for guidance)
  shards/unit-000000.json  a finished work unit: its files (with rows and bytes), counts, skips and conversions
  shards/unit-000000-r0256.safetensors
      latents (n, C, h, w) float16   codec latents at resolution 256
      text    (n, T, D)    float16   text sequence embeddings
      mask    (n, T)       bool      text attention mask
      pooled  (n, P)       float16   pooled text embedding
      metadata: keys, captions (JSON lists)
```

Data prepared with `--buckets` (`buckets.py`) also has `manifest["buckets"]`: records of `name`
(`WxH` at the last stage), `sizes` ([height, width] pixels per stage), `counts` per resolution and
`total`; each shard record names its `bucket`, and its file `unit-000000-r0256-WxH.safetensors`
holds latents (n, C, h, w) at the bucket's size for stage 256. Folders without them are square.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..checksums import VerifiedFiles, file_problem
from ..errors import NamiError
from ..files import write_atomic
from ..text.embeddings import TextEmbeddings
from .buckets import Bucket
from .manifest import FORMAT, VERSION, check_counts, load_manifest  # noqa: F401  (the format's reader)
from .shard_check import damaged_shard, read_failure, shard_problem

NULL_TEXT = "null_text.safetensors"


def write_shard(path: Path, latents: torch.Tensor, text: TextEmbeddings, keys: list[str], captions: list[str]) -> int:
    """Write one shard atomically (temporary name, then rename); returns its size in bytes.

    A full disk raises `DiskFullError` naming `path` and the bytes the shard needs; the
    temporary file is removed and earlier files are untouched."""
    tensors = {
        "latents": latents.to(torch.float16).contiguous(),
        "text": text.sequence.to(torch.float16).contiguous(),
        "mask": text.mask.to(torch.bool).contiguous(),
        "pooled": text.pooled.to(torch.float16).contiguous(),
    }
    metadata = {"keys": json.dumps(keys), "captions": json.dumps(captions)}
    needed = shard_nbytes(latents, text) + sum(map(len, metadata.values()))

    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), needed)
    return path.stat().st_size


def shard_nbytes(latents: torch.Tensor, text: TextEmbeddings) -> int:
    """The bytes of a shard's tensors as stored (float16 latents and text, bool mask)."""
    return 2 * (latents.numel() + text.sequence.numel() + text.pooled.numel()) + text.mask.numel()


@dataclass
class LatentBatch:
    """Items of one resolution (and bucket): latents (B, C, h, w) and their text embeddings,
    float32, or as stored (float16) from `fetch_raw`."""

    latents: torch.Tensor
    text: TextEmbeddings


def manifest_buckets(manifest: dict[str, Any]) -> list[Bucket] | None:
    """The aspect-ratio buckets of a prepared folder, tall to wide; None for square data."""
    records = manifest.get("buckets")
    if records is None:
        return None
    stages = [int(s) for s in manifest["stages"]]
    return [Bucket.from_record(r, stages) for r in records]


Key = tuple[int, Optional[str]]  # (resolution, bucket name; None for square data)


class LatentStore:
    """Random access to a prepared folder, grouped by resolution (and, for data prepared with
    `--buckets`, by aspect-ratio bucket: `buckets`, None for square data).

    Shards are memory-mapped; `fetch(resolution, indices, bucket)` reads just the rows asked for.
    `preload=True` reads everything into memory once (small datasets, fastest steps).
    """

    def __init__(self, folder: str | Path, preload: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.stages = tuple(int(s) for s in self.manifest["stages"])
        self.buckets = manifest_buckets(self.manifest)
        names = {b.name for b in self.buckets or []}
        self.shards: dict[Key, list[tuple[Path, int]]] = {}
        self._verified = VerifiedFiles.load()
        null = self.folder / self.manifest["null_text"]
        if self.manifest.get("null_text_sha256") is not None:
            self._check_shard(null, {"bytes": self.manifest.get("null_text_bytes"),
                                     "sha256": self.manifest["null_text_sha256"]})
        for shard in self.manifest["shards"]:
            path = self.folder / shard["file"]
            self._check_shard(path, shard)
            bucket = shard.get("bucket")
            if (bucket is None) != (self.buckets is None) or (bucket is not None and bucket not in names):
                raise NamiError(f"shard {path} names bucket {bucket!r}, which {self.folder / 'manifest.json'} "
                                "does not list")
            self.shards.setdefault((int(shard["resolution"]), bucket), []).append((path, int(shard["count"])))
        self._verified.save()
        if not self.shards:
            raise NamiError(f"{self.folder} holds no images (every source item was skipped)")
        self.offsets = {key: torch.tensor([0] + [n for _, n in shards]).cumsum(0) for key, shards in self.shards.items()}
        self._handles: dict[Path, Any] = {}
        self._cache: dict[Key, dict[str, torch.Tensor]] = {}
        if preload:
            for key in self.shards:
                self._cache[key] = self._load_all(key)
        try:
            with safe_open(str(null), "pt") as f:
                self.null_text_raw = TextEmbeddings.from_host_mask(
                    f.get_tensor("text"), f.get_tensor("mask").bool(), f.get_tensor("pooled")
                )
        except (SafetensorError, OSError) as exc:
            raise damaged_shard(null, read_failure(exc)) from None
        raw = self.null_text_raw
        self.null_text = TextEmbeddings(raw.sequence.float(), raw.mask, raw.pooled.float(), raw.lengths)

    def count(self, resolution: int, bucket: str | None = None) -> int:
        """Items stored at `resolution` in `bucket`; with no bucket, in all of them."""
        keys = [(resolution, bucket)] if bucket is not None else [k for k in self.offsets if k[0] == resolution]
        return sum(int(self.offsets[k][-1]) for k in keys if k in self.offsets)

    def resolutions(self) -> list[int]:
        return sorted({res for res, _ in self.shards})

    def _check_shard(self, path: Path, shard: dict) -> None:
        """Refuse a shard that is missing or damaged, cheaply: its size against the bytes recorded
        when it was written, or, for data prepared before sizes were recorded, its header."""
        if not path.is_file():
            raise NamiError(f"shard {path} listed in the manifest is missing; re-run `nami prepare-data` "
                            f"with the same source and --out {self.folder} to redo it")
        if shard.get("bytes") is not None:
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise damaged_shard(path, f"{size:,} bytes, {shard['bytes']:,} when written")
            # then its sha256, when recorded: hashed once, remembered while size, mtime and inode stay
            if shard.get("sha256") is not None and file_problem(path, shard, self._verified) is not None:
                raise damaged_shard(path, "its bytes changed since it was written: the sha256 differs")
            return
        problem = shard_problem(path, int(shard["count"]))
        if problem is not None:
            raise damaged_shard(path, problem)

    def _handle(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), "pt")
            except (SafetensorError, OSError) as exc:
                raise damaged_shard(path, read_failure(exc)) from None
        return self._handles[path]

    def _read(self, path: Path, name: str, rows: slice | None = None) -> torch.Tensor:
        """Tensor `name` of the shard at `path`, or just `rows` of it; a damaged shard is one error line."""
        h = self._handle(path)
        try:
            return h.get_tensor(name) if rows is None else h.get_slice(name)[rows]
        except SafetensorError as exc:
            raise damaged_shard(path, read_failure(exc)) from None

    def _load_all(self, key: Key) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"latents": [], "text": [], "mask": [], "pooled": []}
        for path, _ in self.shards[key]:
            for name in parts:
                parts[name].append(self._read(path, name))
        return {name: torch.cat(values) for name, values in parts.items()}

    def _key(self, resolution: int, bucket: str | None) -> Key:
        if bucket is None and self.buckets is not None:
            raise NamiError(f"{self.folder} holds aspect-ratio buckets; name the bucket to read")
        key = (resolution, bucket)
        if key not in self.shards:
            where = f" in bucket {bucket}" if bucket is not None else ""
            raise NamiError(f"{self.folder} holds no images at {resolution}px{where}")
        return key

    def fetch(self, resolution: int, indices: list[int], bucket: str | None = None) -> LatentBatch:
        """Rows `indices` of the items stored at `resolution` (in `bucket`), in the given order, as float32."""
        raw = self.fetch_raw(resolution, indices, bucket)
        text = raw.text
        return LatentBatch(raw.latents.float(),
                           TextEmbeddings(text.sequence.float(), text.mask, text.pooled.float(), text.lengths))

    def fetch_raw(self, resolution: int, indices: list[int], bucket: str | None = None) -> LatentBatch:
        """Rows `indices` of the items stored at `resolution` (in `bucket`), in the given order, in
        their stored dtypes (float16 latents and text): half the bytes to move to a device."""
        key = self._key(resolution, bucket)
        if key in self._cache:
            data = self._cache[key]
            idx = torch.as_tensor(indices, dtype=torch.long)
            rows = {name: t[idx] for name, t in data.items()}
        else:
            offsets = self.offsets[key]
            shard_of = torch.searchsorted(offsets, torch.as_tensor(indices), right=True) - 1
            rows_list: dict[str, list[torch.Tensor]] = {"latents": [], "text": [], "mask": [], "pooled": []}
            for i, s in zip(indices, shard_of.tolist()):
                path, _ = self.shards[key][s]
                local = i - int(offsets[s])
                for name in rows_list:
                    rows_list[name].append(self._read(path, name, slice(local, local + 1)))
            rows = {name: torch.cat(v) for name, v in rows_list.items()}
        return LatentBatch(rows["latents"], TextEmbeddings.from_host_mask(rows["text"], rows["mask"].bool(), rows["pooled"]))


def data_captions(folder: str | Path) -> list[str]:
    """Every caption of a prepared-data folder (from its shards' metadata, no tensors read)."""
    from safetensors import safe_open

    folder = Path(folder)
    captions: list[str] = []
    for shard in load_manifest(folder)["shards"]:
        with safe_open(str(folder / shard["file"]), framework="pt") as f:
            captions += json.loads((f.metadata() or {}).get("captions", "[]"))
    return captions
