"""Non-square sampling (issue 28): every stage at the image's aspect ratio, RoPE ids per (h, w) grid,
the size rule, the learned bridge's refusal, `nami sample --size/--width/--height` and `nami info --size`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from nami_core.codecs.packing import pack
from nami_core.config import FlowConfig, get_preset
from nami_core.errors import ConfigError
from nami_core.model.transformer import NamiTransformer
from nami_core.pipeline import NamiPipeline
from nami_core.sampling_pipeline import SamplingPipeline
from tests.helpers import run_cli, tiny_model_config

MODES = ("nami", "flow-only", "flux-base")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    """The tiny pixel-space model (16/32/64 px, patch 4, 1 + 2 blocks, stages 1:2:3 blocks)."""
    pipeline = NamiPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def grid_ids(rows: int, cols: int) -> torch.Tensor:
    """The rotary ids a rows x cols token grid must get, row-major as tokens are packed: (0, row, col)."""
    return torch.tensor([[0.0, r, c] for r in range(rows) for c in range(cols)])


def spy_transformer(monkeypatch, transformer) -> dict:
    """Record what the transformer receives: the rotary ids and block prefix of every stage preparation,
    and the token count of every step."""
    seen = {"ids": [], "blocks": [], "step_tokens": []}
    forward = transformer.forward

    def spy(*args, **kwargs):
        if kwargs.get("prepare_only"):
            seen["ids"].append(kwargs["img_ids"].detach().cpu().clone())
            seen["blocks"].append(kwargs["num_blocks"])
        else:
            seen["step_tokens"].append(kwargs["hidden_states"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", spy)
    return seen


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    return lines[0]


# -- the flow and the plan ------------------------------------------------------------------------

def test_flow_ending_at_a_size_halves_both_sides():
    flow = FlowConfig(resolutions=(256, 512, 1024))
    wide = flow.ending_at_size(576, 1024)
    assert wide.sizes == ((144, 256), (288, 512), (576, 1024))
    assert wide.to_dict()["widths"] == [256, 512, 1024] and wide.to_dict()["resolutions"] == [144, 288, 576]
    assert wide.ending_at_size(1024, 1024) == flow  # square again: no widths, the model's own flow
    assert "widths" not in flow.to_dict()
    with pytest.raises(ConfigError, match="widths has 2 entries but there are 3 stages"):
        FlowConfig(resolutions=(16, 32, 64), widths=(32, 64))


def test_plan_of_a_non_square_size(pipe):
    plan = pipe.plan("nami", height=64, width=48)  # 4:3 portrait; 48 = 3 x 16 halves into 12 px = 3 tokens
    assert [w.size for w in plan] == [(16, 12), (32, 24), (64, 48)]
    assert [w.tokens(4) for w in plan] == [4 * 3, 8 * 6, 16 * 12]
    assert [w.blocks for w in plan] == [1, 2, 3]
    assert pipe.plan("nami", width=128).flow.sizes[-1] == (64, 128)  # the height defaults to the model's side
    assert pipe.plan("nami", height=32).flow.sizes[-1] == (32, 64)
    (window,) = pipe.plan("flux-base", height=64, width=128)
    assert window.size == (64, 128) and window.tokens(4) == 512


@pytest.mark.parametrize("height,width,message", [
    (64, 100, "image size 100x64: width 100 is not a multiple of 16; with 3 stages every side must be a multiple "
              "of 4 pixels per token x 2^2, so each stage's sides are whole tokens (nearest: 96 or 112)"),
    (40, 64, "height 40 is not a multiple of 16"),
    (64, 8, "width 8 is not a multiple of 16"),
    (0, 64, "height 0 is not a multiple of 16"),
])
def test_sides_that_do_not_halve_into_tokens_are_one_line_naming_the_rule(pipe, height, width, message):
    for mode in MODES:  # flux-base runs one window, but the model's stages still fix the rule
        with pytest.raises(ConfigError) as info:
            pipe("x", height=height, width=width, mode=mode, steps=3, output_type="latent")
        assert message in str(info.value) and "\n" not in str(info.value)


# -- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_wide_sample_runs_every_stage_at_2_to_1(pipe, monkeypatch, mode):
    """64 x 128 px (H x W): stages 16x32, 32x64, 64x128 px, token grids 4x8, 8x16, 16x32 (patch 4);
    flux-base runs the last one only."""
    seen = spy_transformer(monkeypatch, pipe.transformer)
    shapes = {}
    out = pipe("a red circle", height=64, width=128, mode=mode, steps=(2, 2, 2), seed=1, output_type="np",
               callback=lambda k, i, z: shapes.setdefault(k, set()).add(tuple(z.shape)))
    assert out.images.shape == (1, 64, 128, 3)
    if mode == "flux-base":
        grids, blocks = [(16, 32)], [3]
    else:
        grids, blocks = [(4, 8), (8, 16), (16, 32)], [1, 2, 3] if mode == "nami" else [3, 3, 3]
    assert shapes == {k: {(1, 3, 4 * rows, 4 * cols)} for k, (rows, cols) in enumerate(grids)}
    assert seen["blocks"] == blocks
    assert len(seen["ids"]) == len(grids)
    for ids, (rows, cols) in zip(seen["ids"], grids):
        torch.testing.assert_close(ids, grid_ids(rows, cols), rtol=0, atol=0)
    steps_per_window = [6] if mode == "flux-base" else [2, 2, 2]
    assert seen["step_tokens"] == [rows * cols for (rows, cols), n in zip(grids, steps_per_window) for _ in range(n)]


@pytest.mark.parametrize("mode", MODES)
def test_tall_sample_lands_on_the_predicted_grid(pipe, monkeypatch, mode):
    """A sample-prediction network that always predicts the same clean 128 x 64 (H x W) grid x, averaged
    down to the stage it is asked about, makes the sampler land exactly on x (tests/test_pipeline.py
    derives why). The oracle reads the stage's grid off the rotary ids alone, so ids with rows and
    columns swapped, or tokens packed or unpacked in another order, land elsewhere."""
    net = NamiTransformer.from_model_config(tiny_model_config(384, 384, 48, prediction="sample"))
    sampler = NamiPipeline(net, pipe.scheduler, pipe.codec, pipe.text_encoder)
    sampler.set_progress_bar_config(disable=True)
    x = torch.rand((1, 3, 128, 64), generator=torch.Generator().manual_seed(5)) * 2 - 1

    def oracle(hidden_states=None, prepare_only=False, img_ids=None, stage_inputs=None, **kwargs):
        if prepare_only:
            return int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        rows, cols = stage_inputs
        assert hidden_states.shape[1] == rows * cols
        x_k = F.avg_pool2d(x, (128 // (4 * rows), 64 // (4 * cols)))
        return pack(x_k, 4).expand(hidden_states.shape[0], -1, -1)

    monkeypatch.setattr(net, "forward", oracle)
    out = sampler("x", height=128, width=64, steps=(2, 2, 2), cfg=1.0, mode=mode, output_type="latent")
    assert out.images.shape == (1, 3, 128, 64)
    torch.testing.assert_close(out.images, x, atol=1e-5, rtol=1e-5)


def test_vae_model_sizes_count_the_codec_factor(pipe, monkeypatch):
    """A FLUX-VAE (f8, patch 2: 16 px per token) renoise model at 32/64/128 px: 128 x 64 (W x H) runs
    latent grids 2x4, 4x8, 8x16 (token grids 1x2, 2x4, 4x8); sides must be multiples of 16 x 2^2 = 64."""
    from nami_core.codecs.flux_vae import FluxVAECodec
    from nami_core.flow.scheduler import NamiFlowScheduler
    from tests.release_layout import tiny_flux_vae

    net = NamiTransformer.from_model_config(tiny_model_config(384, 384, 64))
    vae_pipe = NamiPipeline(net, NamiFlowScheduler(resolutions=(32, 64, 128), default_steps=(1, 1, 1)),
                            FluxVAECodec.from_vae(tiny_flux_vae()), pipe.text_encoder)
    vae_pipe.set_progress_bar_config(disable=True)
    seen = spy_transformer(monkeypatch, net)
    shapes = []
    out = vae_pipe("a cat", width=128, height=64, cfg=1.0, output_type="np",
                   callback=lambda k, i, z: shapes.append(tuple(z.shape)))
    assert out.images.shape == (1, 64, 128, 3)
    assert shapes == [(1, 16, 2, 4), (1, 16, 4, 8), (1, 16, 8, 16)]
    for ids, (rows, cols) in zip(seen["ids"], [(1, 2), (2, 4), (4, 8)]):
        torch.testing.assert_close(ids, grid_ids(rows, cols), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"width 96 is not a multiple of 64; .* 16 pixels per token x 2\^2"):
        vae_pipe.settings(width=96, height=64)


# -- the public release's learned bridge ----------------------------------------------------------

@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    from tests.release_layout import write_release

    return write_release(tmp_path_factory.mktemp("public") / "NAMI-T2I")


def test_release_bridge_refuses_other_sizes_saying_why(release_dir, tmp_path, capsys):
    from nami_core.modeldir import load_pipeline

    release = load_pipeline(release_dir, torch.device("cpu"), torch.float32)
    assert release.settings().plan.flow.sizes[-1] == (128, 128)  # the size it was trained at runs
    for height, width in ((64, 128), (128, 64), (256, 256)):
        with pytest.raises(ConfigError) as info:
            release.settings(height=height, width=width)
        assert str(info.value) == (
            f"this model's learned bridge jump adds a fixed offset per latent grid, trained at 128x128 only, so "
            f"it cannot sample {width}x{height}; sample at 128x128")
    # flux-base runs one window: no jump, so nothing to refuse
    assert release.settings("flux-base", height=64, width=128).plan.flow.sizes == ((16, 32), (32, 64), (64, 128))

    out = tmp_path / "wide.png"
    code, _, err = run_cli(["sample", "a red circle", "--model", str(release_dir), "--out", str(out),
                            "--size", "128x64", "--steps", "1,1,1"], capsys)
    line = one_line_error(code, err)
    assert "learned bridge jump" in line and "cannot sample 128x64" in line
    assert not out.exists()


# -- nami sample ----------------------------------------------------------------------------------

def read_png(path):
    with Image.open(path) as img:
        return img.size, np.asarray(img.convert("RGB")), json.loads(img.text["nami"])


def test_cli_size_width_and_height(tiny_model_dir, tmp_path, capsys):
    base = ["sample", "a red circle", "--model", str(tiny_model_dir), "--steps", "3", "--seed", "2", "--cfg", "1"]
    runs = {"size": ["--size", "128x64"], "width": ["--width", "128"], "height": ["--height", "32"],
            "square": ["--size", "64x64"]}
    pngs = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.png"
        code, _, err = run_cli([*base, "--out", str(out), *extra], capsys)
        assert code == 0, err
        pngs[name] = read_png(out)
        assert json.loads(out.with_suffix(".json").read_text()) == pngs[name][2]
    size, pixels, meta = pngs["size"]
    assert size == (128, 64) and pixels.shape == (64, 128, 3)  # PIL: (width, height)
    assert (meta["resolution"], meta["width"]) == (64, 128)
    # --width alone keeps the model's 64 px height: the same settings, so the same picture
    assert pngs["width"][0] == (128, 64) and pngs["width"][2] == meta
    assert np.array_equal(pngs["width"][1], pixels)
    assert pngs["height"][0] == (64, 32) and (pngs["height"][2]["resolution"], pngs["height"][2]["width"]) == (32, 64)
    assert pngs["square"][0] == (64, 64) and "width" not in pngs["square"][2]  # square records as before


@pytest.mark.parametrize("extra,message", [
    (["--size", "abc"], "--size must be WIDTHxHEIGHT in pixels, e.g. 1024x576, got 'abc'"),
    (["--size", "64x"], "--size must be WIDTHxHEIGHT in pixels, e.g. 1024x576, got '64x'"),
    (["--size", "0x64"], "--size sides must be at least 1 pixel, got '0x64'"),
    (["--size", "64x64", "--width", "64"], "give --size or --width/--height, not both"),
    (["--width", "0"], "--width must be at least 1, got 0"),
    (["--height", "70000"], "--height must be at most 65,536, got 70000"),
    (["--size", "100x64"], "width 100 is not a multiple of 16; with 3 stages every side must be a multiple of 4 "
                           "pixels per token x 2^2"),
])
def test_cli_bad_sizes_are_one_error_line(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    code, _, err = run_cli(["sample", "x", "--model", str(tiny_model_dir), "--out", str(out), *extra], capsys)
    assert message in one_line_error(code, err)
    assert not out.exists()


def test_cli_out_of_memory_names_the_size(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """An allocation that fails while sampling (a size too large for the machine) is one error line after
    the progress bars, not a traceback."""
    def fail(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 3298534883328 bytes. Error code 12")

    monkeypatch.setattr(SamplingPipeline, "__call__", fail)
    code, _, err = run_cli(["sample", "x", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                            "--size", "128x64", "--n", "2"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]  # the stage bars drawn so far, then the error
    assert code == 2 and "Traceback" not in err and [line for line in lines if line.startswith("error:")] == [
        "error: out of memory sampling 2 image(s) of 128x64 (one tensor needed 3072.0 GiB); use a smaller size or "
        "--batch-size"] == lines[-1:]


# -- nami info ------------------------------------------------------------------------------------

def info_json(capsys, *args):
    code, out, err = run_cli(["info", *args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_info_size_flops_match_a_flop_counter(capsys):
    """`nami info --preset nami-2b --size 1024x576`: stages 256x144, 512x288, 1024x576 px (W x H) at 16 px
    per token hold 16*9 = 144, 32*18 = 576 and 64*36 = 2304 tokens; each mode's FLOPs (10 steps per stage,
    30 in flux-base's one window, 256 text tokens) equal torch's FLOP counter run over those windows."""
    report = info_json(capsys, "--preset", "nami-2b", "--size", "1024x576")
    assert (report["width"], report["height"]) == (1024, 576)
    stages = report["stages"]
    assert [(s["width"], s["resolution"], s["tokens"]) for s in stages] == [(256, 144, 144), (512, 288, 576),
                                                                           (1024, 576, 2304)]
    model = get_preset("nami-2b").model
    with torch.device("meta"):
        net = NamiTransformer.from_model_config(model)

    def counted(rows: int, cols: int, blocks: int) -> int:
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            net(torch.randn(1, rows * cols, 64), torch.randn(1, 256, 4096), torch.randn(1, 1024), torch.rand(1),
                grid_ids(rows, cols).to("meta"), torch.zeros(256, 3), num_blocks=blocks)
        return counter.get_total_flops()

    grids = [(9, 16), (18, 32), (36, 64)]
    expected = {
        "nami": sum(10 * counted(r, c, b) for (r, c), b in zip(grids, (9, 16, 22))),
        "flow-only": sum(10 * counted(r, c, 22) for r, c in grids),
        "flux-base": 30 * counted(36, 64, 22),
    }
    assert report["flops"] == pytest.approx(expected, rel=1e-9)
    assert report["flops"]["nami"] == pytest.approx(86.73e12, rel=1e-3)  # measured; 158.30e12 at 1024x1024
    square = info_json(capsys, "--preset", "nami-2b")
    assert (square["width"], square["height"]) == (1024, 1024)
    assert report["flops"]["nami"] < 0.6 * square["flops"]["nami"]  # 56% of the pixels


def test_info_size_of_a_model_dir_and_train_memory(tiny_model_dir, capsys):
    stages = info_json(capsys, "--model", str(tiny_model_dir), "--size", "128x64")["stages"]
    assert [(s["width"], s["resolution"], s["tokens"]) for s in stages] == [(32, 16, 32), (64, 32, 128),
                                                                           (128, 64, 512)]
    memory = info_json(capsys, "--preset", "nami-2b", "--size", "1024x576", "--train-memory", "--batch-size", "4")
    square = info_json(capsys, "--preset", "nami-2b", "--train-memory", "--batch-size", "4")
    assert (memory["width"], memory["height"]) == (1024, 576)
    assert [(w["width"], w["resolution"], w["tokens"]) for w in memory["windows"]] == [
        (256, 144, 144), (512, 288, 576), (1024, 576, 2304)]
    assert [w["tokens"] for w in square["windows"]] == [256, 1024, 4096]
    assert memory["bytes"]["activations"] < square["bytes"]["activations"]


@pytest.mark.parametrize("args,message", [
    (["--size", "abc"], "--size must be WIDTHxHEIGHT in pixels"),
    (["--size", "1000x576"], "image size 1000x576: width 1000 is not a multiple of 64; with 3 stages every side "
                             "must be a multiple of 16 pixels per token x 2^2, so each stage's sides are whole tokens "
                             "(nearest: 960 or 1024)"),
    (["--size", "1024x576", "--stages", "256,512,1024"], "give --stages or --size, not both"),
])
def test_info_bad_size_is_one_error_line(capsys, args, message):
    code, _, err = run_cli(["info", "--preset", "nami-2b", *args], capsys)
    assert message in one_line_error(code, err)


def test_info_table_shows_the_size(capsys):
    code, out, err = run_cli(["info", "--preset", "nami-2b", "--size", "1024x576"], capsys)
    assert code == 0, err
    assert "nami-2b at 1024x576" in out and "2304" in out
