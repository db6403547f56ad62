"""Benchmark rules as the official code applies them (GenEval's float32 threshold, ELLA's exact
"yes"), GenEval metadata outside GenEval's vocabulary refused by line, and `nami eval` paths that
are wrong before any work starts: one error line each, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nami_core.eval import dpg, dpg_run
from nami_core.eval import geneval as ge
from nami_core.eval.geneval import Detection, evaluate_image
from tests.helpers import run_cli

ONE_CIRCLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"}
TWO_COUNTED = {"tag": "counting", "include": [{"class": "circle", "count": 1}], "prompt": "one circle"}
F32_03 = np.float32(0.3)
F32_09 = np.float32(0.9)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- GenEval's threshold, in float32 ----------------------------------------------------------------------


def counted(score, line=ONE_CIRCLE) -> bool:
    return evaluate_image([Detection("circle", score, (0.0, 0.0, 10.0, 10.0))], line)[0]


def official_counted(score, threshold) -> bool:
    """GenEval's `bbox[index][ordering, 4] > confidence_threshold`: float32 scores, a Python float threshold."""
    return bool((np.array([score], dtype=np.float32) > threshold)[0])


def test_threshold_boundary_is_strict_in_float32():
    assert counted(F32_03) is False  # float32(0.3) = 0.30000001192...: above 0.3 in float64, not in float32
    assert counted(np.nextafter(F32_03, np.float32(1))) is True
    assert counted(float(F32_03)) is False  # the same value as a Python float
    assert counted(0.30000001) is False  # rounds to float32(0.3)
    assert counted(0.3) is False and counted(np.nextafter(F32_03, np.float32(0))) is False
    assert counted(F32_09, TWO_COUNTED) is False
    assert counted(np.nextafter(F32_09, np.float32(1)), TWO_COUNTED) is True


@pytest.mark.parametrize("threshold, line", [(0.3, ONE_CIRCLE), (0.9, TWO_COUNTED)])
def test_threshold_matches_the_official_expression_around_the_boundary(threshold, line):
    f32 = np.float32(threshold)
    below, above = np.nextafter(f32, np.float32(0)), np.nextafter(f32, np.float32(1))
    scores = [below, f32, above, float(below), float(f32), float(above), threshold, threshold + 1e-8, threshold + 2e-8,
              threshold - 1e-9, np.float64(threshold) + 1e-12]
    assert [counted(s, line) for s in scores] == [official_counted(s, threshold) for s in scores]
    assert [official_counted(s, threshold) for s in (f32, above)] == [False, True]


# -- GenEval metadata vocabulary --------------------------------------------------------------------------


def write_lines(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("bad, problem", [
    ({"tag": "single_objekt", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"},
     "tag must be one of GenEval's tags (single_object, two_object, counting, colors, position, color_attr), "
     'got "single_objekt"'),
    ({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "magenta"}], "prompt": "a magenta circle"},
     "include[0].color must be one of GenEval's colours (red, orange, yellow, green, blue, purple, pink, brown, "
     'black, white), got "magenta"'),
    ({"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"},
     "asks for 'dog' ('a dog'), which the shapes detector cannot find; it knows circle, square, triangle, diamond"),
])
def test_cli_refuses_metadata_outside_the_vocabulary_by_line(tmp_path, capsys, bad, problem):
    metadata = write_lines(tmp_path / "meta.jsonl", ONE_CIRCLE, "", bad)
    code, out, err = run_cli(["eval", "geneval", "--metadata", str(metadata), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and out == ""
    assert one_error_line(err) == f"error: {metadata}:3: {problem}"
    assert not (tmp_path / "run").exists()


def test_bundled_suite_is_inside_the_vocabulary():
    lines = ge.read_metadata(Path(ge.__file__).parents[1] / "assets" / "geneval" / "shapes_suite.jsonl")
    assert {line["tag"] for line in lines} == set(ge.GENEVAL_TAGS)
    assert {e["color"] for line in lines for e in line["include"] if "color" in e} <= set(ge.GENEVAL_COLORS)


def test_cli_layout_with_a_binary_metadata_file_is_one_line(tmp_path, capsys):
    ge.write_prompt_folders(tmp_path, [ONE_CIRCLE])
    Image.new("RGB", (8, 8)).save(ge.sample_path(tmp_path, 0, 0))
    (tmp_path / "00000" / "metadata.jsonl").write_bytes(b"\xff\xfe\x00")
    code, _, err = run_cli(["eval", "geneval", "--out", str(tmp_path), "--skip-generation"], capsys)
    assert code == 2
    assert one_error_line(err) == f"error: metadata file {tmp_path / '00000' / 'metadata.jsonl'} is not UTF-8 text"


# -- ELLA's "yes" ----------------------------------------------------------------------------------------


ITEM = dpg.Item("a", "a cat", [dpg.Question(1, "Is there a cat?", "entity - whole (cat)", (0,)),
                               dpg.Question(2, "Is the cat black?", "attribute - color (cat, black)", (1,))])


@pytest.mark.parametrize("answer, exact, lenient", [
    ("yes", 1.0, 1.0), ("Yes", 0.0, 1.0), (" yes\n", 0.0, 1.0), ("YES", 0.0, 1.0), ("yes.", 0.0, 0.0), ("no", 0.0, 0.0),
])
def test_exact_is_ellas_rule_and_lenient_strips_and_lowercases(answer, exact, lenient):
    cells = [{1: answer, 2: answer}]
    assert dpg.score_item(ITEM, cells, dpg.answer_rule("exact")).score == exact
    assert dpg.score_item(ITEM, cells, dpg.answer_rule("lenient")).score == lenient


class CapitalYes:
    """A VQA model that answers every question with "Yes"."""

    name, comparable = "fake:capital-yes", False

    def answer(self, image, questions):
        return ["Yes"] * len(questions)


def grid_folder(folder):
    folder.mkdir()
    dpg.make_grid([Image.new("RGB", (8, 8))] * 4).save(folder / "a.png")
    return folder


@pytest.mark.parametrize("match, overall", [("exact", 0.0), ("lenient", 100.0)])
def test_evaluate_grids_applies_and_records_the_answer_match(tmp_path, match, overall):
    folder = grid_folder(tmp_path / "grids")
    summary = dpg_run.evaluate_grids(folder, {"a": ITEM}, CapitalYes(), answer_match=match)
    assert summary["overall"] == overall and summary["answer_match"] == match
    assert json.loads((folder / dpg_run.SUMMARY_NAME).read_text())["answer_match"] == match


def test_default_answer_match_is_exact(tmp_path):
    summary = dpg_run.evaluate_grids(grid_folder(tmp_path / "grids"), {"a": ITEM}, CapitalYes())
    assert summary["overall"] == 0.0 and summary["answer_match"] == "exact"


def test_cli_unknown_answer_match_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["eval", "dpg", "--csv", str(tmp_path / "none.csv"), "--vqa", str(tmp_path / "none"),
                            "--out", str(tmp_path / "o"), "--answer-match", "fuzzy"], capsys)
    assert code == 2 and one_error_line(err) == "error: --answer-match must be one of exact, lenient, got 'fuzzy'"


# -- `nami eval` output and input paths -------------------------------------------------------------------


DPG_CSV = ("item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
           "question_natural_language\na,a cat,,1,0,entity,whole,entity - whole (cat),Is there a cat?\n"
           "a,a cat,,2,0,global,,global (photo),Is this a photo?\n")  # ELLA's reader skips the first row


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    return path


def test_cli_paths_are_checked_before_any_work(tmp_path, capsys, a_file):
    """Each wrong path is refused before a model loads or a score is computed (the models named here do not exist)."""
    csv = tmp_path / "dpg.csv"
    csv.write_text(DPG_CSV)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "a.txt").write_text("a cat")
    folder = tmp_path / "folder"
    folder.mkdir()
    none = tmp_path / "none"
    cases = [
        (["eval", "geneval", "--out", str(a_file / "run")], f"--out {a_file / 'run'}: {a_file} is a file, not a folder"),
        (["eval", "geneval", "--out", str(tmp_path / "run"), "--cfg", "1e300"],
         "--cfg must be at most 100 (usual scales are 1 to 20), got 1e+300"),
        (["eval", "dpg", "--csv", str(csv), "--vqa", str(none), "--prompts", str(prompts), "--out", str(a_file)],
         f"--out {a_file} is a file, expected a folder"),
        (["eval", "dpg", "--csv", str(csv), "--vqa", str(none), "--prompts", str(prompts), "--out", str(tmp_path / "g"),
          "--cfg", "500"], "--cfg must be at most 100 (usual scales are 1 to 20), got 500"),
        (["eval", "nami1k", "build", "--open", str(none), "--out", str(a_file / "set.jsonl")],
         f"--out {a_file / 'set.jsonl'}: {a_file} is a file, not a folder"),
        (["eval", "nami1k", "build", "--open", str(none), "--out", str(none / "set.jsonl")],
         f"the folder of --out {none / 'set.jsonl'} does not exist"),
        (["eval", "nami1k", "build", "--open", str(none), "--out", str(tmp_path / "set.jsonl"), "--plot", str(folder)],
         f"--plot {folder} is a folder; give the path of the file to write"),
        (["eval", "nami1k", "generate", "--prompts", str(none), "--out", str(a_file / "images")],
         f"--out {a_file / 'images'}: {a_file} is a file, not a folder"),
        (["eval", "nami1k", "score", str(none), "--json", str(folder)],
         f"--json {folder} is a folder; give the path of the file to write"),
        (["eval", "clipscore", str(folder), "--clip", str(none), "--json", str(a_file / "s.json")],
         f"--json {a_file / 's.json'}: {a_file} is a file, not a folder"),
        (["eval", "fid", str(folder), str(folder), "--inception", str(none), "--json", str(none / "fid.json")],
         f"the folder of --json {none / 'fid.json'} does not exist"),
    ]
    for args, message in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2 and out == "", args
        assert one_error_line(err) == f"error: {message}", args
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpg.csv", "folder", "notes.txt", "prompts"]


def test_cli_dpg_prompt_that_is_not_utf8_is_one_line(tmp_path, capsys):
    csv = tmp_path / "dpg.csv"
    csv.write_text(DPG_CSV)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "a.txt").write_bytes(b"a \xff cat")
    code, _, err = run_cli(["eval", "dpg", "--csv", str(csv), "--vqa", str(tmp_path / "none"), "--prompts",
                            str(prompts), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and one_error_line(err) == f"error: prompt file {prompts / 'a.txt'} is not UTF-8 text"
