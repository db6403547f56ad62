"""`nami info`: the plan of a model before any weights are loaded or GPU hours spent.

`InfoRequest` checks what was asked for without numpy; the plan and the FLOP model load when a
description is fitted to a size or a report is made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .config import (BASELINE_MODE, MAX_TEXT_TOKENS, PAPER_TOTAL_STEPS, PRESETS, FlowConfig, ModelConfig, check_fields, one_of,
                     get_preset, parse_int_list, parse_size, split_steps, step_counts, validate_resolutions, within)
from .input_paths import MODEL, check_reads, reads
from .errors import NamiError
from .flow.saved import FLUX_VAE_PIXELS_PER_TOKEN, read_saved_model
from .model_paths import resolve_model_dir



@dataclass(frozen=True)
class ModelDescription:
    """What `nami info` needs: model shape, flow, pixels per token and sampling defaults."""

    name: str
    model: ModelConfig
    flow: FlowConfig
    pixels_per_token: int
    default_steps: tuple[int, ...]
    default_mode: str = "nami"


def describe_preset(name: str, resolutions: Sequence[int] | None = None,
                    size: tuple[int, int] | None = None) -> ModelDescription:
    """A preset at its stage resolutions, or `resolutions`, or the final image `size` (width,
    height) in pixels (every stage at its aspect ratio)."""
    preset = get_preset(name)
    flow = FlowConfig(resolutions=tuple(resolutions or preset.resolutions))
    steps = split_steps(PAPER_TOTAL_STEPS, flow.num_stages)
    desc = ModelDescription(name, preset.model, flow, FLUX_VAE_PIXELS_PER_TOKEN, steps, preset.default_mode)
    return at_size(desc, size)


def at_size(desc: ModelDescription, size: tuple[int, int] | None) -> ModelDescription:
    """`desc` with its last stage at `size` (width, height) pixels, each stage half the next; as it
    is for None. Raises `ConfigError` when a side does not halve into whole tokens in every stage."""
    if size is None:
        return desc
    width, height = size
    from .flow.plan import fit_size

    return replace(desc, flow=fit_size(desc.flow, height, width, desc.pixels_per_token))


def describe_model_dir(path: str | Path, resolutions: Sequence[int] | None = None,
                       size: tuple[int, int] | None = None) -> ModelDescription:
    """Read a saved model directory's configs (no weights); `resolutions` or the final image
    `size` (width, height) replace its stage resolutions."""
    root = Path(path)
    found = read_saved_model(root)
    flow = replace(found.saved.flow, resolutions=tuple(resolutions)) if resolutions else found.saved.flow
    desc = ModelDescription(root.name, found.model, flow, found.pixels_per_token, found.saved.default_steps,
                            found.saved.default_mode)
    return at_size(desc, size)


@dataclass
class InfoRequest:
    """What `nami info` describes: a preset, or a model directory (the bundled model when neither
    is given), at its stage resolutions, at `stages` ("512,1024,2048"), or ending at `size`
    ("1024x576"); `steps` per stage (the model's) and `text_tokens` count in the FLOPs."""

    preset: str | None = field(default=None, metadata=one_of(tuple(PRESETS)))
    model: str | None = field(default=None, metadata={**reads(MODEL), "shown": "the bundled nami-shapes model"})
    stages: tuple[int, ...] | str | None = field(default=None, metadata={"shown": "the model's"})
    size: tuple[int, int] | str | None = None
    steps: str | None = field(default=None, metadata={"shown": "the model's"})
    text_tokens: int = field(default=256, metadata=within(1, MAX_TEXT_TOKENS))
    train_memory: bool = False  # the memory of a training step instead (`train.memory.TrainMemoryRequest`)

    def __post_init__(self) -> None:
        if self.train_memory and self.steps is not None:
            raise NamiError("--steps does not apply to --train-memory")
        if self.preset is not None and self.model is not None:
            raise NamiError("give --preset or --model, not both")
        if self.stages is not None and self.size is not None:
            raise NamiError("give --stages or --size, not both")
        if self.stages is not None:
            self.stages = parse_int_list(self.stages, "--stages")
            validate_resolutions(self.stages, "--stages")
        if isinstance(self.size, str):
            self.size = parse_size(self.size)
        if self.steps is not None:
            step_counts(self.steps, "--steps")
        check_fields(self)
        check_reads(self)

    def describe(self) -> ModelDescription:
        """The model described (reads a model directory's configs, no weights)."""
        if self.preset is not None:
            return describe_preset(self.preset, self.stages, self.size)
        return describe_model_dir(resolve_model_dir(self.model), self.stages, self.size)

    def report(self) -> dict[str, Any]:
        """The JSON of `nami info` (`plan_report`)."""
        return plan_report(self.describe(), self.steps, self.text_tokens)


def plan_report(desc: ModelDescription, steps: Sequence[int] | str | None, text_tokens: int) -> dict[str, Any]:
    """The JSON of `nami info`: params, stages, flops per mode, reduction vs flux-base."""
    from .flow.flops import plan_flops
    from .flow.plan import FlowPlan, runnable_modes
    from .model.params import count_parameters

    model, flow = desc.model, desc.flow
    total, per_block = count_parameters(model)
    shared = total - sum(per_block)
    modes = runnable_modes(model.stage_ends, flow)
    mode = desc.default_mode if desc.default_mode in modes else BASELINE_MODE
    plan = FlowPlan(mode, flow, model.stage_ends, desc.pixels_per_token)
    stage_steps = plan.stage_steps(steps if steps is not None else desc.default_steps, "--steps")
    stages = []
    for k, window in enumerate(plan):
        last = k == len(plan) - 1
        alpha, beta = (None, None) if last else plan.jumps[k]
        height, width = window.size
        stages.append(
            {
                "resolution": height,
                "width": width,
                "tokens": window.tokens(desc.pixels_per_token),
                "blocks": window.blocks,
                "params_active": shared + sum(per_block[: window.blocks]),
                "sigma_start": window.sigma_start,
                "sigma_end": window.sigma_end,
                "tau_start": window.tau_start,
                "tau_end": window.tau_end,
                "steps": stage_steps[k],
                "jump_alpha": alpha,
                "jump_beta": beta,
            }
        )
    flops = {}
    for m in modes:
        p = FlowPlan(m, flow, model.stage_ends, desc.pixels_per_token)
        flops[m] = plan_flops(model, p, p.stage_steps(stage_steps), text_tokens)
    reduction = {m: 1.0 - flops[m] / flops[BASELINE_MODE] for m in modes if m != BASELINE_MODE}
    height, width = flow.sizes[-1]
    return {
        "model": desc.name,
        "params": int(total),
        "width": width,
        "height": height,
        "text_tokens": text_tokens,
        "stages": stages,
        "flops": flops,
        "reduction": reduction,
    }
