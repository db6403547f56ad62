"""The `shapes` detector: classes, colors, boxes and scores on rendered scenes; GenEval on ground truth."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from nami_core.data.shapes import BACKGROUND, CLASSES, COLORS, Shape, make_suite, render, scene_for_metadata
from nami_core.errors import NamiError
from nami_core.eval import geneval as ge
from nami_core.eval.detectors import get_detector
from nami_core.eval.detectors.shapes import ShapesDetector, coverage, shape_features

DETECTOR = ShapesDetector()


def one(image):
    found = DETECTOR.detect(image)
    assert len(found) == 1, [(d.cls, d.score) for d in found]
    return found[0]


@pytest.mark.parametrize("cls", CLASSES)
def test_each_class_in_each_color(cls):
    for k, color in enumerate(COLORS):
        box = (8.3 + 3 * k, 11.6 + k, 8.3 + 3 * k + 14 + k, 11.6 + k + 14 + k)  # sides 14..21
        d = one(render([Shape(cls, color, box)]))
        assert (d.cls, d.color) == (cls, color)
        assert d.score > 0.95
        # the renderer draws its end pixel inclusively (1/4 px wider at 4x supersampling)
        assert np.abs(np.array(d.box) - np.array(box)).max() < 0.5
        assert d.mask.shape == (64, 64) and d.mask.dtype == bool


@pytest.mark.parametrize("cls, skew, gap", [
    # analytic moments: a triangle's vertical profile is a right triangle (skewness -2*sqrt(2)/5);
    # a square's axis profiles are uniform (kurtosis 1.8) and its diagonal ones triangular (2.4)
    ("circle", 0.0, 0.0), ("square", 0.0, -0.6), ("triangle", -0.566, 0.0), ("diamond", 0.0, 0.6),
])
def test_features_match_the_analytic_moments(cls, skew, gap):
    img = np.asarray(render([Shape(cls, "blue", (20, 20, 42, 42))]), dtype=np.float64)
    alpha = coverage(img, np.ones((64, 64), bool), np.array(COLORS["blue"], float), np.array(BACKGROUND, float))
    f = shape_features(alpha)
    assert f.skew_y == pytest.approx(skew, abs=0.03) and f.kurtosis_gap == pytest.approx(gap, abs=0.03)
    side = 22.25  # the renderer's inclusive end pixel
    area = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}[cls] * side**2
    assert f.area == pytest.approx(area, rel=0.03)


@pytest.mark.parametrize("cls", CLASSES)
def test_blurred_shapes_keep_their_class(cls):
    image = render([Shape(cls, "green", (18.4, 20.1, 36.4, 38.1))]).filter(ImageFilter.GaussianBlur(1.5))
    d = one(image)
    assert d.cls == cls and d.color == "green" and d.score > 0.9


def test_shapes_that_do_not_belong_score_low():
    big = Image.new("RGB", (256, 256), BACKGROUND)
    ImageDraw.Draw(big).polygon([(80, 80), (160, 80), (120, 160)], fill=COLORS["red"])  # apex down
    assert one(big.resize((64, 64), Image.Resampling.BOX)).score < 0.3
    wide = render([Shape("square", "red", (10, 10, 40, 25))])  # a 2:1 rectangle
    assert one(wide).score < 0.3
    speck = render([Shape("square", "red", (10, 10, 15, 15))])
    assert one(speck).score < 0.3


def test_noise_and_empty_images_give_nothing():
    assert DETECTOR.detect(render([])) == []
    noisy = np.full((64, 64, 3), 128.0) + np.random.default_rng(0).normal(0, 10, (64, 64, 3))
    assert DETECTOR.detect(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))) == []


def test_touching_shapes_of_different_colors_are_split():
    image = render([Shape("square", "red", (10, 10, 26, 26)), Shape("circle", "blue", (26, 10, 42, 26))])
    found = sorted(DETECTOR.detect(image), key=lambda d: d.box[0])
    assert [(d.cls, d.color) for d in found] == [("square", "red"), ("circle", "blue")]
    assert all(d.score > 0.9 for d in found)


def test_background_is_estimated_from_the_border():
    shapes = [Shape("triangle", "yellow", (10, 12, 30, 32)), Shape("diamond", "black", (36, 30, 56, 50))]
    rgb = np.asarray(render(shapes), dtype=np.int16) + 20  # a lighter gray background
    found = DETECTOR.detect(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)))
    assert sorted((d.cls, d.color) for d in found) == [("diamond", "black"), ("triangle", "yellow")]


def test_registry():
    assert isinstance(get_detector("shapes"), ShapesDetector)
    with pytest.raises(NamiError, match="unknown detector 'yolo'; choices: shapes, mask2former"):
        get_detector("yolo")


def ground_truth_folder(out, lines, images_for_line):
    """Render a ground-truth scene per (line, image) in GenEval's layout; images_for_line[i] images for line i."""
    ge.write_prompt_folders(out, lines)
    for i, line in enumerate(lines):
        for j in range(images_for_line[i]):
            shapes = scene_for_metadata(line, np.random.default_rng([11, i, j]))
            render(shapes).save(ge.sample_path(out, i, j))


def test_ground_truth_scenes_score_at_least_0_99(tmp_path):
    suite = make_suite(50, seed=0)
    pick = np.sort(np.random.default_rng(1).choice(len(suite), size=120, replace=False))
    lines = [suite[i] for i in pick]
    ground_truth_folder(tmp_path, lines, [1] * len(lines))
    results = ge.evaluate_folder(tmp_path, DETECTOR)
    summary = ge.summarize(results)
    failed = [(r["prompt"], r["reason"]) for r in results if not r["correct"]]
    assert len(results) == 120 and set(summary["tags"]) == {
        "single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert summary["overall"] >= 0.99, failed


@pytest.mark.slow
def test_ground_truth_scenes_full_1000(tmp_path):
    """1000 scenes: the 300-line suite, 4 images for the first 100 lines and 3 for the rest."""
    suite = make_suite(50, seed=0)
    counts = [4 if i < 100 else 3 for i in range(len(suite))]
    ground_truth_folder(tmp_path, suite, counts)
    results = ge.evaluate_folder(tmp_path, DETECTOR)
    summary = ge.summarize(results)
    failed = [(r["filename"], r["reason"]) for r in results if not r["correct"]]
    print(f"\n1000 ground-truth scenes: overall {summary['overall']:.4f}, "
          f"{len(results) - len(failed)}/{len(results)} correct, tags {summary['tags']}, failures {failed}")
    assert len(results) == 1000
    assert summary["overall"] >= 0.99, failed
