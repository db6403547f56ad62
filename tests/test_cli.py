"""The `nami` command: instant help, sampling to PNG with metadata, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nami_core.output_names import sample_name, settings_key
from tests.helpers import run_cli


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys\n"
        "from nami_cli.main import run\n"
        "try:\n    run(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'diffusers' not in sys.modules, 'diffusers imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("prepare-data", "train", "sample", "bench", "eval", "info"):
        assert command in out.stdout



def test_sample_writes_pngs_with_metadata(tiny_model_dir, tmp_path, capsys):
    out_dir = tmp_path / "samples"
    code, out, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out", str(out_dir),
                              "--n", "2", "--seed", "5", "--steps", "2,2,2", "--cfg", "2"], capsys)
    assert code == 0, err
    pngs = sorted(out_dir.glob("*.png"))
    meta = json.loads(pngs[1].with_suffix(".json").read_text())
    # <prompt slug>-<hash of the settings the metadata records>-s<seed>.png
    key = settings_key(meta)
    assert [p.name for p in pngs] == [f"a-red-circle-{key}-s5.png", f"a-red-circle-{key}-s6.png"]
    assert meta["prompt"] == "a red circle" and meta["seed"] == 6 and meta["steps"] == [2, 2, 2]
    assert meta["cfg"] == 2.0 and meta["mode"] == "nami" and meta["model"] == str(tiny_model_dir)
    with Image.open(pngs[1]) as img:
        assert img.size == (64, 64)
        assert json.loads(img.text["nami"]) == meta
        second = np.asarray(img.convert("RGB"), dtype=np.int16)
    # image i depends only on its own seed: seed 6 alone gives the same picture
    single = tmp_path / "one.png"
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out", str(single),
                            "--seed", "6", "--steps", "2,2,2", "--cfg", "2"], capsys)
    assert code == 0, err
    with Image.open(single) as img:
        assert np.abs(np.asarray(img.convert("RGB"), dtype=np.int16) - second).max() <= 1
    per_stage = tmp_path / "per-stage.png"
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out", str(per_stage),
                            "--steps", "2,2,2", "--cfg", "6,2,2"], capsys)
    assert code == 0, err
    assert json.loads(per_stage.with_suffix(".json").read_text())["cfg"] == [6.0, 2.0, 2.0]
    code, _, err = run_cli(["sample", "a red circle", "--model", str(tiny_model_dir), "--out", str(per_stage),
                            "--steps", "2,2,2", "--cfg", "6,2", "--overwrite"], capsys)
    assert code != 0 and "cfg lists 2 scales but the plan has 3 stages" in err
    assert "Traceback" not in err


def test_console_sample_skips_teardown_but_writes_everything(tiny_model_dir, tmp_path):
    """The `nami` process ends right after its files are written; from Python, `run` returns as usual."""
    code = (
        "import sys\n"
        "from nami_cli.main import run\n"
        "sys.argv = ['nami', 'sample', 'a red circle', '--model', sys.argv[1], '--out', sys.argv[2], '--n', '2',\n"
        "            '--steps', '2,2,2', '--cfg', '2', '--json']\n"
        "import atexit; atexit.register(lambda: print('teardown ran'))\n"
        "run()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "teardown ran" not in out.stdout  # os-level exit: no atexit handlers, no module teardown
    report = json.loads(out.stdout)  # the flushed report is complete
    assert [Path(p).name for p in report["paths"]] == [sample_name(m) for m in report["metadata"]]
    assert [Path(p).name[-7:] for p in report["paths"]] == ["-s0.png", "-s1.png"]
    for p in report["paths"]:
        with Image.open(p) as img:
            assert img.size == (64, 64)
        assert json.loads(Path(p).with_suffix(".json").read_text())["prompt"] == "a red circle"


def _stage_bars(err):
    """(name, done, total) of every progress bar `nami sample` drew on stderr."""
    import re

    return [(m.group(1), int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^(stage \d+/\d+|sampling)\b.*?(\d+)/(\d+)", err, re.MULTILINE)]


def test_sample_other_modes(tiny_model_dir, tmp_path, capsys):
    """Same seed, prompt, steps and cfg: the mode changes the image, and flux-base runs one window.

    Measured on the tiny model (seed 3): nami vs flow-only differ by up to 23 levels (mean 2.2, in 56% of
    the values: only the stages' block prefixes differ), flux-base from both by up to 255 (mean 100.4)."""
    pixels, reports = {}, {}
    for mode in ("nami", "flow-only", "flux-base"):
        target = tmp_path / f"{mode}.png"
        code, out, err = run_cli(["sample", "a blue square", "--model", str(tiny_model_dir), "--out", str(target),
                                  "--mode", mode, "--steps", "4", "--cfg", "1", "--seed", "3", "--json"], capsys)
        assert code == 0, err
        meta = json.loads(target.with_suffix(".json").read_text())
        assert meta["mode"] == mode and meta["seed"] == 3 and meta["cfg"] == 1.0
        with Image.open(target) as img:
            assert json.loads(img.text["nami"]) == meta
            pixels[mode] = np.asarray(img.convert("RGB"), dtype=np.int16)
        reports[mode] = (json.loads(out), _stage_bars(err))

    # one window for flux-base (all 4 steps in it), three for the staged modes (4 steps split 2 + 1 + 1)
    for mode, (report, bars) in reports.items():
        assert report["metadata"][0]["mode"] == mode
        if mode == "flux-base":
            assert len(report["stage_seconds"]) == 1 and report["metadata"][0]["steps"] == [4]
            assert bars == [("sampling", 4, 4)]
        else:
            assert len(report["stage_seconds"]) == 3 and report["metadata"][0]["steps"] == [2, 1, 1]
            assert bars == [("stage 1/3", 2, 2), ("stage 2/3", 1, 1), ("stage 3/3", 1, 1)]

    # sampling is deterministic, so any difference between modes comes from the mode
    again = tmp_path / "again.png"
    code, _, err = run_cli(["sample", "a blue square", "--model", str(tiny_model_dir), "--out", str(again),
                            "--mode", "flow-only", "--steps", "4", "--cfg", "1", "--seed", "3"], capsys)
    assert code == 0, err
    with Image.open(again) as img:
        assert np.array_equal(np.asarray(img.convert("RGB"), dtype=np.int16), pixels["flow-only"])
    for a, b in (("nami", "flow-only"), ("nami", "flux-base"), ("flow-only", "flux-base")):
        assert np.abs(pixels[a] - pixels[b]).max() > 8, (a, b)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--attention", "xformers"], "pip install 'nami[xformers]'"),
        (["--attention", "sdpa2"], "attention must be one of"),
        (["--steps", "1,2"], "steps lists 2 counts but the plan has 3 stages"),
        (["--mode", "fast"], "mode must be one of"),
        (["--dtype", "fp8"], "dtype must be one of"),
        (["--n", "0"], "--n must be at least 1, got 0"),
        (["--n", "1000000000"], "--n must be at most 100,000, got 1000000000"),
        (["--steps", "1000000000000"], "--steps must be at most 10000 in all (usual: 10 to 100), got 1000000000000"),
    ],
)
def test_sample_bad_input_is_one_line(tiny_model_dir, tmp_path, capsys, extra, message):
    if extra[:2] == ["--attention", "xformers"]:
        pytest.importorskip("torch")
        import importlib.util

        if importlib.util.find_spec("xformers") is not None:
            pytest.skip("xformers is installed")
    code, _, err = run_cli(["sample", "x", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *extra],
                           capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not (tmp_path / "o").exists()


def test_missing_or_broken_model_dir(tmp_path, capsys):
    code, _, err = run_cli(["sample", "x", "--model", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    code, _, err = run_cli(["sample", "x", "--model", str(broken)], capsys)
    assert code == 2 and "missing its transformer/ folder" in err
    code, _, err = run_cli(["sample", "--model", str(broken)], capsys)
    assert code == 2 and "Missing argument" in err


def test_unknown_subcommand_exits_2_with_one_line(capsys):
    code, _, err = run_cli(["bench", "speed"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "speed" in lines[0], err
