"""Pyramid operators, renoise jump statistics, training target and sampler consistency (docs/method.md §4, §5)."""

import math

import pytest
import torch

from nami_core.config import FlowConfig
from nami_core.flow.jump import BridgeJump, RenoiseJump
from nami_core.flow.objective import sample_ratios, stage_targets
from nami_core.flow.parameterization import velocity_from_sample
from nami_core.flow.pyramid import block_noise, down, down_to, noise_pyramid, up
from nami_core.flow.sampler import ProgressiveSampler, initial_noise
from nami_core.flow.plan import FlowPlan


def test_down_is_the_2x2_average_and_up_is_nearest():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert down(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    u = up(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert u[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    torch.testing.assert_close(down(up(x)), x)
    # bilinear 1/2 without antialias samples exactly the block centres: the same operator
    torch.testing.assert_close(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear"), down(x))


def test_noise_pyramid_keeps_unit_variance():
    eps = torch.randn(64, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    levels = noise_pyramid(eps, 3)
    assert [tuple(e.shape[-2:]) for e in levels] == [(8, 8), (16, 16), (32, 32)]
    for e in levels:
        # 64*4*64 = 16384 values at the lowest level: var SE ~ sqrt(2/16384) = 0.011
        assert e.var().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("gamma", [1 / 3, 0.2])
def test_block_noise_has_the_spec_covariance(gamma):
    """Inside a 2x2 block cov = (1 + g) I - g 11^T; across blocks independent. n = 40000 blocks per entry:
    the SE of a covariance entry is about sqrt((1+g)^2/n) < 0.007, so 0.03 is > 4 SE."""
    gens = [torch.Generator().manual_seed(i) for i in range(100)]
    eta = block_noise((100, 1, 40, 40), gamma, gens, "cpu")
    blocks = eta.reshape(100, 20, 2, 20, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4)
    cov = blocks.T @ blocks / blocks.shape[0]
    expected = (1 + gamma) * torch.eye(4) - gamma * torch.ones(4, 4)
    torch.testing.assert_close(cov, expected, atol=0.03, rtol=0)
    # neighbouring blocks are uncorrelated
    left = eta[..., :, 0::4].reshape(-1)
    right = eta[..., :, 2::4].reshape(-1)
    assert abs((left * right).mean().item()) < 0.02


def test_renoise_jump_lands_on_the_training_start_distribution():
    """End of window k in distribution: E eps + (1 - E) x_k. After the jump: mean (1 - S) Up(x_k), cov S^2 I.
    n = 20000 samples; SE of the mean is S/sqrt(n) ~ 0.006, of the variance S^2 sqrt(2/n) ~ 0.006."""
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    jump = RenoiseJump(plan.jumps, plan.gamma)
    g = torch.Generator().manual_seed(1)
    x_k = torch.randn(1, 1, 4, 4, generator=g)
    n = 20000
    for k in range(2):
        E, S_next = plan[k].sigma_end, plan[k + 1].sigma_start
        eps = torch.randn(n, 1, 4, 4, generator=g)
        z_end = E * eps + (1 - E) * x_k
        out = jump(z_end, k, [torch.Generator().manual_seed(10_000 * k + i) for i in range(n)])
        mean = out.mean(0, keepdim=True)
        torch.testing.assert_close(mean, (1 - S_next) * up(x_k), atol=0.03, rtol=0)
        centred = (out - mean).reshape(n, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(n, 16, 4)
        cov = torch.einsum("nbi,nbj->ij", centred, centred) / (n * 16)
        torch.testing.assert_close(cov, S_next**2 * torch.eye(4), atol=0.03, rtol=0)


def oracle(x_full):
    """Exact velocity field of the flow towards the single data point x_full (B, C, H, W)."""

    def velocity(z, r, tau, window, text):
        x_k = down_to(x_full, z.shape[-2]).expand_as(z)
        return velocity_from_sample(x_k, z, r, window, min_noise=0.0)

    return velocity


@pytest.mark.parametrize("mode", ["nami", "flow-only", "flux-base"])
@pytest.mark.parametrize("steps", [(3, 3, 3), (1, 4, 2)])
def test_sampler_with_the_exact_velocity_returns_the_data_point(mode, steps):
    plan = FlowPlan(mode, FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    noise = initial_noise(2, 3, (64, 64), plan, gens, "cpu")
    sampler = ProgressiveSampler(oracle(x), plan, RenoiseJump(plan.jumps, plan.gamma))
    result = sampler(None, None, noise, plan.stage_steps(steps), 1.0, gens)
    assert len(result.stage_seconds) == len(plan)
    torch.testing.assert_close(result.latents, x, atol=1e-5, rtol=0)


def test_run_window_reaches_each_window_end_and_chains_into_the_full_sample():
    """With the exact velocity every window's path is straight, so run_window ends it at its start
    minus the velocity there; windows run one by one with the jumps between them give the sampler's
    own result."""
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    velocity = oracle(x)
    jump = RenoiseJump(plan.jumps, plan.gamma)
    sampler = ProgressiveSampler(velocity, plan, jump)
    gen = torch.Generator().manual_seed(8)
    z = initial_noise(1, 3, (64, 64), plan, [gen], "cpu")
    for k in range(len(plan)):
        start = z
        z = sampler.run_window(z, k, 4, None, None)
        rr = torch.ones(1)
        v0 = velocity(start, rr, rr, plan[k], None)
        torch.testing.assert_close(z, start - v0, atol=1e-5, rtol=0)
        if k < len(plan) - 1:
            z = jump(z, k, [gen])
    torch.testing.assert_close(z, x, atol=1e-5, rtol=0)
    gen_again = torch.Generator().manual_seed(8)
    noise = initial_noise(1, 3, (64, 64), plan, [gen_again], "cpu")
    torch.testing.assert_close(sampler(None, None, noise, (4, 4, 4), 1.0, [gen_again]).latents, z)


def test_sampler_with_the_public_grid_and_a_bridge_jump_runs_the_stages():
    plan = FlowPlan("nami", FlowConfig((16, 32, 64), grid="public", jump="bridge"), (1, 2, 3), 4)
    bridge = BridgeJump(channels=3, sides=(32, 64))
    seen = []
    sampler = ProgressiveSampler(lambda z, r, tau, w, t: torch.zeros_like(z), plan, bridge)
    noise = torch.ones(1, 3, 16, 16)
    with torch.no_grad():
        bridge.scale.copy_(torch.tensor([2.0, 3.0]))
        bridge.shift[1].fill_(0.5)
    out = sampler(None, None, noise, (2, 2, 2), 1.0, None, callback=lambda k, i, z: seen.append((k, i, z.shape[-1])))
    assert seen == [(0, 0, 16), (0, 1, 16), (1, 0, 32), (1, 1, 32), (2, 0, 64), (2, 1, 64)]
    torch.testing.assert_close(out.latents, torch.full((1, 3, 64, 64), 6.5))


def test_one_seed_gives_the_same_noise_at_any_number_of_stages():
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    three = initial_noise(1, 3, (64, 64), FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4), [g1], "cpu")
    two = initial_noise(1, 3, (64, 64), FlowPlan("nami", FlowConfig((32, 64)), (1, 3), 4), [g2], "cpu")
    torch.testing.assert_close(three, 2 * down(two))


def test_training_target_and_sampler_velocity_agree():
    """At x_r built by the objective, the exact velocity towards x is the training target v = start - end."""
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    g = torch.Generator().manual_seed(0)
    for window in plan:
        side = window.resolution
        x = torch.randn(4, 3, side, side, generator=g)
        noise = torch.randn(4, 3, side, side, generator=g)
        r = torch.tensor([0.95, 0.6, 0.3, 0.05])
        t = stage_targets(x, noise, r, window)
        torch.testing.assert_close(velocity_from_sample(x, t.x_r, r, window, min_noise=0.0), t.velocity,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(t.tau, window.tau_end + r * (window.tau_start - window.tau_end))
        # r = 1 is the window start, r = 0 its end
        t1 = stage_targets(x, noise, torch.ones(4), window)
        start = window.sigma_start * noise + (1 - window.sigma_start) * up(down(x))
        torch.testing.assert_close(t1.x_r, start if window.index else noise)
        t0 = stage_targets(x, noise, torch.zeros(4), window)
        torch.testing.assert_close(t0.x_r, window.sigma_end * noise + (1 - window.sigma_end) * x)


def test_ratio_sampling_distributions():
    window = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)[0]
    g = torch.Generator().manual_seed(0)
    u = sample_ratios(50000, window, "uniform", g)
    ln = sample_ratios(50000, window, "logit-normal", g)
    assert 0 < u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.01)
    logits = torch.log(ln / (1 - ln))
    assert logits.mean().item() == pytest.approx(0.0, abs=0.02)
    assert logits.std().item() == pytest.approx(1.0, abs=0.02)
    base = FlowPlan("flux-base", FlowConfig((16, 32, 64)), (1, 2, 3), 4)[0]
    shifted = sample_ratios(50000, base, "uniform", torch.Generator().manual_seed(0))
    # the FLUX shift pushes ratios towards the noise end: median exp(mu) / (exp(mu) + 1) > 0.5
    assert shifted.median().item() == pytest.approx(math.exp(base.shift_mu) / (math.exp(base.shift_mu) + 1), abs=0.01)
    with pytest.raises(ValueError, match="ratio sampling must be one of"):
        sample_ratios(4, window, "cosine")
