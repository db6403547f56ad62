"""DPG-Bench: the question csv, 2x2 grids, the dependency rule and the scores of ELLA's `compute_dpg_bench.py`.

The csv (`dpg_bench.csv`) has one row per question with the columns `item_id`, `text`,
`keywords`, `proposition_id`, `dependency`, `category_broad`, `category_detailed`, `tuple` and
`question_natural_language`; rows of one prompt are consecutive. `dependency` lists the
`proposition_id`s of the parent questions ("0" = none). The category of a question is the
part of `tuple` before "(" ("entity - whole"), its level-1 category the part before "-" ("entity").

Images: one PNG per prompt, `<item_id>.png`, a 2x2 grid of square cells of side R; cells are
read in the order top-left, top-right, bottom-left, bottom-right.

Scoring, as ELLA's script does it:
  * each question is asked of each cell; the answer scores 1 when it is exactly "yes" (ELLA
    compares `answer == 'yes'`, so "Yes" or " yes" scores 0), else 0. `answer_rule("lenient")`
    strips and lower-cases the answer first, for VQA models that answer "Yes" (not ELLA's rule);
  * dependency rule: going through the questions in csv order, a question's score is set to 0
    when any of its parents (ids other than 0) has score 0 at that moment (so zeroing cascades
    down to children listed after their parents);
  * cell score = mean over the prompt's questions; prompt score = mean over the cells;
    DPG-Bench score = 100 x mean over prompts;
  * category scores: 100 x mean over every (prompt, question) of the question's raw answer
    (before the dependency rule) in the LAST cell read (bottom-right) -- what ELLA's script
    reports, since it keeps only the last cell's raw answers; level-1 pools its categories'
    lists. `categories_all_cells` (not in ELLA) averages all cells after the dependency rule;
  * ELLA's reader skips the first data row of the csv (`if i == 0: continue`), dropping the
    first question of the first prompt; `drop_first_row=True` does the same. A prompt with a
    question whose parent is missing fails in ELLA's loop and is left out of every score; here
    it is listed under `skipped` with the reason.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import NamiError

COLUMNS = ("item_id", "text", "proposition_id", "dependency", "tuple", "question_natural_language")
CELLS = 4  # ELLA's --pic-num for DPG-Bench
ANSWER_MATCHES = ("exact", "lenient")  # "exact" is ELLA's rule
REFERENCE_VQA = "mPLUG-large"  # DPG-Bench's VQA model; scores from any other are not comparable


def exact_yes(answer: str) -> bool:
    """ELLA's rule: the answer is the string "yes" itself."""
    return answer == "yes"


def lenient_yes(answer: str) -> bool:
    """The answer is "yes" once stripped and lower-cased (" Yes", "YES\n"); not ELLA's rule."""
    return answer.strip().lower() == "yes"


def answer_rule(match: str) -> Callable[[str], bool]:
    """The yes rule `--answer-match` names: "exact" (ELLA's, the default) or "lenient"."""
    if match not in ANSWER_MATCHES:
        raise NamiError(f"--answer-match must be one of {', '.join(ANSWER_MATCHES)}, got {match!r}")
    return exact_yes if match == "exact" else lenient_yes


@dataclass(frozen=True)
class Question:
    qid: int
    question: str
    tuple: str
    parents: tuple[int, ...]

    @property
    def category(self) -> str:
        return self.tuple.split("(")[0].strip()

    @property
    def category_l1(self) -> str:
        return self.category.split("-")[0].strip()


@dataclass
class Item:
    """One DPG-Bench prompt and its questions in csv order."""

    item_id: str
    prompt: str
    questions: list[Question] = field(default_factory=list)


def _int(value: str, where: str, column: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise NamiError(f"{where}: {column} must be an integer, got {value!r}") from None


def read_dpg_csv(path: str | Path, drop_first_row: bool = True) -> dict[str, Item]:
    """item_id -> Item, in csv order; NamiError naming `file:line` for a malformed row."""
    path = Path(path)
    if not path.is_file():
        raise NamiError(f"DPG csv {path} does not exist" if not path.exists() else f"DPG csv {path} is not a file")
    items: dict[str, Item] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not a column name
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise NamiError(f"DPG csv {path} lacks the column(s) {', '.join(missing)}")
            for number, row in enumerate(reader):
                where = f"{path}:{reader.line_num}"
                if number == 0 and drop_first_row:
                    continue
                item_id = (row["item_id"] or "").strip()
                question = (row["question_natural_language"] or "").strip()
                if not item_id or not question or not (row["tuple"] or "").strip():
                    raise NamiError(f"{where}: item_id, tuple and question_natural_language must not be empty")
                parents = tuple(_int(p, where, "dependency") for p in str(row["dependency"]).split(","))
                item = items.setdefault(item_id, Item(item_id, (row["text"] or "").strip()))
                item.questions.append(Question(_int(row["proposition_id"], where, "proposition_id"), question,
                                               row["tuple"].strip(), parents))
    except UnicodeDecodeError:
        raise NamiError(f"DPG csv {path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise NamiError(f"DPG csv {path} is not valid csv ({exc})") from None
    if not items:
        raise NamiError(f"DPG csv {path} has no questions")
    return items


class MissingParent(Exception):
    """A question depends on a question the item does not have (ELLA's loop fails on such items)."""


def apply_dependencies(questions: Sequence[Question], raw: dict[int, float]) -> dict[int, float]:
    """qid -> score after the dependency rule (csv order, in place, so zeroing cascades)."""
    scores = dict(raw)
    for q in questions:
        for parent in q.parents:
            if parent == 0:
                continue
            if parent not in scores:
                raise MissingParent(f"question {q.qid} depends on question {parent}, which the csv does not have")
            if scores[parent] == 0:
                scores[q.qid] = 0.0
                break
    return scores


def grid_cells(image, cells: int = CELLS) -> list:
    """The first `cells` cells of a 2x2 grid image (PIL), in ELLA's order; the side is half the width."""
    side = image.width // 2
    if image.width != 2 * side or image.height != 2 * side or side == 0:
        raise NamiError(f"a DPG-Bench image must be a square 2x2 grid with an even side, got {image.width}x{image.height}")
    boxes = [(0, 0, side, side), (side, 0, 2 * side, side), (0, side, side, 2 * side), (side, side, 2 * side, 2 * side)]
    return [image.crop(box) for box in boxes[:cells]]


def make_grid(images: Sequence) -> object:
    """Four equal square PIL images -> one 2x2 grid (top-left, top-right, bottom-left, bottom-right)."""
    from PIL import Image

    side = images[0].width
    grid = Image.new("RGB", (2 * side, 2 * side))
    for k, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((k % 2) * side, (k // 2) * side))
    return grid


@dataclass
class ItemResult:
    """Scores of one prompt: `cell_scores` after the dependency rule, raw answers per cell."""

    item_id: str
    cell_scores: list[float]
    answers: list[dict[int, str]]
    raw: list[dict[int, float]]

    @property
    def score(self) -> float:
        return sum(self.cell_scores) / len(self.cell_scores)


def score_item(item: Item, answers_per_cell: Sequence[dict[int, str]], yes: Callable[[str], bool]) -> ItemResult:
    """Apply the yes rule and the dependency rule to the answers of every cell of one item."""
    cell_scores, raws = [], []
    for answers in answers_per_cell:
        raw = {q.qid: float(yes(answers[q.qid])) for q in item.questions}
        zeroed = apply_dependencies(item.questions, raw)
        cell_scores.append(sum(zeroed.values()) / len(zeroed))
        raws.append(raw)
    return ItemResult(item.item_id, cell_scores, list(answers_per_cell), raws)


def _mean100(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else math.nan


def summarize(items: dict[str, Item], results: Iterable[ItemResult]) -> dict:
    """Overall, level-1 and level-2 category scores (0..100) as ELLA reports them, plus all-cell categories."""
    results = list(results)
    by_category: dict[str, list[float]] = {}
    all_cells: dict[str, list[float]] = {}
    for result in results:
        item = items[result.item_id]
        zeroed = [apply_dependencies(item.questions, raw) for raw in result.raw]
        for q in item.questions:
            by_category.setdefault(q.category, []).append(result.raw[-1][q.qid])
            all_cells.setdefault(q.category, []).extend(cell[q.qid] for cell in zeroed)
    level1: dict[str, list[float]] = {}
    for category in sorted(by_category):
        level1.setdefault(category.split("-")[0].strip(), []).extend(by_category[category])
    return {
        "overall": _mean100([r.score for r in results]),
        "prompts": len(results),
        "level1": {name: _mean100(v) for name, v in sorted(level1.items())},
        "level2": {name: _mean100(v) for name, v in sorted(by_category.items())},
        "categories_all_cells": {name: _mean100(v) for name, v in sorted(all_cells.items())},
    }
