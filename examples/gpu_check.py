"""The GPU check: nami-2b on one H100/H200 against what the paper claims, in one run of 8 minutes.

Run by `examples/gpu-check.sh` (which installs the carried wheels first); `--dry-run` runs the
same code on the CPU with tiny shapes (tests/test_gpu_check_script.py runs it under an import
blocker). One global deadline (`--deadline-s`, 480 s from when gpu-check.sh started, installs
included): a section that would not end before it is "skipped" with the reason, and one that is
still running at the deadline is stopped there ("fail"). Every section runs in its own
try/except, prints one line per assertion (`PASS name: ...` / `FAIL name: ...`), and its
results go into OUT/gpu-check.json the moment it ends:

    {"device": ..., "versions": {...},
     "sections": {NAME: {"status": "pass" | "fail" | "skipped", "reason": ..., ...figures}},
     "summary": "PASS" | "FAIL"}

The last line is `gpu-check: PASS` or `gpu-check: FAIL (names)`. Sections, most valuable first,
with their time on one H100 estimated from FLOPs (bf16 at ~700 TFLOP/s on big matmuls; nami-2b
at 1024², 30 steps with guidance: 728 TFLOPs an image for flux-base, 284 for nami; at 2048²:
5,086 and 1,892) plus building the models:

 1. attention_preflight (~10 s): every attention backend (native, xformers, flash) once, forward
    and backward on a small ragged batch, on the GPU in bf16; a backend that fails is dropped with
    its reason. xformers, carried as a wheel, must be usable (on CUDA only; the dry run says so).
 2. attention_agreement (~10 s): every usable backend against native SDPA on a 4-block model
    (width 1024, head dim 128) with ragged text (16, 5 and 1 real tokens): output and gradients
    within 2e-2 of native (max difference over the largest value).
 3. latency_1024 (~40 s): nami-2b, random weights, 1024², bf16, 30 steps (10/10/10 against 30),
    guidance 3, batch 1, a 12-token and a 256-token prompt, every usable backend, eager: nami's
    measured cut against flux-base >= 0.9 x its FLOP bound; no host sync inside a sampling stage
    (CUDA's sync debug mode armed in every stage).
 4. latency_2048 (~30 s): the same at 2048², native, 12-token prompt, one warm-up and one timed round.
 5. training (~90 s): `nami bench train` (exactly `nami train`'s step: data drawn ahead, staged loss,
    backward, AdamW, EMA) on nami-2b at 256/512/1024, bf16, batch 4: the 4:2:1 mix and stage 3
    alone, with `--grad-checkpointing auto` then `none`: peak memory within 10% of
    `nami info --train-memory`'s estimate for the same split, step time, images/s and MFU; no host
    sync inside a step (no log step among them; EMA on).
 6. fp16_overflow (~10 s): fp16 training (tiny model) with the loss scaled by 1e30 on one step:
    that step is skipped, the loss scale backs off, the next step trains.
 7. latency_compiled (~150 s: torch.compile of a block ~20-60 s, per block kind and shape): the
    1024² runs of section 3 with regionally compiled blocks (CUDA graphs), native first, the 12-
    then the 256-token prompt: compiled output equals eager within bf16 tolerance (3e-2), no
    recompile limit hit across the two prompt lengths, and the cut >= 0.9 x the bound.

    bash examples/gpu-check.sh             # on the GPU machine
    bash examples/gpu-check.sh --dry-run   # on any CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H100_TFLOPS = 700.0  # achievable bf16 on big matmuls, for the estimates
BOUND_SHARE = 0.9  # a measured cut must reach this share of its FLOP bound
AGREEMENT = 2e-2
COMPILED_TOLERANCE = 3e-2
MEMORY_TOLERANCE = 0.10
BACKENDS = ("native", "xformers", "flash")


class Deadline(Exception):
    """The global deadline passed while a section ran."""


@dataclass
class Shapes:
    """What the sections run: nami-2b on CUDA, tiny shapes in the dry run."""

    preset: str
    resolution: int
    large_resolution: int
    steps: str
    dtype: str
    warmup: int
    repeats: int
    prompts: tuple[int, ...]
    text_slot: int
    train_stages: tuple[int, ...]
    train_batch: int
    train_steps: int
    train_warmup: int
    agreement_width: int
    agreement_heads: int

    @classmethod
    def of(cls, dry_run: bool) -> "Shapes":
        if dry_run:
            return cls("tiny", 64, 128, "3", "bf16", 0, 1, (12, 256), 256, (32, 64, 128), 2, 1, 1, 64, 2)
        return cls("nami-2b", 1024, 2048, "30", "bf16", 1, 2, (12, 256), 256, (256, 512, 1024), 4, 5, 2, 1024, 8)


@dataclass
class Check:
    """The run's report, its assertions and the deadline (`time.time()` seconds)."""

    out: Path
    device: torch.device
    shapes: Shapes
    dry_run: bool
    deadline: float
    deadline_s: float
    usable: list[str] = field(default_factory=lambda: ["native"])
    report: dict = field(default_factory=lambda: {"device": None, "versions": {}, "sections": {}, "summary": None})
    section: str | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        from nami_core.runtime import resolve_dtype

        return resolve_dtype(self.shapes.dtype)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()

    def expect(self, ok: bool, text: str) -> bool:
        """One assertion: a PASS/FAIL line, recorded in the current section."""
        print(f"{'PASS' if ok else 'FAIL'} {self.section}: {text}", flush=True)
        entry = self.report["sections"].setdefault(self.section, {})
        entry.setdefault("assertions", []).append({"ok": bool(ok), "text": text})
        if not ok:
            self.failures.append(text)
        return ok

    def write(self) -> None:
        """gpu-check.json, replaced atomically, so a crash or a kill loses nothing that finished."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "gpu-check.json"
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        os.replace(tmp, path)


# -- host syncs ------------------------------------------------------------------------------------
HOST_SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique",
                 "aten.repeat_interleave.Tensor")


class HostSyncs:
    """Counts host syncs inside `watch`-ed calls: CUDA's sync debug mode (warn) on a GPU; on the
    CPU the ATen ops that would sync on a GPU (read back a value or a data-dependent shape)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = 0
        self.examples: list[str] = []

    @contextlib.contextmanager
    def armed(self):
        if self.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    yield
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        else:
            from torch.utils._python_dispatch import TorchDispatchMode

            seen: list[str] = []

            class Ops(TorchDispatchMode):
                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    name = str(func)
                    if name.startswith(HOST_SYNC_OPS):
                        seen.append(name)
                    return func(*args, **(kwargs or {}))

            with Ops():
                yield
            syncs = seen
        self.count += len(syncs)
        self.examples += syncs[: 3 - len(self.examples)]

    @contextlib.contextmanager
    def watch(self, owner, name: str):
        """Arm the counter inside every call of `owner.name` while the block runs."""
        original = getattr(owner, name)
        counter = self

        def watched(*args, **kwargs):
            with counter.armed():
                return original(*args, **kwargs)

        setattr(owner, name, watched)
        try:
            yield self
        finally:
            setattr(owner, name, original)

    def describe(self) -> str:
        return "none" if not self.count else f"{self.count}, e.g. {self.examples[0]}"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- sections --------------------------------------------------------------------------------------
def attention_preflight(check: Check) -> dict:
    from nami_core.model.attention import backend_problem

    dropped = {}
    for name in BACKENDS:
        problem = backend_problem(name, check.device, check.dtype)
        if problem is None:
            if name not in check.usable:
                check.usable.append(name)
        else:
            dropped[name] = problem
        print(f"  {name}: {'usable' if problem is None else 'dropped: ' + problem}", flush=True)
    if check.cuda:
        check.expect("xformers" in check.usable, "xformers (carried as a wheel) is usable"
                     + ("" if "xformers" in check.usable else f": {dropped.get('xformers')}"))
    else:
        check.expect(True, f"usable here: {', '.join(check.usable)} (dry run: the rule that xformers must be "
                           "usable applies on CUDA only)")
    return {"usable": list(check.usable), "dropped": dropped}


def ragged_pass(model, backend: str, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from nami_core.model.attention import apply_backend

    apply_backend(model, backend)
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.float().square().mean().backward()
    return out.detach().float(), [p.grad.detach().float() for p in model.parameters() if p.grad is not None]


def relative(a: torch.Tensor | list, b: torch.Tensor | list) -> float:
    if isinstance(a, list):
        return max(float((x - y).abs().max()) for x, y in zip(a, b)) / max(float(y.abs().max()) for y in b)
    return float((a - b).abs().max() / b.abs().max())


def attention_agreement(check: Check) -> dict:
    from nami_core.model.transformer import NamiTransformer

    width, heads = check.shapes.agreement_width, check.shapes.agreement_heads
    head_dim = width // heads
    torch.manual_seed(0)
    with torch.device(check.device):
        model = NamiTransformer(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=head_dim,
                                num_attention_heads=heads, joint_attention_dim=256, pooled_projection_dim=64,
                                axes_dims_rope=(head_dim // 8 * 2, head_dim // 8 * 3, head_dim // 8 * 3),
                                stage_ends=(2, 3, 4))
    model.to(check.dtype)
    g = torch.Generator().manual_seed(1)
    side = 16
    axis = torch.arange(side, dtype=torch.float32)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), axis, axis, indexing="ij"), -1)
    lengths = (16, 5, 1)
    inputs = dict(hidden_states=torch.randn(3, side * side, 64, generator=g),
                  encoder_hidden_states=torch.randn(3, 16, 256, generator=g),
                  pooled_projections=torch.randn(3, 64, generator=g), timestep=torch.tensor([0.2, 0.5, 0.9]),
                  img_ids=ids.reshape(-1, 3).float(), txt_ids=torch.zeros(16, 3),
                  attention_mask=torch.arange(16)[None, :] < torch.tensor(lengths)[:, None], lengths=lengths)
    inputs = {k: v.to(check.device, check.dtype) if torch.is_tensor(v) and v.is_floating_point() else
              (v.to(check.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    reference = ragged_pass(model, "native", inputs)
    figures = {}
    for backend in check.usable:
        out, grads = ragged_pass(model, backend, inputs)
        forward, backward = relative(out, reference[0]), relative(grads, reference[1])
        figures[backend] = {"forward": forward, "backward": backward}
        check.expect(forward <= AGREEMENT and backward <= AGREEMENT,
                     f"{backend} vs native SDPA on ragged text {lengths}: forward {forward:.1e}, backward {backward:.1e} "
                     f"(<= {AGREEMENT:g} of the largest value)")
    return {"text_lengths": list(lengths), "relative_difference": figures}


def latency_request(check: Check, resolution: int, prompt: int, backends, compiled: bool = False, warmup=None,
                    repeats=None):
    from nami_core.bench.latency import LatencyRequest

    s = check.shapes
    return LatencyRequest(preset=s.preset, device=str(check.device), resolutions=(resolution,), steps=s.steps,
                          modes=("flux-base", "nami"), dtype=s.dtype, attention=tuple(backends), compile=compiled,
                          warmup=s.warmup if warmup is None else warmup, repeats=s.repeats if repeats is None else repeats,
                          cfg=3.0, text_tokens=s.text_slot, prompt_tokens=prompt, count_ops=False)


def check_cuts(check: Check, report: dict, resolution: int, prompt: int, label: str) -> list[dict]:
    rows = []
    bound = report["bound"][str(resolution)]["nami"]
    for backend, by_res in report["reduction_by_attention"].items():
        cut = by_res[str(resolution)]["nami"]
        ms = {r["mode"]: r["ms_median"] for r in report["results"] if r["attention"] == backend}
        rows.append({"attention": backend, "prompt_tokens": prompt, "ms": ms, "reduction": cut, "bound": bound,
                     "of_bound": cut / bound})
        text = (f"{label}{backend}, {prompt}-token prompt: flux-base {ms['flux-base']:,.0f} ms, nami {ms['nami']:,.0f} ms, "
                f"cut {100 * cut:.1f}% = {cut / bound:.2f} of the FLOP bound {100 * bound:.1f}%")
        if check.cuda:
            check.expect(cut >= BOUND_SHARE * bound, f"{text} (>= {BOUND_SHARE})")
        else:
            check.expect(math.isfinite(cut), f"{text} (dry run: the {BOUND_SHARE} x bound rule applies on CUDA only)")
    return rows


def latency_1024(check: Check) -> dict:
    from nami_core.bench.latency import run_latency
    from nami_core.flow.sampler import ProgressiveSampler

    res = check.shapes.resolution
    rows, syncs = [], HostSyncs(check.device)
    with syncs.watch(ProgressiveSampler, "run_window"):
        for prompt in check.shapes.prompts:
            report = run_latency(latency_request(check, res, prompt, check.usable))
            rows += check_cuts(check, report, res, prompt, f"{res}² ")
            free_memory()
    check.expect(syncs.count == 0, f"host syncs inside the sampling stages of {check.shapes.preset}: {syncs.describe()}"
                                   + ("" if check.cuda else " (dry run: ATen ops that would sync on CUDA)"))
    return {"resolution": res, "runs": rows, "host_syncs_in_stages": syncs.count}


def latency_2048(check: Check) -> dict:
    from nami_core.bench.latency import run_latency

    res, prompt = check.shapes.large_resolution, check.shapes.prompts[0]
    report = run_latency(latency_request(check, res, prompt, ["native"], warmup=1, repeats=1))
    rows = check_cuts(check, report, res, prompt, f"{res}² ")
    peak = max((r["peak_mem_bytes"] or 0) for r in report["results"])
    return {"resolution": res, "runs": rows, "peak_mem_bytes": peak or None}


def estimated_bytes(check: Check, report: dict, samples: list[int]) -> int:
    """`nami info --train-memory`'s estimate for one step of `report` (one process) with this split."""
    from nami_core.bench.workload import load_bench_model
    from nami_core.config import FlowConfig
    from nami_core.train.memory import estimate, plan_windows

    bench = load_bench_model(check.shapes.preset, None)
    _, shapes = plan_windows(bench.model, FlowConfig(resolutions=check.shapes.train_stages), bench.pixels_per_token,
                             report["mode"])
    return estimate(bench.model, shapes, samples, dtype=report["dtype"], text_tokens=report["text_tokens"],
                    grad_checkpointing=report["grad_checkpointing"], gpus=1,
                    backend="cuda" if check.cuda else "cpu").peak


def training(check: Check) -> dict:
    from nami_core.bench.throughput import TrainBenchRequest, run_train_bench
    from nami_core.train.loop import TrainingRun

    s = check.shapes
    stage = f"stage {len(s.train_stages)}"
    rows, syncs = [], HostSyncs(check.device)
    with syncs.watch(TrainingRun, "step"):
        for granularity in ("auto", "none"):
            req = TrainBenchRequest(preset=s.preset, stages=s.train_stages, batch_size=s.train_batch, dtype=s.dtype,
                                    attention="auto", grad_checkpointing=granularity, steps=s.train_steps,
                                    warmup=s.train_warmup, device=str(check.device), only=("mix 4:2:1", stage),
                                    text_tokens=s.text_slot if check.cuda else 32)
            report = run_train_bench(req)
            free_memory()
            for r in report["results"]:
                est = estimated_bytes(check, report, r["samples_per_stage"])
                peak = r["peak_mem_bytes"]
                row = {"grad_checkpointing": granularity, "config": r["config"], "samples": r["samples_per_stage"],
                       "step_ms": r["step_ms_median"], "images_per_s": r["images_per_s"], "mfu": r["mfu"],
                       "tflops_per_s": r["tflops_per_s"], "peak_bytes": peak, "estimated_bytes": est,
                       "attention": report["attention"]}
                rows.append(row)
                mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
                text = (f"{s.preset} {r['config']} ({':'.join(map(str, r['samples_per_stage']))}), checkpointing "
                        f"{granularity}, {report['attention']}: {r['step_ms_median']:,.0f} ms a step, "
                        f"{r['images_per_s']:.2f} images/s, MFU {mfu}; ")
                if peak:
                    ratio = peak / est
                    check.expect(abs(ratio - 1) <= MEMORY_TOLERANCE,
                                 text + f"peak {peak / 2**30:.2f} GiB vs estimate {est / 2**30:.2f} GiB ({ratio - 1:+.1%}, "
                                        f"within {MEMORY_TOLERANCE:.0%})")
                else:
                    check.expect(est > 0, text + f"estimate {est / 2**30:.3f} GiB (dry run: no allocator peak on the CPU)")
    check.expect(syncs.count == 0, f"host syncs inside training steps between log steps (EMA on): {syncs.describe()}"
                                   + ("" if check.cuda else " (dry run: ATen ops that would sync on CUDA)"))
    return {"rows": rows, "host_syncs_in_steps": syncs.count}


def fp16_overflow(check: Check) -> dict:
    import nami_core.train.loop as loop_module
    from nami_core.bench.synthetic_data import write_synthetic_data
    from nami_core.bench.workload import load_bench_model
    from nami_core.train.config import TrainConfig
    from nami_core.train.loop import TrainingRun
    from nami_core.train.metrics import MetricsWindow

    bench = load_bench_model("tiny", None)
    stages = (32, 64, 128)
    with tempfile.TemporaryDirectory(prefix="nami-gpu-check-") as tmp:
        data = write_synthetic_data(Path(tmp) / "data", bench, stages, 16, 32, 12)
        settings = TrainConfig(data=data, out=Path(tmp) / "run", stages=stages, preset="tiny", batch_size=4, lr=1e-3,
                               dtype="fp16", steps=10**6, save_every=10**6, log_every=10**6, ema_decay=0.999)
        run = TrainingRun.setup(settings)
        run.resume()
        window = MetricsWindow(len(run.plan), run.device)
        weighted = loop_module.weighted_loss
        try:
            run.step(window)
            scale_before = float(run.guard.scaler.get_scale())
            weights = [p.detach().clone() for p in run.params]
            loop_module.weighted_loss = lambda *a, **k: weighted(*a, **k) * 1e30
            run.step(window)
            loop_module.weighted_loss = weighted
            skipped = float(run.nan_skipped)
            unchanged = all(torch.equal(a, p) for a, p in zip(weights, run.params))
            scale_after = float(run.guard.scaler.get_scale())
            run.step(window)
            trained = not all(torch.equal(a, p) for a, p in zip(weights, run.params))
            finite = all(bool(torch.isfinite(p).all()) for p in run.params)
        finally:
            loop_module.weighted_loss = weighted
            run.batches.close()
    check.expect(skipped == 1 and unchanged, f"the step with the loss x 1e30 is skipped (skipped {skipped:g}, "
                                             f"weights unchanged: {unchanged})")
    check.expect(scale_after < scale_before, f"the loss scale backs off: {scale_before:g} -> {scale_after:g}")
    check.expect(trained and finite, f"the next step trains (weights moved: {trained}, finite: {finite})")
    return {"scale_before": scale_before, "scale_after": scale_after, "skipped": skipped}


@contextlib.contextmanager
def dynamo_settings(dry_run: bool):
    """Fail, instead of falling back to eager, when a block hits the recompile limit; in the dry
    run, compile with dynamo's eager backend (no inductor, no C++ compiler needed)."""
    import torch._dynamo as dynamo

    names = [n for n in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(dynamo.config, n)]
    saved = {n: getattr(dynamo.config, n) for n in names}
    for n in names:
        setattr(dynamo.config, n, True)
    compile_module = torch.nn.Module.compile
    if dry_run:
        torch.nn.Module.compile = lambda self, **kw: compile_module(self, backend="eager", dynamic=kw.get("dynamic"))
    dynamo.reset()
    try:
        yield
    finally:
        torch.nn.Module.compile = compile_module
        for n, v in saved.items():
            setattr(dynamo.config, n, v)


def sampled_latents(check: Check, compiled: bool, prompt: int) -> torch.Tensor:
    """One nami sample (latents) of the bench's model and text, eager or compiled, same noise."""
    from nami_core.bench.latency import _build_runner
    from nami_core.bench.workload import load_bench_model
    from nami_core.flow.plan import FlowPlan
    from nami_core.flow.sampler import initial_noise
    from nami_core.model.attention import apply_backend

    req = latency_request(check, check.shapes.resolution, prompt, ["native"], compiled=compiled)
    bench = load_bench_model(req.preset, None)
    runner = _build_runner(req, bench, check.device, check.dtype)
    apply_backend(runner.denoiser.transformer, "native")  # as run_latency does (the same compiled graphs)
    plan = FlowPlan("nami", bench.flow(check.shapes.resolution), bench.model.stage_ends, bench.pixels_per_token)
    side = check.shapes.resolution // bench.downsample
    g = [torch.Generator().manual_seed(0)]
    noise = initial_noise(1, bench.channels, (side, side), plan, g, check.device)
    cond, uncond = runner.texts()
    with torch.no_grad():
        for _ in range(2 if compiled else 1):  # compiled: the first call compiles and records the graphs
            torch.manual_seed(0)  # the jumps' fresh noise
            latents = runner.sampler(plan)(cond, uncond, noise, plan.stage_steps(req.steps), req.cfg).latents
    return latents.float().clone()


def latency_compiled(check: Check) -> dict:
    import torch._dynamo as dynamo

    from nami_core.bench.latency import run_latency

    res, rows, agreement = check.shapes.resolution, [], {}
    with dynamo_settings(check.dry_run):
        for prompt in check.shapes.prompts:
            difference = relative(sampled_latents(check, True, prompt), sampled_latents(check, False, prompt))
            agreement[prompt] = difference
            check.expect(difference <= COMPILED_TOLERANCE,
                         f"compiled output equals eager, {prompt}-token prompt: {difference:.1e} of the largest value "
                         f"(<= {COMPILED_TOLERANCE:g})")
            report = run_latency(latency_request(check, res, prompt, ["native"], compiled=True))
            rows += check_cuts(check, report, res, prompt, f"{res}² compiled ")
            free_memory()
        graphs = int(dynamo.utils.counters["stats"]["unique_graphs"])
    # hitting the limit raised (dynamo_settings) and failed the section before this line
    check.expect(graphs > 0, f"the blocks compiled ({graphs} graphs) and no recompile limit was hit across the "
                             f"{len(check.shapes.prompts)} prompt lengths"
                             + (" (dry run: dynamo's eager backend)" if check.dry_run else ""))
    return {"runs": rows, "compiled_vs_eager": agreement, "graphs": graphs}


@dataclass
class Section:
    name: str
    estimate_s: float  # on one H100; the dry run's are a tenth
    run: Callable[[Check], dict]


SECTIONS = (
    Section("attention_preflight", 10, attention_preflight),
    Section("attention_agreement", 10, attention_agreement),
    Section("latency_1024", 40, latency_1024),
    Section("latency_2048", 30, latency_2048),
    Section("training", 90, training),
    Section("fp16_overflow", 10, fp16_overflow),
    Section("latency_compiled", 150, latency_compiled),
)


# -- the run ---------------------------------------------------------------------------------------
def versions() -> dict:
    import importlib.metadata

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for dist in ("triton", "diffusers", "transformers", "accelerate", "peft", "safetensors", "xformers", "flash-attn",
                 "numpy", "importlib-metadata"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    try:
        found["nami"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        found["nami"] = None
    return found


def run_section(check: Check, section: Section) -> None:
    check.section = section.name
    entry = check.report["sections"].setdefault(section.name, {})
    estimate = section.estimate_s / (10 if check.dry_run else 1)
    left = check.left()
    if estimate > left:
        entry.update(status="skipped", reason=f"needs about {estimate:.0f} s, {max(left, 0):.0f} s left of the "
                                              f"{check.deadline_s:.0f} s deadline")
        print(f"SKIP {section.name}: {entry['reason']}", flush=True)
        check.write()
        return
    failures_before, started = len(check.failures), time.time()
    try:
        entry.update(section.run(check))
        failed = check.failures[failures_before:]
        entry.update(status="fail" if failed else "pass", reason=failed[0] if failed else None)
    except Deadline:
        entry.update(status="fail", reason=f"stopped at the {check.deadline_s:.0f} s deadline after "
                                           f"{time.time() - started:.0f} s")
        print(f"FAIL {section.name}: {entry['reason']}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a section's failure is its result; the next one runs
        lines = traceback.format_exc().strip().splitlines()
        entry.update(status="fail", reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                     traceback=lines[-12:])
        print(f"FAIL {section.name}: {entry['reason']}", flush=True)
        free_memory()
    entry["seconds"] = round(time.time() - started, 1)
    check.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny shapes")
    parser.add_argument("--deadline-s", type=float, default=480.0, help="from GPU_CHECK_STARTED (gpu-check.sh's start)")
    parser.add_argument("--only", default=None, help="comma-separated section names (default: all)")
    args = parser.parse_args(argv)
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    deadline = started + args.deadline_s - 10  # the last seconds write the report
    from nami_core.bench.gpus import device_label
    from nami_core.runtime import resolve_device

    device = torch.device("cpu") if args.dry_run else resolve_device("cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    check = Check(args.out, device, Shapes.of(args.dry_run), args.dry_run, deadline, args.deadline_s)
    check.report["device"] = device_label(device) + (
        f", {torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB" if device.type == "cuda" else "")
    check.report["versions"] = versions()
    print(f"gpu-check: {check.report['device']}; torch {torch.__version__}; {time.time() - started:.0f} s spent before "
          f"the first section; deadline {args.deadline_s:.0f} s", flush=True)
    check.write()

    def stop(signum, frame):
        raise Deadline()

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(check.left(), 0.01))
    chosen = [s for s in SECTIONS if args.only is None or s.name in args.only.split(",")]
    try:
        for section in chosen:
            run_section(check, section)
    except Deadline:  # between two sections: the rest are skipped below
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for section in chosen:
        entry = check.report["sections"].setdefault(section.name, {})
        if "status" not in entry:
            entry.update(status="skipped", reason=f"the {args.deadline_s:.0f} s deadline passed before it started")
    failed = [name for name, entry in check.report["sections"].items() if entry.get("status") == "fail"]
    for name, entry in check.report["sections"].items():
        if entry.get("status") == "skipped":
            print(f"skipped: {name} ({entry['reason']})")
    check.report["summary"] = "FAIL" if failed else "PASS"
    check.write()
    print("gpu-check: PASS" if not failed else f"gpu-check: FAIL ({', '.join(failed)})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
