"""`nami prepare-data`: images + captions -> codec latents at stage resolutions + text embeddings.

Items are processed in work units of `shard_size` source items. A finished unit leaves its
shards and a `unit-*.json` marker (`units.py`); a re-run checks each finished unit's shards by
size and header, skips the whole ones without decoding their images and redoes a damaged one.
`prepare.json` (`prepare_state.py`) pins the settings and the source listing while finished
units exist. Text embeddings are computed here once, never per training step.

With `buckets` (`--buckets`), each image goes to its aspect-ratio bucket (`buckets.py`) instead of
a centre square crop: shards hold one (resolution, bucket) each and the manifest lists the buckets.
Without it, everything is written as before (square data, no bucket fields).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..checksums import file_sha256
from ..codecs.spec import build_codec, codec_record
from ..errors import NamiError
from ..files import write_json_atomic, writing
from ..text.embeddings import TextEmbeddings
from ..text.encoder import NamiTextEncoder
from .buckets import Bucket, bucket_table, covered_level, nearest_bucket
from .images import SkipImage, center_crop_resize, cover_crop_resize, load_image, target_resolution, to_tensor
from .prepare_request import PrepareRequest
from .prepare_state import STATE_FILE, check_previous
from .sources import Source, SourceItem
from .manifest import check_data_stages  # noqa: F401  (the stages check `nami train` runs)
from .store import FORMAT, NULL_TEXT, VERSION, shard_nbytes, write_shard
from .units import finished_unit, has_finished_units, marker_path, shard_name

@dataclass
class PrepareReport:
    counts: dict[int, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    units_done: int = 0
    units_skipped: int = 0
    units_redone: int = 0  # of units_done: finished before, but damaged or missing a shard
    seconds: float = 0.0
    buckets: Counter = field(default_factory=Counter)  # images per aspect-ratio bucket (--buckets)

    @property
    def images(self) -> int:
        return sum(self.counts.values())


def _settings(req: PrepareRequest, max_tokens: int, source: Source, buckets: list[Bucket] | None = None) -> dict:
    return {
        "stages": list(req.stages),
        "codec": req.codec,
        "text_encoder": req.text_encoder,
        "max_text_tokens": max_tokens,
        "shard_size": req.shard_size,
        "source": source.describe(),
        "source_fingerprint": source.fingerprint(),
        **({"buckets": [b.name for b in buckets]} if buckets else {}),
    }


def _check_buckets(out: Path, settings: dict, has_units: bool) -> None:
    """Refuse resuming, with --buckets, a folder of square units, or the other way round."""
    import json

    path = out / STATE_FILE
    if not has_units or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("buckets")
    except (OSError, ValueError, AttributeError):
        return  # check_previous has refused an unreadable prepare.json already
    if previous != settings.get("buckets"):
        was = f"with --buckets ({', '.join(previous)})" if previous else "without --buckets"
        raise NamiError(f"{out} was prepared {was}; use another --out or the same settings to resume")


def text_length_limit(text: NamiTextEncoder) -> int | None:
    """The most tokens the sequence encoder takes: its learned positions (RoBERTa-style models
    keep two for padding); None when it has none (T5's relative positions)."""
    cfg = getattr(text.sequence_model, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return None
    return limit - 2 if "roberta" in str(getattr(cfg, "model_type", "")) else limit


def _check_text_length(req: PrepareRequest, text: NamiTextEncoder, max_tokens: int) -> None:
    limit = text_length_limit(text)
    if limit is None or max_tokens <= limit:
        return
    what = (f"--max-text-tokens {max_tokens}" if req.max_text_tokens is not None
            else f"the default text length {max_tokens}")
    raise NamiError(f"{what} exceeds the text encoder's maximum of {limit} tokens ({req.text_encoder}); "
                    f"use --max-text-tokens {limit} or less")


def _chunks(items: Iterable[SourceItem], size: int) -> Iterable[tuple[int, list[SourceItem]]]:
    unit, chunk = 0, []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield unit, chunk
            unit, chunk = unit + 1, []
    if chunk:
        yield unit, chunk


def _encode_batches(fn: Callable, values: list, batch_size: int) -> list:
    return [fn(values[i : i + batch_size]) for i in range(0, len(values), batch_size)]


class Preparer:
    """Holds the codec and text encoder and turns work units into shards."""

    def __init__(self, req: PrepareRequest) -> None:
        from ..runtime import resolve_device

        self.req = req
        self.device = resolve_device(req.device)
        self.codec = build_codec(req.codec).to(self.device)
        lowest = req.stages[0]
        if lowest % (self.codec.downsample * self.codec.patch_size):
            raise NamiError(
                f"the lowest stage ({lowest}px) is not a whole number of {self.codec.pixels_per_token}px tokens "
                f"for codec {req.codec}"
            )
        self.max_tokens = req.text_tokens()
        self.text = NamiTextEncoder.load(req.text_encoder, self.max_tokens).to(self.device)
        _check_text_length(req, self.text, self.max_tokens)
        self.buckets = bucket_table(req.stages, self.codec.pixels_per_token) if req.buckets else None

    def place(self, image) -> tuple[int, str | None, object]:
        """(resolution, bucket name or None, image cropped and resized for it) of a loaded RGB image;
        `SkipImage("too small (...)")` when it fills no stage."""
        w, h = image.size
        if self.buckets is None:
            res = target_resolution(w, h, self.req.stages)
            if res is None:
                raise SkipImage(f"too small ({w}x{h} < {self.req.stages[0]})")
            return res, None, center_crop_resize(image, res)
        bucket = nearest_bucket(w, h, self.buckets)
        level = covered_level(w, h, bucket)
        if level is None:
            low_h, low_w = bucket.size(0)
            raise SkipImage(f"too small ({w}x{h} < {low_w}x{low_h})")
        height, width = bucket.size(level)
        return self.req.stages[level], bucket.name, cover_crop_resize(image, width, height)

    def _order(self, key: tuple[int, str | None]) -> tuple[int, int]:
        """Shards of a unit by resolution, then bucket (tall to wide)."""
        res, bucket = key
        names = [b.name for b in self.buckets or []]
        return res, names.index(bucket) if bucket is not None else -1

    def encode_text(self, captions: list[str]) -> TextEmbeddings:
        parts = _encode_batches(lambda c: self.text.encode(c).to("cpu"), captions, self.req.batch_size)
        return TextEmbeddings.cat(parts)

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        def enc(batch):
            return self.codec.encode(to_tensor(batch).to(self.device, self.codec.dtype)).float().cpu()

        return torch.cat(_encode_batches(enc, images, self.req.batch_size))

    def process_unit(self, unit: int, items: list[SourceItem], shard_dir: Path) -> dict:
        """Encode the items of one unit into its shards, then write its marker; returns the marker."""
        by_key: dict[tuple[int, str | None], list[tuple[SourceItem, object]]] = {}
        skipped, converted = [], []
        for item in items:
            if not item.caption:
                skipped.append({"source": item.key, "reason": "no caption"})
                continue
            try:
                loaded = load_image(item.load())
                res, bucket, image = self.place(loaded.image)
            except SkipImage as exc:
                skipped.append({"source": item.key, "reason": str(exc)})
                continue
            if loaded.conversion:
                converted.append({"source": item.key, "conversion": loaded.conversion})
            by_key.setdefault((res, bucket), []).append((item, image))
        files, counts = [], {}
        for (res, bucket), entries in sorted(by_key.items(), key=lambda kv: self._order(kv[0])):
            latents = self.encode_images([im for _, im in entries])
            captions = [it.caption for it, _ in entries]
            text = self.encode_text(captions)
            name = shard_name(unit, res, bucket)
            size = _write_shard(shard_dir / name, latents, text, [it.key for it, _ in entries], captions)
            record = {"file": f"shards/{name}", "resolution": res, "count": len(entries), "bytes": size,
                      "sha256": file_sha256(shard_dir / name),
                      # the longest real caption, so `nami train`'s memory check need not read the masks
                      "text_tokens": int(text.mask.sum(1).max())}
            files.append(record if bucket is None else {**record, "bucket": bucket})
            counts[str(res)] = counts.get(str(res), 0) + len(entries)
        marker = {"unit": unit, "items": len(items), "files": files, "counts": counts,
                  "skipped": skipped, "converted": converted}
        write_json_atomic(marker_path(shard_dir, unit), marker, sort_keys=True)
        return marker


def _write_shard(path: Path, latents: torch.Tensor, text: TextEmbeddings, keys: list[str], captions: list[str]) -> int:
    """`write_shard`, with a full disk reported as one line naming `path` and the bytes it needs."""
    with writing(path, shard_nbytes(latents, text)):
        return write_shard(path, latents, text, keys, captions)


def _holds(path: Path, text: TextEmbeddings) -> bool:
    """Whether the shard at `path` holds exactly `text` as `write_shard` stores it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            stored = {name: f.get_tensor(name) for name in ("text", "mask", "pooled")}
    except Exception:  # missing, damaged, or another layout: written anew
        return False
    wanted = {"text": text.sequence.to(torch.float16), "mask": text.mask.to(torch.bool),
              "pooled": text.pooled.to(torch.float16)}
    return all(stored[k].shape == v.shape and torch.equal(stored[k], v) for k, v in wanted.items())


def prepare(
    source: Source,
    req: PrepareRequest,
    on_progress: Callable[[int, int | None, PrepareReport], None] | None = None,
    preparer: Preparer | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Run (or resume) the preparation of `source` into `req.out`; returns counts and timing.

    Pass a `Preparer` built beforehand to load the codec and text encoder (and surface their
    errors) before any progress display starts. `on_notice` is told, in one line, of each
    finished unit found damaged and redone.
    """
    out = req.check_out(source)
    preparer = preparer or Preparer(req)
    settings = _settings(req, preparer.max_tokens, source, preparer.buckets)
    shard_dir = out / "shards"
    check_previous(out, settings, has_finished_units(shard_dir))
    _check_buckets(out, settings, has_finished_units(shard_dir))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / STATE_FILE, settings, sort_keys=True)
    shard_dir.mkdir(exist_ok=True)

    null = preparer.encode_text([""])
    if not _holds(out / NULL_TEXT, null):  # kept when equal: safetensors orders its header anew each write
        write_shard(out / NULL_TEXT, torch.zeros(1, 1), null, [""], [""])

    try:
        total = len(source)
    except TypeError:
        total = None
    report = PrepareReport()
    t0 = time.perf_counter()
    seen = 0
    markers = []
    if on_progress is not None:
        on_progress(0, total, report)
    for unit, items in _chunks(source, req.shard_size):
        marker, problem = finished_unit(out, unit, len(items))
        if marker is not None:
            report.units_skipped += 1
        else:
            if problem is not None:
                report.units_redone += 1
                if on_notice is not None:
                    on_notice(f"redoing unit {unit}: {problem}")
            marker = preparer.process_unit(unit, items, shard_dir)
            report.units_done += 1
        markers.append(marker)
        seen += len(items)
        _accumulate(report, marker)
        report.seconds = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(seen, total, report)
    if report.images == 0:  # the units hold no shards: forget them, so a fixed source is read again
        for marker in markers:
            marker_path(shard_dir, marker["unit"]).unlink(missing_ok=True)
        reasons = ", ".join(f"{k} x{v}" for k, v in report.skipped.items()) or "the source gave no items"
        raise NamiError(f"none of the {seen} source items could be used ({reasons}); {out / 'manifest.json'} "
                        "was not written")
    write_manifest(out, req, preparer, source, markers)
    report.seconds = time.perf_counter() - t0
    return report


def _accumulate(report: PrepareReport, marker: dict) -> None:
    for res, n in marker["counts"].items():
        report.counts[int(res)] = report.counts.get(int(res), 0) + n
    report.skipped.update(s["reason"].split(" (")[0] for s in marker["skipped"])
    report.converted.update(c["conversion"] for c in marker["converted"])
    for file in marker["files"]:
        if "bucket" in file:
            report.buckets[file["bucket"]] += file["count"]


def write_manifest(out: Path, req: PrepareRequest, preparer: Preparer, source: Source,
                   markers: list[dict] | None = None) -> dict:
    """Collect the units' `markers` (default: every finished unit's) into `manifest.json`."""
    import json

    if markers is None:
        markers = [json.loads(path.read_text()) for path in sorted((out / "shards").glob("unit-*.json"))]
    shards, skipped, converted = [], [], []
    counts: Counter = Counter()
    for marker in markers:
        shards.extend(marker["files"])
        skipped.extend(marker["skipped"])
        converted.extend(marker["converted"])
        counts.update({k: v for k, v in marker["counts"].items()})
    text_cfg = preparer.text.config
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source.describe(),
        "stages": list(req.stages),
        "codec": codec_record(req.codec, preparer.codec),
        "text_encoder": {
            **preparer.text.settings(),
            "sequence_dim": int(text_cfg.sequence_dim),
            "pooled_dim": int(text_cfg.pooled_dim),
        },
        "counts": {str(r): counts.get(str(r), 0) for r in req.stages},
        "total": sum(counts.values()),
        "null_text": NULL_TEXT,
        "null_text_bytes": (out / NULL_TEXT).stat().st_size,
        "null_text_sha256": file_sha256(out / NULL_TEXT),
        "shards": shards,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(" (")[0] for s in skipped)),
        "converted": converted,
    }
    if preparer.buckets is not None:
        manifest["buckets"] = _bucket_records(preparer.buckets, req.stages, shards)
    write_json_atomic(out / "manifest.json", manifest, sort_keys=True)
    return manifest


def _bucket_records(buckets: list[Bucket], stages: Sequence[int], shards: list[dict]) -> list[dict]:
    """The manifest's bucket list (every bucket of the table, tall to wide) with the images each
    holds at each stage resolution."""
    counts = {b.name: {int(r): 0 for r in stages} for b in buckets}
    for shard in shards:
        counts[shard["bucket"]][int(shard["resolution"])] += int(shard["count"])
    return [b.record(counts[b.name]) for b in buckets]
