"""`nami sample` never loses a picture: names that do not collide, no overwrite unless --overwrite,
and bad --out / --cfg values or a full disk are one error line with every earlier file intact."""

from __future__ import annotations

import errno
import json

import pytest
from PIL import Image

from nami_core.output_names import sample_name, settings_key
from nami_core.sample_writer import write_sample
from tests.helpers import run_cli

FAST = ["--steps", "1,1,1"]


def sample(capsys, model, prompt, out, *extra):
    return run_cli(["sample", prompt, "--model", str(model), "--out", str(out), *FAST, *extra], capsys)


def one_error_line(err: str) -> str:
    """The one error line of stderr (the progress bars of a run that got as far as sampling aside)."""
    lines = [line for line in err.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def pictures(folder):
    """name -> bytes of every file in `folder`."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def check_consistent(png):
    """The PNG's name is derived from the metadata its chunk and its sidecar both hold."""
    meta = json.loads(png.with_suffix(".json").read_text())
    with Image.open(png) as img:
        assert json.loads(img.text["nami"]) == meta
    assert png.name.startswith(sample_name(meta)[: -len(".png")])
    return meta


# -- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first, second", [("猫", "犬"), ("A cat", "a cat!")])
def test_prompts_that_slug_alike_get_their_own_files(tiny_model_dir, tmp_path, capsys, first, second):
    out = tmp_path / "s"
    code, stdout, err = sample(capsys, tiny_model_dir, first, out)
    assert code == 0, err
    kept = pictures(out)
    code, stdout2, err = sample(capsys, tiny_model_dir, second, out)
    assert code == 0, err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and len(list(out.glob("*.json"))) == 2
    assert {check_consistent(p)["prompt"] for p in pngs} == {first, second}
    assert all(pictures(out)[name] == data for name, data in kept.items())  # the first run's files untouched
    assert stdout.strip() != stdout2.strip()  # each run prints its own path
    if first == "猫":
        assert all(p.name.startswith("image-") for p in pngs)  # no Latin letters: the slug is "image"


def test_same_prompt_twice_writes_a_numbered_copy(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, err = sample(capsys, tiny_model_dir, "a cat", out)
    assert code == 0, err
    first = out / sample_name(json.loads(next(out.glob("*.json")).read_text()))
    assert stdout.strip().splitlines()[-1] == str(first)
    kept = pictures(out)
    code, stdout, err = sample(capsys, tiny_model_dir, "a cat", out)
    assert code == 0, err
    copy = first.with_name(first.stem + "-1.png")
    assert stdout.strip().splitlines()[-1] == str(copy)
    assert sorted(pictures(out)) == sorted([first.name, first.with_suffix(".json").name, copy.name,
                                            copy.with_suffix(".json").name])
    assert all(pictures(out)[name] == data for name, data in kept.items())
    assert check_consistent(copy) == check_consistent(first)


def test_settings_change_the_name(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    for extra in ([], ["--cfg", "4"]):
        code, _, err = sample(capsys, tiny_model_dir, "a cat", out, *extra)
        assert code == 0, err
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert sorted(m["cfg"] for m in metas) == [2.0, 4.0]  # the tiny model's default, then --cfg 4
    assert len({settings_key(m) for m in metas}) == 2 and not list(out.glob("*-1.png"))


def test_overwrite_replaces_in_a_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, err = sample(capsys, tiny_model_dir, "a cat", out)
    assert code == 0, err
    png = out / stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    png.write_bytes(b"old picture")
    png.with_suffix(".json").write_text("old settings")
    code, stdout, err = sample(capsys, tiny_model_dir, "a cat", out, "--overwrite")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(png)
    assert sorted(p.name for p in out.iterdir()) == sorted([png.name, png.with_suffix(".json").name])
    check_consistent(png)  # a real PNG again, with its settings


def test_named_png_that_exists_gets_a_numbered_name(tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "cat.png"
    code, _, err = sample(capsys, tiny_model_dir, "a cat", target)
    assert code == 0, err
    kept = pictures(tmp_path)
    code, out, err = sample(capsys, tiny_model_dir, "a dog", target)
    assert code == 0, err
    copy = tmp_path / "cat-1.png"
    assert out.strip().splitlines()[-1] == str(copy)
    assert f"note: {target} exists; wrote {copy} instead (--overwrite replaces)" in err.splitlines()
    assert all(pictures(tmp_path)[name] == data for name, data in kept.items())
    assert json.loads(copy.with_suffix(".json").read_text())["prompt"] == "a dog"
    # a stray sidecar counts as taken too: nothing beside the PNG is replaced unasked
    lone = tmp_path / "lone.png"
    lone.with_suffix(".json").write_text("my notes")
    code, out, err = sample(capsys, tiny_model_dir, "a cat", lone)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(tmp_path / "lone-1.png")
    assert lone.with_suffix(".json").read_text() == "my notes" and not lone.exists()
    code, out, err = sample(capsys, tiny_model_dir, "a dog", target, "--overwrite")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(target) and "note:" not in err
    assert json.loads(target.with_suffix(".json").read_text())["prompt"] == "a dog"
    check_consistent_chunk(target)


def check_consistent_chunk(png):
    with Image.open(png) as img:
        assert json.loads(img.text["nami"]) == json.loads(png.with_suffix(".json").read_text())


# -- bad values -----------------------------------------------------------------------------------------


def test_out_that_is_a_file_is_one_line(tiny_model_dir, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    code, out, err = sample(capsys, tiny_model_dir, "a cat", existing)
    assert code == 2 and out == ""
    assert one_error_line(err) == f"error: --out {existing} is a file; give a folder, or a .png file name for one image"
    code, _, err = sample(capsys, tiny_model_dir, "a cat", existing / "sub")
    assert code == 2 and one_error_line(err) == f"error: --out {existing / 'sub'}: {existing} is a file, not a folder"
    assert existing.read_text() == "keep me"


def test_empty_out_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = sample(capsys, tiny_model_dir, "a cat", "")
    assert code == 2
    assert one_error_line(err) == "error: --out is empty; give a folder, or a .png file name for one image"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cfg, shown", [("1e300", "1e+300"), ("8,101,1", "8,101,1")])
def test_guidance_above_100_is_refused(tiny_model_dir, tmp_path, capsys, cfg, shown):
    code, _, err = sample(capsys, tiny_model_dir, "a cat", tmp_path / "s", "--cfg", cfg)
    assert code == 2
    assert one_error_line(err) == f"error: --cfg must be at most 100 (usual scales are 1 to 20), got {shown}"
    assert not (tmp_path / "s").exists()


def test_guidance_of_100_is_accepted(tiny_model_dir, tmp_path, capsys):
    code, _, err = sample(capsys, tiny_model_dir, "a cat", tmp_path / "s", "--cfg", "100")
    assert code == 0, err
    assert json.loads(next((tmp_path / "s").glob("*.json")).read_text())["cfg"] == 100.0


# -- a full disk ----------------------------------------------------------------------------------------


def fail_on_call(real, call: int, exc: Exception):
    """`real`, raising `exc` on call number `call` (1-based)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise exc
        return real(*args, **kwargs)

    return wrapper


def test_disk_full_while_writing_the_second_image(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import nami_core.sample_writer as writer

    monkeypatch.setattr(writer, "save_png", fail_on_call(writer.save_png, 2, OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "s"
    code, stdout, err = sample(capsys, tiny_model_dir, "a cat", out, "--n", "2")
    assert code == 2 and stdout == ""
    line = one_error_line(err)
    first = next(out.glob("*.png"))
    second = first.with_name(first.name.replace("-s0.png", "-s1.png"))
    assert line.startswith(f"error: no space left on device writing {second}; it needs ")
    assert line.endswith("iB free (files written before are intact)")
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, first.with_suffix(".json").name])  # no temp file
    check_consistent(first)


def test_disk_full_in_the_encoder_leaves_no_temp_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The PNG encoder itself (PIL) hits the full disk: one line naming the image, nothing half-written stays."""
    monkeypatch.setattr(Image.Image, "save", fail_on_call(Image.Image.save, 1, OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "s"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"an earlier picture")
    code, _, err = sample(capsys, tiny_model_dir, "a cat", out)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: no space left on device writing {out}/a-cat-") and "-s0.png; " in line
    assert [p.name for p in out.iterdir()] == ["earlier.png"]
    assert (out / "earlier.png").read_bytes() == b"an earlier picture"


def test_disk_full_on_the_sidecar_takes_the_png_back(tmp_path, monkeypatch):
    import nami_core.sample_writer as writer
    from nami_core.errors import DiskFullError

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writer, "write_json_atomic", full)
    with pytest.raises(DiskFullError, match=r"writing .*a\.png; it needs [\d.]+ [KMG]iB"):
        write_sample(Image.new("RGB", (8, 8)), tmp_path / "a.png", {"prompt": "p", "seed": 0})
    assert list(tmp_path.iterdir()) == []  # no PNG without its sidecar, no temp file


# -- the writer -----------------------------------------------------------------------------------------


def test_writer_numbers_taken_names_and_never_replaces(tmp_path, monkeypatch):
    from nami_core.errors import NamiError

    image, meta = Image.new("RGB", (8, 8), (200, 0, 0)), {"prompt": "p", "seed": 0}
    target = tmp_path / "x.png"
    assert write_sample(image, target, meta) == target
    assert write_sample(image, target, meta) == tmp_path / "x-1.png"
    (tmp_path / "x-2.json").write_text("a stray sidecar")
    assert write_sample(image, target, meta) == tmp_path / "x-3.png"
    assert (tmp_path / "x-2.json").read_text() == "a stray sidecar"
    with pytest.raises(NamiError, match="x.png already exists; pass --overwrite"):
        write_sample(image, target, meta, renumber=False)
    # a file system without hard links: the name is checked, then the PNG renamed into place

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    assert write_sample(image, target, meta) == tmp_path / "x-4.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.json", "x-1.png", "x-2.json", "x-3.json", "x-3.png",
                                                          "x-4.json", "x-4.png", "x.json", "x.png"]
