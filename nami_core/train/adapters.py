"""LoRA training on a frozen `--model`: which weights train, in what dtype, and what a run
writes (an adapter folder that `nami sample --lora` and `NamiPipeline.load_lora_weights` read).

```
RUN/final/pytorch_lora_weights.safetensors   the adapter (diffusers' layout, peft config in metadata)
RUN/final/adapter_config.json                peft's config
RUN/final/nami_lora.json                     the base model, its weights (ema/raw), rank, steps
RUN/final/ema/                               the EMA of the adapter, same layout (when --ema-decay > 0)
```
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checksums import new_artefact
from ..data.store import data_captions
from ..files import write_json_atomic
from ..model.lora import LORA_INFO, add_lora, lora_config, save_lora
from ..vocabulary import Vocabulary

LORA_KEY = ".lora_"  # in the names of an adapter's tensors (`<module>.lora_A.default.weight`)
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def base_variant(init: Path) -> str | None:
    """The weights an adapter trains on: those `nami sample` uses by default (EMA when present)."""
    from ..modeldir import has_ema

    return "ema" if has_ema(Path(init)) else None


def attach_lora(transformer, settings) -> list[torch.nn.Parameter]:
    """Freeze `transformer`, add the adapter, and store the frozen weights in the run's half dtype
    (bf16/fp16 runs) so they take half the memory; returns the adapter's parameters (float32).
    The adapter's random start (lora_A) comes from the run's --seed, so a run is reproducible."""
    torch.manual_seed(settings.seed)
    params = add_lora(transformer, lora_config(settings.lora, settings.lora_alpha, settings.lora_targets))
    half = HALF.get(settings.dtype)
    if half is not None:
        with torch.no_grad():
            for p in transformer.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(half)
    return params


def lora_info(init: Path, rank: int, alpha: float | None, targets: str, steps: int, dtype: str) -> dict:
    """`nami_lora.json`: the base model (absolute path) and its weights, the adapter's shape, the step."""
    return {"base_model": str(Path(init).resolve()), "base_weights": base_variant(init) or "raw", "rank": rank,
            "alpha": alpha or rank, "targets": targets, "steps": steps, "dtype": dtype}


def keep_adapter_weights(models, weights: list[dict], output_dir) -> None:
    """accelerate's save-state hook for LoRA runs: a checkpoint keeps the adapter's tensors only (the
    frozen weights are --model's), megabytes instead of the whole model."""
    for state in weights:
        for key in [k for k in state if LORA_KEY not in k]:
            del state[key]


def check_adapter_checkpoint(checkpoint: Path, transformer) -> None:
    """The checkpoint's model file holds every adapter tensor of `transformer` (it is loaded with
    strict=False, so a missing one would otherwise go unnoticed)."""
    from safetensors import safe_open

    from ..errors import NamiError

    path = Path(checkpoint) / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
    wanted = {f"transformer.{name}" for name, p in transformer.named_parameters() if p.requires_grad}
    missing = sorted(wanted - stored)
    if missing:
        raise NamiError(f"{path} lacks {len(missing)} of the adapter's {len(wanted)} tensors (e.g. {missing[0]}): "
                        "not a checkpoint of this --lora run (check --lora, --lora-targets and --model)")


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a run updates (all of them, or the adapter's under --lora)."""
    return [p for p in module.parameters() if p.requires_grad]


def write_adapter_dir(out: Path, transformer, ema_state: list[torch.Tensor] | None, info: dict,
                      data: Path | None = None) -> Path:
    """Write RUN/final for a LoRA run atomically: the adapter, its EMA (`ema/`), `nami_lora.json`,
    and the vocabulary of the training captions in `data` (so `nami sample --lora` knows the words
    the adapter taught). `ema_state`: the EMA's tensors in the order of `trainable(transformer)`."""
    out = Path(out)
    taught = None
    if data is not None:
        taught = Vocabulary.of_captions(data_captions(data), "the words of its fine-tuning captions")
    with new_artefact(out) as tmp:
        save_lora(transformer, tmp)
        write_json_atomic(tmp / LORA_INFO, info)
        if taught is not None:
            taught.save(tmp)
        if ema_state is not None:
            params = trainable(transformer)
            raw = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, shadow in zip(params, ema_state):
                    p.copy_(shadow)
                save_lora(transformer, tmp / "ema")
                for p, value in zip(params, raw):
                    p.copy_(value)
            if taught is not None:
                taught.save(tmp / "ema")
    return out



def lora_parameter_count(model_cfg, rank: int, targets: str = "attn") -> int:
    """Parameters of a rank-`rank` adapter on a model of `model_cfg` (built on the meta device, no memory)."""
    from ..model.transformer import NamiTransformer

    with torch.device("meta"):
        transformer = NamiTransformer.from_model_config(model_cfg)
    return sum(p.numel() for p in add_lora(transformer, lora_config(rank, None, targets)))
