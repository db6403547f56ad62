"""Windows, timestep windows, jump coefficients, mode plans and grids (docs/method.md §3, §5, §6)."""

import math

import numpy as np
import pytest

from nami_core.config import FlowConfig
from nami_core.errors import ConfigError
from nami_core.flow.scheduler import NamiFlowScheduler
from nami_core.flow.plan import (
    FlowPlan,
    PublicWindows,
    flux_shift_mu,
    jump_coefficients,
    tau_windows,
    time_shift,
    window_ends,
    window_starts,
)


def test_spec_windows_for_three_equal_windows():
    ends = window_ends([1, 1, 1])
    starts = window_starts(ends, 1 / 3)
    assert ends == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-12)
    assert starts == pytest.approx([1.0, 0.8, 0.5], abs=1e-12)
    taus = tau_windows(starts, ends)
    # d = (1/3, 7/15, 1/2), sum 1.3
    assert taus[0] == pytest.approx((1.0, 1 - (1 / 3) / 1.3), abs=1e-12)
    assert taus[1] == pytest.approx((1 - (1 / 3) / 1.3, 1 - 0.8 / 1.3), abs=1e-12)
    assert taus[2] == pytest.approx((1 - 0.8 / 1.3, 0.0), abs=1e-12)
    assert [round(t, 3) for pair in taus for t in pair] == [1.0, 0.744, 0.744, 0.385, 0.385, 0.0]


def test_spec_jump_coefficients():
    assert jump_coefficients(2 / 3, 1 / 3) == pytest.approx((0.6, 0.6 * (2 / 3) * math.sqrt(3)), abs=1e-12)
    assert jump_coefficients(1 / 3, 1 / 3) == pytest.approx((0.75, 0.75 * (1 / 3) * math.sqrt(3)), abs=1e-12)
    a1, b1 = jump_coefficients(2 / 3, 1 / 3)
    a2, b2 = jump_coefficients(1 / 3, 1 / 3)
    assert (round(a1, 3), round(b1, 3), round(a2, 3), round(b2, 3)) == (0.6, 0.693, 0.75, 0.433)


@pytest.mark.parametrize("ratios,gamma", [((1, 1, 1), 1 / 3), ((2, 1, 1, 3), 0.2), ((1, 3), 0.25)])
def test_jump_lands_on_next_window_start(ratios, gamma):
    """alpha (1 - E) = 1 - S_next (signal) and the noise variance alpha^2 E^2 (1 + 1/gamma) = S_next^2."""
    ends = window_ends(ratios)
    starts = window_starts(ends, gamma)
    for k in range(len(ratios) - 1):
        alpha, beta = jump_coefficients(ends[k], gamma)
        assert alpha * (1 - ends[k]) == pytest.approx(1 - starts[k + 1], abs=1e-12)
        # Up(eps_k) is fully correlated in a block; eta has (1+g)I - g 11^T: the 11^T terms cancel
        assert (alpha * ends[k]) ** 2 == pytest.approx(beta**2 * gamma, abs=1e-12)
        assert beta**2 * (1 + gamma) == pytest.approx(starts[k + 1] ** 2, abs=1e-12)


def test_general_k_windows_are_monotone_and_cover_unit_interval():
    ends = window_ends([1, 2, 3, 4])
    starts = window_starts(ends, 1 / 3)
    assert ends[-1] == 0.0 and starts[0] == 1.0
    assert all(s > e for s, e in zip(starts, ends))
    taus = tau_windows(starts, ends)
    assert taus[0][0] == 1.0 and taus[-1][1] == 0.0
    for (a0, a1), (b0, b1) in zip(taus, taus[1:]):
        assert a1 == pytest.approx(b0) and a0 > a1


def test_public_grid_reads_ends_off_the_integer_grid():
    grid = PublicWindows.build((1, 1, 1), 1 / 3)
    assert grid.ends == pytest.approx((0.667, 0.334, 0.0), abs=1e-6)
    assert grid.starts == pytest.approx((1.0, 0.8002, 0.5007), abs=5e-5)
    assert grid.timestep_max == (1000.0, 744.0, 386.0)
    assert grid.timestep_min == (744.0, 386.0, 1.0)


def test_exact_grid_is_uniform_in_ratio_and_tau():
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    ratios, taus = NamiFlowScheduler.from_flow(plan.flow).stage_grid(plan, 1, 4)
    np.testing.assert_allclose(ratios, [1, 0.75, 0.5, 0.25, 0])
    w = plan[1]
    np.testing.assert_allclose(taus, w.tau_end + ratios[:-1] * (w.tau_start - w.tau_end))


def test_modes_share_one_plan_type():
    flow = FlowConfig((256, 512, 1024))
    nami = FlowPlan("nami", flow, (9, 16, 22), 16)
    flow_only = FlowPlan("flow-only", flow, (9, 16, 22), 16)
    base = FlowPlan("flux-base", flow, (9, 16, 22), 16)
    assert [w.blocks for w in nami] == [9, 16, 22]
    assert [w.blocks for w in flow_only] == [22, 22, 22]
    assert [(w.sigma_start, w.sigma_end) for w in nami] == [(w.sigma_start, w.sigma_end) for w in flow_only]
    assert len(base) == 1 and base[0].resolution == 1024 and base[0].blocks == 22
    assert (base[0].sigma_start, base[0].sigma_end, base[0].tau_start, base[0].tau_end) == (1.0, 0.0, 1.0, 0.0)
    assert base[0].shift_mu == pytest.approx(1.15)  # 4096 tokens: FLUX's max shift
    assert base.stage_steps("10,10,10") == (30,)
    assert nami.stage_steps(30) == (10, 10, 10)
    assert nami.stage_steps(31) == (11, 10, 10)


def test_flux_shift():
    assert flux_shift_mu(256) == pytest.approx(0.5)
    assert flux_shift_mu(4096) == pytest.approx(1.15)
    t = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(time_shift(0.0, t), t)
    assert time_shift(1.15, np.array([0.5]))[0] == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(resolutions=(256, 500)), "must double"),
        (dict(resolutions=(256, 512), window_ratios=(1, 1, 1)), "window_ratios has 3 entries"),
        (dict(resolutions=(256, 512), gamma=0.5), "gamma must be in (0, 1/3]"),
        (dict(resolutions=(256, 512), window_ratios=(1, 0)), "window_ratios must be positive"),
        (dict(resolutions=(256,), grid="coarse"), "grid must be one of"),
    ],
)
def test_bad_flow_configs(kwargs, message):
    with pytest.raises(ConfigError) as err:
        FlowConfig(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_stage_count_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="2 stage modules but the flow has 3 stages"):
        FlowPlan("nami", FlowConfig((256, 512, 1024)), (4, 8), 16)
