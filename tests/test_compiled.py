"""Compiled sampling and training that never fall back to eager silently (model/compiled.py), the
steps replayed from static buffers (model/static_step.py), and the blocks' own forwards
(model/blocks.py) against diffusers' as an independent reference.

Dynamo's eager backend (`NAMI_COMPILE_BACKEND=eager`) keeps its guards, graph splits and recompile
limits without generating code, so these run in seconds; `test_inductor_sampling_matches_eager`
(slow) runs inductor itself."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch.utils._python_dispatch import TorchDispatchMode

import nami_core.model.compiled as compiled_module
from nami_core.bench.latency import LatencyRequest, _build_runner
from nami_core.bench.workload import load_bench_model, random_text
from nami_core.flow.plan import FlowPlan
from nami_core.flow.sampler import initial_noise
from tests.helpers import flux_and_nami, run_cli

PROMPTS = (5, 12, 40)  # real tokens: text buckets 16, 16 and 64 of a 64-token slot
SLOT = 64


@pytest.fixture
def eager_backend(monkeypatch):
    """Dynamo's eager backend; a recompile limit hit fails instead of running eagerly."""
    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "eager")
    dynamo.reset()
    with dynamo.config.patch(fail_on_recompile_limit_hit=True):  # (pytest's monkeypatch deletes config entries)
        yield
    dynamo.reset()


@pytest.fixture(scope="module")
def bench():
    return load_bench_model("tiny", None)  # 2 double + 4 single blocks, stage ends 2/4/6


def runner(bench, compiled: bool):
    req = LatencyRequest(preset="tiny", device="cpu", resolutions=(64,), steps="3", dtype="fp32", compile=compiled,
                         text_tokens=SLOT)
    return _build_runner(req, bench, torch.device("cpu"), torch.float32)


def sample(bench, run, prompt: int, cfg: float) -> torch.Tensor:
    """Latents of one nami sample (1 step per stage) with a `prompt`-token prompt, guided or not."""
    plan = FlowPlan("nami", bench.flow(64), bench.model.stage_ends, bench.pixels_per_token)
    cond = random_text(bench.model, 1, SLOT, "cpu", prompt, seed=prompt)
    uncond = random_text(bench.model, 1, SLOT, "cpu", 1, seed=1) if cfg != 1.0 else None
    noise = initial_noise(1, bench.channels, (8, 8), plan, [torch.Generator().manual_seed(0)], torch.device("cpu"))
    torch.manual_seed(0)  # the jumps' fresh noise
    return run.sampler(plan)(cond, uncond, noise, plan.stage_steps("3"), cfg).latents


# per compile unit: (unit calls of one sample, graphs per text bucket and batch, block kinds)
UNITS = {"block": (2 + 4 + 6, 1 + 2 + 2, 2),  # every block call; stage 1 runs double blocks only
         "stage": (3, 3, 1)}  # one call per step, one graph per stage shape


# the stage unit, not the default, runs with -m slow
@pytest.mark.parametrize("unit", [pytest.param("block"), pytest.param("stage", marks=pytest.mark.slow)])
def test_compiled_sampling_over_prompt_lengths_guidance_and_stages_never_runs_eagerly(eager_backend, bench, unit):
    """3 prompt lengths x guided and unguided x every stage in one process: no recompile limit hit,
    no graph break, no eager call, and the latents of eager sampling."""
    eager, compiled = runner(bench, False), runner(bench, True)
    compiled.denoiser.transformer.compile_blocks(dynamic=False, unit=unit)
    for prompt in PROMPTS:
        for cfg in (3.0, 1.0):
            torch.testing.assert_close(sample(bench, compiled, prompt, cfg), sample(bench, eager, prompt, cfg),
                                       atol=1e-5, rtol=1e-5)
    stats = compiled.denoiser.transformer.compile_stats
    calls, graphs, kinds = UNITS[unit]
    assert (stats.recompile_limit_hits, stats.graph_breaks, stats.eager_calls) == (0, 0, 0)
    assert stats.calls == len(PROMPTS) * 2 * calls
    # one graph per unit and shape: text buckets (16, 64) x batch (1; 2 guided) x stage shapes
    assert stats.graphs == 2 * 2 * graphs and stats.recompiles == stats.graphs - kinds


def test_static_steps_replay_from_buffers_and_equal_the_plain_path(eager_backend, bench):
    """The CUDA-graph path's buffer logic, run eagerly on the CPU: each stage's step copies z, r,
    tau and (for a new prompt) the stage inputs into its buffers and runs on them; its latents are
    those of the plain compiled path, bit for bit, for two prompts of one text bucket."""
    plain, static = runner(bench, True), runner(bench, True)
    static.denoiser.transformer.compile_blocks(dynamic=False, static_steps=True)
    graphs = static.denoiser.transformer.compilation.step_graphs
    for prompt in (5, 12):
        assert torch.equal(sample(bench, static, prompt, 3.0), sample(bench, plain, prompt, 3.0))
    assert len(graphs.steps) == 3  # one per stage: both prompts share the 16-token bucket
    step = next(iter(graphs.steps.values()))
    assert step.graph is None and step.inputs.text.shape[1] == 16  # no capture on the CPU; buffers of the bucket


def test_a_recompile_limit_hit_is_counted_and_said_in_one_line(monkeypatch, bench, capfd):
    """With a limit of 1, the double block's second stage shape exceeds it: dynamo runs it eagerly,
    the stats say so, and dynamo's own multi-line warning is not printed."""
    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "eager")
    monkeypatch.setattr(compiled_module, "RECOMPILE_LIMIT", 1)
    dynamo.reset()
    try:
        run = runner(bench, True)
        sample(bench, run, 12, 3.0)
    finally:
        dynamo.reset()
    stats = run.denoiser.transformer.compile_stats
    assert stats.recompile_limit_hits == 2  # double and single blocks, each at its second shape
    assert 0 < stats.eager_calls < stats.calls
    line = stats.fallback()
    assert line.startswith(f"--compile: {stats.eager_calls} of {stats.calls} compiled calls ran eagerly; "
                           "recompile limit hit 2 time(s)") and "\n" not in line
    assert "torch._dynamo hit config" not in capfd.readouterr().err


def test_sample_compile_prints_one_warning_line_on_fallback(monkeypatch, tiny_model_dir, tmp_path, capsys):
    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "eager")
    monkeypatch.setattr(compiled_module, "RECOMPILE_LIMIT", 1)
    dynamo.reset()
    try:
        code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out",
                                str(tmp_path / "x.png"), "--steps", "1,1,1", "--compile"], capsys)
    finally:
        dynamo.reset()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and warnings[0].startswith("warning: --compile: "), err
    assert "torch._dynamo" not in err  # dynamo's own warning is replaced by that line


def count_ops(run) -> int:
    class Counting(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counting.count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Counting():
        out = run()
    return Counting.count, out


def test_blocks_dispatch_fewer_ops_than_diffusers_and_give_its_results():
    """One shared silu(temb), modulation and gated residuals as one addcmul each, q and k normalised
    and rotated together: fewer ATen ops per block than diffusers' FLUX blocks, same output."""
    from nami_core.model.ragged_attention import rotary_tables

    flux, nami = flux_and_nami(dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                    pooled_projection_dim=20, axes_dims_rope=(4, 6, 6)), (1, 2))
    g = torch.Generator().manual_seed(0)
    image, text, temb = torch.randn(2, 16, 32, generator=g), torch.randn(2, 5, 32, generator=g), torch.randn(2, 32, generator=g)
    ids = torch.cat([torch.zeros(5, 3), torch.stack([torch.zeros(16), torch.arange(16.0) // 4, torch.arange(16.0) % 4], 1)])
    rope = flux.pos_embed(ids)
    tables = rotary_tables(*rope)
    act = torch.nn.functional.silu(temb)
    theirs, (ref_text, ref_image) = count_ops(lambda: flux.transformer_blocks[0](
        hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope))
    ours, (out_text, out_image) = count_ops(lambda: nami.transformer_blocks[0](image, text, act, tables))
    torch.testing.assert_close((out_text, out_image), (ref_text, ref_image), atol=1e-5, rtol=1e-5)
    assert ours <= 0.75 * theirs, (ours, theirs)
    theirs_single, ref = count_ops(lambda: flux.single_transformer_blocks[0](
        hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope))
    ours_single, out = count_ops(lambda: nami.single_transformer_blocks[0](torch.cat([text, image], 1), act, tables))
    torch.testing.assert_close(out, torch.cat(ref, 1), atol=1e-5, rtol=1e-5)
    assert ours_single <= 0.75 * theirs_single, (ours_single, theirs_single)


def test_rotation_equals_diffusers_rotary_embedding():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    from nami_core.model.ragged_attention import rotary_tables, rotate

    ids = torch.stack([torch.arange(7.0), torch.arange(7.0) % 3, torch.arange(7.0) // 3], 1)
    cos, sin = FluxPosEmbed(10000, [4, 6, 6])(ids)
    x = torch.randn(2, 7, 3, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rotate(x, *rotary_tables(cos, sin)), apply_rotary_emb(x, (cos, sin), sequence_dim=1),
                               atol=1e-6, rtol=1e-6)


def test_grad_and_no_grad_paths_of_the_qk_norms_agree():
    """Sampling normalises q and k of every part in one pass, training each with its fused weight."""
    torch.manual_seed(0)
    _, nami = flux_and_nami(dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                 pooled_projection_dim=20, axes_dims_rope=(4, 6, 6)), (2,))
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(16, 3)
    ids[:, 1], ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    x = dict(hidden_states=torch.randn(2, 16, 16, generator=g), encoder_hidden_states=torch.randn(2, 5, 24, generator=g),
             pooled_projections=torch.randn(2, 20, generator=g), timestep=torch.rand(2, generator=g), img_ids=ids,
             txt_ids=torch.zeros(5, 3), attention_mask=torch.arange(5)[None] < torch.tensor([[5], [2]]))
    trained = nami(**x)
    with torch.no_grad():
        sampled = nami(**x)
    torch.testing.assert_close(sampled, trained.detach(), atol=1e-5, rtol=1e-5)


def test_compiled_training_compiles_every_block_call_after_warm_up(tmp_path, monkeypatch):
    """20 steps of `nami train --compile` (dynamo's eager backend) on real captions of varying
    length (shapes scenes, 2 to 12 tokens), 8 samples drawn over 3 stages each step: after 5
    warm-up steps, at least 99% of the block calls run a compiled graph, and no recompile limit is
    hit: sizes turn symbolic once they vary."""
    from nami_core.train.config import TrainConfig
    from nami_core.train.loop import TrainingRun
    from nami_core.train.metrics import MetricsWindow
    from tests.helpers import prepare_train_data

    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "eager")
    root = prepare_train_data(tmp_path)
    settings = TrainConfig(data=root / "data", out=tmp_path / "run", stages=(16, 32, 64), config_file=root / "model.json",
                           steps=20, batch_size=8, lr=1e-3, log_every=10, save_every=1000, compile=True)
    dynamo.reset()
    lengths = set()  # text tokens each stage group runs with (its longest caption)
    try:
        run = TrainingRun.setup(settings)
        run.resume()
        prepare = run.transformer.prepare
        run.transformer.prepare = lambda *a, **k: (lambda inputs: lengths.add(inputs.text.shape[1]) or inputs)(
            prepare(*a, **k))
        window = MetricsWindow(len(run.plan), run.device)
        stats = run.transformer.compile_stats
        for step in range(20):
            if step == 5:
                calls, eager = stats.calls, stats.eager_calls
            run.step(window)
        run.batches.close()
    finally:
        dynamo.reset()
    assert len(lengths) >= 3, lengths
    assert stats.recompile_limit_hits == 0 and stats.graph_breaks == 0
    after = stats.calls - calls
    assert after > 0 and 1 - (stats.eager_calls - eager) / after >= 0.99, stats.report()


def test_train_compile_prints_one_warning_line_on_fallback(monkeypatch, tmp_path, capsys):
    from tests.helpers import prepare_train_data, train_cli_args

    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "eager")
    monkeypatch.setattr(compiled_module, "RECOMPILE_LIMIT", 1)
    root = prepare_train_data(tmp_path)
    dynamo.reset()
    try:
        code, _, err = run_cli(train_cli_args(root, tmp_path / "run", "--steps", "3", "--compile"), capsys)
    finally:
        dynamo.reset()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and warnings[0].startswith("warning: --compile: "), err
    assert "recompile limit hit" in warnings[0] and "torch._dynamo" not in err


def test_sampling_imports_only_what_it_uses_and_lora_still_works(tiny_model_dir, tmp_path):
    """`nami sample` (model loading, sampling, PNG) imports neither peft (diffusers' modules are
    imported with peft hidden, model/peft_loading.py) nor diffusers' pipelines, transformer models,
    UNets or loaders (sampling_pipeline.py; docs/benchmarks.md, "Cold start"). LoRA, asked for
    afterwards in the same process, imports them, completes diffusers' modules and works (an
    adapter is added and fused)."""
    import subprocess
    import sys

    script = f"""
import sys
from nami_cli.main import run
from nami_core.modeldir import load_pipeline
try:
    run(["sample", "a red circle", "--model", {str(tiny_model_dir)!r}, "--out", {str(tmp_path / "out")!r},
         "--steps", "1,1,1"])
except SystemExit as exc:
    assert not exc.code, exc.code
unused = ("peft", "diffusers.pipelines", "diffusers.models.transformers", "diffusers.models.unets", "diffusers.loaders")
print("sample", sorted({{p for p in unused for m in sys.modules if m == p or m.startswith(p + ".")}}))
import torch
from nami_core.model.lora import add_lora, lora_config
pipe = load_pipeline({str(tiny_model_dir)!r}, torch.device("cpu"), torch.float32, diffusers_pipeline=True)
add_lora(pipe.transformer, lora_config(2))
pipe.fuse_lora(components=["transformer"])
import diffusers.loaders.lora_base as lora_base, peft.tuners.tuners_utils as tuners
print("lora", lora_base.BaseTunerLayer is tuners.BaseTunerLayer, type(pipe).__name__, type(pipe.transformer).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("sample", "lora"))]
    assert result.returncode == 0 and lines == ["sample []", "lora True NamiPipeline NamiTransformer"], \
        result.stdout[-2000:] + result.stderr[-3000:]


@pytest.mark.parametrize("command", [
    ["latency", "--resolutions", "64", "--steps", "3", "--warmup", "1", "--repeats", "1", "--text-tokens", "16"],
    ["train", "--mode", "flux-base", "--stages", "32,64,128", "--batch-size", "4", "--steps", "2", "--warmup", "1",
     "--text-tokens", "8"],
])
def test_bench_compile_reports_what_compiled_in_json_and_table(eager_backend, tmp_path, capsys, command):
    import json

    out = tmp_path / "out.json"
    code, stdout, err = run_cli(["bench", command[0], "--preset", "tiny", "--device", "cpu", *command[1:], "--compile",
                                 "--json", str(out)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    stats = report["compile"]
    assert set(compiled_module.REPORTED) <= set(stats) and stats["graphs"] > 0 and stats["calls"] > 0
    assert (stats["recompile_limit_hits"], stats["graph_breaks"], stats["eager_calls"]) == (0, 0, 0)
    assert "--compile: graphs compiled" in stdout and "eager calls" in stdout
    if command[0] == "latency":  # ATen ops are not counted inside compiled code on the CPU
        assert all(r["ops_per_step"] is None for r in report["results"])


def test_compiling_another_model_resets_the_caches_of_the_first(eager_backend, bench):
    """dynamo keeps compiled graphs on code objects, not on models: without a reset the second
    model's graphs would join the first one's (3 entries more on the double block's code, counting
    toward its recompile limit)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from nami_core.model.blocks import DoubleStreamBlock

    def entries() -> int:
        return len(_debug_get_cache_entry_list(DoubleStreamBlock.forward.__code__))

    first, second = runner(bench, True), runner(bench, False)
    sample(bench, first, 12, 3.0)
    assert entries() == 3  # stages 1, 2 and 3 (each runs the double blocks)
    second.denoiser.transformer.compile_blocks(dynamic=False)
    sample(bench, second, 12, 3.0)
    assert entries() == 3 and second.denoiser.transformer.compile_stats.graphs == 5


def test_a_compile_backend_torch_does_not_know_is_one_error_naming_the_variable(monkeypatch):
    from nami_core.errors import NamiError

    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "bogus")
    with pytest.raises(NamiError, match=r"^NAMI_COMPILE_BACKEND=bogus names no torch.compile backend; known: .*inductor"):
        compiled_module.default_backend()
    monkeypatch.setenv(compiled_module.BACKEND_VARIABLE, "aot_eager")
    assert compiled_module.default_backend() == "aot_eager"
    monkeypatch.delenv(compiled_module.BACKEND_VARIABLE)
    assert compiled_module.default_backend() == "inductor"
