"""Interoperability: FLUX initialisation and diffusers loading (the public NAMI-T2I release is
tested in test_release.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nami_core.pipeline import NamiPipeline
from tests.helpers import build_tiny_pipeline
from tests.helpers import run_cli as cli

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
        from nami_core.pipeline import register_pipeline_class

        register_pipeline_class(NamiPipeline)


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
    (["--double", "2", "--single", "1", "--stage-ends", "1,2,4"], "--stage-ends [1, 2, 4] exceed the model depth of 3 blocks"),
    (["--double", "2", "--stage-ends", "1,2"], "--double and --single go together"),
])
def test_convert_flux_errors_are_one_line(flux_source, tmp_path, capsys, args, expected):
    src, _ = flux_source
    code, _, err = cli(["convert", "flux", str(src), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_source_with_non_finite_kept_weights_writes_nothing(flux_source, tmp_path, capsys, value):
    from safetensors.torch import save_file

    _, state = flux_source
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((flux_source[0] / "config.json").read_text())
    bad = {k: v.clone() for k, v in state.items()}
    bad["single_transformer_blocks.1.proj_out.weight"][0, 0] = value
    save_file(bad, str(damaged / "diffusion_pytorch_model.safetensors"))
    code, _, err = cli(["convert", "flux", str(damaged), "--out", str(tmp_path / "o"), "--stage-ends", "2,4,6"], capsys)
    assert code == 2 and "the kept weights hold non-finite values (1 of " in err, err
    assert "e.g. single_transformer_blocks.1.proj_out.weight); the source is damaged, nothing was written" in err
    assert not (tmp_path / "o").exists()
    # a damaged block that is not kept does not matter
    code, _, err = cli(["convert", "flux", str(damaged), "--out", str(tmp_path / "o"), "--double", "3", "--single", "1",
                        "--stage-ends", "2,3,4"], capsys)
    assert code == 0, err


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
        return cli(["train", "--data", str(tmp_path / "data"), "--out", str(out), "--model", str(init_dir),
                    "--stages", "16,32,64", "--steps", str(steps), "--batch-size", "4", "--lr", str(lr),
                    "--ema-decay", "0", "--save-every", "100", "--log-every", "1"], capsys)

    code, _, err = train(tmp_path / "nowhere", tmp_path / "bad-run")
    assert code == 2 and "--model" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = train(init, tmp_path / "run")
    assert code == 0, err
    final = tmp_path / "run" / "final" / "transformer"
    config = json.loads((final / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"], config["stage_ends"]) == (2, 2, [1, 2, 4])
    trained = load_file(final / "diffusion_pytorch_model.safetensors")
    moved = (trained["x_embedder.weight"] - state["x_embedder.weight"]).abs().max().item()
    assert 0 < moved <= 1.5 * lr * steps  # Adam moves each weight by at most about lr per step
