"""`nami bench train`: optimizer steps of the training objective on random data, per stage and for a
stage-ratio mix, with achieved TFLOP/s and MFU.

A step is what `nami train` does per batch: `StagedObjective` (docs/method.md §4 targets from
`nami_core.flow.objective`, one stage per sample) forward, the mean loss, backward, AdamW
step. Data loading, EMA and logging are not timed. Mixed precision is autocast over fp32
weights, as accelerate's. Training FLOPs are 3x the forward FLOPs of the FLOP model (forward
+ backward for activations and weights); activation recomputation under
`--grad-checkpointing` costs time but does not count, as usual for MFU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import NamiError

TRAIN_FLOPS_PER_FORWARD = 3.0
DEFAULT_RATIO = "4:2:1"

# on_step(config name, step index counting warm-up steps, total steps of the config)
StepCallback = Callable[[str, int, int], None]


@dataclass
class TrainBenchRequest:
    """The options of `nami bench train`. `stages` default to the preset's; `dtype` "auto" is bf16
    on CUDA, fp32 on the CPU."""

    preset: str | None = None
    stages: tuple[int, ...] | None = None
    mode: str = "nami"
    ratio: str = DEFAULT_RATIO
    batch_size: int = 8
    dtype: str = "auto"
    attention: str = "auto"
    grad_checkpointing: bool = False
    compile: bool = False
    steps: int = 10
    warmup: int = 2
    device: str = "auto"
    text_tokens: int = 256
    seed: int = 0

    def validate(self) -> None:
        from ..config import check_mode

        check_mode(self.mode)
        if self.batch_size < 1:
            raise NamiError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.steps < 1:
            raise NamiError(f"--steps must be at least 1, got {self.steps}")
        if self.warmup < 0:
            raise NamiError(f"--warmup must be 0 or more, got {self.warmup}")


def split_batch(batch: int, ratios: Sequence[float]) -> list[int]:
    """Samples per stage for a batch mixed by `ratios`: proportional counts, rounded by largest
    remainder so they sum to `batch`. split_batch(7, (4, 2, 1)) == [4, 2, 1]."""
    total = float(sum(ratios))
    if total <= 0 or any(w < 0 for w in ratios):
        raise NamiError(f"--ratio must be non-negative with a positive sum, got {':'.join(map(str, ratios))}")
    exact = [batch * w / total for w in ratios]
    counts = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda k: (counts[k] - exact[k], k))
    for k in order[: batch - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class StepConfig:
    """One measured configuration: a name and the number of samples of each stage window in a batch."""

    name: str
    samples_per_stage: tuple[int, ...]


def step_configs(num_windows: int, batch: int, ratios: Sequence[float] | None) -> list[StepConfig]:
    """Every stage alone (the whole batch at that stage), then the ratio mix when there are several stages."""
    configs = [
        StepConfig(f"stage {k + 1}", tuple(batch if j == k else 0 for j in range(num_windows)))
        for k in range(num_windows)
    ]
    if num_windows > 1 and ratios is not None:
        if len(ratios) != num_windows:
            raise NamiError(f"--ratio lists {len(ratios)} weights but there are {num_windows} stages")
        label = ":".join(f"{w:g}" for w in ratios)
        configs.append(StepConfig(f"mix {label}", tuple(split_batch(batch, ratios))))
    return configs


def random_groups(bench, plan, counts: Sequence[int], text_tokens: int, device: torch.device, seed: int):
    """Random `StageGroup`s: for window k with n = counts[k] > 0, latents and noise (n, C, h_k, w_k),
    random text, and logit-normal ratios r (n,)."""
    from ..flow.objective import sample_ratios
    from ..train.batches import StageGroup
    from .workload import random_text

    g = torch.Generator().manual_seed(seed)
    groups = []
    for k, n in enumerate(counts):
        if n == 0:
            continue
        window = plan[k]
        side = window.resolution // bench.downsample
        shape = (n, bench.channels, side, side)
        groups.append(StageGroup(
            k,
            torch.randn(shape, generator=g).to(device),
            random_text(bench.model, n, text_tokens, device),
            torch.randn(shape, generator=g).to(device),
            sample_ratios(n, window, "logit-normal", g, device),
        ))
    return groups


def step_flops(bench, plan, counts: Sequence[int], text_tokens: int) -> float:
    """Training FLOPs of one optimizer step: 3x the forward FLOPs of every sample's stage prefix."""
    from ..flow.flops import forward_flops

    return TRAIN_FLOPS_PER_FORWARD * sum(
        n * forward_flops(bench.model, bench.image_tokens(plan[k].resolution), text_tokens, plan[k].blocks)
        for k, n in enumerate(counts)
    )


def step_tokens(bench, plan, counts: Sequence[int], text_tokens: int) -> int:
    """Image + text tokens processed in one step (as `nami train` counts them for tokens/s)."""
    return sum(n * (bench.image_tokens(plan[k].resolution) + text_tokens) for k, n in enumerate(counts))


def time_steps(clock, step: Callable[[], None], warmup: int, repeats: int,
               on_step: Callable[[int, int], None]):
    """Run `warmup` untimed then `repeats` timed calls of `step`; the `Summary` of the timed ones (ms)."""
    from .timing import Summary

    total = warmup + repeats
    marks = []
    for i in range(total):
        if i == warmup:
            clock.finish()
        if i >= warmup:
            marks.append(clock.mark())
        step()
        on_step(i, total)
    marks.append(clock.mark())
    clock.finish()
    return Summary.of(clock.spans_ms(marks))


def run_train_bench(req: TrainBenchRequest, on_step: StepCallback | None = None) -> dict:
    """Run the benchmark; returns the JSON report (see `nami bench train --help`)."""
    from ..config import FlowConfig, parse_float_list
    from ..flow.plan import FlowPlan
    from ..model.attention import apply_backend, resolve_backend
    from ..runtime import dtype_name as resolved_dtype_name
    from ..runtime import resolve_device, resolve_dtype
    from ..train.staged_loss import StagedObjective
    from .gpus import device_label, device_peak_tflops
    from .timing import Clock, peak_memory_bytes, reset_peak_memory
    from .workload import load_bench_model, random_transformer

    req.validate()
    device = resolve_device(req.device)
    dtype_name = resolved_dtype_name(req.dtype, device)
    dtype = resolve_dtype(dtype_name)
    backend = resolve_backend(req.attention, device.type)
    bench = load_bench_model(req.preset, None)
    if req.text_tokens < 1:
        raise NamiError(f"--text-tokens must be at least 1, got {req.text_tokens}")
    flow = FlowConfig(resolutions=tuple(req.stages)) if req.stages else bench.description.flow
    plan = FlowPlan(req.mode, flow, bench.model.stage_ends, bench.pixels_per_token)
    ratios = parse_float_list(req.ratio, "--ratio") if req.ratio else None
    configs = step_configs(len(plan), req.batch_size, ratios)

    transformer = random_transformer(bench.model, device, torch.float32, req.seed).train()
    apply_backend(transformer, backend, device.type)
    if req.grad_checkpointing:
        transformer.enable_gradient_checkpointing()
    if req.compile:
        transformer.compile_blocks(dynamic=False)
    objective = StagedObjective(transformer, plan, bench.patch)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4, **fused)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def train_step(groups) -> None:
        with autocast():
            losses = objective(groups)
        loss = sum(per_sample.sum() for per_sample in losses) / req.batch_size
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    peak = device_peak_tflops(device, dtype)
    clock = Clock(device)
    results = []
    for config in configs:
        groups = random_groups(bench, plan, config.samples_per_stage, req.text_tokens, device, req.seed)
        reset_peak_memory(device)
        step_ms = time_steps(clock, lambda: train_step(groups), req.warmup, req.steps,
                             lambda i, total: on_step(config.name, i, total) if on_step is not None else None)
        seconds = step_ms.median / 1000.0
        flops = step_flops(bench, plan, config.samples_per_stage, req.text_tokens)
        tflops_per_s = flops / seconds / 1e12
        results.append({
            "config": config.name,
            "samples_per_stage": list(config.samples_per_stage),
            "resolutions": [plan[k].resolution for k, n in enumerate(config.samples_per_stage) if n],
            "step_ms_median": step_ms.median,
            "step_ms_min": step_ms.min,
            "step_ms_max": step_ms.max,
            "images_per_s": req.batch_size / seconds,
            "tokens_per_s": step_tokens(bench, plan, config.samples_per_stage, req.text_tokens) / seconds,
            "train_flops_per_step": flops,
            "tflops_per_s": tflops_per_s,
            "mfu": None if peak is None else tflops_per_s / peak,
            "peak_mem_bytes": peak_memory_bytes(device),
        })
    return {
        "device": device_label(device),
        "dtype": dtype_name,
        "attention": backend,
        "model": bench.name,
        "mode": req.mode,
        "batch": req.batch_size,
        "text_tokens": req.text_tokens,
        "grad_checkpointing": req.grad_checkpointing,
        "compile": req.compile,
        "peak_tflops": peak,
        "results": results,
    }
