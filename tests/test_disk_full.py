"""A full disk, for real: each writer (prepare-data, train checkpoints, train final, sample, convert,
eval) runs into a small tmpfs mounted for the test, and its failure, whatever the library raises
(safetensors' SafetensorError, torch.save's RuntimeError, PIL's or json's OSError), is the same one
error line naming the file, with nothing partial left and everything written before intact.

Mounting needs root (and a kernel that lets the test mount); elsewhere these tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import finished_run, prepare_train_data, run_cli, train_cli_args

FULL = re.compile(r"error: no space left on device writing (?P<path>\S+?);( it needs [\d,.]+ [KMG]iB;)? "
                  r"[\d,.]+ [KMG]iB free \(files written before are intact\)")


@contextmanager
def tiny_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (skips the test where it cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def full_disk_line(err: str) -> Path:
    """The one error line of `err`, its last (progress lines may come before), a full disk naming a
    file; returns that file."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    found = FULL.fullmatch(errors[0])
    assert found is not None, errors[0]
    return Path(found["path"])


def leftovers(folder: Path) -> list[str]:
    """Temporary names (`.tmp-...`) anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def run(root):
    """A finished 2-step run (checkpoint at step 2, a final model with EMA)."""
    return finished_run(root, root / "run", "--steps", "2", "--save-every", "2", "--ema-decay", "0.9")


def test_prepare_data_keeps_its_finished_units(tmp_path, capsys):
    with tiny_disk(tmp_path / "disk", "200k") as disk:
        out = disk / "data"
        code, _, err = run_cli(["prepare-data", "shapes", "--n", "12", "--out", str(out), "--stages", "16,32,64",
                                "--shard-size", "4", "--max-text-tokens", "12"], capsys)
        assert code == 2
        named = full_disk_line(err)
        assert named.parent == out / "shards" and named.name.startswith("unit-000001")
        assert leftovers(disk) == [] and not (out / "manifest.json").exists()
        assert (out / "shards" / "unit-000000.json").is_file()  # the finished unit stays, for the re-run


def test_a_training_checkpoint(root, tmp_path, capsys):
    with tiny_disk(tmp_path / "disk", "512k") as disk:
        out = disk / "run"
        code, _, err = run_cli(train_cli_args(root, out, "--steps", "2", "--save-every", "2", batch_size=4), capsys)
        assert code == 2
        assert full_disk_line(err) == out / "checkpoints" / "step-00000002"
        assert leftovers(disk) == [] and not (out / ".lock").exists()
        assert not (out / "checkpoints").exists() or list((out / "checkpoints").iterdir()) == []


def test_the_final_model(root, tmp_path, capsys):
    """The checkpoints fit (their folder is on the big disk); RUN/final does not."""
    elsewhere = tmp_path / "checkpoints"
    elsewhere.mkdir()
    with tiny_disk(tmp_path / "disk", "512k") as disk:
        out = disk / "run"
        out.mkdir()
        (out / "checkpoints").symlink_to(elsewhere)
        code, _, err = run_cli(train_cli_args(root, out, "--steps", "2", "--save-every", "2", "--ema-decay", "0.9",
                                              batch_size=4), capsys)
        assert code == 2
        assert full_disk_line(err) == out / "final"
        assert leftovers(disk) == [] and not (out / "final").exists() and not (out / ".lock").exists()
        assert [p.name for p in elsewhere.iterdir()] == ["step-00000002"]  # the run can be resumed or exported


def test_sample(tmp_path, capsys, tiny_model_dir):
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "images"
        code, stdout, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out", str(out),
                                     "--n", "16", "--steps", "1,1,1"], capsys)
        assert code == 2
        named = full_disk_line(err)
        written = sorted(out.glob("*.png"))
        assert named.parent == out and named not in written and 0 < len(written) < 16
        assert sorted(out.iterdir()) == sorted(written + [p.with_suffix(".json") for p in written])  # pairs only
        assert all(json.loads(p.with_suffix(".json").read_text())["prompt"] == "a red circle" for p in written)


def test_convert_checkpoint(run, tmp_path, capsys):
    with tiny_disk(tmp_path / "disk", "512k") as disk:
        out = disk / "model"
        code, _, err = run_cli(["convert", "checkpoint", str(run / "checkpoints" / "step-00000002"), "--out", str(out)],
                               capsys)
        assert code == 2
        assert full_disk_line(err) == out
        assert list(disk.iterdir()) == []


def test_eval_generation(tmp_path, capsys, tiny_model_dir):
    prompts = tmp_path / "set.jsonl"
    lines = [{"id": f"{i:04d}", "prompt": "a red circle", "source": "open", "topic": "other", "words": 3}
             for i in range(12)]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "images"
        code, _, err = run_cli(["eval", "nami1k", "generate", "--prompts", str(prompts), "--model", str(tiny_model_dir),
                                "--out", str(out), "--device", "cpu", "--steps", "1,1,1"], capsys)
        assert code == 2
        named = full_disk_line(err)
        assert named.parent == out and re.fullmatch(r"\d{4}_00\.png", named.name) and not named.exists()
        assert leftovers(disk) == [] and not (out / "manifest.jsonl").exists()
