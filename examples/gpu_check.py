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
    parser.add_argument("--budget-s", type=float, default=330.0, help="latency runs that would start after this are skipped")
    args = parser.parse_args(argv)
    args.resolutions = tuple(int(r) for r in args.resolutions.split(","))
    args.compile_backends = [] if args.compile_backends == "none" else args.compile_backends.split(",")

    from nami_core.bench.gpus import device_label
    from nami_core.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    backends = installed_backends(device)
    print(f"{device_label(device)}; torch {torch.__version__}; attention backends: {', '.join(backends)}", flush=True)
    agreement = backend_agreement(device, backends, resolve_dtype(args.dtype))
    runs, skipped = latency(args, device, backends)
    print(table(runs))
    for row in agreement:
        print(f"tiny release, text_padding {row['text_padding']}: {row['attention']} vs native max abs diff "
              f"{row['max_abs_diff_vs_native']:.2e}; no host sync inside a stage")
    for item in skipped:
        print(f"skipped: {item}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(
        {"device": device_label(device), "torch": torch.__version__, "backends": backends, "latency": runs,
         "agreement": agreement, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
