"""The shapes world: 64x64 scenes of flat shapes on mid-gray, with truthful captions.

Vocabulary (a contract shared with the `shapes` detector and the GenEval-schema suites):
classes circle, square, triangle, diamond; colors red, orange, yellow, green, blue, purple,
black, white; counts 1-4; relations "left of", "right of", "above", "below" decided by
GenEval's position rule. Scenes are deterministic by (seed, index).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..geometry import OPPOSITE, RELATIONS, relative_position
from .scene_settings import DEFAULT_SCENE_MIX, DEFAULT_STYLE, SCENE_KIND_NAMES, SceneStyle, parse_scene_mix  # noqa: F401
from .sources import Source, SourceItem

if TYPE_CHECKING:
    from ..vocabulary import Vocabulary

CLASSES = ("circle", "square", "triangle", "diamond")
PLURALS = {c: c + "s" for c in CLASSES}
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUND = (128, 128, 128)
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
SUPERSAMPLE = 4
MIN_SIDE, MAX_SIDE = 14, 22
USUAL_COLORS = {"circle": "red", "square": "blue", "triangle": "yellow", "diamond": "green"}




@dataclass(frozen=True)
class Shape:
    """One object: class, color and its box (x0, y0, x1, y1) in pixels of the final image."""

    cls: str
    color: str
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def _polygon(cls: str, box: Sequence[float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cls == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if cls == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    return None


def render(shapes: Sequence[Shape], size: int = 64) -> Image.Image:
    """Draw `shapes` at `SUPERSAMPLE`x and downsample (antialiased edges)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in shapes:
        box = [v * SUPERSAMPLE for v in s.box]
        fill = COLORS[s.color]
        if s.cls == "circle":
            draw.ellipse(box, fill=fill)
        elif s.cls == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_polygon(s.cls, box), fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def _overlaps(box, others, gap: float) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap for o in others
    )


def place(rng: np.random.Generator, count: int, size: int, boxes: list | None = None, tries: int = 200,
          gap: float = DEFAULT_STYLE.gap):
    """`count` square boxes (sides MIN_SIDE..MAX_SIDE) at least `gap` apart (all scaled to `size`), or None."""
    scale = size / 64.0
    boxes = list(boxes or [])
    out = []
    for _ in range(count):
        for _ in range(tries):
            side = rng.uniform(MIN_SIDE, MAX_SIDE) * scale
            x0 = rng.uniform(1, size - 1 - side)
            y0 = rng.uniform(1, size - 1 - side)
            box = (x0, y0, x0 + side, y0 + side)
            if not _overlaps(box, boxes + out, gap * scale):
                out.append(box)
                break
        else:
            return None
    return out


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(cls: str, color: str | None, count: int = 1) -> str:
    if count == 1:
        words = f"{color} {cls}" if color else cls
        return f"{article(words)} {words}"
    words = f"{color} {PLURALS[cls]}" if color else PLURALS[cls]
    return f"{NUMBERS[count]} {words}"


PREFIXES = ("a photo of ", "a photo of ", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class Scene:
    shapes: list[Shape]
    caption: str


def _random_color(rng) -> str:
    return _pick(rng, list(COLORS))


def _unnamed_color(rng, cls: str, drawn: str, style: SceneStyle) -> str:
    """The colour of an object whose caption names none: `drawn` (random), or its class's usual colour."""
    if style.usual_color > 0 and rng.random() < style.usual_color:
        return USUAL_COLORS[cls]
    return drawn


def _relation_scene(rng, size, style: SceneStyle) -> Scene | None:
    """Two objects with a stated relation that GenEval's rule confirms."""
    relation = _pick(rng, RELATIONS)
    for _ in range(100):
        boxes = place(rng, 2, size, gap=style.gap)
        if boxes is not None and relation in relative_position(boxes[0], boxes[1]):
            break
    else:
        return None
    a_cls, b_cls = _pick(rng, CLASSES), _pick(rng, CLASSES)
    a_col, b_col = _random_color(rng), _random_color(rng)
    with_colors = rng.random() < 0.6
    if a_cls == b_cls:  # "a square left of a square" says nothing: name the colours, and make them differ
        with_colors = True
        while b_col == a_col:
            b_col = _random_color(rng)
    if not with_colors:
        a_col, b_col = _unnamed_color(rng, a_cls, a_col, style), _unnamed_color(rng, b_cls, b_col, style)
    shapes = [Shape(a_cls, a_col, boxes[0]), Shape(b_cls, b_col, boxes[1])]
    a = noun_phrase(a_cls, a_col if with_colors else None)
    b = noun_phrase(b_cls, b_col if with_colors else None)
    phrasing = rng.random()
    if phrasing < 0.6:
        caption = _pick(rng, PREFIXES) + f"{a} {relation} {b}"
    elif phrasing < 0.8:
        caption = f"{a} is {'to the ' if relation in ('left of', 'right of') else ''}{relation} {b}"
    else:
        caption = _pick(rng, PREFIXES) + f"{b} {OPPOSITE[relation]} {a}"
    return Scene(shapes, caption)


def _objects_scene(rng, size, style: SceneStyle) -> Scene | None:
    """1-4 objects in 1-3 groups of one class (and maybe one color), all described."""
    n_groups = int(rng.choice([1, 1, 1, 1, 2, 2, 2, 3]))
    classes = list(rng.choice(CLASSES, size=n_groups, replace=False))
    counts = [1] * n_groups
    total_max = 4
    for i in range(n_groups):
        room = total_max - sum(counts)
        if room > 0 and rng.random() < 0.35:
            counts[i] += int(rng.integers(1, room + 1))
    return _groups_scene(rng, size, style, classes, counts)


def _pair_scene(rng, size, style: SceneStyle) -> Scene | None:
    """One object each of two different classes ("a circle and a triangle")."""
    return _groups_scene(rng, size, style, [str(c) for c in rng.choice(CLASSES, size=2, replace=False)], [1, 1])


def _count_scene(rng, size, style: SceneStyle) -> Scene | None:
    """Two to four objects of one class ("three squares")."""
    return _groups_scene(rng, size, style, [_pick(rng, CLASSES)], [int(rng.integers(2, 5))])


def _groups_scene(rng, size, style: SceneStyle, classes: list[str], counts: list[int]) -> Scene | None:
    """`counts[i]` objects of `classes[i]` per group (maybe one color each), all described."""
    boxes = place(rng, sum(counts), size, gap=style.gap)
    if boxes is None:
        return None
    shapes, parts = [], []
    colored = rng.random() < 0.7
    it = iter(boxes)
    for cls, count in zip(classes, counts):
        same_color = count == 1 or rng.random() < 0.6
        group_color = _random_color(rng)
        named = colored and same_color
        for _ in range(count):
            color = group_color if same_color else _random_color(rng)
            shapes.append(Shape(cls, color if named else _unnamed_color(rng, cls, color, style), next(it)))
        parts.append(noun_phrase(cls, group_color if named else None, count))
    phrasing = rng.random()
    text = _join(parts)
    if phrasing < 0.75:
        caption = _pick(rng, PREFIXES) + text
    elif phrasing < 0.9:
        caption = f"there {'is' if sum(counts) == 1 else 'are'} {text}"
    else:
        caption = f"{text} on a gray background"
    return Scene(shapes, caption)


SCENE_KINDS = dict(zip(SCENE_KIND_NAMES, (_relation_scene, _objects_scene, _pair_scene, _count_scene)))


def random_scene(rng: np.random.Generator, size: int = 64, mix: dict[str, float] | None = None,
                 style: SceneStyle = DEFAULT_STYLE) -> Scene:
    """A random scene with a truthful caption, its kind drawn by `mix` (default: relations in 25%)
    and what the caption leaves open by `style`."""
    mix = mix or DEFAULT_SCENE_MIX
    kinds = [kind for kind in SCENE_KINDS if mix.get(kind, 0) > 0]
    bounds = np.cumsum([mix[kind] for kind in kinds]) / sum(mix[kind] for kind in kinds)
    while True:
        pick = min(int(np.searchsorted(bounds, rng.random(), side="right")), len(kinds) - 1)
        scene = SCENE_KINDS[kinds[pick]](rng, size, style)
        if scene is not None:
            return scene


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class ShapesSource(Source):
    """`n` random scenes for `nami prepare-data shapes`; optionally also written as PNGs + captions."""

    name = "shapes"

    def __init__(self, n: int, seed: int = 0, size: int = 64, images_dir: Path | None = None,
                 mix: dict[str, float] | None = None, style: SceneStyle = DEFAULT_STYLE) -> None:
        if n < 1:
            from ..errors import NamiError

            raise NamiError(f"--n must be at least 1, got {n}")
        self.n, self.seed, self.size = n, seed, size
        self.mix = dict(mix or DEFAULT_SCENE_MIX)
        self.style = style
        self.images_dir = Path(images_dir) if images_dir is not None else None
        if self.images_dir is not None:
            from ..output_targets import SCENES, check_out_folder

            check_out_folder(self.images_dir, SCENES, flag="--images-dir")  # new, empty, or scenes written before

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SourceItem]:
        for i in range(self.n):
            scene = random_scene(scene_rng(self.seed, i), self.size, self.mix, self.style)
            yield SourceItem(f"{i:07d}", lambda s=scene, i=i: self._image(s, i), scene.caption)

    def _image(self, scene: Scene, index: int) -> Image.Image:
        img = render(scene.shapes, self.size)
        if self.images_dir is not None:
            from ..files import write_same_or_new

            self.images_dir.mkdir(parents=True, exist_ok=True)  # made by the first scene, not by a refused command
            png = io.BytesIO()
            img.save(png, format="PNG")
            write_same_or_new(self.images_dir / f"{index:07d}.png", png.getvalue(), "--images-dir")
            write_same_or_new(self.images_dir / f"{index:07d}.txt", (scene.caption + "\n").encode("utf-8"), "--images-dir")
        return img

    def describe(self) -> str:
        mix = "" if self.mix == DEFAULT_SCENE_MIX else ", mix " + ",".join(f"{k}:{v:g}" for k, v in self.mix.items())
        usual = f", usual colour {self.style.usual_color:g}" if self.style.usual_color else ""
        gap = f", gap {self.style.gap:g}px" if self.style.gap != DEFAULT_STYLE.gap else ""
        return f"shapes world (n={self.n}, seed={self.seed}, {self.size}px{mix}{usual}{gap})"


# -- scenes for GenEval-schema metadata --------------------------------------------------------------


def scene_for_metadata(meta: dict, rng: np.random.Generator, size: int = 64) -> list[Shape]:
    """A scene that satisfies a GenEval metadata line exactly (ground truth for detector checks)."""
    for _ in range(500):
        shapes: list[Shape] = []
        groups: list[list[int]] = []
        ok = True
        for spec in meta["include"]:
            count = int(spec["count"])
            position = spec.get("position")
            boxes = None
            if position:
                relation, other = position[0], int(position[1])
                anchor = shapes[groups[other][0]].box
                for _ in range(50):
                    cand = place(rng, count, size, [s.box for s in shapes])
                    if cand and all(relation in relative_position(b, anchor) for b in cand):
                        boxes = cand
                        break
            else:
                boxes = place(rng, count, size, [s.box for s in shapes])
            if boxes is None:
                ok = False
                break
            color = spec.get("color")
            idx = []
            for box in boxes:
                idx.append(len(shapes))
                shapes.append(Shape(spec["class"], color or _random_color(rng), box))
            groups.append(idx)
        if ok:
            return shapes
    raise RuntimeError(f"cannot lay out a scene for {meta['prompt']!r}")


def make_suite(n_per_tag: int = 50, seed: int = 0) -> list[dict]:
    """A GenEval-schema prompt suite in the shapes vocabulary, `n_per_tag` lines per GenEval tag."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    colors = list(COLORS)
    lines: list[dict] = []

    def two_classes():
        a, b = rng.choice(CLASSES, size=2, replace=False)
        return str(a), str(b)

    for _ in range(n_per_tag):
        cls = _pick(rng, CLASSES)
        lines.append({"tag": "single_object", "include": [{"class": cls, "count": 1}],
                      "prompt": f"a photo of {noun_phrase(cls, None)}"})
    for _ in range(n_per_tag):
        a, b = two_classes()
        lines.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                      "prompt": f"a photo of {noun_phrase(a, None)} and {noun_phrase(b, None)}"})
    for _ in range(n_per_tag):
        cls, count = _pick(rng, CLASSES), int(rng.integers(2, 5))
        lines.append({"tag": "counting", "include": [{"class": cls, "count": count}],
                      "exclude": [{"class": cls, "count": count + 1}],
                      "prompt": f"a photo of {noun_phrase(cls, None, count)}"})
    for _ in range(n_per_tag):
        cls, color = _pick(rng, CLASSES), _pick(rng, colors)
        lines.append({"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}],
                      "prompt": f"a photo of {noun_phrase(cls, color)}"})
    for _ in range(n_per_tag):
        a, b = two_classes()
        relation = _pick(rng, RELATIONS)
        lines.append({"tag": "position",
                      "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                      "prompt": f"a photo of {noun_phrase(a, None)} {relation} {noun_phrase(b, None)}"})
    for _ in range(n_per_tag):
        a, b = two_classes()
        ca, cb = (str(c) for c in rng.choice(colors, size=2, replace=False))
        lines.append({"tag": "color_attr",
                      "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                      "prompt": f"a photo of {noun_phrase(a, ca)} and {noun_phrase(b, cb)}"})
    return lines


def shapes_vocabulary(scenes: int = 5000, seed: int = 0) -> "Vocabulary":
    """The words of the shapes world's captions (every scene kind, `scenes` random scenes) and a
    summary of what they cover."""
    from ..vocabulary import Vocabulary

    rng = np.random.default_rng(seed)
    mix = {kind: 1.0 for kind in SCENE_KINDS}
    captions = [random_scene(rng, 64, mix).caption for _ in range(scenes)]
    counts = ", ".join(NUMBERS[n] for n in sorted(NUMBERS) if n > 1)
    summary = (f"{len(CLASSES)} shapes ({', '.join(CLASSES)}), {len(COLORS)} colours ({', '.join(COLORS)}), "
               f"counts up to {NUMBERS[max(NUMBERS)]} ({counts}) and the relations {', '.join(RELATIONS)}, "
               "on a gray background")
    return Vocabulary.of_captions(captions, summary)
