"""The GPU acceptance check of nami's sampling path, in one run that prints one table.

1. Latency: nami-2b (random weights) at 1024² and 2048², bf16, batch 1, 30 steps (10/10/10 or 30),
   guidance 3 with the empty negative prompt, a 12-token prompt in a 256-token slot; flux-base,
   flow-only and nami interleaved; per installed attention backend, eager, and compiled (CUDA
   graphs) for `--compile-backends`; ms, reduction against flux-base, FLOP bound, fraction of the
   bound, peak memory and kernel launches per step per stage.
2. Backends agree: one image of a tiny random model in the public release's layout, converted,
   sampled with guidance and prompts of different lengths (so rows are ragged), through every
   installed backend against native SDPA (max abs difference), for text_padding "mask" and "none".
3. No host sync inside a stage: the tiny model samples under `torch.cuda.set_sync_debug_mode("error")`
   armed inside every stage.
4. Training: `nami train`'s own step (`nami bench train`) on nami-2b at 256/512/1024, bf16, compiled,
   batch 4: the 1024² stage alone and the 4:2:1 mix, with `--grad-checkpointing none` and `auto`,
   20 timed steps each: step ms, images/s, TFLOP/s, MFU and peak memory.
5. Beyond the release: a tiny model with a random LoRA adapter sampled at 64x128 in every mode under
   the sync guard, and one nami-2b `--lora 16` training step at 1024² (frozen weights in bf16) with its
   peak memory beside `nami info --train-memory --lora 16`'s estimate.

Configurations that would pass `--budget-s` are skipped and listed. The JSON of everything goes to
`--out`. On the CPU, `--device cpu --preset tiny --resolutions 64 --steps 3` runs the same code as a
smoke test (tests/test_gpu_check_script.py).

    python examples/gpu_check.py --out gpu-check            # on a CUDA machine
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # nami_core, and tests.release_layout for the tiny release


def installed_backends(device: torch.device) -> list[str]:
    found = ["native"]
    if device.type == "cuda":
        found += [name for name, module in (("xformers", "xformers"), ("flash", "flash_attn"))
                  if importlib.util.find_spec(module) is not None]
    return found


@contextlib.contextmanager
def sync_guard(device: torch.device):
    """Arm CUDA's sync debug mode inside every stage window (no-op off CUDA)."""
    from nami_core.flow.sampler import ProgressiveSampler

    if device.type != "cuda":
        yield
        return
    run_window = ProgressiveSampler.run_window

    def guarded(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return run_window(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    ProgressiveSampler.run_window = guarded
    try:
        yield
    finally:
        ProgressiveSampler.run_window = run_window


def tiny_release(folder: Path) -> Path:
    from nami_core.interop.public_layout import convert_public_layout
    from tests.release_layout import write_release

    convert_public_layout(write_release(folder / "release"), folder / "model")
    return folder / "model"


def backend_agreement(device: torch.device, backends: list[str], dtype: torch.dtype) -> list[dict]:
    """Max abs difference of one image per backend against native SDPA, for both text paddings."""
    from nami_core.model.attention import apply_backend
    from nami_core.modeldir import load_pipeline

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_release(Path(tmp))
        for padding in ("mask", "none"):
            pipe = load_pipeline(model, device, dtype)
            pipe.transformer.register_to_config(text_padding=padding)
            pipe.text_encoder.register_to_config(sequence_attention_mask=padding == "mask")
            images = {}
            for backend in backends:
                apply_backend(pipe.transformer, backend, device.type)
                with sync_guard(device):
                    images[backend] = pipe("a red circle left of a blue square", negative_prompt="一只猫",
                                           steps=(3, 3, 2), cfg=3.0, seed=1, output_type="np").images
            for backend in backends:
                diff = float(abs(images[backend] - images["native"]).max())
                rows.append({"text_padding": padding, "attention": backend, "max_abs_diff_vs_native": diff,
                             "no_sync_in_stages": True})
    return rows


def lora_and_sizes(device: torch.device, dtype: torch.dtype) -> list[dict]:
    """A tiny native model with a random LoRA adapter (peft) sampled at 2:1 (64x128) in every mode,
    under the sync guard: image shape, and the adapter's effect (max abs difference at scale 1 vs 0)."""
    from nami_core.model.lora import add_lora, lora_config
    from nami_core.modeldir import load_pipeline
    from tests.helpers import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_pipeline().save_pretrained(tmp)
        pipe = load_pipeline(tmp, device, dtype)  # as `nami sample` loads a model
    params = add_lora(pipe.transformer, lora_config(4, 8, "attn+mlp"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * 0.3)
    rows = []
    for mode in ("flux-base", "flow-only", "nami"):
        kw = {"negative_prompt": "", "steps": (2, 2, 2), "cfg": 3.0, "seed": 1, "mode": mode, "height": 64,
              "width": 128, "output_type": "np"}
        with sync_guard(device):
            adapted = pipe("a red circle", **kw).images
        pipe.transformer.set_adapters(["default"], [0.0])
        plain = pipe("a red circle", **kw).images
        pipe.transformer.set_adapters(["default"], [1.0])
        rows.append({"mode": mode, "shape": list(adapted.shape), "lora_effect": float(abs(adapted - plain).max()),
                     "no_sync_in_stages": True})
    return rows


def lora_step_memory(args, device) -> dict:
    """One `nami train --lora 16` step of `--preset` on its last stage window, batch `--train-batch`,
    frozen weights in `--dtype`, autocast: peak memory against `nami info --train-memory --lora`'s estimate."""
    from types import SimpleNamespace

    from nami_core.bench.workload import load_bench_model
    from nami_core.config import FlowConfig
    from nami_core.flow.plan import FlowPlan
    from nami_core.model.transformer import NamiTransformer
    from nami_core.text.embeddings import TextEmbeddings
    from nami_core.train.adapters import attach_lora, trainable
    from nami_core.train.batches import StageGroup
    from nami_core.train.memory import estimate, plan_windows
    from nami_core.train.staged_loss import StagedObjective, stage_losses, weighted_loss

    bench = load_bench_model(args.preset, None)
    model, flow = bench.model, FlowConfig(resolutions=args.train_stages)
    torch.manual_seed(0)
    with torch.device(device):
        net = NamiTransformer.from_model_config(model)
    attach_lora(net, SimpleNamespace(lora=16, lora_alpha=None, lora_targets="attn", dtype=args.dtype, seed=0))
    params = trainable(net)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    plan = FlowPlan("nami", flow, model.stage_ends, bench.pixels_per_token)
    last, b, text_tokens = len(plan) - 1, args.train_batch, 256
    side = plan[last].resolution // bench.downsample
    channels = model.in_channels // bench.patch**2
    text = TextEmbeddings(torch.randn(b, text_tokens, model.text_dim, device=device),
                          torch.ones(b, text_tokens, dtype=torch.bool, device=device),
                          torch.randn(b, model.pooled_dim, device=device), (text_tokens,) * b)
    group = StageGroup(last, torch.randn(b, channels, side, side, device=device), text,
                       torch.randn(b, channels, side, side, device=device), torch.rand(b, device=device))
    objective = StagedObjective(net, plan, bench.patch)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)

    def step() -> None:
        with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
            losses = stage_losses(objective, [group], plan, model.prediction)
        weighted_loss([group], losses, [1.0] * len(plan), b).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    _, shapes = plan_windows(model, flow, bench.pixels_per_token, "nami")
    samples = [b if k == last else 0 for k in range(len(shapes))]
    est = estimate(model, shapes, samples, dtype=args.dtype, text_tokens=text_tokens, ema=False,
                   trainable=sum(p.numel() for p in params), backend="cuda" if device.type == "cuda" else "cpu")
    return {"preset": args.preset, "resolution": plan[last].resolution, "batch": b, "dtype": args.dtype,
            "lora_rank": 16, "trainable_params": sum(p.numel() for p in params), "step_s": seconds,
            "peak_mib": None if peak is None else peak / 2**20, "estimated_mib": est.peak / 2**20}


def latency(args, device, backends) -> tuple[list[dict], list[str]]:
    from nami_core.bench.latency import LatencyRequest, run_latency

    runs, skipped = [], []
    plan = [(b, False) for b in backends] + [(b, True) for b in args.compile_backends if b in backends]
    start = time.monotonic()
    for backend, compiled in plan:
        spent = time.monotonic() - start
        if spent > args.budget_s:
            skipped.append(f"{backend}{' compiled' if compiled else ''} (budget spent: {spent:.0f} s)")
            continue
        req = LatencyRequest(preset=args.preset, device=args.device, resolutions=args.resolutions, steps=args.steps,
                             dtype=args.dtype, attention=(backend,), compile=compiled, warmup=args.warmup,
                             repeats=args.repeats, cfg=3.0, text_tokens=256, prompt_tokens=12)
        report = run_latency(req)
        report["compiled"] = compiled
        runs.append(report)
        print(f"[{time.monotonic() - start:6.0f} s] {backend}{' compiled' if compiled else ''} done", flush=True)
    return runs, skipped


def training(args, device, skipped: list[str], start: float) -> list[dict]:
    from nami_core.bench.throughput import TrainBenchRequest, run_train_bench

    reports = []
    for granularity in args.train_checkpointing:
        spent = time.monotonic() - start
        if spent > args.budget_s:
            skipped.append(f"training, checkpointing {granularity} (budget spent: {spent:.0f} s)")
            continue
        req = TrainBenchRequest(preset=args.preset, stages=args.train_stages, dtype=args.dtype, device=args.device,
                                batch_size=args.train_batch, grad_checkpointing=granularity, compile=args.train_compile,
                                steps=args.train_steps, warmup=3, only=(f"stage {len(args.train_stages)}", "mix 4:2:1"))
        reports.append(run_train_bench(req))
        print(f"[{time.monotonic() - start:6.0f} s] training, checkpointing {granularity} done", flush=True)
    return reports


def estimated_mib(args, report: dict, samples: list[int]) -> float:
    """`nami info --train-memory`'s estimate (eager, DDP on one GPU) for one step of `report`."""
    from nami_core.bench.workload import load_bench_model
    from nami_core.config import FlowConfig
    from nami_core.train.memory import estimate, plan_windows

    bench = load_bench_model(args.preset, None)
    _, shapes = plan_windows(bench.model, FlowConfig(resolutions=args.train_stages), bench.pixels_per_token,
                             report["mode"])
    memory = estimate(bench.model, shapes, samples, dtype=report["dtype"], text_tokens=report["text_tokens"],
                      grad_checkpointing=report["grad_checkpointing"])
    return memory.peak / 2**20


def training_table(args, reports: list[dict]) -> str:
    head = (f"{'checkpointing':>13} {'config':>11} {'samples':>8} {'step ms':>9} {'images/s':>9} {'TFLOP/s':>8} "
            f"{'MFU':>6} {'peak MiB':>9} {'est. MiB':>9}")
    lines = [head, "-" * len(head)]
    for report in reports:
        for r in report["results"]:
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            peak = f"{r['peak_mem_bytes'] / 2**20:,.0f}" if r["peak_mem_bytes"] else "-"
            est = estimated_mib(args, report, list(r["samples_per_stage"]))
            lines.append(f"{report['grad_checkpointing']:>13} {r['config']:>11} "
                         f"{':'.join(map(str, r['samples_per_stage'])):>8} {r['step_ms_median']:>9,.1f} "
                         f"{r['images_per_s']:>9,.2f} {r['tflops_per_s']:>8,.1f} {mfu:>6} {peak:>9} {est:>9,.0f}")
    lines.append("est. MiB: the eager estimate of `nami info --train-memory` (compiled steps may need less).")
    return "\n".join(lines)


def table(runs: list[dict]) -> str:
    head = (f"{'res':>5} {'attention':>9} {'compiled':>8} {'mode':>9} {'ms':>10} {'reduction':>9} {'bound':>7} "
            f"{'of bound':>8} {'peak MiB':>9}  launches or ops per step, by stage")
    lines = [head, "-" * len(head)]
    for report in runs:
        for r in report["results"]:
            res = str(r["resolution"])
            red = report["reduction"].get(res, {}).get(r["mode"])
            bound = report["bound"].get(res, {}).get(r["mode"])
            frac = f"{red / bound:.2f}" if red is not None and bound else "-"
            peak = f"{r['peak_mem_bytes'] / 2**20:,.0f}" if r["peak_mem_bytes"] else "-"
            ops = "/".join(f"{n:.0f}" for n in r["ops_per_step"]) if r["ops_per_step"] else "-"
            lines.append(f"{res:>5} {r['attention']:>9} {str(report['compiled']):>8} {r['mode']:>9} "
                         f"{r['ms_median']:>10,.1f} {'-' if red is None else f'{100 * red:.1f}%':>9} "
                         f"{'-' if bound is None else f'{100 * bound:.1f}%':>7} {frac:>8} {peak:>9}  {ops}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="nami-2b")
    parser.add_argument("--resolutions", default="1024,2048")
    parser.add_argument("--steps", default="30")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile-backends", default="native", help="backends also timed compiled; 'none' for none")
    parser.add_argument("--budget-s", type=float, default=360.0, help="runs that would start after this are skipped")
    parser.add_argument("--train-stages", default="256,512,1024")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-checkpointing", default="none,auto", help="granularities timed; 'skip' for none")
    parser.add_argument("--train-compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--lora-step", action=argparse.BooleanOptionalAction, default=True,
                        help="time one LoRA training step of --preset at the last stage, with its peak memory")
    args = parser.parse_args(argv)
    args.resolutions = tuple(int(r) for r in args.resolutions.split(","))
    args.train_stages = tuple(int(r) for r in args.train_stages.split(","))
    args.compile_backends = [] if args.compile_backends == "none" else args.compile_backends.split(",")
    args.train_checkpointing = [] if args.train_checkpointing == "skip" else args.train_checkpointing.split(",")

    from nami_core.bench.gpus import device_label
    from nami_core.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    backends = installed_backends(device)
    print(f"{device_label(device)}; torch {torch.__version__}; attention backends: {', '.join(backends)}", flush=True)
    start = time.monotonic()
    agreement = backend_agreement(device, backends, resolve_dtype(args.dtype))
    runs, skipped = latency(args, device, backends)
    train_reports = training(args, device, skipped, start)
    beyond = lora_and_sizes(device, resolve_dtype(args.dtype))
    lora_step = None
    if args.lora_step and time.monotonic() - start <= args.budget_s:
        lora_step = lora_step_memory(args, device)
    elif args.lora_step:
        skipped.append("LoRA training step (budget spent)")
    print(table(runs))
    if train_reports:
        print(training_table(args, train_reports))
    for row in agreement:
        print(f"tiny release, text_padding {row['text_padding']}: {row['attention']} vs native max abs diff "
              f"{row['max_abs_diff_vs_native']:.2e}; no host sync inside a stage")
    for row in beyond:
        print(f"tiny model + LoRA at 64x128, {row['mode']}: image {row['shape']}, adapter changes pixels by up to "
              f"{row['lora_effect']:.3f}; no host sync inside a stage")
    if lora_step is not None:
        peak = "-" if lora_step["peak_mib"] is None else f"{lora_step['peak_mib']:,.0f}"
        print(f"{lora_step['preset']} LoRA rank 16 step at {lora_step['resolution']}², batch {lora_step['batch']}, "
              f"{lora_step['dtype']}: {lora_step['step_s'] * 1000:,.0f} ms, peak {peak} MiB, "
              f"estimate {lora_step['estimated_mib']:,.0f} MiB (no EMA)")
    for item in skipped:
        print(f"skipped: {item}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(
        {"device": device_label(device), "torch": torch.__version__, "backends": backends, "latency": runs,
         "agreement": agreement, "training": train_reports, "lora_and_sizes": beyond, "lora_step": lora_step,
         "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
