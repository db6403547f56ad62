"""Interoperability: the public NAMI-T2I layout, `nami convert`, FLUX initialisation, diffusers loading, offload.

The public-layout fixture is a tiny directory in exactly the release's layout: FLUX-keyed
weights of 8 double + 14 single blocks (width 128 = 1 head x 128, so no config.json is needed)
in transformer/pytorch_model_fsdp.bin, bridge_flow.bin, a 4-block (f8) AutoencoderKL with
16 latent channels in vae/, a tiny BERT in mclip/ and a tiny mT5 in mt5/. The bridge's
shifts are 8x8 and 16x16, so the stages are 32 / 64 / 128 px (latent sides 4 / 8 / 16).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nami_core.pipeline import NamiPipeline
from tests.helpers import build_tiny_bert, build_tiny_pipeline, build_tiny_t5
from tests.helpers import run_cli as cli

MT5_DIM, MCLIP_DIM, WIDTH = 16, 24, 128
SCALING, SHIFT = 0.3611, 0.1159  # FLUX VAE normalisation
BRIDGE_SIDES = (8, 16)  # latent sides of stages 2 and 3
STEPS = (2, 2, 1)
PROMPT, NEGATIVE, SEED = "a red circle left of a blue square", "a green triangle", 3


def tiny_flux_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), latent_channels=16,
        layers_per_block=1, norm_num_groups=4, scaling_factor=SCALING, shift_factor=SHIFT,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def flux_kwargs(**overrides):
    kw = dict(patch_size=1, in_channels=64, num_layers=8, num_single_layers=14, attention_head_dim=128,
              num_attention_heads=1, joint_attention_dim=MT5_DIM, pooled_projection_dim=MCLIP_DIM,
              guidance_embeds=False, axes_dims_rope=(16, 56, 56))
    kw.update(overrides)
    return kw


def write_public_layout(root: Path) -> Path:
    """The release's directory layout at tiny scale (see module doc)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**flux_kwargs())
    (root / "transformer").mkdir(parents=True)
    torch.save(flux.state_dict(), root / "transformer" / "pytorch_model_fsdp.bin")
    g = torch.Generator().manual_seed(2)
    bridge = {"scale": torch.tensor([0.9, 1.1])}
    for k, side in enumerate(BRIDGE_SIDES):
        bridge[f"shift.{k}"] = 0.1 * torch.randn(1, 16, side, side, generator=g)
    torch.save(bridge, root / "bridge_flow.bin")
    tiny_flux_vae().save_pretrained(root / "vae")
    build_tiny_bert(root / "mclip", hidden=MCLIP_DIM)
    build_tiny_t5(root / "mt5", d_model=MT5_DIM, mt5=True)
    return root


@pytest.fixture(scope="module")
def public_dir(tmp_path_factory):
    return write_public_layout(tmp_path_factory.mktemp("public") / "NAMI-T2I")


# -- the hand-written reference ------------------------------------------------------------

# The public scheduler on its 1000-point grid, by hand (SPEC §3, windows 1:1:1, gamma 1/3):
# sigmas = 1.000, 0.999, ..., 0.001; window edges at grid indices int(1000/3) = 333 and
# int(2000/3) = 666 give E = (0.667, 0.334, 0); corrected starts S = 1 - o / (2 (1 - o) + o),
# o = 1 - E_prev: (1, 0.80024, 0.50075); arc lengths d = (0.333, 0.46624, 0.50075), total
# 1.29999; the timestep grid [1000, 999, ..., 1] cut at int(1000 * 0.333 / 1.29999) = 256 and
# int(1000 * 0.79924 / 1.29999) = 614 gives the windows (1000 -> 744), (744 -> 386), (386 -> 1).
# Stage k's taus run linspace(t_max, t_max + 0.999 (t_min - t_max), n) / 1000 and its local
# ratios linspace(1, 0.001, n) followed by 0.
TAU_WINDOWS = ((1000, 744), (744, 386), (386, 1))


def public_grids(k: int, n: int):
    t_max, t_min = TAU_WINDOWS[k]
    taus = np.linspace(t_max, t_max + 0.999 * (t_min - t_max), n) / 1000.0
    ratios = np.append(np.linspace(1.0, 0.001, n), 0.0)
    return taus, ratios


def reference_text(root: Path, prompt: str):
    """mT5 last hidden state (256 tokens, mask) and the mCLIP first-token vector (77 tokens)."""
    from transformers import AutoTokenizer, BertModel, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(root / "mt5")
    batch = tok([prompt], padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    sequence = T5EncoderModel.from_pretrained(root / "mt5")(**batch).last_hidden_state
    tok = AutoTokenizer.from_pretrained(root / "mclip")
    batch_p = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    pooled = BertModel.from_pretrained(root / "mclip")(
        input_ids=batch_p.input_ids, attention_mask=batch_p.attention_mask
    ).last_hidden_state[:, 0]
    return sequence, batch.attention_mask.bool(), pooled


@torch.no_grad()
def reference_sample(root: Path, prompt: str, negative: str, seed: int, steps, cfg: float):
    """Algorithm 2 with the release's bridge, from diffusers/transformers primitives only.
    Returns (final latent grid (1, 16, 16, 16), image (1, 128, 128, 3) in [0, 1])."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    state = torch.load(root / "transformer" / "pytorch_model_fsdp.bin")
    bridge = torch.load(root / "bridge_flow.bin")
    stage_models = []
    for blocks in (9, 16, 22):  # 8 double blocks, then the first 1 / 8 / 14 single blocks
        model = FluxTransformer2DModel(**flux_kwargs(num_single_layers=blocks - 8))
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
        stage_models.append(model.eval())
    cond, uncond = reference_text(root, prompt), reference_text(root, negative)

    def velocity(model, z, tau, text):
        b, c, h, w = z.shape
        tokens = FluxPipeline._pack_latents(z, b, c, h, w)
        sequence, mask, pooled = text
        joint_mask = torch.cat([mask, torch.ones(b, tokens.shape[1], dtype=torch.bool)], dim=1)
        out = model(hidden_states=tokens, encoder_hidden_states=sequence, pooled_projections=pooled,
                    timestep=torch.tensor([tau], dtype=torch.float32),
                    img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                    txt_ids=torch.zeros(sequence.shape[1], 3), joint_attention_kwargs={"attention_mask": joint_mask}).sample
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)

    eps = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(seed))[None]
    z = 2 * F.avg_pool2d(2 * F.avg_pool2d(eps, 2), 2)  # noise pyramid down to stage 1: (1, 16, 4, 4)
    for k, model in enumerate(stage_models):
        taus, ratios = public_grids(k, steps[k])
        for i in range(steps[k]):
            v_cond, v_uncond = velocity(model, z, float(taus[i]), cond), velocity(model, z, float(taus[i]), uncond)
            z = z + float(ratios[i + 1] - ratios[i]) * (v_uncond + cfg * (v_cond - v_uncond))
        if k < 2:
            z = bridge["scale"][k] * F.interpolate(z, scale_factor=2, mode="nearest") + bridge[f"shift.{k}"]
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    pixels = vae.decode(z / SCALING + SHIFT).sample.clamp(-1, 1)
    return z, ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# -- CLI helpers ----------------------------------------------------------------------------


@pytest.fixture
def captured_floats(monkeypatch):
    """Record the float images (B, H, W, 3) and latents the pipeline decodes, on the CLI's path."""
    from nami_core.codecs.flux_vae import FluxVAECodec

    seen = {"images": [], "latents": []}
    to_pil, decode = NamiPipeline.numpy_to_pil, FluxVAECodec.decode

    def record_pil(images):
        seen["images"].append(np.array(images))
        return to_pil(images)

    def record_decode(self, grid):
        seen["latents"].append(grid.detach().clone())
        return decode(self, grid)

    monkeypatch.setattr(NamiPipeline, "numpy_to_pil", staticmethod(record_pil))
    monkeypatch.setattr(FluxVAECodec, "decode", record_decode)
    return seen


def sample_args(model, out, *extra):
    return ["sample", PROMPT, "--model", str(model), "--out", str(out), "--seed", str(SEED),
            "--steps", ",".join(map(str, STEPS)), "--negative", NEGATIVE, *extra]


@pytest.fixture(scope="module")
def reference(public_dir):
    return reference_sample(public_dir, PROMPT, NEGATIVE, SEED, STEPS, cfg=3.0)


# -- public layout --------------------------------------------------------------------------

def test_public_layout_plan_matches_the_release(public_dir):
    from nami_core.interop.public_layout import PublicLayout

    layout = PublicLayout.inspect(public_dir)
    assert layout.stage_ends == (9, 16, 22)
    assert layout.resolutions == (32, 64, 128)  # bridge sides 8, 16 x f8; stage 1 is half of stage 2
    assert layout.flux_config["axes_dims_rope"] == (16, 56, 56)
    assert (layout.flux_config["num_attention_heads"], layout.flux_config["attention_head_dim"]) == (1, 128)


def test_sample_on_public_layout_matches_the_reference(public_dir, reference, captured_floats, tmp_path, capsys):
    out = tmp_path / "public.png"
    code, _, err = cli(sample_args(public_dir, out), capsys)
    assert code == 0, err
    ref_latents, ref_image = reference
    torch.testing.assert_close(captured_floats["latents"][0], ref_latents, atol=1e-5, rtol=0)
    np.testing.assert_allclose(captured_floats["images"][0], ref_image, atol=1e-5, rtol=0)
    assert np.ptp(ref_image) > 0.05  # the reference is a picture, not a saturated constant
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["cfg"] == 3.0 and meta["steps"] == list(STEPS) and meta["resolution"] == 128

    from PIL import Image

    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert pixels.shape == (128, 128, 3)
    assert np.abs(pixels - np.round(ref_image[0] * 255)).max() <= 1


def test_public_pipeline_defaults(public_dir):
    from nami_core.modeldir import load_pipeline

    pipe = load_pipeline(public_dir, torch.device("cpu"), torch.float32)
    cfg = pipe.scheduler.config
    assert (cfg.grid, cfg.jump, list(cfg.default_steps), cfg.default_cfg) == ("public", "bridge", [10, 10, 10], 3.0)
    assert list(cfg.resolutions) == [32, 64, 128] and pipe.transformer.stage_ends == (9, 16, 22)
    assert pipe.text_encoder.config.max_tokens == 256
    assert tuple(pipe.bridge.shift[1].shape) == (1, 16, 16, 16)


def link_copy(src: Path, dst: Path) -> Path:
    """A copy of the public directory whose parts are symlinks (so one part can be replaced cheaply)."""
    dst.mkdir()
    for part in src.iterdir():
        os.symlink(part, dst / part.name)
    return dst


def replace_transformer(bad: Path, state: dict) -> None:
    (bad / "transformer").unlink()
    (bad / "transformer").mkdir()
    torch.save(state, bad / "transformer" / "pytorch_model_fsdp.bin")


def mutate_bridge(key, shape):
    def apply(bad: Path):
        bridge = torch.load(bad / "bridge_flow.bin")
        (bad / "bridge_flow.bin").unlink()
        bridge[key] = torch.zeros(shape)
        torch.save(bridge, bad / "bridge_flow.bin")
    return apply


def mutate_transformer_shape(bad: Path):
    state = torch.load(bad / "transformer" / "pytorch_model_fsdp.bin")
    state["transformer_blocks.3.attn.to_q.weight"] = torch.zeros(64, WIDTH)
    replace_transformer(bad, state)


def drop_embedder(bad: Path):
    state = torch.load(bad / "transformer" / "pytorch_model_fsdp.bin")
    del state["x_embedder.weight"]
    replace_transformer(bad, state)


def vae_with_4_channels(bad: Path):
    config = json.loads((bad / "vae" / "config.json").read_text())
    (bad / "vae").unlink()
    (bad / "vae").mkdir()
    (bad / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 4}))


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: (d / "bridge_flow.bin").unlink(), "bridge_flow.bin: missing (the bridge jump weights)"),
    (lambda d: (d / "mt5").unlink(), "mt5: missing (the mT5 tokenizer and encoder)"),
    (mutate_bridge("shift.1", (1, 16, 12, 12)), "bridge_flow.bin: shift.1 expected shape (1, 16, 16, 16), found (1, 16, 12, 12)"),
    (mutate_bridge("shift.0", (1, 4, 8, 8)), "bridge_flow.bin: shift.0 expected shape (1, 16, 8, 8), found (1, 4, 8, 8)"),
    (mutate_bridge("scale", (3,)), "bridge_flow.bin: scale expected 2 scalars (one per jump), found shape (3,)"),
    (mutate_transformer_shape, "pytorch_model_fsdp.bin: transformer_blocks.3.attn.to_q.weight expected shape (128, 128), found (64, 128)"),
    (drop_embedder, "pytorch_model_fsdp.bin: no x_embedder.weight; not a FLUX transformer state dict"),
    (vae_with_4_channels, "vae/config.json: latent_channels expected 16"),
], ids=["no-bridge", "no-mt5", "shift-side", "shift-channels", "scale", "transformer-shape", "not-flux", "vae-channels"])
def test_broken_public_layout_is_one_line_exit_2(public_dir, tmp_path, capsys, mutate, expected):
    bad = link_copy(public_dir, tmp_path / "bad")
    mutate(bad)
    code, _, err = cli(["sample", "x", "--model", str(bad), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert str(bad) in lines[0]


def test_other_depths_need_the_layout_override(public_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    from nami_core.errors import NamiError
    from nami_core.interop.public_layout import PublicLayout

    root = link_copy(public_dir, tmp_path / "shallow")
    replace_transformer(root, FluxTransformer2DModel(**flux_kwargs(num_layers=1, num_single_layers=2)).state_dict())
    with pytest.raises(NamiError, match=r"nami_layout.json: missing; the release defines stage ends only for 8 double \+ 14 single"):
        PublicLayout.inspect(root)
    (root / "nami_layout.json").write_text(json.dumps({"stage_ends": [1, 2, 3]}))
    assert PublicLayout.inspect(root).stage_ends == (1, 2, 3)
    (root / "nami_layout.json").write_text(json.dumps({"stage_ends": [1, 2, 3], "resolutions": [16, 32, 64]}))
    with pytest.raises(NamiError, match=r"shift.0 expected shape \(1, 16, 4, 4\), found \(1, 16, 8, 8\)"):
        PublicLayout.inspect(root)


def test_convert_nami_t2i_gives_the_same_image(public_dir, reference, captured_floats, tmp_path, capsys):
    out = tmp_path / "converted"
    code, _, err = cli(["convert", "nami-t2i", str(public_dir), "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "model_index.json").is_file() and (out / "bridge" / "config.json").is_file()
    assert (out / "mt5" / "config.json").is_file() and not (out / "mt5").is_symlink()
    assert list((out / "transformer").glob("*.safetensors")) and list((out / "codec").glob("*.safetensors"))
    text_config = json.loads((out / "text_encoder" / "config.json").read_text())
    assert (text_config["spec"], text_config["max_tokens"]) == ("mt5:mt5,mclip:mclip", 256)
    assert (text_config["sequence_dim"], text_config["pooled_dim"]) == (MT5_DIM, MCLIP_DIM)
    shutil.move(str(out), str(tmp_path / "moved"))  # self-contained: nothing points back at the source
    code, _, err = cli(sample_args(tmp_path / "moved", tmp_path / "c.png"), capsys)
    assert code == 0, err
    np.testing.assert_allclose(captured_floats["images"][0], reference[1], atol=1e-5, rtol=0)

    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "moved")
    assert type(loaded) is NamiPipeline and loaded.scheduler.config.jump == "bridge"
    assert torch.equal(loaded.bridge.shift[1].data, torch.load(public_dir / "bridge_flow.bin")["shift.1"])
    code, _, err = cli(["convert", "nami-t2i", str(public_dir), "--out", str(tmp_path / "moved")], capsys)
    assert code == 2 and "already exists" in err


# -- diffusers ------------------------------------------------------------------------------

def test_diffusion_pipeline_from_pretrained_loads_a_saved_model(tmp_path):
    import diffusers
    from diffusers import DiffusionPipeline

    pipe = build_tiny_pipeline()
    kw = dict(num_images_per_prompt=2, seed=3, output_type="np", steps=(2, 2, 2), negative_prompt="a cat")
    before = pipe("a red circle", **kw).images
    pipe.save_pretrained(tmp_path / "m")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "m")
    assert type(loaded) is NamiPipeline
    np.testing.assert_allclose(loaded("a red circle", **kw).images, before, atol=1e-6)
    # the mechanism: stock diffusers resolves "_class_name" on its own package
    assert diffusers.NamiPipeline is NamiPipeline
    delattr(diffusers, "NamiPipeline")
    try:
        with pytest.raises(AttributeError, match="NamiPipeline"):
            DiffusionPipeline.from_pretrained(tmp_path / "m")
    finally:
        from nami_core.interop.diffusers_registry import register_pipeline_class

        register_pipeline_class(NamiPipeline)


def test_model_cpu_offload_runs_each_component_through_its_hook(public_dir, monkeypatch):
    from accelerate.hooks import CpuOffload

    from nami_core.modeldir import load_pipeline

    pipe = load_pipeline(public_dir, torch.device("cpu"), torch.float32)
    kw = dict(seed=1, steps=(1, 1, 1), output_type="np")
    plain = pipe("a red circle", **kw).images
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="requires accelerator"):
            pipe.enable_model_cpu_offload()
    order = []
    pre_forward = CpuOffload.pre_forward

    def record(self, module, *args, **kwargs):
        order.append(type(module).__name__)
        return pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", record)
    pipe.enable_model_cpu_offload(device="cpu")
    offloaded = pipe("a red circle", **kw).images
    np.testing.assert_allclose(offloaded, plain, atol=1e-6)
    assert list(dict.fromkeys(order)) == ["NamiTextEncoder", "NamiTransformer", "BridgeJump", "FluxVAECodec"]


# -- FLUX initialisation --------------------------------------------------------------------

FLUX_D, FLUX_HEAD = 32, 16
# Hand counts (diffusers FLUX modules, width D = 32, head dim 16):
#   double block: two AdaLN-Zero 2*(D*6D + 6D), attention q/k/v/out for image and text
#   8*(D*D + D), two MLPs 2*(D*4D + 4D + 4D*D + D), four QK norms 4*16 -> 36D^2 + 30D + 64 = 37,888
#   single block: AdaLN-Zero D*3D + 3D, q/k/v 3*(D*D + D), proj_mlp D*4D + 4D,
#   proj_out 5D*D + D, two QK norms 2*16 -> 15D^2 + 11D + 32 = 15,744
#   guidance embedder: Linear(256, D) + Linear(D, D) = 256*32 + 32 + 32*32 + 32 = 9,280
DOUBLE_PARAMS, SINGLE_PARAMS, GUIDANCE_PARAMS = 37_888, 15_744, 9_280


@pytest.fixture(scope="module")
def flux_source(tmp_path_factory):
    """A guidance-distilled FluxTransformer2DModel folder (3 double + 3 single blocks) shaped for the shapes data."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(4)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=48, num_layers=3, num_single_layers=3, attention_head_dim=FLUX_HEAD,
        num_attention_heads=FLUX_D // FLUX_HEAD, joint_attention_dim=384, pooled_projection_dim=384,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    path = tmp_path_factory.mktemp("flux") / "flux-tiny"
    model.save_pretrained(path)
    return path, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_hand_counted_block_sizes(flux_source):
    _, state = flux_source
    count = lambda prefix: sum(v.numel() for k, v in state.items() if k.startswith(prefix))
    assert count("transformer_blocks.1.") == DOUBLE_PARAMS
    assert count("single_transformer_blocks.0.") == SINGLE_PARAMS
    assert count("time_text_embed.guidance_embedder.") == GUIDANCE_PARAMS


def test_convert_flux_keeps_blocks_and_reports_parameters(flux_source, tmp_path, capsys):
    src, state = flux_source
    out = tmp_path / "init"
    code, stdout, err = cli(["convert", "flux", str(src), "--out", str(out), "--keep-blocks", "d0,d2,s1-2",
                             "--stage-ends", "1,2,4", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["kept_blocks"] == ["d0", "d2", "s1", "s2"] and report["dropped_blocks"] == ["d1", "s0"]
    total = sum(v.numel() for v in state.values())
    assert report["dropped_block_params"] == DOUBLE_PARAMS + SINGLE_PARAMS == 53_632
    assert report["dropped_guidance_params"] == GUIDANCE_PARAMS
    assert report["kept_params"] == total - 53_632 - GUIDANCE_PARAMS
    assert any("guidance embedder" in note for note in report["notes"])

    converted = load_file(next((out / "transformer").glob("*.safetensors")))
    assert sum(v.numel() for v in converted.values()) == report["kept_params"]
    renamed = {"transformer_blocks.0.": "transformer_blocks.0.", "transformer_blocks.1.": "transformer_blocks.2.",
               "single_transformer_blocks.0.": "single_transformer_blocks.1.",
               "single_transformer_blocks.1.": "single_transformer_blocks.2."}
    for key, value in converted.items():
        source_key = key
        for new, old in renamed.items():
            if key.startswith(new):
                source_key = old + key[len(new):]
        assert torch.equal(value, state[source_key]), key
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"], config["stage_ends"]) == (2, 2, [1, 2, 4])

    code, _, err = cli(["convert", "flux", str(src), "--out", str(tmp_path / "first"), "--double", "1",
                        "--single", "2", "--stage-ends", "1,2,3"], capsys)
    assert code == 0, err
    first = load_file(next((tmp_path / "first" / "transformer").glob("*.safetensors")))
    assert torch.equal(first["single_transformer_blocks.1.proj_out.weight"], state["single_transformer_blocks.1.proj_out.weight"])


def test_convert_flux_reads_sharded_safetensors(flux_source, tmp_path, capsys):
    from diffusers import FluxTransformer2DModel

    src, state = flux_source
    sharded = tmp_path / "sharded"
    FluxTransformer2DModel.from_pretrained(src).save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    code, stdout, err = cli(["convert", "flux", str(sharded), "--out", str(tmp_path / "o"), "--stage-ends", "2,4,6",
                             "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["kept_blocks"] == ["d0", "d1", "d2", "s0", "s1", "s2"]
    converted = load_file(next((tmp_path / "o" / "transformer").glob("*.safetensors")))
    assert converted.keys() == {k for k in state if not k.startswith("time_text_embed.guidance_embedder.")}
    assert all(torch.equal(v, state[k]) for k, v in converted.items())


@pytest.mark.parametrize("args, expected", [
    (["--keep-blocks", "d0,d5", "--stage-ends", "1,2"], "block d5 does not exist: the source has 3 double blocks (d0-2)"),
    (["--keep-blocks", "s0,d1", "--stage-ends", "1,2"], "lists d1 after single blocks"),
    (["--keep-blocks", "d1,d0", "--stage-ends", "1,2"], "lists d0 after d1"),
    (["--double", "2", "--single", "1", "--stage-ends", "1,2,4"], "stage_ends [1, 2, 4] exceed the model depth of 3 blocks"),
    (["--double", "2", "--stage-ends", "1,2"], "--double and --single go together"),
])
def test_convert_flux_errors_are_one_line(flux_source, tmp_path, capsys, args, expected):
    src, _ = flux_source
    code, _, err = cli(["convert", "flux", str(src), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err


def test_train_init_from_converted_flux(flux_source, tmp_path, capsys):
    from nami_core.data.prepare import PrepareRequest, prepare
    from nami_core.data.shapes import ShapesSource

    src, state = flux_source
    init = tmp_path / "init"
    code, _, err = cli(["convert", "flux", str(src), "--out", str(init), "--keep-blocks", "d0,d2,s1-2",
                        "--stage-ends", "1,2,4"], capsys)
    assert code == 0, err
    prepare(ShapesSource(n=4, seed=0, size=64), PrepareRequest(out=tmp_path / "data", stages=(16, 32, 64), max_text_tokens=12))
    lr, steps = 1e-4, 2

    def train(init_dir, out):
        return cli(["train", "--data", str(tmp_path / "data"), "--out", str(out), "--init", str(init_dir),
                    "--stages", "16,32,64", "--steps", str(steps), "--batch-size", "4", "--lr", str(lr),
                    "--ema-decay", "0", "--save-every", "100", "--log-every", "1"], capsys)

    code, _, err = train(tmp_path / "nowhere", tmp_path / "bad-run")
    assert code == 2 and "--init" in err and "has no transformer/config.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = train(init, tmp_path / "run")
    assert code == 0, err
    final = tmp_path / "run" / "final" / "transformer"
    config = json.loads((final / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"], config["stage_ends"]) == (2, 2, [1, 2, 4])
    trained = load_file(final / "diffusion_pytorch_model.safetensors")
    moved = (trained["x_embedder.weight"] - state["x_embedder.weight"]).abs().max().item()
    assert 0 < moved <= 1.5 * lr * steps  # Adam moves each weight by at most about lr per step
