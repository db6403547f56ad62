"""NamiPipeline: save/load round trip, seeds, CFG and negative prompts, per-stage timings."""

import math

import numpy as np
import pytest
import torch

from nami_core.pipeline import NamiPipeline
from tests.helpers import build_tiny_pipeline


def test_round_trip_reproduces_images(tmp_path):
    pipe = build_tiny_pipeline()
    a = pipe("a red circle", num_images_per_prompt=2, seed=3, output_type="np", steps=(2, 2, 2))
    pipe.save_pretrained(tmp_path / "m")
    again = NamiPipeline.from_pretrained(tmp_path / "m")
    b = again("a red circle", num_images_per_prompt=2, seed=3, output_type="np", steps=(2, 2, 2))
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    assert a.seeds == [3, 4] and len(a.stage_seconds) == 3
    assert a.images.shape == (2, 64, 64, 3)


def test_guidance_and_negative_prompt_change_the_image():
    pipe = build_tiny_pipeline()
    kw = dict(seed=1, output_type="latent", steps=(2, 2, 2))
    plain = pipe("a red circle", cfg=1.0, **kw).images
    guided = pipe("a red circle", cfg=4.0, **kw).images
    negative = pipe("a red circle", cfg=4.0, negative_prompt="a blue square", **kw).images
    assert (plain - guided).abs().max() > 1e-4
    assert (guided - negative).abs().max() > 1e-4
    # guidance at w: v_u + w (v_c - v_u); w = 1 with a negative prompt is the conditional prediction
    again = pipe("a red circle", cfg=1.0, negative_prompt="a blue square", **kw).images
    torch.testing.assert_close(again, plain)


def test_guidance_per_stage_applies_each_scale_in_its_window_only():
    pipe = build_tiny_pipeline()
    kw = dict(seed=2, output_type="latent", steps=(2, 2, 2))
    uniform = pipe("a red circle", cfg=4.0, **kw).images
    torch.testing.assert_close(pipe("a red circle", cfg="4,4,4", **kw).images, uniform)
    torch.testing.assert_close(pipe("a red circle", cfg=(1, 1, 1), **kw).images, pipe("a red circle", cfg=1.0, **kw).images)

    batches = []  # batch size of every transformer call: 2 where a window guides (uncond + cond), 1 where not
    forward = pipe.transformer.forward

    def counting(*args, **kwargs):
        if not kwargs.get("prepare_only"):  # a step, not the once-per-stage preparation
            batches.append(kwargs["hidden_states"].shape[0])
        return forward(*args, **kwargs)

    pipe.transformer.forward = counting
    first_only = pipe("a red circle", cfg="4,1,1", **kw).images
    assert batches == [2, 2, 1, 1, 1, 1]
    assert (first_only - uniform).abs().max() > 1e-4
    # the first window alone guided: its end state equals uniform guidance's, the later windows differ
    ends = {}
    for cfg in ("4,1,1", 4.0):
        states = []
        pipe("a red circle", cfg=cfg, callback=lambda k, i, z: states.append((k, z.clone())), **kw)
        ends[cfg] = [z for k, z in states if k == 0][-1]
    torch.testing.assert_close(ends["4,1,1"], ends[4.0])


def test_callback_sees_every_step_and_generators_control_the_noise():
    pipe = build_tiny_pipeline()
    seen = []
    out = pipe("x", steps=(1, 2, 3), cfg=1.0, output_type="latent", callback=lambda k, i, z: seen.append((k, i)))
    assert seen == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    g = torch.Generator().manual_seed(0)
    by_gen = pipe("x", steps=(1, 2, 3), cfg=1.0, output_type="latent", generator=[g]).images
    torch.testing.assert_close(by_gen, out.images)


@pytest.mark.parametrize("mode", ["nami", "flow-only", "flux-base"])
def test_sample_prediction_follows_the_straight_path_to_the_predicted_grid(mode):
    """A sample-prediction ("x-prediction") network whose transformer always predicts the same clean
    grid x (at each window's resolution: x_k = x averaged down to it) must make the sampler walk
    straight lines and land exactly on x.

    Hand derivation (the path of docs/method.md §4 inside window k, start sigma S, end sigma E, local
    ratio r from 1 to 0):
    x_r = a eps + b Up(Down(x_k)) + c x_k with a = r S + (1 - r) E, b = r (1 - S), c = (1 - r)(1 - E).
    A right x-prediction conversion recovers eps from the state, eps = (x_r - b UD - c x_k) / a, and
    returns the path velocity v = (S - E) eps + (1 - S) UD - (1 - E) x_k. As a, b, c are affine in r,
    every Euler step along v then moves along one segment, from the window's start state z_s (r = 1:
    eps = (z_s - (1 - S) UD) / S) to E eps + (1 - E) x_k (r = 0): each window must end there, and the
    last window (E = 0) on x itself. The noise clamp a >= 0.05 never binds here (smallest a: the last
    window's S / 3 = 1/6 at r = 1/3; flux-base's shifted grid stops at r = 0.171).
    Any conversion of the form v = (z - x) / r lands on x in its last step, so the end of every
    earlier window and the straightness of each window's path are what catch a wrong conversion.
    """
    import torch.nn.functional as F

    from nami_core.codecs.packing import pack, unpack

    pipe = build_tiny_pipeline(prediction="sample")
    p = pipe.codec.patch_size
    x = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(7)) * 2 - 1
    inputs = []  # the state each transformer call sees, as a grid

    def oracle(hidden_states=None, prepare_only=False, **kwargs):
        if prepare_only:  # the once-per-stage preparation: nothing to predict
            return None
        side = p * math.isqrt(hidden_states.shape[1])
        inputs.append(unpack(hidden_states.float(), side, side, p))
        x_k = F.avg_pool2d(x, 64 // side)  # 2x2 averages, repeated: Down^j(x)
        return pack(x_k, p).expand(hidden_states.shape[0], -1, -1).to(hidden_states.dtype)

    pipe.transformer.forward = oracle
    states = []
    out = pipe("x", steps=(3, 3, 3), cfg=1.0, mode=mode, seed=0, output_type="latent",
               callback=lambda k, i, z: states.append((k, z.clone())))
    windows = list(pipe.plan(mode))
    if mode == "flux-base":  # one window over sigma 1 -> 0 at 64 px, taking all 9 steps
        assert [(w.resolution, w.sigma_start, w.sigma_end) for w in windows] == [(64, 1.0, 0.0)]
        steps = [9]
    else:  # 1:1:1 windows end at 2/3, 1/3, 0; starts 1 - o / (2 (1 - o) + o), o = 1 - E_prev (gamma 1/3)
        expected = [(16, 1.0, 2 / 3), (32, 0.8, 1 / 3), (64, 0.5, 0.0)]
        assert [w.resolution for w in windows] == [e[0] for e in expected]
        assert [v for w in windows for v in (w.sigma_start, w.sigma_end)] == pytest.approx(
            [v for e in expected for v in e[1:]])
        steps = [3, 3, 3]
    assert len(inputs) == sum(steps) and [k for k, _ in states] == [k for k, n in enumerate(steps) for _ in range(n)]

    first = 0
    for k, (window, n) in enumerate(zip(windows, steps)):
        S, E = window.sigma_start, window.sigma_end
        start = inputs[first]
        x_k = F.avg_pool2d(x, 64 // start.shape[-1])
        ud = F.interpolate(F.avg_pool2d(x_k, 2), scale_factor=2, mode="nearest") if S < 1 else torch.zeros_like(x_k)
        eps = (start - (1 - S) * ud) / S
        end = E * eps + (1 - E) * x_k
        path = [z for j, z in states if j == k]
        torch.testing.assert_close(path[-1], end, atol=1e-5, rtol=1e-5, msg=f"window {k} end")
        # every intermediate state lies on the segment start -> end, in order
        direction = end - start
        ts = []
        for z in path[:-1]:
            t = float(((z - start) * direction).sum() / (direction * direction).sum())
            torch.testing.assert_close(z, start + t * direction, atol=1e-5, rtol=1e-5, msg=f"window {k} off the path")
            ts.append(t)
        assert 0 < ts[0] and ts == sorted(ts) and ts[-1] < 1
        first += n
    torch.testing.assert_close(out.images, x, atol=1e-5, rtol=1e-5)
