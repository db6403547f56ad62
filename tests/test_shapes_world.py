"""The shapes world: vocabulary contract, determinism, truthful captions, scenes for GenEval metadata."""

import re
from collections import Counter

import numpy as np
import pytest

from nami_core.data.shapes import (
    BACKGROUND,
    CLASSES,
    COLORS,
    DEFAULT_SCENE_MIX,
    NUMBERS,
    RELATIONS,
    USUAL_COLORS,
    SceneStyle,
    ShapesSource,
    make_suite,
    parse_scene_mix,
    random_scene,
    render,
    scene_for_metadata,
    scene_rng,
)
from nami_core.errors import NamiError
from nami_core.geometry import relative_position

WORD_COUNTS = {"a": 1, "an": 1, **{w: n for n, w in NUMBERS.items()}}
PHRASE = re.compile(
    r"\b(a|an|one|two|three|four) (?:(" + "|".join(COLORS) + r") )?(" + "|".join(CLASSES) + r")s?\b"
)


def parse(caption):
    """(count, color or None, class) for every noun phrase, plus the relation if one is stated."""
    phrases = [(WORD_COUNTS[m.group(1)], m.group(2), m.group(3)) for m in PHRASE.finditer(caption)]
    relation = next((r for r in RELATIONS if f" {r} " in caption), None)
    return phrases, relation


def test_vocabulary_is_the_contract():
    assert CLASSES == ("circle", "square", "triangle", "diamond")
    assert tuple(COLORS) == ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert BACKGROUND == (128, 128, 128)


def test_scenes_are_deterministic_by_seed():
    a = random_scene(scene_rng(3, 17))
    b = random_scene(scene_rng(3, 17))
    c = random_scene(scene_rng(4, 17))
    assert a == b and a != c
    assert np.array_equal(np.asarray(render(a.shapes)), np.asarray(render(b.shapes)))
    items = list(ShapesSource(n=5, seed=3))
    assert [i.caption for i in items] == [random_scene(scene_rng(3, i)).caption for i in range(5)]


@pytest.mark.parametrize("seed", [0, 1])
def test_captions_are_truthful(seed):
    counts = Counter()
    for i in range(400):
        scene = random_scene(scene_rng(seed, i))
        phrases, relation = parse(scene.caption)
        assert phrases, scene.caption
        assert 1 <= len(scene.shapes) <= 4
        # every object is described: the counts per class add up
        described = Counter()
        for n, color, cls in phrases:
            described[cls] += n
            if color:
                assert sum(1 for s in scene.shapes if s.cls == cls and s.color == color) >= n, scene.caption
        assert described == Counter(s.cls for s in scene.shapes), scene.caption
        if relation:
            counts["relation"] += 1
            first, second = phrases[0], phrases[1]
            a = next(s for s in scene.shapes if s.cls == first[2] and (first[1] is None or s.color == first[1]))
            b = next(s for s in scene.shapes if s is not a and s.cls == second[2]
                     and (second[1] is None or s.color == second[1]))
            assert relation in relative_position(a.box, b.box), scene.caption
        for s in scene.shapes:
            assert 0 <= s.box[0] < s.box[2] <= 64 and 0 <= s.box[1] < s.box[3] <= 64
        counts[len(scene.shapes)] += 1
    assert 60 <= counts["relation"] <= 140  # about a quarter of the scenes state a relation
    assert counts[1] > 50 and counts[4] > 0


def test_scene_mix_draws_each_kind_in_its_share():
    assert parse_scene_mix("relation:2, objects:2,pair:1,count:1") == {"relation": 2, "objects": 2, "pair": 1, "count": 1}
    assert parse_scene_mix("relation:1,objects:3") == DEFAULT_SCENE_MIX
    kinds = Counter()
    mix = parse_scene_mix("relation:1,pair:2,count:1")
    for i in range(400):
        scene = random_scene(scene_rng(0, i), 64, mix)
        phrases, relation = parse(scene.caption)
        classes = Counter(s.cls for s in scene.shapes)
        assert sum(n for n, _, _ in phrases) == len(scene.shapes), scene.caption
        if relation:
            kinds["relation"] += 1
            assert len(scene.shapes) == 2
        elif len(classes) == 2:  # "a circle and a triangle": one of each
            kinds["pair"] += 1
            assert sorted(classes.values()) == [1, 1] and len(phrases) == 2, scene.caption
        else:  # "three squares"
            kinds["count"] += 1
            assert len(classes) == 1 and 2 <= len(scene.shapes) <= 4 and phrases[0][0] == len(scene.shapes)
    assert 70 <= kinds["relation"] <= 130 and 160 <= kinds["pair"] <= 240 and 70 <= kinds["count"] <= 130
    # the default mix is the same stream as no mix at all, so existing data sets stay reproducible
    items = list(ShapesSource(n=5, seed=3, mix=dict(DEFAULT_SCENE_MIX)))
    assert [i.caption for i in items] == [random_scene(scene_rng(3, i)).caption for i in range(5)]
    assert "mix" not in ShapesSource(n=5).describe()
    assert "mix relation:1,pair:2,count:1" in ShapesSource(n=5, mix=mix).describe()


@pytest.mark.parametrize("text, message", [
    ("crowd:1", "'crowd:1' is not KIND:WEIGHT"),
    ("pair", "'pair' is not KIND:WEIGHT"),
    ("pair:x", "must be a number >= 0, got 'x'"),
    ("pair:nan", "must be a number >= 0"),
    ("pair:0,count:0", "at least one weight must be above 0"),
])
def test_scene_mix_errors_name_the_problem(text, message):
    with pytest.raises(NamiError, match=message):
        parse_scene_mix(text)


def unnamed_objects(scene):
    """The shapes whose colour the caption leaves out (one noun phrase per class in every scene kind)."""
    phrases, _ = parse(scene.caption)
    bare = {cls for _, color, cls in phrases if color is None}
    return [s for s in scene.shapes if s.cls in bare]


def test_usual_color_paints_only_objects_whose_colour_is_unnamed():
    assert USUAL_COLORS == {"circle": "red", "square": "blue", "triangle": "yellow", "diamond": "green"}
    mix = parse_scene_mix("relation:2,objects:2,pair:1,count:1")
    for rate, low, high in ((1.0, 1.0, 1.0), (0.5, 0.5, 0.65), (0.0, 0.07, 0.2)):
        usual = unnamed = 0
        for i in range(400):
            scene = random_scene(scene_rng(2, i), 64, mix, SceneStyle(usual_color=rate))
            phrases, _ = parse(scene.caption)
            for n, color, cls in phrases:  # named colours are still drawn as named
                if color:
                    assert sum(1 for s in scene.shapes if s.cls == cls and s.color == color) >= n, scene.caption
            objects = unnamed_objects(scene)
            unnamed += len(objects)
            usual += sum(s.color == USUAL_COLORS[s.cls] for s in objects)
        # a random colour is the usual one 1 time in 8
        assert unnamed > 200 and low <= usual / unnamed <= high, (rate, usual, unnamed)


def test_default_style_keeps_the_scene_stream():
    style = SceneStyle(usual_color=0.0, gap=2.0)
    for i in range(50):
        assert random_scene(scene_rng(5, i), 64, None, style) == random_scene(scene_rng(5, i))
    changed = sum(random_scene(scene_rng(5, i), 64, None, SceneStyle(usual_color=0.8)) != random_scene(scene_rng(5, i))
                  for i in range(50))
    assert changed > 10
    assert "usual" not in ShapesSource(n=5).describe() and "gap" not in ShapesSource(n=5).describe()
    assert ", usual colour 0.8, gap 6px)" in ShapesSource(n=5, style=SceneStyle(0.8, 6)).describe()


@pytest.mark.parametrize("gap", [2.0, 6.0])
def test_objects_keep_the_gap(gap):
    smallest = []
    for i in range(300):
        shapes = random_scene(scene_rng(1, i), 64, None, SceneStyle(gap=gap)).shapes
        for j, a in enumerate(shapes):
            for b in shapes[j + 1:]:
                dx = max(b.box[0] - a.box[2], a.box[0] - b.box[2])
                dy = max(b.box[1] - a.box[3], a.box[1] - b.box[3])
                smallest.append(max(dx, dy))
    assert min(smallest) >= gap and min(smallest) < gap + 1


@pytest.mark.parametrize("kwargs, message", [
    ({"usual_color": 1.5}, "--usual-color must be between 0 and 1, got 1.5"),
    ({"usual_color": float("nan")}, "--usual-color must be between 0 and 1, got nan"),
    ({"gap": -1}, "--gap must be between 0 and 8 pixels, got -1"),
    ({"gap": 9}, "--gap must be between 0 and 8 pixels, got 9"),
])
def test_scene_style_errors_name_the_problem(kwargs, message):
    with pytest.raises(NamiError, match=re.escape(message)):
        SceneStyle(**kwargs)


def test_shapes_do_not_overlap_and_are_drawn_in_their_colors():
    scene = random_scene(scene_rng(0, 5))
    img = np.asarray(render(scene.shapes)).astype(int)
    for s in scene.shapes:
        cx, cy = (int(v) for v in s.center)
        assert tuple(img[cy, cx]) == COLORS[s.color]
    for i, a in enumerate(scene.shapes):
        for b in scene.shapes[i + 1:]:
            assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
    assert tuple(img[0, 0]) == BACKGROUND or any(s.box[0] < 1 and s.box[1] < 1 for s in scene.shapes)


def test_suite_covers_geneval_tags_and_scenes_satisfy_metadata():
    suite = make_suite(5, seed=0)
    assert Counter(line["tag"] for line in suite) == {t: 5 for t in
                                                      ("single_object", "two_object", "counting", "colors", "position", "color_attr")}
    rng = np.random.default_rng(0)
    for line in suite:
        shapes = scene_for_metadata(line, rng)
        for spec in line["include"]:
            matching = [s for s in shapes if s.cls == spec["class"] and s.color == spec.get("color", s.color)]
            assert len(matching) >= spec["count"]
        if line["tag"] == "position":
            relation, other = line["include"][1]["position"]
            a = next(s for s in shapes if s.cls == line["include"][1]["class"])
            b = next(s for s in shapes if s.cls == line["include"][other]["class"])
            assert relation in relative_position(a.box, b.box)
    assert suite[0]["prompt"].startswith("a photo of a")
