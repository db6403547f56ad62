"""DPG-Bench: the csv, the dependency rule and ELLA's averages on hand-computed answers, grids, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nami_core.errors import NamiError
from nami_core.eval import dpg
from tests.test_eval_tiny_models import build_tiny_vilt
from tests.helpers import run_cli

HEADER = "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language\n"
ROWS = [
    'a,a black fluffy cat,,1,0,entity,whole,entity - whole (cat),Is there a cat?',
    'a,a black fluffy cat,,2,1,attribute,color,"attribute - color (cat, black)",Is the cat black?',
    'a,a black fluffy cat,,3,2,attribute,texture,"attribute - texture (cat, fluffy)",Is the black cat fluffy?',
    'a,a black fluffy cat,,4,0,global,,global (photo),Is this a photo?',
    'b,a dog on a sofa,,1,0,entity,whole,entity - whole (dog),Is there a dog?',
    'b,a dog on a sofa,,2,"1",relation,spatial,"relation - spatial (dog, sofa, on)",Is the dog on the sofa?',
]


def write_csv(path, rows=ROWS):
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path



def answers(*cells):
    """'yyny' per cell -> {qid: 'yes'/'no'} with qids 1.."""
    return [{i + 1: "yes" if c == "y" else "no" for i, c in enumerate(cell)} for cell in cells]


# -- csv --------------------------------------------------------------------------------------------------


def test_csv_parses_questions_parents_and_categories(tmp_path):
    items = dpg.read_dpg_csv(write_csv(tmp_path / "dpg.csv"), drop_first_row=False)
    assert list(items) == ["a", "b"] and items["a"].prompt == "a black fluffy cat"
    a = items["a"].questions
    assert [q.qid for q in a] == [1, 2, 3, 4] and [q.parents for q in a] == [(0,), (1,), (2,), (0,)]
    assert a[1].category == "attribute - color" and a[1].category_l1 == "attribute"
    assert a[3].category == "global" and a[3].category_l1 == "global"
    assert items["b"].questions[1].question == "Is the dog on the sofa?"


def test_ellas_reader_skips_the_first_row(tmp_path):
    items = dpg.read_dpg_csv(write_csv(tmp_path / "dpg.csv"))
    assert [q.qid for q in items["a"].questions] == [2, 3, 4]
    with pytest.raises(dpg.MissingParent, match="question 2 depends on question 1"):
        dpg.score_item(items["a"], [{2: "yes", 3: "yes", 4: "yes"}], dpg.lenient_yes)


@pytest.mark.parametrize("row, problem", [
    ('b,p,,x,0,e,w,entity - whole (dog),Is there a dog?', "proposition_id must be an integer, got 'x'"),
    ('b,p,,3,"1, two",e,w,entity - whole (dog),Is there a dog?', "dependency must be an integer"),
    ('b,p,,3,0,e,w,,Is there a dog?', "must not be empty"),
])
def test_malformed_csv_rows_name_file_and_line(tmp_path, row, problem):
    path = write_csv(tmp_path / "dpg.csv", ROWS + [row])
    with pytest.raises(NamiError) as info:
        dpg.read_dpg_csv(path)
    assert str(info.value).startswith(f"{path}:8: ") and problem in str(info.value)


def test_csv_without_the_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("item_id,text\na,b\n")
    with pytest.raises(NamiError, match="lacks the column\\(s\\) proposition_id, dependency, tuple, question_natural_language"):
        dpg.read_dpg_csv(path)


# -- the dependency rule and the averages ---------------------------------------------------------------


def test_dependency_rule_cascades_in_csv_order(tmp_path):
    questions = dpg.read_dpg_csv(write_csv(tmp_path / "dpg.csv"), drop_first_row=False)["a"].questions
    # q1 failed: q2 (child of 1) is zeroed, then q3 (child of 2) because q2 is now 0; q4 has no parent
    assert dpg.apply_dependencies(questions, {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
    assert dpg.apply_dependencies(questions, {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}) == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    # a child listed before its parent sees the parent's raw answer (ELLA's loop order)
    reordered = [questions[2], questions[1], questions[0]]
    assert dpg.apply_dependencies(reordered, {1: 0.0, 2: 1.0, 3: 1.0}) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_scores_and_categories_as_ellas_script(tmp_path):
    items = dpg.read_dpg_csv(write_csv(tmp_path / "dpg.csv"), drop_first_row=False)
    a = dpg.score_item(items["a"], answers("yyyy", "nyyy", "ynyn", "yyny"), dpg.lenient_yes)
    b = dpg.score_item(items["b"], answers("yy", "yn", "ny", "nn"), dpg.lenient_yes)
    # a: cells 4/4, 1/4 (q2, q3 zeroed), 1/4 (q3 zeroed), 3/4 -> 0.5625; b: 1, .5, 0 (q2 zeroed), 0 -> .375
    assert a.cell_scores == [1.0, 0.25, 0.25, 0.75] and a.score == 0.5625
    assert b.cell_scores == [1.0, 0.5, 0.0, 0.0] and b.score == 0.375
    summary = dpg.summarize(items, [a, b])
    assert summary["overall"] == pytest.approx(46.875) and summary["prompts"] == 2
    # categories: the LAST cell's raw answers (a: y y n y, b: n n)
    assert summary["level2"] == pytest.approx({"attribute - color": 100.0, "attribute - texture": 0.0,
                                               "entity - whole": 50.0, "global": 100.0, "relation - spatial": 0.0})
    assert summary["level1"] == pytest.approx({"attribute": 50.0, "entity": 50.0, "global": 100.0, "relation": 0.0})
    # all four cells after the dependency rule: entity 5/8, color 2/4, texture 1/4, global 3/4, spatial 1/4
    assert summary["categories_all_cells"] == pytest.approx({"attribute - color": 50.0, "attribute - texture": 25.0,
                                                             "entity - whole": 62.5, "global": 75.0,
                                                             "relation - spatial": 25.0})


def test_grid_cells_in_ellas_order():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = dpg.make_grid([Image.new("RGB", (8, 8), c) for c in colours])
    assert grid.size == (16, 16)
    assert [c.getpixel((4, 4)) for c in dpg.grid_cells(grid)] == colours  # TL, TR, BL, BR
    with pytest.raises(NamiError, match="square 2x2 grid"):
        dpg.grid_cells(Image.new("RGB", (16, 12)))


# -- the command ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vilt_yes(tmp_path_factory):
    return build_tiny_vilt(tmp_path_factory.mktemp("vqa") / "vilt-yes")


def write_prompts(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("a photo of a black cat\n")
    (folder / "b.txt").write_text("a photo of a dog above a square\n")
    return folder


def test_cli_generates_grids_and_scores_them(tmp_path, capsys, tiny_model_dir, vilt_yes):
    import torch

    from nami_core.modeldir import load_pipeline

    csv_path, out = write_csv(tmp_path / "dpg.csv"), tmp_path / "dpg"
    code, stdout, err = run_cli(["eval", "dpg", "--prompts", str(write_prompts(tmp_path / "prompts")),
                                 "--csv", str(csv_path), "--vqa", str(vilt_yes), "--out", str(out),
                                 "--model", str(tiny_model_dir), "--steps", "1,1,1", "--seed", "3",
                                 "--device", "cpu", "--batch-size", "8"], capsys)
    assert code == 0, err
    lines = stdout.rstrip().splitlines()
    assert lines[0] == "note: scored with vilt:vilt-yes: not comparable to mPLUG-large (DPG-Bench's reference VQA model)"
    assert "skipped a: question 2 depends on question 1" in stdout  # ELLA drops the csv's first row
    assert lines[-1] == "overall 100.00"  # every answer is "yes"
    summary = json.loads((out / "dpg_summary.json").read_text())
    assert summary["comparable"] is False and summary["prompts"] == 1 and summary["overall"] == 100.0
    assert summary["answer_match"] == "exact"  # ELLA's rule by default
    assert summary["level1"] == {"entity": 100.0, "relation": 100.0}
    records = [json.loads(l) for l in (out / "dpg_results.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in records] == ["b"] and records[0]["cell_scores"] == [100.0] * 4
    assert records[0]["answers"][3] == {"1": "yes", "2": "yes"}
    with Image.open(out / "b.png") as grid:
        info = json.loads(grid.text["nami"])
        cell = np.asarray(grid.convert("RGB").crop((64, 64, 128, 128)), dtype=np.int16)
    assert grid.size == (128, 128) and info["cell_seeds"] == [7, 8, 9, 10]  # 3 + 4 * prompt 1 + cell
    pipe = load_pipeline(tiny_model_dir, torch.device("cpu"), torch.float32)
    alone = pipe("a photo of a dog above a square", seed=10, steps=(1, 1, 1)).images[0]
    assert np.abs(np.asarray(alone, dtype=np.int16) - cell).max() <= 1


def test_cli_keep_first_row_and_skip_generation(tmp_path, capsys, vilt_yes):
    out = tmp_path / "grids"
    out.mkdir()
    for name in ("a", "b"):
        dpg.make_grid([Image.new("RGB", (16, 16), (9, 9, 9))] * 4).save(out / f"{name}.png")
    code, stdout, err = run_cli(["eval", "dpg", "--csv", str(write_csv(tmp_path / "dpg.csv")), "--vqa", str(vilt_yes),
                                 "--out", str(out), "--skip-generation", "--keep-first-row", "--device", "cpu",
                                 "--answer-match", "lenient"], capsys)
    assert code == 0, err
    assert "skipped" not in stdout and stdout.rstrip().splitlines()[-1] == "overall 100.00"
    summary = json.loads((out / "dpg_summary.json").read_text())
    assert summary["prompts"] == 2 and summary["answer_match"] == "lenient"


def test_cli_wrong_layout_and_bad_csv_leave_no_result(tmp_path, capsys, vilt_yes):
    out = tmp_path / "grids"
    out.mkdir()
    Image.new("RGB", (16, 16)).save(out / "zzz.png")
    code, stdout, err = run_cli(["eval", "dpg", "--csv", str(write_csv(tmp_path / "dpg.csv")), "--vqa", str(vilt_yes),
                                 "--out", str(out), "--skip-generation", "--device", "cpu"], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "zzz.png" in err and "is not a DPG-Bench item of the csv" in err
    bad = write_csv(tmp_path / "bad.csv", ROWS + ['b,p,,x,0,e,w,entity - whole (dog),Q?'])
    code, _, err = run_cli(["eval", "dpg", "--csv", str(bad), "--vqa", str(vilt_yes), "--out", str(out),
                            "--skip-generation"], capsys)
    assert code == 2 and err.startswith(f"error: {bad}:8: proposition_id must be an integer")
    code, _, err = run_cli(["eval", "dpg", "--csv", str(write_csv(tmp_path / "ok.csv")), "--vqa",
                            str(tmp_path / "no-vqa"), "--out", str(tmp_path / "new"),
                            "--prompts", str(write_prompts(tmp_path / "prompts"))], capsys)
    assert code == 2 and "--vqa (a VQA model)" in err and "does not exist" in err
    assert sorted(p.name for p in out.iterdir()) == ["zzz.png"]
