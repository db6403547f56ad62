"""Validation images during training: a grid per validation step drawn with the EMA weights and
the run's sampling defaults, prompt and seed under each tile; training's random streams untouched
(bit-exact with and without validation, and across a kill -9 and resume); prompt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nami_core.errors import NamiError
from nami_core.grid import MIN_TILE, PAD
from nami_core.png import read_png_metadata
from nami_core.train.config import TrainConfig
from tests.helpers import kill_after_checkpoint, prepare_train_data, run_cli, train_cli_args

PROMPTS = ("a photo of a red circle", "two blue squares")
VALIDATION = ["--validation-prompt", PROMPTS[0], "--validation-prompt", PROMPTS[1], "--validation-every", "2",
              "--validation-seed", "5"]
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("validation"))


def args(data, out, *extra):
    return train_cli_args(data, out, "--steps", "6", "--save-every", "2", "--keep", "0", "--ema-decay", "0.8",
                          "--sample-steps", "2,2,2", "--sample-cfg", "2", *extra, batch_size=4, log_every=2)


def tile(grid: Image.Image, i: int, side: int = 64) -> np.ndarray:
    """Tile i of the grid's first row, back at the model's size (tiles are enlarged by a whole factor)."""
    factor = MIN_TILE // side
    x = PAD + i * (side * factor + PAD)
    return np.asarray(grid)[PAD:PAD + side * factor:factor, x:x + side * factor:factor]


@pytest.fixture(scope="module")
def validated(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("validated") / "run"
    code, _, err = run_cli(args(data, out, *VALIDATION))
    assert code == 0, err
    return out


def test_a_grid_per_validation_step_drawn_with_the_ema_weights(validated, tmp_path, capsys):
    assert sorted(p.name for p in (validated / "samples").iterdir()) == ["step-2.png", "step-4.png", "step-6.png"]
    meta = read_png_metadata(validated / "samples" / "step-6.png")
    assert meta == {"step": 6, "prompts": list(PROMPTS), "seeds": [5, 6]}
    grid = Image.open(validated / "samples" / "step-6.png").convert("RGB")
    assert grid.size[0] == 2 * (MIN_TILE + PAD) + PAD  # two tiles of 64 px enlarged 4x, side by side
    caption = np.asarray(grid)[PAD + MIN_TILE:, PAD:PAD + MIN_TILE]
    assert (caption < 100).any()  # text under the tile
    for i, prompt in enumerate(PROMPTS):  # `nami sample` of RUN/final (its EMA weights) draws the same picture
        image = tmp_path / f"{i}.png"
        code, _, err = run_cli(["sample", prompt, "--model", str(validated / "final"), "--seed", str(5 + i),
                                "--out", str(image)], capsys)
        assert code == 0, err
        drawn = np.asarray(Image.open(image).convert("RGB")).astype(int)
        assert np.abs(tile(grid, i) - drawn).max() <= 1, i
    from nami_core.modeldir import load_pipeline

    raw = load_pipeline(validated / "final", torch.device("cpu"), torch.float32, weights="raw")
    raw_image = np.asarray(raw(PROMPTS[0], seed=5).images[0]).astype(int)
    assert np.abs(tile(grid, 0) - raw_image).max() > 8  # the raw weights draw another picture


def test_validation_leaves_training_as_it_is_and_a_killed_run_resumes_bit_exact(data, validated, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert run_cli(args(data, plain), capsys)[0] == 0
    killed = tmp_path / "killed"
    kill_after_checkpoint(args(data, killed, *VALIDATION), killed, 2)
    code, _, err = run_cli(args(data, killed, *VALIDATION, "--resume", "latest"), capsys)
    assert code == 0, err
    for name in WEIGHTS:
        a, b, c = (load_file(run / "final" / "transformer" / name) for run in (validated, plain, killed))
        assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a), name
    for step in (4, 6):
        grid = f"samples/step-{step}.png"
        assert (validated / grid).read_bytes() == (killed / grid).read_bytes(), step


def test_a_lora_run_draws_with_its_adapter(data, validated, tmp_path, capsys):
    """Under --lora the grid is the frozen model with the adapter's EMA (RUN/final/ema), as `nami sample --lora` draws it."""
    out = tmp_path / "lora"
    code, _, err = run_cli(["train", "--data", str(data / "data"), "--out", str(out), "--model",
                            str(validated / "final"), "--stages", "16,32,64", "--lora", "4", "--lr", "1e-2",
                            "--steps", "2", "--batch-size", "4", "--ema-decay", "0.5", "--validation-prompt", PROMPTS[0],
                            "--validation-seed", "5"], capsys)
    assert code == 0, err
    grid = Image.open(out / "samples" / "step-2.png").convert("RGB")
    image = tmp_path / "lora.png"
    code, _, err = run_cli(["sample", PROMPTS[0], "--model", str(validated / "final"), "--lora", str(out / "final" / "ema"),
                            "--seed", "5", "--out", str(image)], capsys)
    assert code == 0, err
    drawn = np.asarray(Image.open(image).convert("RGB")).astype(int)
    assert np.abs(tile(grid, 0) - drawn).max() <= 1
    base = np.asarray(Image.open(validated / "samples" / "step-6.png").convert("RGB"))
    assert not np.array_equal(tile(grid, 0), tile(Image.fromarray(base), 0))  # the adapter changed the picture


def test_prompts_from_a_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa red circle\n\n  two blue squares  \n".encode())
    c = TrainConfig(data="d", out="o", stages="16,32,64", validation_prompts=prompts)
    assert c.validation_prompt_list() == ["a red circle", "two blue squares"]
    assert c.to_json()["validation_prompts"] == str(prompts.resolve())


@pytest.mark.parametrize("change,message", [
    ({"validation_prompts": "missing.txt"}, "--validation-prompts missing.txt does not exist"),
    ({"validation_prompts": "empty.txt"}, "holds no prompt (one per line)"),
    ({"validation_prompts": "empty.txt", "validation_prompt": ("a",)}, "give --validation-prompt or --validation-prompts"),
    ({"validation_every": 10}, "--validation-every needs --validation-prompt or --validation-prompts"),
    ({"validation_seed": 3, "validation_every": 10}, "--validation-every and --validation-seed need"),
    ({"validation_prompt": ("a",), "validation_every": 0}, "--validation-every must be at least 1, got 0"),
    ({"validation_prompt": ("a",), "validation_every": 10**9 + 1}, "--validation-every must be at most 1,000,000,000"),
    ({"validation_prompt": ("a", "b"), "validation_seed": 2**63 - 1},
     "--validation-seed 9223372036854775807 with 2 prompts gives seeds up to 9223372036854775808, beyond the largest"),
    ({"validation_prompts": "run"}, "--validation-prompts run is a folder; give a file"),
    ({"validation_prompt": ("  ",)}, "--validation-prompt is empty"),
    ({"validation_prompt": ("a",), "fsdp": True}, "validation images are drawn by rank 0 with the whole model"),
    ({"validation_prompts": "run/prompts.txt", "out": "run"}, "holds the --validation-prompts"),
])
def test_bad_validation_settings_are_one_line(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "prompts.txt").write_text("a red circle\n")
    with pytest.raises(NamiError) as caught:
        TrainConfig(**{"data": "d", "out": "o", "stages": "16,32,64", **change})
    assert message in str(caught.value)
