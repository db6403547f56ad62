"""`nami train`'s step as a GPU would run it, proven on the CPU: the fp16 loss scaler through
overflows, no host sync between log steps, checkpointing granularity, the EMA, DDP without
looking for unused parameters."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nami_core.train.loop as loop_module
from nami_core.train.config import TrainConfig
from nami_core.train.loop import TrainingRun
from tests.helpers import TRAIN_MODEL as MODEL, torchrun_nami
from tests.helpers import prepare_train_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("step-path"))


def settings(root: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=root / "data", out=out, stages=(16, 32, 64), config_file=root / "model.json", steps=6,
                batch_size=8, lr=1e-3, log_every=3, save_every=1000, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_fp16_overflows_back_the_scaler_off_and_the_run_goes_on(data, tmp_path, monkeypatch):
    """A GradScaler (torch.amp's, on the CPU) scales the loss; steps 2 and 3 overflow (inf loss):
    both are skipped, the scale halves twice (65536 -> 16384) and the run finishes with finite weights."""
    calls = []
    weighted = loop_module.weighted_loss

    def overflowing(*args, **kwargs):
        calls.append(len(calls))
        loss = weighted(*args, **kwargs)
        return loss * float("inf") if len(calls) in (3, 4) else loss

    monkeypatch.setattr(loop_module, "weighted_loss", overflowing)
    out = tmp_path / "fp16"
    result = loop_module.train(settings(data, out, dtype="fp16", steps=6, save_every=6))
    assert result.step == 6 and result.nan_skipped == 2 and result.final_dir is not None
    state = json.loads((out / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["precision"]["scaler"]["scale"] == 65536.0 / 4 and state["nan_skipped"] == 2
    weights = load_file(out / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nan_skipped"] for r in records] == [1, 2]  # logged after steps 3 and 6


def test_a_skipped_step_leaves_weights_and_ema_as_they_were(data, tmp_path, monkeypatch):
    """bf16/fp32 runs skip a non-finite step on the device (fused AdamW's found-inf flag): the
    weights and the EMA after it equal those before it."""
    run = TrainingRun.setup(settings(data, tmp_path / "skip", ema_decay=0.9))
    run.resume()
    window = loop_module.MetricsWindow(len(run.plan))
    run.step(window)
    before = [p.detach().clone() for p in run.objective.parameters()]
    ema_before = [s.clone() for s in run.ema.shadow_params]
    weighted = loop_module.weighted_loss
    monkeypatch.setattr(loop_module, "weighted_loss", lambda *a, **k: weighted(*a, **k) * float("nan"))
    run.step(window)
    assert all(torch.equal(a, p) for a, p in zip(before, run.objective.parameters()))
    assert all(torch.equal(a, s) for a, s in zip(ema_before, run.ema.shadow_params))
    assert float(run.nan_skipped) == 1 and float(run.nan_streak) == 1
    monkeypatch.setattr(loop_module, "weighted_loss", weighted)
    run.step(window)
    assert not all(torch.equal(a, p) for a, p in zip(before, run.objective.parameters()))
    assert float(run.nan_streak) == 0
    run.batches.close()


SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")


def test_no_host_sync_between_log_steps(data, tmp_path, monkeypatch):
    """On the main thread (the one that drives the device), nothing reads a tensor back to the host
    except on log steps; the batch thread may (it works on host tensors)."""
    run = TrainingRun.setup(settings(data, tmp_path / "sync", steps=8, log_every=4))
    run.resume()
    window = loop_module.MetricsWindow(len(run.plan))
    seen = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if threading.current_thread() is threading.main_thread():
                seen.append((run.step_count, _name))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, guarded)
    for _ in range(8):
        run.step(window)
    monkeypatch.undo()
    run.batches.close()
    assert seen and {step for step, _ in seen} == {4, 8}  # read on the log steps only (counted after the step)
    assert [json.loads(line)["step"] for line in (tmp_path / "sync" / "metrics.jsonl").read_text().splitlines()] == [4, 8]


def one_sample_per_window(run: TrainingRun):
    groups = [g.to_device("cpu") for g in run.batches.get(0)]
    run.batches.close()
    assert [g.window for g in groups] == [0, 1, 2]
    return groups


@pytest.mark.parametrize("granularity, recomputed", [("none", {}), ("full", {0: 1, 1: 2, 2: 3}),
                                                     ("last-stage", {2: 1}), ("auto", {2: 3})])
def test_checkpointing_granularity_recomputes_where_it_says(data, tmp_path, monkeypatch, granularity, recomputed):
    """Blocks recomputed per window (nami, ends 1/2/3; one sample per window): full every block of
    every window, last-stage the last stage module's block (index 2) where it runs, auto every
    block of the 64 px window only."""
    import nami_core.model.transformer as transformer_module

    counts: dict[int, int] = {}
    current = {}
    original = transformer_module.checkpoint

    def counting(block, *args, **kwargs):
        counts[current["window"]] = counts.get(current["window"], 0) + 1
        return original(block, *args, **kwargs)

    run = TrainingRun.setup(settings(data, tmp_path / granularity, grad_checkpointing=granularity, ema_decay=0,
                                     batch_size=3, stage_mix="0:1:1:1", stage_draw="split"))
    run.resume()
    groups = one_sample_per_window(run)
    monkeypatch.setattr(transformer_module, "checkpoint", counting)
    for group in groups:
        current["window"] = group.window
        losses = loop_module.stage_losses(run.objective, [group], run.plan, "velocity")
        loop_module.weighted_loss([group], losses, [1.0, 1.0, 1.0], 3).backward()
    assert counts == recomputed


def test_recomputation_gives_the_same_gradients(data, tmp_path):
    results = {}
    for granularity in ("none", "full", "last-stage", "auto"):
        run = TrainingRun.setup(settings(data, tmp_path / granularity, grad_checkpointing=granularity, ema_decay=0,
                                         batch_size=3, stage_mix="0:1:1:1", stage_draw="split"))
        run.resume()
        groups = one_sample_per_window(run)
        losses = loop_module.stage_losses(run.objective, groups, run.plan, "velocity")
        loop_module.weighted_loss(groups, losses, [1.0, 1.0, 1.0], 3).backward()
        results[granularity] = [p.grad.clone() for p in run.objective.parameters()]
    for granularity in ("full", "last-stage", "auto"):
        for a, b in zip(results["none"], results[granularity]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_ddp_trains_the_blocks_a_step_touches_without_searching_unused_ones(data, tmp_path):
    """Two gloo ranks, DDP with find_unused_parameters=False: a run of stage-1 samples only (1 of 3
    blocks) trains and leaves the other blocks exactly as they were; a mixed run trains every block
    in steps 0-1, then stage 1 alone in steps 2-3, which must leave the later blocks as step 2 left
    them, as one process does (AdamW's momentum moved them while DDP gave them zero gradients)."""
    finals = {}
    for name, mix, steps in (("stage1", "0:1:0:0", 3), ("mixed", "0:1:1:1,2:1:0:0", 4)):
        out = tmp_path / name
        result = torchrun_nami(["train", "--data", str(data / "data"), "--out", str(out), "--config", str(data / "model.json"),
                                "--stages", "16,32,64", "--batch-size", "4", "--lr", "1e-2", "--steps", str(steps),
                                "--save-every", "2", "--keep", "0", "--stage-mix", mix, "--ema-decay", "0",
                                "--seed", "1"])
        assert result.returncode == 0, result.stderr[-2000:]
        finals[name] = load_file(out / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    step2 = load_file(tmp_path / "mixed" / "checkpoints" / "step-00000002" / "model.safetensors")
    torch.manual_seed(1)  # the initial weights of both runs (--seed 1)
    from nami_core.config import ModelConfig
    from nami_core.model.transformer import NamiTransformer

    cfg = ModelConfig.from_dict({**MODEL, "stage_ends": tuple(MODEL["stage_ends"]), "rope_axes": tuple(MODEL["rope_axes"]),
                                 "in_channels": 48, "text_dim": 384, "pooled_dim": 384})
    initial = NamiTransformer.from_model_config(cfg).state_dict()
    later = [k for k in initial if k.startswith("single_transformer_blocks.")]
    text_out = ("transformer_blocks.0.attn.to_add_out.", "transformer_blocks.0.ff_context.")  # read by block 1 only
    # block 0's image path; its text queries only shape the discarded text output (zero gradients)
    image_path = (".norm1.linear.", ".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".attn.to_out.", ".ff.net.")
    first = [k for k in initial if k.startswith("transformer_blocks.0.") and any(p in k for p in image_path)]
    assert later and all(torch.equal(finals["stage1"][k], initial[k]) for k in later)
    assert all(torch.equal(finals["stage1"][k], initial[k]) for k in initial if k.startswith(text_out))
    assert all(not torch.equal(finals["stage1"][k], initial[k]) for k in first if k.endswith("weight"))
    assert all(not torch.equal(finals["mixed"][k], initial[k]) for k in later if k.endswith("weight"))
    assert all(torch.equal(step2["transformer." + k], finals["mixed"][k]) for k in later)
    assert all(not torch.equal(step2["transformer." + k], finals["mixed"][k]) for k in first if k.endswith("weight"))


@pytest.mark.parametrize("num_blocks", [1, 2, 3])
def test_unused_parameters_are_exactly_those_without_a_gradient(num_blocks):
    """What `_touch_unused` covers under DDP, checked against autograd on a 2 double + 1 single
    block model: after a forward through `num_blocks` blocks, the parameters left without a
    gradient are `unused_parameters(num_blocks)`."""
    from nami_core.model.transformer import NamiTransformer

    torch.manual_seed(0)
    model = NamiTransformer(in_channels=8, num_layers=2, num_single_layers=1, attention_head_dim=16,
                            num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10,
                            axes_dims_rope=(4, 6, 6), stage_ends=(1, 2, 3))
    ids = torch.zeros(4, 3)
    ids[:, 2] = torch.arange(4)
    out = model(hidden_states=torch.randn(1, 4, 8), encoder_hidden_states=torch.randn(1, 3, 12),
                pooled_projections=torch.randn(1, 10), timestep=torch.rand(1), img_ids=ids, txt_ids=torch.zeros(3, 3),
                num_blocks=num_blocks)
    out.square().sum().backward()
    without = {name for name, p in model.named_parameters() if p.grad is None}
    expected = {name for name, p in model.named_parameters() if any(p is q for q in model.unused_parameters(num_blocks))}
    assert without == expected and (num_blocks == 3 or without)
