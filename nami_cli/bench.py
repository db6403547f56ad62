"""`nami bench latency` and `nami bench train`: measured speed beside the FLOP bound."""

from __future__ import annotations

from pathlib import Path

import typer

from nami_core.bench.requests import LatencyRequest, TrainBenchRequest
from nami_core.config import MODES, TEXT_PADDINGS

from . import options as o
from .build import APP_SETTINGS
from .output import print_table

app = typer.Typer(
    help="Benchmarks: sampling latency per mode (paper Fig. 2 / Fig. 10) and training throughput.",
    **APP_SETTINGS,
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
        from nami_core.bench.plot import check_plot_path

        check_plot_path(plot)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _tflops(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _ops(counts: list[float] | None) -> str:
    return "-" if counts is None else "/".join(f"{n:,.0f}" for n in counts)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@app.command("latency")
@o.defaults_from(LatencyRequest)
def latency(
    preset: o.Preset = None,
    model: o.model("A saved model directory: its configs (the weights stay random).", o.MODEL) = None,
    modes: o.own(str, "--modes", metavar=o.choices(MODES) + "[,...]", panel=o.MODEL,
        help="Modes, run interleaved in this order.") = None,
    resolutions: o.own(str, "--resolutions", help="Final resolutions; 3 stages run at (res/4, res/2, res).",
        panel=o.WORKLOAD) = None,
    steps: o.EulerSteps = None,
    cfg: o.Guidance = None,
    text_tokens: o.text_tokens("Text slot: random text tokens padded to this length, as a tokenizer pads.",
                               o.WORKLOAD) = None,
    prompt_tokens: o.PromptTokens = None,
    text_padding: o.own(str, "--text-padding", metavar=o.choices(TEXT_PADDINGS), panel=o.WORKLOAD,
        help="How attention treats the padded text slot; none attends to all of it, as the public release does.") = None,
    batch_size: o.batch_size("Images per sampler call; times are reported per image.", o.WORKLOAD) = None,
    batch: o.OldBatchSize = None,
    include_codec: o.own(bool, "--include-codec", help="Also time decoding (presets: a random FLUX-sized VAE).",
        panel=o.WORKLOAD) = None,
    include_text: o.own(bool, "--include-text", help="Also time the text encoder (needs --model).", panel=o.WORKLOAD) = None,
    seed: o.seed("Seed of the random weights and noise.", o.WORKLOAD) = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    attention: o.AttentionList = None,
    compile_: o.Compile = None,
    warmup: o.warmup("Untimed rounds (every mode once) before timing (0: none).", o.TIMING) = None,
    repeats: o.own(int, "--repeats", help="Timed rounds; median, min and max are over these.", panel=o.TIMING) = None,
    count_ops: o.own(bool, "--count-ops/--no-count-ops", panel=o.TIMING,
        help="Count kernel launches (CUDA) or ATen ops (CPU) per step and stage with the profiler.") = None,
    json_path: o.json_file("Write the JSON report to this file.", o.OUTPUT) = None,
    plot: o.plot("Write a latency-vs-resolution plot (.png, .pdf, .svg).", o.OUTPUT) = None,
) -> None:
    """Time the transformer sampling loop of flux-base, flow-only and nami, beside the FLOP bound.

    Weights are random. Only the progressive sampler is timed unless --include-text / --include-codec. By default it runs the path sampling takes: a 12-token prompt padded to 256 tokens, guidance 3 with the empty negative prompt.

    Modes run interleaved (round r: flux-base, flow-only, nami), so machine drift hits them alike.

    reduction = 1 - ms(mode) / ms(flux-base); bound = 1 - FLOPs(mode) / FLOPs(flux-base) (the FLOP model of `nami info`).

    JSON keys: device, dtype, attention (the first backend), attentions, text_tokens (processed per row), text_slot, cfg, op_counter, results [{resolution, mode, attention, ms_median, ms_min, ms_max, ms_per_stage, flops, peak_mem_bytes, ops_per_step}], reduction and bound {"<res>": {flow-only, nami}} (reduction for the first backend), reduction_by_attention {"<backend>": {"<res>": {...}}}, compile (with --compile: {graphs, recompiles, recompile_limit_hits, graph_breaks, eager_calls, calls, cuda_graphs, cuda_graph_failures}, else null). Times are ms per image, FLOPs per image, ops per Euler step per stage.

    Examples:

      nami bench latency --preset nami-2b --device cuda --dtype bf16 --json lat.json --plot lat.png

      nami bench latency --preset nami-2b --device cuda --compile --resolutions 1024 --attention native,xformers,flash

      nami bench latency --preset cpu-bench --device cpu --resolutions 256,512 --json cpu.json
    """
    from .aliases import renamed

    req = LatencyRequest(**o.given(
        preset=preset, model_dir=model, resolutions=resolutions, steps=steps,
        batch_size=renamed(batch_size, batch, "--batch-size", "--batch"), modes=modes, dtype=dtype,
        attention=attention, compile=compile_, device=device, warmup=warmup, repeats=repeats, cfg=cfg,
        text_tokens=text_tokens, prompt_tokens=prompt_tokens, text_padding=text_padding, count_ops=count_ops,
        include_codec=include_codec, include_text=include_text, seed=seed,
    ))
    check_report_paths(json_path, plot, {"--model": req.model_dir})
    run_latency(req, json_path, plot)


def run_latency(req: LatencyRequest, json_path: Path | None, plot: Path | None) -> None:
    """Time with a progress bar on stderr; write the report and plot; print the table (imports torch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.bench.latency import interleaved_schedule, run_latency as measure

    from .progress import console

    runs = len(interleaved_schedule(req.modes, req.warmup, req.repeats)) * len(req.resolutions) * len(req.attention)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("building the model", total=runs)

        def on_run(res: int, mode: str, rnd: int, timed: bool) -> None:
            progress.update(task, advance=1, description=f"{res}px {mode}" + ("" if timed else " (warm-up)"))

        report = measure(req, on_run)
    if json_path is not None:
        _write_json(json_path, report)
    if plot is not None:
        from nami_core.bench.plot import plot_latency

        plot_latency(report, plot)
    _latency_table(report, req.steps)
    _compile_table(report)


def _compile_table(report: dict) -> None:
    """What --compile compiled and what ran eagerly (JSON "compile"), when it was asked for."""
    stats = report.get("compile")
    if stats is None:
        return
    from rich.table import Table

    table = Table(title="--compile: graphs compiled, and calls of a compiled unit that ran eagerly")
    columns = ("graphs", "recompiles", "recompile_limit_hits", "graph_breaks", "eager_calls", "calls", "cuda_graphs")
    for col in columns:
        table.add_column(col.replace("_", " "), justify="right", no_wrap=True)
    table.add_row(*(f"{stats[col]:,}" for col in columns))
    print_table(table)


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
            *([_ops(r["ops_per_step"])] if ops else []),
        )
    print_table(table)


@app.command("train")
@o.defaults_from(TrainBenchRequest)
def train(
    preset: o.Preset = None,
    mode: o.Mode = None,
    stages: o.Stages = None,
    stage_mix: o.StageMix = None,
    ratio: o.OldRatio = None,
    batch_size: o.batch_size("Samples per optimizer step.", o.WORKLOAD) = None,
    batch: o.OldBatchSize = None,
    text_tokens: o.text_tokens("Text slot of each synthetic caption.", o.WORKLOAD) = None,
    prompt_tokens: o.PromptTokens = None,
    realistic: o.own(bool, "--realistic/--no-realistic", panel=o.WORKLOAD,
        help="Time `nami train`'s own step (data, EMA, DDP); --no-realistic: the network alone, an upper bound.") = None,
    seed: o.seed("Seed of the random weights and data.", o.WORKLOAD) = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    attention: o.Attention = None,
    grad_checkpointing: o.GradCheckpointing = None,
    compile_: o.Compile = None,
    steps: o.optimizer_steps("Timed optimizer steps per configuration.", o.TIMING) = None,
    warmup: o.warmup("Untimed steps before timing each configuration (0: none).", o.TIMING) = None,
    json_path: o.json_file("Write the JSON report to this file.", o.OUTPUT) = None,
) -> None:
    """Training throughput of `nami train`'s step on synthetic data: each stage alone, then the stage mix.

    A timed step is `nami train`'s: batches drawn ahead from a prepared-data folder of random latents, the staged loss, backward, AdamW and the EMA (under DDP when launched with several processes); each step splits the batch by the mix exactly. With --no-realistic only the network's forward, backward and AdamW are timed.

    Reports images/s, tokens/s, TFLOP/s (training FLOPs = 3x the forward FLOPs of the FLOP model) and MFU against the GPU's peak dense bf16/fp16 TFLOP/s (known GPUs, bf16/fp16 only; null on the CPU); with --compile, what compiled and what ran eagerly (JSON "compile", as `nami bench latency`).

    Examples:

      nami bench train --preset nami-2b --device cuda --batch-size 4 --grad-checkpointing auto --compile --json train.json

      nami bench train --preset nami-2b --device cuda --stages 256,512,1024 --stage-mix 4:2:1 --compile

      nami bench train --preset tiny --device cpu --batch-size 8 --steps 5
    """
    from .aliases import renamed

    req = TrainBenchRequest(**o.given(
        preset=preset, stages=stages, mode=mode, stage_mix=renamed(stage_mix, ratio, "--stage-mix", "--ratio"),
        batch_size=renamed(batch_size, batch, "--batch-size", "--batch"), dtype=dtype, attention=attention,
        grad_checkpointing=grad_checkpointing, compile=compile_, steps=steps, warmup=warmup, device=device,
        text_tokens=text_tokens, prompt_tokens=prompt_tokens, realistic=realistic, seed=seed,
    ))
    check_report_paths(json_path, None, {})
    run_train(req, json_path)


def run_train(req: TrainBenchRequest, json_path: Path | None) -> None:
    """Time with a progress bar on stderr; write the report; print the table (imports torch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.bench.throughput import run_train_bench

    from .progress import console

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
    _compile_table(report)


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
    print_table(table)
