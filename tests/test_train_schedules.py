"""`--lr-scheduler` / `--lr-warmup-steps` (diffusers' `get_scheduler`) composed with `--lr-schedule`
phases, exact on resume; the AdamW settings and `--optimizer`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nami_core.errors import ConfigError
from nami_core.train.config import LR_SCHEDULERS, TrainConfig
from nami_core.train.loop import Schedules, TrainingRun
from tests.helpers import one_error, prepare_train_data, run_cli, train_cli_args

BASE = dict(data="data", out="run", stages="16,32,64")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("schedules"))


def diffusers_rates(name: str, peak: float, warmup: int, total: int) -> list[float]:
    """The learning rates diffusers' training scripts take, step by step: a real optimizer at `peak`
    and its scheduler stepped after every optimizer step."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=peak)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_each_scheduler_gives_the_rates_of_diffusers_scripts(name):
    warmup = 0 if name == "constant" else 4
    schedules = Schedules.of(TrainConfig(**BASE, lr=3e-4, lr_scheduler=name, lr_warmup_steps=warmup, steps=20))
    ours = [schedules.lr_at(step) for step in range(20)]
    shape = diffusers_rates(name, 1.0, warmup, 20)  # the scheduler's factors
    assert ours == pytest.approx([3e-4 * f for f in shape], rel=1e-12, abs=1e-18)
    if name != "polynomial":  # diffusers' polynomial ends at 1e-7 itself, nami's at 1e-7 of the peak
        assert ours == pytest.approx(diffusers_rates(name, 3e-4, warmup, 20), rel=1e-12, abs=1e-18)
    if warmup:
        assert ours[0] == 0.0 and ours[warmup] == pytest.approx(3e-4)


def test_the_scheduler_shapes_each_phase_peak():
    schedules = Schedules.of(TrainConfig(**BASE, lr_schedule="0:1e-3,10:1e-4", lr_scheduler="linear",
                                         lr_warmup_steps=5, steps=20))
    factor = [min(s / 5, (20 - s) / 15) for s in range(20)]
    expected = [(1e-3 if s < 10 else 1e-4) * f for s, f in enumerate(factor)]
    assert [schedules.lr_at(s) for s in range(20)] == pytest.approx(expected, rel=1e-12, abs=1e-18)


def lr_and_weights(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(run_dir / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    return [(r["step"], r["lr"]) for r in records], weights


def test_resume_mid_warmup_takes_the_rates_of_an_uninterrupted_run(data, tmp_path, capsys):
    """Warmup 6 of 8 cosine steps; the interrupted run stops at step 3 (its checkpoint), then resumes."""
    common = ["--lr-scheduler", "cosine", "--lr-warmup-steps", "6", "--save-every", "3", "--keep", "0",
              "--ema-decay", "0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = lambda out, *extra: train_cli_args(data, out, *common, *extra, batch_size=4, log_every=1)  # noqa: E731
    assert run_cli(args(straight, "--steps", "8"), capsys)[0] == 0
    assert run_cli(args(resumed, "--steps", "8", "--time-budget", "1e-9"), capsys)[0] == 0  # stops after step 1
    assert run_cli(args(resumed, "--steps", "8", "--resume", "latest"), capsys)[0] == 0
    rates, weights = lr_and_weights(straight)
    again, weights_again = lr_and_weights(resumed)
    assert rates == again and [s for s, _ in rates] == list(range(1, 9))
    expected = diffusers_rates("cosine", 1e-3, 6, 8)
    assert [lr for _, lr in rates] == pytest.approx(expected, rel=1e-12)  # the rate each step took
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_the_adam_settings_reach_the_optimizer(data, tmp_path):
    run = TrainingRun.setup(TrainConfig(data=data / "data", out=tmp_path / "adam", stages=(16, 32, 64),
                                        config_file=data / "model.json", steps=2, batch_size=4, lr=2e-4,
                                        adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, adam_weight_decay=0.01))
    group = run.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["weight_decay"] == 0.01
    assert group["lr"] == 2e-4 and type(run.guard.inner).__name__ == "AdamW"


@pytest.mark.parametrize("change,message", [
    ({"adam_beta1": 1.0}, "--adam-beta1 must be in [0, 1), got 1"),
    ({"adam_beta2": -0.1}, "--adam-beta2 must be in [0, 1), got -0.1"),
    ({"adam_epsilon": 0.0}, "--adam-epsilon must be in (0, 1], got 0"),
    ({"adam_epsilon": 2.0}, "--adam-epsilon must be in (0, 1], got 2"),
    ({"adam_weight_decay": -1e-2}, "--adam-weight-decay must be at least 0, got -0.01"),
    ({"adam_weight_decay": float("inf")}, "--adam-weight-decay must be at least 0, got inf"),
    ({"adam_weight_decay": 2e4, "lr": 1e-4}, "each step would multiply the weights by 1 - lr x decay"),
    ({"gradient_accumulation_steps": 10_001}, "--gradient-accumulation-steps must be at most 10,000, got 10001"),
    ({"batch_size": 1000, "gradient_accumulation_steps": 1001},
     "--batch-size 1000 x --gradient-accumulation-steps 1001 is 1,001,000 samples per step; a step draws at most"),
    ({"lr_warmup_steps": -1, "lr_scheduler": "linear"}, "--lr-warmup-steps must be 0 or more, got -1"),
    ({"lr_scheduler": "onecycle"}, "--lr-scheduler must be one of constant, linear, cosine"),
    ({"lr_warmup_steps": 10}, "the constant --lr-scheduler has no warmup; give --lr-scheduler constant_with_warmup"),
    ({"lr_warmup_steps": 1000, "lr_scheduler": "cosine"}, "--lr-warmup-steps 1000 must be below --steps 1000"),
    ({"optimizer": "sgd"}, "--optimizer must be one of adamw, adamw8bit, got 'sgd'"),
])
def test_bad_optimizer_settings_are_one_line(change, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**BASE, **change)
    assert message in str(caught.value)


def test_adamw8bit_without_bitsandbytes_is_refused_before_any_work(data, tmp_path, capsys, monkeypatch):
    import nami_core.packages

    monkeypatch.setattr(nami_core.packages, "installed", lambda module: module != "bitsandbytes")
    out = tmp_path / "bnb"
    code, _, err = run_cli(train_cli_args(data, out, "--steps", "1", "--optimizer", "adamw8bit"), capsys)
    assert code == 2 and one_error(err) == ("error: --optimizer adamw8bit needs bitsandbytes, which is not installed; "
                                            "pip install bitsandbytes")
    assert not out.exists()


def test_adamw8bit_trains_when_bitsandbytes_is_installed(data, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "bnb"
    code, _, err = run_cli(train_cli_args(data, out, "--steps", "2", "--optimizer", "adamw8bit"), capsys)
    assert code == 0, err
    assert (out / "final" / "model_index.json").is_file()
