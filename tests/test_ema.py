"""The EMA of the trained weights: diffusers' EMAModel's numbers, its state dict, a gate that skips."""

import pytest
import torch
from diffusers.training_utils import EMAModel

from nami_core.train.ema import EMA


def _weights(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (11,), (2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def test_ema_tracks_diffusers_to_float_rounding_gated_or_not():
    params = _weights(0)
    ours = EMA(params, decay=0.9)
    reference = EMAModel(params, decay=0.9, foreach=True)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=g))
        ours.update(params, gate=torch.tensor(1.0) if step % 2 else None)
        reference.step(params)
        for a, b in zip(ours.shadow_params, reference.shadow_params):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6, msg=f"step {step + 1} differs")
    assert ours.optimization_step == reference.optimization_step == 25
    moved = max(float((a - p.detach()).abs().max()) for a, p in zip(ours.shadow_params, params))
    assert moved > 1.0  # the average lags the weights: the comparison above is not trivially equal


def test_first_update_copies_the_weights_and_decay_follows_the_warmup():
    params = _weights(2)
    ema = EMA([torch.zeros_like(p) for p in params], decay=0.999)
    ema.update(params)
    assert all(torch.equal(s, p) for s, p in zip(ema.shadow_params, params))
    assert [ema.decay_at(k) for k in (1, 2, 3, 10)] == [0.0, 2 / 11, 3 / 12, 10 / 19]
    assert ema.decay_at(100_000) == 0.999


def test_a_zero_gate_leaves_the_average_unchanged():
    params = _weights(3)
    ema = EMA(params, decay=0.5)
    before = [s.clone() for s in ema.shadow_params]
    with torch.no_grad():
        for p in params:
            p.mul_(3)
    ema.update(params, gate=torch.tensor(0.0))
    assert all(torch.equal(a, b) for a, b in zip(before, ema.shadow_params))
    assert ema.optimization_step == 1


def test_state_dict_round_trips_through_diffusers():
    params = _weights(4)
    ema = EMA(params, decay=0.95)
    for _ in range(3):
        ema.update([p * 1.1 for p in params])
    reference = EMAModel(params, decay=0.5)
    reference.load_state_dict(ema.state_dict())
    assert reference.optimization_step == 3 and reference.decay == 0.95
    back = EMA(params, decay=0.1)
    back.load_state_dict(reference.state_dict())
    assert back.decay == 0.95 and back.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(back.shadow_params, ema.shadow_params))
    with pytest.raises(ValueError, match="holds 4 tensors for 5 parameters"):
        back.load_state_dict({**ema.state_dict(), "shadow_params": ema.shadow_params[:4]})
