"""Padded text on the fast path: trimming to the longest prompt, ragged attention per backend,
no host syncs inside a stage, dtype defaults.

The reference for every masked result is diffusers' own `FluxTransformer2DModel` with the same
weights, run over the whole padded text with a dense (B, T + N) attention mask."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

import nami_core.model.ragged_attention as ragged_module
from nami_core.model.ragged_attention import RaggedText
from nami_core.model.transformer import NamiTransformer
from tests.helpers import build_tiny_pipeline, flux_and_nami

FLUX_KW = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, axes_dims_rope=(4, 6, 6))
TEXT, ROWS, COLS = 9, 4, 4
LENGTHS = (3, 7)  # real tokens of the two rows; the text slot holds 9


@pytest.fixture(scope="module")
def pair():
    return flux_and_nami(FLUX_KW, (1, 3, 5))


def padded_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = ROWS * COLS
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(n) // COLS, torch.arange(n) % COLS
    mask = torch.arange(TEXT)[None, :] < torch.tensor(LENGTHS)[:, None]
    return dict(hidden_states=torch.randn(2, n, 16, generator=g),
                encoder_hidden_states=torch.randn(2, TEXT, 24, generator=g),
                pooled_projections=torch.randn(2, 20, generator=g), timestep=torch.rand(2, generator=g),
                img_ids=img_ids, txt_ids=torch.zeros(TEXT, 3)), mask


def flux_masked(flux, x, mask):
    """diffusers' FLUX over the whole padded sequence, padded keys masked by a dense joint mask."""
    joint = torch.cat([mask, torch.ones(mask.shape[0], x["hidden_states"].shape[1], dtype=torch.bool)], dim=1)
    return flux(**x, joint_attention_kwargs={"attention_mask": joint}).sample


def test_trimmed_ragged_text_equals_the_dense_masked_run(pair):
    flux, nami = pair
    x, mask = padded_inputs()
    seen = []
    with torch.no_grad():
        inputs = nami.prepare(x["encoder_hidden_states"], x["pooled_projections"], x["img_ids"], x["txt_ids"], mask)
        seen.append(inputs)
        out = nami(**x, attention_mask=mask)
        ref = flux_masked(flux, x, mask)
    assert inputs.text.shape[1] == max(LENGTHS)  # cut to the longest prompt: 7 of 9 slots
    assert inputs.ragged.lengths == LENGTHS and inputs.ragged.text_tokens == 7
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (flux(**x).sample - ref).abs().max() > 1e-3  # the padding matters without a mask


def test_rows_of_equal_length_run_with_no_mask_at_all(pair, monkeypatch):
    flux, nami = pair
    x, _ = padded_inputs()
    mask = torch.arange(TEXT)[None, :].expand(2, TEXT) < 5  # both rows 5 real tokens
    masks = []
    dispatch = ragged_module.dispatch_attention_fn
    monkeypatch.setattr(ragged_module, "dispatch_attention_fn",
                        lambda *a, **k: masks.append(k.get("attn_mask")) or dispatch(*a, **k))
    with torch.no_grad():
        out = nami(**x, attention_mask=mask)
        ref = flux_masked(flux, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert len(masks) == 5 and all(m is None for m in masks)


def reference_varlen(calls):
    """A CPU stand-in for flash-attn's varlen kernel: SDPA on each packed segment, recording its inputs."""
    def kernel(q, k, v, packing):
        calls.append((q.shape, packing.cu_seqlens.tolist(), packing.max_seqlen))
        out = []
        for start, end in zip(packing.cu_seqlens[:-1].tolist(), packing.cu_seqlens[1:].tolist()):
            seg = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, L, D)
            out.append(torch.nn.functional.scaled_dot_product_attention(*seg)[0].transpose(0, 1))
        return torch.cat(out)
    return kernel


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_packed_backends_get_lengths_never_a_mask(pair, monkeypatch, backend):
    """flash and xformers receive the rows' real tokens packed with cumulative lengths, and the
    dispatcher (which would need a dense mask for them) is never called."""
    flux, nami = pair
    x, mask = padded_inputs(seed=1)
    calls, dispatched = [], []
    monkeypatch.setitem(ragged_module.PACKED_KERNELS, backend, reference_varlen(calls))
    biases = []  # xformers' mask is made with the packing, before the blocks; the stand-in kernel ignores it
    monkeypatch.setattr(ragged_module.Packing, "xformers_bias", lambda packing: biases.append(packing.seqlens))
    monkeypatch.setattr(ragged_module, "dispatch_attention_fn", lambda *a, **k: dispatched.append(k) or None)
    processors = [m.processor for m in nami.modules() if hasattr(m, "processor")]
    monkeypatch.setattr(type(processors[0]), "_attention_backend", backend)
    with torch.no_grad():
        out = nami(**x, attention_mask=mask)
        ref = flux_masked(flux, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert dispatched == []
    n = ROWS * COLS
    assert len(calls) == 5  # one packed call per block
    assert all(c[1] == [0, 3 + n, 3 + 7 + 2 * n] and c[2] == 7 + n for c in calls)
    assert calls[0][0] == (3 + 7 + 2 * n, 2, 16)  # (real tokens of both rows, heads, head dim)
    assert biases == ([(3 + n, 7 + n)] if backend == "xformers" else [])  # one mask per stage, not per block


def test_a_dense_mask_is_refused():
    torch.manual_seed(0)
    nami = NamiTransformer(**FLUX_KW, stage_ends=(5,))
    attn = nami.transformer_blocks[0].attn
    with pytest.raises(ValueError, match="takes a `JointLayout` of the text lengths, not a dense attention mask"):
        attn.processor(attn, torch.zeros(1, 4, 32), torch.zeros(1, 2, 32), attention_mask=torch.ones(1, 6, dtype=torch.bool))


def test_ragged_text_builds_masks_and_packings_once():
    ragged = RaggedText((2, 5), 5)
    mask = ragged.key_mask(3, "cpu")
    assert mask.tolist() == [[True, True, False, False, False, True, True, True], [True] * 8]
    assert ragged.key_mask(3, "cpu") is mask
    packing = ragged.packing(3, "cpu")
    assert packing.index.tolist() == [0, 1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert (packing.seqlens, packing.cu_seqlens.tolist(), packing.max_seqlen) == ((5, 8), [0, 5, 13], 8)
    assert ragged.packing(3, "cpu") is packing


# -- the sampler loop ---------------------------------------------------------------------

SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


@pytest.fixture
def forbid_host_syncs(monkeypatch):
    """While `armed`, any Tensor method that reads a device value back to the host raises."""
    state = {"armed": False, "seen": []}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if state["armed"]:
                state["seen"].append(_name)
                raise AssertionError(f"host sync inside a stage: Tensor.{_name}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, guarded)
    return state


def test_no_host_sync_inside_a_stage_and_one_preparation_per_window(forbid_host_syncs, monkeypatch):
    from nami_core.flow.sampler import ProgressiveSampler

    pipe = build_tiny_pipeline()
    window_run = ProgressiveSampler.run_window

    def armed(self, *args, **kwargs):
        forbid_host_syncs["armed"] = True
        try:
            return window_run(self, *args, **kwargs)
        finally:
            forbid_host_syncs["armed"] = False

    calls = []
    forward = pipe.transformer.forward

    def counting(*args, **kwargs):
        calls.append("prepare" if kwargs.get("prepare_only") else "step")
        return forward(*args, **kwargs)

    monkeypatch.setattr(ProgressiveSampler, "run_window", armed)
    pipe.transformer.forward = counting
    out = pipe("a red circle left of a blue square", negative_prompt="a green triangle", steps=(2, 3, 2),
               cfg=3.0, output_type="latent")
    assert forbid_host_syncs["seen"] == []
    assert calls == ["prepare"] * 3 + ["step"] * 7  # every window prepared once, before the first step
    assert torch.isfinite(out.images).all()


def test_the_guard_catches_a_sync(forbid_host_syncs):
    forbid_host_syncs["armed"] = True
    with pytest.raises(AssertionError, match="Tensor.__bool__"):
        bool(torch.ones(2).all())
    forbid_host_syncs["armed"] = False


def test_sampling_with_trimmed_text_equals_the_padded_masked_sampler():
    """The whole progressive sampler with the pipeline's trimmed, ragged text gives the latents of
    the same sampler whose velocity runs diffusers' FLUX over the full padded text with dense masks."""
    from nami_core.codecs.packing import image_ids, pack, text_ids, unpack
    from nami_core.flow.parameterization import to_velocity
    from nami_core.flow.sampler import ProgressiveSampler, initial_noise

    pipe = build_tiny_pipeline()  # minilm text in 12-token slots, 1 double + 2 single blocks, ends 1/2/3
    cfg = dict(pipe.transformer.config)
    flux_kw = {k: cfg[k] for k in ("in_channels", "num_layers", "num_single_layers", "attention_head_dim",
                                   "num_attention_heads", "joint_attention_dim", "pooled_projection_dim")}
    flux_models = []
    for blocks in pipe.transformer.stage_ends:
        model = FluxTransformer2DModel(**{**flux_kw, "num_layers": min(blocks, 1), "num_single_layers": blocks - 1},
                                       axes_dims_rope=tuple(cfg["axes_dims_rope"]), guidance_embeds=False).eval()
        model.load_state_dict({k: v for k, v in pipe.transformer.state_dict().items() if k in model.state_dict()})
        flux_models.append(model)

    def padded_velocity(z, r, tau, window, text):
        b, _, h, w = z.shape
        joint = torch.cat([text.mask, torch.ones(b, (h // 4) * (w // 4), dtype=torch.bool)], dim=1)
        out = flux_models[window.index](
            hidden_states=pack(z, 4), encoder_hidden_states=text.sequence, pooled_projections=text.pooled,
            timestep=tau, img_ids=image_ids(h // 4, w // 4), txt_ids=text_ids(text.sequence.shape[1]),
            joint_attention_kwargs={"attention_mask": joint}).sample
        return to_velocity(unpack(out, h, w, 4), z, r, window, "velocity")

    prompt, negative, steps = "a red circle left of a blue square", "a green triangle", (2, 2, 2)
    ours = pipe(prompt, negative_prompt=negative, steps=steps, cfg=3.0, seed=4, output_type="latent").images
    plan = pipe.plan()
    cond, uncond = pipe.encode_prompts([prompt]), pipe.encode_prompts([negative])
    assert max(cond.lengths + uncond.lengths) < cond.sequence.shape[1]  # both really padded
    generators = [torch.Generator().manual_seed(4)]  # the pipeline's rule: image i seeded seed + i
    noise = initial_noise(1, 3, (64, 64), plan, generators, "cpu")
    with torch.no_grad():
        sampler = ProgressiveSampler(padded_velocity, plan, pipe.jump_for(plan))
        ref = sampler(cond, uncond, noise, steps, 3.0, generators).latents
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


# -- dtypes ---------------------------------------------------------------------------------

def test_dtype_auto_is_bf16_on_cuda_fp32_on_cpu_and_the_flux_vae_never_runs_fp16():
    from nami_core.codecs.flux_vae import FluxVAECodec
    from nami_core.codecs.pixel import PixelCodec
    from nami_core.modeldir import codec_dtype
    from nami_core.runtime import dtype_name, resolve_dtype

    assert dtype_name("auto", torch.device("cpu")) == "fp32"
    assert dtype_name("auto", torch.device("cuda")) == "bf16"
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16 and dtype_name("fp16", torch.device("cuda")) == "fp16"
    vae = FluxVAECodec.__new__(FluxVAECodec)
    assert (codec_dtype(vae, torch.float16), codec_dtype(vae, torch.bfloat16), codec_dtype(vae, torch.float32)) == (
        torch.float32, torch.bfloat16, torch.float32)
    assert codec_dtype(PixelCodec(patch_size=4), torch.bfloat16) == torch.float32


def test_tf32_is_switched_on_for_cuda_only(monkeypatch):
    from nami_core.runtime import use_fast_matmul

    precision = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    try:
        torch.set_float32_matmul_precision("highest")
        use_fast_matmul(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        use_fast_matmul(torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(precision)


def test_sample_records_the_resolved_dtype(tmp_path, capsys):
    import json

    from tests.helpers import run_cli

    pipe = build_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.png"),
                            "--steps", "1,1,1"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "x.json").read_text())["dtype"] == "fp32"  # auto on the CPU


@pytest.mark.slow
def test_compiled_sampling_matches_eager():
    """`--compile` (static shapes per stage) samples the same latents as eager."""
    pipe = build_tiny_pipeline()
    kw = dict(negative_prompt="a green triangle", steps=(2, 2, 2), cfg=3.0, seed=2, output_type="latent")
    eager = pipe("a red circle left of a blue square", **kw).images
    pipe.compile()
    compiled = pipe("a red circle left of a blue square", **kw).images
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
