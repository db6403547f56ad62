"""GenEval: prompt metadata, the rule engine that scores one image, and the folder layout.

The rules are those of GenEval's `evaluation/evaluate_images.py` (Ghosh et al., 2023):

* per class, detections are sorted by score (highest first), kept when the score is strictly
  greater than `THRESHOLD` (0.3; `COUNTING_THRESHOLD` 0.9 for the "counting" tag), compared in
  float32 as GenEval compares its float32 score arrays (so a score of float32(0.3) is not kept,
  the next float32 above it is), and capped at
  `MAX_OBJECTS` (16); GenEval's optional same-class NMS is off by default (`NMS_THRESHOLD` 1.0);
* every `include` entry takes the top-`count` detections of its class: fewer than `count` fails;
  with a `color`, all of them must have that color; with a `position` [relation, i], each of them
  must stand in `relation` to every object that include entry i matched (a failed entry i fails
  the position too). Color and position are only checked for entries whose count was met, and
  position only when the color check passed;
* every `exclude` entry fails when the kept detections of its class number `count` or more.

Metadata lines are checked before any image is generated or scored: a tag other than GenEval's six (`GENEVAL_TAGS`)
or a colour outside GenEval's ten (`GENEVAL_COLORS`), both as in GenEval's official
`evaluation_metadata.jsonl`, is refused with the file and line, as is a class the detector cannot
report (`check_detector`); such a line would otherwise score 0 without a word.

A GenEval folder holds one subfolder per prompt: `<out>/00000/metadata.jsonl` (that prompt's
metadata line) and `<out>/00000/samples/0000.png, 0001.png, ...`. `evaluate_folder` writes
`results.jsonl` (one record per image, GenEval's keys; `metadata` and `details` are JSON strings as
GenEval writes them, so its `summary_scores.py` reads the file) and `summary.json`
(`overall` = mean over tags of the tag's fraction of correct images, and `tags`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from ..errors import NamiError
from ..files import write_text_atomic
from ..output_targets import GENEVAL, Inputs, check_out_folder
from ..user_files import parse_json, read_jsonl, read_text
from ..geometry import POSITION_THRESHOLD, RELATIONS, relative_position

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_THRESHOLD = 1.0  # 1.0 = no same-class non-maximum suppression (GenEval's default)
# GenEval's color vocabulary; reasons list color counts in this order, then any other names.
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# The tags of GenEval's evaluation_metadata.jsonl; "counting" selects COUNTING_THRESHOLD.
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
METADATA_NAME = "metadata.jsonl"
SAMPLES_NAME = "samples"
RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.json"
_PROMPT_DIR = re.compile(r"\d+")
_SAMPLE_FILE = re.compile(r"\d+\.png")


# -- detections ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Detection:
    """One detected object.

    cls: class name; score: confidence in [0, 1]; box: (x0, y0, x1, y1) in pixels, x right, y down;
    mask: optional (H, W) bool array of the object's pixels; color: the detector's color name, or None.
    """

    cls: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    color: str | None = None


class Detector(Protocol):
    """Finds objects in an image and names their colors itself (the engine compares names).

    `classes` lists the class names it can report (None: open vocabulary).
    """

    name: str
    classes: tuple[str, ...] | None

    def detect(self, image) -> list[Detection]:  # image: PIL.Image.Image
        ...


# -- metadata -----------------------------------------------------------------------------------------


def _problem(where: str, message: str) -> NamiError:
    return NamiError(f"{where}: {message}")


def _count(value: Any, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _problem(where, f"{field} must be a positive integer, got {json.dumps(value)}")
    return value


def _check_entry(entry: Any, index: int, kind: str, where: str) -> None:
    field = f"{kind}[{index}]"
    if not isinstance(entry, dict):
        raise _problem(where, f"{field} must be an object with class and count")
    allowed = ("class", "count", "color", "position") if kind == "include" else ("class", "count")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise _problem(where, f"{field} has unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    cls = entry.get("class")
    if not isinstance(cls, str) or not cls.strip():
        raise _problem(where, f"{field}.class must be a non-empty string")
    if "count" not in entry:
        raise _problem(where, f"{field} has no count")
    _count(entry["count"], where, f"{field}.count")
    if "color" in entry and entry["color"] not in GENEVAL_COLORS:
        raise _problem(where, f"{field}.color must be one of GenEval's colours ({', '.join(GENEVAL_COLORS)}), "
                              f"got {json.dumps(entry['color'], ensure_ascii=False)}")
    if "position" in entry:
        position = entry["position"]
        if not (isinstance(position, list) and len(position) == 2):
            raise _problem(where, f"{field}.position must be [relation, include index]")
        relation, target = position
        if relation not in RELATIONS:
            raise _problem(where, f"{field}.position relation must be one of {', '.join(RELATIONS)}, "
                                  f"got {json.dumps(relation)}")
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < index:
            raise _problem(where, f"{field}.position must refer to an earlier include entry (0..{index - 1}), "
                                  f"got {json.dumps(target)}")


def validate_metadata(meta: Any, where: str) -> dict:
    """Check one GenEval metadata object; `where` ("file:line") prefixes the one-line NamiError."""
    if not isinstance(meta, dict):
        raise _problem(where, "a metadata line must be a JSON object")
    tag = meta.get("tag")
    if not isinstance(tag, str) or not tag.strip():
        raise _problem(where, "tag must be a non-empty string")
    if tag not in GENEVAL_TAGS:
        raise _problem(where, f"tag must be one of GenEval's tags ({', '.join(GENEVAL_TAGS)}), "
                              f"got {json.dumps(tag, ensure_ascii=False)}")
    prompt = meta.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _problem(where, "prompt must be a non-empty string")
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        raise _problem(where, "include must be a non-empty list of {class, count} objects")
    for i, entry in enumerate(include):
        _check_entry(entry, i, "include", where)
    exclude = meta.get("exclude", [])
    if not isinstance(exclude, list):
        raise _problem(where, "exclude must be a list of {class, count} objects")
    for i, entry in enumerate(exclude):
        _check_entry(entry, i, "exclude", where)
    return meta


def parse_metadata_line(text: str, where: str) -> dict:
    """One JSON metadata line -> validated dict (NamiError naming `where` otherwise)."""
    return validate_metadata(parse_json(text, where), where)


def read_metadata(path: str | Path) -> list[dict]:
    """All metadata lines of a GenEval `.jsonl` file (blank lines skipped), validated."""
    return [meta for _, meta in read_metadata_lines(path)]


def read_metadata_lines(path: str | Path) -> list[tuple[str, dict]]:
    """("file:line", metadata) for every metadata line of a GenEval `.jsonl` file, validated."""
    path = Path(path)
    text = read_text(path, "metadata file")
    lines = [(f"{path}:{number}", parse_metadata_line(line, f"{path}:{number}"))
             for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise NamiError(f"metadata file {path} has no metadata lines")
    return lines


def check_detector(lines: Iterable[tuple[str, dict]], detector: Detector) -> None:
    """NamiError naming "file:line" when a metadata line asks for a class the detector cannot
    report, or for colours it cannot name (`colors` None: mask2former without a CLIP model)."""
    for where, meta in lines:
        for entry in meta["include"] + meta.get("exclude", []):
            if detector.classes is not None and entry["class"] not in detector.classes:
                raise _problem(where, f"asks for {entry['class']!r} ({meta['prompt']!r}), which the {detector.name} "
                                      f"detector cannot find; it knows {', '.join(detector.classes)}")
            if "color" in entry and getattr(detector, "colors", True) is None:
                raise _problem(where, f"asks for colours ({meta['prompt']!r}); the {detector.name} detector "
                                      f"needs --clip PATH (a CLIP model) to name them")


def write_metadata(path: str | Path, lines: Iterable[dict]) -> None:
    """Write metadata objects as JSON lines (atomically)."""
    write_text_atomic(Path(path), "".join(json.dumps(line) + "\n" for line in lines))


# -- the rules ----------------------------------------------------------------------------------------


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """GenEval's IoU (inclusive pixel boxes: sides are x1 - x0 + 1), used only by its optional NMS."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def keep_detections(detections: Iterable[Detection], tag: str, threshold: float = THRESHOLD,
                    counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                    nms_threshold: float = NMS_THRESHOLD) -> dict[str, list[Detection]]:
    """Class name -> its detections that count, highest score first (classes with none are absent).

    A detection counts when float32(score) > float32(cutoff), as in GenEval, whose scores are float32.
    """
    cutoff = np.float32(counting_threshold if tag == "counting" else threshold)
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.cls, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for cls, dets in by_class.items():
        ranked = sorted(dets, key=lambda d: -d.score)  # stable: ties keep the detector's order
        ranked = [d for d in ranked if np.float32(d.score) > cutoff][:max_objects]
        chosen: list[Detection] = []
        while ranked:
            best = ranked.pop(0)
            chosen.append(best)
            if nms_threshold < 1:
                ranked = [d for d in ranked if box_iou(best.box, d.box) < nms_threshold]
        if chosen:
            kept[cls] = chosen
    return kept


def _color_tally(colors: list[str | None]) -> str:
    names = [c if c is not None else "unknown" for c in colors]
    order = [c for c in GENEVAL_COLORS if c in names] + sorted({c for c in names if c not in GENEVAL_COLORS})
    return ", ".join(f"{names.count(c)} {c}" for c in order)


def evaluate_image(detections: Iterable[Detection], metadata: dict, threshold: float = THRESHOLD,
                   counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD,
                   position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str, dict]:
    """Score one image's detections against one (validated) metadata line.

    Returns (correct, reason, details): `reason` holds one line per failed requirement ("" when
    correct); `details` maps each class to its kept detections as [x0, y0, x1, y1, score] lists,
    as GenEval reports them.
    """
    kept = keep_detections(detections, metadata["tag"], threshold, counting_threshold, max_objects, nms_threshold)
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = kept.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if colors.count(req["color"]) < count:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {_color_tally(colors)}")
            if "position" in req and matched:
                relation, target = req["position"]
                targets = matched_groups[target]
                if targets is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    target_cls = metadata["include"][target]["class"]
                    for det in found:
                        for other in targets:
                            actual = relative_position(det.box, other.box, position_threshold)
                            if relation not in actual:
                                matched = False
                                seen = " and ".join(sorted(actual)) if actual else "no clear relation to"
                                reasons.append(f"expected {cls} {relation} {target_cls}, found {cls} {seen} {target_cls}")
                                break
                        if not matched:
                            break
        correct = correct and matched
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], req["count"]
        n = len(kept.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    details = {cls: [[*map(float, d.box), float(d.score)] for d in dets] for cls, dets in kept.items()}
    return correct, "\n".join(reasons), details


# -- folder layout ------------------------------------------------------------------------------------


def prompt_dir(out: str | Path, index: int) -> Path:
    return Path(out) / f"{index:05d}"


def sample_path(out: str | Path, index: int, image: int) -> Path:
    """Where image `image` of prompt `index` goes: `<out>/<index:05d>/samples/<image:04d>.png`."""
    return prompt_dir(out, index) / SAMPLES_NAME / f"{image:04d}.png"


def check_generation_folder(out: str | Path, inputs: Inputs | None = None) -> Path:
    """`out` may receive generated GenEval samples (the output policy, `output_targets`): a new or
    empty folder, not the metadata file or the model, nor around them."""
    out = check_out_folder(out, GENEVAL, inputs)
    if out.is_dir() and any(_PROMPT_DIR.fullmatch(p.name) for p in out.iterdir()):
        raise NamiError(f"{out} already holds GenEval samples; score them with --skip-generation "
                        f"or choose an empty --out")
    return out


def write_prompt_folders(out: str | Path, lines: Sequence[dict], inputs: Inputs | None = None) -> list[Path]:
    """Create `<out>/<i:05d>/metadata.jsonl` and an empty `samples/` folder for every metadata line,
    in a folder `check_generation_folder` accepts."""
    check_generation_folder(out, inputs)
    dirs = []
    for i, meta in enumerate(lines):
        folder = prompt_dir(out, i)
        (folder / SAMPLES_NAME).mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / METADATA_NAME, json.dumps(meta) + "\n")
        dirs.append(folder)
    return dirs


@dataclass
class PromptFolder:
    """One prompt of a GenEval folder: its metadata and its sample PNGs (sorted by name)."""

    path: Path
    metadata: dict
    images: list[Path]


def read_layout(folder: str | Path) -> list[PromptFolder]:
    """The prompt subfolders of a GenEval folder in name order; NamiError when the layout is wrong.

    Entries whose name is not all digits (results.jsonl, summary.json, notes) are ignored, as in GenEval.
    """
    folder = Path(folder)
    if not folder.exists():
        raise NamiError(f"{folder} does not exist")
    if not folder.is_dir():
        raise NamiError(f"{folder} is a file, expected a folder of GenEval samples")
    subdirs = sorted((p for p in folder.iterdir() if _PROMPT_DIR.fullmatch(p.name)), key=lambda p: (int(p.name), p.name))
    prompts = []
    for sub in subdirs:
        if not sub.is_dir():
            raise NamiError(f"{sub} should be a prompt folder (with {METADATA_NAME} and {SAMPLES_NAME}/), it is a file")
        meta_path = sub / METADATA_NAME
        if not meta_path.is_file():
            raise NamiError(f"{sub} has no {METADATA_NAME}; expected the GenEval layout "
                            f"<out>/00000/{METADATA_NAME} + <out>/00000/{SAMPLES_NAME}/0000.png")
        text = read_text(meta_path, "metadata file").strip()
        meta = parse_metadata_line(text, f"{meta_path}:1") if text else None
        if meta is None:
            raise NamiError(f"{meta_path} is empty")
        samples = sub / SAMPLES_NAME
        if not samples.is_dir():
            raise NamiError(f"{sub} has no {SAMPLES_NAME}/ folder")
        images = sorted((p for p in samples.iterdir() if p.is_file() and _SAMPLE_FILE.fullmatch(p.name)),
                        key=lambda p: (int(p.stem), p.name))
        if not images:
            raise NamiError(f"{samples} has no images (expected 0000.png, 0001.png, ...)")
        prompts.append(PromptFolder(sub, meta, images))
    if not prompts:
        raise NamiError(f"{folder} has no prompt folders; expected the GenEval layout "
                        f"<out>/00000/{METADATA_NAME} + <out>/00000/{SAMPLES_NAME}/0000.png")
    return prompts


# -- scoring a folder ---------------------------------------------------------------------------------


def summarize(results: Sequence[dict]) -> dict:
    """{"overall": mean of the per-tag means, "tags": tag -> fraction of correct images}.

    Tags appear in the order they first occur, as in GenEval's `summary_scores.py`.
    """
    per_tag: dict[str, list[bool]] = {}
    for r in results:
        per_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
    tags = {tag: sum(v) / len(v) for tag, v in per_tag.items()}
    overall = sum(tags.values()) / len(tags) if tags else math.nan
    return {"overall": overall, "tags": tags}


def evaluate_folder(folder: str | Path, detector: Detector,
                    on_image: Callable[[int, int], None] | None = None) -> list[dict]:
    """Detect and score every sample of a GenEval folder; write results.jsonl and summary.json.

    Both files are written only after every image was scored (each atomically), so a failure
    leaves no partial result file. `on_image(done, total)` reports progress. Returns the records.
    """
    from PIL import Image, ImageOps

    folder = Path(folder)
    prompts = read_layout(folder)
    total = sum(len(p.images) for p in prompts)
    results: list[dict] = []
    for prompt in prompts:
        for path in prompt.images:
            try:
                with Image.open(path) as raw:
                    image = ImageOps.exif_transpose(raw).convert("RGB")
            except OSError as exc:
                raise NamiError(f"cannot read image {path}: {exc}") from None
            correct, reason, details = evaluate_image(detector.detect(image), prompt.metadata)
            results.append({
                "filename": str(path),
                "tag": prompt.metadata["tag"],
                "prompt": prompt.metadata["prompt"],
                "correct": correct,
                "reason": reason,
                "metadata": json.dumps(prompt.metadata),
                "details": json.dumps(details),
            })
            if on_image is not None:
                on_image(len(results), total)
    write_text_atomic(folder / RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in results))
    write_text_atomic(folder / SUMMARY_NAME, json.dumps(summarize(results), indent=2) + "\n")
    return results


def read_results(folder: str | Path) -> list[dict]:
    """The records of `<folder>/results.jsonl`."""
    path = Path(folder) / RESULTS_NAME
    return read_jsonl(path, "results file")
