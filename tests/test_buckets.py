"""Aspect-ratio buckets: the bucket table, assignment and cropping, `prepare-data --buckets`, one
bucket per training step on every rank, and exact resume of a bucketed run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from nami_core.config import FlowConfig
from nami_core.data.buckets import Bucket, bucket_table, covered_level, nearest_bucket
from nami_core.data.images import center_crop_resize, cover_crop_resize
from nami_core.data.prepare import PrepareRequest, prepare
from nami_core.data.sources import open_source
from nami_core.data.store import LatentStore
from nami_core.errors import NamiError
from nami_core.flow.plan import FlowPlan
from nami_core.train.batches import BatchDrawer
from tests.helpers import TRAIN_MODEL, run_cli, torchrun_nami, train_cli_args

STAGES = (16, 32, 64)
# (width, height) of the source images, with the bucket and the stage each goes to
IMAGES = [((64, 64), "64x64", 64)] * 4 + [((70, 70), "64x64", 64)] + [((100, 50), "96x48", 64)] * 3 + \
    [((48, 80), "48x80", 64)] * 3 + [((30, 40), "48x80", 32), ((10, 30), None, None)]


def test_bucket_table_for_a_pixel_codec():
    """16/32/64 px, 4 px tokens: a 4x4-token lowest stage; 1:2 -> 6x3 tokens, 9:16, 2:3, 3:4 -> 5x3, ..."""
    table = bucket_table(STAGES, 4)
    assert [b.name for b in table] == ["48x96", "48x80", "64x64", "80x48", "96x48"]
    assert [b.sizes for b in table] == [
        ((24, 12), (48, 24), (96, 48)),
        ((20, 12), (40, 24), (80, 48)),
        ((16, 16), (32, 32), (64, 64)),
        ((12, 20), (24, 40), (48, 80)),
        ((12, 24), (24, 48), (48, 96)),
    ]
    for bucket in table:  # every stage halves into whole tokens: the last is a multiple of 4 x 2^2
        assert all(h % (4 * 2**k) == 0 and w % (4 * 2**k) == 0 for k, (h, w) in enumerate(bucket.sizes))


def test_bucket_table_at_1024_is_close_to_the_square_area():
    table = bucket_table((256, 512, 1024), 16)  # FLUX VAE (8x) with 2x2 patches
    assert [b.name for b in table] == ["704x1472", "768x1344", "832x1280", "896x1152", "1024x1024",
                                       "1152x896", "1280x832", "1344x768", "1472x704"]
    for bucket in table:
        height, width = bucket.size(2)
        assert abs(height * width / 1024**2 - 1) < 0.02 and height % 64 == 0 and width % 64 == 0
    with pytest.raises(NamiError, match="not a whole number of 16px tokens"):
        bucket_table((24, 48), 16)


@pytest.mark.parametrize("size, name, level", [
    ((64, 64), "64x64", 2), ((63, 64), "64x64", 1), ((100, 50), "96x48", 2), ((200, 40), "96x48", 1),
    ((48, 80), "48x80", 2), ((30, 40), "48x80", 1), ((20, 14), "80x48", 0), ((10, 30), "48x96", None),
    ((90, 72), "64x64", 2),  # 1.25: nearer 1 (log 0.22) than 5:3 (log 0.29)
])
def test_nearest_bucket_by_aspect_ratio_and_the_largest_stage_it_covers(size, name, level):
    bucket = nearest_bucket(*size, bucket_table(STAGES, 4))
    assert bucket.name == name and covered_level(*size, bucket) == level


def test_nearest_bucket_tie_goes_to_the_squarer_one():
    square, wide = Bucket(((4, 4),)), Bucket(((1, 4),))  # aspect 1 and 4: a 2:1 image is as far from both
    assert nearest_bucket(20, 10, [wide, square]) is square and nearest_bucket(20, 10, [square, wide]) is square


def test_cover_crop_resize_crops_only_the_excess():
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (40, 200, 3), dtype=np.uint8))
    # 5:1 into a 2:1 bucket of 48x24: the centre 80x40 (the excess 120 px cut, 60 each side), resized
    expected = wide.crop((60, 0, 140, 40)).resize((48, 24), Image.Resampling.BICUBIC, reducing_gap=None)
    assert np.array_equal(np.asarray(cover_crop_resize(wide, 48, 24)), np.asarray(expected))
    exact = Image.fromarray(rng.integers(0, 256, (80, 48, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(cover_crop_resize(exact, 48, 80)), np.asarray(exact))  # nothing cut
    tall = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(cover_crop_resize(tall, 24, 40)), np.asarray(tall)[:, 3:27])
    square = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(cover_crop_resize(square, 32, 32)), np.asarray(center_crop_resize(square, 32)))


def write_images(root):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i, ((w, h), _, _) in enumerate(IMAGES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"a red circle number {i}")
    return root


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    """The IMAGES prepared with --buckets at 16/32/64 px (pixel codec, patch 4) in ROOT/data, the
    tiny training model in ROOT/model.json; returns ROOT."""
    root = tmp_path_factory.mktemp("buckets")
    src = write_images(root / "src")
    code = run_cli(["prepare-data", str(src), "--out", str(root / "data"), "--stages", "16,32,64", "--buckets",
                    "--shard-size", "8", "--max-text-tokens", "12", "--device", "cpu"])[0]
    assert code == 0
    (root / "model.json").write_text(json.dumps(TRAIN_MODEL))
    return root


def test_prepare_data_buckets_writes_bucket_records(bucketed):
    out = bucketed / "data"
    manifest = json.loads((out / "manifest.json").read_text())
    zeros = {"16": 0, "32": 0, "64": 0}
    assert manifest["buckets"] == [
        {"name": "48x96", "sizes": [[24, 12], [48, 24], [96, 48]], "counts": zeros, "total": 0},
        {"name": "48x80", "sizes": [[20, 12], [40, 24], [80, 48]], "counts": {**zeros, "32": 1, "64": 3}, "total": 4},
        {"name": "64x64", "sizes": [[16, 16], [32, 32], [64, 64]], "counts": {**zeros, "64": 5}, "total": 5},
        {"name": "80x48", "sizes": [[12, 20], [24, 40], [48, 80]], "counts": zeros, "total": 0},
        {"name": "96x48", "sizes": [[12, 24], [24, 48], [48, 96]], "counts": {**zeros, "64": 3}, "total": 3},
    ]
    assert manifest["counts"] == {"16": 0, "32": 1, "64": 11} and manifest["total"] == 12
    assert manifest["skipped"] == [{"source": "img12.png", "reason": "too small (10x30 < 12x24)"}]
    assert json.loads((out / "prepare.json").read_text())["buckets"] == ["48x96", "48x80", "64x64", "80x48", "96x48"]
    shards = {(s["file"], s["resolution"], s["bucket"], s["count"]) for s in manifest["shards"]}
    assert shards == {
        ("shards/unit-000000-r0064-64x64.safetensors", 64, "64x64", 5),
        ("shards/unit-000000-r0064-96x48.safetensors", 64, "96x48", 3),
        ("shards/unit-000001-r0064-48x80.safetensors", 64, "48x80", 3),
        ("shards/unit-000001-r0032-48x80.safetensors", 32, "48x80", 1),
    }
    store = LatentStore(out)
    assert [b.name for b in store.buckets] == [b["name"] for b in manifest["buckets"]]
    assert store.count(64) == 11 and store.count(64, "96x48") == 3 and store.count(16, "64x64") == 0
    assert store.fetch(64, [0, 2], "96x48").latents.shape == (2, 3, 48, 96)
    # the 30x40 image at 32 px: 24x40, its centre columns 3..26 as they were (no resize, nothing else cut)
    path = out / "shards" / "unit-000001-r0032-48x80.safetensors"
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["keys"]) == ["img11.png"]
    pixels = np.asarray(Image.open(bucketed / "src" / "img11.png"))[:, 3:27]
    expected = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0).half()
    assert torch.equal(store.fetch_raw(32, [0], "48x80").latents[0], expected)
    with pytest.raises(NamiError, match="holds aspect-ratio buckets"):
        store.fetch(64, [0])


def test_square_preparation_is_unchanged_and_a_resume_keeps_the_bucket_setting(bucketed, tmp_path):
    src = bucketed / "src"
    out = tmp_path / "square"
    req = PrepareRequest(out=out, stages=STAGES, max_text_tokens=12, shard_size=8)
    prepare(open_source(str(src)), req)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "buckets" not in manifest and "buckets" not in json.loads((out / "prepare.json").read_text())
    assert all("bucket" not in s for s in manifest["shards"])
    assert sorted(s["file"] for s in manifest["shards"]) == [
        "shards/unit-000000-r0032.safetensors", "shards/unit-000000-r0064.safetensors",
        "shards/unit-000001-r0016.safetensors", "shards/unit-000001-r0032.safetensors"]
    assert LatentStore(out).buckets is None
    with pytest.raises(NamiError, match="was prepared without --buckets; use another --out"):
        prepare(open_source(str(src)), PrepareRequest(out=out, stages=STAGES, max_text_tokens=12, shard_size=8,
                                                      buckets=True))
    with pytest.raises(NamiError, match=r"was prepared with --buckets \(48x96, "):
        prepare(open_source(str(src)), PrepareRequest(out=bucketed / "data", stages=STAGES, max_text_tokens=12,
                                                      shard_size=8))
    before = (bucketed / "data" / "manifest.json").read_bytes()
    again = prepare(open_source(str(src)), PrepareRequest(out=bucketed / "data", stages=STAGES, max_text_tokens=12,
                                                          shard_size=8, buckets=True))
    assert (again.units_done, again.units_skipped) == (0, 2) and again.buckets == {"64x64": 5, "96x48": 3, "48x80": 4}
    assert (bucketed / "data" / "manifest.json").read_bytes() == before


def drawers(root, ranks=(0, 1), batch=16, pixels_per_token=4):
    store = LatentStore(root / "data")
    plan = FlowPlan("nami", FlowConfig(STAGES), (1, 2, 3), pixels_per_token)
    return store, [BatchDrawer(store, plan, 1, batch, seed=5, rank=r) for r in ranks]


def test_every_step_draws_one_bucket_the_same_on_every_rank(bucketed):
    store, (rank0, rank1) = drawers(bucketed)
    sizes = {b.name: b.sizes for b in store.buckets}
    seen = set()
    for step in range(24):
        a, b = rank0.draw(step, (1, 1, 1)), rank1.draw(step, (1, 1, 1))
        assert [(g.window, len(g.r)) for g in a] == [(g.window, len(g.r)) for g in b]  # same stage split
        assert [g.latents.shape for g in a] == [g.latents.shape for g in b]  # same shapes on both ranks
        full = [(g.latents.shape[-2] << (2 - g.window), g.latents.shape[-1] << (2 - g.window)) for g in a]
        assert len(set(full)) == 1  # one bucket per step: every group is that bucket at its stage
        name = f"{full[0][1]}x{full[0][0]}"
        for g in a:
            assert tuple(g.latents.shape[-2:]) == sizes[name][g.window] == tuple(g.noise.shape[-2:])
        seen.add(name)
    assert seen == {"48x80", "64x64", "96x48"}  # the two empty buckets are never drawn
    assert any(not torch.equal(x.latents, y.latents) for x, y in zip(rank0.draw(3, (1, 1, 1)), rank1.draw(3, (1, 1, 1))))
    again = rank0.draw(7, (1, 1, 1))
    assert all(torch.equal(x.latents, y.latents) and torch.equal(x.noise, y.noise)
               for x, y in zip(rank0.draw(7, (1, 1, 1)), again))


def test_the_step_bucket_is_weighted_by_the_images_the_deepest_window_can_use(bucketed):
    _, (drawer,) = drawers(bucketed, ranks=(0,), batch=1)
    # a 32 px sample can use the 64 px images of every bucket and the 48x80 one stored at 32 px
    assert {n: sum(c for _, c in pool) for n, pool in drawer.pools[1].items()} == \
        {"48x96": 0, "48x80": 4, "64x64": 5, "80x48": 0, "96x48": 3}
    counts: dict[str, int] = {}
    for step in range(600):
        (group,) = drawer.draw(step, (0, 1, 0))
        name = f"{group.latents.shape[-1] * 2}x{group.latents.shape[-2] * 2}"
        counts[name] = counts.get(name, 0) + 1
    assert set(counts) == {"48x80", "64x64", "96x48"}
    assert counts["48x80"] / 600 == pytest.approx(4 / 12, abs=0.07)
    assert counts["64x64"] / 600 == pytest.approx(5 / 12, abs=0.07)


def test_buckets_that_are_not_whole_tokens_of_the_run_are_refused(bucketed):
    with pytest.raises(NamiError, match="bucket 48x96 is 12x24px at stage 1, not whole 8px tokens"):
        drawers(bucketed, pixels_per_token=8)


def train(root, out, *extra):
    return run_cli(train_cli_args(root, out, "--ema-decay", "0.9", "--keep", "0", *extra, batch_size=6,
                                  log_every=2))[0]


def test_train_on_buckets_and_resume_exactly(bucketed, tmp_path):
    """6 steps straight equal 3 steps, then a resume to 6: raw and EMA weights, bit for bit."""
    straight = tmp_path / "straight"
    assert train(bucketed, straight, "--steps", "6", "--save-every", "3") == 0
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["tokens_per_s"] > 0 for r in records)
    halves = tmp_path / "halves"
    assert train(bucketed, halves, "--steps", "3", "--save-every", "3") == 0
    midway = load_file(halves / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert train(bucketed, halves, "--steps", "6", "--save-every", "3", "--resume", "latest") == 0
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        a = load_file(straight / "final" / "transformer" / name)
        b = load_file(halves / "final" / "transformer" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    final = load_file(halves / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(midway[k], final[k]) for k in final)  # the last 3 steps did train


@pytest.mark.slow  # about 15 s; the per-rank bucket choice is checked in-process above
def test_torchrun_two_ranks_train_on_buckets(bucketed, tmp_path):
    """Two gloo ranks on bucketed data: every step's groups have one shape on both ranks, and DDP runs through."""
    out = tmp_path / "ddp"
    result = torchrun_nami(train_cli_args(bucketed, out, "--steps", "4", "--save-every", "4", batch_size=6, log_every=2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    assert (out / "final" / "model_index.json").is_file()
