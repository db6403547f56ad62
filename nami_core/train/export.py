"""Model directories from training state: RUN/final, and any checkpoint on request.

A model directory holds the raw weights as the default variant and the EMA weights as the
`ema` variant, plus the scheduler (stage resolutions, windows, sampling defaults), the codec and
the text encoder the data was prepared with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..checksums import new_artefact
from ..errors import NamiError
from ..flow.plan import FlowPlan
from .export_target import export_target, stored_path
from .integrity import verify_checkpoint
from .sharded_ema import EMA_FOLDER, has_sharded_ema, is_sharded, read_sharded

TRANSFORMER_PREFIX = "transformer."
FSDP_MODEL_FOLDER = "pytorch_model_fsdp_0"  # accelerate's sharded model checkpoint


def pipeline_parts(plan: FlowPlan, manifest: dict, patch: int, mode: str, sample_steps: str | Sequence[int] | None,
                   sample_cfg: str | float | Sequence[float]):
    """(scheduler, codec, text encoder) of a model trained on `manifest`'s data: the flow of
    `plan` with the sampling defaults, the data's codec and its text encoder's settings (the
    encoder's weights are not loaded)."""
    from ..codecs.spec import codec_from_record
    from ..config import STEPS_PER_STAGE, guidance_record
    from ..flow.scheduler import NamiFlowScheduler
    from ..text.encoder import NamiTextEncoder

    encoder = NamiTextEncoder.from_config(manifest["text_encoder"])  # the data's text settings
    steps = plan.stage_steps(sample_steps or (STEPS_PER_STAGE,) * plan.flow.num_stages)
    guidance = guidance_record(plan.stage_guidance(sample_cfg))
    scheduler = NamiFlowScheduler.from_flow(plan.flow, default_steps=list(steps), default_cfg=guidance,
                                            default_mode=mode)
    return scheduler, codec_from_record(manifest["codec"], patch), encoder


def write_model_dir(out: Path, transformer_config: dict, raw: dict, ema: dict | None, plan: FlowPlan,
                    manifest: dict, patch: int, mode: str, sample_steps: str | Sequence[int] | None,
                    sample_cfg: str | float | Sequence[float]) -> Path:
    """Write a complete model directory to `out` atomically (temporary folder, then rename)."""
    from ..model.transformer import NamiTransformer
    from ..pipeline import NamiPipeline

    transformer = NamiTransformer.from_config(transformer_config)
    transformer.load_state_dict(raw)
    scheduler, codec, encoder = pipeline_parts(plan, manifest, patch, mode, sample_steps, sample_cfg)
    out = Path(out)
    with new_artefact(out) as tmp:
        NamiPipeline(transformer, scheduler, codec, encoder).save_pretrained(tmp)
        if ema is not None:
            transformer.load_state_dict(ema)
            transformer.save_pretrained(tmp / "transformer", variant="ema")
    return out


def export_checkpoint(checkpoint: Path, out: Path, overwrite: bool = False) -> Path:
    """Turn RUN/checkpoints/step-N into a model directory (single-process or DDP checkpoints), or
    the adapter folder of a `--lora` run's checkpoint. `out` follows the output policy
    (`output_targets`): not the checkpoint, its run's data or base model, nor around them; an
    existing model directory (adapter) is replaced only with `overwrite`."""
    from safetensors.torch import load_file

    from ..config import FlowConfig, ModelConfig
    from ..data.store import load_manifest
    from .checkpoint import load_checkpoint_file

    checkpoint = Path(checkpoint)
    run_config = export_target(checkpoint, out, overwrite)
    config_path = checkpoint.parent.parent / "train_config.json"
    train = run_config["train"]
    verify_checkpoint(checkpoint)  # a damaged one is named in one line, never half-read
    weights = checkpoint / "model.safetensors"
    sharded = checkpoint / FSDP_MODEL_FOLDER
    if not weights.is_file() and is_sharded(sharded):
        weights = sharded
    if not weights.exists():
        raise NamiError(f"{checkpoint} is not a complete nami training checkpoint (missing model.safetensors)")
    model, flow = ModelConfig.from_dict(run_config["model"]), run_config["flow"]
    if train.get("lora"):
        return _export_adapter_checkpoint(checkpoint, out, train, weights if weights != sharded else None, config_path)
    manifest = load_manifest(stored_path(config_path, "--data", train.get("data")))
    patch = int(run_config["patch_size"])
    plan = FlowPlan(train["mode"], FlowConfig(**{**flow, "resolutions": tuple(flow["resolutions"]),
                                                  "window_ratios": tuple(flow["window_ratios"])}),
                    model.stage_ends, int(manifest["codec"]["downsample"]) * patch)
    state = read_sharded(weights)["model"] if weights == sharded else load_file(weights)
    raw = {k[len(TRANSFORMER_PREFIX):]: v for k, v in state.items() if k.startswith(TRANSFORMER_PREFIX)}
    if not raw:
        raise NamiError(f"{weights} holds no transformer weights")
    ema = None
    ema_file = checkpoint / "ema_rank0.pt"
    if has_sharded_ema(checkpoint):
        shadow = read_sharded(checkpoint / EMA_FOLDER)["ema"]
        ema = {k[len(TRANSFORMER_PREFIX):]: v for k, v in shadow.items() if k.startswith(TRANSFORMER_PREFIX)}
    elif ema_file.is_file():
        from ..model.transformer import NamiTransformer

        shadow = load_checkpoint_file(ema_file)["shadow_params"]
        with torch.device("meta"):
            names = [n for n, _ in NamiTransformer.from_model_config(model).named_parameters()]
        if len(names) != len(shadow):
            raise NamiError(f"{ema_file} holds {len(shadow)} tensors for {len(names)} parameters")
        ema = dict(zip(names, (t.detach().cpu() for t in shadow)))
    return write_model_dir(out, model.transformer_kwargs(), raw, ema, plan, manifest, patch, train["mode"],
                           train.get("sample_steps"), train.get("sample_cfg", 3.0))


def _export_adapter_checkpoint(checkpoint: Path, out: Path, train: dict, weights: Path | None,
                               config_path: Path) -> Path:
    """A `nami train --lora` checkpoint as the adapter folder RUN/final would be at that step."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from ..model.transformer import NamiTransformer
    from .adapters import attach_lora, base_variant, lora_info, trainable, write_adapter_dir
    from ..errors import first_line
    from .checkpoint import load_checkpoint_file, read_trainer_state

    if weights is None:
        raise NamiError(f"{checkpoint}: LoRA checkpoints are written by DDP runs; this one is sharded")
    init = stored_path(config_path, "--model", train.get("init"))
    try:
        transformer = NamiTransformer.from_pretrained(init / "transformer", variant=base_variant(init))
    except (OSError, ValueError, RuntimeError) as exc:
        raise NamiError(f"the adapter's base model {init} cannot be loaded ({first_line(exc)})") from None
    settings = SimpleNamespace(lora=int(train["lora"]), lora_alpha=train.get("lora_alpha"),
                               lora_targets=train.get("lora_targets", "attn"), dtype="fp32", seed=0)
    attach_lora(transformer, settings)
    state = load_file(weights)
    adapter = {name: state[TRANSFORMER_PREFIX + name] for name, p in transformer.named_parameters() if p.requires_grad}
    transformer.load_state_dict(adapter, strict=False)
    ema = None
    ema_file = checkpoint / "ema_rank0.pt"
    if ema_file.is_file():
        ema = [t.detach().cpu() for t in load_checkpoint_file(ema_file)["shadow_params"]]
        if len(ema) != len(trainable(transformer)):
            raise NamiError(f"{ema_file} holds {len(ema)} tensors for {len(adapter)} adapter parameters")
    step = read_trainer_state(checkpoint)["step"]
    info = lora_info(init, settings.lora, settings.lora_alpha, settings.lora_targets, step, train.get("dtype", "fp32"))
    return write_adapter_dir(out, transformer, ema, info, stored_path(config_path, "--data", train.get("data")))
