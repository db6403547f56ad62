"""GenEval: metadata reader, the rule engine on hand-made detections, folder layout, `nami eval geneval`."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nami_core.errors import NamiError
from nami_core.eval import geneval as ge
from nami_core.eval.geneval import Detection, evaluate_image
from tests.helpers import run_cli

OFFICIAL = Path("/work/shared/geneval/evaluation_metadata.jsonl")


def det(cls, score, box=(0, 0, 10, 10), color=None):
    return Detection(cls, score, tuple(float(v) for v in box), color=color)


def meta(tag, include, exclude=None, prompt="p"):
    line = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        line["exclude"] = exclude
    return line


ONE_CIRCLE = meta("single_object", [{"class": "circle", "count": 1}])
TWO_CIRCLES = meta("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])


# -- thresholds ---------------------------------------------------------------------------------------


def test_score_must_exceed_threshold_strictly():
    assert evaluate_image([det("circle", 0.31)], ONE_CIRCLE)[0] is True
    correct, reason, details = evaluate_image([det("circle", 0.3)], ONE_CIRCLE)
    assert correct is False and reason == "expected circle>=1, found 0" and details == {}


def test_wrong_class_does_not_count():
    correct, reason, _ = evaluate_image([det("square", 0.99)], ONE_CIRCLE)
    assert not correct and reason == "expected circle>=1, found 0"


def test_counting_uses_threshold_0_9_other_tags_0_3():
    dets = [det("circle", 0.95), det("circle", 0.91, (20, 0, 30, 10)), det("circle", 0.9, (40, 0, 50, 10))]
    # counting: 0.9 is not above 0.9, so two circles count and the exclude (>= 3) does not fire
    assert evaluate_image(dets, TWO_CIRCLES) == (True, "", {"circle": [[0, 0, 10, 10, 0.95], [20, 0, 30, 10, 0.91]]})
    # the same detections under another tag: all three count (0.9 > 0.3), so the exclude fires
    other = dict(TWO_CIRCLES, tag="two_object")
    assert evaluate_image(dets, other)[:2] == (False, "expected circle<3, found 3")
    # a 0.5 circle passes 0.3 but not 0.9
    assert evaluate_image([det("circle", 0.5)], ONE_CIRCLE)[0] is True
    one_counted = meta("counting", [{"class": "circle", "count": 1}])
    assert evaluate_image([det("circle", 0.5)], one_counted)[:2] == (False, "expected circle>=1, found 0")


def test_exclude_edges():
    dets = [det("circle", 0.95, (i * 12, 0, i * 12 + 10, 10)) for i in range(3)]
    # found == count passes
    assert evaluate_image(dets[:2], TWO_CIRCLES)[0] is True
    # found == exclude count fails
    assert evaluate_image(dets, TWO_CIRCLES)[:2] == (False, "expected circle<3, found 3")
    # too few: the include fails (and reports the truncated count), the exclude does not
    assert evaluate_image(dets[:1], TWO_CIRCLES)[:2] == (False, "expected circle>=2, found 1")


def test_at_most_16_objects_per_class():
    dets = [det("circle", 0.5 + i / 100, (i, 0, i + 1, 1)) for i in range(20)]
    seventeen = meta("two_object", [{"class": "circle", "count": 1}], [{"class": "circle", "count": 17}])
    correct, _, details = evaluate_image(dets, seventeen)
    assert correct and len(details["circle"]) == 16
    assert [box[4] for box in details["circle"]][:2] == pytest.approx([0.69, 0.68])  # highest scores first
    sixteen = meta("two_object", [{"class": "circle", "count": 1}], [{"class": "circle", "count": 16}])
    assert evaluate_image(dets, sixteen)[:2] == (False, "expected circle<16, found 16")
    needs_17 = meta("counting", [{"class": "circle", "count": 17}])
    assert evaluate_image([det("circle", 0.95, (i, 0, i + 1, 1)) for i in range(20)], needs_17)[1] == \
        "expected circle>=17, found 16"


# -- colors -------------------------------------------------------------------------------------------


RED_CIRCLE = meta("colors", [{"class": "circle", "count": 1, "color": "red"}])


def test_color_checked_on_top_detections_only():
    # a wrong-colored extra detection with a lower score does not matter
    assert evaluate_image([det("circle", 0.9, color="red"), det("circle", 0.4, color="blue")], RED_CIRCLE)[0]
    # a wrong-colored top detection fails, though a red one is also found
    correct, reason, _ = evaluate_image([det("circle", 0.4, color="red"), det("circle", 0.9, color="blue")], RED_CIRCLE)
    assert not correct and reason == "expected red circle>=1, found 0 red; and 1 blue"


def test_all_top_count_detections_need_the_color():
    two_red = meta("color_attr", [{"class": "square", "count": 2, "color": "red"}])
    dets = [det("square", 0.9, color="red"), det("square", 0.8, color="red"), det("square", 0.7, color="green")]
    assert evaluate_image(dets, two_red)[0]
    dets[1] = det("square", 0.8, color=None)
    correct, reason, _ = evaluate_image(dets, two_red)
    assert not correct and reason == "expected red square>=2, found 1 red; and 1 red, 1 unknown"


def test_color_attr_reasons_for_each_failed_entry():
    line = meta("color_attr", [{"class": "circle", "count": 1, "color": "red"},
                               {"class": "square", "count": 1, "color": "blue"}])
    assert evaluate_image([det("circle", 0.9, color="red"), det("square", 0.9, color="blue")], line)[0]
    correct, reason, _ = evaluate_image([det("circle", 0.9, color="green"), det("square", 0.9, color="yellow")], line)
    assert not correct
    assert reason.split("\n") == ["expected red circle>=1, found 0 red; and 1 green",
                                  "expected blue square>=1, found 0 blue; and 1 yellow"]


# -- position -----------------------------------------------------------------------------------------


SQUARE_RIGHT_OF_CIRCLE = meta("position", [{"class": "circle", "count": 1},
                                           {"class": "square", "count": 1, "position": ["right of", 0]}])


@pytest.mark.parametrize("shift, expected", [
    # 10-px boxes side by side: margin 0.1 * (10 + 10) = 2 px; dx = (shift - 2) / shift must exceed 0.5
    (1.5, set()), (2.0, set()), (4.0, set()), (4.5, {"right of"}), (20.0, {"right of"}), (-4.5, {"left of"}),
])
def test_relative_position_margin(shift, expected):
    assert ge.relative_position((shift, 0, shift + 10, 10), (0, 0, 10, 10)) == expected


def test_relative_position_hand_computed():
    # offset (6, 6), margin 2 on each axis: (4, 4) / 8.485 = 0.471 on both axes, neither above 0.5
    assert ge.relative_position((6, 6, 16, 16), (0, 0, 10, 10)) == set()
    # offset (10, -3): revised (8, -1) / 10.44 = (0.766, -0.096)
    assert ge.relative_position((10, -3, 20, 7), (0, 0, 10, 10)) == {"right of"}
    # offset (12, 12): revised (10, 10) / 16.97 = 0.589 on both axes: right of and below (y grows down)
    assert ge.relative_position((12, 12, 22, 22), (0, 0, 10, 10)) == {"right of", "below"}
    # same centre, different sizes: no relation
    assert ge.relative_position((2, 2, 8, 8), (0, 0, 10, 10)) == set()


# GenEval's position rule, worked by hand from its definition (geneval.relative_position's docstring
# and GenEval's evaluate_images.py), for box a = (x0, y0, x1, y1) relative to box b, x right, y down:
#   offset  = centre(a) - centre(b)                                  (per axis)
#   margin  = 0.1 * (side of a + side of b)                         (per axis: widths on x, heights on y)
#   revised = sign(offset) * max(|offset| - margin, 0)
#   no relation when |revised| < 1e-3 on both axes (this also covers equal centres, offset 0);
#   otherwise d = revised / |offset| (the length of the UNshrunk offset) and
#   "left of" dx < -0.5, "right of" dx > 0.5, "above" dy < -0.5, "below" dy > 0.5 (strictly).
# With b = B10 = (0, 0, 10, 10) and a 10 x 10 box a, the margin is 2 px on each axis; a pure horizontal
# shift s > 2 gives dx = (s - 2) / s, which passes 0.5 only for s > 4.
B10 = (0.0, 0.0, 10.0, 10.0)
POSITION_CASES = [
    # (box a, box b, relations of a to b, how the expected set follows from the rule)
    ((4.0, 0, 14, 10), B10, set(), "offset (4, 0): dx = 2 / 4 = 0.5 exactly, not beyond 0.5"),
    ((4.1, 0, 14.1, 10), B10, {"right of"}, "offset (4.1, 0): dx = 2.1 / 4.1 = 0.512"),
    ((3.9, 0, 13.9, 10), B10, set(), "offset (3.9, 0): dx = 1.9 / 3.9 = 0.487"),
    ((-4.1, 0, 5.9, 10), B10, {"left of"}, "offset (-4.1, 0): dx = -0.512"),
    ((-4.0, 0, 6, 10), B10, set(), "offset (-4, 0): dx = -0.5 exactly"),
    ((0, 4.1, 10, 14.1), B10, {"below"}, "offset (0, 4.1): dy = +0.512; y grows downwards"),
    ((0, -4.1, 10, 5.9), B10, {"above"}, "offset (0, -4.1): dy = -0.512"),
    ((0, -4.0, 10, 6), B10, set(), "offset (0, -4): dy = -0.5 exactly"),
    ((0, 4.0, 10, 14), B10, set(), "offset (0, 4): dy = +0.5 exactly"),
    ((2.0, 0, 12, 10), B10, set(), "offset (2, 0) equals the 2 px margin: revised (0, 0) vanishes"),
    ((2, 2, 8, 8), B10, set(), "same centre, offset (0, 0): no relation (and no division by zero)"),
    ((30, 0, 40, 10), B10, {"right of"}, "offset (30, 0): dx = 28 / 30 = 0.93"),
    # the margin sums both boxes' sides on that axis: a 30 px wide box a gives 0.1 * (30 + 10) = 4 px on x
    # (a margin from b's width alone, 1 px, or from the heights, 2 px, would call the first row "right of")
    ((-2.2, 0, 27.8, 10), B10, set(), "wide a, offset (7.8, 0): dx = 3.8 / 7.8 = 0.487"),
    ((-1.8, 0, 28.2, 10), B10, {"right of"}, "wide a, offset (8.2, 0): dx = 4.2 / 8.2 = 0.512"),
    ((0, -2.2, 10, 27.8), B10, set(), "tall a, offset (0, 7.8): dy = 3.8 / 7.8 = 0.487"),
    ((0, -1.8, 10, 28.2), B10, {"below"}, "tall a, offset (0, 8.2): dy = 4.2 / 8.2 = 0.512"),
    # the shrunk offset is divided by the length of the unshrunk offset, not of the shrunk one
    ((4.1, 1.9, 14.1, 11.9), B10, set(), "offset (4.1, 1.9): revised (2.1, 0) / 4.519 = (0.465, 0)"),
    ((10, -3, 20, 7), B10, {"right of"}, "offset (10, -3): revised (8, -1) / 10.44 = (0.766, -0.096)"),
    # diagonals: offset (o, o) gives (o - 2) / (o * sqrt 2) on both axes, beyond 0.5 only for o > 6.83
    ((6.8, 6.8, 16.8, 16.8), B10, set(), "offset (6.8, 6.8): 4.8 / 9.617 = 0.4991 on both axes"),
    ((6.9, 6.9, 16.9, 16.9), B10, {"right of", "below"}, "offset (6.9, 6.9): 4.9 / 9.758 = 0.5022"),
    ((-6.9, -6.9, 3.1, 3.1), B10, {"left of", "above"}, "offset (-6.9, -6.9): -0.5022 on both axes"),
    ((6.9, -6.9, 16.9, 3.1), B10, {"right of", "above"}, "offset (6.9, -6.9)"),
    ((-6.9, 6.9, 3.1, 16.9), B10, {"left of", "below"}, "offset (-6.9, 6.9)"),
    # neither box at the origin, unequal sizes: b (20, 20, 40, 30) has centre (30, 25), sides (20, 10)
    ((44, 22, 52, 28), (20, 20, 40, 30), {"right of"},
     ("b off the origin, a right: a centre (48, 25), sides (8, 6); offset (18, 0), "
      "margin 0.1 * 28 = 2.8: dx = 15.2 / 18 = 0.84")),
    ((26, 0, 34, 12), (20, 20, 40, 30), {"above"},
     ("b off the origin, a above: a centre (30, 6), sides (8, 12); offset (0, -19), "
      "margin 0.1 * 22 = 2.2: dy = -16.8 / 19 = -0.88")),
]
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ALL_RELATIONS = ("left of", "right of", "above", "below")


def _boxes(case):
    return tuple(float(v) for v in case[0]), tuple(float(v) for v in case[1])


def test_position_table_covers_all_four_relations():
    assert set().union(*(expected for _, _, expected, _ in POSITION_CASES)) == set(ALL_RELATIONS)
    assert ge.RELATIONS == ALL_RELATIONS


@pytest.mark.parametrize("case", POSITION_CASES, ids=[c[3].split(":")[0] for c in POSITION_CASES])
def test_geneval_relative_position_follows_the_rule(case):
    box_a, box_b = _boxes(case)
    expected = case[2]
    assert ge.relative_position(box_a, box_b) == expected, case[3]
    # swapping the boxes negates the offset and keeps the margin: every relation turns into its mirror
    assert ge.relative_position(box_b, box_a) == {MIRROR[r] for r in expected}, case[3]
    # the scorer decides position prompts by the same rule: "square REL circle" holds iff REL is expected
    for relation in ALL_RELATIONS:
        line = meta("position", [{"class": "circle", "count": 1},
                                 {"class": "square", "count": 1, "position": [relation, 0]}])
        correct = evaluate_image([det("circle", 0.9, box_b), det("square", 0.9, box_a)], line)[0]
        assert correct is (relation in expected), (relation, case[3])


class _Rejected(Exception):
    """Raised by the fake `place` when the shapes world asks for a second layout: it refused the first."""


def _caption_relation(scene):
    """The relation a caption states of scene.shapes[0] relative to scene.shapes[1].

    Captions read "A REL B", "A is (to the) REL B" or "B OPPOSITE(REL) A"; the first noun phrase tells
    which object comes first (same-class pairs always name two different colours)."""
    import re

    from nami_core.data.shapes import CLASSES, COLORS

    a, b = scene.shapes
    said = [r for r in ALL_RELATIONS if f" {r} " in scene.caption]
    assert len(said) == 1, scene.caption
    phrase = re.search(r"\b(?:a|an) (?:(" + "|".join(COLORS) + r") )?(" + "|".join(CLASSES) + r")\b", scene.caption)
    color, cls = phrase.groups()
    if a.cls != b.cls:
        a_first = cls == a.cls
    else:
        assert color is not None and a.color != b.color, scene.caption
        a_first = color == a.color
    return said[0] if a_first else MIRROR[said[0]]


@pytest.mark.parametrize("case", POSITION_CASES, ids=[c[3].split(":")[0] for c in POSITION_CASES])
def test_shapes_world_captions_and_lays_out_relations_by_the_rule(case, monkeypatch):
    """The shapes world states a relation in a caption only when the rule confirms it, and lays out
    GenEval position prompts by the same rule: fed a fixed pair of boxes, it must accept exactly the
    hand-derived relations (whatever function it uses for the rule)."""
    from nami_core.data import shapes

    box_a, box_b = _boxes(case)
    expected = case[2]

    # captions: relation scenes draw a relation, then ask `place` for two boxes until the rule agrees
    calls = []

    def place_pair(rng, count, size, boxes=None, **kw):
        assert count == 2 and not boxes
        calls.append(1)
        if len(calls) > 1:
            raise _Rejected
        return [box_a, box_b]

    monkeypatch.setattr(shapes, "place", place_pair)
    accepted, rejected = set(), 0
    for seed in range(40):  # each seed draws one of the 4 relations; 40 seeds draw each of them
        calls.clear()
        try:
            scene = shapes.random_scene(np.random.default_rng(seed), 64, {"relation": 1.0})
        except _Rejected:
            rejected += 1
            continue
        assert [s.box for s in scene.shapes] == [box_a, box_b]
        accepted.add(_caption_relation(scene))
    assert accepted == expected, case[3]
    assert (rejected == 40) is (not expected)

    # GenEval position scenes: the anchor (include entry 0) gets box b, the related object box a
    tries = []

    def place_anchor_then_a(rng, count, size, boxes=None, **kw):
        if not boxes:
            return [box_b]
        tries.append(1)
        if len(tries) > 1:
            raise _Rejected
        return [box_a]

    monkeypatch.setattr(shapes, "place", place_anchor_then_a)
    for relation in ALL_RELATIONS:
        tries.clear()
        line = {"tag": "position", "prompt": "p", "include": [
            {"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": [relation, 0]}]}
        try:
            laid_out = shapes.scene_for_metadata(line, np.random.default_rng(0))
        except _Rejected:
            laid_out = None
        assert (laid_out is not None) is (relation in expected), (relation, case[3])
        if laid_out is not None:
            assert [s.box for s in laid_out] == [box_b, box_a]


def test_position_outside_margin_passes_inside_fails():
    circle = det("circle", 0.9, (0, 0, 10, 10))
    assert evaluate_image([circle, det("square", 0.9, (4.5, 0, 14.5, 10))], SQUARE_RIGHT_OF_CIRCLE)[0]
    correct, reason, _ = evaluate_image([circle, det("square", 0.9, (4, 0, 14, 10))], SQUARE_RIGHT_OF_CIRCLE)
    assert not correct and reason == "expected square right of circle, found square no clear relation to circle"
    correct, reason, _ = evaluate_image([circle, det("square", 0.9, (0, 20, 10, 30))], SQUARE_RIGHT_OF_CIRCLE)
    assert not correct and reason == "expected square right of circle, found square below circle"


def test_position_overlapping_centres_give_no_relation():
    correct, reason, _ = evaluate_image([det("circle", 0.9, (0, 0, 20, 20)), det("square", 0.9, (5, 5, 15, 15))],
                                        SQUARE_RIGHT_OF_CIRCLE)
    assert not correct and "no clear relation" in reason


def test_position_uses_top_detections_against_every_matched_target():
    line = meta("position", [{"class": "circle", "count": 2},
                             {"class": "square", "count": 1, "position": ["right of", 0]}])
    square = det("square", 0.9, (40, 0, 50, 10))
    left_circles = [det("circle", 0.9, (0, 0, 10, 10)), det("circle", 0.8, (0, 20, 10, 30))]
    assert evaluate_image([*left_circles, square], line)[0]
    # the second target circle lies right of the square: fails
    assert not evaluate_image([left_circles[0], det("circle", 0.8, (60, 0, 70, 10)), square], line)[0]
    # a third, lower-scored circle is not a target
    assert evaluate_image([*left_circles, det("circle", 0.5, (60, 0, 70, 10)), square], line)[0]
    # a lower-scored square on the wrong side is not checked
    assert evaluate_image([*left_circles, square, det("square", 0.4, (0, 40, 10, 50))], line)[0]


def test_position_needs_a_matched_target():
    correct, reason, _ = evaluate_image([det("square", 0.9, (40, 0, 50, 10))], SQUARE_RIGHT_OF_CIRCLE)
    assert not correct and reason.split("\n") == ["expected circle>=1, found 0", "no target for square to be right of"]
    colored = meta("position", [{"class": "circle", "count": 1, "color": "red"},
                                {"class": "square", "count": 1, "position": ["right of", 0]}])
    dets = [det("circle", 0.9, (0, 0, 10, 10), color="blue"), det("square", 0.9, (40, 0, 50, 10))]
    assert evaluate_image(dets, colored)[1].split("\n")[1] == "no target for square to be right of"


def test_optional_nms_uses_genevals_inclusive_iou():
    assert ge.box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert ge.box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    dets = [det("circle", 0.9, (0, 0, 9, 9)), det("circle", 0.8, (1, 0, 10, 9))]
    assert len(ge.keep_detections(dets, "two_object")["circle"]) == 2  # no NMS by default
    assert len(ge.keep_detections(dets, "two_object", nms_threshold=0.5)["circle"]) == 1


# -- summary ------------------------------------------------------------------------------------------


def test_overall_is_the_mean_of_tag_means():
    results = ([{"tag": "a", "correct": c} for c in (True, True, False)] + [{"tag": "b", "correct": True}]
               + [{"tag": "c", "correct": c} for c in (True, False, False, False)])
    summary = ge.summarize(results)
    assert list(summary["tags"]) == ["a", "b", "c"]
    assert summary["tags"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.25})
    assert summary["overall"] == pytest.approx(0.6388889, abs=1e-6)  # (2/3 + 1 + 1/4) / 3; images alone: 4/8


# -- metadata -----------------------------------------------------------------------------------------


def test_official_metadata_parses_and_round_trips(tmp_path):
    lines = ge.read_metadata(OFFICIAL)
    assert len(lines) == 553
    assert Counter(line["tag"] for line in lines) == {"position": 100, "color_attr": 100, "two_object": 99,
                                                       "colors": 94, "single_object": 80, "counting": 80}
    copy = tmp_path / "copy.jsonl"
    ge.write_metadata(copy, lines)
    assert ge.read_metadata(copy) == lines
    assert lines == [json.loads(t) for t in OFFICIAL.read_text().splitlines()]


def test_bundled_suite_is_the_shapes_suite():
    from nami_core.eval.geneval_run import default_suite
    from nami_core.data.shapes import make_suite

    lines = ge.read_metadata(default_suite())
    assert len(lines) == 300 and lines == make_suite(50, seed=0)
    assert Counter(line["tag"] for line in lines) == {t: 50 for t in
                                                       ("single_object", "two_object", "counting", "colors",
                                                        "position", "color_attr")}


GOOD = '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"}'


@pytest.mark.parametrize("bad, problem", [
    ('{"tag": "x", "include": [', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('{"include": [{"class": "circle", "count": 1}], "prompt": "p"}', "tag must be"),
    ('{"tag": "single_object", "include": [{"class": "circle", "count": 1}]}', "prompt must be"),
    ('{"tag": "single_object", "include": [], "prompt": "p"}', "include must be a non-empty list"),
    ('{"tag": "single_object", "include": [{"count": 1}], "prompt": "p"}', "include[0].class"),
    ('{"tag": "single_object", "include": [{"class": "circle"}], "prompt": "p"}', "include[0] has no count"),
    ('{"tag": "single_object", "include": [{"class": "circle", "count": "2"}], "prompt": "p"}', "include[0].count must be a positive integer"),
    ('{"tag": "single_object", "include": [{"class": "circle", "count": true}], "prompt": "p"}', "include[0].count"),
    ('{"tag": "single_object", "include": [{"class": "circle", "count": 1, "colour": "red"}], "prompt": "p"}', "unknown key 'colour'"),
    ('{"tag": "single_object", "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["near", 0]}], "prompt": "p"}', "relation must be one of"),
    ('{"tag": "single_object", "include": [{"class": "a", "count": 1, "position": ["above", 0]}], "prompt": "p"}', "earlier include entry"),
    ('{"tag": "single_object", "include": [{"class": "a", "count": 1}], "exclude": {"class": "a"}, "prompt": "p"}', "exclude must be a list"),
    ('{"tag": "single_object", "include": [{"class": "a", "count": 1}], "exclude": [{"class": "a", "count": 0}], "prompt": "p"}', "exclude[0].count"),
    # outside GenEval's vocabulary: such a line would score 0 without a word
    ('{"tag": "single_objekt", "include": [{"class": "circle", "count": 1}], "prompt": "p"}',
     'tag must be one of GenEval\'s tags (single_object, two_object, counting, colors, position, color_attr), '
     'got "single_objekt"'),
    ('{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "magenta"}], "prompt": "p"}',
     "include[0].color must be one of GenEval's colours (red, orange, yellow, green, blue, purple, pink, brown, "
     'black, white), got "magenta"'),
    ('{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "Red"}], "prompt": "p"}', 'got "Red"'),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "meta.jsonl"
    path.write_text(GOOD + "\n\n" + bad + "\n")
    with pytest.raises(NamiError) as info:
        ge.read_metadata(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message and "\n" not in message


def test_missing_or_empty_metadata_file(tmp_path):
    with pytest.raises(NamiError, match="does not exist"):
        ge.read_metadata(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(NamiError, match="no metadata lines"):
        ge.read_metadata(tmp_path / "empty.jsonl")


# -- folder layout and evaluate_folder ----------------------------------------------------------------


def write_gray_folder(out, lines, images_per_prompt):
    from PIL import Image

    ge.write_prompt_folders(out, lines)
    for i in range(len(lines)):
        for j in range(images_per_prompt):
            Image.new("RGB", (8, 8), (128, 128, 128)).save(ge.sample_path(out, i, j))


class OneRedCircle:
    """Sees one red circle in every image; fails on call number `fail_at` when given."""

    name, classes = "fake", ("circle", "square")

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def detect(self, image):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("detector broke")
        return [det("circle", 0.95, color="red")]


FOLDER_LINES = [ONE_CIRCLE, meta("colors", [{"class": "circle", "count": 1, "color": "blue"}], prompt="blue"),
                meta("colors", [{"class": "circle", "count": 1, "color": "red"}], prompt="red")]


def test_layout_round_trip_and_paths(tmp_path):
    write_gray_folder(tmp_path, FOLDER_LINES, 2)
    assert ge.sample_path(tmp_path, 12, 3) == tmp_path / "00012" / "samples" / "0003.png"
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "00001" / "samples" / ".0002.png.tmp").write_text("ignored")
    prompts = ge.read_layout(tmp_path)
    assert [p.metadata for p in prompts] == FOLDER_LINES
    assert [[q.name for q in p.images] for p in prompts] == [["0000.png", "0001.png"]] * 3


def test_evaluate_folder_writes_results_and_summary(tmp_path):
    write_gray_folder(tmp_path, FOLDER_LINES, 2)
    results = ge.evaluate_folder(tmp_path, OneRedCircle())
    records = ge.read_results(tmp_path)
    assert records == results and len(records) == 6
    assert all(list(r) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"] for r in records)
    assert [r["correct"] for r in records] == [True, True, False, False, True, True]
    assert records[2]["reason"] == "expected blue circle>=1, found 0 blue; and 1 red"
    assert records[2]["filename"] == str(tmp_path / "00001" / "samples" / "0000.png")
    assert json.loads(records[4]["metadata"]) == FOLDER_LINES[2]
    assert json.loads(records[0]["details"]) == {"circle": [[0.0, 0.0, 10.0, 10.0, 0.95]]}
    summary = json.loads((tmp_path / "summary.json").read_text())
    # single_object 2/2, colors 2/4: overall (1 + 0.5) / 2
    assert summary == {"overall": 0.75, "tags": {"single_object": 1.0, "colors": 0.5}}


def test_failed_evaluation_leaves_no_result_file(tmp_path):
    write_gray_folder(tmp_path, FOLDER_LINES, 2)
    with pytest.raises(RuntimeError, match="detector broke"):
        ge.evaluate_folder(tmp_path, OneRedCircle(fail_at=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000", "00001", "00002"]


@pytest.mark.parametrize("breakage, problem", [
    (lambda root: (root / "00001" / "metadata.jsonl").unlink(), "has no metadata.jsonl"),
    (lambda root: [p.unlink() for p in (root / "00002" / "samples").iterdir()], "has no images"),
    (lambda root: (root / "00000" / "samples").rename(root / "00000" / "images"), "has no samples/ folder"),
    (lambda root: (root / "00001" / "metadata.jsonl").write_text('{"tag": "colors"}'), "metadata.jsonl:1: prompt must be"),
    (lambda root: (root / "00001" / "metadata.jsonl").write_bytes(b"\xff\xfe"), "metadata.jsonl is not UTF-8 text"),
    (lambda root: [(root / n).rename(root / ("p" + n)) for n in ("00000", "00001", "00002")], "has no prompt folders"),
])
def test_wrong_layout_raises(tmp_path, breakage, problem):
    write_gray_folder(tmp_path, FOLDER_LINES, 1)
    breakage(tmp_path)
    with pytest.raises(NamiError, match=problem):
        ge.read_layout(tmp_path)


# -- the command --------------------------------------------------------------------------------------



def rendered_folder(out, lines, images_per_prompt=1):
    from nami_core.data.shapes import render, scene_for_metadata

    ge.write_prompt_folders(out, lines)
    for i, line in enumerate(lines):
        for j in range(images_per_prompt):
            render(scene_for_metadata(line, np.random.default_rng([3, i, j]))).save(ge.sample_path(out, i, j))


def test_cli_scores_a_folder_of_ground_truth_scenes(tmp_path, capsys):
    from nami_core.data.shapes import make_suite

    rendered_folder(tmp_path, make_suite(2, seed=5), images_per_prompt=2)
    code, out, err = run_cli(["eval", "geneval", "--out", str(tmp_path), "--skip-generation"], capsys)
    assert code == 0, err
    assert out.rstrip("\n").splitlines()[-1] == "overall 1.000"
    assert "color_attr" in out and "position" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"overall", "tags"} and summary["overall"] == 1.0
    assert set(summary["tags"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert len(ge.read_results(tmp_path)) == 24


def test_cli_skip_generation_checks_the_given_metadata(tmp_path, capsys):
    from nami_core.data.shapes import make_suite

    lines = make_suite(1, seed=5)
    rendered_folder(tmp_path / "run", lines)
    ge.write_metadata(tmp_path / "same.jsonl", lines)
    ge.write_metadata(tmp_path / "other.jsonl", make_suite(1, seed=6))
    code, out, err = run_cli(["eval", "geneval", "--out", str(tmp_path / "run"), "--skip-generation",
                              "--metadata", str(tmp_path / "same.jsonl")], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("overall ")
    code, _, err = run_cli(["eval", "geneval", "--out", str(tmp_path / "run"), "--skip-generation",
                            "--metadata", str(tmp_path / "other.jsonl")], capsys)
    assert code == 2 and "holds a different prompt than line 1" in err


def test_cli_malformed_metadata_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + '\n{"tag": "counting", "include": [{"class": "circle", "count": 0}], "prompt": "p"}\n')
    code, out, err = run_cli(["eval", "geneval", "--metadata", str(bad), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}:2: include[0].count must be a positive integer")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, problem", [
    (["--detector", "yolo"], "unknown detector 'yolo'; choices: shapes"),
    (["--detector", "shapes:x"], "the shapes detector takes no argument"),
    (["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
])
def test_cli_bad_options(tmp_path, capsys, args, problem):
    code, out, err = run_cli(["eval", "geneval", "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2 and err.startswith(f"error: {problem}")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_cli_wrong_layout_writes_no_result(tmp_path, capsys):
    from nami_core.data.shapes import make_suite

    rendered_folder(tmp_path, make_suite(1, seed=5))
    (tmp_path / "00003" / "metadata.jsonl").unlink()
    code, _, err = run_cli(["eval", "geneval", "--out", str(tmp_path), "--skip-generation"], capsys)
    assert code == 2 and err.startswith("error: ") and "00003 has no metadata.jsonl" in err
    assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "summary.json").exists()


def test_cli_rejects_classes_the_detector_cannot_see(tmp_path, capsys):
    code, _, err = run_cli(["eval", "geneval", "--metadata", str(OFFICIAL), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "asks for 'bench'" in err and "circle, square, triangle, diamond" in err


def test_cli_generates_the_layout_with_reproducible_seeds(tiny_model_dir, tmp_path, capsys):
    import torch
    from PIL import Image

    from nami_core.modeldir import load_pipeline

    metadata = tmp_path / "two.jsonl"
    ge.write_metadata(metadata, ge.read_metadata(Path(ge.__file__).parents[1] / "assets/geneval/shapes_suite.jsonl")[:2])
    out = tmp_path / "run"
    code, stdout, err = run_cli(["eval", "geneval", "--metadata", str(metadata), "--out", str(out),
                                 "--model", str(tiny_model_dir), "--steps", "1,1,1", "--images-per-prompt", "2",
                                 "--batch-size", "4", "--seed", "10", "--device", "cpu"], capsys)
    assert code == 0, err
    assert stdout.splitlines()[-1].startswith("overall ")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["00000/metadata.jsonl", "00000/samples/0000.png", "00000/samples/0001.png",
                     "00001/metadata.jsonl", "00001/samples/0000.png", "00001/samples/0001.png",
                     "results.jsonl", "summary.json"]
    with Image.open(out / "00001" / "samples" / "0001.png") as img:
        assert json.loads(img.text["nami"])["seed"] == 13  # 10 + prompt 1 * 2 images + image 1
        generated = np.asarray(img.convert("RGB"), dtype=np.int16)
    pipe = load_pipeline(tiny_model_dir, torch.device("cpu"), torch.float32)
    alone = pipe("a photo of a diamond", seed=13, steps=(1, 1, 1)).images[0]
    assert ge.read_metadata(metadata)[1]["prompt"] == "a photo of a diamond"
    assert np.abs(np.asarray(alone, dtype=np.int16) - generated).max() <= 1
    # a second run into the same folder refuses to mix samples
    code, _, err = run_cli(["eval", "geneval", "--metadata", str(metadata), "--out", str(out),
                            "--model", str(tiny_model_dir), "--steps", "1,1,1"], capsys)
    assert code == 2 and "already holds GenEval samples" in err
