"""The output policy (`nami_core.output_targets`): no command writes over its inputs, over a folder
that is not its own kind of artefact, or over its own kind without --overwrite; a file is never
written where a folder is meant nor the reverse; names made from outside ids stay in their folder.

Reproductions of issue 33: 1-7 (data destroyed with exit 0), 9 and 10 (tracebacks), 28, 30, 32."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nami_core.errors import NamiError
from nami_core.output_names import safe_name
from nami_core.output_targets import (ADAPTER, DATA, MODEL, RUN, SAMPLES, check_out_file, check_out_folder,
                                      recognise)
from tests.helpers import (build_tiny_pipeline, finished_run, one_error, prepare_train_data, run_cli,
                          save_tiny_adapter, snapshot, train_cli_args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    root = prepare_train_data(tmp_path_factory.mktemp("policy"))
    return finished_run(root, root / "run", "--steps", "4", "--save-every", "2", "--keep", "0", "--ema-decay", "0")


def checkpoint(run: Path, step: int = 4) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


# -- inputs are never outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("target, relation", [
    (lambda run: run, "holds the checkpoint"),  # 1: the whole run
    (lambda run: checkpoint(run), "is the checkpoint"),  # 2: the checkpoint itself
    (lambda run: run / "checkpoints", "holds the checkpoint"),  # 3: every checkpoint
    (lambda run: checkpoint(run, 2), "lies inside the run"),  # another checkpoint
    (lambda run: run / "models" / "mid-run", "lies inside the run"),  # a new folder in the run
])
def test_convert_checkpoint_never_writes_over_the_run(run, capsys, target, relation):
    before = snapshot(run)
    out = target(run)
    code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and relation in one_error(err) and f"--out {out}" in one_error(err)
    assert snapshot(run) == before


def test_a_folder_of_other_files_is_never_replaced(run, tmp_path, capsys):
    """4: an --out holding an unrelated file, even with --overwrite."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", str(mine), *extra], capsys)
        assert code == 2
        assert one_error(err) == (f"error: --out {mine} holds files that are not a nami model directory "
                                  "(e.g. notes.txt); choose a new or empty folder")
    assert snapshot(mine) == {"notes.txt": b"keep me"}


def test_a_model_is_replaced_only_with_overwrite_and_never_with_strangers(run, tmp_path, capsys):
    model = tmp_path / "model"
    args = ["convert", "checkpoint", str(checkpoint(run, 2)), "--out", str(model)]
    assert run_cli(args, capsys)[0] == 0
    first = snapshot(model)
    code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", str(model)], capsys)
    assert code == 2 and "already holds a nami model directory; pass --overwrite to replace it" in one_error(err)
    assert snapshot(model) == first
    (model / "README.md").write_text("my notes on this model")
    code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", str(model), "--overwrite"], capsys)
    assert code == 2 and "holds README.md, which nami does not write in a nami model directory" in one_error(err)
    assert snapshot(model) == {**first, "README.md": b"my notes on this model"}
    (model / "README.md").unlink()
    code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", str(model), "--overwrite"], capsys)
    assert code == 0, err
    replaced = snapshot(model)
    assert replaced.keys() == first.keys() and replaced != first  # step 4's weights, not step 2's
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture
def model_and_adapter(tmp_path):
    """A saved tiny model and a LoRA adapter folder for it."""
    model = tmp_path / "model"
    build_tiny_pipeline().save_pretrained(model)
    return model, save_tiny_adapter(tmp_path / "adapter")


@pytest.mark.parametrize("which", ["model", "adapter"])  # 5, 6
def test_merge_never_writes_over_its_model_or_adapter(model_and_adapter, capsys, which):
    model, adapter = model_and_adapter
    before = {**snapshot(model), **snapshot(adapter)}
    out = model if which == "model" else adapter
    code, _, err = run_cli(["convert", "lora", str(adapter), "--model", str(model), "--out", str(out), "--merge",
                            "--overwrite"], capsys)
    assert code == 2 and f"--out {out} is the {'--model' if which == 'model' else 'adapter'} {out}" in one_error(err)
    assert {**snapshot(model), **snapshot(adapter)} == before
    from nami_core.modeldir import merge_lora  # Python callers get the same rule

    with pytest.raises(NamiError, match="writing it would replace the input"):
        merge_lora(model, adapter, out, overwrite=True)


def test_outputs_inside_or_around_an_input_are_refused(model_and_adapter, tmp_path):
    model, adapter = model_and_adapter
    inputs = {"--model": model, "--lora": adapter}
    with pytest.raises(NamiError, match="lies inside the --model"):
        check_out_folder(model / "samples", SAMPLES, inputs)
    with pytest.raises(NamiError, match="holds the --model"):
        check_out_folder(tmp_path, MODEL, inputs, overwrite=True)
    with pytest.raises(NamiError, match="lies inside the --lora"):
        check_out_file(adapter / "report.json", (".json",), "report", inputs)
    plain = tmp_path / "prompts"
    plain.mkdir()
    assert check_out_file(plain / "page.html", (".html",), "page", {"--images": plain}) == plain / "page.html"
    with pytest.raises(NamiError, match="is the --open"):
        check_out_file(plain / "a.jsonl", (".jsonl",), "set", {"--open": [tmp_path / "x.txt", plain / "a.jsonl"]})


# -- empty paths, the current folder, files and folders -------------------------------------------------------


def test_empty_and_current_folder_outputs(run, tmp_path, capsys, monkeypatch):
    """9 (convert --out ''), 30 (train --out ''), and `.`: refused, nothing written in the current folder."""
    root = run.parent
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in ("", "."):
        code, _, err = run_cli(["convert", "checkpoint", str(checkpoint(run)), "--out", out], capsys)
        assert code == 2 and one_error(err) == "error: --out . is the current folder; name a folder for the nami model directory"
        code, _, err = run_cli(train_cli_args(root, out, "--steps", "1"), capsys)
        assert code == 2 and one_error(err) == "error: --out . is the current folder; name a folder for the training run"
    with pytest.raises(NamiError, match="--out is empty; give the folder to write the training run to"):
        check_out_folder("", RUN)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("command", [["bench", "latency", "--preset", "tiny"], ["bench", "train", "--preset", "tiny"]])
def test_bench_json_that_is_a_folder(tmp_path, capsys, monkeypatch, command):
    """10: `--json .` was a ValueError after the whole benchmark; now one line before it starts."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*command, "--json", "."], capsys)
    assert code == 2 and one_error(err) == "error: --json . is a folder; give the path of the file to write"
    code, _, err = run_cli([*command, "--json", "report.txt"], capsys)
    assert code == 2 and one_error(err) == ("error: --json report.txt: the JSON report is written as .json; "
                                            "give a name ending in .json")
    assert list(tmp_path.iterdir()) == []


def test_nami1k_plot_must_be_a_png(tmp_path, capsys):
    """28: `--plot x.txt` wrote a PNG into x.txt."""
    source = tmp_path / "open.txt"
    source.write_text("a red cat\na blue dog\n")
    args = ["eval", "nami1k", "build", "--open", str(source), "--counts", "2,0,0", "--out", str(tmp_path / "set.jsonl")]
    code, _, err = run_cli([*args, "--plot", str(tmp_path / "x.txt")], capsys)
    assert code == 2 and one_error(err) == (f"error: --plot {tmp_path / 'x.txt'}: the histogram PNG is written as .png; "
                                            "give a name ending in .png")
    code, _, err = run_cli([*args[:-2], "--out", str(source)], capsys)  # the source file itself
    assert code == 2 and "the NAMI-1K prompt set is written as .jsonl" in one_error(err)
    code, _, err = run_cli(["eval", "nami1k", "build", "--open", str(tmp_path / "set.jsonl"), "--counts", "1,0,0",
                            "--out", str(tmp_path / "set.jsonl")], capsys)
    assert code == 2 and "is the --open" in one_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open.txt"] and source.read_text() == "a red cat\na blue dog\n"


def test_sample_to_a_jpg_makes_no_folder(tiny_model_dir, tmp_path, capsys):
    """32: `--out x.jpg` made a folder named x.jpg."""
    out = tmp_path / "x.jpg"
    code, _, err = run_cli(["sample", "a cat", "--model", str(tiny_model_dir), "--out", str(out)], capsys)
    assert code == 2 and one_error(err) == f"error: --out {out}: nami sample writes PNG images; give a .png file name, or a folder"
    with pytest.raises(NamiError, match=r"names a \.json file; the training run is a folder"):
        check_out_folder(tmp_path / "run.json", RUN)
    assert list(tmp_path.iterdir()) == []


# -- kinds ------------------------------------------------------------------------------------------------------


def test_artefacts_are_recognised_by_their_own_files(run, model_and_adapter, tmp_path):
    model, adapter = model_and_adapter
    assert recognise(model) is MODEL and recognise(adapter) is ADAPTER and recognise(run) is RUN
    assert recognise(run.parent / "data") is DATA and recognise(run / "final") is MODEL
    assert recognise(checkpoint(run)).name == "training checkpoint" and recognise(tmp_path / "none") is None
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / ".lock").write_text("{}")
    assert check_out_folder(empty, RUN) == empty  # empty folders and a lock hold nothing to lose


# -- names from outside ids -------------------------------------------------------------------------------------

HOSTILE = ["../../escape", "..", ".", "/etc/passwd", "a/b", "a\\b", ".hidden", ".tmp-x.1", "-rf", "a\nb", "a\x00b",
           "a\tb", "x" * 300, "猫", "a..b", " spaced ", "CON", "0000"]


def test_safe_names_of_hostile_ids():
    names = [safe_name(text) for text in HOSTILE]
    for text, name in zip(HOSTILE, names):
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith((".", "-")), text
        assert name.isprintable() and name.isascii() and " " not in name and 0 < len(name) <= 64, text
    assert len(set(names)) == len(names)  # distinct ids, distinct names
    assert safe_name("0000") == "0000" and safe_name("CON") == "CON"  # plain names are kept as they are
    assert safe_name("../../escape").startswith("escape-")


class FakeGenerator:
    """Stands in for `eval.generation.Generator`: one grey 8x8 image per image asked for."""

    model_name = "fake"

    def images(self, prompts, per_prompt, seed, batch_size):
        from PIL import Image

        from nami_core.eval.generation import Generated

        for i, _ in enumerate(prompts):
            for j in range(per_prompt):
                yield Generated(i, j, seed + i * per_prompt + j, Image.new("RGB", (8, 8), (128, 128, 128)))

    def info(self, prompt, seed, **extra):
        return {"prompt": prompt, "seed": seed, **extra}


def test_nami1k_ids_never_name_a_file_outside_the_folder(tmp_path, tiny_model_dir, capsys):
    """7: a prompt id `../../escape` wrote outside --out; now every id is a name inside it."""
    from nami_core.eval.nami1k.generate import generate_set, image_name, read_manifest
    from nami_core.eval.nami1k.prompts import PromptRecord

    records = [PromptRecord(text, "a red cat", "open", "animals", 3) for text in HOSTILE]
    out = tmp_path / "deep" / "er" / "images"
    manifest = generate_set(FakeGenerator(), records, out)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([image_name(r.id, 0) for r in records] + ["manifest.jsonl"])
    assert [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents] == []
    assert [line["id"] for line in read_manifest(out)] == HOSTILE and len(manifest) == len(HOSTILE)
    # the CLI, with a real model
    prompts = tmp_path / "set.jsonl"
    prompts.write_text(json.dumps({"id": "../../escape", "prompt": "a red circle", "source": "open",
                                   "topic": "other", "words": 3}) + "\n")
    cli_out = tmp_path / "a" / "b" / "cli"
    code, _, err = run_cli(["eval", "nami1k", "generate", "--prompts", str(prompts), "--model", str(tiny_model_dir),
                            "--out", str(cli_out), "--device", "cpu", "--steps", "1,1,1"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in cli_out.iterdir()) == sorted(["manifest.jsonl", image_name("../../escape", 0)])
    assert not (tmp_path / "escape_00.png").exists() and not list(tmp_path.glob("*.png"))


def test_dpg_item_ids_are_safe_grid_names(tmp_path):
    from nami_core.eval import dpg_run

    prompts = {text: f"prompt {i}" for i, text in enumerate(HOSTILE)}
    out = tmp_path / "grids"

    dpg_run.generate_grids(FakeGenerator(), prompts, out, seed=0, batch_size=8)
    assert sorted(p.name for p in out.iterdir()) == sorted(dpg_run.grid_name(i) for i in HOSTILE)
    assert os.listdir(tmp_path) == ["grids"]


def test_rendered_scenes_go_into_a_new_folder_or_their_own(tmp_path):
    from nami_core.data.shapes import ShapesSource

    scenes = tmp_path / "scenes"
    source = ShapesSource(n=2, images_dir=scenes)
    for item in source:
        item.load()
    assert sorted(p.name for p in scenes.iterdir()) == ["0000000.png", "0000000.txt", "0000001.png", "0000001.txt"]
    ShapesSource(n=2, images_dir=scenes)  # the same folder again: its own kind
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"a photo")
    with pytest.raises(NamiError, match="holds files that are not a folder of rendered shapes scenes"):
        ShapesSource(n=2, images_dir=mine)


def test_scenes_of_other_settings_are_never_replaced(tmp_path):
    """A folder of scenes is filled in place: a re-run with the same settings writes the same files
    again, one with another seed (or mix, style) is refused at its first differing file, which is
    kept, and so is a file of a scene's name that nami did not write."""
    from nami_core.data.shapes import ShapesSource

    scenes = tmp_path / "scenes"
    for item in ShapesSource(n=2, seed=0, images_dir=scenes):
        item.load()
    before = snapshot(scenes)
    for item in ShapesSource(n=2, seed=0, images_dir=scenes):  # the same settings: the same bytes, nothing changes
        item.load()
    assert snapshot(scenes) == before
    with pytest.raises(NamiError, match=r"^--images-dir .*scenes: 0000000.png exists and differs from what this run "
                                        r"writes there .*\(nothing was replaced\)$"):
        for item in ShapesSource(n=2, seed=5, images_dir=scenes):
            item.load()
    (scenes / "0000001.txt").write_text("my own caption\n")
    kept = snapshot(scenes)
    items = list(ShapesSource(n=2, seed=0, images_dir=scenes))
    items[0].load()
    with pytest.raises(NamiError, match="0000001.txt exists and differs"):
        items[1].load()
    assert snapshot(scenes) == kept
