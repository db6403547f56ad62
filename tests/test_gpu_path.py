"""Defects on the CUDA path, shown on the CPU: attention backends that are installed but cannot
run, xformers' block-diagonal mask, the q/k RMS norms' dtypes under autocast, timesteps in
float32, the EMA without a host sync, LoRA's attn+mlp targets, `--dtype auto` and accelerate's
mixed precision, ranks agreeing before refusing non-finite weights, fp16 steps whose norm
overflows, and compiled blocks within the recompile limit. (DDP leaving unused parameters alone:
tests/test_train_step_path.py.)"""

from __future__ import annotations

import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nami_core.model.attention as attention
import nami_core.model.ragged_attention as ragged_module
from nami_core.errors import ConfigError, NamiError
from nami_core.model.ragged_attention import RaggedText
from nami_core.model.transformer import NamiTransformer
from tests.helpers import prepare_train_data, run_cli, train_cli_args

SMALL = dict(in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=12, pooled_projection_dim=10, axes_dims_rope=(4, 6, 6), stage_ends=(1, 2, 3))

# A stand-in xformers package: `memory_efficient_attention` over a block-diagonal mask (SDPA per
# block) or, "broken", what a build for another torch raises; `BlockDiagonalMask.from_seqlens`
# records its calls.
FAKE_XFORMERS = {
    "xformers/__init__.py": "",
    "xformers/ops/__init__.py": """
        import torch
        BROKEN = {broken}
        def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
            if BROKEN:
                raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\\n"
                                          "xFormers was built for PyTorch 2.10.0 with CUDA 12.8, you have 2.11.0+cu130")
            seqlens = attn_bias.seqlens if attn_bias is not None else [q.shape[1]]
            outs, start = [], 0
            for n in seqlens:
                part = [t[:, start:start + n].transpose(1, 2) for t in (q, k, v)]
                outs.append(torch.nn.functional.scaled_dot_product_attention(*part).transpose(1, 2))
                start += n
            return torch.cat(outs, dim=1)
        """,
    "xformers/ops/fmha/__init__.py": "",
    "xformers/ops/fmha/attn_bias.py": """
        CALLS = []
        class BlockDiagonalMask:
            def __init__(self, seqlens):
                self.seqlens = seqlens
            @classmethod
            def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
                CALLS.append((list(q_seqlen), device))
                return cls(list(q_seqlen))
        """,
    "xformers-{version}.dist-info/METADATA": "Metadata-Version: 2.1\nName: xformers\nVersion: {version}\n",
}


@pytest.fixture
def fake_xformers(tmp_path, monkeypatch):
    """install(broken=False, version="0.0.35"): put a stand-in xformers on sys.path; returns its attn_bias module."""
    def install(broken: bool = False, version: str = "0.0.35"):
        root = tmp_path / f"site-{int(broken)}-{version}"
        for name, text in FAKE_XFORMERS.items():
            path = root / name.format(version=version)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).format(broken=broken, version=version))
        for module in [m for m in sys.modules if m == "xformers" or m.startswith("xformers.")]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.syspath_prepend(str(root))
        attention.probe.cache_clear()
        import xformers.ops.fmha.attn_bias as attn_bias

        return attn_bias

    yield install
    attention.probe.cache_clear()


def kernels_on_the_cpu(monkeypatch):
    """Let the xformers/flash checks run on the CPU, as they would on a CUDA device."""
    monkeypatch.setattr(attention, "KERNEL_DEVICE_TYPES", ("cuda", "cpu"))


def test_an_installed_but_broken_xformers_is_found_by_running_it(fake_xformers, monkeypatch):
    """The probe runs the kernel (forward and backward, ragged rows) instead of trusting the import."""
    kernels_on_the_cpu(monkeypatch)
    fake_xformers(broken=True)
    problem = attention.backend_problem("xformers", "cpu", torch.float32)
    assert problem.startswith("fails on a small test batch: NotImplementedError: No operator found")
    # auto falls back to native SDPA with one note, once per process
    notes = []
    monkeypatch.setattr(attention, "_NOTED", set())
    assert attention.resolve_backend("auto", "cpu", torch.float32, notes.append) == "native"
    assert attention.resolve_backend("auto", "cpu", torch.float32, notes.append) == "native"
    assert notes == [f"attention auto: xformers is installed but {problem}; using native PyTorch SDPA"]
    # an explicit choice is one error line
    with pytest.raises(NamiError) as error:
        attention.resolve_backend("xformers", "cpu", torch.float32)
    assert str(error.value) == f"attention 'xformers' {problem}" and "\n" not in str(error.value)


def test_a_working_xformers_is_chosen_by_auto(fake_xformers, monkeypatch):
    kernels_on_the_cpu(monkeypatch)
    fake_xformers()
    import diffusers.models.attention_dispatch as dispatch
    import xformers.ops

    monkeypatch.setattr(dispatch, "_CAN_USE_XFORMERS_ATTN", True)  # diffusers looked when it was imported
    monkeypatch.setattr(dispatch, "xops", xformers.ops, raising=False)
    assert attention.backend_problem("xformers", "cpu", torch.float32) is None
    assert attention.resolve_backend("auto", "cpu", torch.float32) == "xformers"


def test_an_xformers_older_than_diffusers_needs_is_refused(fake_xformers, monkeypatch):
    kernels_on_the_cpu(monkeypatch)
    fake_xformers(version="0.0.20")
    needed = attention.required_versions()["xformers"]
    with pytest.raises(NamiError, match=f"xformers 0.0.20 is older than the {needed} diffusers needs"):
        attention.resolve_backend("xformers", "cpu", torch.bfloat16)


def test_flash_in_float32_is_refused_before_any_work(tmp_path, monkeypatch):
    kernels_on_the_cpu(monkeypatch)
    monkeypatch.setattr(attention, "_installed", lambda module: True)
    monkeypatch.setattr(attention, "_version", lambda dist: "2.7.4")
    with pytest.raises(NamiError) as error:
        attention.resolve_backend("flash", "cpu", torch.float32)
    assert str(error.value) == ("attention 'flash' runs in bf16 or fp16 only, not float32 "
                                "(use --dtype bf16 or --attention native)")


def test_train_refuses_an_unusable_backend_before_any_work(fake_xformers, tmp_path, monkeypatch, capsys):
    kernels_on_the_cpu(monkeypatch)
    fake_xformers(broken=True)
    root = prepare_train_data(tmp_path)
    out = tmp_path / "run"
    capsys.readouterr()
    code, _, err = run_cli(train_cli_args(root, out, "--steps", "1", "--attention", "xformers"), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: attention 'xformers' fails on a small test batch")
    assert not out.exists()


def ragged_forward(model: NamiTransformer, dtype=torch.float32, autocast: bool = False):
    """One forward and backward of `model` on a batch of 2 with 5 and 2 real text tokens (ragged)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.zeros(4, 3)
    ids[:, 2] = torch.arange(4)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2])[:, None]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(hidden_states=torch.randn(2, 4, 8, generator=generator).to(dtype),
                    encoder_hidden_states=torch.randn(2, 5, 12, generator=generator).to(dtype),
                    pooled_projections=torch.randn(2, 10, generator=generator).to(dtype),
                    timestep=torch.tensor([0.3, 0.7]), img_ids=ids, txt_ids=torch.zeros(5, 3), attention_mask=mask)
    out.float().square().sum().backward()
    return out


def test_xformers_mask_is_built_once_per_packing_on_the_rows_device(fake_xformers, monkeypatch):
    attn_bias = fake_xformers()
    torch.manual_seed(0)
    model = NamiTransformer(**SMALL)
    monkeypatch.setattr(ragged_module.RaggedAttnProcessor, "_attention_backend", "xformers", raising=False)
    ragged_forward(model)
    # 3 blocks, forward and backward, one packing: one mask, made on the device of the rows
    assert attn_bias.CALLS == [([5 + 4, 2 + 4], torch.device("cpu"))]
    packing = RaggedText((5, 2), 5).packing(4, "cpu")
    assert packing.xformers_bias() is packing.xformers_bias()


def test_qk_norms_see_one_dtype_under_autocast(monkeypatch):
    """bf16 autocast over fp32 weights (`nami train --dtype bf16`): the q/k RMS norms get input and
    weight of one dtype (float32), so the fused kernel runs and nothing warns."""
    seen = []
    rms_norm = torch.nn.functional.rms_norm

    def spy(x, shape, weight=None, eps=None):
        seen.append((x.dtype, None if weight is None else weight.dtype))
        return rms_norm(x, shape, weight, eps)

    monkeypatch.setattr(torch.nn.functional, "rms_norm", spy)
    torch.manual_seed(0)
    model = NamiTransformer(**SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ragged_forward(model, autocast=True)
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]


def test_timesteps_are_embedded_in_float32():
    """A bf16 model embeds tau x 1000 computed in float32 (in bf16, 707.1 would be 708)."""
    torch.manual_seed(0)
    model = NamiTransformer(**SMALL).to(torch.bfloat16)
    seen = []
    time_proj = model.time_text_embed.time_proj
    time_proj.register_forward_hook(lambda module, args, out: seen.append((args[0].clone(), out.dtype)))
    ids = torch.zeros(4, 3)
    with torch.no_grad():
        model(hidden_states=torch.randn(1, 4, 8, dtype=torch.bfloat16),
              encoder_hidden_states=torch.randn(1, 3, 12, dtype=torch.bfloat16),
              pooled_projections=torch.randn(1, 10, dtype=torch.bfloat16), timestep=torch.tensor([0.7071]),
              img_ids=ids, txt_ids=torch.zeros(3, 3))
    (value, out_dtype), = seen
    assert value.dtype == torch.float32 and torch.equal(value, torch.tensor([0.7071]) * 1000)
    assert out_dtype == torch.float32 and float(torch.tensor(707.1, dtype=torch.bfloat16)) == 708.0


def test_ema_update_reads_nothing_back_to_the_host():
    """A device-side gate must not go through the Scalar overload (`_local_scalar_dense`, a sync on CUDA)."""
    from nami_core.train.ema import EMA

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    params = [torch.randn(3, 4), torch.randn(5)]
    ema = EMA(params, 0.9)
    ema.update(params)
    moved = [p + 1 for p in params]
    with Ops() as ops:
        ema.update(moved, torch.tensor(1.0))
        ema.update(moved, torch.tensor(0.0))
    assert ops.names and not [n for n in ops.names if "_local_scalar_dense" in n or "item" in n]
    expected = [p + (m - p) * (1 - ema.decay_at(2)) for p, m in zip(params, moved)]
    for shadow, want in zip(ema.shadow_params, expected):
        torch.testing.assert_close(shadow, want)


def test_lora_attn_mlp_leaves_the_output_head_alone():
    from nami_core.model.lora import add_lora, lora_config

    torch.manual_seed(0)
    model = NamiTransformer(**SMALL)
    add_lora(model, lora_config(4, None, "attn+mlp"))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert "proj_out" not in adapted and not hasattr(model.proj_out, "lora_A")
    assert {"single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.proj_out",
            "transformer_blocks.0.ff.net.2", "transformer_blocks.0.attn.to_q"} <= adapted


def test_dtype_auto_follows_accelerate_then_the_device(tmp_path, monkeypatch):
    import accelerate.commands.config as accelerate_config

    from nami_core.train.precision import run_dtype

    monkeypatch.setattr(accelerate_config, "default_config_file", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert (run_dtype("auto", "cuda"), run_dtype("auto", "cpu"), run_dtype("fp16", "cuda")) == ("bf16", "fp32", "fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default names no dtype
    assert (run_dtype("auto", "cuda"), run_dtype("fp32", "cuda")) == ("bf16", "fp32")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch --mixed_precision fp16
    assert run_dtype("auto", "cpu") == run_dtype("fp16", "cpu") == "fp16"
    with pytest.raises(ConfigError) as error:
        run_dtype("bf16", "cuda")
    assert str(error.value) == ("--dtype bf16 contradicts accelerate's mixed precision fp16 from "
                                "ACCELERATE_MIXED_PRECISION=fp16 (accelerate launch --mixed_precision); "
                                "give one of them (or --dtype auto to follow accelerate)")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    config = tmp_path / "default_config.yaml"  # what `accelerate config` writes
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: bf16\nnum_processes: 1\n")
    monkeypatch.setattr(accelerate_config, "default_config_file", str(config))
    assert run_dtype("auto", "cpu") == "bf16"
    with pytest.raises(ConfigError, match=r"contradicts accelerate's mixed precision bf16 from `accelerate config`"):
        run_dtype("fp32", "cpu")


def test_train_and_bench_train_resolve_dtype_and_attention_alike(tmp_path, monkeypatch):
    """`nami bench train` hands dtype and attention to `nami train`'s setup and reports what it resolved."""
    from nami_core.bench.throughput import TrainBenchRequest, run_train_bench
    from nami_core.train.loop import TrainingRun

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    seen = []
    setup = TrainingRun.setup.__func__

    def spy(cls, settings, note=None):
        run = setup(cls, settings, note)
        seen.append((settings.dtype, settings.attention, run.settings.dtype, run.attention))
        return run

    monkeypatch.setattr(TrainingRun, "setup", classmethod(spy))
    report = run_train_bench(TrainBenchRequest(preset="tiny", stages=(32, 64, 128), batch_size=2, steps=1, warmup=0,
                                               device="cpu", only=("stage 1",)))
    assert seen == [("auto", "auto", "fp32", "native")]
    assert (report["dtype"], report["attention"]) == ("fp32", "native")


def _refuse_on_two_ranks(rank: int, store: str, results: str) -> None:
    """Rank 0 holds a non-finite gathered state, rank 1 none (FSDP gathers on rank 0 only)."""
    import torch.distributed as dist

    from nami_core.train.loop import TrainingRun

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def reduce(tensor, reduction):
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    accelerator = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)
    run = SimpleNamespace(accelerator=accelerator, run_dir=Path(results).parent, step_count=7,
                          nan_skipped=torch.zeros(()))
    state = {"w": torch.tensor([1.0, float("nan")])} if rank == 0 else {}
    try:
        TrainingRun._refuse_non_finite(run, state, "weights")
        outcome = "returned"
        dist.barrier()  # where export waits for rank 0
    except NamiError as exc:
        outcome = f"refused: {exc}"
    Path(f"{results}.{rank}").write_text(outcome)


def test_every_rank_refuses_non_finite_weights_found_on_one(tmp_path):
    import torch.multiprocessing as mp

    context = mp.start_processes(_refuse_on_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "result")),
                                 nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank is still waiting: the ranks did not agree")
    outcomes = [(tmp_path / f"result.{rank}").read_text() for rank in range(2)]
    assert outcomes[0].startswith("refused: training ended at step 7 with non-finite weights (1 of 1 tensors, e.g. w)")
    assert outcomes[1].startswith("refused: training ended at step 7 with non-finite weights (found on another process)")


def test_fp16_step_with_finite_gradients_but_an_infinite_norm_is_skipped(tmp_path, monkeypatch):
    """The loss x 1e30 under fp16: the gradients stay finite, their norm overflows. The step must be
    skipped by the scaler too (weights unchanged, scale backed off), not taken with gradients clipped to zero."""
    import nami_core.train.loop as loop_module
    from nami_core.train.config import TrainConfig
    from nami_core.train.loop import TrainingRun
    from nami_core.train.metrics import MetricsWindow

    root = prepare_train_data(tmp_path)
    settings = TrainConfig(data=root / "data", out=tmp_path / "run", stages=(16, 32, 64), config_file=root / "model.json",
                           batch_size=4, lr=1e-3, dtype="fp16", steps=10, log_every=100, save_every=100)
    run = TrainingRun.setup(settings)
    run.resume()
    window = MetricsWindow(len(run.plan))
    run.step(window)
    weights = [p.detach().clone() for p in run.params]
    scale = float(run.guard.scaler.get_scale())
    weighted = loop_module.weighted_loss
    monkeypatch.setattr(loop_module, "weighted_loss", lambda *a, **k: weighted(*a, **k) * 1e30)
    run.step(window)
    assert float(run.nan_skipped) == 1 and all(torch.equal(a, p) for a, p in zip(weights, run.params))
    assert float(run.guard.scaler.get_scale()) == scale / 2
    monkeypatch.setattr(loop_module, "weighted_loss", weighted)
    run.step(window)
    assert not all(torch.equal(a, p) for a, p in zip(weights, run.params))
    run.batches.close()


def test_compiled_blocks_compile_once_per_shape(monkeypatch):
    """Regionally compiled blocks (dynamo's eager backend here) sample the 3 stages for two prompt
    lengths within the recompile limit (8): one graph per block kind and shape, 6, as the ragged
    masks are made before the blocks run and the first single-stream block gets the strides of the
    others (before: 12 and more). Compiled output equals eager."""
    import torch._dynamo as dynamo

    from nami_core.bench.latency import LatencyRequest, _build_runner
    from nami_core.bench.workload import load_bench_model
    from nami_core.flow.plan import FlowPlan
    from nami_core.flow.sampler import initial_noise

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: compile_module(self, backend="eager", dynamic=kw.get("dynamic")))
    monkeypatch.setattr(dynamo.config, "fail_on_recompile_limit_hit", True)
    dynamo.reset()
    bench = load_bench_model("tiny", None)
    plan = FlowPlan("nami", bench.flow(64), bench.model.stage_ends, bench.pixels_per_token)

    def sample(compiled: bool, prompt: int) -> torch.Tensor:
        req = LatencyRequest(preset="tiny", device="cpu", resolutions=(64,), steps="3", dtype="fp32", compile=compiled,
                             text_tokens=64, prompt_tokens=prompt)
        runner = _build_runner(req, bench, torch.device("cpu"), torch.float32)
        noise = initial_noise(1, bench.channels, (8, 8), plan, [torch.Generator().manual_seed(0)], torch.device("cpu"))
        cond, uncond = runner.texts()
        torch.manual_seed(0)
        return runner.sampler(plan)(cond, uncond, noise, plan.stage_steps("3"), 3.0).latents

    try:
        for prompt in (12, 64):
            torch.testing.assert_close(sample(True, prompt), sample(False, prompt), atol=1e-5, rtol=1e-5)
    finally:
        dynamo.reset()
