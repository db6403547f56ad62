"""`nami prepare-data`: sources, resolution choice, robust image handling, manifest, resume."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from nami_cli.main import run
from nami_core.data.images import target_resolution
from nami_core.data.prepare import PrepareRequest, prepare
from nami_core.data.sources import open_source
from nami_core.data.store import LatentStore
from nami_core.errors import NamiError


def colored(size, color, mode="RGB"):
    return Image.new(mode, size, color)


def make_folder(root, n=6, sizes=((64, 64), (40, 48), (70, 33))):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = sizes[i % len(sizes)]
        colored(size, (40 * i % 255, 100, 200)).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"a picture number {i}")
    return root


def test_target_resolution():
    assert target_resolution(64, 64, (16, 32, 64)) == 64
    assert target_resolution(70, 33, (16, 32, 64)) == 32
    assert target_resolution(31, 200, (16, 32, 64)) == 16
    assert target_resolution(15, 15, (16, 32, 64)) is None


def test_prepare_a_folder_with_bad_images(tmp_path):
    src = make_folder(tmp_path / "src", n=3)
    colored((64, 64), (0, 128, 255, 0), "CMYK").save(src / "cmyk.jpg")
    (src / "cmyk.txt").write_text("a cmyk image")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(src / "deep.png")
    assert Image.open(src / "deep.png").mode.startswith("I")
    (src / "deep.txt").write_text("a 16-bit image")
    colored((64, 64), 90, "L").save(src / "gray.png")
    (src / "gray.txt").write_text("a gray image")
    colored((64, 64), (0, 0, 255, 128), "RGBA").convert("P").save(src / "palette.png")
    (src / "palette.txt").write_text("a palette image")
    (src / "corrupt.jpg").write_bytes(b"GIF87 this is not an image at all")
    (src / "corrupt.txt").write_text("broken")
    colored((1, 1), (1, 2, 3)).save(src / "tiny.png")
    (src / "tiny.txt").write_text("far too small")
    buf = io.BytesIO()
    colored((64, 64), (10, 200, 10)).save(buf, format="JPEG")
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (src / "truncated.txt").write_text("half a file")
    Image.new("L", (9000, 8000)).save(src / "huge.png")
    (src / "huge.txt").write_text("a huge image")
    colored((64, 64), (5, 5, 5)).save(src / "nocaption.png")
    (src / "meta.png").write_bytes((src / "img00.png").read_bytes())
    (src / "meta.json").write_text(json.dumps({"caption": "from json", "other": 1}))

    out = tmp_path / "data"
    report = prepare(open_source(str(src)), PrepareRequest(out=out, stages=(16, 32, 64), shard_size=4, batch_size=3))
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["corrupt.jpg"] == "not an image or corrupt"
    assert reasons["tiny.png"].startswith("too small (1x1")
    assert reasons["truncated.jpg"] == "truncated image"
    assert reasons["huge.png"].startswith("huge image")
    assert reasons["nocaption.png"] == "no caption"
    conversions = {c["source"]: c["conversion"] for c in manifest["converted"]}
    assert conversions == {
        "cmyk.jpg": "cmyk->rgb",
        "deep.png": "16-bit->8-bit rgb",
        "gray.png": "grayscale->rgb",
        "palette.png": "p->rgb (alpha on white)",
    }
    # 3 generated (64, 40x48 -> 32, 70x33 -> 32) + cmyk, deep, gray, palette, meta at 64
    assert manifest["counts"] == {"16": 0, "32": 2, "64": 6}
    assert report.images == 8 and manifest["total"] == 8
    assert manifest["skipped_by_reason"]["too small"] == 1
    store = LatentStore(out)
    batch = store.fetch(64, [0, 5])
    assert batch.latents.shape == (2, 3, 64, 64) and batch.text.sequence.shape == (2, 32, 384)
    assert -1.0 <= batch.latents.min() and batch.latents.max() <= 1.0
    captions = []
    for shard in manifest["shards"]:
        from safetensors import safe_open

        with safe_open(str(out / shard["file"]), "pt") as f:
            captions += json.loads(f.metadata()["captions"])
    assert "from json" in captions and "a cmyk image" in captions


def test_prepare_resumes_finished_units(tmp_path):
    src = make_folder(tmp_path / "src", n=6)
    out = tmp_path / "data"
    req = PrepareRequest(out=out, stages=(16, 32), shard_size=2)
    first = prepare(open_source(str(src)), req)
    assert (first.units_done, first.units_skipped) == (3, 0)
    marker = out / "shards" / "unit-000001.json"
    stamp = marker.stat().st_mtime_ns
    os.remove(out / "shards" / "unit-000002.json")  # as if killed during the last unit
    second = prepare(open_source(str(src)), req)
    assert (second.units_done, second.units_skipped) == (1, 2)
    assert marker.stat().st_mtime_ns == stamp
    assert second.images == first.images == 6
    with pytest.raises(NamiError, match="was prepared with stages=\\[16, 32\\]"):
        prepare(open_source(str(src)), PrepareRequest(out=out, stages=(32, 64), shard_size=2))


def test_datasets_parquet_and_webdataset_sources(tmp_path):
    import datasets
    import tarfile

    images = [colored((32, 32), (i * 50, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "text": ["red one", "red two", "red three"]},
                                    features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    src = open_source(str(tmp_path / "hf"))
    assert len(src) == 3 and [i.caption for i in src] == ["red one", "red two", "red three"]
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    assert [i.caption for i in open_source(str(tmp_path / "rows.parquet"))][1] == "red two"
    with pytest.raises(NamiError, match="caption column 'alt' not found"):
        open_source(str(tmp_path / "hf"), caption_column="alt")

    for shard in range(2):
        with tarfile.open(tmp_path / f"wds-{shard}.tar", "w") as tar:
            for i in range(2):
                for ext, payload in (("png", None), ("txt", f"shard {shard} item {i}".encode())):
                    if payload is None:
                        buf = io.BytesIO()
                        images[i].save(buf, format="PNG")
                        payload = buf.getvalue()
                    info = tarfile.TarInfo(f"{shard:02d}{i:03d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    wds = open_source(str(tmp_path / "wds-{0..1}.tar"))
    items = list(wds)
    assert [i.caption for i in items] == ["shard 0 item 0", "shard 0 item 1", "shard 1 item 0", "shard 1 item 1"]
    out = tmp_path / "wds-data"
    report = prepare(wds, PrepareRequest(out=out, stages=(16, 32)))
    assert report.counts == {32: 4}


def test_prepare_cli_errors(tmp_path, capsys):
    for args, message in [
        ([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--stages", "16,32"], "does not exist"),
        ([str(make_folder(tmp_path / "s", 1)), "--out", str(tmp_path / "o"), "--stages", "16,30"], "must double"),
        ([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--stages", "16,32", "--codec", "jpeg"], "unknown codec"),
        (["shapes", "--out", str(tmp_path / "o"), "--stages", "16,32", "--scene-mix", "crowd:1"], "'crowd:1' is not KIND:WEIGHT"),
        (["shapes", "--out", str(tmp_path / "o"), "--stages", "16,32", "--scene-mix", "pair:-1"], "must be a number >= 0"),
        ([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--stages", "16,32", "--scene-mix", "pair:1"],
         "--scene-mix applies to the shapes source only"),
        (["shapes", "--out", str(tmp_path / "o"), "--stages", "16,32", "--usual-color", "2"],
         "--usual-color must be between 0 and 1, got 2"),
        (["shapes", "--out", str(tmp_path / "o"), "--stages", "16,32", "--gap", "-3"],
         "--gap must be between 0 and 8 pixels, got -3"),
        ([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--stages", "16,32", "--usual-color", "0.5"],
         "--usual-color applies to the shapes source only"),
        ([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--stages", "16,32", "--gap", "4"],
         "--gap applies to the shapes source only"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run(["prepare-data", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
