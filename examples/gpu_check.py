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
    print(table(runs))
    if train_reports:
        print(training_table(args, train_reports))
    for row in agreement:
        print(f"tiny release, text_padding {row['text_padding']}: {row['attention']} vs native max abs diff "
              f"{row['max_abs_diff_vs_native']:.2e}; no host sync inside a stage")
    for item in skipped:
        print(f"skipped: {item}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(
        {"device": device_label(device), "torch": torch.__version__, "backends": backends, "latency": runs,
         "agreement": agreement, "training": train_reports, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
