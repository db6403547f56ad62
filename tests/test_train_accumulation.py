"""`--gradient-accumulation-steps N`: a step of N micro-batches of B trains on exactly the samples
of one batch of N x B, split by their positions in the step's stage draws, with the same loss
normalisation, so its update is that batch's (to float rounding); the memory check is of one
micro-batch, and a resumed run goes on exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import nami_core.train.loop as loop_module
from nami_core.config import FlowConfig
from nami_core.data.store import LatentStore
from nami_core.flow.plan import FlowPlan
from nami_core.train.batches import BatchDrawer, micro_batches
from nami_core.train.config import TrainConfig
from nami_core.train.loop import TrainingRun
from tests.helpers import prepare_train_data, run_cli, train_cli_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("accumulation"))


def settings(root, out, **overrides) -> TrainConfig:
    base = dict(data=root / "data", out=out, stages=(16, 32, 64), config_file=root / "model.json", steps=3,
                batch_size=8, lr=1e-3, log_every=3, save_every=1000, seed=0, ema_decay=0.0, stage_mix="1:1:1")
    return TrainConfig(**{**base, **overrides})


def test_micro_batches_are_the_large_batch_split_by_position(data):
    store = LatentStore(data / "data")
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    whole = BatchDrawer(store, plan, 1, 8, seed=5)
    split = BatchDrawer(store, plan, 1, 4, seed=5, micro_batches=2)
    for step in range(6):
        stages = whole.draw_stages(step, (1, 1, 1))
        a = whole.draw(step, (1, 1, 1))
        b = split.draw(step, (1, 1, 1))
        assert [g.window for g in a] == [g.window for g in b]
        for x, y in zip(a, b):  # the same samples, in the same order
            assert torch.equal(x.latents, y.latents) and torch.equal(x.noise, y.noise) and torch.equal(x.r, y.r)
            assert torch.equal(x.text.sequence, y.text.sequence) and torch.equal(x.text.mask, y.text.mask)
            halves = [int((stages[h * 4:(h + 1) * 4] == x.window).sum()) for h in (0, 1)]
            assert y.micro == tuple(halves) and x.micro is None
        micro = micro_batches(b, 2)
        assert [sum(len(g.r) for g in m) for m in micro] == [4, 4]
        for h, groups in enumerate(micro):  # micro-batch h holds the windows drawn at positions 4h..4h+3
            counts = torch.bincount(stages[h * 4:(h + 1) * 4], minlength=3).tolist()
            assert {g.window: len(g.r) for g in groups} == {k: n for k, n in enumerate(counts) if n}
        for x in a:  # each window's rows, micro-batch after micro-batch, are the whole batch's
            rows = [g for m in micro for g in m if g.window == x.window]
            assert torch.equal(torch.cat([g.noise for g in rows]), x.noise)
            assert torch.equal(torch.cat([g.latents for g in rows]), x.latents)


def step_gradients(root, tmp_path, monkeypatch, **overrides) -> list[torch.Tensor]:
    """The gradients the first optimizer step of a run applies (after clipping)."""
    seen = []
    original = loop_module.GuardedStep.step

    def recording(self, grad_norm):
        seen.append([p.grad.detach().clone() if p.grad is not None else None for p in self.inner.param_groups[0]["params"]])
        return original(self, grad_norm)

    monkeypatch.setattr(loop_module.GuardedStep, "step", recording)
    run = TrainingRun.setup(settings(root, tmp_path / f"grads-{len(list(tmp_path.iterdir()))}", **overrides))
    run.resume()
    run.step(loop_module.MetricsWindow(len(run.plan)))
    run.batches.close()
    monkeypatch.undo()
    return seen[0]


def test_batch_4_times_2_gives_the_update_of_batch_8(data, tmp_path, monkeypatch):
    whole = step_gradients(data, tmp_path, monkeypatch, batch_size=8)
    split = step_gradients(data, tmp_path, monkeypatch, batch_size=4, gradient_accumulation_steps=2)
    halved = step_gradients(data, tmp_path, monkeypatch, batch_size=4)  # one micro-batch alone differs
    assert sum(g is not None for g in whole) > 10
    for a, b in zip(whole, split):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(a is not None and not torch.allclose(a, c, rtol=1e-2, atol=1e-6) for a, c in zip(whole, halved))

    # three steps on: the same weights (Adam's first steps divide by the gradients' size, so compare loosely)
    for name, extra in (("b8", {"batch_size": 8}), ("b4x2", {"batch_size": 4, "gradient_accumulation_steps": 2})):
        loop_module.train(settings(data, tmp_path / name, **extra))
    a = load_file(tmp_path / "b8" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b4x2" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # lr 1e-3: three Adam steps move a weight by up to 3e-3
    records = [json.loads(line) for line in (tmp_path / "b4x2" / "metrics.jsonl").read_text().splitlines()]
    assert sum(records[-1]["samples_stage"]) == 3 * 8  # 8 samples per optimizer step


def test_the_memory_check_is_of_one_micro_batch(data, tmp_path, monkeypatch):
    """With memory for a step of 4 samples but not of 32, batch 4 x 8 micro-batches starts and
    batch 32 is refused."""
    from nami_core.errors import NamiError
    from nami_core.train import memory_guard

    probe = TrainingRun.setup(settings(data, tmp_path / "probe", batch_size=4))
    mixes = [p.values for p in probe.schedules.stage_mix]
    need = {b: memory_guard.costliest_step(settings(data, tmp_path / "x", batch_size=b, dtype="fp32"), probe.model_cfg,
                                           probe.plan, mixes, 12, "cpu").peak for b in (4, 32)}
    assert need[32] > need[4]
    monkeypatch.setattr(memory_guard, "available_bytes", lambda device: ((need[4] + need[32]) // 2, 0))
    with pytest.raises(NamiError, match="--batch-size 32 needs about"):
        TrainingRun.setup(settings(data, tmp_path / "whole", batch_size=32))
    run = TrainingRun.setup(settings(data, tmp_path / "micro", batch_size=4, gradient_accumulation_steps=8))
    assert run.drawer.batch_size == 32 and run.drawer.micro_size == 4


def test_accumulation_resumes_exactly(data, tmp_path, capsys):
    common = ["--steps", "4", "--save-every", "2", "--keep", "0", "--ema-decay", "0.9",
              "--gradient-accumulation-steps", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(train_cli_args(data, straight, *common, batch_size=4, log_every=2))[0] == 0
    assert run_cli(train_cli_args(data, resumed, *common[:1], "2", *common[2:], batch_size=4, log_every=2))[0] == 0
    assert run_cli(train_cli_args(data, resumed, *common, "--resume", "latest", batch_size=4, log_every=2))[0] == 0
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        a = load_file(straight / "final" / "transformer" / name)
        b = load_file(resumed / "final" / "transformer" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
