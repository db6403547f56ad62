"""`nami bench train`: `nami train`'s own step on synthetic data, per stage and for a stage mix,
with achieved TFLOP/s and MFU.

A timed step is `TrainingRun.step`, exactly what `nami train` runs: batches drawn ahead from a
prepared-data folder (random latents at the final resolution, captions of `--prompt-tokens` real
tokens padded to the slot), the staged loss, backward, AdamW, the EMA, under DDP when launched with
several processes. Only the stage draw differs: each step splits the batch by the mix exactly
(largest remainder) instead of drawing it, so every step costs the same. `--no-realistic` times
the network alone instead (forward, backward and AdamW on fixed random groups: no data, no EMA),
an upper bound. Training FLOPs are 3x the forward FLOPs of the FLOP model (forward + backward for
activations and weights); recomputation under `--grad-checkpointing` costs time but does not
count, as usual for MFU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import NamiError
from ..train.batches import split_batch
from .requests import TrainBenchRequest

TRAIN_FLOPS_PER_FORWARD = 3.0

# on_step(config name, step index counting warm-up steps, total steps of the config)
StepCallback = Callable[[str, int, int], None]


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
            raise NamiError(f"--stage-mix lists {len(ratios)} weights but there are {num_windows} stages")
        label = ":".join(f"{w:g}" for w in ratios)
        configs.append(StepConfig(f"mix {label}", tuple(split_batch(batch, ratios))))
    return configs


def random_groups(bench, plan, counts: Sequence[int], text_tokens: int, real_tokens: int, device: torch.device,
                  seed: int):
    """Random `StageGroup`s: for window k with n = counts[k] > 0, latents and noise (n, C, h_k, w_k),
    padded random text, and logit-normal ratios r (n,)."""
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
            random_text(bench.model, n, text_tokens, device, real_tokens),
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


def _training_run(req: TrainBenchRequest, flow, data: Path, out: Path):
    """A `TrainingRun` on synthetic data, set up as `nami train` would be with the same options
    (dtype and attention resolved by it, not here; no checkpoints or logs)."""
    from ..train.config import TrainConfig
    from ..train.loop import TrainingRun

    settings = TrainConfig(
        data=data, out=out, stages=flow.resolutions, preset=req.preset or "nami-2b", mode=req.mode, steps=10**9,
        batch_size=req.batch_size, lr=1e-4, dtype=req.dtype, attention=req.attention,
        grad_checkpointing=req.grad_checkpointing,
        compile=req.compile, save_every=10**9, log_every=10**9, keep=0, preload="yes", seed=req.seed,
        stage_draw="split",
    )
    run = TrainingRun.setup(settings)
    run.resume()
    return run


def _network_step(req: TrainBenchRequest, bench, plan, device, dtype):
    """`--no-realistic`: a step function over fixed random groups: forward, backward, AdamW."""
    from ..train.checkpointing import CheckpointPolicy
    from ..train.staged_loss import StagedObjective, stage_losses
    from .workload import random_transformer

    transformer = random_transformer(bench.model, device, torch.float32, req.seed).train()
    if req.compile:
        from ..model.compiled import compile_for_training

        compile_for_training(transformer)
    policy = CheckpointPolicy(req.grad_checkpointing, bench.model.stage_ends, len(plan) - 1)
    objective = StagedObjective(transformer, plan, bench.patch, policy)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))

    def autocast():
        return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)

    def make(groups):
        def step() -> None:
            with autocast():
                losses = stage_losses(objective, groups, plan, bench.model.prediction)
            loss = sum(per_sample.sum() for per_sample in losses) / req.batch_size
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    return transformer, make


def run_train_bench(req: TrainBenchRequest, on_step: StepCallback | None = None) -> dict:
    """Run the benchmark; returns the JSON report (see `nami bench train --help`)."""
    import tempfile

    from ..config import FlowConfig
    from ..flow.plan import FlowPlan
    from ..model.attention import apply_backend, resolve_backend
    from ..runtime import dtype_name as resolved_dtype_name
    from ..runtime import resolve_device, resolve_dtype
    from ..train.memory_guard import train_device
    from ..train.metrics import MetricsWindow
    from ..train.precision import run_dtype
    from ..train.phases import parse_phases
    from ..train.prefetch import Prefetcher
    from .gpus import device_label, device_peak_tflops
    from .synthetic_data import write_synthetic_data
    from .timing import Clock, peak_memory_bytes, reset_peak_memory
    from .workload import load_bench_model

    req.validate()
    device = resolve_device(req.device)
    if req.realistic and device.type != train_device().type:
        raise NamiError(f"--device {req.device}: `nami train`'s step runs on {train_device()}; "
                        "use --no-realistic to time the network elsewhere")
    dtype_name = run_dtype(req.dtype, device.type) if req.realistic else resolved_dtype_name(req.dtype, device)
    dtype = resolve_dtype(dtype_name)
    backend = resolve_backend(req.attention, device, dtype)
    bench = load_bench_model(req.preset, None)
    flow = FlowConfig(resolutions=tuple(req.stages)) if req.stages else bench.description.flow
    plan = FlowPlan(req.mode, flow, bench.model.stage_ends, bench.pixels_per_token)
    configs = [c for c in step_configs(len(plan), req.batch_size, req.stage_mix)
               if req.only is None or c.name in req.only]
    peak = device_peak_tflops(device, dtype)
    clock = Clock(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="nami-bench-train-") as tmp:
        if req.realistic:
            data = write_synthetic_data(Path(tmp) / "data", bench, flow.resolutions, max(64, 4 * req.batch_size),
                                        req.text_tokens, req.real_tokens, req.seed)
            run = _training_run(req, flow, data, Path(tmp) / "run")
            backend, dtype_name = run.attention, run.settings.dtype  # what it resolved, as `nami train` does
            run.objective.train()
            window = MetricsWindow(len(run.plan), run.device)
        else:
            transformer, make_step = _network_step(req, bench, plan, device, dtype)
            apply_backend(transformer, backend, dtype)
        for config in configs:
            if req.realistic:
                if len(plan) > 1:  # this configuration's split, exactly, every step
                    mix = ":".join(f"{n:g}" for n in config.samples_per_stage)
                    run.schedules.stage_mix = parse_phases(f"0:{mix}", "--stage-mix", flow.num_stages)
                run.batches.close()
                run.batches = Prefetcher(run._draw, run.step_count, 10**9, pin=device.type == "cuda")
                step = lambda: run.step(window)  # noqa: E731
            else:
                step = make_step(random_groups(bench, plan, config.samples_per_stage, req.text_tokens,
                                               req.real_tokens, device, req.seed))
            reset_peak_memory(device)
            step_ms = time_steps(clock, step, req.warmup, req.steps,
                                 lambda i, total: on_step(config.name, i, total) if on_step is not None else None)
            results.append(config_result(req, bench, plan, config, step_ms, peak, peak_memory_bytes(device)))
        if req.realistic:
            run.batches.close()
            transformer = run.transformer
    from .latency import compile_report

    return {
        "device": device_label(device),
        "dtype": dtype_name,
        "attention": backend,
        "model": bench.name,
        "mode": req.mode,
        "batch": req.batch_size,
        "text_tokens": req.real_tokens,
        "text_slot": req.text_tokens,
        "realistic": req.realistic,
        "grad_checkpointing": req.grad_checkpointing,
        "compile": compile_report(transformer),
        "peak_tflops": peak,
        "results": results,
    }


def config_result(req: TrainBenchRequest, bench, plan, config: "StepConfig", step_ms, peak, peak_bytes) -> dict:
    """One row of the report: step time (median, min, max) and what follows from it."""
    seconds = step_ms.median / 1000.0
    flops = step_flops(bench, plan, config.samples_per_stage, req.real_tokens)
    tflops_per_s = flops / seconds / 1e12
    return {
        "config": config.name,
        "samples_per_stage": list(config.samples_per_stage),
        "resolutions": [plan[k].resolution for k, n in enumerate(config.samples_per_stage) if n],
        "step_ms_median": step_ms.median,
        "step_ms_min": step_ms.min,
        "step_ms_max": step_ms.max,
        "images_per_s": req.batch_size / seconds,
        "tokens_per_s": step_tokens(bench, plan, config.samples_per_stage, req.real_tokens) / seconds,
        "train_flops_per_step": flops,
        "tflops_per_s": tflops_per_s,
        "mfu": None if peak is None else tflops_per_s / peak,
        "peak_mem_bytes": peak_bytes,
    }
