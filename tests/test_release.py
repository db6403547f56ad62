"""The public NAMI-T2I release: loading its layout, converting it, and parity with its inference
code, against the tiny release and the independent model of its code in `release_layout`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nami_core.pipeline import NamiPipeline
from nami_core.sampling_pipeline import SamplingPipeline
from tests.helpers import build_tiny_pipeline
from tests.helpers import run_cli as cli
from tests.release_layout import (
    MCLIP_DIM,
    MT5_DIM,
    WIDTH,
    flatten_mclip,
    flux_kwargs,
    release_sample,
    release_stage_grid,
    release_text,
    release_windows,
    write_release,
)

STEPS = (2, 2, 1)
PROMPT, NEGATIVE, SEED = "a red circle left of a blue square", "a green triangle", 3


@pytest.fixture(scope="module")
def public_dir(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("public") / "NAMI-T2I")


# -- CLI helpers ------------------------------------------------------------------------------------


@pytest.fixture
def captured_floats(monkeypatch):
    """Record the float images (B, H, W, 3) and latents the pipeline decodes, on the CLI's path."""
    from nami_core import sampling_pipeline
    from nami_core.codecs.flux_vae import FluxVAECodec

    seen = {"images": [], "latents": []}
    to_pil, decode = sampling_pipeline.to_pil, FluxVAECodec.decode

    def record_pil(images):
        seen["images"].append(np.array(images))
        return to_pil(images)

    def record_decode(self, grid):
        seen["latents"].append(grid.detach().clone())
        return decode(self, grid)

    monkeypatch.setattr(sampling_pipeline, "to_pil", record_pil)
    monkeypatch.setattr(FluxVAECodec, "decode", record_decode)
    return seen


def sample_args(model, out, *extra):
    return ["sample", PROMPT, "--model", str(model), "--out", str(out), "--seed", str(SEED),
            "--steps", ",".join(map(str, STEPS)), "--negative", NEGATIVE, *extra]


@pytest.fixture(scope="module")
def reference(public_dir):
    return release_sample(public_dir, PROMPT, NEGATIVE, SEED, STEPS, cfg=3.0)


# -- the release layout --------------------------------------------------------------------------

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
        (dst / part.name).symlink_to(part)
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


def mclip_without_model(bad: Path):
    (bad / "mclip").unlink()
    (bad / "mclip" / "tokenizer").mkdir(parents=True)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: (d / "bridge_flow.bin").unlink(), "bridge_flow.bin: missing (the bridge jump weights)"),
    (lambda d: (d / "mt5").unlink(), "mt5: missing (the mT5 tokenizer and encoder)"),
    (mutate_bridge("shift.1", (1, 16, 12, 12)), "bridge_flow.bin: shift.1 expected shape (1, 16, 16, 16), found (1, 16, 12, 12)"),
    (mutate_bridge("shift.0", (1, 4, 8, 8)), "bridge_flow.bin: shift.0 expected shape (1, 16, 8, 8), found (1, 4, 8, 8)"),
    (mutate_bridge("scale", (3,)), "bridge_flow.bin: scale expected 2 scalars (one per jump), found shape (3,)"),
    (mutate_transformer_shape, "pytorch_model_fsdp.bin: transformer_blocks.3.attn.to_q.weight expected shape (128, 128), found (64, 128)"),
    (drop_embedder, "pytorch_model_fsdp.bin: no x_embedder.weight; not a FLUX transformer state dict"),
    (vae_with_4_channels, "vae/config.json: latent_channels expected 16"),
    (mclip_without_model, "mclip: no config.json; a text encoder folder holds config.json and its tokenizer, or tokenizer/ beside clip_text_encoder/config.json"),
], ids=["no-bridge", "no-mt5", "shift-side", "shift-channels", "scale", "transformer-shape", "not-flux", "vae-channels",
        "mclip-no-model"])
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
    assert (text_config["spec"], text_config["max_tokens"], text_config["pooled_max_tokens"]) == ("mt5:mt5,mclip:mclip", 256, 77)
    assert (text_config["sequence_attention_mask"], text_config["pooled_source"]) == (False, "first-token")
    assert (text_config["sequence_dim"], text_config["pooled_dim"]) == (MT5_DIM, MCLIP_DIM)
    assert json.loads((out / "transformer" / "config.json").read_text())["text_padding"] == "none"
    scheduler_config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler_config["grid"], scheduler_config["timestep_rounding"]) == ("public", "none")
    shutil.move(str(out), str(tmp_path / "moved"))  # self-contained: nothing points back at the source
    code, _, err = cli(sample_args(tmp_path / "moved", tmp_path / "c.png"), capsys)
    assert code == 0, err
    np.testing.assert_allclose(captured_floats["images"][0], reference[1], atol=1e-5, rtol=0)

    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "moved")
    assert type(loaded) is NamiPipeline and loaded.scheduler.config.jump == "bridge"
    assert torch.equal(loaded.bridge.shift[1].data, torch.load(public_dir / "bridge_flow.bin")["shift.1"])
    code, _, err = cli(["convert", "nami-t2i", str(public_dir), "--out", str(tmp_path / "moved")], capsys)
    assert code == 2 and "already holds a nami model directory; pass --overwrite to replace it" in err



def test_model_cpu_offload_runs_each_component_through_its_hook(public_dir, monkeypatch):
    from accelerate.hooks import CpuOffload

    from nami_core.modeldir import load_pipeline

    pipe = load_pipeline(public_dir, torch.device("cpu"), torch.float32, diffusers_pipeline=True)
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




# -- the release's scheduler ----------------------------------------------------------------

def recorded_grid(plan, steps):
    """Run the sampler with a velocity of ones; per stage, the taus the model was given and the
    local ratios the Euler steps moved through (from the state's increments)."""
    from nami_core.flow.sampler import ProgressiveSampler

    seen = []

    def velocity(z, r, tau, window, text):
        seen[-1][0].append(float(tau[0]))
        return torch.ones_like(z)

    def jump(z, k, generators):
        return z.repeat_interleave(2, -1).repeat_interleave(2, -2)

    sampler = ProgressiveSampler(velocity, plan, jump)
    grids = []
    for k, n in enumerate(steps):
        seen.append(([], []))
        z = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
        states = [0.0]
        sampler.run_window(z.float(), k, n, None, None, callback=lambda kk, i, zz: states.append(float(zz[0, 0, 0, 0])))
        grids.append((np.array(seen[-1][0]), 1.0 + np.array(states)))
    return grids


@pytest.mark.parametrize("ratios", [(1, 1, 1), (2, 1, 1)])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_public_grid_equals_the_release_rule(ratios, steps):
    from nami_core.config import FlowConfig
    from nami_core.flow.plan import FlowPlan
    from nami_core.flow.scheduler import NamiFlowScheduler

    plan = FlowPlan("nami", FlowConfig((32, 64, 128), window_ratios=ratios, grid="public"), (9, 16, 22), 16)
    windows, sigmas = release_windows(ratios)
    np.testing.assert_allclose([(w.sigma_start, w.sigma_end) for w in plan], sigmas, atol=1e-12, rtol=0)
    for k, (taus, r) in enumerate(recorded_grid(plan, (steps,) * 3)):
        timesteps, ratios_k = release_stage_grid(windows[k], steps)
        np.testing.assert_allclose(taus, timesteps / 1000, atol=1e-6, rtol=0)  # what the model saw
        np.testing.assert_allclose(r, ratios_k, atol=1e-6, rtol=0)  # where the Euler steps went
        exact_r, exact_taus = NamiFlowScheduler.from_flow(plan.flow).stage_grid(plan, k, steps)
        np.testing.assert_allclose(exact_taus, timesteps / 1000, atol=1e-12, rtol=0)
        np.testing.assert_allclose(exact_r, ratios_k, atol=1e-12, rtol=0)


def test_public_grid_for_10_steps_by_hand():
    """1:1:1 windows (1000 -> 744), (744 -> 386), (386 -> 1): fine grids of 256, 358 and 385
    intervals, so 10 steps end at timesteps 745, 387, 2 and local ratios 1/256, 1/358, 1/385."""
    from nami_core.config import FlowConfig
    from nami_core.flow.plan import FlowPlan
    from nami_core.flow.scheduler import NamiFlowScheduler

    plan = FlowPlan("nami", FlowConfig((256, 512, 1024), grid="public"), (9, 16, 22), 16)
    scheduler = NamiFlowScheduler.from_flow(plan.flow)
    assert plan.public.timestep_max == (1000.0, 744.0, 386.0)
    assert plan.public.timestep_min == (744.0, 386.0, 1.0)
    for k, (first, last, intervals) in enumerate([(1000, 745, 256), (744, 387, 358), (386, 2, 385)]):
        ratios, taus = scheduler.stage_grid(plan, k, 10)
        np.testing.assert_allclose(taus * 1000, np.linspace(first, last, 10), atol=1e-9)
        np.testing.assert_allclose(ratios, np.append(np.linspace(1, 1 / intervals, 10), 0), atol=1e-12)
    assert scheduler.stage_grid(plan, 0, 10)[1][1] * 1000 == pytest.approx(971.6666667)


def test_fp16_timestep_rounding_as_the_release_pipeline():
    """971.667 -> float16 971.5 (spacing 0.5 in [512, 1024)); / 1000 = 0.9715 -> float16
    0.9716796875 (spacing 2^-11 in [0.5, 1)). 745 is exact in float16; 0.745 -> 0.7451171875."""
    from nami_core.config import FlowConfig
    from nami_core.flow.plan import FlowPlan
    from nami_core.flow.scheduler import NamiFlowScheduler

    plan = FlowPlan("nami", FlowConfig((256, 512, 1024), grid="public"), (9, 16, 22), 16)
    rounded = NamiFlowScheduler.from_flow(plan.flow, timestep_rounding="fp16").stage_grid(plan, 0, 10)
    ratios, taus = rounded
    assert (taus[0], taus[1], taus[-1]) == (1.0, 0.9716796875, 0.7451171875)
    exact = NamiFlowScheduler.from_flow(plan.flow).stage_grid(plan, 0, 10)
    np.testing.assert_array_equal(ratios, exact[0])  # only timesteps are rounded
    assert np.abs(taus - exact[1]).max() < 5e-4


# -- the release's text handling --------------------------------------------------------------

PROMPTS = ["a photo of a cat and a dog", "ein Foto von einer Katze", "一只猫", "红色的圆在蓝色的方块左边"]


def test_text_encoding_equals_the_release(public_dir):
    """mT5 from spiece.model alone, run over the padded ids with no mask; mCLIP first token
    from the split layout; the same vectors as the release's encoding."""
    from nami_core.modeldir import load_pipeline

    pipe = load_pipeline(public_dir, torch.device("cpu"), torch.float32)
    ours = pipe.text_encoder.encode(PROMPTS)
    sequence, pooled = release_text(public_dir, PROMPTS)
    torch.testing.assert_close(ours.sequence, sequence, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooled, pooled, atol=1e-6, rtol=0)
    ids = pipe.text_encoder._parts[0].tokenizer(PROMPTS[2:]).input_ids
    assert all(2 not in row[:-1] for row in ids)  # the Chinese prompts are real pieces, not <unk>
    assert ours.mask.sum(1).tolist() == [len(i) for i in pipe.text_encoder._parts[0].tokenizer(PROMPTS).input_ids]


def test_release_model_samples_with_no_text_mask_anywhere(public_dir, tmp_path, monkeypatch):
    """The converted release: mT5 is called without an attention mask and no attention call gets
    one; a native model, for contrast, masks its padded prompt in every attention call."""
    import nami_core.model.ragged_attention as attention_module
    from transformers import BertModel, T5EncoderModel

    from nami_core.interop.public_layout import convert_public_layout

    masks, encoder_masks = [], {}
    dispatch = attention_module.dispatch_attention_fn

    def spy_attention(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return dispatch(*args, **kwargs)

    def spy_encoder(cls):
        forward = cls.forward

        def recorded(self, *args, **kwargs):
            encoder_masks.setdefault(cls.__name__, []).append(kwargs.get("attention_mask"))
            return forward(self, *args, **kwargs)
        monkeypatch.setattr(cls, "forward", recorded)

    monkeypatch.setattr(attention_module, "dispatch_attention_fn", spy_attention)
    spy_encoder(T5EncoderModel)
    spy_encoder(BertModel)
    convert_public_layout(public_dir, tmp_path / "m")
    from nami_core.modeldir import load_pipeline

    pipe = load_pipeline(tmp_path / "m", torch.device("cpu"), torch.float32)
    pipe("一只猫", steps=(1, 1, 1), cfg=3.0, output_type="latent")
    assert len(masks) == 9 + 16 + 22  # one batched (CFG) forward per stage through its block prefix
    assert all(m is None for m in masks)
    assert encoder_masks["T5EncoderModel"] == [None, None]  # prompt and negative
    assert all(m is not None and m.shape == (1, 77) for m in encoder_masks["BertModel"])  # mCLIP keeps its mask

    # A native model (text_padding "mask", 12-token slots): the guidance batch [""; "a red circle"]
    # has 2 and 5 real tokens, so its text is cut to 5 and the shorter row masked.
    masks.clear()
    native = build_tiny_pipeline()
    native("a red circle", steps=(1, 1, 1), cfg=3.0, output_type="latent")
    assert len(masks) == 1 + 2 + 3 and all(m is not None for m in masks)
    assert masks[0].shape == (2, 5 + 16)  # 5 text tokens + the 4 x 4 image tokens of stage 1
    assert masks[0].sum(1).tolist() == [2 + 16, 5 + 16]
    masks.clear()
    native("a red circle", steps=(1, 1, 1), cfg=1.0, output_type="latent")  # one prompt: cut, nothing padded
    assert len(masks) == 6 and all(m is None for m in masks)


# -- converting and sampling the release, as a user would --------------------------------------

@pytest.mark.parametrize("mclip_layout", ["split", "flat"])
def test_convert_then_sample_a_chinese_prompt(public_dir, mclip_layout, captured_floats, tmp_path, capsys):
    source = public_dir if mclip_layout == "split" else flatten_mclip(public_dir, tmp_path / "flat")
    out = tmp_path / "m"
    code, _, err = cli(["convert", "nami-t2i", str(source), "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "mclip" / "tokenizer").is_dir() == (mclip_layout == "split")
    assert sorted(p.name for p in (out / "mt5").iterdir() if "token" in p.name or p.suffix == ".model") == ["spiece.model"]
    png = tmp_path / "cat.png"
    code, _, err = cli(["sample", "一只猫", "--model", str(out), "--out", str(png), "--seed", "5", "--steps", "2,2,1",
                        "--negative", "一只狗"], capsys)
    assert code == 0, err
    latents, image = release_sample(public_dir, "一只猫", "一只狗", 5, STEPS, cfg=3.0)
    torch.testing.assert_close(captured_floats["latents"][0], latents, atol=1e-5, rtol=0)
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["prompt"] == meta["model_prompt"] == "一只猫"


def test_demo_prompt_style_adds_the_release_suffix_and_negative(public_dir, tmp_path, capsys, monkeypatch):
    seen = []
    encode = SamplingPipeline.encode_prompts

    def spy(self, prompts):
        seen.append(list(prompts))
        return encode(self, prompts)

    monkeypatch.setattr(SamplingPipeline, "encode_prompts", spy)
    out = tmp_path / "demo.png"
    code, _, err = cli(["sample", "a photo of a cat", "--model", str(public_dir), "--out", str(out), "--steps", "1,1,1",
                        "--prompt-style", "nami-t2i-demo"], capsys)
    assert code == 0, err
    suffixed = "a photo of a cat.extremely detailed,best quality,high quality,perfect composition"
    assert seen == [[suffixed], ["(face asymmetry, eyes asymmetry, deformed eyes, open mouth)"]]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["prompt"], meta["prompt_style"], meta["model_prompt"]) == ("a photo of a cat", "nami-t2i-demo", suffixed)
    seen.clear()
    code, _, err = cli(["sample", "a cat", "--model", str(public_dir), "--out", str(out), "--steps", "1,1,1",
                        "--prompt-style", "nami-t2i-demo", "--negative", "blurry"], capsys)
    assert code == 0, err
    assert seen[1] == ["blurry"]  # an explicit negative prompt wins
    seen.clear()
    code, _, err = cli(["sample", "a cat", "--model", str(public_dir), "--out", str(out), "--steps", "1,1,1"], capsys)
    assert code == 0 and seen == [["a cat"], [""]]  # plain by default


@pytest.mark.parametrize("args, expected", [
    (["--prompt-style", "fancy"], "error: --prompt-style must be one of plain, nami-t2i-demo, got 'fancy'"),
    (["--timestep-rounding", "bf16"], "error: --timestep-rounding must be one of none, fp16, got 'bf16'"),
])
def test_bad_prompt_style_or_rounding_is_one_line(public_dir, tmp_path, capsys, args, expected):
    code, _, err = cli(["sample", "a cat", "--model", str(public_dir), "--out", str(tmp_path / "x.png"), *args], capsys)
    assert code == 2 and err.strip() == expected
