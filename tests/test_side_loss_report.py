"""examples/nami-shapes/side_loss.py: the loss gap between a relation caption and its mirror."""

import importlib.util
import sys
from pathlib import Path

import pytest

from nami_core.data.shapes import SceneStyle
from tests.helpers import build_tiny_pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "nami-shapes" / "side_loss.py"
spec = importlib.util.spec_from_file_location("side_loss", SCRIPT)
side_loss = importlib.util.module_from_spec(spec)
sys.modules["side_loss"] = side_loss  # dataclasses look their module up there
spec.loader.exec_module(side_loss)


def test_mirror_turns_every_relation_and_nothing_else():
    assert side_loss.mirror_relation("a photo of a red circle left of a blue square") == \
        "a photo of a red circle right of a blue square"
    assert side_loss.mirror_relation("a square is to the right of a circle") == "a square is to the left of a circle"
    assert side_loss.mirror_relation("a diamond above a triangle") == "a diamond below a triangle"
    assert side_loss.mirror_relation("a circle below a square") == "a circle above a square"
    assert side_loss.mirror_relation("two leftover squares, clearly aboveground") == "two leftover squares, clearly aboveground"


def test_scenes_are_relation_scenes_with_truthful_captions():
    images, captions = side_loss.relation_scenes(6, 5, SceneStyle())
    assert images.shape == (6, 3, 64, 64) and float(images.min()) >= -1 and float(images.max()) <= 1
    assert all(side_loss.mirror_relation(c) != c for c in captions)
    again, same = side_loss.relation_scenes(6, 5, SceneStyle())
    assert same == captions and bool((again == images).all())


def test_gap_is_zero_without_a_relation_and_measured_per_window_with_one():
    pipe = build_tiny_pipeline()
    images, captions = side_loss.relation_scenes(4, 1, SceneStyle())
    plain = ["a photo of a red circle"] * 4  # nothing to mirror: both losses are the same forward
    rows = side_loss.side_gaps(pipe, images, plain, [0.9, 0.3], seed=2, batch=3)
    assert [(row.window, row.r) for row in rows] == [(k, r) for k in range(3) for r in (0.9, 0.3)]
    assert all(row.gap == 0 and row.loss_true == row.loss_mirror > 0 for row in rows)
    rows = side_loss.side_gaps(pipe, images, captions, [0.9], seed=2)
    assert all(row.gap != 0 and row.gap_se > 0 for row in rows)
    assert all(row.gap == pytest.approx(row.loss_mirror - row.loss_true, abs=1e-7) for row in rows)
    assert "| window | r |" in side_loss.table(rows)


def test_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        side_loss.main(["--ratios", "0.9,x"])
    assert str(exit_.value) == "error: --ratios must be comma-separated numbers, got '0.9,x'"


def test_report_on_a_model_directory(tiny_model_dir, capsys):
    """The script's own path: `load_pipeline` (a `SamplingPipeline`) and the report table."""
    side_loss.main(["--model", str(tiny_model_dir), "--scenes", "2", "--ratios", "0.5"])
    assert "| window | r |" in capsys.readouterr().out
