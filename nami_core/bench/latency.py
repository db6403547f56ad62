"""`nami bench latency`: time the progressive sampler per mode and resolution, beside the FLOP bound.

For each final resolution, the modes (flux-base, flow-only, nami) are run interleaved,
round after round (warm-up rounds first, untimed), so drift of the machine (clocks,
temperature, other load) hits every mode alike. One run is one `ProgressiveSampler`
call over the mode's `FlowPlan` with the `Denoiser` (and, when asked, the text encoder
before it and the codec's decode after it). Stage times come from marks taken after
every jump, so stage k's time covers its Euler steps and the jump out of it, as in
`SampleResult.stage_seconds`.

Times are per image: a batch's time divided by the batch size. FLOPs are per image and
come from `nami_core.flow.flops.plan_flops`; `bound = 1 - flops(mode) / flops(flux-base)`
is the reduction a measured `reduction = 1 - ms(mode) / ms(flux-base)` can approach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..config import BASELINE_MODE
from ..errors import NamiError
from .requests import LatencyRequest
from .workload import BenchModel

if TYPE_CHECKING:
    from ..denoiser import Denoiser
    from ..flow.plan import FlowPlan
    from ..text.embeddings import TextEmbeddings

BENCH_PROMPT = "a photo of a red fox in the snow"

# on_run(resolution, mode, round, timed) after every run; rounds count warm-up rounds too.
RunCallback = Callable[[int, str, int, bool], None]


@dataclass(frozen=True)
class ScheduledRun:
    """One sampler call of the interleaved schedule: round index, mode, and whether it is timed."""

    round: int
    mode: str
    timed: bool


def interleaved_schedule(modes: Sequence[str], warmup: int, repeats: int) -> list[ScheduledRun]:
    """Round r runs every mode once, in the given order: warm-up rounds (untimed) first, then
    `repeats` timed rounds. E.g. modes (a, b), warmup 1, repeats 2 -> a b | a b a b."""
    return [
        ScheduledRun(r, mode, r >= warmup)
        for r in range(warmup + repeats)
        for mode in modes
    ]


@dataclass
class RunTimes:
    """One timed run, milliseconds per image: stages of the sampler, text encoding, decoding."""

    stages: list[float]
    text: float = 0.0
    codec: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.stages) + self.text + self.codec


class MarkedJump:
    """Wraps a jump so a timestamp is taken right after it (the stage boundary)."""

    def __init__(self, jump, on_done: Callable[[], None]) -> None:
        self.jump = jump
        self.on_done = on_done

    def __call__(self, z: torch.Tensor, k: int, generators=None) -> torch.Tensor:
        out = self.jump(z, k, generators)
        self.on_done()
        return out


@dataclass
class LatencyRunner:
    """Everything a run needs that does not change between runs: model, text, optional codec/encoder.

    `cond` is a prompt of `prompt_tokens` real tokens padded to the text slot, `uncond` the empty
    negative prompt (one real token), as a tokenizer pads them; a text encoder replaces both."""

    bench: BenchModel
    denoiser: "Denoiser"
    device: torch.device
    batch: int
    cfg: float
    cond: "TextEmbeddings"
    uncond: "TextEmbeddings"
    text_encoder: object | None = None  # NamiTextEncoder
    codec: object | None = None  # PixelCodec or FluxVAECodec
    noise_seed: int = 0

    def texts(self):
        """(cond, uncond or None) of batch B on the device."""
        if self.text_encoder is None:
            return self.cond, (self.uncond if self.cfg != 1.0 else None)
        cond = self.text_encoder.encode([BENCH_PROMPT] * self.batch).to(self.device)
        uncond = self.text_encoder.encode([""] * self.batch).to(self.device) if self.cfg != 1.0 else None
        return cond, uncond

    def text_tokens(self) -> int:
        """Text tokens the transformer processes per row: the longest real prompt when the model cuts
        padding ("mask"; its `text_bucket` when compiled), else the whole slot."""
        from ..model.transformer import text_bucket

        cond, uncond = self.texts()
        rows = [cond] + ([uncond] if uncond is not None else [])
        transformer = self.denoiser.transformer
        if transformer.config.text_padding == "none":
            return cond.sequence.shape[1]
        longest = max(max(t.host_lengths()) for t in rows)
        compilation = transformer.compilation
        static = compilation is not None and compilation.static_text
        return text_bucket(longest, cond.sequence.shape[1]) if static else longest

    def sampler(self, plan: "FlowPlan", on_jump: Callable[[], None] = lambda: None):
        from ..flow.jump import RenoiseJump
        from ..flow.sampler import ProgressiveSampler

        return ProgressiveSampler(self.denoiser, plan, MarkedJump(RenoiseJump(plan.jumps, plan.gamma), on_jump))

    def run(self, plan: "FlowPlan", steps: Sequence[int]) -> RunTimes:
        """One sampler call over `plan` with `steps[k]` Euler steps in window k, from noise (B, C, h_1, w_1)
        to latents (B, C, H, W) (then decoded to (B, 3, res, res) with a codec); returns times per image."""
        from ..flow.sampler import initial_noise
        from .timing import Clock

        clock = Clock(self.device)
        marks: list = []
        sampler = self.sampler(plan, lambda: marks.append(clock.mark()))
        side = plan.flow.resolutions[-1] // self.bench.downsample
        g = [torch.Generator().manual_seed(self.noise_seed + i) for i in range(self.batch)]
        noise = initial_noise(self.batch, self.bench.channels, (side, side), plan, g, self.device)
        clock.finish()
        with torch.no_grad():
            begin = clock.mark()
            cond, uncond = self.texts()
            start = clock.mark()
            result = sampler(cond, uncond, noise, steps, self.cfg)
            sampled = clock.mark()
            if self.codec is not None:
                self.codec.decode(result.latents)
            decoded = clock.mark()
        clock.finish()
        per_image = 1.0 / self.batch
        stages = [ms * per_image for ms in clock.spans_ms([start, *marks, sampled])]
        return RunTimes(
            stages,
            text=clock.elapsed_ms(begin, start) * per_image if self.text_encoder is not None else 0.0,
            codec=clock.elapsed_ms(sampled, decoded) * per_image if self.codec is not None else 0.0,
        )

    def ops_per_step(self, plan: "FlowPlan") -> list[float] | None:
        """Per window of `plan`: operations dispatched per Euler step (see `bench.opcount`). None for
        a compiled model off CUDA: ATen ops are counted by a dispatch mode, under which dynamo runs
        compiled code eagerly, and the code inductor generates for the CPU dispatches nothing."""
        from .opcount import dispatches_per_step

        if self.denoiser.transformer.compile_stats is not None and self.device.type != "cuda":
            return None

        sampler = self.sampler(plan)
        cond, uncond = self.texts()
        side = plan.flow.resolutions[-1] // self.bench.downsample
        counts = []
        for k, window in enumerate(plan):
            grid = side // 2 ** (plan.flow.num_stages - 1 - window.level)
            z = torch.randn(self.batch, self.bench.channels, grid, grid, device=self.device)
            counts.append(dispatches_per_step(lambda n: sampler.run_window(z, k, n, cond, uncond, self.cfg),
                                              self.device))
        return counts


def _build_runner(req: LatencyRequest, bench: BenchModel, device: torch.device, dtype: torch.dtype) -> LatencyRunner:
    from dataclasses import replace

    from ..denoiser import Denoiser
    from .workload import (
        load_component,
        place,
        random_flux_vae_codec,
        random_text,
        random_transformer,
    )

    text_encoder = None
    if req.include_text:
        if bench.model_dir is None:
            raise NamiError("--include-text needs --model DIR (a preset has no text encoder weights)")
        text_encoder = load_component(bench.model_dir, "text_encoder").to(device)
    codec = None
    if req.include_codec:
        codec = random_flux_vae_codec() if bench.model_dir is None else load_component(bench.model_dir, "codec")
        pixel = codec.__class__.__name__ == "PixelCodec"
        codec = place(codec, device, torch.float32 if pixel else dtype)
    model = bench.model if req.text_padding is None else replace(bench.model, text_padding=req.text_padding)
    transformer = random_transformer(model, device, dtype, req.seed)
    if req.compile:
        from ..model.compiled import compile_for_sampling

        compile_for_sampling(transformer, device)
    cond = random_text(model, req.batch_size, req.text_tokens, device, req.prompt_tokens, seed=0)
    uncond = random_text(model, req.batch_size, req.text_tokens, device, 1, seed=1)
    return LatencyRunner(bench, Denoiser(transformer, bench.patch), device, req.batch_size, float(req.cfg), cond,
                         uncond, text_encoder, codec, req.seed)


def result_entry(req: LatencyRequest, res: int, mode: str, backend: str, timed: list[RunTimes], peaks: list[int],
                 flops: float, ops: list[float] | None) -> dict:
    """One row of the report's "results": medians (min, max) over the timed runs of `mode` at `res`."""
    from .timing import Summary

    total = Summary.of([t.total for t in timed])
    entry = {
        "resolution": res,
        "mode": mode,
        "attention": backend,
        "ms_median": total.median,
        "ms_min": total.min,
        "ms_max": total.max,
        "ms_per_stage": [Summary.of(list(stage)).median for stage in zip(*(t.stages for t in timed))],
        "flops": flops,
        "peak_mem_bytes": max(peaks) if peaks else None,
        "ops_per_step": ops,
    }
    if req.include_text:
        entry["ms_text"] = Summary.of([t.text for t in timed]).median
    if req.include_codec:
        entry["ms_codec"] = Summary.of([t.codec for t in timed]).median
    return entry


def reductions(results: list[dict], res: int, backend: str, modes: Sequence[str]) -> dict[str, float]:
    """1 - ms(mode) / ms(flux-base) for every other mode at `res` with `backend`."""
    ms = {r["mode"]: r["ms_median"] for r in results if r["resolution"] == res and r["attention"] == backend}
    return {m: 1.0 - ms[m] / ms[BASELINE_MODE] for m in modes if m != BASELINE_MODE}


def time_modes(runner: LatencyRunner, plans: dict, steps: dict, schedule: list[ScheduledRun], device,
               on_run) -> tuple[dict, dict]:
    """Run the interleaved schedule over `plans` (mode -> plan); timed runs and peak bytes per mode."""
    from .timing import peak_memory_bytes, reset_peak_memory

    timed: dict[str, list[RunTimes]] = {mode: [] for mode in plans}
    peaks: dict[str, list[int]] = {mode: [] for mode in plans}
    for item in schedule:
        reset_peak_memory(device)
        times = runner.run(plans[item.mode], steps[item.mode])
        if item.timed:
            timed[item.mode].append(times)
            peak = peak_memory_bytes(device)
            if peak is not None:
                peaks[item.mode].append(peak)
        on_run(item)
    return timed, peaks


def run_latency(req: LatencyRequest, on_run: RunCallback | None = None) -> dict:
    """Run the benchmark; returns the JSON report (see `nami bench latency --help`)."""
    from ..flow.flops import plan_flops
    from ..flow.plan import FlowPlan
    from ..model.attention import apply_backend, resolve_backend
    from ..runtime import dtype_name as resolved_dtype_name
    from ..runtime import resolve_device, resolve_dtype
    from .gpus import device_label
    from .opcount import counter_name
    from .workload import load_bench_model

    req.validate()
    device = resolve_device(req.device)
    dtype_name = resolved_dtype_name(req.dtype, device)
    backends = [resolve_backend(name, device, resolve_dtype(dtype_name)) for name in req.attention]
    bench = load_bench_model(req.preset, req.model_dir)
    flows = {res: bench.flow(res) for res in req.resolutions}  # checks every resolution before any work
    plans = {
        res: {mode: FlowPlan(mode, flow, bench.model.stage_ends, bench.pixels_per_token) for mode in req.modes}
        for res, flow in flows.items()
    }
    baselines = {res: FlowPlan(BASELINE_MODE, flow, bench.model.stage_ends, bench.pixels_per_token)
                 for res, flow in flows.items()}
    steps = {res: {mode: plan.stage_steps(req.steps) for mode, plan in by_mode.items()} for res, by_mode in plans.items()}
    runner = _build_runner(req, bench, device, resolve_dtype(dtype_name))
    text_tokens = runner.text_tokens()
    forwards_per_step = 1 if req.cfg == 1.0 else 2
    flops = {res: {mode: forwards_per_step * plan_flops(bench.model, plan, plan.stage_steps(req.steps), text_tokens)
                   for mode, plan in {**by_mode, BASELINE_MODE: baselines[res]}.items()}
             for res, by_mode in plans.items()}
    bound = {str(res): {m: 1.0 - f[m] / f[BASELINE_MODE] for m in req.modes if m != BASELINE_MODE}
             for res, f in flops.items()}

    schedule = interleaved_schedule(req.modes, req.warmup, req.repeats)
    results, by_attention = [], {}
    for backend in backends:
        apply_backend(runner.denoiser.transformer, backend)
        for res in req.resolutions:
            report_run = (lambda item, r=res: on_run(r, item.mode, item.round, item.timed)) if on_run else (lambda item: None)
            timed, peaks = time_modes(runner, plans[res], steps[res], schedule, device, report_run)
            for mode in req.modes:
                ops = runner.ops_per_step(plans[res][mode]) if req.count_ops else None
                results.append(result_entry(req, res, mode, backend, timed[mode], peaks[mode], flops[res][mode], ops))
        if BASELINE_MODE in req.modes:
            by_attention[backend] = {str(res): reductions(results, res, backend, req.modes) for res in req.resolutions}
    return {
        "device": device_label(device),
        "dtype": dtype_name,
        "attention": backends[0],
        "attentions": backends,
        "text_tokens": text_tokens,
        "text_slot": req.text_tokens,
        "cfg": req.cfg,
        "op_counter": counter_name(device) if req.count_ops else None,
        "results": results,
        "reduction": by_attention.get(backends[0], {}),
        "reduction_by_attention": by_attention,
        "bound": bound,
        "compile": compile_report(runner.denoiser.transformer),
    }


def compile_report(transformer) -> dict | None:
    """What compiling `transformer` did (`CompileStats.report`), None when it is not compiled."""
    stats = transformer.compile_stats
    return None if stats is None else stats.report()
