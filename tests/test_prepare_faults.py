"""`nami prepare-data` under faults (issue 27, "nothing lost, nothing silent"): damaged shards,
a source that changed between runs, a full disk, and values that must be refused. Each refusal
is one `error:` line with exit status 2, and whatever was prepared before stays whole."""

import errno
import json
import re

import pytest
from PIL import Image
from safetensors import SafetensorError, safe_open

from nami_core.data.shard_check import shard_problem
from nami_core.data.store import LatentStore
from nami_core.errors import NamiError
from tests.helpers import TRAIN_MODEL, run_cli

STAGES = "16,32,64"


def image_folder(root, n, start=0):
    """`n` 64 px images with captions, img00.png ..., in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (64, 64), (40 * i % 255, 100, 200)).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"a red square {i}")
    return root


def prepare_cli(src, out, capsys, *extra):
    return run_cli(["prepare-data", str(src), "--out", str(out), "--stages", STAGES, "--shard-size", "2",
                    "--max-text-tokens", "12", *extra], capsys)


def one_error_line(err):
    """The single `error:` line of stderr (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(out):
    """Every file of a prepared folder but the ones each run rewrites, with its bytes."""
    rewritten = {"manifest.json", "prepare.json", "null_text.safetensors"}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in rewritten}


def shard_keys(out):
    keys = []
    for shard in json.loads((out / "manifest.json").read_text())["shards"]:
        with safe_open(str(out / shard["file"]), "pt") as f:
            keys += json.loads(f.metadata()["keys"])
    return keys


@pytest.fixture
def prepared(tmp_path, capsys):
    """6 images in 3 units of 2, prepared at 16/32/64 px: (source, out)."""
    src = image_folder(tmp_path / "src", 6)
    out = tmp_path / "data"
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0, err
    return src, out


# -- 1. a damaged shard ----------------------------------------------------------------------------------


def test_truncated_shard_is_one_line_in_train_and_redone_by_prepare(prepared, tmp_path, capsys):
    src, out = prepared
    shard = out / "shards" / "unit-000001-r0064.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    advice = f"re-run `nami prepare-data` with the same source and --out {out} to redo it"

    # (a) reading it: one line naming the shard and the repair, from the store and from `nami train`
    expected = f"data shard {shard} is damaged ({size // 2:,} bytes, {size:,} when written); {advice}"
    with pytest.raises(NamiError) as exc:
        LatentStore(out)
    assert str(exc.value) == expected
    (tmp_path / "model.json").write_text(json.dumps(TRAIN_MODEL))
    code, _, err = run_cli(["train", "--data", str(out), "--out", str(tmp_path / "run"), "--config",
                            str(tmp_path / "model.json"), "--stages", STAGES, "--steps", "1", "--batch-size", "2"],
                           capsys)
    assert code == 2 and one_error_line(err) == f"error: {expected}"

    # data prepared before shard sizes were recorded: the header tells the truncation
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NamiError) as exc:
        LatentStore(out)
    assert str(exc.value) == f"data shard {shard} is damaged (truncated: {size // 2:,} of {size:,} bytes); {advice}"

    # (b) a re-run checks the finished units, redoes the damaged one, says so, keeps the others
    before = snapshot(out)
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0, err
    assert "redoing unit 1: shards/unit-000001-r0064.safetensors is damaged " \
           f"({size // 2:,} bytes, {size:,} when written)" in err.splitlines()
    assert "6 images (6 at 64px)" in err and "1 units written (1 redone), 2 already done" in err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if "unit-000001" not in k} == \
           {k: v for k, v in before.items() if "unit-000001" not in k}
    assert shard.stat().st_size == size and shard_problem(shard, 2, size) is None
    assert sorted(shard_keys(out)) == [f"img{i:02d}.png" for i in range(6)]
    assert LatentStore(out).count(64) == 6


def test_missing_shard_and_unreadable_marker_are_redone(prepared, capsys):
    src, out = prepared
    (out / "shards" / "unit-000000-r0064.safetensors").unlink()
    (out / "shards" / "unit-000002.json").write_text("{ not json")
    with pytest.raises(NamiError, match=re.escape("unit-000000-r0064.safetensors listed in the manifest is missing; "
                                                  f"re-run `nami prepare-data` with the same source and --out {out}")):
        LatentStore(out)
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert "redoing unit 0: shards/unit-000000-r0064.safetensors is missing" in lines
    assert "redoing unit 2: its record unit-000002.json is unreadable" in lines
    assert "2 units written (2 redone), 1 already done" in err
    assert sorted(shard_keys(out)) == [f"img{i:02d}.png" for i in range(6)]


def test_damaged_shard_found_while_reading(prepared):
    """A shard damaged after the store opened it (or whose size was not recorded) fails on
    reading as one line too, not as a safetensors traceback."""
    _, out = prepared
    store = LatentStore(out)
    shard = out / "shards" / "unit-000002-r0064.safetensors"
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    with pytest.raises(NamiError, match=re.escape(f"data shard {shard} is damaged (")):
        store.fetch(64, [5])


# -- 2. the source changed between runs ----------------------------------------------------------------


def test_changed_source_is_refused_and_nothing_changes(prepared, capsys):
    src, out = prepared
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a file added between runs; it sorts into unit 1 and would shift every later item
    Image.new("RGB", (64, 64), (1, 2, 3)).save(src / "img02b.png")
    (src / "img02b.txt").write_text("a newcomer")
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 2
    assert err == (f"error: the source changed since {out} was started (7 items, was 6); restore it, "
                   "or use another --out to prepare it anew\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the same count under other names
    (src / "img05.png").unlink()
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 2 and "(other item names or sizes)" in one_error_line(err)
    # restored: the re-run resumes, all done, counts agree with the shards
    (src / "img02b.png").rename(src / "img05.png")
    (src / "img02b.txt").unlink()
    Image.new("RGB", (64, 64), (40 * 5 % 255, 100, 200)).save(src / "img05.png")
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0 and "0 units written, 3 already done" in err, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == sum(s["count"] for s in manifest["shards"]) == len(set(shard_keys(out))) == 6


def test_shapes_count_change_is_refused(tmp_path, capsys):
    out = tmp_path / "shapes"
    args = ["prepare-data", "shapes", "--out", str(out), "--stages", "16,32", "--max-text-tokens", "12",
            "--shard-size", "4"]
    assert run_cli([*args, "--n", "6"], capsys)[0] == 0
    code, _, err = run_cli([*args, "--n", "10"], capsys)
    assert code == 2 and one_error_line(err) == (
        f"error: the source changed since {out} was started (10 items, was 6); restore it, or use another --out "
        "to prepare it anew")


def test_settings_of_a_refused_run_are_not_pinned(tmp_path, capsys):
    """A run refused before any unit finished leaves nothing that binds the next one."""
    src = image_folder(tmp_path / "src", 2)
    out = tmp_path / "data"
    code, _, err = run_cli(["prepare-data", str(src), "--out", str(out), "--stages", STAGES,
                            "--max-text-tokens", "1000"], capsys)
    assert code == 2 and err == ("error: --max-text-tokens 1000 exceeds the text encoder's maximum of 512 tokens "
                                 "(minilm); use --max-text-tokens 512 or less\n")
    assert not out.exists()
    # a folder with a prepare.json but no finished unit takes new settings
    out.mkdir()
    (out / "prepare.json").write_text(json.dumps({"max_text_tokens": 7, "stages": [16]}))
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0, err
    assert json.loads((out / "prepare.json").read_text())["max_text_tokens"] == 12


# -- 3. faults that gave tracebacks ----------------------------------------------------------------------


def test_default_text_length_beyond_a_small_encoder(tmp_path, capsys):
    """A bare-PATH encoder defaults to 256 tokens; one with 128 positions refuses that in one line."""
    from tests.helpers import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    capsys.readouterr()  # transformers' own progress bars
    src = image_folder(tmp_path / "src", 2)
    args = ["prepare-data", str(src), "--out", str(tmp_path / "o"), "--stages", STAGES, "--text-encoder", str(bert)]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err == (f"error: the default text length 256 exceeds the text encoder's maximum of 128 "
                                 f"tokens ({bert}); use --max-text-tokens 128 or less\n")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli([*args, "--max-text-tokens", "128"], capsys)
    assert code == 0, err


def test_garbage_parquet_names_the_file(tmp_path, capsys):
    bad = tmp_path / "rows.parquet"
    bad.write_bytes(b"PAR1 this is no parquet file " * 8)
    code, _, err = run_cli(["prepare-data", str(bad), "--out", str(tmp_path / "o"), "--stages", STAGES], capsys)
    assert code == 2
    assert err == f"error: {bad} is not a readable parquet file (Parquet magic bytes not found in footer)\n"
    assert not (tmp_path / "o").exists()


def _no_space(kind):
    if kind == "safetensors":
        return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where,kind", [("save_file", "oserror"), ("save_file", "safetensors"),
                                        ("write_shard", "oserror")])
def test_disk_full_keeps_finished_units(tmp_path, capsys, monkeypatch, where, kind):
    """The disk fills up while unit 1's shard is written: one line naming the shard and the space
    it needs, unit 0 intact, no temporary file left, and a re-run finishes the job."""
    import nami_core.data.prepare as prepare_module
    import nami_core.data.store as store_module

    src = image_folder(tmp_path / "src", 5)
    out = tmp_path / "data"
    real = store_module.save_file if where == "save_file" else prepare_module.write_shard

    def full_disk(*args, **kwargs):
        target = str(args[1] if where == "save_file" else args[0])
        if "unit-000001" in target:
            if where == "save_file":
                with open(target, "wb") as f:
                    f.write(b"half a shard")
            raise _no_space(kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module if where == "save_file" else prepare_module, where, full_disk)
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 2
    shard = out / "shards" / "unit-000001-r0064.safetensors"
    assert re.fullmatch(rf"error: no space left on device writing {re.escape(str(shard))}; it needs [\d,.]+ [KMG]iB; "
                        r"[\d,.]+ [KMG]iB free \(files written before are intact\)", one_error_line(err)), err
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["unit-000000-r0064.safetensors", "unit-000000.json"]
    assert shard_problem(out / "shards" / "unit-000000-r0064.safetensors", 2) is None
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]

    monkeypatch.undo()
    code, _, err = prepare_cli(src, out, capsys)
    assert code == 0 and "2 units written, 1 already done" in err, err
    assert sorted(shard_keys(out)) == [f"img{i:02d}.png" for i in range(5)]


# -- 4. values that were accepted silently -----------------------------------------------------------------


@pytest.mark.parametrize("source,extra,message", [
    ("folder", ["--max-text-tokens", "0"], "--max-text-tokens must be at least 1, got 0"),
    ("folder", ["--max-text-tokens", "-3"], "--max-text-tokens must be at least 1, got -3"),
    ("folder", ["--image-column", "image"],
     "--image-column applies to datasets and parquet sources only, not to the image folder {src}"),
    ("folder", ["--caption-column", "text"],
     "--caption-column applies to datasets and parquet sources only, not to the image folder {src}"),
    ("shapes", ["--image-column", "image"], "--image-column applies to datasets and parquet sources only, "
                                            "not to the shapes source"),
    ("wds", ["--caption-column", "txt"], "--caption-column applies to datasets and parquet sources only, "
                                         "not to webdataset shards ({src})"),
    ("folder", ["--out", ""], "--out is empty; give the folder to write the prepared data to"),
    ("", [], "the source is empty; give an image folder, datasets folder, parquet file(s), webdataset .tar "
             "pattern or 'shapes'"),
    ("folder", ["--shard-size", "0"], "--shard-size must be at least 1, got 0"),
    ("folder", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("folder", ["--batch-size", "-2"], "--batch-size must be at least 1, got -2"),
    ("shapes", ["--n", "0"], "--n must be at least 1, got 0"),
    ("folder", ["--n", "5"], "--n applies to the shapes source only"),
    ("folder", ["--seed", "3"], "--seed applies to the shapes source only"),
    ("folder", ["--images-dir", "pngs"], "--images-dir applies to the shapes source only"),
    ("shapes", ["--usual-color", "1.5"], "--usual-color must be between 0 and 1, got 1.5"),
    ("shapes", ["--usual-color", "-0.1"], "--usual-color must be between 0 and 1, got -0.1"),
    ("shapes", ["--gap", "-1"], "--gap must be between 0 and 8 pixels, got -1"),
])
def test_nonsense_values_are_refused(tmp_path, capsys, monkeypatch, source, extra, message):
    monkeypatch.chdir(tmp_path)
    if source == "folder":
        src = str(image_folder(tmp_path / "src", 2))
    else:
        src = str(tmp_path / "missing-{0..1}.tar") if source == "wds" else source
    args = ["prepare-data", src, "--out", "data", "--stages", STAGES, *extra]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err == f"error: {message.format(src=src)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["src"] if source == "folder" else [])
