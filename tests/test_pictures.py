"""The pictures people look at instead of numbers: `nami plot RUN` (the curves of metrics.jsonl),
image grids (`nami sample --grid`, validation), and the warning for a size far from the trained one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from nami_core.generate import size_warning
from nami_core.grid import MIN_TILE, PAD, image_grid, wrap
from nami_core.png import read_png_metadata
from nami_core.train.curves import draw_curves
from tests.helpers import finished_run, one_error, prepare_train_data, run_cli


# -- nami plot ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = prepare_train_data(tmp_path_factory.mktemp("plot"))
    return finished_run(root, root / "run", "--steps", "6", "--log-every", "2", "--save-every", "1000",
                        "--stage-mix", "0:1:1:1,4:1:2:5", "--lr-scheduler", "linear", "--lr-warmup-steps", "2")


def test_plot_writes_the_curves_of_the_run(run, capsys):
    code, out, err = run_cli(["plot", str(run)], capsys)
    assert code == 0, err
    assert out.strip() == str(run / "curves.png")
    with Image.open(run / "curves.png") as picture:
        assert picture.size == (1210, 825)  # 11 x 7.5 inches at 110 dpi
        pixels = np.asarray(picture.convert("L"))
    assert (pixels < 128).mean() > 0.01  # lines and text, not a blank page
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fig = draw_curves(records, ["a", "b", "c"], "t")
    loss, lr, mix, speed = fig.axes
    assert list(loss.lines[0].get_xdata()) == [2, 4, 6]
    assert list(loss.lines[0].get_ydata()) == [r["loss"] for r in records]
    for k in range(3):
        assert list(loss.lines[1 + k].get_ydata()) == [r["loss_stage"][k] for r in records]
    assert list(lr.lines[0].get_ydata()) == [r["lr"] for r in records]
    assert [r["stage_ratios"] for r in records] == [[1, 1, 1], [1, 1, 1], [1, 2, 5]]  # of steps 2, 4, 6
    edges = mix.collections[-1].get_paths()[0].vertices[:, 1]  # the last stage's layer: from stages 1+2 up to 1
    assert sorted({round(float(y), 6) for y in edges}) == [0.375, 0.666667, 1.0]  # 2/3, 2/3, then 3/8 of the mix
    assert list(speed.lines[0].get_ydata()) == [r["images_per_s"] for r in records]


def test_plot_to_another_format(run, tmp_path, capsys):
    code, _, err = run_cli(["plot", str(run), "--out", str(tmp_path / "c.svg")], capsys)
    assert code == 0, err
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("empty-folder", "has no metrics.jsonl (not a training run, or none of its steps logged yet)"),
    ("bad-suffix", "the plot is written as .png or .pdf or .svg"),
    ("damaged", "lacks loss, loss_stage, lr, stage_ratios, images_per_s"),
])
def test_plot_refusals_are_one_line(tmp_path, capsys, case, message):
    target = tmp_path / "run"
    extra = []
    if case != "missing":
        target.mkdir()
    if case == "bad-suffix":
        (target / "metrics.jsonl").write_text('{"step": 1}\n')
        extra = ["--out", str(tmp_path / "c.txt")]
    if case == "damaged":
        (target / "metrics.jsonl").write_text('{"step": 1}\n')
    code, _, err = run_cli(["plot", str(target), *extra], capsys)
    assert code == 2 and message in one_error(err)
    assert not (target / "curves.png").exists()


GOOD_RECORD = {"step": 2, "loss": 0.5, "loss_stage": [0.5, None, 0.4], "lr": 1e-4, "stage_ratios": [1, 1, 1],
               "images_per_s": 10.0}
# A record of the right keys with values of the wrong kind, in the second line (the first is fine).
WRONG_VALUES = [({"step": "x"}, ":2: step must be a whole number, got 'x'"),
                ({"step": 2.5}, ":2: step must be a whole number, got 2.5"),
                ({"loss": "0.5"}, ":2: loss must be a number, got '0.5'"),
                ({"lr": [1e-4]}, ":2: lr must be a number"),
                ({"loss_stage": [0.5]}, ":2: loss_stage must be a list of 3 numbers (one per stage), got [0.5]"),
                ({"stage_ratios": {"a": 1}}, ":2: stage_ratios must be a list of 3 numbers")]


@pytest.mark.parametrize("change, message", WRONG_VALUES, ids=lambda x: str(x)[:16])
def test_plot_refuses_values_of_the_wrong_kind(tmp_path, capsys, change, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(GOOD_RECORD) + "\n" + json.dumps({**GOOD_RECORD, **change}) + "\n")
    code, _, err = run_cli(["plot", str(run)], capsys)
    assert code == 2 and message in one_error(err), err
    assert not (run / "curves.png").exists()


# -- grids ------------------------------------------------------------------------------------------------


def test_a_grid_enlarges_small_tiles_by_a_whole_factor_and_captions_each():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)) for _ in range(5)]
    grid = image_grid(images, [f"prompt {i}\nseed {i}" for i in range(5)])
    factor = math.ceil(MIN_TILE / 64)  # 4: a 64 px wide tile becomes 256 px
    columns, rows = 3, 2  # a near-square grid of 5
    tile_w, tile_h = 64 * factor, 32 * factor
    cell_h = (grid.size[1] - PAD) // rows
    assert grid.size[0] == columns * (tile_w + PAD) + PAD and cell_h > tile_h
    pixels = np.asarray(grid)
    for i, image in enumerate(images):
        x, y = PAD + (i % columns) * (tile_w + PAD), PAD + (i // columns) * cell_h
        tile = pixels[y:y + tile_h, x:x + tile_w]
        assert np.array_equal(tile[::factor, ::factor], np.asarray(image))  # nearest neighbour: exact blocks
        caption = pixels[y + tile_h:y + cell_h - PAD, x:x + tile_w]
        assert (caption < 100).any() and (caption == 255).mean() > 0.5  # dark text on white
    empty = pixels[PAD + cell_h:, PAD + 2 * (tile_w + PAD):]  # the sixth cell is left white
    assert (empty == 255).all()
    with pytest.raises(ValueError, match="one caption per image"):
        image_grid(images, ["one"])


def test_captions_wrap_to_the_tile_and_end_in_dots_when_too_long():
    measure = len  # one pixel per character
    assert wrap("a photo of a red circle", 10, measure) == ["a photo of", "a red", "circle"]
    assert wrap("abcdefghijkl", 5, measure) == ["abcde", "fghij", "kl"]
    lines = wrap("one two three four five six seven", 9, measure, max_lines=2)
    assert lines == ["one two", "three..."] and all(len(line) <= 9 for line in lines)


def test_sample_grid_is_written_beside_the_images(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "shots"
    code, stdout, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--n", "4", "--seed", "3",
                                 "--steps", "1,1,1", "--grid", "--out", str(out)], capsys)
    assert code == 0, err
    written = stdout.split()
    images, grid = written[:4], written[-1]
    assert len(written) == 5 and [p.rsplit("-", 1)[-1] for p in images] == ["s3.png", "s4.png", "s5.png", "s6.png"]
    assert grid == images[0].rsplit("-s", 1)[0] + "-grid.png"  # the images' name, without the seed
    meta = read_png_metadata(grid)
    assert meta["seeds"] == [3, 4, 5, 6] and meta["prompt"] == "a red circle" and "seed" not in meta
    pixels = np.asarray(Image.open(grid).convert("RGB"))
    for i, path in enumerate(images[:2]):  # the first row: images 0 and 1, enlarged 4x
        x = PAD + i * (MIN_TILE + PAD)
        assert np.array_equal(pixels[PAD:PAD + MIN_TILE:4, x:x + MIN_TILE:4], np.asarray(Image.open(path).convert("RGB")))
    code, stdout, _ = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--n", "4", "--seed", "3",
                               "--steps", "1,1,1", "--grid", "--out", str(out)], capsys)
    assert code == 0 and stdout.split()[-1] == grid.replace("-grid.png", "-grid-1.png")  # never replaced unasked


def test_sample_grid_beside_named_images(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    code, stdout, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--n", "2",
                                 "--steps", "1,1,1", "--grid", "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.split() == [str(tmp_path / n) for n in ("x-0.png", "x-1.png", "x-grid.png")]


# -- sizes far from the trained one -----------------------------------------------------------------------


@pytest.mark.parametrize("size,expected", [
    ((64, 64), None), ((64, 128), None), ((32, 64), None), ((128, 128), "4 times"), ((32, 32), "0.25 times"),
    ((576, 1024), "144 times"),
])
def test_which_sizes_are_far(size, expected):
    warning = size_warning((64, 64), *size)
    if expected is None:
        assert warning is None
    else:
        assert warning.startswith(f"the model was trained at 64x64 px; {size[1]}x{size[0]} has {expected} its pixels")


def test_sample_warns_once_for_a_far_size(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--size", "256x128",
                            "--steps", "1,1,1", "--out", str(tmp_path / "far.png")], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and warnings == ["warning: the model was trained at 64x64 px; 256x128 has 8 times its pixels, "
                                      "far from what it learned: expect a flat or broken picture (sizes near 64x64 "
                                      "work)"]
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--size", "64x32",
                            "--steps", "1,1,1", "--out", str(tmp_path / "near.png")], capsys)
    assert code == 0 and "warning:" not in err


def test_a_caption_longer_than_the_font_can_measure_is_cut_to_what_shows():
    """A prompt of two million characters (a --validation-prompts line) under a grid tile: only
    what fits the caption's lines is measured, and the grid is the one of its first lines."""
    tile = Image.new("RGB", (16, 16), "red")
    huge = image_grid([tile], ["a" * 2_000_000 + "\nseed 0"])
    shown = image_grid([tile], ["a" * 5_000 + "\nseed 0"])
    assert huge.size == shown.size and huge.tobytes() == shown.tobytes()
    lines = wrap("word " * 400_000, MIN_TILE, len)
    assert len(lines) == 4 and lines[-1].endswith("...")
