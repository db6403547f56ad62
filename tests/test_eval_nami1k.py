"""NAMI-1K: prompt-set format and build, histograms, topics, generation, the page's data, scores and agreement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from nami_core.errors import NamiError
from nami_core.png import save_png
from nami_core.eval.nami1k import annotate, build, plots, prompts, score
from nami_core.eval.nami1k.agreement import krippendorff_alpha_interval
from nami_core.eval.nami1k.generate import MANIFEST_NAME, read_manifest
from nami_core.eval.nami1k.topics import TOPICS, topic_of
from tests.helpers import run_cli

OFFICIAL = Path("/work/shared/geneval/evaluation_metadata.jsonl")



def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# -- topics and the prompt format -------------------------------------------------------------------------


def test_topics():
    assert len(TOPICS) == 14 and TOPICS[-1] == "other"
    assert topic_of("a photo of a cat and a dog on a sofa") == "animals"  # 2 animal words, 1 indoor word
    assert topic_of("a watercolor painting of a castle") == "art"  # 2 art words beat 1 architecture word
    assert topic_of("three red cars") == "vehicles"  # plural stripped
    assert topic_of("a photo of a hot dog") == "animals"  # food ("hot dog") ties animals ("dog"): earlier topic
    assert topic_of("a hot dog and a sandwich") == "food"  # the two-word keyword counts: food 2, animals 1
    assert topic_of("zxq blorp") == "other"


def test_prompt_record_validation(tmp_path):
    good = {"id": "0001", "prompt": "a red cat", "source": "human", "topic": "animals", "words": 3}
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert prompts.read_prompt_set(path) == [prompts.PromptRecord("0001", "a red cat", "human", "animals", 3)]
    for change, problem in [({"source": "web"}, "source must be one of open, human, generated"),
                            ({"words": 4}, "words must be the prompt's word count 3"),
                            ({"topic": "cats"}, "topic must be one of"),
                            ({"id": ""}, "id must be a non-empty string")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "0002", **change}) + "\n")
        with pytest.raises(NamiError, match=f"{path}:2: {problem}"):
            prompts.read_prompt_set(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(NamiError, match="id '0001' appears twice"):
        prompts.read_prompt_set(path)


# -- building a set ---------------------------------------------------------------------------------------


def sources(tmp_path):
    long = " ".join(["word"] * 121)
    open_file = write_lines(tmp_path / "open.txt", ["a red cat", "A  red CAT", "a blue car", long, "a tall tower",
                                                    "a green apple", "two dogs"])
    human = tmp_path / "human.jsonl"
    human.write_text("\n".join(json.dumps(x) for x in [{"prompt": "an old man reading", "topic": "people"},
                                                       {"prompt": "a red cat"}, {"prompt": "a misty lake at dawn"},
                                                       {"prompt": "a robot chef"}]) + "\n")
    generated = write_lines(tmp_path / "gen.txt", ["a long caption about a quiet harbour town at dusk",
                                                   "a detailed caption of a fox in the snow"])
    return {"open": [open_file], "human": [human], "generated": [generated]}


def test_build_is_deterministic_deduplicated_and_counted(tmp_path):
    files = sources(tmp_path)
    records = build.build_prompt_set(files, {"open": 3, "human": 2, "generated": 2}, seed=4)
    assert records == build.build_prompt_set(files, {"open": 3, "human": 2, "generated": 2}, seed=4)
    assert [r.id for r in records] == ["0000", "0001", "0002", "0003", "0004", "0005", "0006"]
    assert [r.source for r in records] == ["open"] * 3 + ["human"] * 2 + ["generated"] * 2
    texts = [r.prompt for r in records]
    assert "A  red CAT" not in texts and all(r.words <= 120 for r in records)
    # "a red cat" was taken by the open source, so the human pool holds the other three prompts
    assert "a red cat" not in texts[3:5]
    assert all(r.words == len(r.prompt.split()) and r.topic in TOPICS for r in records)
    human = {r.prompt: r.topic for r in records if r.source == "human"}
    assert human.get("an old man reading", "people") == "people"
    draws = {tuple(r.prompt for r in build.build_prompt_set(files, {"open": 3, "human": 2, "generated": 2}, seed=s))
             for s in range(6)}
    assert len(draws) > 1  # the seed changes the draw


def test_build_errors(tmp_path):
    files = sources(tmp_path)
    with pytest.raises(NamiError, match="6 open prompts were asked for but the open files hold only 5 distinct"):
        build.build_prompt_set(files, {"open": 6, "human": 0, "generated": 0})
    with pytest.raises(NamiError, match="2 human prompts were asked for but no human source file was given"):
        build.build_prompt_set({"open": files["open"]}, {"open": 1, "human": 2, "generated": 0})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(NamiError, match=f"{bad}:2: expected an object with a non-empty"):
        build.build_prompt_set({"open": [bad]}, {"open": 1, "human": 0, "generated": 0})


@pytest.mark.skipif(not OFFICIAL.exists(), reason="GenEval metadata not present")
def test_cli_build_with_the_papers_counts(tmp_path, capsys):
    human = write_lines(tmp_path / "human.txt", [f"a person number {i} walking a dog in a park" for i in range(400)])
    generated = write_lines(tmp_path / "gen.txt", [f"a long caption {i} " + "about a quiet harbour town " * 5
                                                   for i in range(330)])
    out = tmp_path / "nami1k.jsonl"
    code, stdout, err = run_cli(["eval", "nami1k", "build", "--open", str(OFFICIAL), "--human", str(human),
                                 "--generated", str(generated), "--out", str(out)], capsys)
    assert code == 0, err
    records = prompts.read_prompt_set(out)
    assert [sum(r.source == s for r in records) for s in prompts.SOURCES] == [360, 320, 320]
    official = {json.loads(l)["prompt"] for l in OFFICIAL.read_text().splitlines()}
    assert all(r.prompt in official for r in records if r.source == "open")
    with Image.open(out.with_suffix(".png")) as png:
        assert png.size == (1300, 450)
    assert "topics: people" in stdout and stdout.rstrip().endswith(f"wrote {out} and {out.with_suffix('.png')}")


def test_histograms_count_per_bin_and_topic():
    records = [prompts.PromptRecord(str(i), " ".join(["w"] * n), s, t, n)
               for i, (n, s, t) in enumerate([(3, "open", "animals"), (10, "open", "food"), (11, "human", "animals"),
                                              (25, "generated", "other")])]
    assert plots.length_histogram(records) == {"open": [2, 0, 0], "human": [0, 1, 0], "generated": [0, 0, 1]}
    counts = plots.topic_counts(records)
    assert list(counts) == list(TOPICS) and counts["animals"] == 2 and counts["food"] == 1 and sum(counts.values()) == 4


# -- generation and the page's data ---------------------------------------------------------------------


def fake_generated(folder, ids=("0000", "0001"), model="m"):
    """A folder as `generate` writes it, with plain images."""
    folder.mkdir(parents=True)
    manifest = []
    for k, record_id in enumerate(ids):
        name = f"{record_id}_00.png"
        save_png(Image.new("RGB", (64, 48), (40 * k, 90, 200)), folder / name, {"prompt": f"prompt {record_id}"})
        manifest.append({"file": name, "id": record_id, "prompt": f"prompt {record_id}", "source": "open",
                         "topic": "other", "words": 2, "image": 0, "seed": k, "model": model})
    (folder / MANIFEST_NAME).write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return folder


def test_cli_generate_writes_images_and_manifest(tmp_path, capsys, tiny_model_dir):
    records = [prompts.PromptRecord("0000", "a red circle", "open", "other", 3),
               prompts.PromptRecord("0001", "a blue square above a green triangle", "human", "other", 7)]
    prompts.write_prompt_set(tmp_path / "set.jsonl", records)
    out = tmp_path / "gen"
    code, stdout, err = run_cli(["eval", "nami1k", "generate", "--prompts", str(tmp_path / "set.jsonl"), "--out", str(out),
                                 "--model", str(tiny_model_dir), "--steps", "1,1,1", "--images-per-prompt", "2",
                                 "--seed", "5", "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["0000_00.png", "0000_01.png", "0001_00.png", "0001_01.png",
                                                      MANIFEST_NAME]
    manifest = read_manifest(out)
    assert [(m["file"], m["seed"], m["source"]) for m in manifest] == [
        ("0000_00.png", 5, "open"), ("0000_01.png", 6, "open"), ("0001_00.png", 7, "human"), ("0001_01.png", 8, "human")]
    with Image.open(out / "0001_01.png") as img:
        assert json.loads(img.text["nami"])["seed"] == 8
    code, _, err = run_cli(["eval", "nami1k", "generate", "--prompts", str(tmp_path / "set.jsonl"), "--out", str(out),
                            "--model", str(tiny_model_dir)], capsys)
    assert code == 2 and "already holds generated images" in err


def test_page_data_is_blind_shuffled_and_embedded(tmp_path):
    a = fake_generated(tmp_path / "a")
    b = fake_generated(tmp_path / "b", ids=("0000",))
    data = annotate.page_data([("nami", a), ("flux", b)], tmp_path / "page.html", max_side=32)
    assert data["dimensions"] == ["relevance", "coherence", "aesthetics", "realism"]
    assert sorted(i["key"] for i in data["items"]) == ["flux/0000_00.png", "nami/0000_00.png", "nami/0001_00.png"]
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in data["items"])
    assert data == annotate.page_data([("nami", a), ("flux", b)], tmp_path / "page.html", max_side=32)  # deterministic
    linked = annotate.page_data([("nami", a)], tmp_path / "pages" / "page.html", embed=False)
    assert {i["src"] for i in linked["items"]} == {"../a/0000_00.png", "../a/0001_00.png"}
    with pytest.raises(NamiError, match="share the model name 'a'"):
        annotate.page_data([("a", a), ("a", b)], tmp_path / "page.html")


def test_cli_annotate_wrong_layout_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    code, stdout, err = run_cli(["eval", "nami1k", "annotate", "--images", str(folder), "--out",
                                 str(tmp_path / "page.html")], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1 and "has no manifest.jsonl" in err
    assert not (tmp_path / "page.html").exists()


# -- scores and agreement -------------------------------------------------------------------------------


def test_krippendorff_alpha_interval_hand_computed():
    # units {10, 20}, {20, 20}, {30, 40}: D_o = (200 + 0 + 200) / 6, D_e = 6400 / 30 -> 1 - 0.3125
    assert krippendorff_alpha_interval([[10, 20], [20, 20], [30, 40]]) == pytest.approx(0.6875)
    # Krippendorff's (2011) worked example, 4 coders x 12 units with gaps: alpha (interval) = 0.849
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert krippendorff_alpha_interval(units) == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha_interval([[3, 3], [3, 3]]) != krippendorff_alpha_interval([[3, 3], [3, 3]])  # NaN
    assert math.isnan(krippendorff_alpha_interval([[1], [2]]))


def export(path, annotator, rows):
    items = [{"key": k, "model": k.split("/")[0], "id": k[-11:-7], "source": s, "topic": "other",
              **dict(zip(annotate.DIMENSIONS, v))} for k, s, v in rows]
    path.write_text(json.dumps({"format": score.FORMAT, "page": "p", "annotator": annotator, "items": items}))
    return path


def hand_annotations(tmp_path):
    one = export(tmp_path / "ann1.json", "ann1", [("m1/0000_00.png", "open", (80, 60, 50, 40)),
                                                   ("m1/0001_00.png", "human", (60, 40, 70, 20)),
                                                   ("m2/0000_00.png", "open", (30, 30, 30, 30))])
    two = export(tmp_path / "ann2.json", "ann2", [("m1/0000_00.png", "open", (60, 80, 50, 60)),
                                                   ("m1/0001_00.png", "human", (None, 40, 50, 40)),
                                                   ("m2/0000_00.png", "open", (50, 50, 50, 50))])
    return one, two


def test_scores_average_annotators_then_images_then_weight(tmp_path):
    result = score.score_annotations(score.read_annotations(hand_annotations(tmp_path)))
    # image means: m1/0000 (70, 70, 50, 50), m1/0001 (60 [one annotator], 40, 60, 30); m2 (40, 40, 40, 40)
    m1 = result["models"]["m1"]
    assert [m1[d] for d in annotate.DIMENSIONS] == pytest.approx([65, 55, 55, 40])
    assert m1["overall"] == pytest.approx(0.3 * 65 + 0.3 * 55 + 0.2 * 55 + 0.2 * 40)  # 55.0
    assert result["models"]["m2"]["overall"] == pytest.approx(40.0)
    assert result["sources"]["m1"]["open"]["overall"] == pytest.approx(62.0)  # .3*70 + .3*70 + .2*50 + .2*50
    assert result["sources"]["m1"]["human"]["overall"] == pytest.approx(48.0)  # .3*60 + .3*40 + .2*60 + .2*30
    assert math.isnan(result["sources"]["m1"]["generated"]["overall"])
    # relevance units {80, 60}, {30, 50} (m1/0001 has one score): 1 - 400 / (10400 / 12) = 7 / 13
    assert result["agreement"]["relevance"] == pytest.approx(7 / 13)
    only = score.score_annotations(score.read_annotations(hand_annotations(tmp_path)), ["m2"])
    assert list(only["models"]) == ["m2"]
    with pytest.raises(NamiError, match="model 'm3' has no annotated images"):
        score.score_annotations(score.read_annotations(hand_annotations(tmp_path)), ["m3"])


def test_cli_score_prints_the_tables(tmp_path, capsys):
    one, two = hand_annotations(tmp_path)
    code, stdout, err = run_cli(["eval", "nami1k", "score", str(one), str(two), "--models", "m1,m2",
                                 "--json", str(tmp_path / "scores.json")], capsys)
    assert code == 0, err
    row = next(l for l in stdout.splitlines() if "m1" in l and "65.00" in l)
    assert "55.00" in row and "40.00" in row
    assert stdout.rstrip().splitlines()[-1].startswith("agreement (Krippendorff's alpha, interval): relevance 0.538")
    assert json.loads((tmp_path / "scores.json").read_text())["models"]["m1"]["overall"] == pytest.approx(55.0)


@pytest.mark.parametrize("content, problem", [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "is not a NAMI-1K annotation export"),
    ('{"format": "nami1k-annotations/1", "annotator": "a", "items": [{"key": "m/x", "model": "m", "source": "open", '
     '"relevance": 120}]}', "relevance must be a number from 0 to 100 or null, got 120"),
])
def test_cli_score_bad_files(tmp_path, capsys, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, stdout, err = run_cli(["eval", "nami1k", "score", str(path), "--json", str(tmp_path / "s.json")], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1 and problem in err
    assert not (tmp_path / "s.json").exists()
