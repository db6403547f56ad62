"""`nami bench latency` and `nami bench train`: measured speed beside the FLOP bound."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Benchmarks: sampling latency per mode (paper Fig. 2 / Fig. 10) and training throughput.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _write_json(path: Path, report: dict) -> None:
    from nami_core.files import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)


def check_report_paths(json_path: Path | None, plot: Path | None, inputs: dict) -> None:
    """--json and --plot by the output policy, before any model is built: a file of the right kind
    (`--json .` or `--plot x.txt` is one error line), never one of the inputs."""
    from nami_core.output_targets import check_out_file

    if json_path is not None:
        check_out_file(json_path, (".json",), "JSON report", inputs, flag="--json", make_folder=True)
    if plot is not None:
        check_out_file(plot, (".png", ".pdf", ".svg"), "plot", inputs, flag="--plot", make_folder=True)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _print(table) -> None:
    """Print a rich table; off a terminal (pipes, logs) use a fixed width wide enough for the columns."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def _tflops(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@app.command("latency")
def latency(
    preset: Optional[str] = typer.Option(None, "--preset", help="Model shape: nami-2b (default) | nami-0.6b | flux-base-2b | tiny | cpu-bench."),
    model: Optional[str] = typer.Option(None, "--model", help="A saved model directory: its configs (weights stay random)."),
    resolutions: str = typer.Option("256,512,1024,2048", "--resolutions", help="Final resolutions; stages are (res/4, res/2, res) for 3 stages."),
    steps: str = typer.Option("30", "--steps", help="Total Euler steps (30 = 10,10,10 per stage; flux-base runs the total), or per stage, e.g. 10,10,10."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per sampler call (default 1); times are reported per image."),
    batch: Optional[int] = typer.Option(None, "--batch", hidden=True, help="Old name of --batch-size."),
    modes: str = typer.Option("flux-base,flow-only,nami", "--modes", help="Modes, run interleaved in this order."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32."),
    attention: str = typer.Option("auto", "--attention", help="Backends, each timed in turn: auto | native | xformers | flash, e.g. native,xformers,flash."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile every transformer block, CUDA graphs on a GPU (compiles during warm-up)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed rounds (every mode once) before timing."),
    repeats: int = typer.Option(3, "--repeats", help="Timed rounds; median, min and max are over these."),
    cfg: float = typer.Option(3.0, "--cfg", help="Guidance scale, with the empty negative prompt; 1 = off (one forward per step)."),
    text_tokens: int = typer.Option(256, "--text-tokens", help="Text slot: random text tokens padded to this length, as a tokenizer pads."),
    prompt_tokens: int = typer.Option(12, "--prompt-tokens", help="Real tokens of the prompt in the slot (the negative prompt has 1)."),
    text_padding: Optional[str] = typer.Option(None, "--text-padding", help="mask (cut to the longest prompt) | none (attend to the whole slot, as the public release). Default: the model's."),
    count_ops: bool = typer.Option(True, "--count-ops/--no-count-ops", help="Count kernel launches (CUDA) or ATen ops (CPU) per step and stage with the profiler."),
    include_codec: bool = typer.Option(False, "--include-codec", help="Also time decoding (presets: a random FLUX-sized VAE)."),
    include_text: bool = typer.Option(False, "--include-text", help="Also time the text encoder (needs --model)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency-vs-resolution plot (.png, .pdf, .svg)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and noise."),
) -> None:
    """Time the transformer sampling loop of flux-base, flow-only and nami, beside the FLOP bound.

    Weights are random. Only the progressive sampler is timed unless --include-text / --include-codec. By default it runs the path sampling takes: a 12-token prompt padded to 256 tokens, guidance 3 with the empty negative prompt.

    Modes run interleaved (round r: flux-base, flow-only, nami), so machine drift hits them alike.

    reduction = 1 - ms(mode) / ms(flux-base); bound = 1 - FLOPs(mode) / FLOPs(flux-base) (the FLOP model of `nami info`).

    JSON keys: device, dtype, attention (the first backend), attentions, text_tokens (processed per row), text_slot, cfg, op_counter, results [{resolution, mode, attention, ms_median, ms_min, ms_max, ms_per_stage, flops, peak_mem_bytes, ops_per_step}], reduction and bound {"<res>": {flow-only, nami}} (reduction for the first backend), reduction_by_attention {"<backend>": {"<res>": {...}}}. Times are ms per image, FLOPs per image, ops per Euler step per stage.

    Examples:

      nami bench latency --preset nami-2b --device cuda --dtype bf16 --json lat.json --plot lat.png

      nami bench latency --preset nami-2b --device cuda --compile --resolutions 1024 --attention native,xformers,flash

      nami bench latency --preset cpu-bench --device cpu --resolutions 256,512 --json cpu.json
    """
    from nami_core.bench.latency import LatencyRequest, interleaved_schedule, run_latency
    from nami_core.config import parse_int_list

    from .aliases import renamed
    from .progress import console

    if plot is not None:
        from nami_core.bench.plot import check_plot_path

        check_plot_path(plot)
    check_report_paths(json_path, plot, {"--model": model})
    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    backend_list = tuple(b.strip() for b in attention.split(",") if b.strip())
    req = LatencyRequest(
        preset=preset, model_dir=model, resolutions=parse_int_list(resolutions, "--resolutions"), steps=steps,
        batch_size=renamed(batch_size, batch, "--batch-size", "--batch", 1), modes=mode_list, dtype=dtype,
        attention=backend_list, compile=compile_, device=device, warmup=warmup, repeats=repeats, cfg=cfg,
        text_tokens=text_tokens, prompt_tokens=prompt_tokens, text_padding=text_padding, count_ops=count_ops,
        include_codec=include_codec, include_text=include_text, seed=seed,
    )
    req.validate()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    runs = len(interleaved_schedule(req.modes, req.warmup, req.repeats)) * len(req.resolutions) * len(req.attention)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("building the model", total=runs)

        def on_run(res: int, mode: str, rnd: int, timed: bool) -> None:
            progress.update(task, advance=1, description=f"{res}px {mode}" + ("" if timed else " (warm-up)"))

        report = run_latency(req, on_run)
    if json_path is not None:
        _write_json(json_path, report)
    if plot is not None:
        from nami_core.bench.plot import plot_latency

        plot_latency(report, plot)
    _latency_table(report, req.steps)


# optional result keys (--include-text, --include-codec) and their table columns
EXTRA_COLUMNS = {"ms_text": "text ms", "ms_codec": "decode ms"}


def _latency_table(report: dict, steps: str) -> None:
    from rich.table import Table

    table = Table(title=f"sampling latency per image ({steps} steps, cfg {report['cfg']:g}, {report['text_tokens']} of "
                        f"{report['text_slot']} text tokens): {report['device']}, {report['dtype']}")
    extras = {key: name for key, name in EXTRA_COLUMNS.items() if key in report["results"][0]}
    ops = report["op_counter"]
    columns = ["res", "attention", "mode", "ms/image", "ms per stage", *extras.values(), "reduction", "FLOP bound",
               "of bound", "peak MiB"] + ([f"{ops}/step"] if ops else [])
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        res = str(r["resolution"])
        reduction = report["reduction_by_attention"].get(r["attention"], {}).get(res, {}).get(r["mode"])
        bound = report["bound"].get(res, {}).get(r["mode"])
        fraction = None if reduction is None or not bound else reduction / bound
        table.add_row(
            res, r["attention"], r["mode"], f"{r['ms_median']:,.1f}", "/".join(f"{s:,.0f}" for s in r["ms_per_stage"]),
            *(f"{r[k]:,.1f}" for k in extras),
            _pct(reduction), _pct(bound), "-" if fraction is None else f"{fraction:.2f}", _mib(r["peak_mem_bytes"]),
            *(["/".join(f"{n:,.0f}" for n in r["ops_per_step"])] if ops else []),
        )
    _print(table)


@app.command("train")
def train(
    preset: Optional[str] = typer.Option(None, "--preset", help="Model shape: nami-2b (default) | nami-0.6b | tiny | cpu-bench."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Stage resolutions, e.g. 256,512,1024 (default: the preset's)."),
    mode: str = typer.Option("nami", "--mode", help="nami | flow-only | flux-base (one full-resolution stage)."),
    ratio: str = typer.Option("4:2:1", "--ratio", help="Stage sampling ratio of the mixed batch, low to high resolution."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per optimizer step (default 8)."),
    batch: Optional[int] = typer.Option(None, "--batch", hidden=True, help="Old name of --batch-size."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32 (autocast over fp32 weights)."),
    attention: str = typer.Option("auto", "--attention", help="auto | native | xformers | flash."),
    grad_checkpointing: str = typer.Option("none", "--grad-checkpointing", help="none | full (also the bare flag) | last-stage | auto, as `nami train`."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile every transformer block."),
    steps: int = typer.Option(10, "--steps", help="Timed optimizer steps per configuration."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed steps before timing each configuration."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    text_tokens: int = typer.Option(256, "--text-tokens", help="Text slot of each synthetic caption."),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="Real tokens of each caption in the slot (default 12, at most the slot)."),
    realistic: bool = typer.Option(True, "--realistic/--no-realistic", help="Time `nami train`'s own step (data, EMA, DDP); --no-realistic: the network alone, an upper bound."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report to this file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and data."),
) -> None:
    """Training throughput of `nami train`'s step on synthetic data: each stage alone, then the ratio mix.

    A timed step is `nami train`'s: batches drawn ahead from a prepared-data folder of random latents, the staged loss, backward, AdamW and the EMA (under DDP when launched with several processes); each step splits the batch by the mix exactly. With --no-realistic only the network's forward, backward and AdamW are timed.

    Reports images/s, tokens/s, TFLOP/s (training FLOPs = 3x the forward FLOPs of the FLOP model) and MFU against the GPU's peak dense bf16/fp16 TFLOP/s (known GPUs, bf16/fp16 only; null on the CPU).

    Examples:

      nami bench train --preset nami-2b --device cuda --batch-size 4 --grad-checkpointing auto --compile --json train.json

      nami bench train --preset nami-2b --device cuda --stages 256,512,1024 --ratio 4:2:1 --compile

      nami bench train --preset tiny --device cpu --batch-size 8 --steps 5
    """
    from nami_core.bench.throughput import TrainBenchRequest, run_train_bench
    from nami_core.config import parse_int_list

    from .aliases import renamed
    from .progress import console

    check_report_paths(json_path, None, {})

    req = TrainBenchRequest(
        preset=preset, stages=parse_int_list(stages, "--stages") if stages else None, mode=mode, ratio=ratio,
        batch_size=renamed(batch_size, batch, "--batch-size", "--batch", 8), dtype=dtype, attention=attention,
        grad_checkpointing=grad_checkpointing, compile=compile_, steps=steps, warmup=warmup, device=device,
        text_tokens=text_tokens, prompt_tokens=prompt_tokens, realistic=realistic, seed=seed,
    )
    req.validate()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("building the model", total=None)

        def on_step(name: str, i: int, total: int) -> None:
            progress.update(task, completed=i + 1, total=total,
                            description=name + (" (warm-up)" if i < req.warmup else ""))

        report = run_train_bench(req, on_step)
    if json_path is not None:
        _write_json(json_path, report)
    _train_table(report)


def _train_table(report: dict) -> None:
    from rich.table import Table

    peak = "-" if report["peak_tflops"] is None else f"{report['peak_tflops']:g}"
    table = Table(title=f"training throughput, {report['model']} {report['mode']}, batch {report['batch']}: "
                        f"{report['device']}, {report['dtype']}, peak {peak} TFLOP/s")
    for col in ("config", "samples/stage", "step ms", "images/s", "tokens/s", "TFLOP/s", "MFU", "peak MiB"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        table.add_row(
            r["config"], ":".join(map(str, r["samples_per_stage"])), f"{r['step_ms_median']:,.1f}",
            f"{r['images_per_s']:,.2f}", f"{r['tokens_per_s']:,.0f}", _tflops(r["tflops_per_s"]),
            _pct(r["mfu"]), _mib(r["peak_mem_bytes"]),
        )
    _print(table)
