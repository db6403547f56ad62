"""`nami info --train-memory`: the estimate of nami_core/train/memory.py against a real training step.

How the step is measured (`StoragePeak`): a `TorchDispatchMode` sees every op the step runs (the
forward, autograd's backward, clipping, AdamW, the EMA update). Each storage an op returns is
counted once, with its full size, from then until it is freed: a `weakref.finalize` on the
storage's Python object, which torch keeps alive exactly as long as the storage itself. The
storages alive when the step starts (parameters, gradients, AdamW state, the EMA copy) are
registered by hand, and so are the batch's tensors. The peak is the largest sum, also per phase
(forward, backward, optimizer). Not seen: scratch memory a kernel allocates and frees inside one op
(inside the attention kernel, say) and the allocator's caching and fragmentation.

The step is the one `TrainingRun.step` takes, without accelerate: a `StagedObjective` (with the
loop's `CheckpointPolicy`) under autocast, `stage_losses`, `weighted_loss`, backward,
`clip_grad_norm_`, fused AdamW, `EMA.update`. In a one-process run the gradients are freed after
the step (`set_to_none=True`, as `GuardedStep` does); as one rank of a DDP run (`gpus=2`) they are
zeroed, not freed, because they are views of DDP's persistent buckets. The estimate is asked for
the same process count. A first, unmeasured step creates the AdamW state.

The estimate models CUDA. On the CPU autocast leaves LayerNorm in the low precision (CUDA runs it
in fp32: `AT_FORALL_FP32` in aten/src/ATen/autocast_mode.h lists layer_norm); `cuda_like` makes the
CPU model's LayerNorms do what CUDA's do, so that a CPU step keeps what a GPU step keeps; the plain
CPU step is checked against the estimate's `backend="cpu"`. The q and k RMS norms need nothing:
`qk_rms_norm` runs them as one fused fp32 kernel on every device.

nami-2b at 256/512/1024, batch 4 on one GPU, bf16, `--grad-checkpointing auto` (EMA on, 256 text
tokens; stage mix 2:4:1, the costliest phase of the default schedule once the last window is
recomputed, split 1 / 2 / 1): peak 41.67 GiB, at the start of backward = fixed 39.44 less the
gradients 7.89, which a one-process run frees between steps (parameters 7.89, AdamW 15.78, EMA 7.89)
+ the gradients of the output head and one block + autocast weight copies of the blocks kept +
activations 5.51 (0.55 + 4.51 + 0.45 by window) + backward's transient. As one rank of DDP the
gradients stay (DDP's buckets) and the peak is 49.40 GiB, at the end of the forward. The costliest
random draw puts all 4 samples into the 512 px window: 44.65 GiB (52.18 under DDP). Without
checkpointing that draw is all 4 at 1024 px: 78.16 GiB, which an 80 GB GPU holds.
Fixed memory: nami-2b has 2,117,643,840 parameters (count_parameters; "2.118B"). Parameters,
gradients and AdamW state are 4 + 4 + 8 = 16 bytes each: 16 x 2,117,643,840 = 33,882,301,440 bytes
= 31.56 GiB. With the EMA, on by default, 20 bytes each: 42,352,876,800 bytes = 39.44 GiB.
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nami_core.config import FlowConfig, ModelConfig, get_preset
from nami_core.flow.plan import FlowPlan
from nami_core.info import describe_preset
from nami_core.model.params import count_parameters
from nami_core.model.transformer import NamiTransformer
from nami_core.text.embeddings import TextEmbeddings
from nami_core.train import memory
from nami_core.train.batches import StageGroup
from nami_core.train.ema import EMA
from nami_core.train.staged_loss import (
    CheckpointPolicy,
    StagedObjective,
    stage_losses,
    weighted_loss,
)
from tests.helpers import run_cli, tiny_model_config

MIB = 2**20
GIB = 2**30
TOLERANCE = 0.20  # |estimate / measurement - 1| for the peak of a step


class StoragePeak(TorchDispatchMode):
    """Bytes of live tensor storages: registered ones plus every op output, until freed (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.phase: str | None = None
        self.phases: dict[str, int] = {}

    def track(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = id(storage)  # the storage's Python object lives exactly as long as the storage
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        weakref.finalize(storage, self._free, key)
        self._note()

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def _note(self) -> None:
        self.peak = max(self.peak, self.current)
        if self.phase is not None:
            self.phases[self.phase] = max(self.phases.get(self.phase, 0), self.current)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self._note()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self.track(tensor)
        return out


def cuda_like(net: torch.nn.Module) -> None:
    """Make the LayerNorms of `net` run in fp32 under autocast, as on CUDA (module doc)."""
    for module in net.modules():
        if isinstance(module, torch.nn.LayerNorm):
            def forward(x, m=module):
                if torch.is_autocast_enabled("cpu") and x.dtype in (torch.bfloat16, torch.float16):
                    x = x.float()
                return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
            module.forward = forward


def measure_step(model: ModelConfig, resolutions, samples, dtype: str, granularity: str, text_tokens: int = 16,
                 patch: int = 2, cuda: bool = True, seed: int = 0, lora: int | None = None, gpus: int = 1):
    """(StoragePeak of one measured training step, the estimate for it). Grids are latent grids of
    `model.in_channels / patch**2` channels whose side is the window's resolution."""
    torch.manual_seed(seed)
    net = NamiTransformer.from_model_config(model)
    if cuda:
        cuda_like(net)
    plan = FlowPlan("nami", FlowConfig(resolutions=tuple(resolutions)), model.stage_ends, patch)
    policy = CheckpointPolicy(granularity, model.stage_ends, len(plan) - 1)
    objective = StagedObjective(net, plan, patch, policy)
    trainable = None
    if lora:  # as `nami train --lora`: the adapter trains, the rest is frozen in the run's dtype
        from types import SimpleNamespace

        from nami_core.train.adapters import attach_lora

        attach_lora(net, SimpleNamespace(lora=lora, lora_alpha=None, lora_targets="attn", dtype=dtype, seed=seed))
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    params = [p for p in net.parameters() if p.requires_grad]
    frozen = [p for p in net.parameters() if not p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ema = EMA(params, 0.9999)
    channels = model.in_channels // patch**2
    half = dtype != "fp32"

    def forward(inputs):  # accelerate wraps the prepared module's forward in autocast
        with torch.autocast("cpu", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16, enabled=half):
            return objective(inputs)

    def groups():
        out = []
        for k, b in enumerate(samples):
            if b:
                side = plan[k].resolution
                text = TextEmbeddings(torch.randn(b, text_tokens, model.text_dim),
                                      torch.ones(b, text_tokens, dtype=torch.bool),
                                      torch.randn(b, model.pooled_dim), (text_tokens,) * b)
                out.append(StageGroup(k, torch.randn(b, channels, side, side), text,
                                      torch.randn(b, channels, side, side), torch.rand(b)))
        return out

    def step(tracker: StoragePeak | None = None) -> None:
        batch = groups()
        if tracker is not None:
            state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
            grads = [p.grad for p in params if p.grad is not None]
            for t in (*params, *frozen, *grads, *state, *ema.shadow_params):
                tracker.track(t)
            for g in batch:
                for t in (g.latents, g.noise, g.r, g.text.sequence, g.text.mask, g.text.pooled):
                    tracker.track(t)
            tracker.enter("forward")
        losses = stage_losses(forward, batch, plan, model.prediction)
        loss = weighted_loss(batch, losses, [1.0] * len(plan), sum(samples))
        if tracker is not None:
            tracker.enter("backward")
        loss.backward()
        if tracker is not None:
            tracker.enter("optimizer")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(params)
        optimizer.zero_grad(set_to_none=gpus == 1)

    step()  # creates the AdamW state and the gradients
    with StoragePeak() as tracker:
        step(tracker)
    windows = [memory.WindowShape(w.resolution, (w.resolution // patch) ** 2, w.blocks) for w in plan]
    estimate = memory.estimate(model, windows, list(samples), dtype=dtype, text_tokens=text_tokens,
                               grad_checkpointing=granularity, backend="cuda" if cuda else "cpu", trainable=trainable,
                               gpus=gpus)
    return tracker, estimate


def check(tracker: StoragePeak, estimate: memory.TrainMemory, label: str) -> None:
    ratio = estimate.peak / tracker.peak
    print(f"{label}: measured {tracker.peak / MIB:.2f} MiB, estimated {estimate.peak / MIB:.2f} MiB "
          f"({ratio - 1:+.1%}); measured phases "
          + ", ".join(f"{k} {v / MIB:.2f}" for k, v in tracker.phases.items())
          + "; estimated " + ", ".join(f"{k} {v / MIB:.2f}" for k, v in estimate.phases.items()))
    assert abs(ratio - 1) < TOLERANCE, label


TINY = get_preset("tiny").model  # width 64, 2 double + 4 single blocks, stages 2/4/6


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("granularity", ["none", "full", "last-stage", "auto"])
def test_estimate_matches_a_measured_step(dtype, granularity):
    """The tiny preset at 64 / 256 / 1024 image tokens, 2 samples per window, CUDA's norms, one process."""
    tracker, estimate = measure_step(TINY, (16, 32, 64), (2, 2, 2), dtype, granularity)
    check(tracker, estimate, f"tiny {dtype} {granularity}")
    # checkpointing does what it says: less kept, most of all when every window recomputes
    assert estimate.activations > 0 and tracker.phases["optimizer"] < tracker.phases["forward"]


@pytest.mark.parametrize("dtype,granularity", [("bf16", "none"), ("bf16", "auto"), ("fp32", "last-stage")])
def test_estimate_holds_for_another_shape(dtype, granularity):
    """A narrower model (width 32, 1 double + 2 single blocks, 384-d text) with other sample counts
    and text length than the transients were measured on."""
    model = tiny_model_config(text_dim=384, pooled_dim=384, in_channels=48)
    tracker, estimate = measure_step(model, (16, 32, 64), (1, 3, 2), dtype, granularity, text_tokens=24)
    check(tracker, estimate, f"width-32 {dtype} {granularity}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_of_a_lora_step_bounds_the_measured_one(dtype):
    """`--lora 4`: adapter weights, gradients, AdamW and EMA only, the frozen model in the run's dtype.
    Activations are counted as for full training, an upper bound (frozen layers keep less)."""
    tracker, estimate = measure_step(TINY, (16, 32, 64), (2, 2, 2), dtype, "none", lora=4)
    full_tracker, full = measure_step(TINY, (16, 32, 64), (2, 2, 2), dtype, "none")
    print(f"lora {dtype}: measured {tracker.peak / MIB:.2f} MiB, estimated {estimate.peak / MIB:.2f} MiB; "
          f"full training measured {full_tracker.peak / MIB:.2f} MiB")
    assert tracker.peak <= estimate.peak < full.peak
    assert estimate.gradients == 4 * sum(4 * (64 + 64) for _ in range(2 * 8 + 4 * 3))  # rank 4, 28 D x D layers
    # the frozen model: 2 bytes a weight under bf16, 4 under fp32 (plus the adapter's fp32 weights)
    frozen = full.parameters // 4 - estimate.gradients // 4
    assert estimate.parameters == frozen * (2 if dtype == "bf16" else 4) + estimate.gradients
    assert tracker.peak < full_tracker.peak


@pytest.mark.parametrize("granularity", ["none", "auto"])
def test_estimate_of_a_plain_cpu_step(granularity):
    """Without CUDA's LayerNorm the CPU keeps its norms in the low precision (`backend="cpu"`)."""
    tracker, estimate = measure_step(TINY, (16, 32, 64), (2, 2, 2), "fp32", granularity, cuda=False)
    check(tracker, estimate, f"plain cpu fp32 {granularity}")


def test_policy_and_names_follow_the_training_loop():
    """The estimate plans with the loop's own `CheckpointPolicy` and names: `last-stage` recomputes the
    model's last stage module (blocks 16..21 of nami-2b) in every window, flow-only's too."""
    from nami_core.train.config import CHECKPOINTING, DTYPES

    assert memory.CHECKPOINTING == CHECKPOINTING and memory.DTYPES == DTYPES
    policy = CheckpointPolicy("last-stage", (9, 16, 22), 2)
    assert [policy.recompute_from(k) for k in range(3)] == [16, 16, 16]
    assert [CheckpointPolicy("auto", (9, 16, 22), 2).recompute_from(k) for k in range(3)] == [None, None, 0]


def nami_2b(granularity: str = "auto", **options):
    desc = describe_preset("nami-2b")
    return memory.train_memory_report(desc.name, desc.model, desc.flow, desc.pixels_per_token, desc.default_mode,
                                      batch_size=4, dtype="bf16", grad_checkpointing=granularity, **options)


def test_nami_2b_breakdown():
    """The numbers of the module docstring."""
    params = count_parameters(get_preset("nami-2b").model)[0]
    assert params == 2_117_643_840
    report = nami_2b("auto")
    parts = report["bytes"]
    assert (parts["parameters"], parts["gradients"], parts["adamw"], parts["ema"]) == (4 * params, 4 * params,
                                                                                     8 * params, 4 * params)
    assert parts["fixed"] == 20 * params and parts["fixed"] / GIB == pytest.approx(39.44, abs=0.01)
    no_ema = nami_2b("auto", ema=False)["bytes"]
    assert no_ema["fixed"] == 16 * params and no_ema["fixed"] / GIB == pytest.approx(31.56, abs=0.01)
    assert parts["communication"] == 0 and parts["autocast_weights"] == 2 * params
    assert report["stage_mix"] == [2.0, 4.0, 1.0]  # with the last window recomputed, 2:4:1 costs most
    assert [w["samples"] for w in report["windows"]] == [1, 2, 1]  # largest remainder: they add up to 4
    assert [w["recomputed_blocks"] for w in report["windows"]] == [0, 0, 22]
    assert report["peak_gib"] == pytest.approx(41.67, abs=0.01)
    assert report["peak_phase"] == "backward"
    # one process frees the gradients between steps; DDP's buckets keep them through the forward
    ddp = nami_2b("auto", gpus=2)
    assert ddp["phases"]["forward"] - report["phases"]["forward"] == parts["gradients"]
    assert ddp["phases"]["optimizer"] == report["phases"]["optimizer"]
    assert (ddp["peak_gib"], ddp["peak_phase"]) == (pytest.approx(49.40, abs=0.01), "forward")
    peaks = {g: nami_2b(g)["peak_bytes"] for g in memory.CHECKPOINTING}
    assert peaks["full"] < peaks["auto"] < peaks["last-stage"] < peaks["none"]
    fsdp = nami_2b("auto", fsdp=True, gpus=8)
    assert fsdp["bytes"]["fixed"] == pytest.approx(20 * params / 8, abs=8)
    assert fsdp["bytes"]["communication"] > 0 and fsdp["bytes"]["autocast_weights"] == 0
    assert fsdp["peak_bytes"] < report["peak_bytes"]
    # the costliest random draw: all 4 samples into the 512 window (not recomputed); without
    # checkpointing, all 4 at 1024, more than the 1 / 1 / 2 of the 1:2:4 mix, and within an 80 GB GPU
    assert report["worst_draw"]["samples_per_window"] == [0, 4, 0]
    assert report["worst_draw"]["peak_gib"] == pytest.approx(44.65, abs=0.01)
    none = nami_2b("none")
    assert none["worst_draw"]["samples_per_window"] == [0, 0, 4] and none["worst_draw"]["peak_bytes"] > none["peak_bytes"]
    assert none["worst_draw"]["peak_gib"] == pytest.approx(78.16, abs=0.01)


def test_cli_train_memory_of_a_lora_run(capsys):
    """nami-2b, rank 16 on the attention projections, bf16, batch 4 at 1024², `auto` checkpointing."""
    from nami_core.train.adapters import lora_parameter_count

    code, out, err = run_cli(["info", "--preset", "nami-2b", "--train-memory", "--batch-size", "4", "--dtype", "bf16",
                              "--grad-checkpointing", "auto", "--lora", "16", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    adapter = lora_parameter_count(get_preset("nami-2b").model, 16, "attn")
    # per layer r x (in + out): 8 D x D projections in each of 8 double blocks, 3 in each of 14 single
    assert adapter == 16 * 2 * 2048 * (8 * 8 + 3 * 14) and report["trainable_params"] == adapter
    parts = report["bytes"]
    frozen = report["params"] - adapter
    assert (parts["parameters"], parts["gradients"], parts["adamw"], parts["ema"]) == (
        2 * frozen + 4 * adapter, 4 * adapter, 8 * adapter, 4 * adapter)
    assert parts["autocast_weights"] == 0 and report["lora"] == {"rank": 16, "targets": "attn",
                                                                  "trainable_params": adapter}
    assert report["peak_gib"] == pytest.approx(10.25, abs=0.01)  # full training, same step: 41.67
    code, _, err = run_cli(["info", "--preset", "tiny", "--train-memory", "--lora-targets", "attn+mlp"], capsys)
    assert code == 2 and "--lora-targets needs --lora" in err
    code, _, err = run_cli(["info", "--preset", "tiny", "--lora", "4"], capsys)
    assert code == 2 and "--lora needs --train-memory" in err


def test_cli_train_memory_json(capsys):
    code, out, err = run_cli(["info", "--preset", "nami-2b", "--train-memory", "--batch-size", "4", "--dtype", "bf16",
                              "--grad-checkpointing", "auto", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert {"model", "params", "batch_size", "dtype", "parallel", "gpus", "grad_checkpointing", "stage_mix",
            "windows", "bytes", "phases", "peak_bytes", "peak_gib", "worst_draw"} <= set(report)
    assert (report["model"], report["batch_size"], report["dtype"], report["parallel"], report["gpus"],
            report["grad_checkpointing"]) == ("nami-2b", 4, "bf16", "ddp", 1, "auto")
    assert set(report["bytes"]) == {"parameters", "gradients", "adamw", "ema", "communication", "autocast_weights",
                                    "activations", "fixed"}
    assert [w["resolution"] for w in report["windows"]] == [256, 512, 1024]
    assert [w["tokens"] for w in report["windows"]] == [256, 1024, 4096]
    assert report["bytes"]["activations"] == sum(w["activation_bytes"] for w in report["windows"])
    assert report["peak_bytes"] == max(report["phases"].values()) == nami_2b("auto")["peak_bytes"]
    # --precision is the hidden old name of --dtype; --stage-mix and FSDP
    code, out, _ = run_cli(["info", "--preset", "nami-2b", "--train-memory", "--batch-size", "4", "--precision", "bf16",
                            "--grad-checkpointing", "auto", "--json"], capsys)
    assert code == 0 and json.loads(out)["peak_bytes"] == report["peak_bytes"]
    code, out, _ = run_cli(["info", "--preset", "nami-2b", "--train-memory", "--batch-size", "4", "--dtype", "bf16",
                            "--stage-mix", "4:2:1", "--fsdp", "--gpus", "8", "--json"], capsys)
    fsdp = json.loads(out)
    assert code == 0 and fsdp["stage_mix"] == [4.0, 2.0, 1.0] and fsdp["parallel"] == "fsdp" and fsdp["gpus"] == 8
    assert [w["samples"] for w in fsdp["windows"]] == [2, 1, 1]  # 4:2:1 of 4, largest remainder (was 3:2:1, rounded up)


def test_cli_train_memory_of_a_model_dir(tmp_path, capsys):
    """--model reads the configs of a saved model directory, as `nami info` does."""
    model = tiny_model_config(text_dim=384, pooled_dim=384, in_channels=48)
    root = tmp_path / "tiny"
    for folder, name, config in [("transformer", "config.json", model.transformer_kwargs()),
                                 ("scheduler", "scheduler_config.json", {"resolutions": [16, 32, 64]}),
                                 ("codec", "config.json", {"_class_name": "PixelCodec", "patch_size": 4})]:
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_text(json.dumps(config))
    code, out, err = run_cli(["info", "--model", str(root), "--train-memory", "--batch-size", "6", "--text-tokens", "12",
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "tiny" and report["params"] == count_parameters(model)[0]
    assert [w["tokens"] for w in report["windows"]] == [16, 64, 256] and report["text_tokens"] == 12
    assert [w["samples"] for w in report["windows"]] == [1, 2, 3]  # 1:2:4 of 6 (largest remainder) costs most


def test_cli_train_memory_table_and_errors(capsys):
    code, out, err = run_cli(["info", "--preset", "tiny", "--stages", "64,128,256", "--train-memory"], capsys)
    assert code == 0, err
    assert "peak" in out and "AdamW" in out and "activations" in out
    for args, message in [
        (["--train-memory", "--grad-checkpointing", "sometimes"], "--grad-checkpointing must be one of none, full, last-stage, auto"),
        (["--train-memory", "--dtype", "int8"], "--dtype must be one of auto, fp32, bf16, fp16"),
        (["--train-memory", "--dtype", "bf16", "--precision", "fp16"], "--precision is the old name of --dtype"),
        (["--train-memory", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--train-memory", "--stage-mix", "1:1"], "--stage-mix has 2 weights for 3 stages"),
        (["--train-memory", "--fsdp"], "--fsdp needs --gpus"),
        (["--batch-size", "4"], "--batch-size needs --train-memory"),
    ]:
        code, _, err = run_cli(["info", "--preset", "nami-2b", *args], capsys)
        assert code == 2
        err = err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, err
