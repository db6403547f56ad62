"""Copy a trained shapes run into the package as the bundled default model.

    python examples/nami-shapes/bundle.py runs/nami-shapes/final nami_core/assets/nami-shapes [--cfg 15,3,3]

The EMA weights become the model's only weights, stored as float16 safetensors (the
package keeps them under 25 MB); every config is copied unchanged
but for the transformer's `_name_or_path` and, with `--cfg`, the default guidance
(one scale, or one per stage). The run's `vocabulary.json` comes along; a run without one gets
the shapes world's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nami_core.config import guidance_record, split_guidance
from nami_core.data.shapes import shapes_vocabulary
from nami_core.errors import ConfigError
from nami_core.vocabulary import VOCABULARY_FILE

WEIGHTS = "diffusion_pytorch_model.safetensors"
EMA_WEIGHTS = "diffusion_pytorch_model.ema.safetensors"


def bundle(final: Path, target: Path, cfg: str | None = None) -> None:
    if not (final / "model_index.json").is_file():
        sys.exit(f"error: {final} is not a model directory")
    scheduler = json.loads((final / "scheduler" / "scheduler_config.json").read_text())
    if cfg is not None:
        scheduler["default_cfg"] = guidance_record(split_guidance(cfg, len(scheduler["resolutions"])))
    source = final / "transformer" / (EMA_WEIGHTS if (final / "transformer" / EMA_WEIGHTS).is_file() else WEIGHTS)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("scheduler", "codec", "text_encoder"):
        shutil.copytree(final / part, tmp / part)
    if cfg is not None:
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n")
    (tmp / "transformer").mkdir(parents=True)
    config = json.loads((final / "transformer" / "config.json").read_text())
    config.pop("_name_or_path", None)  # where the run's --init came from, not where this copy lives
    (tmp / "transformer" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.to(torch.float16).contiguous() for k, v in load_file(source).items()}
    save_file(state, tmp / "transformer" / WEIGHTS, metadata={"format": "pt", "source": source.name})
    shutil.copy(final / "model_index.json", tmp / "model_index.json")
    if (final / VOCABULARY_FILE).is_file():
        shutil.copy(final / VOCABULARY_FILE, tmp / VOCABULARY_FILE)
    else:
        shapes_vocabulary().save(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(json.dumps({"bundled": str(target), "weights_from": source.name, "bytes": size}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("final", type=Path, help="a run's model directory, e.g. runs/nami-shapes/final")
    parser.add_argument("target", type=Path, help="where the bundled copy goes")
    parser.add_argument("--cfg", default=None, help="default guidance to save: one scale or one per stage")
    args = parser.parse_args()
    try:
        bundle(args.final, args.target, args.cfg)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
