"""`nami prepare-data`: images + captions -> codec latents at stage resolutions + text embeddings.

Items are processed in work units of `shard_size` source items. A finished unit leaves its
shards and a `unit-*.json` marker; a re-run skips those units without decoding their images.
Text embeddings are computed here once, never per training step.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..codecs.spec import build_codec, codec_record
from ..config import validate_resolutions
from ..errors import NamiError
from ..text.embeddings import TextEmbeddings
from ..text.encoder import NamiTextEncoder
from .images import SkipImage, center_crop_resize, load_image, target_resolution, to_tensor
from .sources import Source, SourceItem
from ..files import write_json_atomic
from .store import FORMAT, VERSION, load_manifest, write_shard

DEFAULT_MAX_TOKENS = {"minilm": 32}


@dataclass
class PrepareRequest:
    out: Path
    stages: tuple[int, ...]
    codec: str = "pixel"
    text_encoder: str = "minilm"
    max_text_tokens: int | None = None
    shard_size: int = 1024
    batch_size: int = 32
    device: str = "cpu"


@dataclass
class PrepareReport:
    counts: dict[int, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    units_done: int = 0
    units_skipped: int = 0
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(self.counts.values())


def _settings(req: PrepareRequest, max_tokens: int, source: Source) -> dict:
    return {
        "stages": list(req.stages),
        "codec": req.codec,
        "text_encoder": req.text_encoder,
        "max_text_tokens": max_tokens,
        "shard_size": req.shard_size,
        "source": source.describe(),
    }


def _check_previous(out: Path, settings: dict) -> None:
    path = out / "prepare.json"
    if not path.is_file():
        return
    import json

    previous = json.loads(path.read_text())
    for key in ("stages", "codec", "text_encoder", "max_text_tokens", "shard_size"):
        if previous.get(key) != settings[key]:
            raise NamiError(
                f"{out} was prepared with {key}={previous.get(key)!r}, not {settings[key]!r}; "
                "use another --out or the same settings to resume"
            )


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
        validate_resolutions(req.stages)
        if req.shard_size < 1 or req.batch_size < 1:
            raise NamiError("--shard-size and --batch-size must be at least 1")
        self.req = req
        self.device = torch.device(req.device)
        self.codec = build_codec(req.codec).to(self.device)
        lowest = req.stages[0]
        if lowest % (self.codec.downsample * self.codec.patch_size):
            raise NamiError(
                f"the lowest stage ({lowest}px) is not a whole number of {self.codec.pixels_per_token}px tokens "
                f"for codec {req.codec}"
            )
        kind = req.text_encoder.split(":")[0]
        self.max_tokens = req.max_text_tokens or DEFAULT_MAX_TOKENS.get(kind, 256)
        self.text = NamiTextEncoder.load(req.text_encoder, self.max_tokens).to(self.device)

    def encode_text(self, captions: list[str]) -> TextEmbeddings:
        parts = _encode_batches(lambda c: self.text.encode(c).to("cpu"), captions, self.req.batch_size)
        return TextEmbeddings.cat(parts)

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        def enc(batch):
            return self.codec.encode(to_tensor(batch).to(self.device, self.codec.dtype)).float().cpu()

        return torch.cat(_encode_batches(enc, images, self.req.batch_size))

    def process_unit(self, unit: int, items: list[SourceItem], shard_dir: Path) -> dict:
        by_res: dict[int, list[tuple[SourceItem, object]]] = {}
        skipped, converted = [], []
        for item in items:
            if not item.caption:
                skipped.append({"source": item.key, "reason": "no caption"})
                continue
            try:
                loaded = load_image(item.load())
            except SkipImage as exc:
                skipped.append({"source": item.key, "reason": str(exc)})
                continue
            w, h = loaded.image.size
            res = target_resolution(w, h, self.req.stages)
            if res is None:
                skipped.append({"source": item.key, "reason": f"too small ({w}x{h} < {self.req.stages[0]})"})
                continue
            if loaded.conversion:
                converted.append({"source": item.key, "conversion": loaded.conversion})
            by_res.setdefault(res, []).append((item, center_crop_resize(loaded.image, res)))
        files, counts = [], {}
        for res, entries in sorted(by_res.items()):
            latents = self.encode_images([im for _, im in entries])
            captions = [it.caption for it, _ in entries]
            text = self.encode_text(captions)
            name = f"unit-{unit:06d}-r{res:04d}.safetensors"
            write_shard(shard_dir / name, latents, text, [it.key for it, _ in entries], captions)
            files.append({"file": f"shards/{name}", "resolution": res, "count": len(entries)})
            counts[str(res)] = len(entries)
        marker = {"unit": unit, "items": len(items), "files": files, "counts": counts,
                  "skipped": skipped, "converted": converted}
        write_json_atomic(shard_dir / f"unit-{unit:06d}.json", marker, sort_keys=True)
        return marker


def prepare(
    source: Source,
    req: PrepareRequest,
    on_progress: Callable[[int, int | None, PrepareReport], None] | None = None,
    preparer: Preparer | None = None,
) -> PrepareReport:
    """Run (or resume) the preparation of `source` into `req.out`; returns counts and timing.

    Pass a `Preparer` built beforehand to load the codec and text encoder (and surface their
    errors) before any progress display starts.
    """
    import json

    out = Path(req.out)
    if out.exists() and not out.is_dir():
        raise NamiError(f"--out {out} exists and is not a folder")
    preparer = preparer or Preparer(req)
    settings = _settings(req, preparer.max_tokens, source)
    out.mkdir(parents=True, exist_ok=True)
    _check_previous(out, settings)
    write_json_atomic(out / "prepare.json", settings, sort_keys=True)
    shard_dir = out / "shards"
    shard_dir.mkdir(exist_ok=True)

    null = preparer.encode_text([""])
    write_shard(out / "null_text.safetensors", torch.zeros(1, 1), null, [""], [""])

    try:
        total = len(source)
    except TypeError:
        total = None
    report = PrepareReport()
    t0 = time.perf_counter()
    seen = 0
    for unit, items in _chunks(source, req.shard_size):
        marker_path = shard_dir / f"unit-{unit:06d}.json"
        if marker_path.is_file():
            marker = json.loads(marker_path.read_text())
            report.units_skipped += 1
        else:
            marker = preparer.process_unit(unit, items, shard_dir)
            report.units_done += 1
        seen += len(items)
        _accumulate(report, marker)
        report.seconds = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(seen, total, report)
    write_manifest(out, req, preparer, source)
    report.seconds = time.perf_counter() - t0
    return report


def _accumulate(report: PrepareReport, marker: dict) -> None:
    for res, n in marker["counts"].items():
        report.counts[int(res)] = report.counts.get(int(res), 0) + n
    report.skipped.update(s["reason"].split(" (")[0] for s in marker["skipped"])
    report.converted.update(c["conversion"] for c in marker["converted"])


def write_manifest(out: Path, req: PrepareRequest, preparer: Preparer, source: Source) -> dict:
    """Collect every finished unit into `manifest.json`."""
    import json

    shards, skipped, converted = [], [], []
    counts: Counter = Counter()
    for marker_path in sorted((out / "shards").glob("unit-*.json")):
        marker = json.loads(marker_path.read_text())
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
        "null_text": "null_text.safetensors",
        "shards": shards,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(" (")[0] for s in skipped)),
        "converted": converted,
    }
    write_json_atomic(out / "manifest.json", manifest, sort_keys=True)
    return manifest


def check_data_stages(folder: Path, stages: Sequence[int]) -> dict:
    """The manifest of `folder`, after checking it was prepared for `stages`."""
    manifest = load_manifest(folder)
    prepared = [int(s) for s in manifest["stages"]]
    if list(stages) != prepared:
        raise NamiError(
            f"--stages {','.join(map(str, stages))} differ from the data's stages "
            f"{','.join(map(str, prepared))} (see {Path(folder) / 'manifest.json'})"
        )
    return manifest
