"""Readers of user files (`nami_core.user_files` and the readers built on it): a byte-order mark is
never part of the text, a JSON key given twice is refused, file kinds are chosen by suffix (a `.csv`
of prompts is read as CSV with a header), contradictions and damaged archives are one error line.

Reproductions of issue 33: 12 (a tar of random bytes), 13 (`"items": 5`), 24 (no image has a
caption), 26 (a BOM in `--open o.txt`), 27 (`--open prompts.csv`), 29 (a duplicate key)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from nami_core.errors import NamiError
from nami_core.user_files import parse_json, read_json_object, read_jsonl, read_text
from tests.helpers import one_error, run_cli

BOM = "\ufeff"


def test_the_rules(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(BOM + '{"a": 1}', encoding="utf-8")
    assert read_text(path) == '{"a": 1}' and read_json_object(path) == {"a": 1}
    with pytest.raises(NamiError, match=r"^x: the key 'a' appears twice in one object \(which one is meant\?\)$"):
        parse_json('{"a": 1, "b": {"a": 2}, "a": 3}', "x")
    with pytest.raises(NamiError, match=r"not valid JSON \(NaN is not a JSON number\)"):
        parse_json('{"a": NaN}', "x")
    with pytest.raises(NamiError, match=r"x: not valid JSON \(Expecting value at column 7\)"):
        parse_json('{"a": }', "x")
    lines = tmp_path / "a.jsonl"
    lines.write_text(BOM + '{"a": 1}\n\n[1]\n', encoding="utf-8")
    with pytest.raises(NamiError, match=rf"^{lines}:3: each line must be a JSON object$"):
        read_jsonl(lines)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(NamiError, match="config .* is not UTF-8 text"):
        read_json_object(path, "config")
    with pytest.raises(NamiError, match="config .* does not exist"):
        read_json_object(tmp_path / "none.json", "config")


# What strict JSON and text refuse beyond the standard's own errors: each value would be read as
# something else (1e400 as infinity) or fail in the parser (deep nesting: RecursionError), and a NUL
# byte means the file is no UTF-8 text (UTF-16 without its mark decodes as UTF-8 with NULs).
STRICT = [('{"width": 1e400}', r"x: not valid JSON \(1e400 is beyond the largest float\)"),
          ('{"a": [1, -2.5e999]}', r"x: not valid JSON \(-2.5e999 is beyond the largest float\)"),
          ("[" * 100_000 + "]" * 100_000, r"x: not valid JSON here \(nested too deeply\)"),
          ('{"a": ' + "9" * 5000 + "}", r"x: not valid JSON \(Exceeds the limit")]


@pytest.mark.parametrize("text, message", STRICT, ids=["overflow", "negative overflow", "deep", "long integer"])
def test_strict_json_refuses_what_it_cannot_read_as_written(text, message):
    with pytest.raises(NamiError, match=message):
        parse_json(text, "x")
    assert parse_json('{"a": 1e308, "b": 5e-324, "c": 1e-400}', "x") == {"a": 1e308, "b": 5e-324, "c": 0.0}


def test_text_with_nul_bytes_is_not_text(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("a red circle\n".encode("utf-16-le"))
    with pytest.raises(NamiError, match=rf"^prompts {path} is not UTF-8 text \(it holds NUL bytes, line 1\)$"):
        read_text(path, "prompts")
    path.write_bytes(b"a red circle\nb\0lue\n")
    with pytest.raises(NamiError, match=r"NUL bytes, line 2"):
        read_text(path, "prompts")


# -- NAMI-1K prompt sources ------------------------------------------------------------------------------


def build(tmp_path, capsys, *sources, counts="2,0,0"):
    args = ["eval", "nami1k", "build", *[a for s in sources for a in ("--open", str(s))], "--counts", counts,
            "--out", str(tmp_path / "set.jsonl")]
    code, _, err = run_cli(args, capsys)
    records = [json.loads(line) for line in (tmp_path / "set.jsonl").read_text().splitlines()] if code == 0 else None
    return code, err, records


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path, capsys):
    """26."""
    source = tmp_path / "o.txt"
    source.write_bytes((BOM + "a red cat\na blue dog\n").encode("utf-8"))
    code, err, records = build(tmp_path, capsys, source)
    assert code == 0, err
    assert [r["prompt"] for r in records] == ["a red cat", "a blue dog"]


def test_a_csv_of_prompts_is_read_with_its_header(tmp_path, capsys):
    """27: the header was read as a prompt."""
    source = tmp_path / "prompts.csv"
    source.write_text(BOM + 'id,prompt,topic\n1,"a red cat, sitting",animals\n2,a blue dog,\n', encoding="utf-8")
    code, err, records = build(tmp_path, capsys, source)
    assert code == 0, err
    assert [(r["prompt"], r["topic"]) for r in records] == [("a red cat, sitting", "animals"), ("a blue dog", "animals")]
    source.write_text("id,words\n1,a red cat\n")
    code, err, _ = build(tmp_path, capsys, source, counts="1,0,0")
    assert code == 2 and one_error(err) == (f"error: source file {source}: a .csv needs a header row with a prompt / "
                                            "text / caption column, got id, words")


@pytest.mark.parametrize("name", ["prompts.md", "prompts.json", "prompts"])
def test_other_source_kinds_are_refused(tmp_path, capsys, name):
    source = tmp_path / name
    source.write_text("a red cat\na blue dog\n")
    code, err, _ = build(tmp_path, capsys, source)
    kind = Path(name).suffix or "(no suffix)"
    assert code == 2 and one_error(err) == (f"error: source file {source}: unknown kind {kind}; use .txt (one prompt "
                                            'per line), .jsonl (objects with "prompt") or .csv (a header with a prompt '
                                            "column)")
    assert not (tmp_path / "set.jsonl").exists()


# -- NAMI-1K annotations -----------------------------------------------------------------------------------


def annotation(items) -> str:
    return json.dumps({"format": "nami1k-annotations/1", "annotator": "ann", "items": items})


@pytest.mark.parametrize("text, problem", [
    (annotation(5), "items must be a list of scored images, got 5"),  # 13: was a TypeError
    (annotation({"a": 1}), 'items must be a list of scored images, got {"a": 1}'),
    ('{"format": "nami1k-annotations/1", "annotator": "a", "annotator": "b", "items": []}',
     "the key 'annotator' appears twice in one object"),  # 29: the second silently replaced the first
    (annotation([{"key": "m/1", "model": "m", "source": "open", "relevance": 50}]).replace('"relevance": 50',
                                                                                            '"relevance": 50, "relevance": 90'),
     "the key 'relevance' appears twice in one object"),
    (annotation([{"key": "m/1", "model": "m", "source": "open"}, {"key": "m/1", "model": "m", "source": "open"}]),
     "items[1]: the image 'm/1' is scored twice in one file"),
])
def test_annotation_files_that_cannot_be_read_one_way(tmp_path, capsys, text, problem):
    path = tmp_path / "ann.json"
    path.write_text(text)
    code, stdout, err = run_cli(["eval", "nami1k", "score", str(path)], capsys)
    assert code == 2 and stdout == "" and problem in one_error(err) and str(path) in one_error(err)


# -- GenEval metadata and DPG-Bench files with a byte-order mark ---------------------------------------------


def test_geneval_metadata_and_dpg_csv_with_a_bom(tmp_path):
    from nami_core.eval import dpg
    from nami_core.eval.geneval import read_metadata

    meta = tmp_path / "meta.jsonl"
    line = {"tag": "single_object", "prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}
    meta.write_text(BOM + json.dumps(line) + "\n", encoding="utf-8")
    assert read_metadata(meta) == [line]
    meta.write_text('{"tag": "single_object", "tag": "counting", "prompt": "x", "include": []}\n')
    with pytest.raises(NamiError, match=rf"{meta}:1: the key 'tag' appears twice"):
        read_metadata(meta)
    csv = tmp_path / "dpg.csv"
    csv.write_text(BOM + "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
                   "question_natural_language\na,a cat,,1,0,entity,whole,entity - whole (cat),Is there a cat?\n",
                   encoding="utf-8")
    assert list(dpg.read_dpg_csv(csv, drop_first_row=False)) == ["a"]


# -- prepare-data sources -------------------------------------------------------------------------------------


def prepare(source, out, capsys, *extra):
    return run_cli(["prepare-data", str(source), "--out", str(out), "--stages", "16,32,64",
                    "--max-text-tokens", "8", *extra], capsys)


def test_a_tar_of_random_bytes_is_one_line(tmp_path, capsys):
    """12: a webdataset .tar of random bytes was a tarfile.ReadError traceback."""
    import random

    shard = tmp_path / "shard.tar"
    shard.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
    code, _, err = prepare(shard, tmp_path / "data", capsys)
    assert code == 2 and one_error(err) == f"error: webdataset shard {shard} is not a tar file (damaged, or another format)"
    assert not (tmp_path / "data").exists()


def test_a_tar_damaged_past_its_first_member_is_one_line(tmp_path, capsys):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buffer, format="PNG")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            for suffix, data in ((".png", buffer.getvalue()), (".txt", b"a red square")):
                info = tarfile.TarInfo(f"{i:04d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = shard.read_bytes()
    shard.write_bytes(data[:1536] + bytes(range(256)) * 8 + data[1536 + 2048:])  # a later header destroyed
    code, _, err = prepare(shard, tmp_path / "data", capsys)
    assert code == 2 and one_error(err) == (f"error: webdataset shard {shard} is damaged after its member 2 (byte 2,048 "
                                            f"of {len(data):,}): its later samples cannot be read")


def test_images_without_captions_prepare_nothing_and_say_so(tmp_path, capsys):
    """24: prepare-data where no image has a caption wrote an empty set, exit 0."""
    from PIL import Image

    source = tmp_path / "photos"
    source.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(source / f"{i}.png")
    code, _, err = prepare(source, tmp_path / "data", capsys)
    assert code == 2 and one_error(err) == (f"error: none of the 3 source items could be used (no caption x3); "
                                            f"{tmp_path / 'data' / 'manifest.json'} was not written")
    (source / "0.txt").write_bytes((BOM + "a red square").encode("utf-8"))
    code, _, err = prepare(source, tmp_path / "data", capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["total"] == 1 and manifest["skipped_by_reason"] == {"no caption": 2}
    from nami_core.data.store import data_captions

    assert data_captions(tmp_path / "data") == ["a red square"]  # no byte-order mark in the caption


def test_prepared_data_never_goes_into_a_foreign_folder_or_its_source(tmp_path, capsys):
    from PIL import Image

    source = tmp_path / "photos"
    source.mkdir()
    Image.new("RGB", (64, 64)).save(source / "0.png")
    (source / "0.txt").write_text("a black square")
    code, _, err = prepare(source, source / "data", capsys)
    assert code == 2 and one_error(err) == f"error: --out {source / 'data'} lies inside the source {source}; choose a folder outside it"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = prepare(source, mine, capsys)
    assert code == 2 and "holds files that are not a prepared data folder (e.g. notes.txt)" in one_error(err)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_json_nami_writes_keeps_names_that_are_not_utf8(tmp_path):
    """A folder named with bytes that are not UTF-8 (held by Python as surrogates) in a record nami
    writes (the sample sidecar, the checksum cache, a manifest): the file stays UTF-8 and reads back
    to the same name; UTF-8 names are kept as they are."""
    from nami_core.files import write_json_atomic, write_jsonl_atomic

    odd = "m\udcff/model"
    write_json_atomic(tmp_path / "a.json", {"model": odd, "prompt": "猫"})
    assert read_json_object(tmp_path / "a.json") == {"model": odd, "prompt": "猫"}
    write_json_atomic(tmp_path / "b.json", {"prompt": "猫"})
    assert "猫" in (tmp_path / "b.json").read_text(encoding="utf-8")
    write_jsonl_atomic(tmp_path / "a.jsonl", [{"file": odd}])
    assert read_jsonl(tmp_path / "a.jsonl") == [{"file": odd}]


def test_json_nami_writes_is_standard_json(tmp_path, capsys):
    """A non-finite float in a record nami writes (the agreement of one annotator is undefined) is
    null, never the non-standard NaN that strict readers, nami's own included, refuse."""
    from nami_core.files import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"alpha": float("nan"), "x": [1.0, float("inf"), -float("inf")]})
    assert read_json_object(tmp_path / "a.json") == {"alpha": None, "x": [1.0, None, None]}
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"format": "nami1k-annotations/1", "page": "p", "annotator": "a", "items": [
        {"key": "m/0000_00.png", "model": "m", "id": "0000", "source": "open", "topic": "other", "relevance": 50,
         "coherence": 50, "aesthetics": 50, "realism": 50}]}))
    code, _, err = run_cli(["eval", "nami1k", "score", str(annotations), "--json", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    scores = read_json_object(tmp_path / "s.json")  # strict: NaN would be refused here
    assert scores["agreement"]["relevance"] is None
