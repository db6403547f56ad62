"""Running DPG-Bench: prompts folder -> 2x2 grids -> VQA answers -> results files.

Layout: `--prompts DIR` holds DPG-Bench's `<item_id>.txt` prompt files; `--out DIR` receives one
`<item_id>.png` grid per prompt (cells of the model's resolution; cell k of prompt i, prompts in
name order, has seed `seed + 4 i + k`), then `dpg_results.jsonl` (per prompt: cell scores, the
answers) and `dpg_summary.json` (scores, VQA model, comparability, the answer rule), both written
only after every grid was scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import one_of
from ..input_paths import FILE, FOLDER, reads
from .weights import vqa_folder
from ..errors import NamiError
from . import dpg
from .generation import GenerationSettings
from ..files import write_json_atomic, write_jsonl_atomic
from ..output_names import safe_name
from ..output_targets import DPG, Inputs, check_out_folder
from ..user_files import read_text
from ..png import read_png_metadata, save_png
from .io import read_rgb

RESULTS_NAME = "dpg_results.jsonl"
SUMMARY_NAME = "dpg_summary.json"
NOT_COMPARABLE = f"not comparable to {dpg.REFERENCE_VQA}"


@dataclass(kw_only=True)
class DpgRequest(GenerationSettings):
    """`nami eval dpg`: the questions (`csv`), the VQA model folder, the grids folder (`out`), the
    prompts folder (needed to generate), how questions are put to the VQA model and answers
    matched. Every prompt gets `dpg.CELLS` images, the cells of its grid."""

    csv: Path | str = field(metadata=reads(FILE))
    vqa: str = field(metadata=reads(vqa_folder))
    out: Path | str
    prompts: Path | str | None = field(default=None, metadata=reads(FOLDER))
    skip_generation: bool = False
    vqa_prompt: str = "{question}"
    keep_first_row: bool = False
    answer_match: str = field(default="exact", metadata=one_of(dpg.ANSWER_MATCHES))
    images_per_prompt: int = field(default=dpg.CELLS, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.csv, self.out = Path(self.csv), Path(self.out)
        if self.prompts is None and not self.skip_generation:
            raise NamiError("--prompts DIR is required to generate (or pass --skip-generation to score --out)")
        if "{question}" not in self.vqa_prompt:
            raise NamiError(f"--vqa-prompt must contain {{question}}, got {self.vqa_prompt!r}")
        try:
            self.vqa_prompt.format(question="")
        except (KeyError, IndexError, ValueError):
            raise NamiError(f"--vqa-prompt may hold {{question}} and no other {{field}}, got {self.vqa_prompt!r} "
                            "(write a brace as {{ or }})") from None

    def generating(self) -> bool:
        return not self.skip_generation

    def inputs(self) -> dict[str, Any]:
        return {"--prompts": self.prompts, "--csv": self.csv, "--vqa": self.vqa, **super().inputs()}


def read_prompt_dir(folder: str | Path) -> dict[str, str]:
    """item_id -> prompt from `<item_id>.txt` files, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NamiError(f"--prompts {folder} is not a folder of DPG-Bench <item_id>.txt prompt files")
    prompts = {}
    for path in sorted(folder.glob("*.txt")):
        text = read_text(path, "prompt file").strip()
        if not text:
            raise NamiError(f"prompt file {path} is empty")
        prompts[path.stem] = text
    if not prompts:
        raise NamiError(f"--prompts {folder} has no .txt prompt files")
    return prompts


def generate_grids(generator, prompts: dict[str, str], out: str | Path, seed: int, batch_size: int,
                   on_grid: Callable[[int, int], None] | None = None) -> None:
    """Write `<out>/<item_id>.png`, a 2x2 grid of the prompt's four images, for every prompt."""
    out = Path(out)
    check_new_grid_folder(out)
    names = [grid_name(i) for i in prompts]
    if len(set(names)) != len(names):
        raise NamiError("two DPG-Bench item ids give the same file name; make the prompt file names distinct")
    out.mkdir(parents=True, exist_ok=True)
    ids = list(prompts)
    cells: list = []
    for made in generator.images([prompts[i] for i in ids], dpg.CELLS, seed, batch_size):
        cells.append(made.image)
        if made.j == dpg.CELLS - 1:
            item_id = ids[made.index]
            info = generator.info(prompts[item_id], made.seed - (dpg.CELLS - 1), item_id=item_id,
                                  cell_seeds=[made.seed - (dpg.CELLS - 1) + k for k in range(dpg.CELLS)])
            save_png(dpg.make_grid(cells), out / grid_name(item_id), info)
            cells = []
            if on_grid is not None:
                on_grid(made.index + 1, len(ids))


def grid_name(item_id: str) -> str:
    """`<item_id>.png`, the id made a safe file name (`output_names.safe_name`)."""
    return f"{safe_name(item_id)}.png"


def check_new_grid_folder(out: str | Path, inputs: Inputs | None = None) -> None:
    """NamiError unless `out` may receive the grids (the output policy, `output_targets`: a new or
    empty folder, none of `inputs` nor around them) and holds no images yet (checked before any
    model loads)."""
    out = check_out_folder(out, DPG, inputs)
    if out.is_dir() and any(out.glob("*.png")):
        raise NamiError(f"{out} already holds images; score them with --skip-generation or choose an empty --out")


def grid_files(folder: str | Path, items: dict[str, dpg.Item]) -> list[Path]:
    """The `<item_id>.png` grids of `folder` in name order; NamiError when the layout is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NamiError(f"{folder} is not a folder of DPG-Bench grids (<item_id>.png)")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise NamiError(f"{folder} has no <item_id>.png grids")
    for path in files:
        if path.name not in grid_names(items):
            raise NamiError(f"{path.name} in {folder} is not a DPG-Bench item of the csv; expected <item_id>.png")
    return files


def grid_names(items: dict[str, dpg.Item]) -> dict[str, str]:
    """grid file name -> item id, for every item of the csv."""
    return {grid_name(item_id): item_id for item_id in items}


def evaluate_grids(folder: str | Path, items: dict[str, dpg.Item], vqa,
                   on_grid: Callable[[int, int], None] | None = None, answer_match: str = "exact") -> dict:
    """Ask every question of every cell of every grid; write the results files; return the summary.

    `answer_match`: "exact" (ELLA's rule: only the answer "yes" scores) or "lenient" (stripped and
    lower-cased first); recorded in the summary.
    """
    is_yes = dpg.answer_rule(answer_match)
    folder = Path(folder)
    files = grid_files(folder, items)
    results, records, skipped = [], [], []
    by_name = grid_names(items)
    for done, path in enumerate(files, start=1):
        item = items[by_name[path.name]]
        cells = dpg.grid_cells(read_rgb(path))
        questions = [q.question for q in item.questions]
        answers = [dict(zip((q.qid for q in item.questions), vqa.answer(cell, questions))) for cell in cells]
        try:
            result = dpg.score_item(item, answers, is_yes)
        except dpg.MissingParent as exc:
            skipped.append({"item_id": item.item_id, "reason": str(exc)})
        else:
            results.append(result)
            records.append({"item_id": item.item_id, "file": path.name, "prompt": item.prompt,
                            "seed": read_png_metadata(path).get("seed"), "score": 100 * result.score,
                            "cell_scores": [100 * s for s in result.cell_scores],
                            "answers": [{str(k): v for k, v in cell.items()} for cell in result.answers]})
        if on_grid is not None:
            on_grid(done, len(files))
    summary = dpg.summarize(items, results)
    summary.update({
        "vqa_model": vqa.name,
        "comparable": bool(vqa.comparable),
        "answer_match": answer_match,
        "note": "" if vqa.comparable else f"scored with {vqa.name}: {NOT_COMPARABLE} (DPG-Bench's reference VQA model)",
        "skipped": skipped,
        "missing": sorted(set(items) - {by_name[p.name] for p in files}),
    })
    write_jsonl_atomic(folder / RESULTS_NAME, records)
    write_json_atomic(folder / SUMMARY_NAME, summary)
    return summary
