"""A prepared-data folder of random latents and text, for timing `nami train`'s own step on it.

Latents are stored at the final resolution only (every stage window can draw from them and
brings them down on the device, as with real data stored at its largest size); each caption has
`prompt_tokens` real tokens padded to the text slot, as a tokenizer pads them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.store import FORMAT, VERSION, write_shard
from ..files import write_json_atomic
from ..text.embeddings import TextEmbeddings


def random_text(items: int, slot: int, real: int, text_dim: int, pooled_dim: int, g: torch.Generator) -> TextEmbeddings:
    mask = (torch.arange(slot) < real).expand(items, slot).clone()
    return TextEmbeddings(torch.randn(items, slot, text_dim, generator=g), mask,
                          torch.randn(items, pooled_dim, generator=g))


def write_synthetic_data(folder: Path, bench, stages: tuple[int, ...], items: int, text_tokens: int,
                         prompt_tokens: int, seed: int = 0) -> Path:
    """Write `items` random samples for `bench` (a `BenchModel`) at `stages[-1]` into `folder`."""
    folder = Path(folder)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    model, g = bench.model, torch.Generator().manual_seed(seed)
    side = stages[-1] // bench.downsample
    latents = torch.randn(items, bench.channels, side, side, generator=g)
    text = random_text(items, text_tokens, prompt_tokens, model.text_dim, model.pooled_dim, g)
    keys = [f"synthetic-{i}" for i in range(items)]
    write_shard(folder / "shards" / "synthetic.safetensors", latents, text, keys, keys)
    write_shard(folder / "null_text.safetensors", torch.zeros(1, 1),
                random_text(1, text_tokens, 1, model.text_dim, model.pooled_dim, g), [""], [""])
    codec = {"spec": "synthetic", "class": "PixelCodec" if bench.downsample == 1 else "FluxVAECodec",
             "channels": bench.channels, "downsample": bench.downsample, "patch_size": bench.patch}
    manifest = {
        "format": FORMAT, "version": VERSION, "source": {"kind": "synthetic", "items": items},
        "stages": list(stages), "codec": codec,
        "text_encoder": {"spec": "synthetic", "max_tokens": text_tokens, "sequence_dim": model.text_dim,
                         "pooled_dim": model.pooled_dim},
        "counts": {str(r): items if r == stages[-1] else 0 for r in stages}, "total": items,
        "null_text": "null_text.safetensors",
        "shards": [{"file": "shards/synthetic.safetensors", "resolution": stages[-1], "count": items}],
        "skipped": [], "skipped_by_reason": {}, "converted": [],
    }
    write_json_atomic(folder / "manifest.json", manifest, sort_keys=True)
    return folder
